"""Tests for sciformer.evaluation.report: every plot writes a PNG and leaks no figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from sciformer.evaluation.report import (
    coverage_lines,
    plot_coverage,
    plot_error_vs_horizon,
    plot_forecasts,
    plot_masked_report,
    plot_pit,
    plot_spacetime,
    write_summary,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC
    assert plt.get_fignums() == []  # the figure was closed
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


@pytest.fixture
def forecast():
    rng = np.random.default_rng(0)
    ctx, truth = rng.standard_normal((4, 10, 5)), rng.standard_normal((4, 6, 5))
    return ctx, truth, truth + 0.1


def test_plot_forecasts_with_band(tmp_path, forecast):
    ctx, truth, med = forecast
    out = plot_forecasts(tmp_path / "f.png", np.arange(16) * 0.1, ctx, truth, med, med - 0.5,
                         med + 0.5, feature_names=[f"u{j}" for j in range(5)])
    assert out == tmp_path / "f.png"
    _assert_png(out)


def test_plot_forecasts_point_forecast_single_feature(tmp_path, forecast):
    ctx, truth, med = (a[:1, :, :1] for a in forecast)
    _assert_png(plot_forecasts(tmp_path / "g.png", np.arange(16), ctx, truth, med, None, None,
                               feature_names=None, x_label="time (steps)"))


def test_plot_forecasts_bad_shapes_rejected_without_leak(tmp_path, forecast):
    ctx, truth, med = forecast
    with pytest.raises(ValueError, match="time axis"):
        plot_forecasts(tmp_path / "h.png", np.arange(15), ctx, truth, med)
    with pytest.raises(ValueError, match="both lo and hi"):
        plot_forecasts(tmp_path / "h.png", np.arange(16), ctx, truth, med, med, None)
    assert not (tmp_path / "h.png").exists() and plt.get_fignums() == []


def test_plot_error_vs_horizon(tmp_path):
    x = np.arange(1, 11) * 0.05
    curves = {"model": x, "persistence": 2 * x, "mean": np.ones(10), "ridge_ar": [None] * 10}
    _assert_png(plot_error_vs_horizon(tmp_path / "e.png", x, curves, metric="nRMSE"))
    with pytest.raises(ValueError, match="curve 'mean'"):
        plot_error_vs_horizon(tmp_path / "e2.png", x, {"mean": np.ones(3)})
    assert not (tmp_path / "e2.png").exists() and plt.get_fignums() == []


def test_plot_coverage_and_pit(tmp_path):
    x = np.arange(1, 21) * 0.1
    curves = {"coverage_50": np.linspace(0.5, 0.2, 20), "coverage_80": np.linspace(0.8, 0.4, 20)}
    _assert_png(plot_coverage(tmp_path / "c.png", x, curves))
    with pytest.raises(ValueError, match="coverage_90"):
        plot_coverage(tmp_path / "c2.png", x, {"coverage_90": np.ones(20)})
    edges = np.linspace(0, 1, 11)
    _assert_png(plot_pit(tmp_path / "p.png", edges, [0.2] + [0.075] * 8 + [0.2], n=4000))
    with pytest.raises(ValueError, match="11 bin edges for 9 bins"):
        plot_pit(tmp_path / "p2.png", edges, [0.1] * 9)
    assert plt.get_fignums() == []


def test_coverage_lines_at_summary_leads():
    model = {"coverage_80": [0.9, 0.8, 0.7, 0.6], "coverage_50": [0.5, 0.4, 0.3, 0.25],
             "nrmse_at": {"h1": 0.1, "h4": 0.3}}
    lines = coverage_lines({"model": model})
    assert lines[2] == ("| lead (steps) | coverage of the 50% interval | coverage of the 80% "
                        "interval |")
    assert lines[4:6] == ["| 1 | 0.5 | 0.9 |", "| 4 | 0.25 | 0.6 |"]
    assert coverage_lines({"model": {"nrmse": 1.0}}) == []


def test_plot_spacetime(tmp_path):
    x = np.linspace(0, 2 * np.pi, 64)
    t = np.arange(30)[:, None] * 0.1
    truth = np.sin(x[None] - t)
    _assert_png(plot_spacetime(tmp_path / "s.png", truth, truth * 0.9, dt=0.1,
                               x_extent=(0.0, 2 * np.pi), title="KS test"))


def test_plot_masked_report(tmp_path):
    letters = list("LAGVSERTIDPKQNFYMHWC")
    rng = np.random.default_rng(1)
    conf = rng.integers(0, 20, (20, 20)) + np.diag(np.full(20, 50))
    conf[3] = 0  # a residue never seen: empty row, NaN accuracy
    acc = {a: (float(conf[i, i] / conf[i].sum()) if conf[i].sum() else float("nan"))
           for i, a in enumerate(letters)}
    _assert_png(plot_masked_report(tmp_path / "m.png", acc, conf, letters, conf.sum(axis=1)))
    counts = dict(zip(letters, conf.sum(axis=1).tolist()))
    _assert_png(plot_masked_report(tmp_path / "m2.png", acc, conf, letters, counts))


def test_write_summary_forecast_table(tmp_path):
    metrics = {
        "task": "forecast", "n_examples": 12,
        "model": {"nrmse": 0.2, "vrmse": 0.3, "smape": 15.0, "vpt": 2.5,
                  "vpt_unit": "lyapunov_times", "crps": 0.1, "per_step": {"nrmse": [0.1, 0.3]},
                  "vpt_smape": 1.5, "nrmse_per_channel": [0.1, 0.3], "crps_from": "samples",
                  "coverage_80": [0.8, 0.7]},
        "baselines": {
            "persistence": {"nrmse": 0.9, "vrmse": 0.25, "smape": 40.0, "vpt": 0.5,
                            "crps": 0.3, "vpt_smape": 2.0, "fit": {"note": "x"}},
            "mean": {"nrmse": 1.0, "vrmse": 1.0, "smape": 90.0, "vpt": 0.0},
            "ridge_ar": {"nrmse": None, "vrmse": 2.0, "smape": 200.0, "vpt": 2.5},
        },
    }
    path = write_summary(tmp_path / "summary.md", metrics, title="Lorenz-63",
                         plots=["forecasts.png", str(tmp_path / "sub" / "err.png")])
    text = path.read_text()
    assert text.startswith("# Lorenz-63")
    assert "- **n_examples**: 12" in text and "- **task**: forecast" in text
    assert ("| | nrmse | vrmse | smape | vpt (lyapunov times) | crps | vpt_smape (lyapunov "
            "times) |") in text
    assert "| model | **0.2** | 0.3 | **15** | **2.5** | **0.1** | 1.5 |" in text
    assert "| persistence | 0.9 | **0.25** | 40 | 0.5 | 0.3 | **2** |" in text
    assert "| mean | 1 | 1 | 90 | 0 | — | — |" in text
    assert "| ridge_ar | — | 2 | 200 | **2.5** | — | — |" in text  # tie for best vpt: both bold
    assert "| 2 | — | 0.7 |" not in text and "## Calibration (model)" in text
    assert "![forecasts](forecasts.png)" in text and "![err](sub/err.png)" in text
    assert "per_step" not in text


def test_write_summary_masked_accuracy_higher_is_better(tmp_path):
    metrics = {"task": "masked", "n_examples": 3, "n_masked": 40,
               "model": {"perplexity": 6.5, "accuracy": 0.4, "n_masked": 40},
               "baselines": {"unigram": {"perplexity": 17.2, "accuracy": 0.1, "n_masked": 40}}}
    text = write_summary(tmp_path / "s.md", metrics, title="Proteins", plots=[]).read_text()
    assert "| model | **6.5** | **0.4** |" in text
    assert "| unigram | 17.2 | 0.1 |" in text
    assert "## Plots" not in text
