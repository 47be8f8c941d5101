"""Trajectory HDF5 files: a lazy, validating reader (the writer is `trajectory_writer`).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sciformer.errors import InputError
from sciformer.io.trajectory_writer import TrajectoryWriter, write_trajectories

# h5netcdf/netCDF4 mark a dimension that has no coordinate variable with this NAME attribute;
# such a dataset holds no data (e.g. a `time` dimension without time values).
_DIM_ONLY = b"This is a netCDF dimension but not a netCDF variable"
_SCAN_BYTES = 4 * 2**20  # memory bound while scanning states for NaN/Inf
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
        if not 0 <= traj < self.meta.n_traj:
            raise IndexError(f"{self.name}: trajectory {traj} out of range "
                             f"[0, {self.meta.n_traj})")
        return self.windows(traj, traj + 1, start, length)[0]

    def windows(self, first: int, stop: int, start: int, length: int) -> np.ndarray:
        """Steps [start, start + length) of trajectories [first, stop) in one read:
        (stop - first, length, *state_shape) float32."""
        m = self.meta
        if not 0 <= first <= stop <= m.n_traj:
            raise IndexError(f"{self.name}: trajectories [{first}, {stop}) outside "
                             f"[0, {m.n_traj})")
        if start < 0 or length < 0 or start + length > m.n_time:
            raise IndexError(f"{self.name}: window [{start}, {start + length}) "
                             f"outside [0, {m.n_time})")
        try:
            arr = self._dataset()[first:stop, start:start + length]  # reads only this slice
        except _CORRUPT as exc:
            where = f"trajectory {first}" if stop - first == 1 else \
                f"trajectories {first}-{stop - 1}"
            raise InputError(f"{self.name}: {where}: unreadable states "
                             f"({_first_line(exc)})") from None
        if self._pdebench:
            arr = arr[..., None]  # (b, length, X) -> (b, length, X, 1)
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


__all__ = ["TrajectoryFile", "TrajectoryMeta", "TrajectoryWriter", "write_trajectories"]
