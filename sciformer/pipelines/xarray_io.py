"""xarray in and out of `Forecaster.forecast`: contexts as labelled arrays, forecasts as a
Dataset with `quantile` and `sample` dimensions and a time axis continuing the context's.

Dimension names follow the trajectory files `sciformer simulate` writes: (trajectory, time,
field) for ODE states, (trajectory, time, x, field) for 1-D fields, one spatial name per axis
(x, y, z) for higher ranks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from sciformer.errors import InputError
from sciformer.runs import ForecastState

SPACE = ("x", "y", "z")


def state_dims(state_shape: tuple[int, ...]) -> list[str]:
    """Names of the state's dimensions: spatial axes, then `field`."""
    return [*SPACE[: len(state_shape) - 1], "field"]


def as_context_array(context: Any, state_shape: tuple[int, ...], state: ForecastState
                     ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(values (B, T, *state_shape) float32, times (T,), state dimension names)."""
    if isinstance(context, xr.DataArray):
        return _from_dataarray(context, state_shape, state)
    values = np.asarray(context)
    if values.ndim == len(state_shape) + 1:
        values = values[None]  # one trajectory
    if values.ndim != len(state_shape) + 2 or tuple(values.shape[2:]) != state_shape:
        raise InputError(f"context: shape {values.shape} is not (n_traj, n_time, "
                         f"{', '.join(map(str, state_shape))}) as the model was trained on")
    _check_values(values)
    return values.astype(np.float32), np.arange(values.shape[1]) * state.dt, state_dims(
        state_shape)


def _from_dataarray(da: xr.DataArray, state_shape: tuple[int, ...], state: ForecastState
                    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if "time" not in da.dims:
        raise InputError(f"context: the DataArray has no 'time' dimension (dims: {da.dims})")
    lead = [d for d in da.dims if d != "time"][: da.ndim - len(state_shape) - 1]
    rest = [d for d in da.dims if d != "time" and d not in lead]
    da = da.transpose(*lead, "time", *rest)
    values = da.values.reshape(-1, *da.shape[len(lead):]) if lead else da.values[None]
    if tuple(values.shape[2:]) != state_shape:
        raise InputError(f"context: state dims {rest} have shape {values.shape[2:]}, the model "
                         f"was trained on {state_shape}")
    _check_values(values)
    times = (np.asarray(da["time"].values, dtype=np.float64) if "time" in da.coords
             else np.arange(da.sizes["time"]) * state.dt)
    return values.astype(np.float32), times, list(rest)


def _check_values(values: np.ndarray) -> None:
    if not np.issubdtype(values.dtype, np.number):
        raise InputError(f"context: values must be numbers, got {values.dtype}")
    if not np.isfinite(values).all():
        raise InputError("context: holds NaN or infinite values")
    if np.abs(values).max(initial=0.0) > np.finfo(np.float32).max:
        raise InputError("context: values beyond the float32 range")


def forecast_dataset(median: np.ndarray, quantiles: np.ndarray, samples: np.ndarray | None,
                     levels: list[float], times: np.ndarray, dims: list[str],
                     state_shape: tuple[int, ...], state: ForecastState) -> xr.Dataset:
    """The forecast as a Dataset: median (trajectory, time, *dims), quantiles (quantile, ...),
    samples (sample, ...); flattened arrays are reshaped to the state's shape."""
    b, h = median.shape[:2]
    shape = (b, h, *state_shape)
    dt = float(np.diff(times[-2:])[0]) if len(times) > 1 else state.dt
    coords: dict[str, Any] = {"time": times[-1] + dt * np.arange(1, h + 1),
                              "quantile": np.asarray(levels, dtype=np.float64)}
    if state.field_names and len(state.field_names) == state_shape[-1]:
        coords["field"] = list(state.field_names)
    base = ["trajectory", "time", *dims]
    data = {"median": (base, median.reshape(shape)),
            "quantiles": (["quantile", *base], quantiles.reshape(len(levels), *shape))}
    if samples is not None:
        data["samples"] = (["sample", *base], samples.reshape(len(samples), *shape))
    attrs = {"system": state.system or "", "dt": dt, "forecast_of": "steps after the last "
             "context step", "quantiles_are": "empirical quantiles of the sample paths"}
    if state.lyapunov_time:
        attrs["lyapunov_time"] = state.lyapunov_time
    return xr.Dataset(data, coords=coords, attrs=attrs)
