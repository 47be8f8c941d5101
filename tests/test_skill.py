"""End-to-end skill: a small model trained for seconds must beat the simple baselines on
held-out data by a margin (a collapsed or untrained model fails these)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import sciformer
from sciformer.simulate import simulate_to_file


def markov_fasta(path: Path, n: int, seed: int) -> Path:
    """Proteins from a sparse first-order Markov chain over 20 residues: each residue is
    followed by one of two residues, so a model that reads neighbours predicts far better
    than residue frequencies (unigram ~ log 20, context ~ log 2)."""
    letters = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    table = np.random.default_rng(99).integers(0, 20, size=(20, 2))  # the same chain always
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        state, seq = int(rng.integers(20)), []
        for _ in range(int(rng.integers(40, 80))):
            seq.append(state)
            state = int(table[state, rng.integers(2)])
        lines += [f">p{seed}_{i}", "".join(letters[seq])]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_protein_model_beats_unigram_on_heldout(tmp_path: Path):
    train = markov_fasta(tmp_path / "train.fa", 200, seed=0)
    other = markov_fasta(tmp_path / "other.fa", 40, seed=1)
    run = sciformer.pretrain(train, {
        "model": {"d_model": 64, "n_heads": 4, "n_encoder_layers": 2, "d_ff": 128,
                  "dropout": 0.0},
        "data": {"crop_length": 64, "tokens_per_batch": 2048, "val_fraction": 0.1},
        "train": {"max_steps": 300, "lr": 0.01, "warmup_steps": 10, "eval_every": 300,
                  "checkpoint_every": 300, "log_every": 50}}, tmp_path / "run", progress=False)
    m = sciformer.evaluate(run, other, tmp_path / "eval", device="cpu")
    model, unigram = m["model"]["perplexity"], m["baselines"]["unigram"]["perplexity"]
    assert unigram > 5  # many residues in use: frequencies alone predict poorly
    assert model < 0.5 * unigram, (model, unigram)


def test_forecast_model_beats_persistence_and_mean_on_heldout(tmp_path: Path):
    train = simulate_to_file("lorenz63", tmp_path / "train.h5", 12, 600, seed=0)
    other = simulate_to_file("lorenz63", tmp_path / "other.h5", 3, 600, seed=1)
    run = sciformer.pretrain(train, {
        "model": {"d_model": 64, "n_heads": 4, "n_encoder_layers": 2, "n_decoder_layers": 2,
                  "d_ff": 128, "dropout": 0.0},
        "data": {"context": 32, "horizon": 16, "patch_len": 8, "val_fraction": 0.1},
        "train": {"max_steps": 150, "lr": 0.003, "warmup_steps": 10, "batch_size": 32,
                  "eval_every": 150, "checkpoint_every": 150, "log_every": 50}},
        tmp_path / "run", progress=False)
    m = sciformer.evaluate(run, other, tmp_path / "eval", device="cpu", samples=16)
    model = m["model"]["nrmse_1lt"]
    assert model < 0.6 * m["baselines"]["mean"]["nrmse_1lt"], m["model"]
    assert model < 0.8 * m["baselines"]["persistence"]["nrmse_1lt"], m["model"]
