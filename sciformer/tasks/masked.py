"""Masked-residue prediction on protein sequences (BERT; ESM-2, Lin et al. 2023).

Training: sequences longer than ``data.crop_length`` residues are randomly cropped; batches are
filled to a token budget from length-sorted sequences (fair-esm). Of the residues, 15% are
chosen; of those 80% become ``<mask>``, 10% a random standard residue and 10% stay unchanged
(Devlin et al. 2019); special tokens are never chosen; the loss is cross-entropy on the chosen
positions only.

Inference (`masked_log_probs`): every residue of a long sequence is covered by overlapping
windows of the training crop length; each position is read from the window where it sits
most centrally, so nothing is truncated.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sciformer.config import ModelConfig, RunConfig
from sciformer.errors import InputError
from sciformer.io.fasta import read_fasta_batches
from sciformer.splits import record_split
from sciformer.tasks import micro_seed
from sciformer.tokenizers.protein import ProteinTokenizer, iter_windows, token_budget_batches

TOKENIZER = ProteinTokenizer()


@dataclass
class ProteinSet:
    """Tokenised records of one or more FASTA files (residue ids only, no <cls>/<eos>)."""

    ids: list[str] = field(default_factory=list)
    tokens: list[np.ndarray] = field(default_factory=list)  # uint8 residue ids per record
    origin: list[tuple[int, int]] = field(default_factory=list)  # (file index, record index)

    def subset(self, indices: list[int]) -> ProteinSet:
        return ProteinSet([self.ids[i] for i in indices], [self.tokens[i] for i in indices],
                          [self.origin[i] for i in indices])

    def __len__(self) -> int:
        return len(self.tokens)


def load_proteins(paths: list[Path]) -> ProteinSet:
    """Read and tokenise every record of the FASTA files (duplicate ids across files: error).

    Uses the bulk path (`read_fasta_batches` + one table lookup per read chunk), so no Python
    work is done per residue.
    """
    out, seen = ProteinSet(), {}
    for f, path in enumerate(paths):
        r = 0
        for batch in read_fasta_batches(path):
            ids, offsets = TOKENIZER.encode_concatenated(batch.residues, batch.offsets)
            for i, rid in enumerate(batch.ids):
                if rid in seen:
                    raise InputError(f"{path} line {batch.lines[i]}: duplicate id '{rid}' "
                                     f"(also in {seen[rid]})")
                seen[rid] = path
                out.tokens.append(ids[offsets[i]:offsets[i + 1]])
                out.origin.append((f, r))
                r += 1
            out.ids.extend(batch.ids)
    return out


def mask_tokens(tokens: Tensor, rate: float, mask_rate: float, random_rate: float,
                gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """BERT corruption of (B, L) ids: (inputs, targets) with targets -100 where not chosen."""
    tok = TOKENIZER
    candidate = tokens > tok.unk_id  # residues only (ids 4..30); specials/pad never chosen
    candidate &= tokens < ProteinTokenizer.vocab_size - 2
    chosen = (torch.rand(tokens.shape, generator=gen) < rate) & candidate
    empty = ~chosen.any(dim=1) & candidate.any(dim=1)  # guarantee one target per sequence
    if empty.any():
        noise = torch.rand(tokens.shape, generator=gen).masked_fill(~candidate, -1.0)
        pick = noise.argmax(dim=1)
        chosen[empty, pick[empty]] = True
    u = torch.rand(tokens.shape, generator=gen)
    standard = torch.as_tensor(tok.standard_ids)
    random_ids = standard[torch.randint(len(standard), tokens.shape, generator=gen)]
    inputs = tokens.clone()
    inputs[chosen & (u < mask_rate)] = tok.mask_id
    swap = chosen & (u >= mask_rate) & (u < mask_rate + random_rate)
    inputs[swap] = random_ids[swap]
    targets = tokens.masked_fill(~chosen, -100)
    return inputs, targets


def frame(residues: np.ndarray) -> np.ndarray:
    """<cls> + residues + <eos> as int64."""
    return np.concatenate(([TOKENIZER.cls_id], residues.astype(np.int64), [TOKENIZER.eos_id]))


class MaskedTask:
    """Pretraining task for FASTA files; see the module docstring."""

    name = "masked"

    def __init__(self, cfg: RunConfig, paths: list[Path]) -> None:
        self.cfg, self.paths = cfg, paths
        self.data = load_proteins(paths)
        if len(self.data) == 0:
            raise InputError(f"{paths[0]}: no sequences to train on")
        d = cfg.data
        train_idx, val_idx, self.split_info = record_split(
            self.data.tokens, d.split_by, d.val_fraction, d.val_max, cfg.train.seed,
            d.split_identity, d.split_kmer)
        self.train, self.val = self.data.subset(train_idx), self.data.subset(val_idx)
        self.train_idx, self.val_idx = train_idx, val_idx
        crop = cfg.data.crop_length
        self.lengths = [min(len(t), crop) + 2 for t in self.train.tokens]
        self._epoch: tuple[int, list[list[int]]] | None = None
        self.n_batches = len(self._batches_of_epoch(0))

    def model_config(self) -> ModelConfig:
        m = self.cfg.model
        m.vocab_size, m.n_decoder_layers, m.input_dim, m.output_dim = TOKENIZER.vocab_size, 0, 0, 0
        return m

    def state(self) -> dict[str, Any]:
        counts = np.zeros(TOKENIZER.vocab_size, dtype=np.int64)
        for t in self.train.tokens:
            counts += np.bincount(t, minlength=TOKENIZER.vocab_size)
        return {"task": self.name, "train_files": [str(p) for p in self.paths],
                "residue_counts": counts.tolist()}

    def split(self) -> dict[str, Any]:
        return {"unit": "record", "files": [str(p) for p in self.paths],
                "n_records": len(self.data), "train": self.train_idx, "heldout": self.val_idx,
                "heldout_origin": [list(o) for o in self.val.origin],  # (file, record) pairs
                "heldout_ids": self.val.ids, **self.split_info}

    def _batches_of_epoch(self, epoch: int) -> list[list[int]]:
        if self._epoch is None or self._epoch[0] != epoch:
            seed = micro_seed(self.cfg.train.seed, epoch, salt=1)
            self._epoch = (epoch, token_budget_batches(self.lengths, self.cfg.data.tokens_per_batch,
                                                       shuffle=True, seed=seed))
        return self._epoch[1]

    def batch(self, index: int, rank: int = 0, world: int = 1) -> dict[str, Tensor]:
        """Micro-batch `index` of the stream (ranks take interleaved batches)."""
        g = index * world + rank
        members = self._batches_of_epoch(g // self.n_batches)[g % self.n_batches]
        rng = np.random.default_rng(micro_seed(self.cfg.train.seed, g, salt=2))
        crop = self.cfg.data.crop_length
        seqs = []
        for i in members:
            t = self.train.tokens[i]
            start = int(rng.integers(0, len(t) - crop + 1)) if len(t) > crop else 0
            seqs.append(frame(t[start:start + crop]))
        tokens = TOKENIZER.pad_batch(seqs)
        gen = torch.Generator().manual_seed(micro_seed(self.cfg.train.seed, g, salt=3))
        d = self.cfg.data
        inputs, targets = mask_tokens(tokens, d.mask_rate, d.mask_token_rate, d.random_token_rate, gen)
        return {"inputs": inputs, "targets": targets, "pad": tokens == TOKENIZER.pad_id}

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        chosen = batch["targets"] != -100
        h = model.encode(batch["inputs"], batch["pad"], select=chosen)  # (N, D): chosen only
        logits = model.token_logits(h)  # (N, V)
        loss = F.cross_entropy(logits.float(), batch["targets"][chosen])
        return loss, {"loss": loss.detach(), "n_masked": chosen.sum()}

    def validate(self, model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        res = evaluate_masked(model, self.val.tokens, self.cfg, device, seed=self.cfg.train.seed)
        nll = -res["log_prob"].mean()
        return {"val_loss": float(nll), "val_perplexity": float(np.exp(nll)),
                "val_accuracy": float((res["pred"] == res["true"]).mean())}


# ---- inference over whole sequences ---------------------------------------------------------
def window_plan(length: int, window: int) -> list[tuple[int, int, np.ndarray]]:
    """[(start, end, owned positions)]: each residue owned by its most central window."""
    spans = iter_windows(length, window, overlap=window // 4) if length else []
    if len(spans) <= 1:
        return [(0, length, np.arange(length))] if length else []
    best = np.full(length, -1, dtype=np.int64)  # centrality of the owner so far
    owner = np.zeros(length, dtype=np.int64)
    for w, (s, e) in enumerate(spans):  # O(L) memory: a (W, L) table is GBs for 100k residues
        centrality = np.minimum(np.arange(e - s), np.arange(e - s)[::-1])
        better = centrality > best[s:e]  # strict: ties stay with the earlier window
        best[s:e][better] = centrality[better]
        owner[s:e][better] = w
    return [(s, e, s + np.flatnonzero(owner[s:e] == w)) for w, (s, e) in enumerate(spans)]


@torch.no_grad()
def masked_log_probs(model: nn.Module, inputs: list[np.ndarray], queries: list[np.ndarray],
                     window: int, tokens_per_batch: int, device: torch.device
                     ) -> Iterator[tuple[int, np.ndarray]]:
    """Log-probabilities (n_queries, V) at the query positions of each residue-id sequence.

    `inputs[i]` are residue ids (already masked where wanted, no <cls>/<eos>); `queries[i]`
    residue positions to read. Yields (i, log_probs) in input order.
    """
    pieces = []  # (seq index, window tokens, query positions within the window, order)
    for i, (seq, q) in enumerate(zip(inputs, queries)):
        for s, e, owned in window_plan(len(seq), window):
            keep = np.intersect1d(owned, q)
            if len(keep):
                pieces.append((i, frame(seq[s:e]), keep - s + 1, keep))
    results: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {i: [] for i in range(len(inputs))}
    for members in token_budget_batches([len(p[1]) for p in pieces], tokens_per_batch, shuffle=False):
        tokens = TOKENIZER.pad_batch([pieces[m][1] for m in members]).to(device)
        select = torch.zeros(tokens.shape, dtype=torch.bool)
        for row, m in enumerate(members):
            select[row, pieces[m][2]] = True
        h = model.encode(tokens, tokens == TOKENIZER.pad_id, select=select.to(device))  # (N, D)
        logp = torch.log_softmax(model.token_logits(h).float(), dim=-1).cpu().numpy()
        bounds = np.cumsum([0] + [len(pieces[m][2]) for m in members])  # rows in select order
        for row, m in enumerate(members):
            results[pieces[m][0]].append((pieces[m][3], logp[bounds[row]:bounds[row + 1]]))
    for i, q in enumerate(queries):
        got = results.pop(i)
        pos = np.concatenate([g[0] for g in got]) if got else np.zeros(0, np.int64)
        logp = np.concatenate([g[1] for g in got]) if got else np.zeros((0, TOKENIZER.vocab_size))
        order = np.argsort(pos, kind="stable")
        yield i, logp[order][np.searchsorted(pos[order], q)] if len(q) else logp[:0]


def choose_eval_positions(tokens: list[np.ndarray], rate: float, seed: int) -> list[np.ndarray]:
    """Fixed-seed choice of `rate` of the residues of each sequence (at least one)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in tokens:
        chosen = np.flatnonzero(rng.random(len(t)) < rate)
        if len(chosen) == 0 and len(t):
            chosen = np.array([rng.integers(len(t))])
        out.append(chosen)
    return out


def evaluate_masked(model: nn.Module, tokens: list[np.ndarray], cfg: RunConfig,
                    device: torch.device, seed: int) -> dict[str, np.ndarray]:
    """Mask a fixed-seed `mask_rate` of residues with <mask> and score them all at once.

    Returns per masked position: log p(true residue), argmax prediction, true id, record index.
    """
    positions = choose_eval_positions(tokens, cfg.data.mask_rate, seed)
    masked = []
    for t, pos in zip(tokens, positions):
        m = t.astype(np.int64).copy()
        m[pos] = TOKENIZER.mask_id
        masked.append(m)
    was_training = model.training
    model.eval()
    logp_true, pred, true, record = [], [], [], []
    for i, logp in masked_log_probs(model, masked, positions, cfg.data.crop_length,
                                    cfg.data.tokens_per_batch, device):
        truth = tokens[i][positions[i]].astype(np.int64)
        logp_true.append(logp[np.arange(len(truth)), truth])
        pred.append(logp.argmax(axis=1))
        true.append(truth)
        record.append(np.full(len(truth), i))
    model.train(was_training)
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
    return {"log_prob": cat(logp_true), "pred": cat(pred), "true": cat(true), "record": cat(record)}
