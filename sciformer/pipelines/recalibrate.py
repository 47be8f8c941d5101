"""Post-hoc spread recalibration of sample paths: one factor per lead time.

A forecaster's sample paths can be under- (or over-) dispersed: their central intervals cover
the truth less (more) often than nominal. `SpreadCalibration` rescales each path's deviation
from the ensemble median at lead t,

    path'(t) = median(t) + s(t) * (path(t) - median(t)),

which keeps the median (hence every point-forecast score) and the ranks of the paths, and only
widens (s > 1) or narrows (s < 1) the spread. The factors are fitted on sample paths of the
run's VALIDATION trajectories (`sciformer.calibrate`), never on the data a model is
evaluated on, and stored in the run directory as ``calibration.json``; a run without that file
is used as it is.

Fitting (`fit_factors`), per lead, pooled over windows and features:

- ``crps-free``: the s minimising the sum of the *fair* ensemble CRPS
  E|X - y| - E|X - X'| / 2 over distinct pairs (Ferro 2014, QJRMS 140:1917), which does not
  reward an ensemble of S members for being narrower than the law it samples. As a function of
  s it is sum_k sum_i |d_ki| / S * |s - r_k / d_ki| - s A (d: deviations from the median,
  r = truth - median, A the pair terms), convex and piecewise linear, so its minimiser is
  exactly a weighted quantile of the r_k / d_ki (`crps_factor`).
- ``crps`` (default): that minimiser within the factors at which the central 80% interval
  covers `COVERAGE_BAND` (78-82%) of the validation truths (`banded_crps_factor`; convexity
  makes the clamp exact): the CRPS-best spread among the calibrated ones.
- ``coverage``: the s at which the central `mass` interval of the rescaled paths covers
  exactly that share of the truths (`coverage_factor`).

The per-lead estimates are then smoothed (`smooth`: local-linear in log s over a window of
`SMOOTH_FRACTION` of the fitted leads), held inside each lead's coverage band again (``crps``),
and held at their last value past the fitted horizon. Factors are applied in float64.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sciformer.errors import InputError
from sciformer.evaluation.calibration import sorted_quantile

CALIBRATION_FILE = "calibration.json"
METHODS = ("crps", "coverage", "crps-free")
COVERAGE_BAND = (0.78, 0.82)  # `crps`: coverage of the 80% interval the fit must keep
FACTOR_RANGE = (0.1, 10.0)  # factors are clipped to this range (a guard against few samples)
SMOOTH_FRACTION = 0.1  # moving-average window, as a share of the fitted leads (odd, >= 1)


# ---- applying ---------------------------------------------------------------------------------
@dataclass
class SpreadCalibration:
    """Per-lead spread factors `factors` (H_fit,) and what they were fitted on (`fitted`)."""

    factors: np.ndarray
    fitted: dict[str, Any] = field(default_factory=dict)

    def at(self, horizon: int) -> np.ndarray:
        """Factors of leads 1..horizon (horizon,): the fitted ones, the last held beyond."""
        f = np.asarray(self.factors, dtype=np.float64)
        return f[np.minimum(np.arange(horizon), len(f) - 1)]

    def apply(self, paths: np.ndarray) -> np.ndarray:
        """Recalibrated copy of sample paths (S, B, H, F): median + s(lead) * deviation, in
        float64 (rounding the result to float32 would undo factors near 1 wherever the
        deviations are a few float32 spacings, as for an accurate model of float32 data)."""
        out = np.array(paths, dtype=np.float64)  # a copy; updated in place (memory of one)
        med = np.median(out, axis=0, keepdims=True)
        out -= med
        out *= self.at(out.shape[2])[None, None, :, None]
        out += med
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"method": "spread", "factors": [float(v) for v in self.factors],
                "fitted": self.fitted}

    def save(self, run_dir: str | Path) -> Path:
        """Write ``calibration.json`` into `run_dir` (atomically)."""
        from sciformer.io.atomic import write_json_atomic

        path = Path(run_dir) / CALIBRATION_FILE
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def from_dict(cls, raw: Any, source: str) -> SpreadCalibration:
        """Parse the dict of ``calibration.json``; InputError naming `source` if malformed."""
        factors = raw.get("factors") if isinstance(raw, dict) else None
        ok = (isinstance(factors, list) and factors
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in factors))
        f = np.asarray(factors if ok else [], dtype=np.float64)
        if not ok or not np.all(np.isfinite(f)) or np.any(f <= 0):
            raise InputError(f"{source}: 'factors' must be a non-empty list of positive "
                             "numbers (delete the file to use the paths as sampled)")
        if raw.get("method", "spread") != "spread":
            raise InputError(f"{source}: unknown method {raw.get('method')!r} (expected "
                             "'spread')")
        return cls(f, dict(raw.get("fitted") or {}))

    @classmethod
    def load(cls, run_dir: str | Path) -> SpreadCalibration | None:
        """The run's calibration, or None when it has no ``calibration.json``."""
        path = Path(run_dir) / CALIBRATION_FILE
        if not path.exists():
            return None
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: unreadable ({exc})") from None
        return cls.from_dict(raw, str(path))


# ---- fitting ----------------------------------------------------------------------------------
def _lead(paths: np.ndarray, truth: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Deviations from the median at lead `h`: of the paths (S, n * F) and the truth (n * F,)."""
    p = np.asarray(paths[:, :, h], dtype=np.float64).reshape(paths.shape[0], -1)
    med = np.median(p, axis=0)
    return p - med, np.asarray(truth[:, h], dtype=np.float64).ravel() - med


def crps_factor(dev: np.ndarray, resid: np.ndarray) -> float:
    """The s > 0 minimising the summed fair CRPS of median + s * dev against the truths.

    `dev` (S, N): deviations of S paths at N points; `resid` (N,): truth - median. Exact: the
    minimiser of sum w |s - t| - s A is the weighted quantile of t at (W + A) / (2 W).
    """
    m = dev.shape[0]
    if m < 2:
        return 1.0
    srt = np.sort(dev, axis=0)
    ranks = 2.0 * np.arange(m) - m + 1.0
    pair = float((ranks[:, None] * srt).sum()) / (m * (m - 1))  # A: sum_k E|d-d'| / 2
    nz = dev != 0
    w = np.abs(dev[nz]) / m
    t = (np.broadcast_to(resid, dev.shape)[nz]) / dev[nz]
    total = w.sum()
    if total <= 0 or not math.isfinite(total):
        return 1.0
    order = np.argsort(t)
    cum = np.cumsum(w[order])
    k = int(np.searchsorted(cum, min(total, 0.5 * (total + pair))))
    return float(np.clip(t[order][min(k, len(t) - 1)], *FACTOR_RANGE))


def coverage_needs(dev: np.ndarray, resid: np.ndarray, mass: float = 0.8) -> np.ndarray:
    """Per truth, the smallest s that puts it inside the central `mass` interval of
    median + s * dev: r / hi (r > 0) or r / lo (r < 0), hi / lo the interval's ends of the
    deviations (inf where that end has the wrong sign: no s does). The share of truths
    covered at s is the share of needs <= s."""
    sd = np.sort(dev, axis=0)  # ends at which coverage is reported (`coverage_from_pit`)
    lo, hi = (sorted_quantile(sd, a, rule="pit") for a in ((1 - mass) / 2, (1 + mass) / 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.where(resid > 0, resid / hi, np.where(resid < 0, resid / lo, 0.0))
    return np.where(np.isnan(need) | (need < 0), np.inf, need)


def coverage_factor(dev: np.ndarray, resid: np.ndarray, mass: float = 0.8) -> float:
    """The s at which the central `mass` interval of median + s * dev holds `mass` of the
    truths: the `mass` quantile of the `coverage_needs`."""
    return float(np.clip(np.quantile(coverage_needs(dev, resid, mass), mass), *FACTOR_RANGE))


def band_limits(dev: np.ndarray, resid: np.ndarray,
                band: tuple[float, float] = COVERAGE_BAND) -> tuple[float, float]:
    """The range of factors at which the central 80% interval of median + s * dev covers
    between band[0] and band[1] of the truths ((0, inf) when no factor covers band[0]).
    Order statistics of the `coverage_needs`, not interpolations: needs can be inf (no factor
    covers that truth), and tied needs (errors at the data's float32 spacing) make an atom at
    which the coverage jumps, so lo = hi there."""
    need = coverage_needs(dev, resid, 0.8)
    lo, hi = (float(np.quantile(need, q, method="inverted_cdf")) for q in band)
    return (lo, hi) if math.isfinite(lo) else (0.0, math.inf)


def banded_crps_factor(dev: np.ndarray, resid: np.ndarray,
                       band: tuple[float, float] = COVERAGE_BAND) -> float:
    """`crps_factor` held to the factors at which the central 80% interval covers between
    band[0] and band[1] of the truths (`band_limits`). The fair CRPS is convex in s and the
    coverage rises with s, so this clamp is the CRPS-optimal s under that constraint: where
    the paths' shape differs from the truth's law (e.g. many tiny errors and a few large ones)
    the unconstrained optimum can leave the 80% interval covering 60% or 97%."""
    return _held(crps_factor(dev, resid), band_limits(dev, resid, band))


def _held(factor: float, limits: tuple[float, float]) -> float:
    """`factor` clipped to `limits`, then to FACTOR_RANGE."""
    return float(np.clip(np.clip(factor, *limits), *FACTOR_RANGE))


def _lead_fits(paths: np.ndarray, truth: np.ndarray, method: str) -> np.ndarray:
    """Per lead (H, 3): the unsmoothed factor and the range it must stay in (`band_limits`
    for ``crps``, else (0, inf)); one pass over the leads, each read once in float64."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    free = {"crps-free": crps_factor, "coverage": coverage_factor}
    out = np.empty((paths.shape[2], 3))
    for h in range(paths.shape[2]):
        dev, resid = _lead(paths, truth, h)
        if method == "crps":
            lims = band_limits(dev, resid)
            out[h] = _held(crps_factor(dev, resid), lims), *lims
        else:
            out[h] = free[method](dev, resid), 0.0, math.inf
    return out


def per_lead_factors(paths: np.ndarray, truth: np.ndarray, method: str = "crps") -> np.ndarray:
    """Unsmoothed factor per lead (H,) of paths (S, n, H, F) against truth (n, H, F), pooled
    over windows and features (one lead at a time: memory of one lead in float64)."""
    return _lead_fits(paths, truth, method)[:, 0]


def smooth(factors: np.ndarray, fraction: float = SMOOTH_FRACTION, first: int = 0
           ) -> np.ndarray:
    """Local-linear smoothing of log factors: at each lead, the value at that lead of the
    least-squares line through the leads within half a window (`fraction` of all leads) on
    either side, the window cut at the ends. Inside, this is the centred moving average; at
    the ends it follows the trend instead of flattening it.

    With `first` > 0 the first `first` leads and the rest are smoothed apart (each with its
    own window): a run's first patch is forecast from observed states and corrected
    (`pipelines.first_patch`), so its spread need not continue into the later leads'."""
    if 0 < first < len(factors):
        return np.concatenate([smooth(factors[:first], fraction),
                               smooth(factors[first:], fraction)])
    n = len(factors)
    half = max(0, int(round(fraction * n)) // 2)
    logs = np.log(np.asarray(factors, dtype=np.float64))
    out = np.empty(n)
    for i in range(n):
        lo, hi = max(0, i - half), min(n, i + half + 1)
        x, y = np.arange(lo, hi) - i, logs[lo:hi]
        if len(x) < 3:
            out[i] = y.mean() if len(x) > 1 else logs[i]
            continue
        slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
        out[i] = y.mean() - slope * x.mean()  # the line at x = 0 (lead i)
    return np.exp(out)


def fit_factors(paths: np.ndarray, truth: np.ndarray, method: str = "crps",
                fraction: float = SMOOTH_FRACTION, first: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """Raw and smoothed per-lead spread factors (H,) fitted on paths (S, n, H, F) and truth
    (n, H, F); `first` as for `smooth`. With method ``crps`` each smoothed factor is then held
    inside its lead's `band_limits`: smoothing is for noise, and must not move a lead out of
    the coverage band it was fitted to hold (near an atom of tied errors a 2% change of the
    factor moved the 80% coverage from 0.85 to 0.94)."""
    fits = _lead_fits(paths, truth, method)
    raw = fits[:, 0]
    factors = smooth(raw, fraction, first)
    if method == "crps":
        factors = np.clip(np.clip(factors, fits[:, 1], fits[:, 2]), *FACTOR_RANGE)
    return raw, factors
