"""Streaming forecast evaluation: ForecastScore over blocks equals one-shot metrics, and
`evaluate` on a trajectory file gives the same metrics.json whatever the block size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import sciformer.evaluation.forecast as fc
import sciformer.evaluation.model_forecast as mf
from sciformer.evaluation.metrics import ForecastScore, forecast_metrics
from sciformer.evaluation.run import evaluate
from sciformer.io.trajectories import TrajectoryFile
from tests.test_forecast import l63_run, labelled_file

LEVELS = np.array([0.1, 0.5, 0.9])
READ_WINDOWS, DRAW_PLOTS = fc.read_windows, fc.draw_plots  # unpatched, for the spies
CUTS = [0, 1, 4, 5, 11]  # uneven blocks of 1, 3, 1 and 6 windows
BLOCKS = [slice(a, b) for a, b in zip(CUTS[:-1], CUTS[1:])]


def _assert_same(got, want, rtol: float = 1e-12) -> None:
    """Same keys, equal strings/None, floats within `rtol` (summation order only)."""
    if isinstance(want, dict):
        assert got.keys() == want.keys()
        for k in want:
            _assert_same(got[k], want[k], rtol)
    elif isinstance(want, list):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            _assert_same(g, w, rtol)
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=rtol, abs=1e-300)
    else:
        assert got == want


# ---- (a) the accumulator ---------------------------------------------------------------------
@pytest.fixture
def forecast_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    truth = rng.normal(2.0, 1.5, size=(11, 9, 4))
    pred = truth + rng.normal(0, 0.5, size=truth.shape) * np.arange(1, 10)[None, :, None] / 5
    pred[3, 6:] = np.inf  # one diverged window: VPT stops, its steps become JSON null
    spread = np.abs(rng.normal(1, 0.2, size=truth.shape))
    q = np.stack([pred - spread, pred, pred + spread])
    samples = pred[None] + rng.normal(0, 1, size=(6, *truth.shape))
    return {"pred": pred, "truth": truth, "q": q, "samples": samples}


def test_known_answer_over_two_blocks():
    """Block 1: one window off by 0.3 everywhere; block 2: three perfect windows."""
    truth = np.ones((4, 5, 2))
    score = ForecastScore(scale=0.5, dt_steps_per_lyapunov=2.0)
    score.add(truth[:1] + 0.3, truth[:1])
    score.add(truth[1:], truth[1:])
    m = score.result()
    assert m["per_step"]["nrmse"] == pytest.approx([np.sqrt(0.09 / 4) / 0.5] * 5)  # 0.3
    assert m["smape"] == pytest.approx(200 * 0.3 / 2.3 / 4)  # one window of four
    # sMAPE 13 % never crosses 30; error 0.3 / channel std (default scale 0.5) = 0.6 > 0.5
    assert m["vpt_smape"] == pytest.approx(5 / 2.0) and m["vpt_unit"] == "lyapunov_times"
    assert m["vpt"] == pytest.approx((0 + 3 * 5) / 4 / 2.0)
    assert m["crps"] == pytest.approx(0.3 / 4) and m["crps_from"] == "point"  # CRPS = MAE
    assert score.n_windows == 4 and "pit" not in m


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf - inf in the samples
@pytest.mark.parametrize("crps_from", [None, "quantiles", "samples"])
def test_blocks_equal_one_shot_metrics(forecast_data, crps_from):
    d = forecast_data
    ens = {"quantiles": d["q"], "samples": d["samples"]}
    kw = {} if crps_from is None else {crps_from: ens[crps_from]}
    want = forecast_metrics(d["pred"], d["truth"], scale=1.3, dt_steps_per_lyapunov=4.0,
                            levels=LEVELS, channel_std=[1.0, 2.0], state_shape=(2, 2), **kw)
    score = ForecastScore(1.3, 4.0, levels=LEVELS, channel_std=[1.0, 2.0], state_shape=(2, 2))
    for b in BLOCKS:
        score.add(d["pred"][b], d["truth"][b], **{k: v[:, b] for k, v in kw.items()})
    got = score.result()
    _assert_same(got, want)
    assert got["crps_from"] == (crps_from or "point")
    assert ("pit" in got) == (crps_from == "samples")  # randomised ties: same draws per window
    assert ("coverage_80" in got) == (crps_from is not None)
    assert len(got["vrmse_per_field"]) == 2
    assert got["per_step"]["nrmse"][6] is None and got["per_step"]["nrmse"][5] is not None
    json.dumps(got, allow_nan=False)


def test_mismatched_blocks_rejected(forecast_data):
    d = forecast_data
    score = ForecastScore(1.0, levels=LEVELS)
    score.add(d["pred"][:2], d["truth"][:2], quantiles=d["q"][:, :2])
    with pytest.raises(ValueError, match=r"\(H, F\)"):
        score.add(d["pred"][2:4, :5], d["truth"][2:4, :5], quantiles=d["q"][:, 2:4, :5])
    with pytest.raises(ValueError, match="every block"):
        score.add(d["pred"][2:4], d["truth"][2:4])
    assert score.n_windows == 2  # rejected blocks added nothing
    with pytest.raises(ValueError, match="levels"):
        ForecastScore(1.0).add(d["pred"], d["truth"], quantiles=d["q"])
    with pytest.raises(ValueError, match="scale"):
        ForecastScore(0.0)
    with pytest.raises(ValueError, match="Lyapunov"):
        ForecastScore(1.0, dt_steps_per_lyapunov=-1.0)
    with pytest.raises(ValueError, match="no windows"):
        ForecastScore(1.0).result()


# ---- reading a block of windows --------------------------------------------------------------
def test_read_windows_non_contiguous_trajectories(tmp_path):
    f = TrajectoryFile(labelled_file(tmp_path / "lab.h5", n_traj=8, n_time=40))
    starts = fc.window_starts(40, 10, 3)
    wins, origin = fc.read_windows(f, [1, 2, 3, 6], starts, 10)
    assert [tuple(s) for s in fc._runs([1, 2, 3, 6])] == [(1, 4), (6, 7)]
    assert origin == [(t, s) for t in (1, 2, 3, 6) for s in (0, 15, 30)]
    assert wins.shape == (12, 10, 2)
    for w, (t, s) in zip(wins, origin):  # channel 0 = trajectory, channel 1 = time step
        assert np.all(w[:, 0] == t) and np.array_equal(w[:, 1], np.arange(s, s + 10))


def test_block_size_is_whole_model_batches(monkeypatch):
    monkeypatch.setattr(fc, "EVAL_BLOCK_TRAJECTORIES", 2)
    assert fc.block_trajectories(8, 64) == 8  # 64 windows: one batch
    assert fc.block_trajectories(3, 64) == 64  # 192 windows: three batches
    assert fc.block_trajectories(1, 1) == fc.N_PLOTTED  # never fewer than the plotted ones
    monkeypatch.setattr(fc, "EVAL_BLOCK_TRAJECTORIES", 100)
    assert fc.block_trajectories(8, 64) == 104


# ---- (b), (c) evaluate in blocks -------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    """A 20-step run on a tiny Lorenz-63 file (4 of 16 trajectories held out) and a separate
    20-trajectory file."""
    return l63_run(tmp_path_factory.mktemp("stream"), (16, 120), (20, 80))


def _evaluate_in_blocks(small, monkeypatch, block: int, name: str, data: str = "test",
                        draw: bool = True):
    """metrics.json of one evaluation, the trajectories of each block read, the shown windows."""
    read, shown = [], []
    monkeypatch.setattr(fc, "EVAL_BLOCK_TRAJECTORIES", block)
    monkeypatch.setattr(fc, "read_windows",
                        lambda f, t, *a: read.append(t) or READ_WINDOWS(f, t, *a))
    monkeypatch.setattr(fc, "draw_plots", lambda out, meta, s, m: shown.append(s) or (
        DRAW_PLOTS(out, meta, s, m) if draw else []))
    out = small["root"] / name
    evaluate(small["run"], small[data], out, device="cpu", context=16, horizon=24)
    return json.loads((out / "metrics.json").read_text()), read, shown[0]


def test_evaluate_in_small_blocks_equals_one_block(small, monkeypatch):
    streamed, read, shown = _evaluate_in_blocks(small, monkeypatch, 2, "blocks")
    whole, read_whole, _ = _evaluate_in_blocks(small, monkeypatch, 1000, "whole", draw=False)
    # 20 trajectories x 8 windows; blocks of 8 trajectories = one model batch of 64 windows
    assert [len(b) for b in read] == [8, 8, 4] and [len(b) for b in read_whole] == [20]
    assert sum(read, []) == list(range(20))
    assert streamed["n_examples"] == whole["n_examples"] == 160
    assert streamed["n_trajectories"] == 20
    _assert_same({k: v for k, v in streamed.items() if k != "data"},
                 {k: v for k, v in whole.items() if k != "data"})
    assert set(streamed["baselines"]) == {"persistence", "mean", "ridge_ar", "parroting", "nvar"}
    assert all(b["crps_from"] == "point" for b in streamed["baselines"].values())
    # (c) the plots: written, from the first window of each of the first N_PLOTTED trajectories
    out = small["root"] / "blocks"
    for png in ("forecast.png", "error_vs_horizon.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert shown.origin == [(0, 0), (1, 0), (2, 0)]
    with TrajectoryFile(small["test"]) as f:
        np.testing.assert_array_equal(shown.ctx, f.windows(0, 3, 0, 16).reshape(3, 16, -1))
        np.testing.assert_array_equal(shown.truth, f.windows(0, 3, 16, 24).reshape(3, 24, -1))
    assert shown.q.shape == (3, 3, 24, 3) and shown.med.shape == (3, 24, 3)


def test_evaluate_scores_the_models_sample_paths(small, monkeypatch):
    """The model's own sample paths: exact CRPS, per-lead coverage, PIT and their plots;
    median and band are the paths' empirical quantiles."""
    shown = []
    monkeypatch.setattr(fc, "draw_plots", lambda out, meta, s, m: shown.append(s) or (
        DRAW_PLOTS(out, meta, s, m)))
    out = small["root"] / "sampled"
    m = evaluate(small["run"], small["test"], out, device="cpu", context=16, horizon=24,
                 samples=32)
    model = m["model"]
    assert m["samples"] == 32 and shown[0].model.samples.shape[0] == 32
    assert model["crps_from"] == "samples" and len(model["coverage_80"]) == 24
    assert len(model["coverage_50"]) == 24 and model["pit"]["n"] == 160 * 24 * 3
    assert all(0 <= c <= 1 for c in model["coverage_80"])
    assert "vpt_smape" in m["definitions"] and "not reported" in m["definitions"]["vrmse"]
    paths = shown[0].model.samples
    np.testing.assert_allclose(shown[0].med, np.quantile(paths, 0.5, axis=0), atol=1e-12)
    np.testing.assert_allclose(shown[0].q, np.quantile(paths, LEVELS, axis=0), atol=1e-12)
    for png in ("pit.png", "coverage.png", "crps_vs_horizon.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    text = (out / "summary.md").read_text()
    assert "## Calibration (model)" in text and "coverage of the 80% interval" in text


def test_evaluate_heldout_of_training_file_in_blocks(small, monkeypatch):
    """The held-out trajectories of a training file are not contiguous; still same numbers."""
    monkeypatch.setattr(mf, "model_batch", lambda cfg: 1)  # blocks of N_PLOTTED trajectories
    streamed, read, _ = _evaluate_in_blocks(small, monkeypatch, 1, "tb", "train", draw=False)
    whole, _, _ = _evaluate_in_blocks(small, monkeypatch, 1000, "tw", "train", draw=False)
    held = json.loads((small["run"] / "split.json").read_text())["heldout"]
    assert [len(b) for b in read] == [3, 1] and sum(read, []) == sorted(held)
    assert streamed["n_examples"] == 4 * 8 and "held-out" in streamed["scope"]
    _assert_same(streamed, whole)


def test_error_plots_switch_to_a_log_axis_when_curves_span_decades():
    from sciformer.evaluation.forecast_plots import spans_decades

    assert spans_decades({"model": [1e-5, 2e-5], "nvar": [1e-3, 0.0], "mean": [7.0, np.nan]})
    assert not spans_decades({"model": [0.1, 0.5], "persistence": [0.2, 1.0], "z": [0.0]})
    assert not spans_decades({"model": [0.0, np.nan]})
