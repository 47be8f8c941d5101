"""Forecast and masked-residue metrics.

Shapes: point forecasts and truth are `(n_traj, H, F)` with F the flattened state (channels, or
n_x * n_fields); quantile forecasts `(n_levels, n_traj, H, F)` with ascending `levels`; samples
`(n_samples, n_traj, H, F)`. Everything is computed in float64. Per-step curves are `(H,)`,
step h (0-based) being lead time h + 1.

`forecast_metrics` returns plain Python floats and lists, ready for metrics.json. A value that
is not finite (a diverged forecast: inf or NaN in the prediction) is written as `None` (JSON
`null`) rather than the non-standard `NaN`/`Infinity` tokens.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: sMAPE (percent) above which a forecast step stops counting as valid (DESIGN.md contract).
VPT_THRESHOLD = 30.0


def _as_forecast(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64 `(n_traj, H, F)` arrays of the same shape, else ValueError."""
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if t.ndim != 3 or p.shape != t.shape:
        raise ValueError(f"forecast and truth must both be (n_traj, H, F); got prediction "
                         f"{p.shape} and truth {t.shape}")
    return p, t


def nrmse_per_step(pred: np.ndarray, truth: np.ndarray, scale: float) -> np.ndarray:
    """Normalised RMSE per lead time, `(H,)`: sqrt(mean_{traj,F} (pred - truth)^2) / scale.

    `scale` is the standard deviation of the data (climatological normalisation), so predicting
    the climatological mean scores about 1 and a perfect forecast 0.
    """
    p, t = _as_forecast(pred, truth)
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"nRMSE scale must be a positive finite number, got {scale!r}")
    return np.sqrt(np.mean((p - t) ** 2, axis=(0, 2))) / scale


def vrmse_per_step(pred: np.ndarray, truth: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Variance-scaled RMSE per lead time, `(H,)` (The Well, Ohana et al. 2024, NeurIPS D&B).

    For each trajectory and step: sqrt(mean_F err^2 / (var_F truth + eps)); then the mean over
    trajectories. A forecast of the spatial mean of the true state scores 1 at that step.
    """
    p, t = _as_forecast(pred, truth)
    per = np.sqrt(np.mean((p - t) ** 2, axis=2) / (np.var(t, axis=2) + eps))  # (n, H)
    return per.mean(axis=0)


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
    return _smape_points(p, t).mean(axis=(0, 2))


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
    return (abs_err / m - half_spread / m**2).mean(axis=(0, 2))  # half_spread/m^2 = E|X-X'|/2


def crps_from_quantiles(quantiles: np.ndarray, levels: np.ndarray,
                        truth: np.ndarray) -> np.ndarray:
    """Quantile-score approximation of CRPS per lead time, `(H,)`, mean over traj and F.

    CRPS = 2 * integral_0^1 pinball_a(y, q_a) da (Gneiting & Raftery 2007, eq. 24 / Laio &
    Tamea 2007), approximated by 2 * the mean over the given levels of the pinball loss
    max(a (y - q), (a - 1)(y - q)) -- the weighted quantile loss of Chronos (Ansari et al. 2024)
    without its normalisation by |y|. Evenly spread levels make it a midpoint-rule integral.
    """
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
        total += np.maximum(level * diff, (level - 1.0) * diff).mean(axis=(0, 2))
    return 2.0 * total / len(a)


def _json_float(x: Any) -> float | None:
    """A plain float for JSON, or None where the value is not finite (diverged forecast)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _json_list(a: np.ndarray) -> list[float | None]:
    """A curve as a list of plain floats (None for non-finite entries)."""
    return [_json_float(v) for v in np.asarray(a).ravel()]


def forecast_metrics(pred: np.ndarray, truth: np.ndarray, *, scale: float,
                     dt_steps_per_lyapunov: float | None = None,
                     quantiles: np.ndarray | None = None, levels: np.ndarray | None = None,
                     samples: np.ndarray | None = None) -> dict[str, Any]:
    """All forecast metrics of one model, JSON-ready (the metrics.json contract).

    Scalars are means over lead times of the per-step curves; `vpt` is the mean valid
    prediction time over trajectories, in Lyapunov times (steps / `dt_steps_per_lyapunov`, the
    number of steps per Lyapunov time) when that is given, else in steps. `crps` is present
    when `samples` (exact CRPS of the ensemble; preferred when both are given) or
    `quantiles` + `levels` are.
    """
    per_step: dict[str, np.ndarray] = {
        "nrmse": nrmse_per_step(pred, truth, scale),
        "vrmse": vrmse_per_step(pred, truth),
        "smape": smape_per_step(pred, truth),
    }
    if samples is not None:
        per_step["crps"] = crps_from_samples(samples, truth)
    elif quantiles is not None:
        if levels is None:
            raise ValueError("quantile forecasts need their `levels`")
        per_step["crps"] = crps_from_quantiles(quantiles, levels, truth)
    vpt = valid_prediction_time(pred, truth).mean()
    if dt_steps_per_lyapunov is not None:
        if not (np.isfinite(dt_steps_per_lyapunov) and dt_steps_per_lyapunov > 0):
            raise ValueError(f"steps per Lyapunov time must be positive, got "
                             f"{dt_steps_per_lyapunov!r}")
        vpt = vpt / dt_steps_per_lyapunov
    out: dict[str, Any] = {k: _json_float(v.mean()) for k, v in per_step.items()}
    out["vpt"] = _json_float(vpt)
    out["vpt_unit"] = "steps" if dt_steps_per_lyapunov is None else "lyapunov_times"
    out["per_step"] = {k: _json_list(v) for k, v in per_step.items()}
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
