"""Two settings of the masked-residue recipe.

`model.composition_scope: protein`: the composition prior counts every visible residue of
the protein, not only the window the transformer reads. With the transformer adding nothing,
every inference path then equals the `composition` baseline on proteins longer than the
window too (with `window` it does not); training batches carry the counts of the rest of each
cropped protein; the CLI trains, records and uses the setting.

`data.eval_mask_rate`: training may mask more than `evaluate` and validation score; runs
without it score at their training rate as before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import sciformer
from sciformer.cli import main
from sciformer.config import ModelConfig, load_config
from sciformer.config_tasks import for_task
from sciformer.errors import ConfigError
from sciformer.evaluation.masked_baselines import CompositionBaseline, prior
from sciformer.model import SciFormer
from sciformer.model.composition import OTHER_P, outside_counts
from sciformer.pipelines.residues import each_masked_alone, masked_log_probs
from sciformer.tasks.masked import MaskedTask
from sciformer.tokenizers.protein import RESIDUE_IDS, TOKENIZER
from sciformer.train.checkpoint import save_weights
from tests.conftest import TINY_MASKED, composition_only, write_fasta

TOK = TOKENIZER
CPU = torch.device("cpu")
RNG = np.random.default_rng(3)
COUNTS = np.zeros(33)
COUNTS[RESIDUE_IDS] = RNG.integers(5, 60, len(RESIDUE_IDS))
PI = prior(COUNTS)
MASS = 1 - 5 * OTHER_P  # the model puts OTHER_P on each of the 5 non-residue ids


def _protein(n: int, seed: int) -> np.ndarray:
    """A skewed random protein: its composition differs from PI, so the scope matters."""
    rng = np.random.default_rng(seed)
    ids = np.asarray(RESIDUE_IDS)[:20]
    p = rng.dirichlet(np.full(20, 0.5))
    return rng.choice(ids, size=n, p=p).astype(np.int64)


def _composition_only(alpha: float, scope: str) -> SciFormer:
    """A model whose prediction is the composition term alone (gate 1, the given alpha)."""
    return composition_only(SciFormer(ModelConfig(
        d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=0, d_ff=32, dropout=0.0,
        composition_prior=True, composition_scope=scope)), alpha, PI)


@pytest.mark.parametrize("scope", ["protein", "window"])
def test_evaluate_path_is_the_baseline_on_long_proteins_only_with_protein_scope(scope) -> None:
    seqs = [_protein(70, 0), _protein(45, 1)]  # windows of 20 residues: 4 and 3 pieces
    queries = [np.array([0, 13, 33, 50, 69]), np.array([2, 21, 44])]
    masked = []
    for s, q in zip(seqs, queries):
        m = s.copy()
        m[q] = TOK.mask_id
        masked.append(m)
    net = _composition_only(alpha=9.0, scope=scope)
    baseline = CompositionBaseline(PI, alpha=9.0)
    for i, logp in masked_log_probs(net, masked, queries, 20, 4096, CPU):
        want = baseline.distributions([seqs[i]], [queries[i]])  # (1, V): whole protein
        got = np.exp(logp)
        if scope == "protein":
            np.testing.assert_allclose(
                got[:, RESIDUE_IDS], np.broadcast_to(want[:, RESIDUE_IDS] * MASS,
                                                     (len(got), len(RESIDUE_IDS))), rtol=1e-5)
        else:  # each window counts only itself: not the whole protein's composition
            assert np.abs(got[:, RESIDUE_IDS] - want[:, RESIDUE_IDS]).max() > 1e-3


def test_pseudo_likelihoods_and_fill_masks_count_the_whole_protein(tmp_path: Path) -> None:
    seq = _protein(57, 2)
    net = _composition_only(alpha=5.0, scope="protein")
    baseline = CompositionBaseline(PI, alpha=5.0)
    got = each_masked_alone(net, seq, np.arange(len(seq)), 16, 4096, CPU)  # 4 windows
    for pos in (0, 17, 40, 56):
        want = baseline.distributions([seq], [np.array([pos])])[0]
        np.testing.assert_allclose(np.exp(got[pos])[RESIDUE_IDS], want[RESIDUE_IDS] * MASS,
                                   rtol=1e-5)


def test_outside_counts_is_the_rest_of_the_protein() -> None:
    seq = np.array([4, 5, 5, 6, 7, 7, 7, 4])
    got = outside_counts(seq, 2, 5, 33)
    want = np.bincount(np.r_[seq[:2], seq[5:]], minlength=33)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32 and outside_counts(seq, 0, 8, 33).sum() == 0


def test_training_batches_carry_the_rest_of_each_crop(tmp_path: Path) -> None:
    fasta = write_fasta(tmp_path / "p.fa", n=40, min_len=30, max_len=90)
    sets = TINY_MASKED + ["model.composition_prior=true", "model.composition_scope=protein"]
    task = MaskedTask(load_config(None, sets), [fasta])  # crop 32: most proteins are cropped
    whole = {tuple(t.tolist()) for t in task.train.tokens}
    cropped = 0
    for index in range(4):
        b = task.batch(index)
        original = torch.where(b["targets"] != -100, b["targets"], b["inputs"])
        for row in range(len(original)):
            crop = original[row][(original[row] > TOK.unk_id) & (original[row] != TOK.mask_id)]
            counts = np.bincount(crop.numpy(), minlength=33) + b["outside"][row].numpy()
            # crop + the rest = the whole protein, whatever the crop's start
            assert any(np.array_equal(counts, np.bincount(np.asarray(w), minlength=33))
                       for w in whole)
            cropped += int(b["outside"][row].sum() > 0)
    assert cropped > 0
    plain = MaskedTask(load_config(None, TINY_MASKED + ["model.composition_prior=true"]),
                       [fasta])
    assert "outside" not in plain.batch(0)  # window scope: nothing beyond the window


def test_bad_scope_and_wrong_task_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="model.composition_scope.*valid: window, protein"):
        load_config(None, ["model.composition_scope=genome"])
    with pytest.raises(ConfigError, match="model.composition_scope.*composition_prior"):
        load_config(None, ["model.composition_scope=protein"])  # alone it would do nothing
    cfg = load_config(None, ["model.composition_prior=true", "model.composition_scope=protein"])
    with pytest.raises(ConfigError, match="model.composition_.*does not apply to forecasting"):
        for_task(cfg, "forecast")


def test_cli_trains_records_and_scores_like_the_baseline(tmp_path: Path) -> None:
    """End to end: a run with protein scope, crop 32 and proteins up to 90 residues; with the
    transformer zeroed, `evaluate`'s model perplexity is the composition baseline's."""
    fasta = write_fasta(tmp_path / "p.fa", n=30, min_len=40, max_len=90)
    run = tmp_path / "run"
    sets = TINY_MASKED + ["model.composition_prior=true", "model.composition_scope=protein"]
    args = ["pretrain", str(fasta), "--out-dir", str(run)]
    res = CliRunner().invoke(main, args + [a for s in sets for a in ("--set", s)])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "config.json").read_text())["model"]["composition_scope"] == \
        "protein"
    first = tmp_path / "e1"
    assert CliRunner().invoke(main, ["evaluate", str(run), str(fasta), "--out-dir",
                                     str(first)]).exit_code == 0
    alpha = json.loads((first / "metrics.json").read_text())["baselines"]["composition"][
        "fit"]["alpha"]
    save_weights(composition_only(sciformer.load(run).model, alpha), run / "model.safetensors")
    second = tmp_path / "e2"
    assert CliRunner().invoke(main, ["evaluate", str(run), str(fasta), "--out-dir",
                                     str(second)]).exit_code == 0
    m = json.loads((second / "metrics.json").read_text())
    assert m["model"]["perplexity"] == pytest.approx(
        m["baselines"]["composition"]["perplexity"] / MASS, rel=1e-5)


def test_eval_mask_rate_sets_what_evaluate_and_validation_score(tmp_path: Path) -> None:
    fasta = write_fasta(tmp_path / "p.fa", n=30, min_len=40, max_len=90)
    out = {}
    for name, extra in (("both", []), ("split", ["data.eval_mask_rate=0.15"])):
        run = tmp_path / name
        sets = TINY_MASKED + ["data.mask_rate=0.4", *extra]
        args = ["pretrain", str(fasta), "--out-dir", str(run)]
        assert CliRunner().invoke(main, args + [a for s in sets for a in ("--set", s)]
                                  ).exit_code == 0
        ev = tmp_path / f"ev-{name}"
        assert CliRunner().invoke(main, ["evaluate", str(run), str(fasta), "--out-dir",
                                         str(ev)]).exit_code == 0
        out[name] = json.loads((ev / "metrics.json").read_text())
    assert out["both"]["mask_rate"] == 0.4 and out["split"]["mask_rate"] == 0.15
    # the same held-out proteins (same seed): 40% against 15% of their residues
    assert out["both"]["n_examples"] == out["split"]["n_examples"]
    assert 2.2 < out["both"]["n_masked"] / out["split"]["n_masked"] < 3.3
    with pytest.raises(ConfigError, match="data.eval_mask_rate"):
        load_config(None, ["data.eval_mask_rate=1.0"])
