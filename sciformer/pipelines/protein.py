"""`ProteinLM`: a masked protein language model loaded from a run directory.

    >>> lm = sciformer.load("runs/protein-masked")
    >>> lm.fill_masks(["MKT<mask>LLVA<mask>G"], top_k=3)
    >>> lm.pseudo_perplexity(records)            # strings or Bio.SeqRecord.SeqRecord
    >>> lm.embed(records, layers=[-1], pooled="mean")["pooled"]   # (N, n_layers, D)
    >>> lm.score_variants("MKTAYIAK", ["A4G", "A4G:K8R"])

Sequences may be strings or Biopython `SeqRecord`s; results are numpy arrays and plain
lists/dicts. Every method covers long sequences with overlapping windows (never truncates).
`precision` ("fp32", "bf16" or "auto": bf16 where the device has it natively; see
`sciformer.precision`) sets how the model computes; results are float32 either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from sciformer.config import RunConfig
from sciformer.errors import InputError
from sciformer.pipelines.residues import (
    each_masked_alone,
    embed_sequences,
    masked_log_probs,
    pool,
    resolve_layers,
)
from sciformer.precision import resolve_precision
from sciformer.runs import MaskedState
from sciformer.tokenizers.protein import ALPHABET, RESIDUE_IDS, TOKENIZER

SequenceLike = Any  # str | Bio.SeqRecord.SeqRecord | Bio.Seq.Seq
POOLING = ("mean", "cls")


def as_sequences(seqs: SequenceLike | Iterable[SequenceLike]) -> tuple[list[str], list[str]]:
    """(ids, sequences) from one or many strings / SeqRecords / Seqs; ids default to seqN."""
    if isinstance(seqs, str) or hasattr(seqs, "seq") or type(seqs).__name__ == "Seq":
        seqs = [seqs]
    ids, out = [], []
    for i, s in enumerate(seqs):
        if hasattr(s, "seq"):  # Bio.SeqRecord.SeqRecord
            ids.append(str(s.id) if s.id else f"seq{i}")
            out.append(str(s.seq))
        elif isinstance(s, str) or type(s).__name__ == "Seq":
            ids.append(f"seq{i}")
            out.append(str(s))
        else:
            raise InputError(f"sequence {i}: expected a string or a Bio.SeqRecord, got "
                             f"{type(s).__name__}")
    return ids, out


class ProteinLM:
    """Inference with a masked-residue run: fill masks, score, embed, rank variants."""

    task = "masked"

    def __init__(self, model: nn.Module, cfg: RunConfig, state: MaskedState,
                 device: torch.device, precision: str = "fp32") -> None:
        self.model, self.cfg, self.state, self.device = model, cfg, state, device
        self.precision = resolve_precision(precision, device, "precision")  # fp32 | bf16
        self.alphabet = ALPHABET
        self.mask_id = TOKENIZER.mask_id
        self.window = cfg.data.crop_length  # residues per window (the training crop)
        self.tokens_per_batch = cfg.data.tokens_per_batch

    def __repr__(self) -> str:
        m = self.cfg.model
        return (f"ProteinLM({m.n_encoder_layers} layers, d_model {m.d_model}, "
                f"{self.model.num_parameters():,} parameters, window {self.window}, "
                f"{self.precision})")

    # ---- tokens --------------------------------------------------------------------------
    def tokens(self, seqs: SequenceLike | Iterable[SequenceLike]) -> list[np.ndarray]:
        """Residue ids (no <cls>/<eos>) of each sequence; `<mask>` becomes the mask id."""
        return TOKENIZER.encode_many(as_sequences(seqs)[1], add_special=False)

    def _log_probs_at(self, tokens: list[np.ndarray], queries: list[np.ndarray]
                      ) -> Iterator[tuple[int, np.ndarray]]:
        return masked_log_probs(self.model, tokens, queries, self.window,
                                self.tokens_per_batch, self.device, self.precision)

    # ---- the API ---------------------------------------------------------------------------
    def log_probs(self, seqs: SequenceLike | Iterable[SequenceLike]) -> list[np.ndarray]:
        """(L, 33) log-probabilities over the ESM alphabet at every position of each sequence,
        read from one pass over the sequence as given (masks where it has them)."""
        tokens = self.tokens(seqs)
        out: list[np.ndarray] = [np.empty(0)] * len(tokens)
        for i, logp in self._log_probs_at(tokens, [np.arange(len(t)) for t in tokens]):
            out[i] = logp
        return out

    def fill_masks(self, seqs: SequenceLike | Iterable[SequenceLike], top_k: int = 5
                   ) -> list[list[dict[str, Any]]]:
        """For each sequence, at every `<mask>` in order of position: {"record", "position"
        (1-based), "residues" (the `top_k` letters), "probs" (renormalised over the residue
        letters)}."""
        if not 1 <= top_k <= len(RESIDUE_IDS):
            raise InputError(f"top_k={top_k}: must be in 1..{len(RESIDUE_IDS)}")
        ids, _ = as_sequences(seqs)
        tokens = self.tokens(seqs)
        return list(self.iter_fills(ids, tokens, top_k))

    def iter_fills(self, ids: list[str], tokens: list[np.ndarray], top_k: int
                   ) -> Iterator[list[dict[str, Any]]]:
        """`fill_masks` over already tokenised sequences, yielded in input order."""
        queries = [np.flatnonzero(t == TOKENIZER.mask_id) for t in tokens]
        for i, logp in self._log_probs_at(tokens, queries):
            probs = np.exp(logp[:, RESIDUE_IDS])
            probs /= probs.sum(axis=1, keepdims=True)
            fills = []
            for pos, p in zip(queries[i], probs):
                best = np.argsort(-p, kind="stable")[:top_k]
                fills.append({"record": ids[i], "position": int(pos) + 1,
                              "residues": [ALPHABET[RESIDUE_IDS[b]] for b in best],
                              "probs": [float(p[b]) for b in best]})
            yield fills

    def pseudo_log_likelihoods(self, tokens: np.ndarray) -> np.ndarray:
        """log p(x_i | x without i) at every position i of one residue-id sequence."""
        if (tokens == TOKENIZER.mask_id).any():
            raise InputError("pseudo-perplexity needs complete sequences; this one holds "
                             "<mask> (score it with fill_masks instead)")
        logp = each_masked_alone(self.model, tokens, np.arange(len(tokens)), self.window,
                                 self.tokens_per_batch, self.device, self.precision)
        return logp[np.arange(len(tokens)), tokens.astype(np.int64)]

    def pseudo_perplexity(self, seqs: SequenceLike | Iterable[SequenceLike]) -> np.ndarray:
        """exp(-mean pseudo-log-likelihood) per sequence (Salazar et al. 2020): each residue is
        masked alone and scored by the model."""
        return np.array([float(np.exp(-self.pseudo_log_likelihoods(t).mean()))
                         for t in self.tokens(seqs)])

    def embed(self, seqs: SequenceLike | Iterable[SequenceLike],
              layers: Sequence[int] = (-1,), per_residue: bool = False,
              pooled: str = "mean") -> dict[str, Any]:
        """Embeddings of each sequence at `layers` (0 = input embedding, -1 = last).

        Returns {"ids", "layers" (absolute numbers), "precision" (the one used), "pooled":
        (N, n_layers, D) and, with `per_residue`, "per_residue": a list of (n_layers, L, D)
        arrays}.
        """
        if pooled not in POOLING:
            raise InputError(f"pooled='{pooled}': must be one of {', '.join(POOLING)}")
        ids, _ = as_sequences(seqs)
        absolute = self.layers(layers)
        out: dict[str, Any] = {"ids": ids, "layers": absolute, "precision": self.precision,
                               "pooled": []}
        if per_residue:
            out["per_residue"] = []
        for _, res, cls in self.embedding_stream(self.tokens(seqs), absolute):
            out["pooled"].append(pool(res, cls, pooled))
            if per_residue:
                out["per_residue"].append(res)
        out["pooled"] = np.stack(out["pooled"]) if ids else np.zeros((0, len(absolute), 0))
        return out

    def layers(self, layers: Sequence[int]) -> list[int]:
        """Absolute layer numbers of `layers` (negative counts from the last)."""
        return resolve_layers(list(layers), self.cfg.model.n_encoder_layers)

    def embedding_stream(self, tokens: list[np.ndarray], layers: list[int],
                         tokens_per_batch: int | None = None
                         ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(i, per-residue (n_layers, L, D), <cls> (n_layers, D)) per sequence."""
        return embed_sequences(self.model, tokens, layers, self.window,
                               tokens_per_batch or self.tokens_per_batch, self.device,
                               precision=self.precision)

    def score_variants(self, wild_type: SequenceLike, mutations: Sequence[str]
                       ) -> list[dict[str, Any]]:
        """Masked-marginal and wild-type-marginal scores (Meier et al. 2021) of mutations like
        'A42G' or 'A42G:R57K' against one wild type: positive = the model prefers the mutant."""
        from sciformer.variants import check_against, parse_mutant, score

        (rid,), (wt,) = as_sequences(wild_type)
        parsed = []
        for i, text in enumerate(mutations):
            muts = parse_mutant(text, f"mutation {i + 1}")
            check_against(muts, wt, rid, f"mutation {i + 1}")
            parsed.append(muts)
        masked, unmasked = self.marginal_tables(wt, sorted({m.pos for p in parsed for m in p}))
        return [dict(zip(("mutant", "masked_marginal", "wt_marginal"),
                         (text, *score(muts, masked, unmasked))))
                for text, muts in zip(mutations, parsed)]

    def marginal_tables(self, wild_type: str, positions: list[int]
                        ) -> tuple[dict[int, np.ndarray], np.ndarray]:
        """Log-probabilities over the alphabet: ({pos: (V,) with pos masked alone},
        (L, V) from the unmasked wild type)."""
        if "<" in wild_type:
            raise InputError("the wild type holds <mask>; give the complete sequence")
        tokens = TOKENIZER.encode(wild_type, add_special=False)
        alone = each_masked_alone(self.model, tokens, np.asarray(positions, np.int64),
                                  self.window, self.tokens_per_batch, self.device,
                                  self.precision)
        (unmasked,) = self.log_probs(wild_type)
        return dict(zip(positions, alone)), unmasked
