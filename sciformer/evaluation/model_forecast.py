"""The model's side of forecast evaluation: its closed-loop forecast of a batch of windows
(`model_forecasts`, as a `ModelForecast` of sample paths and their empirical median and
quantiles) and the windows per forward pass (`model_batch`, `capped_batch`).

`sciformer.evaluation.forecast` streams these forecasts through the scores beside the
baselines'.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sciformer.config import RunConfig
from sciformer.evaluation.calibration import empirical_quantiles
from sciformer.pipelines.forecast import Forecaster

MIN_MODEL_BATCH = 64  # windows per model forward pass: max(train.batch_size, this)
#: Bytes of sample paths, quantiles and median (float64) one model batch may hold: caps the
#: windows per forward pass for large fields (S x batch x H x F values each).
EVAL_BATCH_BYTES = 2**28


@dataclass
class ModelForecast:
    """The model's forecast of N windows: median (N, H, F), quantiles (n_q, N, H, F) at
    ascending levels, and sample paths (S, N, H, F) when the model produces them (then the
    median and quantiles are the paths' empirical ones: `from_samples`)."""

    median: np.ndarray
    quantiles: np.ndarray
    samples: np.ndarray | None = None

    @classmethod
    def from_samples(cls, samples: np.ndarray, levels: list[float]) -> ModelForecast:
        """Median and quantiles at ascending `levels` as empirical quantiles of the paths."""
        s = np.asarray(samples, dtype=np.float64)
        return cls(empirical_quantiles(s, [0.5])[0], empirical_quantiles(s, levels), s)

    def rows(self, k: list[int]) -> ModelForecast:
        """The forecast of windows `k` only (for the plots)."""
        return ModelForecast(self.median[k], self.quantiles[:, k],
                             None if self.samples is None else self.samples[:, k])

    @staticmethod
    def concat(parts: list[ModelForecast]) -> ModelForecast:
        """The forecasts of several sets of windows, in order."""
        paths = [p.samples for p in parts]
        return ModelForecast(np.concatenate([p.median for p in parts]),
                             np.concatenate([p.quantiles for p in parts], axis=1),
                             None if paths[0] is None else np.concatenate(paths, axis=1))


def model_forecasts(fc: Forecaster, contexts: np.ndarray, horizon: int, samples: int,
                    first: int = 0, batch: int | None = None
                    ) -> tuple[ModelForecast, ModelForecast | None]:
    """The model's forecast of `contexts` (N, C, F): `samples` sample paths per context, whose
    empirical median and quantiles are reported, and, when the run recalibrates its paths
    (`fc.calibration`), the forecast of the same draws before recalibration (else None).
    `first` is the index of contexts[0] among all windows (it seeds the draws, so a window's
    paths do not depend on how windows are blocked).
    """
    raw = fc.sample(contexts, horizon, samples, seed=first, batch=batch or model_batch(fc.cfg),
                    calibrated=False)
    if fc.calibration is None:
        return ModelForecast.from_samples(raw, fc.levels), None
    return (ModelForecast.from_samples(fc.calibration.apply(raw), fc.levels),
            ModelForecast.from_samples(raw, fc.levels))


def model_batch(cfg: RunConfig) -> int:
    """Windows per forward pass of the model during evaluation."""
    return max(cfg.train.batch_size, MIN_MODEL_BATCH)


def capped_batch(cfg: RunConfig, values_per_window: int) -> int:
    """`model_batch`, fewer when a window's sample paths (`values_per_window` = samples x
    horizon x F) would make one batch's paths, quantiles and median exceed
    EVAL_BATCH_BYTES (large fields)."""
    return min(model_batch(cfg), max(1, EVAL_BATCH_BYTES // (8 * 3 * values_per_window)))
