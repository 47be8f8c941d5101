"""Writing trajectory HDF5 files in the contract, atomically, whole or block by block.

Files are netCDF4 (written with h5netcdf), so they open in plain h5py as the contract's
`states` dataset with root attributes, and in `xarray.open_dataset(..., engine="h5netcdf")`
with named dimensions, coordinates and CF `units`. `TrajectoryWriter` fills a file whose shape
is known up front one block of trajectories at a time, so a producer (e.g. `predict` on 10k
trajectories) never holds the whole output in memory; `write_trajectories` is the one-call form.
Either way the file appears under its name only once it is complete (`atomic_path`).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from typing import Any

import h5netcdf
import h5py
import numpy as np

from sciformer.io.atomic import atomic_path

_CHUNK_BYTES = 2**20  # target size of one stored chunk
_LAYOUTS = ("(n_traj, n_time, n_channels) or (n_traj, n_time, *space, n_fields) with 1-3 "
            "spatial axes")
AXES = ("x", "y", "z")  # names of the spatial dimensions, in storage order


def _state_dims(ndim: int) -> tuple[str, ...]:
    """netCDF dimension names of `states`: (trajectory, time, field) for ODE states,
    (trajectory, time, x[, y[, z]], field) for fields."""
    if 3 <= ndim <= 6:
        return ("trajectory", "time", *AXES[:ndim - 3], "field")
    raise ValueError(f"states must have shape {_LAYOUTS}, got rank {ndim}")


def _time_axis(n_time: int, dt: float | None,
               time: np.ndarray | None) -> tuple[np.ndarray, float | None]:
    """Time values for the `time` coordinate and the dt attribute (None if not uniform)."""
    if time is None:
        if dt is None:
            raise ValueError("write_trajectories needs dt or time")
        return np.arange(n_time) * float(dt), float(dt)
    time = np.asarray(time, dtype=np.float64)
    if time.shape != (n_time,):
        raise ValueError(f"time has shape {time.shape}, expected ({n_time},)")
    if dt is None and n_time > 1 and np.allclose(np.diff(time), time[1] - time[0]):
        dt = float(time[1] - time[0])
    return time, dt


def _chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunks of ~_CHUNK_BYTES: time steps of one trajectory, or several whole trajectories
    when one is smaller than that (thousands of one-trajectory chunks bloat the chunk index)."""
    step_bytes = itemsize * math.prod(shape[2:])
    steps = max(1, min(shape[1], _CHUNK_BYTES // step_bytes))
    trajs = max(1, min(shape[0], _CHUNK_BYTES // (step_bytes * shape[1]))) \
        if steps == shape[1] else 1
    return (trajs, steps, *shape[2:])


def _add_variable(f: h5netcdf.File, key: str, dims: tuple[str, ...], units: str | None = None,
                  **kwargs: Any) -> Any:
    """Create one netCDF variable (with CF `units` when given)."""
    var = f.create_variable(key, dims, **kwargs)
    if units is not None:
        var.attrs["units"] = units
    return var


def _add_strings(f: h5netcdf.File, key: str, values: Sequence[str]) -> None:
    """A string coordinate along dimension `key` (so xarray can select by name)."""
    f.create_variable(key, (key,), dtype=h5py.string_dtype(),
                      data=np.array([str(v) for v in values], dtype=object))


def _check_args(shape: tuple[int, ...], dtype: np.dtype, field_names: list[str] | None,
                params: np.ndarray | None, param_names: list[str] | None,
                coords: dict[str, np.ndarray | None]) -> None:
    """ValueError for arguments that would write a file breaking the contract."""
    if dtype.kind != "f":
        raise ValueError(f"states must be float32 or float64, got {dtype}")
    if field_names is not None and len(field_names) != shape[-1]:
        raise ValueError(f"{len(field_names)} field_names for {shape[-1]} fields")
    if params is not None and (params.ndim != 2 or params.shape[0] != shape[0]):
        raise ValueError(f"params has shape {params.shape}, expected ({shape[0]}, n_params)")
    if param_names is not None and (params is None or len(param_names) != params.shape[1]):
        raise ValueError("param_names needs params with one column per name")
    for i, axis in enumerate(AXES):
        values = coords.get(axis)
        if values is not None and (len(shape) < 4 + i or np.shape(values) != (shape[2 + i],)):
            raise ValueError(f"{axis} has shape {np.shape(values)}, states have shape {shape}")


class TrajectoryWriter:
    """A trajectory file of a known shape, filled block by block; complete or absent.

    Use as a context manager: `with TrajectoryWriter(path, (n, T, F), dt=0.1) as w:
    w.write(block)`; blocks of trajectories are appended in order, and the file is renamed into
    place on exit only if every trajectory was written and no exception was raised (otherwise
    the temp file is deleted and an old file at `path` survives). Keyword arguments are those of
    `write_trajectories`; `quantile_levels` (with `quantile_horizon`, default n_time) adds the
    `quantiles` variable (n_levels, n_traj, horizon, ...), filled through `write(..., quantiles)`.
    """

    def __init__(self, path: str | os.PathLike, shape: Sequence[int], *,
                 dtype: Any = np.float32, dt: float | None = None, time: np.ndarray | None = None,
                 system: str | None = None, lyapunov_time: float | None = None,
                 field_names: list[str] | None = None, params: np.ndarray | None = None,
                 param_names: list[str] | None = None, units: dict[str, str] | None = None,
                 quantile_levels: Sequence[float] | None = None,
                 quantile_horizon: int | None = None, attrs: dict | None = None,
                 x: np.ndarray | None = None, y: np.ndarray | None = None,
                 z: np.ndarray | None = None, n_samples: int | None = None) -> None:
        self.path, self.shape, self.dtype = path, tuple(int(s) for s in shape), np.dtype(dtype)
        self.dims = _state_dims(len(self.shape))
        self.params = None if params is None else np.asarray(params, dtype=np.float64)
        coords = {"x": x, "y": y, "z": z}
        _check_args(self.shape, self.dtype, field_names, self.params, param_names, coords)
        self.time, self.dt = _time_axis(self.shape[1], dt, time)
        self.units = {"time": "1", **dict.fromkeys(AXES, "1"), "states": "1", **(units or {})}
        self.levels = None if quantile_levels is None else np.asarray(quantile_levels, np.float64)
        self.q_horizon = self.shape[1] if quantile_horizon is None else int(quantile_horizon)
        self.n_samples = n_samples
        self.meta = {"system": system, "lyapunov_time": lyapunov_time,
                     "field_names": field_names, "param_names": param_names, "attrs": attrs,
                     "coords": coords}
        self.written = 0
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> TrajectoryWriter:
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(atomic_path(self.path))
            self._f = stack.enter_context(h5netcdf.File(tmp, "w"))
            self._create()
            self._stack = stack.pop_all()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        stack, self._stack = self._stack, None
        if exc_type is None and self.written != self.shape[0]:
            err = ValueError(f"{self.path}: only {self.written} of {self.shape[0]} trajectories "
                             "were written")
            stack.__exit__(ValueError, err, None)
            raise err
        stack.__exit__(exc_type, exc, tb)

    def _create(self) -> None:
        """Dimensions, coordinates, empty chunked variables and root attributes."""
        f, m = self._f, self.meta
        f.dimensions = dict(zip(self.dims, self.shape, strict=True))
        _add_variable(f, "time", ("time",), self.units["time"], data=self.time)
        for axis, values in m["coords"].items():
            if values is not None:
                _add_variable(f, axis, (axis,), self.units[axis],
                              data=np.asarray(values, dtype=np.float64))
        if m["field_names"] is not None:
            _add_strings(f, "field", m["field_names"])
        _add_variable(f, "states", self.dims, self.units["states"], dtype=self.dtype,
                      chunks=_chunks(self.shape, self.dtype.itemsize))
        if self.params is not None:
            self._add_params()
        if self.levels is not None:
            self._add_quantiles()
        if self.n_samples:
            f.dimensions["sample"] = self.n_samples
            _add_variable(f, "samples", ("sample", *self.dims), self.units["states"],
                          dtype=self.dtype, chunks=(1, *_chunks(self.shape, self.dtype.itemsize)))
        _write_root_attrs(f, self.dt, m["system"], m["lyapunov_time"], m["field_names"],
                          m["attrs"])

    def _add_params(self) -> None:
        """`params` (n_traj, n_params) with attribute and coordinate `names`."""
        f, names = self._f, self.meta["param_names"]
        f.dimensions["param"] = self.params.shape[1]
        var = _add_variable(f, "params", ("trajectory", "param"), data=self.params)
        if names is not None:
            var.attrs["names"] = [str(n) for n in names]
            _add_strings(f, "param", names)

    def _add_quantiles(self) -> None:
        """Empty `quantiles` with dim `quantile` (coordinate and attribute `levels`)."""
        f = self._f
        tdim = "time" if self.q_horizon == self.shape[1] else "horizon"
        if tdim == "horizon":
            f.dimensions["horizon"] = self.q_horizon
        f.dimensions["quantile"] = len(self.levels)
        _add_variable(f, "quantile", ("quantile",), data=self.levels)
        qshape = (self.shape[0], self.q_horizon, *self.shape[2:])
        var = _add_variable(f, "quantiles", ("quantile", self.dims[0], tdim, *self.dims[2:]),
                            self.units.get("quantiles", self.units["states"]),
                            dtype=self.dtype, chunks=(1, *_chunks(qshape, self.dtype.itemsize)))
        var.attrs["levels"] = self.levels

    def write(self, states: np.ndarray, quantiles: np.ndarray | None = None,
              samples: np.ndarray | None = None) -> None:
        """Append the next block of trajectories: states (b, n_time, ...) and, when the file
        has them, quantiles (n_levels, b, horizon, ...) and sample paths (S, b, n_time, ...)."""
        if self._stack is None:
            raise ValueError("TrajectoryWriter.write outside its `with` block")
        states = np.asarray(states)
        b, i0 = len(states), self.written
        if states.shape[1:] != self.shape[1:] or i0 + b > self.shape[0]:
            raise ValueError(f"block of shape {states.shape} does not fit states {self.shape} "
                             f"after {i0} trajectories")
        if (quantiles is None) != (self.levels is None):
            raise ValueError("quantiles must be given exactly when quantile_levels were")
        if quantiles is not None:
            quantiles = np.asarray(quantiles)
            expect = (len(self.levels), b, self.q_horizon, *self.shape[2:])
            if quantiles.shape != expect:
                raise ValueError(f"quantiles shape {quantiles.shape} does not fit "
                                 f"{len(self.levels)} levels and states {self.shape}")
            self._f.variables["quantiles"][:, i0:i0 + b] = quantiles
        if (samples is None) != (not self.n_samples):
            raise ValueError("samples must be given exactly when n_samples was")
        if samples is not None:
            if np.shape(samples) != (self.n_samples, *states.shape):
                raise ValueError(f"samples shape {np.shape(samples)} does not fit "
                                 f"{self.n_samples} paths of {states.shape}")
            self._f.variables["samples"][:, i0:i0 + b] = samples
        self._f.variables["states"][i0:i0 + b] = states
        self.written = i0 + b


def write_trajectories(path: str | os.PathLike, states: np.ndarray, *,
                       quantiles: np.ndarray | None = None,
                       quantile_levels: Sequence[float] | None = None, **kwargs: Any) -> None:
    """Write states (and metadata) atomically in the trajectory contract, readable by h5py and
    by `xarray.open_dataset(path, engine="h5netcdf")`.

    Dimensions are (trajectory, time, field) or (trajectory, time, x[, y[, z]], field); `time`
    (and `x`, `y`, `z` if given) are coordinates. Keywords: dt or time, system, lyapunov_time,
    field_names, params (n_traj, n_params) with param_names, `units` (CF unit strings for time,
    x, y, z, states, quantiles; default "1"), `attrs` (extra root attributes), x, y, z. `quantiles`
    (n_levels, n_traj, H, ...) use dim `time` when H == n_time, else `horizon`.
    """
    states = np.asarray(states)
    horizon = None  # quantiles' own length; their shape is checked by TrajectoryWriter.write
    if quantiles is None:
        quantile_levels = None
    elif np.ndim(quantiles) > 2:
        horizon = np.shape(quantiles)[2]
    with TrajectoryWriter(path, states.shape, dtype=states.dtype, quantile_levels=quantile_levels,
                          quantile_horizon=horizon, **kwargs) as w:
        w.write(states, quantiles)


def _write_root_attrs(f: h5netcdf.File, dt: float | None, system: str | None,
                      lyapunov_time: float | None, field_names: list[str] | None,
                      attrs: dict | None) -> None:
    """Root attributes of the contract plus any extra ones."""
    f.attrs["Conventions"] = "CF-1.8"
    if dt is not None:
        f.attrs["dt"] = float(dt)
    if system is not None:
        f.attrs["system"] = str(system)
    if lyapunov_time is not None:
        f.attrs["lyapunov_time"] = float(lyapunov_time)
    if field_names is not None:
        f.attrs["field_names"] = [str(n) for n in field_names]
    for key, value in (attrs or {}).items():
        f.attrs[key] = value
