"""Trajectory HDF5 files: a lazy, validating reader and an atomic, xarray-friendly writer.

The contract (DESIGN.md, "Trajectory HDF5"): dataset `states` of shape
(n_traj, n_time, n_channels) for ODE systems or (n_traj, n_time, n_x, n_fields) for 1-D fields,
float32/64; time as a 1-D dataset `time` or a root attribute `dt`; optional root attributes
`system`, `lyapunov_time`, `field_names`; optional dataset `params` (n_traj, n_params) with
attribute `names`. The reader also accepts the PDEBench 1-D layout (`tensor` (N, T, X),
`t-coordinate`, `x-coordinate`) and netCDF4 files written by xarray (h5netcdf), which h5py sees
as ordinary datasets plus dimension scales. Windows are read from disk on demand, so files
larger than memory work, and the reader re-opens its h5py handle in each process (handles
must not cross a fork into DataLoader workers).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5netcdf
import h5py
import numpy as np

from sciformer.errors import InputError
from sciformer.io.atomic import atomic_path

# h5netcdf/netCDF4 mark a dimension that has no coordinate variable with this NAME attribute;
# such a dataset holds no data (e.g. a `time` dimension without time values).
_DIM_ONLY = b"This is a netCDF dimension but not a netCDF variable"
_SCAN_BYTES = 32 * 2**20  # memory bound while scanning states for NaN/Inf
_CHUNK_BYTES = 2**20  # target size of one stored chunk of `states`
_LAYOUTS = "(n_traj, n_time, n_channels) or (n_traj, n_time, n_x, n_fields)"
_CORRUPT = (OSError, RuntimeError, KeyError, ValueError, TypeError)


@dataclass
class TrajectoryMeta:
    """What a trajectory file holds, without its states (cheap to keep and to pickle)."""

    n_traj: int
    n_time: int
    state_shape: tuple[int, ...]  # (n_channels,) or (n_x, n_fields)
    dt: float  # time step; from attr `dt`, else time[1] - time[0]
    time: np.ndarray | None = None  # the `time` dataset when the file has one
    system: str | None = None
    lyapunov_time: float | None = None  # in the units of time
    field_names: list[str] | None = None
    params: np.ndarray | None = None  # (n_traj, n_params)
    param_names: list[str] | None = None
    x: np.ndarray | None = None  # grid of 1-D fields when the file has one

    @property
    def n_features(self) -> int:
        """Numbers per time step: prod(state_shape)."""
        return math.prod(self.state_shape)


def _text(value: Any) -> str:
    """Decode an HDF5 string attribute (str, bytes or numpy scalar) to str."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    return value.decode() if isinstance(value, bytes | np.bytes_) else str(value)


def _scalar(value: Any, name: str, what: str) -> float:
    """A float from a scalar or length-1 array attribute, else InputError."""
    arr = np.asarray(value)
    if arr.size != 1 or arr.dtype.kind not in "fiu":
        raise InputError(f"{name}: attribute '{what}' must be one number, found {value!r}")
    return float(arr.reshape(-1)[0])


def _coordinate(f: h5py.File, key: str) -> h5py.Dataset | None:
    """Dataset `key` if present and holding data (not a bare netCDF dimension)."""
    obj = f.get(key)
    if not isinstance(obj, h5py.Dataset):
        return None
    marker = obj.attrs.get("NAME")
    if isinstance(marker, bytes | np.bytes_) and bytes(marker).startswith(_DIM_ONLY):
        return None
    return obj


def _open_h5(path: Path, name: str) -> h5py.File:
    """Open `path` read-only, turning every way it is not an HDF5 file into InputError."""
    if not path.is_file():
        raise InputError(f"{name}: no such file")
    try:
        if not h5py.is_hdf5(path):
            raise InputError(f"{name}: not an HDF5 file")
        return h5py.File(path, "r")
    except _CORRUPT as exc:
        raise InputError(f"{name}: cannot open as HDF5 ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    """First line of an exception message, so errors stay one line."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _locate_states(f: h5py.File, name: str) -> tuple[str, bool]:
    """Which dataset holds the states and whether a trailing field axis must be added."""
    key = "states" if "states" in f else "tensor" if "tensor" in f else None
    if key is None:
        found = ", ".join(sorted(f.keys())[:8]) or "nothing"
        raise InputError(f"{name}: no dataset 'states' (nor PDEBench 'tensor'); found {found}")
    ds = f[key]
    if not isinstance(ds, h5py.Dataset):
        raise InputError(f"{name}: '{key}' is a group, expected a dataset")
    if ds.dtype.kind != "f":
        raise InputError(f"{name}: '{key}' has dtype {ds.dtype}, expected float32 or float64")
    pdebench = key == "tensor"
    if (pdebench and ds.ndim != 3) or (not pdebench and ds.ndim not in (3, 4)):
        layouts = "PDEBench (N, T, X)" if pdebench else _LAYOUTS
        raise InputError(f"{name}: '{key}' has shape {ds.shape}, expected {layouts}")
    if 0 in ds.shape:
        raise InputError(f"{name}: '{key}' is empty, shape {ds.shape}")
    return key, pdebench


def _read_time(f: h5py.File, name: str, n_time: int,
               pdebench: bool) -> tuple[np.ndarray | None, float]:
    """Time values (or None) and dt, from the time dataset and/or the root attribute `dt`."""
    tkey = "t-coordinate" if pdebench else "time"
    tds = _coordinate(f, tkey)
    dt = _scalar(f.attrs["dt"], name, "dt") if "dt" in f.attrs else None
    if tds is None and dt is None:
        raise InputError(f"{name}: no time information: neither a '{tkey}' dataset "
                         "nor a root attribute 'dt'")
    time = None
    if tds is not None:
        if tds.ndim != 1 or tds.dtype.kind not in "fiu":
            raise InputError(f"{name}: '{tkey}' must be a 1-D numeric dataset, "
                             f"found {tds.shape} {tds.dtype}")
        time = np.asarray(tds[()], dtype=np.float64)
        if pdebench and len(time) == n_time + 1:  # PDEBench stores T+1 time points
            time = time[:n_time]
        if len(time) != n_time:
            raise InputError(f"{name}: '{tkey}' has {len(time)} entries but states have "
                             f"{n_time} time steps")
        if n_time > 1 and not np.all(np.diff(time) > 0):
            raise InputError(f"{name}: '{tkey}' is not strictly increasing")
        if dt is None:
            dt = float(time[1] - time[0]) if n_time > 1 else float("nan")
    if not (dt > 0 or (math.isnan(dt) and time is not None)):
        raise InputError(f"{name}: attribute 'dt' must be positive, found {dt}")
    return time, dt


def _string_list(value: Any, name: str, what: str, expected: int) -> list[str]:
    """A list of str from an attribute, checked to have `expected` entries."""
    items = [value] if isinstance(value, str | bytes) else list(np.asarray(value).reshape(-1))
    names = [_text(v) for v in items]
    if len(names) != expected:
        raise InputError(f"{name}: attribute '{what}' has {len(names)} names, expected {expected}")
    return names


def _read_params(f: h5py.File, name: str,
                 n_traj: int) -> tuple[np.ndarray | None, list[str] | None]:
    """Optional per-trajectory parameters and their names."""
    ds = f.get("params")
    if not isinstance(ds, h5py.Dataset):
        return None, None
    if ds.ndim != 2 or ds.shape[0] != n_traj or ds.dtype.kind not in "fiu":
        raise InputError(f"{name}: 'params' has shape {ds.shape} {ds.dtype}, "
                         f"expected numeric ({n_traj}, n_params)")
    names = None
    if "names" in ds.attrs:
        names = _string_list(ds.attrs["names"], name, "params.names", ds.shape[1])
    return np.asarray(ds[()], dtype=np.float64), names


def _read_meta(f: h5py.File, name: str, key: str, pdebench: bool) -> TrajectoryMeta:
    """Validate everything but the values of the states and collect it in a TrajectoryMeta."""
    shape = f[key].shape
    state_shape = (shape[2], 1) if pdebench else tuple(shape[2:])
    time, dt = _read_time(f, name, shape[1], pdebench)
    attrs = f.attrs
    lyap = attrs.get("lyapunov_time")
    lyap = None if lyap is None else _scalar(lyap, name, "lyapunov_time")
    fields = attrs.get("field_names")
    fields = None if fields is None else _string_list(fields, name, "field_names", state_shape[-1])
    params, param_names = _read_params(f, name, shape[0])
    xds = _coordinate(f, "x-coordinate" if pdebench else "x") if len(state_shape) == 2 else None
    x = None if xds is None else np.asarray(xds[()], dtype=np.float64).reshape(-1)
    if x is not None and len(x) != state_shape[0]:
        raise InputError(f"{name}: x coordinate has {len(x)} points, states have {state_shape[0]}")
    system = _text(attrs["system"]) if "system" in attrs else None
    return TrajectoryMeta(shape[0], shape[1], state_shape, dt, time, system, lyap,
                          fields, params, param_names, x)


def _first_nonfinite(ds: h5py.Dataset) -> tuple[int, int] | None:
    """(trajectory, step) of the first NaN/Inf, scanning in blocks of at most _SCAN_BYTES."""
    n_traj, n_time = ds.shape[:2]
    step_bytes = ds.dtype.itemsize * math.prod(ds.shape[2:])
    steps = max(1, _SCAN_BYTES // step_bytes)
    t_block = min(steps, n_time)
    traj_block = max(1, steps // n_time)
    for i0 in range(0, n_traj, traj_block):
        i1 = min(i0 + traj_block, n_traj)
        for t0 in range(0, n_time, t_block):
            block = ds[i0:i1, t0:t0 + t_block]
            bad = ~np.isfinite(block.reshape(block.shape[0], block.shape[1], -1)).all(axis=2)
            if bad.any():
                i, t = np.argwhere(bad)[0]  # row-major: earliest trajectory, then earliest step
                return i0 + int(i), t0 + int(t)
    return None


class TrajectoryFile:
    """Lazy reader: opens the file, validates structure, reads windows from disk on demand.

    Picklable: only the path and metadata travel; each process opens its own h5py handle on
    first use (HDF5 handles must not be shared across fork).
    """

    def __init__(self, path: str | os.PathLike, *, check_finite: bool = True) -> None:
        self.path = Path(path)
        self.name = os.fspath(path)
        self._h5: h5py.File | None = None
        self._pid = -1
        f = _open_h5(self.path, self.name)
        try:
            self._key, self._pdebench = _locate_states(f, self.name)
            self.meta = _read_meta(f, self.name, self._key, self._pdebench)
            bad = _first_nonfinite(f[self._key]) if check_finite else None
        except _CORRUPT as exc:
            raise InputError(f"{self.name}: unreadable HDF5 content ({_first_line(exc)})") from None
        finally:
            f.close()
        if bad is not None:
            raise InputError(f"{self.name}: trajectory {bad[0]} step {bad[1]}: "
                             "NaN or Inf in states")

    def _dataset(self) -> h5py.Dataset:
        """The states dataset, (re)opening the file in this process if needed."""
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = _open_h5(self.path, self.name)  # a handle inherited via fork is dropped
            self._pid = os.getpid()
        return self._h5[self._key]

    def window(self, traj: int, start: int, length: int) -> np.ndarray:
        """Steps [start, start + length) of trajectory `traj`: (length, *state_shape) float32."""
        m = self.meta
        if not 0 <= traj < m.n_traj:
            raise IndexError(f"{self.name}: trajectory {traj} out of range [0, {m.n_traj})")
        if start < 0 or length < 0 or start + length > m.n_time:
            raise IndexError(f"{self.name}: window [{start}, {start + length}) "
                             f"outside [0, {m.n_time})")
        try:
            arr = self._dataset()[traj, start:start + length]  # h5py reads only this slice
        except _CORRUPT as exc:
            raise InputError(f"{self.name}: trajectory {traj}: unreadable states "
                             f"({_first_line(exc)})") from None
        if self._pdebench:
            arr = arr[..., None]  # (length, X) -> (length, X, 1)
        return np.asarray(arr, dtype=np.float32)

    def trajectory(self, traj: int) -> np.ndarray:
        """One whole trajectory: (n_time, *state_shape) float32."""
        return self.window(traj, 0, self.meta.n_time)

    def require_length(self, n_steps: int, what: str) -> None:
        """InputError unless trajectories have at least `n_steps` steps; `what` says why."""
        if self.meta.n_time < n_steps:
            raise InputError(f"{self.name}: trajectories have {self.meta.n_time} time steps, "
                             f"fewer than {what}")

    def close(self) -> None:
        """Close this process's handle (the reader re-opens on the next read)."""
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    def __enter__(self) -> TrajectoryFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_h5"], state["_pid"] = None, -1  # never pickle an open handle
        return state

    def __repr__(self) -> str:
        m = self.meta
        return (f"TrajectoryFile({self.name!r}, n_traj={m.n_traj}, n_time={m.n_time}, "
                f"state_shape={m.state_shape})")


def _state_dims(ndim: int) -> tuple[str, ...]:
    """netCDF dimension names of `states`."""
    if ndim == 3:
        return ("trajectory", "time", "field")
    if ndim == 4:
        return ("trajectory", "time", "x", "field")
    raise ValueError(f"states must have shape {_LAYOUTS}, got rank {ndim}")


def _time_axis(states: np.ndarray, dt: float | None,
               time: np.ndarray | None) -> tuple[np.ndarray, float | None]:
    """Time values for the `time` coordinate and the dt attribute (None if not uniform)."""
    n_time = states.shape[1]
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
    """One trajectory by ~_CHUNK_BYTES of time steps, so window() reads few chunks."""
    step_bytes = itemsize * math.prod(shape[2:])
    return (1, max(1, min(shape[1], _CHUNK_BYTES // step_bytes)), *shape[2:])


def _add_variable(f: h5netcdf.File, key: str, dims: tuple[str, ...], data: np.ndarray,
                  units: str | None = None, **kwargs: Any) -> Any:
    """Create one netCDF variable (with CF `units` when given)."""
    var = f.create_variable(key, dims, data=data, **kwargs)
    if units is not None:
        var.attrs["units"] = units
    return var


def _add_strings(f: h5netcdf.File, key: str, values: Sequence[str]) -> None:
    """A string coordinate along dimension `key` (so xarray can select by name)."""
    f.create_variable(key, (key,), dtype=h5py.string_dtype(),
                      data=np.array([str(v) for v in values], dtype=object))


def _check_write_args(states: np.ndarray, field_names: list[str] | None, params: np.ndarray | None,
                      param_names: list[str] | None, x: np.ndarray | None) -> None:
    """ValueError for arguments that would write a file breaking the contract."""
    if states.dtype.kind != "f":
        raise ValueError(f"states must be float32 or float64, got {states.dtype}")
    if field_names is not None and len(field_names) != states.shape[-1]:
        raise ValueError(f"{len(field_names)} field_names for {states.shape[-1]} fields")
    if params is not None and (params.ndim != 2 or params.shape[0] != states.shape[0]):
        raise ValueError(f"params has shape {params.shape}, expected ({states.shape[0]}, n_params)")
    if param_names is not None and (params is None or len(param_names) != params.shape[1]):
        raise ValueError("param_names needs params with one column per name")
    if x is not None and (states.ndim != 4 or np.shape(x) != (states.shape[2],)):
        raise ValueError(f"x has shape {np.shape(x)}, states have shape {states.shape}")


def _write_quantiles(f: h5netcdf.File, states: np.ndarray, dims: tuple[str, ...],
                     quantiles: np.ndarray, levels: Sequence[float] | None, units: str) -> None:
    """`quantiles` (n_levels, n_traj, H, ...) with dim `quantile`, attr and coordinate `levels`."""
    quantiles = np.asarray(quantiles)
    levels = np.asarray(levels if levels is not None else [], dtype=np.float64)
    if quantiles.ndim != states.ndim + 1 or quantiles.shape[0] != len(levels) \
            or quantiles.shape[1] != states.shape[0] or quantiles.shape[3:] != states.shape[2:]:
        raise ValueError(f"quantiles shape {quantiles.shape} does not fit {len(levels)} levels and "
                         f"states {states.shape}")
    horizon = quantiles.shape[2]
    tdim = "time" if horizon == states.shape[1] else "horizon"
    if tdim == "horizon":
        f.dimensions["horizon"] = horizon
    f.dimensions["quantile"] = len(levels)
    _add_variable(f, "quantile", ("quantile",), levels)
    qdims = ("quantile", dims[0], tdim, *dims[2:])
    var = _add_variable(f, "quantiles", qdims, quantiles, units, chunks=(1, *_chunks(
        quantiles.shape[1:], quantiles.dtype.itemsize)))
    var.attrs["levels"] = levels


def write_trajectories(path: str | os.PathLike, states: np.ndarray, *, dt: float | None = None,
                       time: np.ndarray | None = None, system: str | None = None,
                       lyapunov_time: float | None = None, field_names: list[str] | None = None,
                       params: np.ndarray | None = None, param_names: list[str] | None = None,
                       units: dict[str, str] | None = None, quantiles: np.ndarray | None = None,
                       quantile_levels: Sequence[float] | None = None, attrs: dict | None = None,
                       x: np.ndarray | None = None) -> None:
    """Write states (and metadata) atomically in the trajectory contract, readable by h5py and
    by `xarray.open_dataset(path, engine="h5netcdf")`.

    Dimensions are (trajectory, time, field) or (trajectory, time, x, field); `time` (and `x`
    if given) are coordinates; `units` maps variable names (time, x, states, quantiles) to
    CF unit strings, default "1" (dimensionless). `quantiles` (n_levels, n_traj, H, ...) use
    dim `time` when H == n_time, else `horizon`. `attrs` are extra root attributes.
    """
    states = np.asarray(states)
    dims = _state_dims(states.ndim)
    params = None if params is None else np.asarray(params, dtype=np.float64)
    _check_write_args(states, field_names, params, param_names, x)
    time, dt = _time_axis(states, dt, time)
    units = {"time": "1", "x": "1", "states": "1", **(units or {})}
    with atomic_path(path) as tmp, h5netcdf.File(tmp, "w") as f:
        f.dimensions = dict(zip(dims, states.shape, strict=True))
        _add_variable(f, "time", ("time",), time, units["time"])
        if x is not None:
            _add_variable(f, "x", ("x",), np.asarray(x, dtype=np.float64), units["x"])
        if field_names is not None:
            _add_strings(f, "field", field_names)
        _add_variable(f, "states", dims, states, units["states"],
                      chunks=_chunks(states.shape, states.dtype.itemsize))
        if params is not None:
            f.dimensions["param"] = params.shape[1]
            var = _add_variable(f, "params", ("trajectory", "param"), params)
            if param_names is not None:
                var.attrs["names"] = [str(n) for n in param_names]
                _add_strings(f, "param", param_names)
        if quantiles is not None:
            _write_quantiles(f, states, dims, quantiles, quantile_levels,
                             units.get("quantiles", units["states"]))
        _write_root_attrs(f, dt, system, lyapunov_time, field_names, attrs)


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
