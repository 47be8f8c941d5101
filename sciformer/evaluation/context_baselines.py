"""Baselines that see only the context: the fair comparison for a zero-shot forecast.

A model evaluated on a system it never trained on must not be compared with baselines fitted
on that system's training trajectories (they would know more than the model). Each baseline
here is fitted on each window's CONTEXT alone, then rolls out closed-loop:

- `persistence`: the last context state repeated.
- `mean_ctx`: the mean of the context, per channel.
- `parroting_ctx`: context parroting (Zhang & Gilpin, ICLR 2026; `chaos_baselines.parrot`),
  with the motif length and the smallest shift (a Theiler window) chosen per window by
  back-testing inside the context: forecast the context's last `h'` steps from the steps
  before them, h' = min(horizon, C // 4).
- `analog_ctx`: the method of analogues on the context (`sciformer.model.analog`): the mean
  continuation of the context's closest analogues of its present, standardised, state -- the
  anchor of a zoo model with `data.anchor: analog`, scored alone.
- `ridge_ctx`: ridge autoregression (`baselines.RidgeAR`) fitted on the context's lagged rows.
- `nvar_ctx`: next-generation reservoir computing (Gauthier et al., Nat. Commun. 2021;
  `chaos_baselines.NVAR`) fitted on the context, delays and ridge strength chosen on its tail.

All share `predict(contexts (N, C, F), horizon) -> (N, horizon, F)` and `describe()`, so the
evaluation scores them exactly as it scores the training-fitted baselines.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sciformer.evaluation.baselines import RidgeAR
from sciformer.evaluation.chaos_baselines import NVAR, parrot
from sciformer.model.analog import AnalogAnchor

MOTIF_LENGTHS = (1, 2, 3, 5, 8, 13, 21)
MIN_SHIFTS = (1, 2, 4, 8, 16, 32)


def _as_contexts(contexts: np.ndarray, horizon: int) -> np.ndarray:
    """Contexts as float64 (N, C, F); a bad horizon or shape raises ValueError."""
    c = np.asarray(contexts, dtype=np.float64)
    if c.ndim != 3 or c.shape[1] < 2:
        raise ValueError(f"contexts must be (N, C >= 2, F), got {c.shape}")
    if horizon < 1:
        raise ValueError(f"forecast horizon must be >= 1, got {horizon}")
    return c


class PersistenceCtx:
    """The last context state, repeated."""

    def predict(self, contexts: np.ndarray, horizon: int) -> np.ndarray:
        c = _as_contexts(contexts, horizon)
        return np.repeat(c[:, -1:], horizon, axis=1)

    def describe(self) -> dict[str, Any]:
        return {"fit": "none (last context state)"}


class MeanCtx:
    """The context's mean per channel, for every future step."""

    def predict(self, contexts: np.ndarray, horizon: int) -> np.ndarray:
        c = _as_contexts(contexts, horizon)
        return np.repeat(c.mean(axis=1, keepdims=True), horizon, axis=1)

    def describe(self) -> dict[str, Any]:
        return {"fit": "context only (its mean)"}


class ParrotingCtx:
    """Context parroting with (motif length, smallest shift) chosen per window in-context."""

    def __init__(self, motif_lengths=MOTIF_LENGTHS, min_shifts=MIN_SHIFTS) -> None:
        self.motif_lengths, self.min_shifts = tuple(motif_lengths), tuple(min_shifts)
        self.chosen: dict[str, int] = {}

    def _choose(self, c: np.ndarray, horizon: int) -> tuple[list[tuple[int, int]], np.ndarray]:
        """The (m, w) grid and the index of the best pair per window (N,), by the
        back-test error on the context's tail."""
        n, length, _ = c.shape
        h = max(1, min(horizon, length // 4))
        past, tail = c[:, :-h], c[:, -h:]
        grid = [(m, w) for m in self.motif_lengths for w in self.min_shifts
                if m + w <= past.shape[1]] or [(1, 1)]
        sd = c.std(axis=1, keepdims=True) + 1e-12  # (N, 1, F): channels weigh the same
        err = np.stack([(((parrot(past, m, h, w) - tail) / sd) ** 2).mean(axis=(1, 2))
                        for m, w in grid], axis=1)  # (N, n_grid)
        return grid, err.argmin(axis=1)

    def predict(self, contexts: np.ndarray, horizon: int) -> np.ndarray:
        c = _as_contexts(contexts, horizon)
        grid, best = self._choose(c, horizon)
        out = np.empty((len(c), horizon, c.shape[2]))
        for g in np.unique(best):
            rows = np.flatnonzero(best == g)
            m, w = grid[g]  # m + w <= C - h' fits the whole context too
            out[rows] = parrot(c[rows], m, horizon, w)
            key = f"m={grid[g][0]},shift={grid[g][1]}"
            self.chosen[key] = self.chosen.get(key, 0) + len(rows)
        return out

    def describe(self) -> dict[str, Any]:
        return {"fit": "context only (motif and shift chosen per window by back-testing "
                       "the context's tail)", "chosen": dict(sorted(self.chosen.items()))}


class AnalogCtx:
    """The analogue forecast of `sciformer.model.analog` with its default settings."""

    def predict(self, contexts: np.ndarray, horizon: int) -> np.ndarray:
        c = _as_contexts(contexts, horizon)
        return AnalogAnchor().forecast(torch.from_numpy(c), horizon).numpy()

    def describe(self) -> dict[str, Any]:
        return {**AnalogAnchor().describe(), "fit": "context only (its own analogues)"}


#: The context-only NVAR's grid: delays 1-3 and decade ridges, not NVAR's finer default.
#: It is refitted on every window: on a 64-point field (KS, contexts of 256 steps) the default
#: grid took 7.5 s of CPU a window, this one 3.3 s (1.5 s before NVAR's long-run check).
CONTEXT_NVAR_DELAYS, CONTEXT_NVAR_ALPHAS = (1, 2, 3), tuple(np.logspace(-8, 2, 6))


class PerWindow:
    """A training-fitted baseline (`RidgeAR`, `NVAR`) refitted on each window's context."""

    def __init__(self, make, what: str) -> None:
        self.make, self.what, self.n_failed, self.fits = make, what, 0, []

    def predict(self, contexts: np.ndarray, horizon: int) -> np.ndarray:
        c = _as_contexts(contexts, horizon)
        out = np.empty((len(c), horizon, c.shape[2]))
        for i, ctx in enumerate(c):
            try:
                model = self.make(horizon).fit([ctx])
                out[i] = model.predict(ctx[None], horizon)[0]
                if len(self.fits) < 8:
                    self.fits.append(model.describe() if hasattr(model, "describe")
                                     else {"alpha": getattr(model, "alpha_", None)})
            except (ValueError, np.linalg.LinAlgError):  # too short or singular: persistence
                self.n_failed += 1
                out[i] = ctx[-1]
        return out

    def describe(self) -> dict[str, Any]:
        return {"fit": f"context only ({self.what} refitted on each window's context)",
                "failed_fits_used_persistence": self.n_failed, "first_fits": self.fits}


def context_baselines() -> dict[str, Any]:
    """Every context-only baseline by its metrics.json name."""
    return {"persistence": PersistenceCtx(), "mean_ctx": MeanCtx(),
            "parroting_ctx": ParrotingCtx(), "analog_ctx": AnalogCtx(),
            "ridge_ctx": PerWindow(lambda h: RidgeAR(), "ridge AR, lags 4"),
            "nvar_ctx": PerWindow(lambda h: NVAR(horizon=h, delays=CONTEXT_NVAR_DELAYS,
                                                 alphas=CONTEXT_NVAR_ALPHAS), "NVAR")}
