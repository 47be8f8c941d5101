"""PDEBench's HDF5 layouts (Takamoto et al. 2022, "PDEBench: an extensive benchmark for
scientific machine learning", NeurIPS Datasets and Benchmarks), read lazily.

PDEBench stores its 1-D, 2-D and 3-D sets in three ways:
  * `tensor` (N, T, *space) for one field (1-D advection, Burgers; 2-D Darcy) or
    (N, T, *space, C), with root datasets `x-coordinate` (`y-coordinate`, `z-coordinate`)
    and `t-coordinate`;
  * one dataset per variable (compressible Navier-Stokes: `density`, `pressure`, `Vx`, `Vy`,
    `Vz`), each (N, T, *space), with the same coordinate datasets;
  * one group per sample, `0000`, `0001`, ... (diffusion-reaction, shallow water), each with
    `data` (T, *space, C) and `grid/x` (`grid/y`, `grid/z`), `grid/t`.
`t-coordinate` sometimes has T + 1 entries (the end time of the last step is stored too); the
first T are the times of the stored states. The number of spatial axes is the number of
coordinate datasets; without any it follows from the rank (see each layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np

from sciformer.errors import InputError
from sciformer.io.layouts import (
    AXES,
    PDEBENCH_VARIABLES,
    Layout,
    TrajectoryMeta,
    coordinate,
    float_dataset,
    read_coords,
    resolve_time,
    vector,
)

_COORDS = {axis: f"{axis}-coordinate" for axis in AXES}  # x -> x-coordinate, ...


def _n_axes(g: h5py.Group, keys: dict[str, str], name: str) -> int:
    """How many spatial axes the coordinate datasets `keys` name (they must be x, x-y, x-y-z)."""
    present = [coordinate(g, key) is not None for key in keys.values()]
    n = sum(present)
    if present[:n] != [True] * n:
        found = ", ".join(k for k, p in zip(keys.values(), present, strict=True) if p)
        raise InputError(f"{name}: coordinates {found} do not name the first {n} spatial axes "
                         f"({', '.join(list(keys.values())[:n])})")
    return n


def _time(g: h5py.Group, key: str, dt_attr: object, n_time: int,
          name: str) -> tuple[np.ndarray | None, float]:
    """Times of the stored states from dataset `key` (T or T + 1 entries) or attribute dt."""
    ds = coordinate(g, key)
    values = None if ds is None else vector(ds, name, key)
    return resolve_time(values, dt_attr, n_time, key, name, extra_ok=True)


def _space_shape(shape: tuple[int, ...], n_axes: int, lead: int, what: str,
                 name: str) -> tuple[tuple[int, ...], bool]:
    """Split a stored shape after `lead` leading axes into (space, has_channel_axis).

    With coordinates (n_axes > 0) the rank tells whether a channel axis follows; without,
    a stored rank of lead + 1 is 1-D, lead + 2 is 2-D and lead + 3 is 2-D with channels.
    """
    rank = len(shape) - lead
    if n_axes == 0:
        n_axes, channels = {1: (1, False), 2: (2, False), 3: (2, True)}.get(rank, (0, False))
    else:
        channels = rank == n_axes + 1
        if rank not in (n_axes, n_axes + 1):
            n_axes = 0
    if n_axes == 0:
        raise InputError(f"{name}: {what} has shape {shape}, expected the {lead} leading axes, "
                         "1-3 spatial axes (one per coordinate dataset) and optionally "
                         "a channel axis")
    return tuple(shape[lead:lead + n_axes]), channels


@dataclass
class TensorLayout(Layout):
    """`tensor` (N, T, *space) or (N, T, *space, C) plus coordinate datasets."""

    kind = "pdebench-tensor"
    channels: bool = False

    def describe(self, f: h5py.File, name: str) -> TrajectoryMeta:
        ds = float_dataset(f, "tensor", name)
        self.itemsize = ds.dtype.itemsize
        space, self.channels = _space_shape(ds.shape, _n_axes(f, _COORDS, name), 2,
                                            "'tensor'", name)
        n_fields = ds.shape[-1] if self.channels else 1
        time, dt = _time(f, "t-coordinate", f.attrs.get("dt"), ds.shape[1], name)
        coords = read_coords(f, _COORDS, space, name)
        return TrajectoryMeta(ds.shape[0], ds.shape[1], (*space, n_fields), dt, time,
                              x=coords.get("x"), space_dims=AXES[:len(space)], coords=coords,
                              layout=self.kind)

    def read(self, f: h5py.File, first: int, stop: int, start: int,
             length: int) -> np.ndarray:
        arr = f["tensor"][first:stop, start:start + length]
        return arr if self.channels else arr[..., None]  # (b, L, *space) -> (b, L, *space, 1)


@dataclass
class VariablesLayout(Layout):
    """One dataset per variable, (N, T, *space) each: PDEBench's known variables in its
    channel order (density, Vx, Vy, Vz, pressure), then any other root float dataset of the
    same shape (sorted by name), so no stored field is silently left out."""

    kind = "pdebench-variables"
    keys: tuple[str, ...] = ()

    def describe(self, f: h5py.File, name: str) -> TrajectoryMeta:
        known = [k for k in PDEBENCH_VARIABLES if isinstance(f.get(k), h5py.Dataset)]
        shape = float_dataset(f, known[0], name).shape
        for key in known[1:]:
            if float_dataset(f, key, name).shape != shape:
                raise InputError(f"{name}: '{key}' has shape {f[key].shape} but '{known[0]}' "
                                 f"has shape {shape}; PDEBench variables must match")
        others = sorted(k for k, v in f.items() if k not in known and isinstance(v, h5py.Dataset)
                        and v.shape == shape and v.dtype.kind == "f")
        self.keys = (*known, *others)
        self.itemsize = max(f[k].dtype.itemsize for k in self.keys)
        space, channels = _space_shape(shape, _n_axes(f, _COORDS, name), 2, f"'{known[0]}'",
                                       name)
        if channels:
            raise InputError(f"{name}: '{known[0]}' has shape {shape}, expected (N, T, *space) "
                             f"with {len(shape) - 3} spatial axes as the coordinates say")
        time, dt = _time(f, "t-coordinate", f.attrs.get("dt"), shape[1], name)
        coords = read_coords(f, _COORDS, space, name)
        return TrajectoryMeta(shape[0], shape[1], (*space, len(self.keys)), dt, time,
                              field_names=list(self.keys), x=coords.get("x"),
                              space_dims=AXES[:len(space)], coords=coords, layout=self.kind)

    def read(self, f: h5py.File, first: int, stop: int, start: int,
             length: int) -> np.ndarray:
        parts = [f[k][first:stop, start:start + length] for k in self.keys]
        return np.stack(parts, axis=-1)  # F x (b, L, *space) -> (b, L, *space, F)


def sample_groups(f: h5py.File) -> list[str]:
    """Names of the per-sample groups (all digits, holding `data`), in numeric order."""
    names = [k for k, v in f.items() if k.isdigit() and isinstance(v, h5py.Group) and "data" in v]
    return sorted(names, key=int)


@dataclass
class GroupsLayout(Layout):
    """Per-sample groups: `NNNN/data` (T, *space, C) or (T, *space), `NNNN/grid/{x,y,z,t}`.
    Without grid coordinates the last axis of `data` is always the channel axis. Coordinates
    and times are those of the first group; other root members are listed in
    meta.info["ignored"]."""

    kind = "pdebench-groups"
    groups: tuple[str, ...] = ()
    channels: bool = True

    def describe(self, f: h5py.File, name: str) -> TrajectoryMeta:
        self.groups = tuple(sample_groups(f))
        first = self.groups[0]
        shape = float_dataset(f, f"{first}/data", name).shape
        for g in self.groups[1:]:
            if float_dataset(f, f"{g}/data", name).shape != shape:
                raise InputError(f"{name}: '{g}/data' has shape {f[g]['data'].shape} but "
                                 f"'{first}/data' has shape {shape}; samples must match")
        self.itemsize = f[f"{first}/data"].dtype.itemsize
        grid = f[first].get("grid")
        grid = grid if isinstance(grid, h5py.Group) else f[first]
        keys = {axis: axis for axis in AXES}
        n_axes = _n_axes(grid, keys, name)
        if n_axes == 0 and 3 <= len(shape) <= 5:  # no grid: always (T, *space, C)
            space, self.channels = shape[1:-1], True
        else:
            space, self.channels = _space_shape(shape, n_axes, 1, f"'{first}/data'", name)
        time, dt = _time(grid, "t", f.attrs.get("dt"), shape[0], f"{name}: {first}/grid")
        coords = read_coords(grid, keys, space, f"{name}: {first}/grid")
        ignored = sorted(set(f.keys()) - set(self.groups))
        return TrajectoryMeta(len(self.groups), shape[0],
                              (*space, shape[-1] if self.channels else 1), dt, time,
                              x=coords.get("x"), space_dims=AXES[:len(space)], coords=coords,
                              layout=self.kind, info={"ignored": ignored} if ignored else {})

    def read(self, f: h5py.File, first: int, stop: int, start: int,
             length: int) -> np.ndarray:
        arr = np.stack([f[g]["data"][start:start + length] for g in self.groups[first:stop]])
        return arr if self.channels else arr[..., None]  # (b, L, *space) -> (b, L, *space, 1)
