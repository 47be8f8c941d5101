"""Evaluate a forecasting run on held-out trajectories against the classic baselines.

What is scored (metrics.json; every key is defined in docs/forecast-metrics.md):

- **Trajectories.** If `data` is one of the run's training files, only its held-out
  trajectories (split.json `heldout_origin`) are used and `scope` says so; any other file is
  scored whole, after checking that its state shape matches the checkpoint.
- **Windows.** Each trajectory gives up to `WINDOWS_PER_TRAJECTORY` evaluation windows of
  `context + horizon` steps with evenly spaced, deterministic starts (fewer per trajectory on
  large files, never under one: `windows_per_trajectory`). The default context is
  the trained one; the default horizon is the larger of the trained horizon and three
  Lyapunov times (`HORIZON_LYAPUNOV_TIMES`) when the Lyapunov time is known, else four
  trained horizons, so the closed-loop rollout past the trained horizon is always tested.
- **Predictors.** The model rolls out closed-loop (`model_forecasts`: sample paths when the
  model gives them, else its quantiles); the baselines (persistence, climatological mean,
  ridge AR, context parroting, NVAR; `ALL_BASELINES`) are fitted on the TRAINING split of
  the run's training files only (parroting's motif length and NVAR's delays and ridge
  strength are chosen there too, for this context and horizon) and also roll out closed-loop
  from the same contexts. Point forecasts get CRPS = MAE, so every row has a CRPS.
- **Scale.** nRMSE divides by the climatological standard deviation of the training split,
  sqrt(mean over features of the per-feature variance), so forecasting the climatological
  mean scores about 1 whatever the offsets between variables (e.g. Lorenz-63's z ~ 23);
  `nrmse_ch`, `nrmse_per_channel` and `vpt` divide each channel by its own training std.
  What every key means is written into metrics.json (`definitions`).
- **Streaming.** Trajectories are read, forecast and scored a block at a time
  (`EVAL_BLOCK_TRAJECTORIES`, rounded up to whole model batches so the model sees the same
  batches as an all-at-once evaluation) into running sums (`ForecastScore`), so memory does not
  grow with the number of held-out trajectories; only the plotted windows are kept.
- **Summary numbers.** Besides `forecast_metrics` (means over the horizon, per-step curves,
  VPT in Lyapunov times when known), `nrmse_at` samples the nRMSE curve at a few lead times
  and `nrmse_1lt` is its mean over the first Lyapunov time (when known).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sciformer.errors import ConfigError, InputError
from sciformer.evaluation.baselines import RidgeAR
from sciformer.evaluation.chaos_baselines import (
    ALL_BASELINES,
    MAX_DENSE_FEATURES,
    NVAR,
    Parroting,
)
from sciformer.evaluation.forecast_plots import draw_plots
from sciformer.evaluation.heldout import select_unseen
from sciformer.evaluation.metrics import DEFINITIONS, LEAD_BINS, ForecastScore, nrmse_at
from sciformer.evaluation.model_forecast import (
    ModelForecast,
    capped_batch,
    model_forecasts,
)
from sciformer.io.trajectories import TrajectoryFile, TrajectoryMeta
from sciformer.pipelines.forecast import Forecaster
from sciformer.pipelines.recalibrate import SpreadCalibration
from sciformer.progress import progress_bar
from sciformer.runs import ForecastState, read_split

WINDOWS_PER_TRAJECTORY = 8  # evaluation windows per held-out trajectory (evenly spaced)
MAX_WINDOWS = 512  # cap on all windows, so evaluation stays quick on large files
HORIZON_LYAPUNOV_TIMES = 3.0  # default horizon in Lyapunov times (when known)
HORIZON_TRAINED_MULTIPLE = 4  # default horizon in trained horizons (Lyapunov time unknown)
MAX_BASELINE_TRAJECTORIES = 256  # training trajectories used to fit baselines and the scale
N_PLOTTED = 3  # trajectories drawn in forecast.png
EVAL_BLOCK_TRAJECTORIES = 64  # trajectories read, forecast and scored at a time (>= N_PLOTTED)
#: CPU seconds (`time.process_time`) the FNO baseline may train, about what the ns2d-forecast
#: workflow's Transformer trains for, so the two get comparable compute; CPU, not wall time, so
#: a loaded machine does not starve the referee. It also stops after FNO_STEPS, and its cosine
#: schedule follows whichever runs out first.
FNO_TIME_BUDGET = 200.0
FNO_STEPS = 2000  # its planned optimizer steps


# ---- what to score --------------------------------------------------------------------------
def open_checked(data: Path, fc: Forecaster) -> TrajectoryFile:
    """Open `data` and check that its states have the checkpoint's shape."""
    f = TrajectoryFile(data)
    fc.check_state_shape(f.meta.state_shape, str(data))
    return f


def default_horizon(trained: int, dt: float, lyapunov_time: float | None,
                    state_shape: tuple[int, ...] = ()) -> int:
    """Steps to score: max(trained, ~3 Lyapunov times) if known, else 4 trained horizons;
    for fields of 2+ spatial dims max(trained, 30): the end of the last lead bin (LEAD_BINS)."""
    if len(state_shape) >= 3:
        return max(trained, LEAD_BINS[-1][1])
    if lyapunov_time:
        return max(trained, math.ceil(HORIZON_LYAPUNOV_TIMES * lyapunov_time / dt))
    return HORIZON_TRAINED_MULTIPLE * trained


def window_starts(n_time: int, length: int, per_traj: int) -> np.ndarray:
    """Evenly spaced, deterministic start steps of windows of `length` in `n_time` steps."""
    return np.unique(np.linspace(0, n_time - length, per_traj).round().astype(int))


def windows_per_trajectory(n_traj: int) -> int:
    """WINDOWS_PER_TRAJECTORY, fewer so all windows fit MAX_WINDOWS, but never under one."""
    return max(1, min(WINDOWS_PER_TRAJECTORY, MAX_WINDOWS // max(1, n_traj)))


def block_trajectories(per_traj: int, batch: int) -> int:
    """Trajectories per block: EVAL_BLOCK_TRAJECTORIES (at least N_PLOTTED), rounded up so a
    block of `per_traj` windows each is a whole number of model batches of `batch` windows.

    Whole batches make the model see exactly the batches of an all-at-once evaluation, so
    its forecasts (and the seeded draws of a bins tokenizer) do not depend on the blocking.
    """
    unit = batch // math.gcd(batch, per_traj)
    want = max(EVAL_BLOCK_TRAJECTORIES, N_PLOTTED)
    return unit * -(-want // unit)


def _runs(trajs: list[int]) -> list[tuple[int, int]]:
    """[first, stop) ranges of consecutive indices in the ascending list `trajs`."""
    runs: list[list[int]] = []
    for t in trajs:
        if runs and runs[-1][1] == t:
            runs[-1][1] = t + 1
        else:
            runs.append([t, t + 1])
    return [(a, b) for a, b in runs]


def read_windows(f: TrajectoryFile, trajs: list[int], starts: np.ndarray, length: int
                 ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Windows (len(trajs) * len(starts), length, F) in (trajectory, start) order, and their
    (trajectory, start); one HDF5 read per start and run of consecutive trajectories."""
    parts = []
    for first, stop in _runs(trajs):
        per_start = [f.windows(first, stop, int(s), length) for s in starts]
        parts.append(np.stack(per_start, axis=1))  # (b, n_starts, length, *state_shape)
    wins = np.concatenate(parts).reshape(len(trajs) * len(starts), length, -1)
    return wins, [(t, int(s)) for t in trajs for s in starts]


def split_trajectories(state: ForecastState, run_dir: Path, part: str = "train_origin",
                       limit: int = MAX_BASELINE_TRAJECTORIES) -> list[np.ndarray]:
    """The trajectories (T, F), at most `limit`, of one part of the run's split of its
    training files: split.json ``train_origin`` (the training split) or ``heldout_origin``
    (the validation trajectories)."""
    files = state.train_files
    opened: dict[int, TrajectoryFile] = {}
    out = []
    for fi, t in read_split(run_dir).get(part, [])[:limit]:
        if fi not in opened:
            opened[fi] = TrajectoryFile(files[fi], check_finite=False)
        f = opened[fi]
        out.append(f.trajectory(t).reshape(f.meta.n_time, -1))
    return out


def training_trajectories(state: ForecastState, run_dir: Path) -> list[np.ndarray]:
    """The training split's trajectories (T, F) of the run's training files (for baselines)."""
    out = split_trajectories(state, run_dir)
    if not out:
        raise InputError(f"{run_dir / 'split.json'}: no training trajectories recorded")
    return out


def _feature_variance(train: list[np.ndarray]) -> np.ndarray:
    """Per-feature variance `(F,)` over every training state (population, ddof=0)."""
    n = sum(len(x) for x in train)
    mean = sum(x.sum(axis=0, dtype=np.float64) for x in train) / n
    return sum(((x - mean) ** 2).sum(axis=0, dtype=np.float64) for x in train) / n


def climatological_scale(train: list[np.ndarray]) -> float:
    """sqrt(mean_f Var_f) over all training states: the nRMSE denominator."""
    return float(np.sqrt(_feature_variance(train).mean()))


def channel_std(train: list[np.ndarray], state_shape: tuple[int, ...]) -> np.ndarray:
    """Each channel's std over the training split `(C,)`, channels being the last state dim
    (a field's std pools its grid points); a constant channel gets the overall scale."""
    var = _feature_variance(train).reshape(-1, state_shape[-1]).mean(axis=0)  # (C,)
    sd = np.sqrt(var)
    return np.where(sd > 0, sd, climatological_scale(train) or 1.0)


# ---- predictions ---------------------------------------------------------------------------
def skipped_baselines(state_shape: tuple[int, ...]) -> dict[str, str]:
    """Baselines of `ALL_BASELINES` not run on this state, with the reason (metrics.json)."""
    n = math.prod(state_shape)
    if n <= MAX_DENSE_FEATURES:
        return {}
    why = (f"skipped: the state has {n} features (> {MAX_DENSE_FEATURES}); the fit's normal "
           "equations grow with the square of that")
    return {"ridge_ar": why, "nvar": why, "parroting": why}


def fit_baselines(train: list[np.ndarray], context: int = 64, horizon: int = 32,
                  state_shape: tuple[int, ...] | None = None,
                  fno: Any = None, progress: bool = False) -> dict[str, Any]:
    """Every baseline of `ALL_BASELINES` that suits the state (`skipped_baselines`), fitted
    once on the training trajectories `train`; parroting and NVAR choose their
    hyper-parameters for this `context` and `horizon`. 2-D fields add the FNO baseline, or
    take `fno` as it (an FNO-anchored run's own anchor, `AnchorFNOBaseline`)."""
    shape = tuple(state_shape) if state_shape is not None else (train[0].shape[1],)
    skip = skipped_baselines(shape)
    made = {"parroting": lambda: Parroting(context=context, horizon=horizon),
            "nvar": lambda: NVAR(horizon=horizon)}
    fitted = {name: (made[name]() if name in made else cls()).fit(train)
              for name, cls in ALL_BASELINES.items() if name not in skip}
    if fno is not None:
        fitted["fno"] = fno
    elif len(shape) == 3:
        from sciformer.evaluation.fno import FNOBaseline

        n_in = min(4, context)
        fitted["fno"] = FNOBaseline(shape, n_in=n_in, steps=FNO_STEPS,
                                     time_budget=FNO_TIME_BUDGET).fit(train, progress)
    return fitted


def describe_baselines(fitted: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What each fitted baseline chose (hyper-parameters, notes), for metrics.json."""
    return {name: b.describe() for name, b in fitted.items() if hasattr(b, "describe")}


def baseline_forecasts(fitted: dict[str, Any], contexts: np.ndarray,
                       horizon: int) -> dict[str, np.ndarray]:
    """Closed-loop forecasts (N, H, F) of every fitted baseline from `contexts`."""
    return {name: b.predict(contexts, horizon) for name, b in fitted.items()}


def summary_numbers(metrics: dict[str, Any], steps_per_lt: float | None,
                    trained: int) -> dict[str, Any]:
    """Add `nrmse_at` (a few lead times) and `nrmse_1lt` (mean over the first Lyapunov time)."""
    curve = metrics["per_step"]["nrmse"]
    h = len(curve)
    leads = {1, min(trained, h), h}
    if steps_per_lt:
        leads |= {min(h, max(1, round(k * steps_per_lt))) for k in (0.5, 1, 2)}
    metrics["nrmse_at"] = nrmse_at(curve, sorted(leads))
    if steps_per_lt:
        first = [v for v in curve[: max(1, min(h, round(steps_per_lt)))]]
        metrics["nrmse_1lt"] = None if None in first else float(np.mean(first))
    return metrics


# ---- the whole evaluation ------------------------------------------------------------------
@dataclass
class PlotWindows:
    """The windows drawn in the plots: context (n, c, F), truth (n, H, F), the model's
    forecast of them, and each window's (trajectory, start)."""

    ctx: np.ndarray
    truth: np.ndarray
    model: ModelForecast
    origin: list[tuple[int, int]]

    @property
    def med(self) -> np.ndarray:
        """The model's median (n, H, F)."""
        return self.model.median

    @property
    def q(self) -> np.ndarray:
        """The model's quantiles (n_q, n, H, F) at ascending levels."""
        return self.model.quantiles


@dataclass
class Scores:
    """Running scores of the model and the baselines, and the windows kept for the plots."""

    model: ForecastScore
    baselines: dict[str, ForecastScore]
    shown: PlotWindows | None = None
    raw: ForecastScore | None = None  # the model's paths before recalibration

    def add(self, truth: np.ndarray, model: ModelForecast,
            base: dict[str, np.ndarray], raw: ModelForecast | None = None) -> None:
        """Score one batch of windows: the model by its sample paths if it has them, else by
        its quantiles (and its paths before recalibration into `raw`); the point baselines
        by their forecasts."""
        if model.samples is not None:
            self.model.add(model.median, truth, samples=model.samples)
        else:
            self.model.add(model.median, truth, quantiles=model.quantiles)
        if raw is not None and self.raw is not None:
            self.raw.add(raw.median, truth, samples=raw.samples)
        for name, pred in base.items():
            self.baselines[name].add(pred, truth)


def stream_scores(fc: Forecaster, f: TrajectoryFile, trajs: list[int], c: int, h: int,
                  samples: int, fitted: dict[str, Any], scored: dict[str, Any],
                  progress: bool = False) -> Scores:
    """Read, forecast and score the windows of `trajs` a block of trajectories at a time.

    `per` windows per trajectory come from the TOTAL number of trajectories, so the windows
    are those of an all-at-once evaluation; `scored` holds ForecastScore's scale arguments.
    """
    starts = window_starts(f.meta.n_time, c + h, windows_per_trajectory(len(trajs)))
    step = block_trajectories(len(starts),
                              capped_batch(fc.cfg, samples * h * math.prod(f.meta.state_shape)))
    scores = Scores(ForecastScore(**scored, levels=fc.levels),
                    {name: ForecastScore(**scored) for name in fitted},
                    raw=None if fc.calibration is None else ForecastScore(**scored))
    batch = capped_batch(fc.cfg, samples * h * math.prod(f.meta.state_shape))
    with progress_bar(len(trajs), "evaluate", "traj", progress) as bar:
        for i in range(0, len(trajs), step):
            block = trajs[i:i + step]
            wins, origin = read_windows(f, block, starts, c + h)
            ctx, truth = wins[:, :c], wins[:, c:].astype(np.float64)
            keep = _shown_windows(origin) if scores.shown is None else []
            kept = []
            for j in range(0, len(ctx), batch):  # a model batch at a time: with sample
                part = slice(j, j + batch)  # paths (S, batch, H, F) memory stays bounded
                pred, raw = model_forecasts(fc, ctx[part], h, samples,
                                            first=i * len(starts) + j, batch=batch)
                scores.add(truth[part], pred, baseline_forecasts(fitted, ctx[part], h), raw)
                kept += [pred.rows([k - j]) for k in keep if j <= k < j + batch]
            if keep:
                scores.shown = PlotWindows(ctx[keep], truth[keep], ModelForecast.concat(kept),
                                           [origin[k] for k in keep])
            bar.update(len(block))
    return scores


def raw_paths_row(raw: dict[str, Any], calibration: SpreadCalibration) -> dict[str, Any]:
    """The probabilistic scores of the model's paths before recalibration (the point scores
    are the recalibrated model's: rescaling about the median keeps the median), and the
    factors that were applied per lead."""
    out = {k: raw[k] for k in ("crps", "coverage_50", "coverage_80", "pit") if k in raw}
    out["per_step"] = {"crps": raw["per_step"]["crps"]}
    factors = calibration.at(len(raw["per_step"]["crps"]))
    out["spread_factors"] = [round(float(v), 5) for v in factors]
    return out


def check_context(fc: Forecaster, context: int) -> None:
    """The context must hold whole patches (patch tokenizer) and every baseline's history (the
    ridge baseline's lags, NVAR's delays; parroting needs two steps) -- of the baselines that
    run on this state (`skipped_baselines`)."""
    nvar, skip = NVAR(), skipped_baselines(fc.state_shape)
    need = max(fc.min_context, 2 if "parroting" not in skip else 1,
               RidgeAR().lags if "ridge_ar" not in skip else 1,
               nvar.span(max(nvar.delays)) if "nvar" not in skip else 1)
    if context < need:
        raise ConfigError(f"evaluate: context {context} is shorter than the {need} steps the "
                          "model's patches and the baselines' lags need")
    if context % fc.min_context:
        raise ConfigError(f"evaluate: context {context} is not a multiple of the model's patch "
                          f"of {fc.min_context} steps (the model would see fewer steps)")


def score_all(fc: Forecaster, f: TrajectoryFile, trajs: list[int], sizes: tuple[int, int, int],
              fitted: dict[str, Any], scales: tuple[float, Any], steps_per_lt: float | None,
              progress: bool) -> tuple[Scores, dict[str, Any], dict[str, Any]]:
    """Stream-score the model and the fitted baselines on `trajs` ((context, horizon,
    samples) = `sizes`, (nRMSE scale, channel stds) = `scales`); (scores, model row, rows of
    the baselines with what each chose in `fit`)."""
    c, h, samples = sizes
    scored = dict(scale=scales[0], dt_steps_per_lyapunov=steps_per_lt, channel_std=scales[1],
                  state_shape=f.meta.state_shape)
    scores = stream_scores(fc, f, trajs, c, h, samples, fitted, scored, progress)
    trained = fc.cfg.data.horizon
    model_m = summary_numbers(scores.model.result(), steps_per_lt, trained)
    model_m["recalibrated"] = scores.raw is not None
    model_m["first_patch_corrected"] = fc.first_patch is not None
    if scores.raw is not None and fc.calibration is not None:
        model_m["raw"] = raw_paths_row(scores.raw.result(), fc.calibration)
    base_m = {k: summary_numbers(v.result(), steps_per_lt, trained)
              for k, v in scores.baselines.items()}
    for name, fit in describe_baselines(fitted).items():
        base_m[name]["fit"] = fit
    return scores, model_m, base_m


def evaluate_forecast_run(fc: Forecaster, run_dir: Path, data: Path, out_dir: Path, *,
                          context: int | None = None, horizon: int | None = None,
                          samples: int | None = None, progress: bool = False) -> dict:
    """Score the run's model and the baselines on `data`; write the PNGs and summary.md.

    Returns the metrics dict (the caller writes metrics.json). See the module docstring for
    what is scored and how the defaults of `context` and `horizon` are chosen.
    """
    from sciformer.evaluation.report import write_summary

    run_dir, data, out_dir = Path(run_dir), Path(data), Path(out_dir)
    from sciformer.evaluation.zero_shot import evaluate_zero_shot, is_zero_shot

    if is_zero_shot(fc, data):  # channel-agnostic run, unseen file: context-only baselines
        return evaluate_zero_shot(fc, run_dir, data, out_dir, context=context,
                                  horizon=horizon, samples=samples, progress=progress)
    cfg, state = fc.cfg, fc.state
    f = open_checked(data, fc)
    meta = f.meta
    lyap = meta.lyapunov_time or state.lyapunov_time
    steps_per_lt = lyap / meta.dt if lyap else None
    c = context or cfg.data.context
    h = horizon or default_horizon(cfg.data.horizon, meta.dt, lyap, meta.state_shape)
    check_context(fc, c)
    samples = samples or cfg.data.samples
    f.require_length(c + h, f"context {c} + horizon {h} (pass a smaller --context/--horizon)")
    keep, scope = select_unseen(run_dir, data, state.train_files, "trajectory")
    trajs = list(range(meta.n_traj)) if keep is None else keep
    train = training_trajectories(state, run_dir)
    scale, ch_std = climatological_scale(train), channel_std(train, meta.state_shape)
    from sciformer.evaluation.fno import AnchorFNOBaseline

    fitted = fit_baselines(train, c, h, meta.state_shape, fno=AnchorFNOBaseline.of_run(fc),
                           progress=progress)
    scores, model_m, base_m = score_all(fc, f, trajs, (c, h, samples), fitted, (scale, ch_std),
                                        steps_per_lt, progress)
    metrics = {
        "task": "forecast", "n_examples": scores.model.n_windows, "n_trajectories": len(trajs),
        "context": c, "horizon": h, "trained_horizon": cfg.data.horizon, "dt": meta.dt,
        "lyapunov_time": lyap, "steps_per_lyapunov_time": steps_per_lt, "scope": scope,
        "data": str(data), "nrmse_scale": scale,
        "nrmse_scale_is": "climatological std of the training split (sqrt of the mean "
                          "per-feature variance)",
        "baseline_fit_trajectories": len(train), "quantile_levels": fc.levels,
        "samples": samples,
        "post_training": _post_training(fc),
        "channels": _channel_names(meta), "channel_std": [float(v) for v in ch_std],
        "definitions": _definitions(meta), "model": model_m, "baselines": base_m,
    }
    if skipped_baselines(meta.state_shape):
        metrics["baselines_skipped"] = skipped_baselines(meta.state_shape)
    plots = draw_plots(out_dir, meta, scores.shown, metrics)
    write_summary(out_dir / "summary.md", metrics, title=f"Forecasting: {data.name}",
                  plots=plots)
    if "vrmse_lead_bins" in model_m:
        append_lead_bin_table(out_dir / "summary.md", metrics)
    return metrics


def lead_bin_table(metrics: dict[str, Any]) -> list[str]:
    """Markdown table of VRMSE per lead bin, the model and every baseline (lowest in bold)."""
    rows = {"model": metrics["model"], **metrics["baselines"]}
    bins = list(metrics["model"].get("vrmse_lead_bins", {}))
    lines = ["| VRMSE by lead (steps) | " + " | ".join(bins) + " |",
             "|---|" + "---|" * len(bins)]
    best = {b: min((r["vrmse_lead_bins"][b] for r in rows.values()
                    if r.get("vrmse_lead_bins", {}).get(b) is not None), default=None)
            for b in bins}
    for name, r in rows.items():
        cells = []
        for b in bins:
            v = r.get("vrmse_lead_bins", {}).get(b)
            cell = "-" if v is None else f"{v:.3f}"
            cells.append(f"**{cell}**" if v is not None and v == best[b] else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def append_lead_bin_table(path: Path, metrics: dict[str, Any]) -> None:
    """Add the lead-bin VRMSE table (and skipped baselines) to summary.md."""
    from sciformer.io.atomic import write_text_atomic

    extra = ["", "## VRMSE by lead-time bin (The Well's rollout bins)", "",
             *lead_bin_table(metrics), ""]
    for name, why in metrics.get("baselines_skipped", {}).items():
        extra.append(f"- {name}: {why}")
    write_text_atomic(path, path.read_text() + "\n".join(extra) + "\n")


def _post_training(fc: Forecaster) -> str:
    """What was applied to the model's paths after training, in words (for summary.md)."""
    done = [name for name, on in (("first patch shifted by first_patch.safetensors",
                                   fc.first_patch is not None),
                                  ("spread rescaled per lead by calibration.json",
                                   fc.calibration is not None)) if on]
    return "; ".join(done) or "none (the paths as drawn)"


def _channel_names(meta: TrajectoryMeta) -> list[str]:
    """Names of the channels (the last state dim): field names, else x0, x1, ..."""
    n = meta.state_shape[-1]
    names = meta.field_names if meta.field_names and len(meta.field_names) == n else None
    return list(names) if names else [f"x{j}" for j in range(n)]


def _definitions(meta: TrajectoryMeta) -> dict[str, str]:
    """`DEFINITIONS` for this state: VRMSE only for fields (spatial dims)."""
    out = dict(DEFINITIONS)
    if len(meta.state_shape) == 1:
        out["vrmse"] = ("not reported: the state has no spatial dims, and a variance across "
                        "different variables is not a field's; see nrmse_ch instead")
    return out


# ---- the windows drawn ----------------------------------------------------------------------
def _shown_windows(origin: list[tuple[int, int]]) -> list[int]:
    """Indices of the first window of each of the first N_PLOTTED distinct trajectories."""
    seen: dict[int, int] = {}
    for i, (t, _) in enumerate(origin):
        seen.setdefault(t, i)
    return list(seen.values())[:N_PLOTTED]
