"""Largest Lyapunov exponent of a flow by the two-trajectory method of Benettin et al.

Benettin, Galgani, Giorgilli & Strelcyn (1980), Meccanica 15, 9: integrate a reference
trajectory x and a companion x + delta with |delta| = d0 tiny; every renormalisation interval
tau, add log(|delta| / d0) to a running sum and rescale delta back to length d0 along its own
direction. The sum divided by the elapsed time converges to lambda_max, because delta aligns
with the most expanding direction. In double precision d0 = 1e-8 of the state's size keeps
delta in the linear regime over an interval while staying far above rounding (~1e-16).

`remove_flow=True` also removes delta's component along the vector field f(x) at each
renormalisation. The tangent flow maps the line through f(x) onto itself (a shift along the
orbit), so it induces a flow on the quotient by that line whose exponents are the ones of the
full flow minus the zero exponent of the flow direction (the idea behind Poincaré-map
exponents). The largest of them is lambda_max for a chaotic flow, while for a limit cycle it is
the transverse Floquet exponent, which is negative: finite-time estimates of a periodic orbit no
longer hover around 0 with an O(1/T) bias that can look positive, so a positive threshold
separates chaos from periodic motion at shorter integration times.

Reference and companions of a batch of n trajectories are integrated as one (2n, d) array, so a
step costs a handful of numpy operations whatever n is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sciformer.simulate.odes import rk4_step

Rhs = Callable[[np.ndarray], np.ndarray]
_D0_REL = 1e-8  # companion offset relative to the state's size
_TINY = 1e-300


@dataclass
class LyapunovEstimate:
    """Per-trajectory estimates of lambda_max (1 / time unit) and their mean and its error."""

    per_trajectory: np.ndarray  # (n_traj,)
    elapsed: float  # time over which log-growth was accumulated

    @property
    def mean(self) -> float:
        """Mean over trajectories."""
        return float(np.mean(self.per_trajectory))

    @property
    def sem(self) -> float:
        """Standard error of the mean (0 for a single trajectory)."""
        n = len(self.per_trajectory)
        return float(np.std(self.per_trajectory, ddof=1) / np.sqrt(n)) if n > 1 else 0.0


class PairedIntegrator:
    """A batch of reference trajectories, each with a companion at distance d0 (Benettin).

    `advance` takes RK4 steps of both; `renormalise` measures each companion's log-growth since
    the last call and pulls it back to distance d0. `states` are the reference states (n, d).
    """

    def __init__(self, rhs: Rhs, x0: np.ndarray, rng: np.random.Generator,
                 remove_flow: bool = False, d0_rel: float = _D0_REL) -> None:
        x0 = np.asarray(x0, dtype=np.float64)
        self.rhs, self.n, self.remove_flow = rhs, len(x0), remove_flow
        self.d0 = d0_rel * np.maximum(np.linalg.norm(x0, axis=-1), 1.0)  # (n,)
        self.rng = rng
        self.z = np.concatenate([x0, x0 + self._directions(x0.shape)], axis=0)  # (2n, d)

    def _directions(self, shape: tuple[int, ...]) -> np.ndarray:
        """Random offsets of length d0, one per trajectory."""
        u = self.rng.normal(size=shape)
        return u * (self.d0 / np.linalg.norm(u, axis=-1))[:, None]

    @property
    def states(self) -> np.ndarray:
        """Reference states (n, d)."""
        return self.z[:self.n]

    def advance(self, h: float, n_steps: int) -> None:
        """n_steps RK4 steps of size h for references and companions together."""
        for _ in range(n_steps):
            self.z = rk4_step(self.rhs, self.z, h)

    def renormalise(self) -> np.ndarray:
        """log(|delta| / d0) per trajectory (n,) since the last call; delta reset to d0."""
        x = self.z[:self.n]
        delta = self.z[self.n:] - x  # (n, d)
        if self.remove_flow:
            f = self.rhs(x)
            ff = np.einsum("nd,nd->n", f, f)
            coef = np.where(ff > _TINY, np.einsum("nd,nd->n", delta, f) / np.maximum(ff, _TINY),
                            0.0)
            delta = delta - coef[:, None] * f
        norm = np.linalg.norm(delta, axis=-1)
        collapsed = norm < self.d0 * 1e-12  # lost to rounding: restart along a random direction
        growth = np.log(np.maximum(norm, self.d0 * 1e-12) / self.d0)
        delta = delta * (self.d0 / np.maximum(norm, _TINY))[:, None]
        if collapsed.any():
            delta[collapsed] = self._directions(delta.shape)[collapsed]
        self.z[self.n:] = x + delta
        return growth


def largest_lyapunov(rhs: Rhs, x0: np.ndarray, h: float, n_intervals: int,
                     steps_per_interval: int = 1, n_transient: int = 0,
                     remove_flow: bool = False, seed: int = 0) -> LyapunovEstimate:
    """Estimate lambda_max from each initial state in x0 (n, d).

    Integrates with RK4 steps of size h; renormalises every `steps_per_interval` steps (tau =
    h * steps_per_interval); the first `n_transient` intervals only align the companions (and
    let the reference reach the attractor), the next `n_intervals` are accumulated.
    """
    pair = PairedIntegrator(rhs, x0, np.random.default_rng(seed), remove_flow)
    for _ in range(n_transient):
        pair.advance(h, steps_per_interval)
        pair.renormalise()
    total = np.zeros(pair.n)
    for _ in range(n_intervals):
        pair.advance(h, steps_per_interval)
        total += pair.renormalise()
    elapsed = n_intervals * steps_per_interval * h
    return LyapunovEstimate(total / elapsed, elapsed)
