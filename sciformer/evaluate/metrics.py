"""Forecast and masked-residue metrics.

Shapes: point forecasts and truth are `(n_traj, H, F)` with F the flattened state (channels, or
n_x * n_fields); quantile forecasts `(n_levels, n_traj, H, F)` with ascending `levels`; samples
`(n_samples, n_traj, H, F)`. Everything is computed in float64. Per-step curves are `(H,)`,
step h (0-based) being lead time h + 1.

`forecast_metrics` returns plain Python floats and lists, ready for metrics.json. A value that
is not finite (a diverged forecast: inf or NaN in the prediction) is written as `None` (JSON
`null`) rather than the non-standard `NaN`/`Infinity` tokens. `ForecastScore` gives the same
dict for windows that arrive in blocks (bounded memory on large files); `forecast_metrics` is
its one-block use, and both it and the per-step curves share the "sum over windows" helpers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: sMAPE (percent) above which a forecast step stops counting as valid (DESIGN.md contract).
VPT_THRESHOLD = 30.0
#: Added to the spatial variance in VRMSE so a constant true state does not divide by zero.
VRMSE_EPS = 1e-7


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


# ---- per-step sums over windows ------------------------------------------------------------
# Every curve below is a mean over windows (and features) of a per-point or per-window value.
# These helpers return the SUMS `(H,)` of one block of windows, so the one-shot curves divide
# by the count once and `ForecastScore` adds blocks up first: one formula, two uses.
def _sq_err_sum(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """sum_{traj,F} (p - t)^2 per lead time."""
    return ((p - t) ** 2).sum(axis=(0, 2))


def _vrmse_sum(p: np.ndarray, t: np.ndarray, eps: float) -> np.ndarray:
    """sum_traj sqrt(mean_F err^2 / (var_F truth + eps)) per lead time (The Well's VRMSE)."""
    return np.sqrt(np.mean((p - t) ** 2, axis=2) / (np.var(t, axis=2) + eps)).sum(axis=0)


def _smape_sum(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """sum_{traj,F} of the pointwise sMAPE per lead time."""
    return _smape_points(p, t).sum(axis=(0, 2))


def _crps_samples_sum(samples: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """sum_{traj,F} of the ensemble CRPS per lead time (see `crps_from_samples`)."""
    s = np.asarray(samples, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if s.ndim != 4 or s.shape[1:] != t.shape:
        raise ValueError(f"samples must be (n_samples, *truth.shape) with truth (n_traj, H, F); "
                         f"got samples {s.shape} and truth {t.shape}")
    m = s.shape[0]
    abs_err, half_spread = np.zeros_like(t), np.zeros_like(t)  # (n, H, F) accumulators
    for i, x in enumerate(np.sort(s, axis=0)):  # loop: no second (m, n, H, F) temporary
        abs_err += np.abs(x - t)
        half_spread += (2.0 * i - m + 1.0) * x
    return (abs_err / m - half_spread / m**2).sum(axis=(0, 2))  # half_spread/m^2 = E|X-X'|/2


def _crps_quantiles_sum(quantiles: np.ndarray, levels: np.ndarray,
                        truth: np.ndarray) -> np.ndarray:
    """sum_{traj,F} of the quantile-score CRPS per lead time (see `crps_from_quantiles`)."""
    q = np.asarray(quantiles, dtype=np.float64)
    a = np.asarray(levels, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if q.ndim != 4 or q.shape[1:] != t.shape or a.shape != (q.shape[0],):
        raise ValueError(f"quantiles must be (n_levels, *truth.shape) with one level each; got "
                         f"quantiles {q.shape}, levels {a.shape}, truth {t.shape}")
    if np.any(a <= 0) or np.any(a >= 1) or np.any(np.diff(a) <= 0):
        raise ValueError(f"quantile levels must be strictly ascending in (0, 1), got {a.tolist()}")
    total = np.zeros(t.shape[1])
    for level, qk in zip(a, q):  # one level at a time: memory O(n H F), not O(K n H F)
        diff = t - qk
        total += np.maximum(level * diff, (level - 1.0) * diff).sum(axis=(0, 2))
    return 2.0 * total / len(a)


# ---- per-step curves of one set of windows -------------------------------------------------
def nrmse_per_step(pred: np.ndarray, truth: np.ndarray, scale: float) -> np.ndarray:
    """Normalised RMSE per lead time, `(H,)`: sqrt(mean_{traj,F} (pred - truth)^2) / scale.

    `scale` is the standard deviation of the data (climatological normalisation), so predicting
    the climatological mean scores about 1 and a perfect forecast 0.
    """
    p, t = _as_forecast(pred, truth)
    _check_scale(scale)
    return np.sqrt(_sq_err_sum(p, t) / _n_points(t)) / scale


def vrmse_per_step(pred: np.ndarray, truth: np.ndarray, eps: float = VRMSE_EPS) -> np.ndarray:
    """Variance-scaled RMSE per lead time, `(H,)` (The Well, Ohana et al. 2024, NeurIPS D&B).

    For each trajectory and step: sqrt(mean_F err^2 / (var_F truth + eps)); then the mean over
    trajectories. A forecast of the spatial mean of the true state scores 1 at that step.
    """
    p, t = _as_forecast(pred, truth)
    return _vrmse_sum(p, t, eps) / len(t)


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


def valid_prediction_time(pred: np.ndarray, truth: np.ndarray,
                          threshold: float = VPT_THRESHOLD) -> np.ndarray:
    """Valid prediction time per trajectory in steps, `(n_traj,)` (integers as float64).

    The sMAPE of each step is averaged over F; VPT is the number of leading steps whose sMAPE
    stays <= `threshold`, i.e. the 0-based index of the first step above it, H if none is
    (the first-crossing definition of Vlachas et al. 2020, Neural Networks 126:191, which
    thresholds the normalised error; here the error is sMAPE as the design fixes).
    """
    p, t = _as_forecast(pred, truth)
    bad = _smape_points(p, t).mean(axis=2) > threshold  # (n, H)
    first = np.argmax(bad, axis=1)  # 0 when no step is bad, fixed below
    return np.where(bad.any(axis=1), first, bad.shape[1]).astype(np.float64)


def crps_from_samples(samples: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """CRPS of the empirical sample distribution per lead time, `(H,)`, mean over traj and F.

    CRPS = E|X - y| - 0.5 E|X - X'| (Gneiting & Raftery 2007, JASA 102:359, eq. 21). The
    pair term uses the sorted-sample identity sum_{i,j} |x_i - x_j| = 2 sum_i (2i - m + 1) x_(i)
    (0-based ranks), O(m log m) time and O(m) memory per point instead of O(m^2). Expectations
    are over the m samples with equal weight (1/m^2 for pairs), so a point mass gives the MAE.
    """
    t = np.asarray(truth, dtype=np.float64)
    return _crps_samples_sum(samples, t) / _n_points(t)


def crps_from_quantiles(quantiles: np.ndarray, levels: np.ndarray,
                        truth: np.ndarray) -> np.ndarray:
    """Quantile-score approximation of CRPS per lead time, `(H,)`, mean over traj and F.

    CRPS = 2 * integral_0^1 pinball_a(y, q_a) da (Gneiting & Raftery 2007, eq. 24 / Laio &
    Tamea 2007), approximated by 2 * the mean over the given levels of the pinball loss
    max(a (y - q), (a - 1)(y - q)) -- the weighted quantile loss of Chronos (Ansari et al. 2024)
    without its normalisation by |y|. Evenly spread levels make it a midpoint-rule integral.
    """
    t = np.asarray(truth, dtype=np.float64)
    return _crps_quantiles_sum(quantiles, levels, t) / _n_points(t)


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
    summation order. `levels` (ascending, in (0, 1)) are needed when blocks bring quantiles.
    Blocks must agree on (H, F) and on whether they bring quantiles/samples (CRPS).
    """

    def __init__(self, scale: float, dt_steps_per_lyapunov: float | None = None,
                 levels: np.ndarray | list[float] | None = None) -> None:
        _check_scale(scale)
        if dt_steps_per_lyapunov is not None and not (
                np.isfinite(dt_steps_per_lyapunov) and dt_steps_per_lyapunov > 0):
            raise ValueError(f"steps per Lyapunov time must be positive, got "
                             f"{dt_steps_per_lyapunov!r}")
        self.scale, self.steps_per_lt = scale, dt_steps_per_lyapunov
        self.levels = None if levels is None else np.asarray(levels, dtype=np.float64)
        self.n_windows = 0
        self._shape: tuple[int, int] | None = None  # (H, F) of the first block
        self._with_crps: bool | None = None
        self._sums: dict[str, np.ndarray] = {}
        self._vpt_steps = 0.0

    def _check_block(self, t: np.ndarray, with_crps: bool) -> None:
        """ValueError unless this block matches the earlier ones in (H, F) and CRPS inputs."""
        if self._shape is None:  # the first block sets both
            return
        if (t.shape[1], t.shape[2]) != self._shape:
            raise ValueError(f"a block of windows has (H, F) = {t.shape[1:]}, earlier blocks "
                             f"{self._shape}")
        if with_crps != self._with_crps:
            raise ValueError("quantiles or samples (for CRPS) must come with every block of "
                             "windows or with none")

    def add(self, pred: np.ndarray, truth: np.ndarray, quantiles: np.ndarray | None = None,
            samples: np.ndarray | None = None) -> None:
        """Add one block: point forecast and truth `(n, H, F)`, optionally quantiles
        `(n_levels, n, H, F)` or samples `(n_samples, n, H, F)` (exact CRPS, preferred)."""
        p, t = _as_forecast(pred, truth)
        if samples is None and quantiles is not None and self.levels is None:
            raise ValueError("quantile forecasts need their `levels`")
        self._check_block(t, samples is not None or quantiles is not None)
        sums = {"nrmse": _sq_err_sum(p, t), "vrmse": _vrmse_sum(p, t, VRMSE_EPS),
                "smape": _smape_sum(p, t)}
        if samples is not None:
            sums["crps"] = _crps_samples_sum(samples, t)
        elif quantiles is not None:
            sums["crps"] = _crps_quantiles_sum(quantiles, self.levels, t)
        for key, value in sums.items():
            self._sums[key] = self._sums[key] + value if key in self._sums else value
        self._vpt_steps += float(valid_prediction_time(p, t).sum())
        self.n_windows += len(t)
        self._shape, self._with_crps = (t.shape[1], t.shape[2]), "crps" in sums

    def per_step(self) -> dict[str, np.ndarray]:
        """The per-step curves `(H,)` of all windows added so far (means of the sums)."""
        if not self.n_windows:
            raise ValueError("no windows were added to score")
        n, points = self.n_windows, self.n_windows * self._shape[1]
        curves = {"nrmse": np.sqrt(self._sums["nrmse"] / points) / self.scale,
                  "vrmse": self._sums["vrmse"] / n, "smape": self._sums["smape"] / points}
        if "crps" in self._sums:
            curves["crps"] = self._sums["crps"] / points
        return curves

    def result(self) -> dict[str, Any]:
        """All metrics, JSON-ready: exactly what `forecast_metrics` returns (see there)."""
        per_step = self.per_step()
        vpt = self._vpt_steps / self.n_windows
        if self.steps_per_lt is not None:
            vpt = vpt / self.steps_per_lt
        out: dict[str, Any] = {k: _json_float(v.mean()) for k, v in per_step.items()}
        out["vpt"] = _json_float(vpt)
        out["vpt_unit"] = "steps" if self.steps_per_lt is None else "lyapunov_times"
        out["per_step"] = {k: _json_list(v) for k, v in per_step.items()}
        return out


def forecast_metrics(pred: np.ndarray, truth: np.ndarray, *, scale: float,
                     dt_steps_per_lyapunov: float | None = None,
                     quantiles: np.ndarray | None = None, levels: np.ndarray | None = None,
                     samples: np.ndarray | None = None) -> dict[str, Any]:
    """All forecast metrics of one model, JSON-ready (the metrics.json contract).

    Scalars are means over lead times of the per-step curves; `vpt` is the mean valid
    prediction time over trajectories, in Lyapunov times (steps / `dt_steps_per_lyapunov`, the
    number of steps per Lyapunov time) when that is given, else in steps. `crps` is present
    when `samples` (exact CRPS of the ensemble; preferred when both are given) or
    `quantiles` + `levels` are. One block of `ForecastScore`, which scores many blocks.
    """
    score = ForecastScore(scale, dt_steps_per_lyapunov, levels)
    score.add(pred, truth, quantiles=quantiles, samples=samples)
    return score.result()


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
