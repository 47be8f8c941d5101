"""Shared fixtures: tiny data files and tiny configs so end-to-end tests run in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

torch.set_num_threads(1)
# Property tests draw the same examples on every run, so CI is reproducible; run
# `pytest --hypothesis-seed=N` (or unset this profile) to explore new ones.
settings.register_profile("reproducible", derandomize=True)
settings.load_profile("reproducible")  # tiny models: threads only add overhead and noise

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


def composition_only(net, alpha: float, pi=None):
    """`net` (a SciFormer with model.composition_prior) turned into the composition term
    alone: zero embeddings and head bias make every transformer logit 0; gate 1, the given
    alpha, and the prior frequencies `pi` when given. Returns `net`, in eval mode."""
    import math

    with torch.no_grad():
        net.embed.weight.zero_()
        net.token_head.bias.zero_()
        if pi is not None:
            net.composition.set_prior(torch.as_tensor(pi))
        net.composition.log_alpha.fill_(math.log(alpha))
        net.composition.gate.fill_(1.0)
    return net.eval()

TINY_MASKED = [
    "model.d_model=32", "model.n_heads=4", "model.n_encoder_layers=1", "model.d_ff=64",
    "model.dropout=0.0", "data.crop_length=32", "data.tokens_per_batch=256",
    "train.max_steps=6", "train.eval_every=3", "train.log_every=2", "train.checkpoint_every=3",
    "train.warmup_steps=2", "data.val_fraction=0.2",
]


def metrics_log(run: Path) -> list[dict]:
    """The records of a run directory's metrics.jsonl, in order."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def write_fasta(path: Path, n: int = 30, seed: int = 0, min_len: int = 20, max_len: int = 60) -> Path:
    """A FASTA file of random proteins with a repeated motif (learnable), ids seq0..seqN."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        length = int(rng.integers(min_len, max_len))
        body = "".join(rng.choice(list(RESIDUES), size=length))
        lines += [f">seq{i} protein {i}", body[: length // 2] + "MKV" + body[length // 2:]]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def fasta(tmp_path: Path) -> Path:
    return write_fasta(tmp_path / "prot.fa")


@pytest.fixture
def masked_run(tmp_path: Path, fasta: Path) -> Path:
    """A tiny pretrained masked-residue run directory."""
    from sciformer.config import load_config
    from sciformer.train.loop import pretrain

    run = tmp_path / "run"
    pretrain([fasta], load_config(None, TINY_MASKED), run, progress=False)
    return run
