"""Layouts of trajectory HDF5 files: where the states are and how a window is read.

Every layout maps a file onto one picture: states of shape (n_traj, n_time, *space, n_fields)
for fields of any spatial rank, or (n_traj, n_time, n_channels) for ODE systems, described by a
`TrajectoryMeta`. A layout object holds only dataset names (it is cheap to pickle); `read`
slices the open h5py file, so a window costs only its own bytes on disk.

Layouts read here (docs/field-archives.md has the details):
  * "states": this project's contract (`trajectory_writer`), or any xarray/netCDF4 file with a
    `states` variable;
  * "pdebench-tensor": PDEBench's `tensor` (N, T, *space) or (N, T, *space, C) with
    `x-coordinate` (`y-`, `z-`) and `t-coordinate` (Takamoto et al. 2022, NeurIPS D&B);
  * "pdebench-variables": PDEBench's per-variable datasets (`density`, `Vx`, `Vy`, `Vz`,
    `pressure`) of shape (N, T, *space);
  * "pdebench-groups": PDEBench's per-sample groups `0000`, `0001`, ... holding `data`
    (T, *space, C) and `grid/x` (`grid/y`, `grid/z`), `grid/t`;
  * "the-well": The Well (Ohana et al. 2024, NeurIPS D&B), in `sciformer.io.well`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sciformer.errors import InputError

# h5netcdf/netCDF4 mark a dimension that has no coordinate variable with this NAME attribute;
# such a dataset holds no data (e.g. a `time` dimension without time values).
_DIM_ONLY = b"This is a netCDF dimension but not a netCDF variable"
AXES = ("x", "y", "z")  # default names of spatial axes, in storage order
PDEBENCH_VARIABLES = ("density", "Vx", "Vy", "Vz", "pressure")  # PDEBench's channel order


@dataclass
class TrajectoryMeta:
    """What a trajectory file holds, without its states (cheap to keep and to pickle).

    States are (n_traj, n_time, *state_shape): state_shape is (n_channels,) for ODE systems and
    (*spatial_shape, n_fields) for fields, e.g. (n_x, n_y, n_fields) in 2-D.
    """

    n_traj: int
    n_time: int
    state_shape: tuple[int, ...]  # (n_channels,) or (*spatial_shape, n_fields)
    dt: float  # time step; from attr `dt`, else time[1] - time[0]
    time: np.ndarray | None = None  # the time values when the file has them
    system: str | None = None
    lyapunov_time: float | None = None  # in the units of time
    field_names: list[str] | None = None
    params: np.ndarray | None = None  # (n_traj, n_params)
    param_names: list[str] | None = None
    x: np.ndarray | None = None  # coordinates of the first spatial axis when the file has them
    space_dims: tuple[str, ...] = ()  # names of the spatial axes, e.g. ("x", "y"); () for ODEs
    coords: dict[str, np.ndarray] = field(default_factory=dict)  # 1-D coordinates by axis name
    layout: str = "states"  # which layout the file was read as (see module docstring)
    info: dict[str, Any] = field(default_factory=dict)  # layout-specific facts (docs)

    @property
    def n_features(self) -> int:
        """Numbers per time step: prod(state_shape)."""
        return math.prod(self.state_shape)

    @property
    def n_fields(self) -> int:
        """Fields (or ODE channels) per grid point: state_shape[-1]."""
        return self.state_shape[-1]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Grid shape of a field, () for ODE states."""
        return self.state_shape[:-1] if self.space_dims else ()


# ---- small HDF5 helpers ----------------------------------------------------------------------
def text(value: Any) -> str:
    """Decode an HDF5 string attribute (str, bytes or numpy scalar) to str."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    return value.decode() if isinstance(value, bytes | np.bytes_) else str(value)


def scalar(value: Any, name: str, what: str) -> float:
    """A float from a scalar or length-1 array attribute, else InputError."""
    arr = np.asarray(value)
    if arr.size != 1 or arr.dtype.kind not in "fiub":
        raise InputError(f"{name}: attribute '{what}' must be one number, found {value!r}")
    return float(arr.reshape(-1)[0])


def positive(value: Any, name: str, what: str) -> float:
    """A finite number > 0 from a scalar attribute (a time scale), else InputError."""
    number = scalar(value, name, what)
    if not (number > 0 and math.isfinite(number)):
        raise InputError(f"{name}: attribute '{what}' must be positive and finite, found "
                         f"{number}")
    return number


def string_list(value: Any, name: str, what: str, expected: int | None = None) -> list[str]:
    """A list of str from an attribute, checked to have `expected` entries when given."""
    items = [value] if isinstance(value, str | bytes) else list(np.asarray(value).reshape(-1))
    names = [text(v) for v in items]
    if expected is not None and len(names) != expected:
        raise InputError(f"{name}: attribute '{what}' has {len(names)} names, expected {expected}")
    return names


def coordinate(f: h5py.Group, key: str) -> h5py.Dataset | None:
    """Dataset `key` if present and holding data (not a bare netCDF dimension)."""
    obj = f.get(key)
    if not isinstance(obj, h5py.Dataset):
        return None
    marker = obj.attrs.get("NAME")
    if isinstance(marker, bytes | np.bytes_) and bytes(marker).startswith(_DIM_ONLY):
        return None
    return obj


def vector(ds: h5py.Dataset, name: str, what: str) -> np.ndarray:
    """A numeric 1-D coordinate (a trailing singleton axis is allowed) as float64."""
    arr = np.asarray(ds[()])
    if arr.dtype.kind not in "fiu" or arr.ndim > 2 or (arr.ndim == 2 and 1 not in arr.shape):
        raise InputError(f"{name}: '{what}' must be a 1-D numeric dataset, "
                         f"found {arr.shape} {arr.dtype}")
    return arr.astype(np.float64).reshape(-1)


def float_dataset(f: h5py.Group, key: str, name: str) -> h5py.Dataset:
    """Dataset `key`, checked to be a non-empty float array."""
    ds = f[key]
    if not isinstance(ds, h5py.Dataset):
        raise InputError(f"{name}: '{key}' is a group, expected a dataset")
    if ds.dtype.kind != "f":
        raise InputError(f"{name}: '{key}' has dtype {ds.dtype}, expected float32 or float64")
    if 0 in ds.shape:
        raise InputError(f"{name}: '{key}' is empty, shape {ds.shape}")
    check_virtual_sources(ds, name)
    return ds


def check_virtual_sources(ds: h5py.Dataset, name: str) -> None:
    """InputError when `ds` is a virtual dataset (HDF5 VDS) one of whose source files or
    source datasets is missing: HDF5 reads the unmapped parts as the fill value (zeros)
    without a word, so a moved source file would silently become all-zero trajectories."""
    if not ds.is_virtual:
        return
    here = Path(ds.file.filename).resolve().parent
    for vmap in ds.virtual_sources():
        if vmap.file_name == ".":  # a source inside this very file
            ok = vmap.dset_name in ds.file
            where = "this file"
        else:
            src = Path(vmap.file_name)
            found = next((p for p in (src, here / src) if p.is_file()), None)
            ok = found is not None and _holds(found, vmap.dset_name)
            where = f"'{vmap.file_name}'"
        if not ok:
            raise InputError(f"{name}: '{ds.name.lstrip('/')}' is a virtual dataset whose source "
                             f"'{vmap.dset_name}' in {where} is missing (HDF5 would read it as "
                             "fill values); put the source file beside it or give the data "
                             "itself")


def _holds(path: Path, key: str) -> bool:
    """Whether the HDF5 file at `path` opens and holds dataset `key`."""
    try:
        with h5py.File(path, "r") as f:
            return isinstance(f.get(key), h5py.Dataset)
    except (OSError, ValueError):
        return False


def resolve_time(values: np.ndarray | None, dt_attr: Any, n_time: int, key: str, name: str,
                 extra_ok: bool = False) -> tuple[np.ndarray | None, float]:
    """Time values (or None) and dt from a time coordinate and/or a `dt` attribute.

    `extra_ok` accepts n_time + 1 values (PDEBench stores the end time too) and keeps the
    first n_time, the times of the stored states.
    """
    dt = None if dt_attr is None else scalar(dt_attr, name, "dt")
    if values is None and dt is None:
        raise InputError(f"{name}: no time information: neither a '{key}' dataset "
                         "nor a root attribute 'dt'")
    if values is not None:
        if extra_ok and len(values) == n_time + 1:
            values = values[:n_time]
        if len(values) != n_time:
            raise InputError(f"{name}: '{key}' has {len(values)} entries but states have "
                             f"{n_time} time steps")
        if n_time > 1 and not np.all(np.diff(values) > 0):
            raise InputError(f"{name}: '{key}' is not strictly increasing")
        if dt is None:
            dt = float(values[1] - values[0]) if n_time > 1 else float("nan")
    if not ((dt > 0 and math.isfinite(dt)) or (math.isnan(dt) and values is not None)):
        raise InputError(f"{name}: attribute 'dt' must be positive and finite, found {dt}")
    return values, dt


def read_coords(f: h5py.Group, keys: dict[str, str], sizes: tuple[int, ...],
                name: str) -> dict[str, np.ndarray]:
    """Coordinates {axis: values} for the axes whose dataset (keys[axis]) exists, each checked
    to have as many points as the grid has along that axis."""
    out = {}
    for (axis, key), size in zip(keys.items(), sizes, strict=False):
        ds = coordinate(f, key)
        if ds is None:
            continue
        values = vector(ds, name, key)
        if len(values) != size:
            raise InputError(f"{name}: '{key}' has {len(values)} points, states have {size} "
                             f"along {axis}")
        out[axis] = values
    return out


def listing(f: h5py.Group, limit: int = 8) -> str:
    """'a (2, 3) float32, b/ (group), ...': what a group holds, for error messages."""
    parts = []
    for key in sorted(f.keys())[:limit]:
        obj = f.get(key)
        parts.append(f"{key} {obj.shape} {obj.dtype}" if isinstance(obj, h5py.Dataset)
                     else f"{key}/")
    more = len(f.keys()) - limit
    return ", ".join(parts) + (f" and {more} more" if more > 0 else "") if parts else "nothing"


# ---- layouts ---------------------------------------------------------------------------------
class Layout:
    """Where a file keeps its states. Subclasses validate in `describe` and slice in `read`."""

    kind = "?"
    itemsize = 8  # bytes per stored number (bounds memory while scanning)

    def describe(self, f: h5py.File, name: str) -> TrajectoryMeta:
        """Validate the structure (not the values) and return the metadata."""
        raise NotImplementedError

    def read(self, f: h5py.File, first: int, stop: int, start: int,
             length: int) -> np.ndarray:
        """States of trajectories [first, stop), steps [start, start + length):
        (stop - first, length, *state_shape), in the stored dtype."""
        raise NotImplementedError


def _root_meta(f: h5py.File, name: str, n_fields: int) -> dict[str, Any]:
    """The optional root attributes of the contract: system, lyapunov_time, field_names."""
    attrs = f.attrs
    lyap = attrs.get("lyapunov_time")
    fields = attrs.get("field_names")
    return {"system": text(attrs["system"]) if "system" in attrs else None,
            "lyapunov_time": None if lyap is None else positive(lyap, name, "lyapunov_time"),
            "field_names": None if fields is None else string_list(fields, name, "field_names",
                                                                   n_fields)}


def _read_params(f: h5py.File, name: str,
                 n_traj: int) -> tuple[np.ndarray | None, list[str] | None]:
    """Optional per-trajectory parameters `params` (n_traj, n_params) and their names."""
    ds = f.get("params")
    if not isinstance(ds, h5py.Dataset):
        return None, None
    if ds.ndim != 2 or ds.shape[0] != n_traj or ds.dtype.kind not in "fiu":
        raise InputError(f"{name}: 'params' has shape {ds.shape} {ds.dtype}, "
                         f"expected numeric ({n_traj}, n_params)")
    names = None
    if "names" in ds.attrs:
        names = string_list(ds.attrs["names"], name, "params.names", ds.shape[1])
    return np.asarray(ds[()], dtype=np.float64), names


def _dim_names(ds: h5py.Dataset, n_space: int) -> tuple[str, ...]:
    """Names of the spatial axes of `states`: its netCDF dimension scales when attached
    (xarray files may call them e.g. lat, lon), else x, y, z."""
    names = []
    for i in range(2, 2 + n_space):
        try:
            scale = ds.dims[i][0].name.rsplit("/", 1)[-1] if len(ds.dims[i]) else ""
        except (RuntimeError, KeyError, ValueError, IndexError):
            scale = ""
        names.append(scale or AXES[i - 2])
    return tuple(names) if len(set(names)) == n_space else AXES[:n_space]


@dataclass
class StatesLayout(Layout):
    """The contract: `states` (n_traj, n_time, n_channels) or (n_traj, n_time, *space,
    n_fields) with 1-3 spatial axes; `time` or attribute `dt`; coordinates named like the
    spatial dimensions (x, y, z when the file does not name them)."""

    kind = "states"
    key: str = "states"

    def describe(self, f: h5py.File, name: str) -> TrajectoryMeta:
        ds = float_dataset(f, self.key, name)
        if not 3 <= ds.ndim <= 6:
            raise InputError(f"{name}: 'states' has shape {ds.shape}, expected (n_traj, n_time, "
                             "n_channels) or (n_traj, n_time, *space, n_fields) with 1-3 "
                             "spatial axes")
        self.itemsize = ds.dtype.itemsize
        n_traj, n_time, *state = ds.shape
        tds = coordinate(f, "time")
        time, dt = resolve_time(None if tds is None else vector(tds, name, "time"),
                                f.attrs.get("dt"), n_time, "time", name)
        dims = _dim_names(ds, ds.ndim - 3)
        coords = read_coords(f, {d: d for d in dims}, tuple(state[:-1]), name)
        params, param_names = _read_params(f, name, n_traj)
        return TrajectoryMeta(n_traj, n_time, tuple(state), dt, time, params=params,
                              param_names=param_names, x=coords.get(dims[0]) if dims else None,
                              space_dims=dims, coords=coords, layout=self.kind,
                              **_root_meta(f, name, state[-1]))

    def read(self, f: h5py.File, first: int, stop: int, start: int,
             length: int) -> np.ndarray:
        return f[self.key][first:stop, start:start + length]  # reads only this slice
