"""Forecast and masked-residue metrics.

Shapes: point forecasts and truth are `(n_traj, H, F)` with F the flattened state, channels
last (`state_shape` (F,) for an ODE, (*space, n_fields) for a field); quantile forecasts
`(n_levels, n_traj, H, F)` with ascending `levels`; sample paths `(n_samples, n_traj, H, F)`.
Everything is computed in float64. Per-step curves are `(H,)`, step h (0-based) being lead
time h + 1. What each key means is written into metrics.json (`DEFINITIONS`) and
docs/forecast-metrics.md.

`forecast_metrics` returns plain Python floats and lists, ready for metrics.json. A value that
is not finite (a diverged forecast: inf or NaN in the prediction) is written as `None` (JSON
`null`) rather than the non-standard `NaN`/`Infinity` tokens. `ForecastScore` gives the same
dict for windows that arrive in blocks (bounded memory on large files); `forecast_metrics` is
its one-block use, and both it and the per-step curves share the "sum over windows" helpers.
Probabilistic scores (CRPS, coverage, PIT) live in `sciformer.evaluation.calibration`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sciformer.evaluation import calibration as cal

#: sMAPE (percent) above which a step stops counting as valid for `vpt_smape` (dysts).
VPT_SMAPE_THRESHOLD = 30.0
VPT_THRESHOLD = VPT_SMAPE_THRESHOLD  # the name the sMAPE threshold had before `vpt` changed
#: Channel-normalised nRMSE above which a step stops counting as valid for `vpt`.
VPT_NRMSE_THRESHOLD = 0.5
#: Added to the spatial variance in VRMSE so a constant true state does not divide by zero.
VRMSE_EPS = 1e-7

#: Lead-time bins (1-based steps, inclusive) of field rollouts, as The Well reports them
#: (Ohana et al. 2024: next step, then rollout windows 2-6, 7-12, 13-30).
LEAD_BINS: tuple[tuple[int, int], ...] = ((1, 1), (2, 6), (7, 12), (13, 30))

#: What each metric is, written into metrics.json so the numbers explain themselves.
DEFINITIONS: dict[str, str] = {
    "nrmse": "RMSE over windows and all features / nrmse_scale (climatological std of the "
             "training split, sqrt of the mean per-feature variance); mean over lead times",
    "nrmse_ch": "RMSE with every feature divided by its channel's training-split std, RMS "
                "over channels (and space); mean over lead times",
    "nrmse_per_channel": "per channel: RMSE / that channel's training-split std, mean over "
                         "lead times (order of `channels`)",
    "vrmse": "fields only (The Well): per window, lead and field sqrt(mean_space err^2 / "
             "(var_space(truth, ddof=1) + 1e-7)), mean over windows, fields and lead times",
    "vrmse_lead_bins": "fields only: vrmse per lead-time bin (steps 1, 2-6, 7-12, 13-30 of the "
                       "closed-loop rollout; a bin past the horizon is left out): the mean of "
                       "the per-step VRMSE over the bin's steps, per field under "
                       "`vrmse_lead_bins_per_field`",
    "smape": "symmetric MAPE in percent, 200|p-t|/(|p|+|t|), mean over windows, features, leads",
    "crps": "continuous ranked probability score in state units, mean over windows, features "
            "and leads; `crps_from` says how: samples = exact ensemble form E|X-y| - "
            "0.5 E|X-X'|, point = a point forecast (CRPS = MAE), quantiles = 2 x mean pinball "
            "loss over the levels (biased with few levels)",
    "vpt": f"valid prediction time: per window the number of leading steps before the first "
           f"lead whose nrmse_ch exceeds {VPT_NRMSE_THRESHOLD}; mean over windows; in Lyapunov "
           f"times when the Lyapunov time is known, else steps (vpt_unit)",
    "vpt_smape": f"as vpt, but the first lead whose sMAPE (mean over features) exceeds "
                 f"{VPT_SMAPE_THRESHOLD:g} (dysts convention; depends on offsets of the state)",
    "coverage_50": "per lead: fraction of true values inside the central 50% interval of the "
                   "forecast: for sample paths, randomised PIT (below) in [0.25, 0.75], which "
                   "expects exactly 0.5 under calibration, ties between paths and truth "
                   "included; for quantile forecasts, between the 0.25 and 0.75 quantiles",
    "coverage_80": "per lead: as coverage_50 for the central 80% interval (PIT in [0.1, 0.9]; "
                   "the 0.1 and 0.9 quantiles)",
    "post_training": "what was applied to the model's sample paths after training: the "
                     "first-patch correction and/or the per-lead spread recalibration",
    "first_patch_corrected": "whether the run's first-patch correction (fitted on its training "
                             "and validation trajectories) shifted every path's first patch",
    "pit": "histogram of the randomised probability integral transform (rank of the truth "
           "among the samples, ties split at random); flat at 1/bins when calibrated",
}


def _as_forecast(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64 `(n_traj, H, F)` arrays of the same shape, else ValueError."""
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if t.ndim != 3 or p.shape != t.shape:
        raise ValueError(f"forecast and truth must both be (n_traj, H, F); got prediction "
                         f"{p.shape} and truth {t.shape}")
    return p, t


def _check_scale(scale: float) -> None:
    """ValueError unless the nRMSE denominator is a positive finite number."""
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"nRMSE scale must be a positive finite number, got {scale!r}")


def _n_points(truth: np.ndarray) -> int:
    """Numbers averaged per lead time: windows x features."""
    return truth.shape[0] * truth.shape[2]


def _layout(state_shape: tuple[int, ...] | None, n_features: int) -> tuple[int, int, bool]:
    """(points in space X, channels C, is_field) of a flattened state; X * C = F.

    Channels are the last state dimension; an ODE state (F,) has X = 1 and C = F.
    """
    shape = (n_features,) if state_shape is None else tuple(int(s) for s in state_shape)
    if math.prod(shape) != n_features:
        raise ValueError(f"state shape {shape} does not flatten to {n_features} features")
    return n_features // shape[-1], shape[-1], len(shape) > 1


def _feature_std(channel_std: np.ndarray, n_space: int) -> np.ndarray:
    """Per-feature std `(F,)` from per-channel std `(C,)` (features are (space, channel))."""
    return np.tile(channel_std, n_space)


# ---- per-step sums over windows ------------------------------------------------------------
# Every curve below is a mean over windows (and features) of a per-point or per-window value.
# These helpers return the SUMS of one block of windows, so the one-shot curves divide
# by the count once and `ForecastScore` adds blocks up first: one formula, two uses.
def _sq_err_sum(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """sum_{traj,F} (p - t)^2 per lead time."""
    return ((p - t) ** 2).sum(axis=(0, 2))


def _channel_sq_err_sum(p: np.ndarray, t: np.ndarray, n_space: int, n_ch: int) -> np.ndarray:
    """sum_{traj,space} (p - t)^2 per lead and channel, `(H, C)`."""
    n, h, _ = t.shape
    return ((p - t) ** 2).reshape(n, h, n_space, n_ch).sum(axis=(0, 2))


def _vrmse_sum(p: np.ndarray, t: np.ndarray, n_space: int, n_ch: int,
               eps: float) -> np.ndarray:
    """sum_traj sqrt(mean_x err^2 / (var_x(truth, ddof=1) + eps)) per lead and field `(H, C)`
    (The Well's VRMSE, one value per field: variances of different fields are never pooled)."""
    n, h, _ = t.shape
    err = ((p - t) ** 2).reshape(n, h, n_space, n_ch).mean(axis=2)  # (n, H, C)
    var = t.reshape(n, h, n_space, n_ch).var(axis=2, ddof=1)
    return np.sqrt(err / (var + eps)).sum(axis=0)


def _smape_sum(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """sum_{traj,F} of the pointwise sMAPE per lead time."""
    return _smape_points(p, t).sum(axis=(0, 2))


def _first_exceed(err: np.ndarray, threshold: float) -> np.ndarray:
    """Per row of `(n, H)`: index of the first entry above `threshold` (NaN counts as above),
    H if none is -- the number of valid leading steps (Vlachas et al. 2020, Neural Networks
    126:191, first-crossing definition)."""
    bad = ~(err <= threshold)
    first = np.argmax(bad, axis=1)  # 0 when no step is bad, fixed below
    return np.where(bad.any(axis=1), first, bad.shape[1]).astype(np.float64)


# ---- per-step curves of one set of windows -------------------------------------------------
def nrmse_per_step(pred: np.ndarray, truth: np.ndarray, scale: float) -> np.ndarray:
    """Normalised RMSE per lead time, `(H,)`: sqrt(mean_{traj,F} (pred - truth)^2) / scale.

    `scale` is the standard deviation of the data (climatological normalisation), so predicting
    the climatological mean scores about 1 and a perfect forecast 0.
    """
    p, t = _as_forecast(pred, truth)
    _check_scale(scale)
    return np.sqrt(_sq_err_sum(p, t) / _n_points(t)) / scale


def channel_nrmse(pred: np.ndarray, truth: np.ndarray, channel_std: np.ndarray,
                  state_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Per-window channel-normalised nRMSE `(n, H)`: sqrt(mean_{space,c} (err / std_c)^2).

    Each channel is divided by its own (training) std before the RMS, so variables of very
    different size or offset weigh the same; the curve `vpt` thresholds.
    """
    p, t = _as_forecast(pred, truth)
    n_space, n_ch, _ = _layout(state_shape, t.shape[2])
    sd = np.asarray(channel_std, dtype=np.float64)
    if sd.shape != (n_ch,) or not np.all(np.isfinite(sd) & (sd > 0)):
        raise ValueError(f"channel_std must be {n_ch} positive finite numbers, got {sd!r}")
    with np.errstate(invalid="ignore", over="ignore"):
        return np.sqrt((((p - t) / _feature_std(sd, n_space)) ** 2).mean(axis=2))


def vrmse_per_step(pred: np.ndarray, truth: np.ndarray, state_shape: tuple[int, ...],
                   eps: float = VRMSE_EPS) -> np.ndarray:
    """Variance-scaled RMSE per lead time and field, `(H, n_fields)` (The Well, Ohana et al.
    2024, NeurIPS D&B): per trajectory, step and field sqrt(mean_x err^2 / (var_x(truth,
    ddof=1) + eps)), then the mean over trajectories. Only defined for fields (spatial dims);
    a forecast of the spatial mean of the true field scores sqrt((X - 1) / X) ~ 1."""
    p, t = _as_forecast(pred, truth)
    n_space, n_ch, is_field = _layout(state_shape, t.shape[2])
    if not is_field or n_space < 2:
        raise ValueError(f"VRMSE needs a field state (spatial dims of >= 2 points), got "
                         f"state shape {tuple(state_shape)}")
    return _vrmse_sum(p, t, n_space, n_ch, eps) / len(t)


def _smape_points(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pointwise sMAPE in percent, 200 |p - t| / (|p| + |t|), with 0/0 := 0.

    A non-finite prediction scores the maximum, 200, so that a diverged forecast is never
    counted as valid (NaN would compare False against any threshold).
    """
    den = np.abs(pred) + np.abs(truth)
    num = 200.0 * np.abs(pred - truth)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return np.where(np.isfinite(pred), s, 200.0)


def smape_per_step(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Symmetric MAPE per lead time in percent (0..200), `(H,)`, mean over trajectories and F.

    Pointwise 200 |p - t| / (|p| + |t|) (Makridakis 1993); 0/0 (both exactly zero) counts 0.
    """
    p, t = _as_forecast(pred, truth)
    return _smape_sum(p, t) / _n_points(t)


def valid_prediction_time(pred: np.ndarray, truth: np.ndarray, channel_std: np.ndarray,
                          state_shape: tuple[int, ...] | None = None,
                          threshold: float = VPT_NRMSE_THRESHOLD) -> np.ndarray:
    """`vpt` per trajectory in steps, `(n_traj,)`: leading steps before the first lead whose
    channel-normalised nRMSE (`channel_nrmse`) exceeds `threshold` (0.5; Vlachas et al. 2020
    threshold a normalised error the same way)."""
    return _first_exceed(channel_nrmse(pred, truth, channel_std, state_shape), threshold)


def valid_prediction_time_smape(pred: np.ndarray, truth: np.ndarray,
                                threshold: float = VPT_SMAPE_THRESHOLD) -> np.ndarray:
    """`vpt_smape` per trajectory in steps, `(n_traj,)`: leading steps before the first lead
    whose sMAPE (mean over F) exceeds `threshold` (30 %, the dysts benchmark convention;
    Gilpin 2021). Inclusive: a step at exactly the threshold is still valid."""
    p, t = _as_forecast(pred, truth)
    return _first_exceed(_smape_points(p, t).mean(axis=2), threshold)


def crps_from_samples(samples: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Exact CRPS of the empirical sample distribution per lead time, `(H,)`, mean over traj
    and F: E|X - y| - 0.5 E|X - X'| (Gneiting & Raftery 2007, JASA 102:359, eq. 21), the pair
    term in O(S log S) from the sorted samples (`calibration.crps_sorted_sum`). A point mass
    (all samples equal) gives the MAE."""
    t = np.asarray(truth, dtype=np.float64)
    s = cal.check_samples(samples, t)
    return cal.crps_sorted_sum(np.sort(s, axis=0), t) / _n_points(t)


def crps_from_quantiles(quantiles: np.ndarray, levels: np.ndarray,
                        truth: np.ndarray) -> np.ndarray:
    """Quantile-score approximation of CRPS per lead time, `(H,)`, mean over traj and F
    (`calibration.crps_quantiles_sum`)."""
    t = np.asarray(truth, dtype=np.float64)
    return cal.crps_quantiles_sum(quantiles, np.asarray(levels, dtype=np.float64), t) \
        / _n_points(t)


def _pit(samples: np.ndarray, truth: np.ndarray, seed: int) -> np.ndarray:
    t = np.asarray(truth, dtype=np.float64)
    return cal.randomised_pit(cal.check_samples(samples, t), t, np.random.default_rng(seed))


def coverage_per_step(samples: np.ndarray, truth: np.ndarray, seed: int = 0
                      ) -> dict[str, np.ndarray]:
    """Per-lead coverage `(H,)` of the central 50% and 80% intervals of the sample paths
    (randomised PIT inside the interval; `seed` draws the randomisation)."""
    pit = _pit(samples, truth, seed)
    return {k: v / _n_points(pit) for k, v in cal.coverage_from_pit(pit).items()}


def pit_histogram(samples: np.ndarray, truth: np.ndarray, seed: int = 0) -> np.ndarray:
    """Fractions `(PIT_BINS,)` of the randomised PIT values in each equal bin of [0, 1]."""
    counts = cal.pit_counts(_pit(samples, truth, seed))
    return counts / counts.sum()


def _json_float(x: Any) -> float | None:
    """A plain float for JSON, or None where the value is not finite (diverged forecast)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _json_list(a: np.ndarray) -> list[float | None]:
    """A curve as a list of plain floats (None for non-finite entries)."""
    return [_json_float(v) for v in np.asarray(a).ravel()]


# ---- all metrics, accumulated over blocks of windows ----------------------------------------
class ForecastScore:
    """Running sums of every forecast metric over blocks of windows, so that scoring many
    windows needs memory for one block only; `result()` is the `forecast_metrics` dict.

    Every metric is a mean over windows (and features) of a per-point or per-window value, so
    summing per block and dividing once at the end gives the all-at-once numbers up to float
    summation order (the PIT's tie-breaking draws come from one seeded stream in window
    order, so they do not depend on the blocking either).

    `scale`: the nRMSE denominator; `channel_std` `(C,)`: each channel's training std (for
    `nrmse_ch`, `nrmse_per_channel` and `vpt`; default `scale` for every channel);
    `state_shape`: the unflattened state, channels last (default: an ODE state (F,)); VRMSE is
    reported only when it has spatial dims. `levels` (ascending, in (0, 1)) are needed when
    blocks bring quantiles. Blocks must agree on (H, F) and on the kind of forecast.
    """

    def __init__(self, scale: float, dt_steps_per_lyapunov: float | None = None,
                 levels: np.ndarray | list[float] | None = None, *,
                 channel_std: np.ndarray | list[float] | None = None,
                 state_shape: tuple[int, ...] | list[int] | None = None, seed: int = 0) -> None:
        _check_scale(scale)
        if dt_steps_per_lyapunov is not None and not (
                np.isfinite(dt_steps_per_lyapunov) and dt_steps_per_lyapunov > 0):
            raise ValueError(f"steps per Lyapunov time must be positive, got "
                             f"{dt_steps_per_lyapunov!r}")
        self.scale, self.steps_per_lt = scale, dt_steps_per_lyapunov
        self.levels = None if levels is None else np.asarray(levels, dtype=np.float64)
        self.channel_std = None if channel_std is None else np.asarray(channel_std, np.float64)
        self.state_shape = None if state_shape is None else tuple(state_shape)
        self._rng = np.random.default_rng(seed)
        self.n_windows = 0
        self._shape: tuple[int, int] | None = None  # (H, F) of the first block
        self._kind: str | None = None  # "point" | "quantiles" | "samples"
        self._sums: dict[str, np.ndarray] = {}

    def _check_block(self, t: np.ndarray, kind: str) -> tuple[int, int, bool]:
        """The state layout; ValueError unless this block matches the earlier ones."""
        layout = _layout(self.state_shape, t.shape[2])
        if self.channel_std is not None and self.channel_std.shape != (layout[1],):
            raise ValueError(f"channel_std has {self.channel_std.shape} entries, the state "
                             f"{layout[1]} channels")
        if self._shape is not None and (t.shape[1], t.shape[2]) != self._shape:
            raise ValueError(f"a block of windows has (H, F) = {t.shape[1:]}, earlier blocks "
                             f"{self._shape}")
        if self._kind is not None and kind != self._kind:
            raise ValueError(f"this block brings a {kind} forecast, earlier ones {self._kind}: "
                             "quantiles or samples must come with every block or with none")
        if kind == "quantiles" and self.levels is None:
            raise ValueError("quantile forecasts need their `levels`")
        return layout

    def add(self, pred: np.ndarray, truth: np.ndarray, quantiles: np.ndarray | None = None,
            samples: np.ndarray | None = None) -> None:
        """Add one block: point forecast and truth `(n, H, F)` (for sample paths, pass their
        median as `pred`), optionally quantiles `(n_levels, n, H, F)` or sample paths
        `(n_samples, n, H, F)` (exact CRPS, coverage and PIT; used when both are given)."""
        p, t = _as_forecast(pred, truth)
        kind = "samples" if samples is not None else "point" if quantiles is None else "quantiles"
        n_space, n_ch, is_field = self._check_block(t, kind)
        sums = self._point_sums(p, t, n_space, n_ch, is_field)
        sums.update(self._ensemble_sums(p, t, kind, quantiles, samples))
        for key, value in sums.items():
            self._sums[key] = self._sums[key] + value if key in self._sums else value
        self.n_windows += len(t)
        self._shape, self._kind = (t.shape[1], t.shape[2]), kind

    def _point_sums(self, p: np.ndarray, t: np.ndarray, n_space: int, n_ch: int,
                    is_field: bool) -> dict[str, np.ndarray]:
        """Sums of the point-forecast metrics of one block."""
        sd = self.channel_std if self.channel_std is not None else np.full(n_ch, self.scale)
        with np.errstate(invalid="ignore", over="ignore"):
            sums = {"nrmse": _sq_err_sum(p, t), "channel_sq": _channel_sq_err_sum(
                p, t, n_space, n_ch), "smape": _smape_sum(p, t),
                "vpt": valid_prediction_time(p, t, sd, self.state_shape).sum(keepdims=True),
                "vpt_smape": valid_prediction_time_smape(p, t).sum(keepdims=True)}
            if is_field and n_space > 1:
                sums["vrmse"] = _vrmse_sum(p, t, n_space, n_ch, VRMSE_EPS)
        return sums

    def _ensemble_sums(self, p: np.ndarray, t: np.ndarray, kind: str,
                       quantiles: np.ndarray | None,
                       samples: np.ndarray | None) -> dict[str, np.ndarray]:
        """CRPS (every kind), coverage and PIT (as far as the kind allows) of one block."""
        if kind == "point":
            return {"crps": cal.crps_point_sum(p, t)}
        if kind == "quantiles":
            q = np.asarray(quantiles, dtype=np.float64)
            return {"crps": cal.crps_quantiles_sum(q, self.levels, t),
                    **cal.coverage_from_quantiles(q, self.levels, t)}
        with np.errstate(invalid="ignore"):  # inf - inf in diverged paths
            s = np.sort(cal.check_samples(samples, t), axis=0)
            pit = cal.randomised_pit(s, t, self._rng)
            return {"crps": cal.crps_sorted_sum(s, t), **cal.coverage_from_pit(pit),
                    "pit": cal.pit_counts(pit)}

    def per_step(self) -> dict[str, np.ndarray]:
        """The per-step curves `(H,)` of all windows added so far (means of the sums), and the
        per-channel ones `(H, C)` under `nrmse_per_channel` / `vrmse_per_field`."""
        if not self.n_windows:
            raise ValueError("no windows were added to score")
        n, s = self.n_windows, self._sums
        points = n * self._shape[1]
        n_ch = s["channel_sq"].shape[1]
        sd = self.channel_std if self.channel_std is not None else np.full(n_ch, self.scale)
        per_ch = np.sqrt(s["channel_sq"] / (points / n_ch)) / sd  # (H, C)
        curves = {"nrmse": np.sqrt(s["nrmse"] / points) / self.scale,
                  "nrmse_ch": np.sqrt((per_ch**2).mean(axis=1)), "smape": s["smape"] / points,
                  "crps": s["crps"] / points, "nrmse_per_channel": per_ch}
        if "vrmse" in s:
            curves["vrmse_per_field"] = s["vrmse"] / n
            curves["vrmse"] = curves["vrmse_per_field"].mean(axis=1)
        for key in cal.COVERAGE_MASSES:
            if key in s:
                curves[key] = s[key] / points
        return curves

    def result(self) -> dict[str, Any]:
        """All metrics, JSON-ready: exactly what `forecast_metrics` returns (see there)."""
        curves = self.per_step()
        out: dict[str, Any] = {k: _json_float(curves[k].mean())
                               for k in ("nrmse", "nrmse_ch", "vrmse", "smape", "crps")
                               if k in curves}
        unit = 1.0 if self.steps_per_lt is None else self.steps_per_lt
        for key in ("vpt", "vpt_smape"):
            out[key] = _json_float(self._sums[key][0] / self.n_windows / unit)
        out["vpt_unit"] = "steps" if self.steps_per_lt is None else "lyapunov_times"
        out["crps_from"] = self._kind
        out["nrmse_per_channel"] = _json_list(curves["nrmse_per_channel"].mean(axis=0))
        if "vrmse_per_field" in curves:
            out["vrmse_per_field"] = _json_list(curves["vrmse_per_field"].mean(axis=0))
            out["vrmse_lead_bins"] = lead_bin_means(curves["vrmse"])
            out["vrmse_lead_bins_per_field"] = lead_bin_means(curves["vrmse_per_field"])
        for key in cal.COVERAGE_MASSES:
            if key in curves:
                out[key] = _json_list(curves[key])
        if "pit" in self._sums:
            counts = self._sums["pit"]
            out["pit"] = {"edges": _json_list(np.linspace(0, 1, len(counts) + 1).round(12)),
                          "fraction": _json_list(counts / counts.sum()), "n": int(counts.sum())}
        out["per_step"] = {k: _json_list(curves[k]) for k in
                           ("nrmse", "nrmse_ch", "vrmse", "smape", "crps") if k in curves}
        return out


def forecast_metrics(pred: np.ndarray, truth: np.ndarray, *, scale: float,
                     dt_steps_per_lyapunov: float | None = None,
                     quantiles: np.ndarray | None = None, levels: np.ndarray | None = None,
                     samples: np.ndarray | None = None, channel_std: np.ndarray | None = None,
                     state_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """All forecast metrics of one model, JSON-ready (the metrics.json contract; the keys are
    explained in `DEFINITIONS`).

    Scalars are means over lead times of the per-step curves; `vpt` and `vpt_smape` are means
    over trajectories, in Lyapunov times (steps / `dt_steps_per_lyapunov`, the number of steps
    per Lyapunov time) when that is given, else in steps. `crps` is always present: exact from
    `samples` (preferred), from `quantiles` + `levels`, or the MAE of a point forecast
    (`crps_from` says which); coverage and PIT come with samples (coverage also with quantiles
    at the interval's levels). One block of `ForecastScore`, which scores many blocks.
    """
    score = ForecastScore(scale, dt_steps_per_lyapunov, levels, channel_std=channel_std,
                          state_shape=state_shape)
    score.add(pred, truth, quantiles=quantiles, samples=samples)
    return score.result()


def lead_bin_means(curve: np.ndarray | list[float | None],
                   bins: tuple[tuple[int, int], ...] = LEAD_BINS) -> dict[str, Any]:
    """Mean of a per-step curve `(H,)` or `(H, C)` over each lead bin (first, last) of 1-based
    steps that fits in H, keyed "1", "2-6", ...: a float, or a list per column for (H, C).
    A None (diverged) step makes its bin None."""
    c = np.array([np.nan if v is None else v for v in curve] if isinstance(curve, list)
                 else curve, dtype=np.float64)
    out: dict[str, Any] = {}
    for first, last in bins:
        if last > len(c):
            continue
        key = str(first) if first == last else f"{first}-{last}"
        mean = c[first - 1:last].mean(axis=0)
        out[key] = _json_float(mean) if mean.ndim == 0 else _json_list(mean)
    return out


def nrmse_at(per_step_nrmse: np.ndarray | list[float], steps: list[int]) -> dict[str, float | None]:
    """Pick the per-step nRMSE at the given 1-based lead times: {"h1": .., "h10": ..}."""
    curve = list(per_step_nrmse)
    out: dict[str, float | None] = {}
    for h in steps:
        if not 1 <= h <= len(curve):
            raise ValueError(f"lead time {h} is outside 1..{len(curve)} of the nRMSE curve")
        out[f"h{h}"] = None if curve[h - 1] is None else _json_float(curve[h - 1])
    return out


def masked_metrics(log_probs_true: np.ndarray, pred_ids: np.ndarray,
                   true_ids: np.ndarray) -> dict[str, Any]:
    """Masked-residue scores: perplexity exp(-mean log p(true)), argmax accuracy, count.

    Inputs are one entry per masked position: the model's natural-log probability of the true
    token, its argmax id, and the true id. With no masked positions the scores are None.
    """
    lp = np.asarray(log_probs_true, dtype=np.float64).ravel()
    pr, tr = np.asarray(pred_ids).ravel(), np.asarray(true_ids).ravel()
    if not (lp.shape == pr.shape == tr.shape):
        raise ValueError(f"one log-probability, prediction and true id per masked position "
                         f"expected; got {lp.shape}, {pr.shape}, {tr.shape}")
    if lp.size == 0:
        return {"perplexity": None, "accuracy": None, "n_masked": 0}
    if np.any(lp > 1e-5):  # float32 log-softmax can round a hair above 0
        raise ValueError(f"log-probabilities must be <= 0, got a maximum of {lp.max():.3g}")
    return {"perplexity": _json_float(np.exp(-lp.mean())),
            "accuracy": float(np.mean(pr == tr)), "n_masked": int(lp.size)}
