"""Evaluation plots (PNG) and the markdown summary.

Every figure is drawn with the non-interactive Agg backend, written atomically (temp file then
rename, `sciformer.io.atomic.atomic_path`) and closed even when drawing fails, so long
evaluations never accumulate open figures. The model is always drawn in one colour
(`MODEL_COLOR`), truth in black and context in grey, so the plots read the same everywhere.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from sciformer.io.atomic import atomic_path, write_text_atomic

MODEL_COLOR = "tab:blue"
BASELINE_COLORS = ("tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:olive")
#: Metrics where a larger value is better; every other column of the summary is an error.
HIGHER_IS_BETTER = frozenset({"spearman", "accuracy", "vpt", "vpt_smape"})
#: Nominal coverage of each per-lead coverage curve in metrics.json.
NOMINAL_COVERAGE = {"coverage_50": 0.5, "coverage_80": 0.8}
#: Scalars of a metrics dict that are counts, not scores: left out of the summary table.
NOT_SCORES = frozenset({"n_masked", "n_examples"})
DPI = 120


@contextlib.contextmanager
def _figure(path: str | os.PathLike, nrows: int = 1, ncols: int = 1,
            **subplot_kw: Any) -> Iterator[tuple[plt.Figure, np.ndarray]]:
    """A figure with a 2-D array of axes; saved atomically to `path` as PNG, always closed."""
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    try:
        yield fig, axes
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)


def _f64(a: Any) -> np.ndarray:
    """Array as float64; None entries (JSON null) become NaN, which matplotlib leaves out."""
    return np.asarray(a, dtype=np.float64)


def plot_forecasts(path: str | os.PathLike, time_axis: np.ndarray, context: np.ndarray,
                   truth: np.ndarray, median: np.ndarray, lo: np.ndarray | None = None,
                   hi: np.ndarray | None = None, *, feature_names: Sequence[str] | None = None,
                   n_show_traj: int = 3, n_show_feat: int = 3,
                   x_label: str = "time (Lyapunov times)", band_label: str = "forecast interval",
                   title: str = "Forecasts on held-out trajectories") -> Path:
    """Grid of example forecasts: rows are trajectories, columns features.

    Context `(n, C, F)` in grey, the true future `(n, H, F)` in black, the forecast median in
    the model colour with the `lo`..`hi` quantile band shaded; `time_axis` has C + H entries.
    """
    ctx, tru, med = _f64(context), _f64(truth), _f64(median)
    n, c, f = ctx.shape
    h = tru.shape[1]
    if tru.shape != (n, h, f) or med.shape != tru.shape or np.shape(time_axis) != (c + h,):
        raise ValueError(f"plot_forecasts: context {ctx.shape}, truth {tru.shape}, median "
                         f"{med.shape} and time axis {np.shape(time_axis)} do not fit together")
    if (lo is None) != (hi is None):
        raise ValueError("plot_forecasts: give both lo and hi of the band, or neither")
    names = list(feature_names) if feature_names is not None else [f"x{j}" for j in range(f)]
    rows, cols = min(n, n_show_traj), min(f, n_show_feat)
    t = _f64(time_axis)
    band = None if lo is None else (_f64(lo), _f64(hi))
    with _figure(path, rows, cols, figsize=(4.2 * cols, 2.5 * rows + 0.8), sharex=True) as (
            fig, axes):
        for i in range(rows):
            for j in range(cols):
                _forecast_panel(axes[i, j], t, c, ctx[i, :, j], tru[i, :, j], med[i, :, j],
                                None if band is None else (band[0][i, :, j], band[1][i, :, j]),
                                band_label)
                axes[i, j].set_title(f"trajectory {i}: {names[j]}", fontsize=9)
            axes[i, 0].set_ylabel("value")
        for ax in axes[-1]:
            ax.set_xlabel(x_label)
        axes[0, 0].legend(fontsize=7, loc="best")
        fig.suptitle(title)
    return Path(path)


def _forecast_panel(ax: plt.Axes, t: np.ndarray, c: int, ctx: np.ndarray, tru: np.ndarray,
                    med: np.ndarray, band: tuple[np.ndarray, np.ndarray] | None,
                    band_label: str) -> None:
    """One trajectory and feature: context, truth, median and band, forecast origin dotted."""
    ax.plot(t[:c], ctx, color="0.6", lw=1.2, label="context")
    ax.plot(t[c:], tru, color="black", lw=1.2, label="truth")
    if band is not None:
        ax.fill_between(t[c:], *band, color=MODEL_COLOR, alpha=0.25, lw=0, label=band_label)
    ax.plot(t[c:], med, color=MODEL_COLOR, lw=1.6, label="forecast (median)")
    ax.axvline(t[c - 1], color="0.4", ls=":", lw=1)


def plot_error_vs_horizon(path: str | os.PathLike, x: np.ndarray,
                          curves: Mapping[str, Sequence[float] | np.ndarray], *,
                          metric: str = "nRMSE", x_label: str = "lead time (Lyapunov times)",
                          model_key: str = "model", title: str | None = None,
                          log_y: bool = False) -> Path:
    """Error against lead time, the model (key `model_key`) as a thick solid line and each
    baseline dashed, so where the model stops beating them is visible at a glance."""
    xs = _f64(x)
    with _figure(path, figsize=(6.5, 4.2)) as (fig, axes):
        ax = axes[0, 0]
        colors = iter(BASELINE_COLORS * (len(curves) // len(BASELINE_COLORS) + 1))
        for name, curve in curves.items():
            y = _f64(curve)
            if y.shape != xs.shape:
                raise ValueError(f"plot_error_vs_horizon: curve {name!r} has {y.shape} points, "
                                 f"the lead-time axis {xs.shape}")
            if name == model_key:
                ax.plot(xs, y, color=MODEL_COLOR, lw=2.6, label=name, zorder=3)
            else:
                ax.plot(xs, y, color=next(colors), lw=1.3, ls="--", label=name)
        if log_y:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlabel(x_label)
        ax.set_ylabel(metric)
        ax.set_title(title or f"{metric} against lead time")
        ax.grid(alpha=0.3)
        ax.legend()
    return Path(path)


def plot_coverage(path: str | os.PathLike, x: np.ndarray,
                  curves: Mapping[str, Sequence[float] | np.ndarray], *,
                  x_label: str = "lead time (Lyapunov times)",
                  title: str = "Interval coverage against lead time") -> Path:
    """Per-lead coverage of the model's central intervals (keys of `NOMINAL_COVERAGE`), each
    with its nominal level as a dotted line of the same colour: a calibrated forecast stays on
    its line, an overconfident one drops below it as the lead grows."""
    xs = _f64(x)
    with _figure(path, figsize=(6.5, 4.2)) as (fig, axes):
        ax = axes[0, 0]
        for (key, curve), color in zip(curves.items(), (MODEL_COLOR, "tab:cyan", "tab:gray")):
            y = _f64(curve)
            if y.shape != xs.shape or key not in NOMINAL_COVERAGE:
                raise ValueError(f"plot_coverage: curve {key!r} ({y.shape} points) must be one "
                                 f"of {sorted(NOMINAL_COVERAGE)} with {xs.shape} points")
            nominal = NOMINAL_COVERAGE[key]
            ax.plot(xs, y, color=color, lw=2, label=f"central {nominal:.0%} interval")
            ax.axhline(nominal, color=color, ls=":", lw=1.2)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(x_label)
        ax.set_ylabel("fraction of true values inside")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(title="dotted: nominal", fontsize=8)
    return Path(path)


def plot_pit(path: str | os.PathLike, edges: Sequence[float], fraction: Sequence[float], *,
             n: int | None = None, title: str = "PIT histogram of the model") -> Path:
    """Histogram of the probability integral transform: bars at the fraction of values per bin
    and the flat line 1/bins a calibrated forecast gives (U-shaped: too narrow; hump: too
    wide; sloped: biased)."""
    e, f = _f64(edges), _f64(fraction)
    if e.shape != (len(f) + 1,):
        raise ValueError(f"plot_pit: {len(e)} bin edges for {len(f)} bins")
    with _figure(path, figsize=(6.0, 4.0)) as (fig, axes):
        ax = axes[0, 0]
        ax.bar(e[:-1], f, width=np.diff(e), align="edge", color=MODEL_COLOR, alpha=0.8,
               edgecolor="white")
        ax.axhline(1 / len(f), color="black", ls="--", lw=1.2, label="calibrated (uniform)")
        ax.set_xlim(0, 1)
        ax.set_xlabel("PIT (rank of the truth among the samples)")
        ax.set_ylabel("fraction of values")
        ax.set_title(title + ("" if n is None else f" ({n:,} values)"))
        ax.legend(fontsize=8)
    return Path(path)


def plot_spacetime(path: str | os.PathLike, truth: np.ndarray, pred: np.ndarray, *,
                   dt: float = 1.0, t0: float = 0.0, x_extent: tuple[float, float] | None = None,
                   title: str = "", time_label: str = "lead time",
                   x_label: str = "x") -> Path:
    """Space-time diagrams of a 1-D field `(H, n_x)`: truth, forecast, error (forecast - truth).

    x runs horizontally, time upwards. Truth and forecast share one colour scale; the error
    uses a diverging scale of the same width centred on zero, so its colours read in the same
    units as the field's range.
    """
    tru, prd = _f64(truth), _f64(pred)
    if tru.ndim != 2 or prd.shape != tru.shape:
        raise ValueError(f"plot_spacetime: truth {tru.shape} and forecast {prd.shape} must both "
                         f"be (H, n_x)")
    err = prd - tru
    finite = np.concatenate([tru[np.isfinite(tru)], prd[np.isfinite(prd)]])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    half = (vmax - vmin) / 2 or 1.0
    x0, x1 = x_extent if x_extent is not None else (0.0, float(tru.shape[1]))
    extent = (x0, x1, t0, t0 + dt * tru.shape[0])
    panels = (("truth", tru, "viridis", vmin, vmax), ("forecast", prd, "viridis", vmin, vmax),
              ("error (forecast - truth)", err, "RdBu_r", -half, half))
    with _figure(path, 1, 3, figsize=(13, 4.2), sharey=True) as (fig, axes):
        for ax, (name, data, cmap, lo, hi) in zip(axes[0], panels):
            im = ax.imshow(data, origin="lower", aspect="auto", extent=extent, cmap=cmap,
                           vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(name)
            ax.set_xlabel(x_label)
            fig.colorbar(im, ax=ax, shrink=0.85)
        axes[0, 0].set_ylabel(time_label)
        fig.suptitle(title or "Space-time: truth, forecast and error", y=1.03)
    return Path(path)


def plot_masked_report(path: str | os.PathLike, per_residue_accuracy: Mapping[str, float],
                       confusion: np.ndarray, residue_letters: Sequence[str],
                       counts: Mapping[str, int] | Sequence[int] | np.ndarray, *,
                       title: str = "Masked-residue predictions") -> Path:
    """Left: accuracy per true residue (bars, each labelled with its number of masked
    positions); right: the confusion matrix, each row normalised to the fractions of that true
    residue predicted as each residue. `counts` is a mapping by residue or a sequence in the
    order of `per_residue_accuracy`; residues that never occur show an empty bar."""
    letters = list(per_residue_accuracy)
    acc = np.nan_to_num(_f64([per_residue_accuracy[a] for a in letters]), nan=0.0)
    n = [int(counts[a]) for a in letters] if isinstance(counts, Mapping) else list(counts)
    conf = _f64(confusion)
    k = len(residue_letters)
    if len(n) != len(letters) or conf.shape != (k, k):
        raise ValueError(f"plot_masked_report: {len(letters)} accuracies, {len(n)} counts, "
                         f"confusion {conf.shape} for {k} residue letters")
    sums = conf.sum(axis=1, keepdims=True)
    frac = np.divide(conf, sums, out=np.zeros_like(conf), where=sums > 0)
    with _figure(path, 1, 2, figsize=(14, 5.5), width_ratios=(1.2, 1)) as (fig, axes):
        _accuracy_bars(axes[0, 0], letters, acc, [int(v) for v in n])
        ax = axes[0, 1]
        im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(k), residue_letters)
        ax.set_yticks(range(k), residue_letters)
        ax.set_xlabel("predicted residue")
        ax.set_ylabel("true residue")
        ax.set_title("confusion (row-normalised)")
        fig.colorbar(im, ax=ax, shrink=0.85, label="fraction of the true residue's positions")
        fig.suptitle(title)
    return Path(path)


def _accuracy_bars(ax: plt.Axes, letters: list[str], acc: np.ndarray, n: list[int]) -> None:
    """Accuracy bar per residue with its number of masked positions written above it."""
    ax.bar(range(len(letters)), acc, color=MODEL_COLOR)
    for i, (a, c) in enumerate(zip(acc, n)):
        ax.text(i, a + 0.02, f"n={c}", ha="center", va="bottom", rotation=90, fontsize=7)
    ax.set_xticks(range(len(letters)), letters)
    ax.set_ylim(0, 1.25)
    ax.set_xlabel("true residue")
    ax.set_ylabel("accuracy (fraction of masked positions)")
    ax.set_title("accuracy per residue")


def _is_score(value: Any) -> bool:
    """A plain number (or None, a diverged value) that can go into the summary table."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _score_columns(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Scalar metric names over all rows, in first-seen order (the model's first)."""
    cols: list[str] = []
    for scores in rows.values():
        cols += [k for k, v in scores.items()
                 if _is_score(v) and k not in NOT_SCORES and k not in cols]
    return cols


def _best(values: list[Any], higher: bool) -> float | None:
    """The best finite value of a column, or None when fewer than two rows can be compared."""
    ok = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if len(ok) < 2:
        return None
    return max(ok) if higher else min(ok)


def _cell(value: Any, best: float | None) -> str:
    """A table cell: 4 significant digits, bold when it equals the column's best."""
    if value is None or not math.isfinite(float(value)):
        return "—"
    text = str(value) if isinstance(value, int) else f"{float(value):.4g}"
    is_best = best is not None and math.isclose(float(value), best, rel_tol=1e-12)
    return f"**{text}**" if is_best else text


def _table(rows: Mapping[str, Mapping[str, Any]], vpt_unit: str | None) -> list[str]:
    """Markdown table lines: one row per model/baseline, one column per scalar metric."""
    cols = _score_columns(rows)
    unit = f" ({vpt_unit.replace('_', ' ')})" if vpt_unit else ""
    head = [c + unit if c in ("vpt", "vpt_smape") else c for c in cols]
    lines = ["| | " + " | ".join(head) + " |", "|---|" + "---:|" * len(cols)]
    best = {c: _best([r.get(c) for r in rows.values()], c in HIGHER_IS_BETTER) for c in cols}
    for name, scores in rows.items():
        cells = [_cell(scores.get(c), best[c]) for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def metrics_table(metrics: Mapping[str, Any]) -> list[str]:
    """Markdown table lines of a metrics.json dict: the model against every baseline."""
    model = dict(metrics.get("model", {}))
    rows = {"model": model}
    if isinstance(model.get("raw"), Mapping):  # recalibrated: the paths as drawn, for contrast
        rows["model, raw paths"] = {"crps": model["raw"].get("crps")}
    rows.update(dict(metrics.get("baselines", {})))
    return _table(rows, model.get("vpt_unit"))


def coverage_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Markdown table of the model's interval coverage at the lead times of its `nrmse_at`
    (or every tenth lead), with the nominal level in the header; [] without coverage."""
    model = metrics.get("model", {})
    keys = [k for k in NOMINAL_COVERAGE if k in model]
    if not keys:
        return []
    n = len(model[keys[0]])
    leads = sorted(int(k[1:]) for k in model.get("nrmse_at", {})) or list(range(1, n + 1, 10))
    cols = [(model, k, f"coverage of the {NOMINAL_COVERAGE[k]:.0%} interval") for k in keys]
    raw = model.get("raw")
    if isinstance(raw, Mapping):  # recalibrated paths: the raw ones alongside
        cols = [c for k in keys for c in (
            (model, k, f"coverage of the {NOMINAL_COVERAGE[k]:.0%} interval, recalibrated"),
            (raw, k, f"coverage of the {NOMINAL_COVERAGE[k]:.0%} interval, raw paths"))
            if k in c[0]]
    lines = ["## Calibration (model)", "", "| lead (steps) | " + " | ".join(
        c[2] for c in cols) + " |", "|---:|" + "---:|" * len(cols)]
    for h in leads:
        lines.append(f"| {h} | " + " | ".join(_cell(row[k][h - 1], None)
                                             for row, k, _ in cols) + " |")
    return lines + [""]


def write_summary(path: str | os.PathLike, metrics: Mapping[str, Any], *, title: str,
                  plots: Sequence[str | os.PathLike]) -> Path:
    """Markdown summary of a metrics.json dict: the run's facts, a table of the model against
    every baseline (best value per column in bold; lower is better except accuracy and vpt)
    and the plots, linked relative to the summary's folder."""
    path = Path(path)
    facts = [f"- **{k}**: {v}" for k, v in metrics.items()
             if k not in ("model", "baselines") and isinstance(v, (str, int, float))]
    lines = [f"# {title}", "", *facts, ""]
    lines += metrics_table(metrics)
    lines += ["", "Best value per column in bold; lower is better except "
              + " and ".join(sorted(HIGHER_IS_BETTER)) + ".", ""]
    lines += coverage_lines(metrics)
    if plots:
        lines += ["## Plots", ""]
        for p in plots:
            p = Path(p)
            rel = os.path.relpath(p, path.parent) if p.is_absolute() else str(p)
            lines += [f"![{p.stem}]({Path(rel).as_posix()})", ""]
    write_text_atomic(path, "\n".join(lines))
    return path
