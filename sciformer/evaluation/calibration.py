"""Probabilistic scores of a forecast ensemble: CRPS, central-interval coverage and PIT.

Shapes follow `sciformer.evaluation.metrics`: truth `(n, H, F)`, sample paths `(S, n, H, F)`,
quantile forecasts `(n_levels, n, H, F)` with ascending levels. Each helper returns SUMS over
windows and features per lead time `(H,)` (or histogram counts), so the streaming
`ForecastScore` adds blocks first and divides once.

- CRPS of an ensemble (Gneiting & Raftery 2007, JASA 102:359, eq. 21), exact for the
  empirical distribution of the S paths: E|X - y| - 0.5 E|X - X'|, the pair term from the
  sorted samples in O(S log S). A point forecast is a one-member ensemble: its CRPS is the MAE.
- Coverage of the central interval of mass m. For sample paths: the share of truths whose
  randomised PIT (below) lies in [(1-m)/2, (1+m)/2]. Under calibration the PIT is exactly
  uniform, so the expected coverage is exactly m for any number of paths and also when paths
  and truths tie -- which they do when forecasts are as precise as the stored data (Lorenz-63
  errors at the float32 spacing of the states: at lead 1 over half the truths equal the
  ensemble median, and counting every tie as inside reported 0.95 for a calibrated
  ensemble). Interpolated interval ends would expect 0.792 with 199 paths and count ties as
  inside. For quantile forecasts: the truth lies in [q((1-m)/2), q((1+m)/2)] of the matching
  predicted levels.
- PIT (probability integral transform; Dawid 1984, Gneiting et al. 2007 JRSS-B 69:243): the
  rank of the truth among the S samples, randomised over ties and within the rank so that a
  calibrated ensemble gives exactly uniform values: (r + U (e + 1)) / (S + 1), r = #{x < y},
  e = #{x = y}, U ~ U(0, 1). A point forecast that is exactly right (all samples = truth)
  therefore scores a uniform PIT rather than a spike.
"""

from __future__ import annotations

import numpy as np

#: Central-interval masses whose coverage is reported, by metrics.json key.
COVERAGE_MASSES: dict[str, float] = {"coverage_50": 0.5, "coverage_80": 0.8}
#: Number of equal-width PIT histogram bins on [0, 1].
PIT_BINS = 10


def check_samples(samples: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Samples as float64 `(S, n, H, F)` matching truth `(n, H, F)`, else ValueError."""
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim != 4 or s.shape[1:] != truth.shape or s.shape[0] < 1:
        raise ValueError(f"samples must be (n_samples, *truth.shape) with truth (n_traj, H, F); "
                         f"got samples {s.shape} and truth {truth.shape}")
    return s


def crps_sorted_sum(sorted_samples: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """sum_{n,F} ensemble CRPS per lead `(H,)` from samples sorted along axis 0.

    sum_{i,j} |x_i - x_j| = 2 sum_i (2i - S + 1) x_(i) for 0-based ranks i, so
    0.5 E|X - X'| = sum_i (2i - S + 1) x_(i) / S^2. Loops over samples so no second
    `(S, n, H, F)` temporary is made.
    """
    m = sorted_samples.shape[0]
    abs_err, half_spread = np.zeros_like(truth), np.zeros_like(truth)  # (n, H, F)
    for i, x in enumerate(sorted_samples):
        abs_err += np.abs(x - truth)
        half_spread += (2.0 * i - m + 1.0) * x
    return (abs_err / m - half_spread / m**2).sum(axis=(0, 2))


def crps_point_sum(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """sum_{n,F} |pred - truth| per lead: the CRPS of a point forecast (a one-member ensemble)."""
    return np.abs(pred - truth).sum(axis=(0, 2))


def crps_quantiles_sum(quantiles: np.ndarray, levels: np.ndarray,
                       truth: np.ndarray) -> np.ndarray:
    """sum_{n,F} of the quantile-score approximation of CRPS per lead, `(H,)`.

    CRPS = 2 * integral_0^1 pinball_a(y, q_a) da (Gneiting & Raftery 2007, eq. 24; Laio &
    Tamea 2007), approximated by 2 * the mean pinball loss over the given levels. Biased with
    few levels; the sample-path CRPS is preferred whenever paths exist.
    """
    q = np.asarray(quantiles, dtype=np.float64)
    a = np.asarray(levels, dtype=np.float64)
    if q.ndim != 4 or q.shape[1:] != truth.shape or a.shape != (q.shape[0],):
        raise ValueError(f"quantiles must be (n_levels, *truth.shape) with one level each; got "
                         f"quantiles {q.shape}, levels {a.shape}, truth {truth.shape}")
    check_levels(a)
    total = np.zeros(truth.shape[1])
    for level, qk in zip(a, q):  # one level at a time: memory O(n H F), not O(K n H F)
        diff = truth - qk
        total += np.maximum(level * diff, (level - 1.0) * diff).sum(axis=(0, 2))
    return 2.0 * total / len(a)


def check_levels(levels: np.ndarray) -> None:
    """ValueError unless quantile levels are strictly ascending inside (0, 1)."""
    if np.any(levels <= 0) or np.any(levels >= 1) or np.any(np.diff(levels) <= 0):
        raise ValueError(f"quantile levels must be strictly ascending in (0, 1), got "
                         f"{levels.tolist()}")


def sorted_quantile(sorted_samples: np.ndarray, level: float, rule: str = "linear"
                    ) -> np.ndarray:
    """Empirical quantile at `level` of samples sorted along axis 0, shape
    `sorted_samples.shape[1:]`: numpy's 'linear' rule (0-based position level * (S - 1)
    between order statistics) or "pit": position level * (S + 1) - 1 (Weibull's, clipped to
    the samples), the interval end at which a truth's randomised PIT (`randomised_pit`)
    crosses `level` on average -- so the share of truths inside [pit-rule ends] is the
    expected coverage `coverage_from_pit` reports (the linear rule's ends hold 0.792 of
    calibrated truths with 199 paths, 0.75 with 32)."""
    m = sorted_samples.shape[0]
    pos = level * (m - 1) if rule == "linear" else min(max(level * (m + 1) - 1, 0.0), m - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, m - 1)
    frac = pos - lo
    return sorted_samples[lo] + frac * (sorted_samples[hi] - sorted_samples[lo])


def empirical_quantiles(samples: np.ndarray, levels: list[float] | np.ndarray) -> np.ndarray:
    """`(n_levels, *samples.shape[1:])`: empirical quantiles of the paths at `levels`."""
    s = np.sort(np.asarray(samples, dtype=np.float64), axis=0)
    return np.stack([sorted_quantile(s, float(a)) for a in levels])


def inside_sum(lo: np.ndarray, hi: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """sum_{n,F} of 1[lo <= truth <= hi] per lead `(H,)` (NaN bounds count as outside)."""
    return ((truth >= lo) & (truth <= hi)).sum(axis=(0, 2)).astype(np.float64)


def coverage_from_pit(pit: np.ndarray) -> dict[str, np.ndarray]:
    """Per-lead counts `(H,)` of randomised PIT values `(n, H, F)` inside each central
    interval of `COVERAGE_MASSES` (truths inside the central interval of the paths)."""
    return {key: ((pit >= (1 - mass) / 2) & (pit <= (1 + mass) / 2)).sum(axis=(0, 2))
            .astype(np.float64) for key, mass in COVERAGE_MASSES.items()}


def coverage_from_quantiles(quantiles: np.ndarray, levels: np.ndarray,
                            truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-lead inside-counts for the central intervals whose two levels were predicted."""
    out = {}
    for key, mass in COVERAGE_MASSES.items():
        idx = [np.flatnonzero(np.isclose(levels, a, atol=1e-9)) for a in
               ((1 - mass) / 2, (1 + mass) / 2)]
        if all(len(i) for i in idx):
            out[key] = inside_sum(quantiles[idx[0][0]], quantiles[idx[1][0]], truth)
    return out


def randomised_pit(samples: np.ndarray, truth: np.ndarray, rng: np.random.Generator
                   ) -> np.ndarray:
    """The randomised PIT `(n, H, F)` of every truth among the paths `(S, n, H, F)`.

    PIT = (r + U (e + 1)) / (S + 1) with r samples below the truth and e equal to it: under
    calibration the truth is one of S + 1 exchangeable draws, so its rank is uniform on
    0..S and the randomised value exactly uniform on [0, 1]. A non-finite sample never
    counts as below or equal, so a diverged path pushes the PIT down, not to NaN.
    """
    m = samples.shape[0]
    below = (samples < truth).sum(axis=0)  # (n, H, F)
    equal = (samples == truth).sum(axis=0)
    return (below + rng.random(truth.shape) * (equal + 1)) / (m + 1)


def pit_counts(pit: np.ndarray, bins: int = PIT_BINS) -> np.ndarray:
    """Histogram counts `(bins,)` of randomised PIT values (`randomised_pit`)."""
    counts, _ = np.histogram(pit, bins=bins, range=(0.0, 1.0))
    return counts.astype(np.float64)
