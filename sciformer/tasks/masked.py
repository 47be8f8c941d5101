"""Masked-residue prediction on protein sequences, training only (BERT; ESM-2, Lin et al. 2023).

Training: sequences longer than ``data.crop_length`` residues are randomly cropped; batches are
filled to a token budget from length-sorted sequences (fair-esm). Of the residues, 15% are
chosen; of those 80% become ``<mask>``, 10% a random standard residue and 10% stay unchanged
(Devlin et al. 2019); special tokens are never chosen; the loss is cross-entropy on the chosen
positions only. Inference lives in `sciformer.pipelines.protein`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sciformer.config import RunConfig
from sciformer.config_tasks import for_task
from sciformer.errors import InputError
from sciformer.evaluation.masked_baselines import prior
from sciformer.fingerprints import RecordedPrints, fasta_fingerprints
from sciformer.io.proteins import load_proteins
from sciformer.model.composition import counts_whole_protein, outside_counts
from sciformer.pipelines.residues import evaluate_masked
from sciformer.runs import MaskedState
from sciformer.splits import record_split
from sciformer.tasks import micro_seed
from sciformer.tokenizers.protein import TOKENIZER, ProteinTokenizer, frame, token_budget_batches


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


class MaskedTask:
    """Pretraining task for FASTA files; see the module docstring."""

    name = "masked"

    def __init__(self, cfg: RunConfig, paths: list[Path]) -> None:
        self.cfg = for_task(cfg, self.name, vocab_size=TOKENIZER.vocab_size, input_dim=0,
                            output_dim=0, mask_id=TOKENIZER.mask_id)
        self.paths = paths
        cfg = self.cfg
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

    def state(self) -> MaskedState:
        counts = np.zeros(TOKENIZER.vocab_size, dtype=np.int64)
        for t in self.train.tokens:
            counts += np.bincount(t, minlength=TOKENIZER.vocab_size)
        return MaskedState(train_files=[str(p) for p in self.paths],
                           residue_counts=counts.tolist())

    def init_model(self, model: nn.Module) -> None:
        """The composition prior's base measure: the training residue frequencies, add-one
        smoothed as the baselines' (`masked_baselines.prior`)."""
        if getattr(model, "composition", None) is not None:
            model.composition.set_prior(torch.as_tensor(prior(self.state().residue_counts)))

    def split(self) -> dict[str, Any]:
        prints = [fp for p in self.paths for fp in fasta_fingerprints(p)]  # in record order
        return {"unit": "record", "files": [str(p) for p in self.paths],
                "n_records": len(self.data), "train": self.train_idx, "heldout": self.val_idx,
                "fingerprints": RecordedPrints.from_units(prints, self.train_idx,
                                                          self.val_idx).to_split(),
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
        whole = counts_whole_protein(self.cfg.model)
        seqs, outside = [], []
        for i in members:
            t = self.train.tokens[i]
            start = int(rng.integers(0, len(t) - crop + 1)) if len(t) > crop else 0
            seqs.append(frame(t[start:start + crop]))
            if whole:  # the rest of the cropped protein, all visible
                outside.append(outside_counts(t, start, start + crop, TOKENIZER.vocab_size))
        tokens = TOKENIZER.pad_batch(seqs)
        gen = torch.Generator().manual_seed(micro_seed(self.cfg.train.seed, g, salt=3))
        d = self.cfg.data
        inputs, targets = mask_tokens(tokens, d.mask_rate, d.mask_token_rate, d.random_token_rate, gen)
        batch = {"inputs": inputs, "targets": targets, "pad": tokens == TOKENIZER.pad_id}
        if whole:
            batch["outside"] = torch.as_tensor(np.stack(outside))
        return batch

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        chosen = batch["targets"] != -100
        h = model.encode(batch["inputs"], batch["pad"], select=chosen)  # (N, D): chosen only
        logits = model.token_logits(h, batch["inputs"], chosen, batch.get("outside"))  # (N, V)
        loss = F.cross_entropy(logits.float(), batch["targets"][chosen])
        return loss, {"loss": loss.detach(), "n_masked": chosen.sum()}

    def validate(self, model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        res = evaluate_masked(model, self.val.tokens, self.cfg, device, seed=self.cfg.train.seed)
        nll = -res["log_prob"].mean()
        return {"val_loss": float(nll), "val_perplexity": float(np.exp(nll)),
                "val_accuracy": float((res["pred"] == res["true"]).mean())}
