"""Zero-shot evaluation: a channel-agnostic run scored on a system it never trained on.

Used by `evaluate_forecast_run` when the run is channel-agnostic (`data.scaling=instance`,
`data.channels=independent`, or a zoo-pretrained run) and the data is not one of its training
files. Everything is as in `sciformer.evaluation.forecast` (windows, closed-loop sample paths,
metrics, plots) except:

- **Baselines see only the context** (`context_baselines`): persistence, the context mean,
  parroting, ridge AR and NVAR fitted on each window's context alone. Baselines fitted on
  the evaluated system's other trajectories would know the system; the model does not.
  metrics.json lists them under `baselines_context_only`.
- **`zero_shot`** in metrics.json is true only when the file's system is neither the run's
  training system nor a base system of its zoo corpus (a fine-tuned run scored on another
  file of its own system is scored the same way, with `zero_shot: false`).
- **nRMSE scale** is the climatological std of the EVALUATED file (all its trajectories):
  the run has no training split of this system. It is a constant of the metric, shared by
  every predictor, never an input of one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sciformer.evaluation.context_baselines import context_baselines
from sciformer.evaluation.forecast import (
    _channel_names,
    _definitions,
    channel_std,
    check_context,
    climatological_scale,
    default_horizon,
    open_checked,
    score_all,
)
from sciformer.evaluation.forecast_plots import draw_plots
from sciformer.pipelines.forecast import Forecaster

MAX_SCALE_TRAJECTORIES = 256  # trajectories read for the nRMSE scale


def system_seen(fc: Forecaster, system: str | None) -> bool:
    """Whether the run trained on `system` (its training files' system, or a base system of
    its zoo corpus); False when the file names no system."""
    if not system:
        return False
    trained = {fc.state.system, *(fc.state.base_systems or [])} - {None, "zoo"}
    return system in trained


def is_zero_shot(fc: Forecaster, data: Path) -> bool:
    """A channel-agnostic run evaluated on a file it was not trained on (scored against
    context-only baselines; `zero_shot` in metrics.json also needs an unseen system)."""
    trained = {Path(p).resolve() for p in fc.state.train_files}
    return bool(fc.state.channel_agnostic) and Path(data).resolve() not in trained


def evaluate_zero_shot(fc: Forecaster, run_dir: Path, data: Path, out_dir: Path, *,
                       context: int | None = None, horizon: int | None = None,
                       samples: int | None = None, progress: bool = False) -> dict:
    """Score the model and the context-only baselines on every trajectory of `data`."""
    from sciformer.evaluation.report import write_summary

    data, out_dir = Path(data), Path(out_dir)
    cfg = fc.cfg
    f = open_checked(data, fc)
    meta = f.meta
    lyap = meta.lyapunov_time
    steps_per_lt = lyap / meta.dt if lyap else None
    c = context or cfg.data.context
    h = horizon or default_horizon(cfg.data.horizon, meta.dt, lyap)
    check_context(fc, c)
    samples = samples or cfg.data.samples
    f.require_length(c + h, f"context {c} + horizon {h} (pass a smaller --context/--horizon)")
    trajs = list(range(meta.n_traj))
    ref = [f.trajectory(t).reshape(meta.n_time, -1)
           for t in trajs[:MAX_SCALE_TRAJECTORIES]]
    scale, ch_std = climatological_scale(ref), channel_std(ref, meta.state_shape)
    fitted = context_baselines()
    scores, model_m, base_m = score_all(fc, f, trajs, (c, h, samples), fitted, (scale, ch_std),
                                        steps_per_lt, progress)
    metrics = {
        "task": "forecast", "zero_shot": not system_seen(fc, meta.system),
        "trained_on_system": fc.state.system, "n_examples": scores.model.n_windows,
        "n_trajectories": len(trajs), "context": c, "horizon": h,
        "trained_horizon": cfg.data.horizon, "dt": meta.dt, "lyapunov_time": lyap,
        "steps_per_lyapunov_time": steps_per_lt, "system": meta.system,
        "scope": f"all {len(trajs)} trajectories of {data.name} (the run was not trained "
                 "on this file)",
        "data": str(data), "nrmse_scale": scale,
        "nrmse_scale_is": "climatological std of the evaluated file (sqrt of the mean "
                          "per-feature variance over its trajectories): zero-shot, the run "
                          "has no training split of this system",
        "baselines_context_only": sorted(fitted), "base_systems": fc.state.base_systems,
        "quantile_levels": fc.levels, "samples": samples,
        "channels": _channel_names(meta), "channel_std": [float(v) for v in ch_std],
        "definitions": _definitions(meta), "model": model_m, "baselines": base_m,
    }
    plots = draw_plots(out_dir, meta, scores.shown, metrics)
    write_summary(out_dir / "summary.md", metrics, title=f"Zero-shot forecasting: {data.name}",
                  plots=plots)
    return metrics


def headline(metrics: dict) -> dict[str, dict[str, float | None]]:
    """nrmse_1lt, vpt and crps of the model and every baseline (for reports)."""
    rows = {"model": metrics["model"], **metrics["baselines"]}
    return {name: {k: (None if m.get(k) is None else float(np.mean(m[k])))
                   for k in ("nrmse_1lt", "vpt", "crps")} for name, m in rows.items()}
