"""Spread recalibration of sample paths: the fitted factors, the stored file, the run; and
the sampler's level sort."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from sciformer.calibrate import calibrate
from sciformer.cli import main
from sciformer.errors import InputError
from sciformer.evaluation.forecast import default_horizon
from sciformer.evaluation.metrics import coverage_per_step
from sciformer.evaluation.run import evaluate
from sciformer.io.trajectories import TrajectoryFile
from sciformer.pipelines import load
from sciformer.pipelines.recalibrate import (
    CALIBRATION_FILE,
    COVERAGE_BAND,
    SpreadCalibration,
    band_limits,
    banded_crps_factor,
    crps_factor,
    fit_factors,
    per_lead_factors,
    smooth,
)

SIGMA = np.array([0.5, 1.0, 2.0])  # the paths' spread per lead; the truth's is 1


def gaussian_case(n: int = 400, samples: int = 32, features: int = 4, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Paths (S, n, 3, F) of N(loc, SIGMA^2) and truths of N(loc, 1), loc random per point:
    under-dispersed at lead 1, calibrated at lead 2, over-dispersed at lead 3."""
    rng = np.random.default_rng(seed)
    loc = rng.normal(size=(n, 3, features)) * 3
    truth = loc + rng.normal(size=loc.shape)
    paths = loc + SIGMA[None, None, :, None] * rng.normal(size=(samples, *loc.shape))
    return paths, truth


def fair_crps(paths: np.ndarray, truth: np.ndarray) -> float:
    """Sum of the fair ensemble CRPS, by brute force over all pairs."""
    m = paths.shape[0]
    err = np.abs(paths - truth).mean(axis=0)
    pairs = np.abs(paths[:, None] - paths[None, :]).sum(axis=(0, 1)) / (2 * m * (m - 1))
    return float((err - pairs).sum())


def test_crps_factor_is_the_exact_minimiser():
    paths, truth = gaussian_case(n=40, samples=8, features=2, seed=3)
    p, t = paths[:, :, 0].reshape(8, -1), truth[:, 0].ravel()
    med = np.median(p, axis=0)
    s = crps_factor(p - med, t - med)
    score = [fair_crps(med + g * (p - med), t) for g in (s, 0.97 * s, 1.03 * s)]
    assert score[0] <= min(score[1:])
    grid = np.linspace(0.5, 4, 351)
    best = grid[np.argmin([fair_crps(med + g * (p - med), t) for g in grid])]
    assert s == pytest.approx(best, abs=0.02)


@pytest.mark.parametrize("method", ["crps", "coverage", "crps-free"])
def test_factors_restore_nominal_coverage_and_leave_calibrated_paths_alone(method):
    paths, truth = gaussian_case()
    f = per_lead_factors(paths, truth, method)
    # about the true ratio 1 / SIGMA: the median of 32 draws is itself noisy (its error adds
    # to the truth's deviation), so the optimal factors sit a little above 1 / SIGMA
    np.testing.assert_allclose(f, 1 / SIGMA, rtol=0.2)
    assert np.all(f > 0.9 / SIGMA)
    assert abs(f[1] - 1) < 0.12
    before = coverage_per_step(paths, truth)["coverage_80"]
    after = coverage_per_step(SpreadCalibration(f).apply(paths), truth)["coverage_80"]
    assert before[0] < 0.5 and before[2] > 0.95  # the case is really mis-dispersed
    # the coverage fit aims at 0.8 itself; the CRPS optimum of 32 paths about their noisy
    # median is a little wider (0.82-0.84 here), inside the band the crps method keeps
    tol = 0.03 if method == "coverage" else 0.05
    np.testing.assert_allclose(after, 0.8, atol=tol)
    held_out = gaussian_case(seed=7)  # fitted on one sample, right on another
    again = coverage_per_step(SpreadCalibration(f).apply(held_out[0]), held_out[1])
    np.testing.assert_allclose(again["coverage_80"], 0.8, atol=tol)


def test_banded_crps_factor_keeps_coverage_in_band_at_least_crps_cost():
    """Truths with many tiny and some large errors (70% N(0, 0.01^2), 30% N(0, 3^2)) about
    Gaussian paths: the CRPS-optimal spread leaves the 80% interval covering under 75%; the
    banded fit moves the factor to the band's edge, the CRPS-best factor with coverage in the
    band (convexity), and leaves a factor already in the band alone."""
    rng = np.random.default_rng(1)
    n, m = 4000, 32
    truth = np.where(rng.random(n) < 0.3, 3.0, 0.01) * rng.normal(size=n)
    dev = rng.normal(size=(m, n))
    dev -= np.median(dev, axis=0)

    def cover(s: float) -> float:
        sd = np.sort(s * dev, axis=0)
        lo, hi = np.quantile(sd, 0.1, axis=0), np.quantile(sd, 0.9, axis=0)
        return float(np.mean((truth >= lo) & (truth <= hi)))

    free, banded = crps_factor(dev, truth), banded_crps_factor(dev, truth)
    assert cover(free) < COVERAGE_BAND[0] - 0.01
    assert cover(banded) == pytest.approx(COVERAGE_BAND[0], abs=0.01)
    ok = [g for g in np.linspace(banded, 3 * banded, 12) if cover(g) <= COVERAGE_BAND[1]]
    assert len(ok) > 2
    score = [fair_crps(g * dev[:, :, None], truth[:, None]) for g in ok]
    assert score[0] == min(score)  # the band's lower edge is the best factor inside it
    assert fair_crps(free * dev[:, :, None], truth[:, None]) < score[0]  # the price of it
    paths, gauss = gaussian_case()  # calibrated lead 2: the band costs next to nothing
    p, t = paths[:, :, 1].reshape(32, -1), gauss[:, 1].ravel()
    med = np.median(p, axis=0)
    s_band, s_free = banded_crps_factor(p - med, t - med), crps_factor(p - med, t - med)
    assert s_band == pytest.approx(s_free, rel=0.05)
    lo, hi = band_limits(p - med, t - med)
    assert lo <= s_band <= hi
    wide = band_limits(p - med, t - med, (0.75, 0.85))  # a wider band holds the free optimum
    assert wide[0] <= s_free <= wide[1]
    assert banded_crps_factor(p - med, t - med, (0.75, 0.85)) == s_free


def test_apply_keeps_the_median_and_holds_the_last_factor():
    paths, _ = gaussian_case(n=5)
    cal = SpreadCalibration(np.array([2.0, 3.0]))
    assert cal.at(5).tolist() == [2.0, 3.0, 3.0, 3.0, 3.0]
    out = cal.apply(paths)
    med = np.median(paths, axis=0)
    np.testing.assert_allclose(np.median(out, axis=0), med, atol=1e-12)
    np.testing.assert_allclose(out[:, :, 2] - med[:, 2], 3.0 * (paths[:, :, 2] - med[:, 2]))


def test_smoothing_averages_log_factors_within_its_window():
    assert smooth(np.full(50, 1.7)) == pytest.approx(np.full(50, 1.7))
    trend = np.exp(np.linspace(0.0, 1.5, 60))  # a trend in log s is kept, ends included
    assert smooth(trend, fraction=0.3) == pytest.approx(trend)
    raw = np.where(np.arange(40) % 2 == 0, 2.0, 0.5)  # a saw-tooth in log s: averages to ~1
    assert np.all(np.abs(np.log(smooth(raw)[2:-2])) < np.log(2) / 2)
    assert smooth(raw, fraction=0.0) == pytest.approx(raw)
    paths, truth = gaussian_case(n=100)
    raw, fitted = fit_factors(paths, truth, fraction=0.0)
    assert raw == pytest.approx(per_lead_factors(paths, truth))
    assert fitted == pytest.approx(raw)


def test_smoothing_never_moves_a_lead_out_of_its_coverage_band():
    """One lead three times as under-dispersed as its neighbours: smoothing over all leads
    pulls its factor towards theirs (80% coverage ~0.45 there), and the crps fit then holds
    it inside that lead's band again; the other methods are left as smoothed."""
    rng = np.random.default_rng(4)
    sigma = np.array([1.0, 1.0, 1.0, 1 / 3, 1.0, 1.0, 1.0])
    loc = rng.normal(size=(400, 7, 3)) * 3
    truth = loc + rng.normal(size=loc.shape)
    paths = loc + sigma[None, None, :, None] * rng.normal(size=(32, *loc.shape))
    raw, fitted = fit_factors(paths, truth, "crps", fraction=1.0)
    free = smooth(raw, 1.0)
    loose = coverage_per_step(SpreadCalibration(free).apply(paths), truth)["coverage_80"]
    held = coverage_per_step(SpreadCalibration(fitted).apply(paths), truth)["coverage_80"]
    assert loose[3] < 0.6  # what smoothing alone does to the odd lead
    # the fit's interval ends (Weibull positions) hold the band exactly; the randomised PIT
    # agrees with them in expectation over truths spread evenly within a rank's cell, which
    # in the tails they are not quite (0.737 where the fit's ends give 0.750 here)
    assert np.all((held >= COVERAGE_BAND[0] - 0.02) & (held <= COVERAGE_BAND[1] + 0.02))
    assert fit_factors(paths, truth, "crps-free", fraction=1.0)[1] == pytest.approx(
        smooth(per_lead_factors(paths, truth, "crps-free"), 1.0))


def test_apply_is_float64_so_factors_act_below_the_float32_spacing():
    """An accurate model of float32 data: paths a few float32 spacings apart (about 20.0,
    spacing 1.9e-6). In float32 a factor of 0.7 would round the deviations back to whole
    spacings; in float64 they are 0.7 of them, as the fit assumed."""
    ulp = float(np.spacing(np.float32(20.0)))
    steps = np.random.default_rng(0).integers(-3, 4, size=(32, 10, 2, 1))
    paths = (np.float32(20.0) + steps * np.float32(ulp)).astype(np.float32)
    out = SpreadCalibration(np.array([0.7])).apply(paths)
    assert out.dtype == np.float64
    med = np.median(paths.astype(np.float64), axis=0)
    np.testing.assert_allclose(out - med, 0.7 * (paths.astype(np.float64) - med), rtol=0,
                               atol=1e-12)
    rounded = (med + 0.7 * (paths - med)).astype(np.float32)  # what float32 would keep
    assert not np.allclose(rounded - med, 0.7 * (paths - med), rtol=0, atol=0.1 * ulp)


def test_calibration_file_round_trip_and_bad_files(tmp_path):
    assert SpreadCalibration.load(tmp_path) is None  # an old run: no recalibration
    cal = SpreadCalibration(np.array([1.5, 1.25]), {"n_windows": 3})
    cal.save(tmp_path)
    back = SpreadCalibration.load(tmp_path)
    assert back.factors.tolist() == [1.5, 1.25] and back.fitted == {"n_windows": 3}
    for bad in ({"factors": []}, {"factors": [1.0, -2.0]}, {"factors": "x"},
                {"factors": [1.0], "method": "isotonic"}):
        (tmp_path / CALIBRATION_FILE).write_text(json.dumps(bad))
        with pytest.raises(InputError, match=CALIBRATION_FILE):
            SpreadCalibration.load(tmp_path)
    (tmp_path / CALIBRATION_FILE).write_text("{")
    with pytest.raises(InputError, match="unreadable"):
        SpreadCalibration.load(tmp_path)


# ---- a run ------------------------------------------------------------------------------------
TINY = {"model": {"d_model": 32, "n_heads": 4, "n_encoder_layers": 1, "n_decoder_layers": 1,
                  "d_ff": 64, "dropout": 0.0},
        "data": {"context": 16, "horizon": 8, "patch_len": 4, "val_fraction": 0.25,
                 "samples": 16},
        "train": {"max_steps": 20, "batch_size": 8, "warmup_steps": 2, "eval_every": 10,
                  "log_every": 10, "checkpoint_every": 20, "threads": 1}}


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory) -> Path:
    """A tiny Lorenz-63 workflow: simulate, pretrain (which calibrates), evaluate."""
    root = tmp_path_factory.mktemp("calib")
    wf = {"name": "calib", "stages": [
        {"simulate": {"system": "lorenz63", "out": str(root / "train.h5"), "n_traj": 8,
                      "n_steps": 300, "seed": 0}},
        {"simulate": {"system": "lorenz63", "out": str(root / "test.h5"), "n_traj": 2,
                      "n_steps": 300, "seed": 1}},
        {"pretrain": {"data": [str(root / "train.h5")], "out_dir": str(root / "run"),
                      "config": TINY}},
        {"evaluate": {"run": str(root / "run"), "data": str(root / "test.h5"),
                      "out_dir": str(root / "eval"), "horizon": 40}}]}
    (root / "wf.yaml").write_text(yaml.safe_dump(wf))
    res = CliRunner().invoke(main, ["run", str(root / "wf.yaml")])
    assert res.exit_code == 0, res.output
    return root


def test_workflow_run_holds_its_calibration_and_evaluate_applies_it(workflow_run):
    root = workflow_run
    raw = json.loads((root / "run" / CALIBRATION_FILE).read_text())
    split = json.loads((root / "run" / "split.json").read_text())
    fitted = raw["fitted"]
    assert fitted["trajectories"] == split["heldout_origin"]  # the validation trajectories
    meta = TrajectoryFile(root / "train.h5").meta  # evaluate's default horizon, if it fits
    want = min(default_horizon(8, meta.dt, meta.lyapunov_time), 300 - 16)
    assert fitted["horizon"] == len(raw["factors"]) == want
    assert fitted["n_windows"] == 2 * fitted["windows_per_trajectory"]
    assert fitted["samples"] == 16 and fitted["context"] == 16
    for side in ("validation_before", "validation_after"):
        assert set(fitted[side]) == {"coverage_50", "coverage_80", "crps"}
    first = fitted["first_patch"]  # the hybrid's first-patch correction, fitted before
    assert first["fitted"] == (root / "run" / "first_patch.safetensors").exists()
    assert (load(root / "run", "cpu").first_patch is not None) == first["fitted"]
    m = json.loads((root / "eval" / "metrics.json").read_text())
    assert m["model"]["recalibrated"] is True
    assert m["model"]["first_patch_corrected"] == fitted["first_patch"]["fitted"]
    assert "spread rescaled per lead by calibration.json" in m["post_training"]
    assert ("first_patch.safetensors" in m["post_training"]) == fitted["first_patch"]["fitted"]
    assert "**post_training**" in (root / "eval" / "summary.md").read_text()
    row = m["model"]["raw"]
    assert len(row["coverage_80"]) == len(row["spread_factors"]) == 40
    assert row["spread_factors"] == pytest.approx(raw["factors"][:40], abs=1e-5)
    assert row["crps"] != m["model"]["crps"]
    assert "raw paths" in (root / "eval" / "summary.md").read_text()


def test_validation_windows_shrink_where_their_paths_would_not_fit(workflow_run,
                                                                    monkeypatch):
    """Up to CALIBRATION_WINDOWS windows; fewer when `samples` paths of them would exceed
    PATH_BYTES, never fewer than one per validation trajectory."""
    import sciformer.calibrate as cal_mod

    run = workflow_run / "run"
    fc = load(run, "cpu")
    ctx, truth, about = cal_mod.validation_windows(fc, run, 40, samples=16)
    n_traj = len(about["trajectories"])
    assert len(ctx) == len(truth) == n_traj * about["windows_per_trajectory"] > 2 * n_traj
    one = 4 * 16 * 40 * 3  # float32 paths of one window: samples x horizon x features
    monkeypatch.setattr(cal_mod, "PATH_BYTES", 2 * n_traj * one)
    ctx, truth, about = cal_mod.validation_windows(fc, run, 40, samples=16)
    assert about["windows_per_trajectory"] == 2 and len(ctx) == 2 * n_traj
    monkeypatch.setattr(cal_mod, "PATH_BYTES", 1)
    ctx, _, about = cal_mod.validation_windows(fc, run, 40, samples=16)
    assert about["windows_per_trajectory"] == 1 and len(ctx) == n_traj


def test_forecaster_applies_the_factors_unless_told_not_to(workflow_run):
    fc = load(workflow_run / "run", "cpu")
    assert fc.calibration is not None
    ctx = np.random.default_rng(0).normal(size=(2, 16, 3)).astype(np.float32) * 5
    raw = fc.sample(ctx, 20, 8, calibrated=False)
    cal = fc.sample(ctx, 20, 8)
    np.testing.assert_allclose(cal, fc.calibration.apply(raw), rtol=1e-6)
    med = np.median(raw, axis=0)
    s = fc.calibration.at(20)
    np.testing.assert_allclose(cal - med, s[None, None, :, None] * (raw - med), atol=1e-4)
    ds = fc.forecast(ctx, 20, samples=8, calibrated=False)
    np.testing.assert_allclose(ds["samples"].values.reshape(raw.shape), raw, rtol=1e-6)


def test_evaluate_raw_and_old_runs_without_a_calibration(workflow_run, tmp_path):
    root = workflow_run
    m = evaluate(root / "run", root / "test.h5", tmp_path / "raw", device="cpu", horizon=40,
                 raw=True)
    assert m["model"]["recalibrated"] is False and "raw" not in m["model"]
    assert "calibration.json" not in m["post_training"]
    calibrated = json.loads((root / "eval" / "metrics.json").read_text())
    # same draws and median; the hybrid's errors are ~1e-6 of the data's spread here (NVAR
    # is nearly exact on this system), i.e. a few float32 ulps of the states, so rounding of
    # differently batched draws and of the rescaling shows at up to ~0.2%
    assert m["model"]["crps"] == pytest.approx(calibrated["model"]["raw"]["crps"], rel=1e-2)
    assert m["model"]["nrmse"] == pytest.approx(calibrated["model"]["nrmse"], rel=1e-2)


def test_calibrate_command_refits_and_recreates_the_file(workflow_run):
    run = workflow_run / "run"
    before = json.loads((run / CALIBRATION_FILE).read_text())
    (run / CALIBRATION_FILE).unlink()
    assert load(run, "cpu").calibration is None
    res = CliRunner().invoke(main, ["calibrate", str(run), "--method", "coverage",
                                    "--horizon", "24", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "80% coverage on validation" in res.output
    again = json.loads((run / CALIBRATION_FILE).read_text())
    assert again["fitted"]["method"] == "coverage" and len(again["factors"]) == 24
    assert again["fitted"]["trajectories"] == before["fitted"]["trajectories"]


def test_calibrate_leaves_out_windows_with_diverged_paths_and_says_so(workflow_run,
                                                                     monkeypatch, tmp_path):
    """Windows with a non-finite path are excluded and counted; the factors are those of the
    finite windows alone; if every window has one, a one-line error and no file."""
    import shutil

    from sciformer.pipelines import Forecaster

    run = tmp_path / "run"
    shutil.copytree(workflow_run / "run", run)
    plain = calibrate(run, horizon=12, device="cpu")
    assert plain.fitted["windows_with_diverged_paths"] == 0
    sample = Forecaster.sample

    def some_diverge(self, context, horizon, samples=None, **kw):
        out = sample(self, context, horizon, samples, **kw)
        out[3, :2, 5:] = np.nan  # path 3 of the first two windows diverges at lead 6
        return out

    monkeypatch.setattr(Forecaster, "sample", some_diverge)
    cal = calibrate(run, horizon=12, device="cpu")
    assert cal.fitted["windows_with_diverged_paths"] == 2
    assert cal.fitted["n_windows"] == plain.fitted["n_windows"] - 2
    assert np.isfinite(cal.factors).all()
    assert not np.allclose(cal.factors, plain.factors)  # fitted on fewer windows

    def all_diverge(self, context, horizon, samples=None, **kw):
        out = sample(self, context, horizon, samples, **kw)
        out[0] = np.inf
        return out

    monkeypatch.setattr(Forecaster, "sample", all_diverge)
    (run / CALIBRATION_FILE).unlink()
    with pytest.raises(InputError, match="every validation window has a sample path that "
                                         "diverged"):
        calibrate(run, horizon=12, device="cpu")
    assert not (run / CALIBRATION_FILE).exists()


# ---- the sampler's level sort (sample-path cost) ------------------------------------------------
@pytest.mark.parametrize("n_q", [1, 2, 3, 7, 9])
def test_sort_levels_equals_torch_sort(n_q):
    import torch

    from sciformer.pipelines.forecast import sort_levels

    q = torch.randn(5, 3, 11, n_q, generator=torch.Generator().manual_seed(n_q))
    q[0, 0, 0] = 1.0  # ties
    assert torch.equal(sort_levels(q), q.sort(dim=-1).values)
