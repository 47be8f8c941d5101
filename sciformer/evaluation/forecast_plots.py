"""The plots of a forecasting evaluation: forecast.png, error_vs_horizon.png,
crps_vs_horizon.png, coverage.png and pit.png (when the model reports them), for 1-D
fields spacetime.png, and for fields of 2+ spatial dims field_frames.png (truth / forecast /
error frames at a few leads) and vrmse_vs_lead.png. Drawn by `sciformer.evaluation.report`
(field frames here, with matplotlib); see docs/forecast-metrics.md and docs/fields.md."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sciformer.io.trajectories import TrajectoryMeta

if TYPE_CHECKING:
    from sciformer.evaluation.forecast import PlotWindows


def _shown_features(meta: TrajectoryMeta) -> tuple[list[int], list[str]]:
    """Three features to draw: the first channels, or three grid points of the first field."""
    if len(meta.state_shape) == 1:
        names = meta.field_names or [f"x{j}" for j in range(meta.state_shape[0])]
        idx = list(range(min(3, meta.state_shape[0])))
        return idx, [names[j] for j in idx]
    if len(meta.state_shape) >= 3:  # three points on the grid's diagonal, first field
        space, n_f = meta.state_shape[:-1], meta.state_shape[-1]
        field = (meta.field_names or ["u"])[0]
        feats, names = [], []
        for k in range(3):
            at = [round(k * n / 3) for n in space]
            feats.append(int(np.ravel_multi_index(at, space)) * n_f)
            names.append(f"{field}[{','.join(map(str, at))}]")
        return feats, names
    n_x, n_f = meta.state_shape
    points = sorted({round(k * n_x / 3) for k in range(3)})
    field = (meta.field_names or ["u"])[0]
    return [p * n_f for p in points], [f"{field}[x{p}]" for p in points]


def draw_plots(out_dir: Path, meta: TrajectoryMeta, shown: PlotWindows,
               metrics: dict[str, Any]) -> list[str]:
    """forecast.png (every window of `shown`), error_vs_horizon.png and (1-D fields)
    spacetime.png (the first window of `shown`); their file names.

    Time axes are in Lyapunov times when the Lyapunov time is known, else in time units.
    """
    from sciformer.evaluation import report

    c, h = shown.ctx.shape[1], shown.truth.shape[1]
    lyap, levels = metrics["lyapunov_time"], metrics["quantile_levels"]
    unit, label = (lyap, "time (Lyapunov times)") if lyap else (meta.dt, "time")
    unit = unit / meta.dt  # steps per axis unit
    feat, names = _shown_features(meta)
    paths = shown.model.samples
    band = f"{levels[0]:g}-{levels[-1]:g} quantile band" + (
        "" if paths is None else f" of {len(paths)} sample paths")
    report.plot_forecasts(out_dir / "forecast.png", (np.arange(c + h) - (c - 1)) / unit,
                          shown.ctx[..., feat], shown.truth[..., feat], shown.med[..., feat],
                          shown.q[0][..., feat], shown.q[-1][..., feat], feature_names=names,
                          x_label=label, band_label=band)
    lead = np.arange(1, h + 1) / unit
    plots = ["forecast.png"]
    for key, name, file in (("nrmse", "nRMSE", "error_vs_horizon.png"),
                            ("crps", "CRPS", "crps_vs_horizon.png")):
        curves = {"model": metrics["model"]["per_step"][key],
                  **{k: v["per_step"][key] for k, v in metrics["baselines"].items()}}
        report.plot_error_vs_horizon(out_dir / file, lead, curves, metric=name,
                                     x_label=f"lead {label}", log_y=spans_decades(curves))
        plots.append(file)
    plots += _calibration_plots(out_dir, metrics["model"], lead, f"lead {label}")
    if len(meta.state_shape) == 2:
        _spacetime(out_dir / "spacetime.png", meta, shown, c, unit, label)
        plots.append("spacetime.png")
    if len(meta.state_shape) >= 3 and "vrmse" in metrics["model"]["per_step"]:
        _field_frames(out_dir / "field_frames.png", meta, shown, c)
        curves = {"model": metrics["model"]["per_step"]["vrmse"],
                  **{k: v["per_step"]["vrmse"] for k, v in metrics["baselines"].items()}}
        report.plot_error_vs_horizon(out_dir / "vrmse_vs_lead.png", np.arange(1, h + 1),
                                     curves, metric="VRMSE", x_label="lead (steps)")
        plots += ["field_frames.png", "vrmse_vs_lead.png"]
    return plots


def spans_decades(curves: dict[str, Any], ratio: float = 100.0) -> bool:
    """Whether the curves' positive values span more than `ratio` (then a log axis shows
    them all: a hybrid's error can sit 1e-5 below the baselines')."""
    vals = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in curves.values()])
    vals = vals[np.isfinite(vals) & (vals > 0)]
    return bool(len(vals)) and vals.max() > ratio * vals.min()


FRAME_LEADS = (1, 6, 12, 30)  # leads (steps) drawn in field_frames.png, those <= the horizon


def _field_frames(path: Path, meta: TrajectoryMeta, shown: PlotWindows, c: int) -> None:
    """Truth / forecast (median of the sample paths) / error of the first shown window's first
    field at the leads FRAME_LEADS; a 3-D field is cut at the middle of its later axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    space, h = meta.state_shape[:-1], shown.truth.shape[1]
    leads = [k for k in FRAME_LEADS if k <= h] or [h]
    cut = (slice(None), slice(None), *(n // 2 for n in space[2:]), 0)  # (X, Y) of field 0
    truth = shown.truth[0].reshape(h, *meta.state_shape)  # (H, *space, fields)
    pred = shown.med[0].reshape(h, *meta.state_shape)
    lim = float(np.abs(truth[[k - 1 for k in leads]][(slice(None), *cut)]).max()) or 1.0
    fig, axes = plt.subplots(len(leads), 3, figsize=(8.4, 2.7 * len(leads)), squeeze=False)
    traj, start = shown.origin[0]
    for row, k in enumerate(leads):
        t, p = truth[k - 1][cut], pred[k - 1][cut]
        for col, (img, name) in enumerate(((t, "truth"), (p, "forecast (median)"),
                                           (p - t, "error"))):
            ax = axes[row, col]
            im = ax.imshow(img.T, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_title(f"{name}, lead {k}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(im, ax=axes[row].tolist(), shrink=0.8)
    field = (meta.field_names or ["field 0"])[0]
    fig.suptitle(f"{field}: held-out trajectory {traj} from step {start + c}")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _calibration_plots(out_dir: Path, model: dict[str, Any], lead: np.ndarray,
                       x_label: str) -> list[str]:
    """coverage.png (per-lead interval coverage) and pit.png, where the model has them."""
    from sciformer.evaluation import report

    plots = []
    cover = {k: model[k] for k in ("coverage_50", "coverage_80") if k in model}
    if cover:
        report.plot_coverage(out_dir / "coverage.png", lead, cover, x_label=x_label)
        plots.append("coverage.png")
    if "pit" in model:
        report.plot_pit(out_dir / "pit.png", model["pit"]["edges"], model["pit"]["fraction"],
                        n=model["pit"]["n"])
        plots.append("pit.png")
    return plots


def _spacetime(path: Path, meta: TrajectoryMeta, shown: PlotWindows, c: int, unit: float,
               label: str) -> None:
    """Truth / forecast / error of the first shown window's first field over x and lead."""
    from sciformer.evaluation import report

    h, (n_x, n_f) = shown.truth.shape[1], meta.state_shape
    grid = (float(meta.x[0]), float(meta.x[-1])) if meta.x is not None else None
    traj, start = shown.origin[0]
    report.plot_spacetime(path, shown.truth[0].reshape(h, n_x, n_f)[..., 0],
                          shown.med[0].reshape(h, n_x, n_f)[..., 0], dt=1.0 / unit, t0=0.5 / unit,
                          x_extent=grid, time_label=f"lead {label}",
                          title=f"Held-out trajectory {traj} from step {start + c}")
