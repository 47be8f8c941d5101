"""Trajectory HDF5 files: a lazy, validating reader (the writer is `trajectory_writer`).

The contract: dataset `states` of shape (n_traj, n_time, n_channels) for ODE systems or
(n_traj, n_time, *space, n_fields) for fields on a grid of 1-3 spatial axes (e.g.
(n_traj, n_time, n_x, n_y, n_fields) in 2-D), float32/64; time as a 1-D dataset `time` or a
root attribute `dt`; optional root attributes `system`, `lyapunov_time`, `field_names`;
coordinates named like the spatial dimensions (x, y, z); optional dataset `params`
(n_traj, n_params) with attribute `names`. netCDF4 files written by xarray (h5netcdf) are read
the same way (h5py sees them as ordinary datasets plus dimension scales). Foreign layouts map
onto the same picture (`sciformer.io.layouts`): PDEBench's `tensor`, per-variable and
per-sample-group files (`sciformer.io.pdebench`) and The Well (`sciformer.io.well`).
Windows are read from disk on demand, so files larger than memory work, and the reader
re-opens its h5py handle in each process (handles must not cross a fork into DataLoader
workers).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sciformer.errors import InputError, first_line
from sciformer.io.layouts import PDEBENCH_VARIABLES, Layout, StatesLayout, TrajectoryMeta, listing
from sciformer.io.pdebench import GroupsLayout, TensorLayout, VariablesLayout, sample_groups
from sciformer.io.trajectory_writer import TrajectoryWriter, write_trajectories
from sciformer.io.well import FIELD_GROUPS, WellLayout

_SCAN_BYTES = 4 * 2**20  # memory bound while scanning states for NaN/Inf
_CORRUPT = (OSError, RuntimeError, KeyError, ValueError, TypeError)


def _open_h5(path: Path, name: str) -> h5py.File:
    """Open `path` read-only, turning every way it is not an HDF5 file into InputError."""
    if not path.is_file():
        raise InputError(f"{name}: no such file")
    try:
        if not h5py.is_hdf5(path):
            raise InputError(f"{name}: not an HDF5 file")
        return h5py.File(path, "r")
    except _CORRUPT as exc:
        raise InputError(f"{name}: cannot open as HDF5 ({first_line(exc)})") from None


def detect_layout(f: h5py.File, name: str) -> Layout:
    """The layout of an open file (checked in this order), or a one-line InputError saying
    what the file holds instead."""
    if "states" in f:
        return StatesLayout()
    if any(k in f for k in FIELD_GROUPS):
        return WellLayout()
    if "tensor" in f:
        return TensorLayout()
    if any(isinstance(f.get(k), h5py.Dataset) for k in PDEBENCH_VARIABLES):
        return VariablesLayout()
    if sample_groups(f):
        return GroupsLayout()
    raise InputError(f"{name}: no dataset 'states' (nor PDEBench 'tensor', variables "
                     f"{', '.join(PDEBENCH_VARIABLES)} or sample groups 0000/data, nor The "
                     f"Well's t0_fields/t1_fields/t2_fields); present: {listing(f)}")


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _first_nonfinite(layout: Layout, f: h5py.File,
                     meta: TrajectoryMeta) -> tuple[int, int, str] | None:
    """(trajectory, step, what) of the first value that is NaN/Inf, or (float64 data) beyond
    float32 range, which reads as Inf once cast to the float32 the model works in; reads
    blocks of at most _SCAN_BYTES."""
    n_traj, n_time = meta.n_traj, meta.n_time
    steps = max(1, _SCAN_BYTES // (layout.itemsize * meta.n_features))
    t_block = min(steps, n_time)
    traj_block = max(1, steps // n_time)
    for i0 in range(0, n_traj, traj_block):
        i1 = min(i0 + traj_block, n_traj)
        for t0 in range(0, n_time, t_block):
            block = layout.read(f, i0, i1, t0, min(t_block, n_time - t0))
            flat = block.reshape(block.shape[0], block.shape[1], -1)  # (traj, step, features)
            with np.errstate(invalid="ignore"):
                bad = ~(np.isfinite(flat) & (np.abs(flat) <= _FLOAT32_MAX))
            bad = bad.any(axis=2)
            if bad.any():
                i, t = np.argwhere(bad)[0]  # row-major: earliest trajectory, then earliest step
                row = flat[i, t]
                what = "NaN or Inf in states" if not np.isfinite(row).all() else \
                    (f"value {row[np.abs(row) > _FLOAT32_MAX][0]:.4g} in states is beyond the "
                     f"float32 range (+-{_FLOAT32_MAX:.4g}) the model computes in")
                return i0 + int(i), t0 + int(t), what
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
            self.layout = detect_layout(f, self.name)
            self.meta = self.layout.describe(f, self.name)
            bad = _first_nonfinite(self.layout, f, self.meta) if check_finite else None
        except _CORRUPT as exc:
            raise InputError(f"{self.name}: unreadable HDF5 content ({first_line(exc)})") from None
        finally:
            f.close()
        if bad is not None:
            raise InputError(f"{self.name}: trajectory {bad[0]} step {bad[1]}: {bad[2]}")

    def _file(self) -> h5py.File:
        """The open file, (re)opening it in this process if needed."""
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = _open_h5(self.path, self.name)  # a handle inherited via fork is dropped
            self._pid = os.getpid()
        return self._h5

    def window(self, traj: int, start: int, length: int) -> np.ndarray:
        """Steps [start, start + length) of trajectory `traj`: (length, *state_shape) float32."""
        if not 0 <= traj < self.meta.n_traj:
            raise IndexError(f"{self.name}: trajectory {traj} out of range "
                             f"[0, {self.meta.n_traj})")
        return self.windows(traj, traj + 1, start, length)[0]

    def windows(self, first: int, stop: int, start: int, length: int) -> np.ndarray:
        """Steps [start, start + length) of trajectories [first, stop) in one read:
        (stop - first, length, *state_shape) float32, e.g. (b, length, n_x, n_y, n_fields)."""
        m = self.meta
        if not 0 <= first <= stop <= m.n_traj:
            raise IndexError(f"{self.name}: trajectories [{first}, {stop}) outside "
                             f"[0, {m.n_traj})")
        if start < 0 or length < 0 or start + length > m.n_time:
            raise IndexError(f"{self.name}: window [{start}, {start + length}) "
                             f"outside [0, {m.n_time})")
        if first == stop:
            return np.empty((0, length, *m.state_shape), dtype=np.float32)
        try:
            arr = self.layout.read(self._file(), first, stop, start, length)  # only this window
        except _CORRUPT as exc:
            where = f"trajectory {first}" if stop - first == 1 else \
                f"trajectories {first}-{stop - 1}"
            raise InputError(f"{self.name}: {where}: unreadable states "
                             f"({first_line(exc)})") from None
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
        return (f"TrajectoryFile({self.name!r}, layout={m.layout!r}, n_traj={m.n_traj}, "
                f"n_time={m.n_time}, state_shape={m.state_shape})")


__all__ = ["TrajectoryFile", "TrajectoryMeta", "TrajectoryWriter", "detect_layout",
           "write_trajectories"]
