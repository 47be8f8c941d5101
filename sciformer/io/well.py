"""The Well's HDF5 layout (Ohana et al. 2024, "The Well: a large-scale collection of diverse
physics simulations for machine learning", NeurIPS Datasets and Benchmarks), read lazily.

A Well file holds, for B trajectories of T steps on a grid of n_spatial_dims axes:
  * root attributes `dataset_name`, `grid_type`, `n_spatial_dims`, `n_trajectories`,
    `simulation_parameters` (names of further numeric root attributes);
  * `dimensions/`: `time` (T,) or (B, T) and one coordinate dataset per spatial axis, named by
    the group's attribute `spatial_dims` (e.g. x, y);
  * `boundary_conditions/`: one group per condition with attributes `bc_type`,
    `associated_dims`;
  * `scalars/`: non-spatial scalars (each (1,), (B,), (T,) or (B, T) by its flags);
  * `t0_fields/NAME` scalar fields (B, T, *space), `t1_fields/NAME` vector fields with a
    trailing component axis of size D = n_spatial_dims, `t2_fields/NAME` tensor fields with two
    trailing axes (D, D). Each field's attributes `sample_varying` and `time_varying` say
    whether the B and T axes are stored, and `dim_varying` (one bool per spatial axis) whether
    it varies along that axis (an axis it does not vary along has size 1 or is left out).
Fields become the channels of states (n_traj, n_time, *space, n_fields), in the order t0, t1,
t2 and within each group its `field_names` attribute; components are named as The Well names
them: `velocity_x`, `velocity_y` for t1, `stress_xy` for t2. A field that does not vary over
trajectories, time or an axis is broadcast along it (it is listed in meta.info
["constant_fields"] when it does not vary in time). Scalars that do not vary in time, and the
numeric `simulation_parameters`, become per-trajectory `params`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from sciformer.errors import InputError
from sciformer.io.layouts import (
    AXES,
    Layout,
    TrajectoryMeta,
    float_dataset,
    resolve_time,
    scalar,
    string_list,
    text,
)

FIELD_GROUPS = ("t0_fields", "t1_fields", "t2_fields")


@dataclass
class WellField:
    """One stored field: where it is, which leading axes it stores, how it broadcasts."""

    key: str  # e.g. "t1_fields/velocity"
    sample_varying: bool
    time_varying: bool
    space: tuple[int, ...]  # grid shape with 1 along axes it does not vary on
    n_comp: int  # 1, D or D^2 components


def _flag(attrs: Any, key: str, name: str) -> bool:
    """A boolean flag attribute (default True: a field varies unless it says otherwise)."""
    return True if key not in attrs else bool(scalar(attrs[key], name, key))


def _group(f: h5py.Group, key: str, name: str, required: bool = True) -> h5py.Group | None:
    """Group `key`, or None when absent and not required; InputError if it is a dataset."""
    obj = f.get(key)
    if obj is None and not required:
        return None
    if not isinstance(obj, h5py.Group):
        raise InputError(f"{name}: The Well layout needs a group '{key}', found "
                         f"{'nothing' if obj is None else 'a dataset'}")
    return obj


def _listed(g: h5py.Group, name: str) -> list[str]:
    """Names in attribute `field_names`, then any other member (so none is left out)."""
    listed = string_list(g.attrs["field_names"], name, f"{g.name[1:]}.field_names") \
        if "field_names" in g.attrs else []
    return listed + sorted(k for k in g.keys() if k not in listed)


def _axis(dims: h5py.Group, axis: str, name: str, info: dict[str, Any]) -> np.ndarray:
    """Coordinates of one spatial axis: (S,), or row 0 of (B, S) when they vary by sample."""
    ds = dims.get(axis)
    if not isinstance(ds, h5py.Dataset) or ds.ndim not in (1, 2) or ds.dtype.kind not in "fiu":
        raise InputError(f"{name}: 'dimensions/{axis}' must be a 1-D (or per-trajectory 2-D) "
                         "numeric dataset")
    values = np.asarray(ds[()], dtype=np.float64)
    if values.ndim == 2:
        info.setdefault("coords_vary_by_trajectory", []).append(axis)
        values = values[0]
    return values


def _time(dims: h5py.Group, name: str, dt_attr: Any) -> tuple[np.ndarray | None, float]:
    """Times (T,) from `dimensions/time`; per-trajectory times (B, T) must share their steps."""
    ds = dims.get("time")
    if not isinstance(ds, h5py.Dataset) or ds.ndim not in (1, 2) or ds.dtype.kind not in "fiu":
        raise InputError(f"{name}: 'dimensions/time' must be a numeric (T,) or (B, T) dataset")
    values = np.asarray(ds[()], dtype=np.float64)
    if values.ndim == 2:
        steps = np.diff(values, axis=1)
        if not np.allclose(steps, steps[:1], rtol=1e-6, atol=0.0):
            raise InputError(f"{name}: 'dimensions/time' has different time steps in "
                             "different trajectories")
        values = values[0]
    return resolve_time(values, dt_attr, len(values), "dimensions/time", name)


def _component_names(base: str, order: int, dims: tuple[str, ...]) -> list[str]:
    """velocity -> velocity_x, velocity_y (order 1); stress -> stress_xx, stress_xy, ..."""
    if order == 0:
        return [base]
    combos = [a + b for a in dims for b in dims] if order == 2 else list(dims)
    return [f"{base}_{c}" for c in combos]


@dataclass
class WellLayout(Layout):
    """The Well's t0/t1/t2 field groups, mapped to (n_traj, n_time, *space, n_fields)."""

    kind = "the-well"
    fields: list[WellField] = field(default_factory=list)
    space: tuple[int, ...] = ()

    def describe(self, f: h5py.File, name: str) -> TrajectoryMeta:
        info: dict[str, Any] = {k: text(f.attrs[k]) for k in ("dataset_name", "grid_type")
                                if k in f.attrs}
        dims_group = _group(f, "dimensions", name)
        dims = self._spatial_dims(f, dims_group, name)
        coords = {a: _axis(dims_group, a, name, info) for a in dims}
        self.space = tuple(len(coords[a]) for a in dims)
        time, dt = _time(dims_group, name, f.attrs.get("dt"))
        n_traj = int(scalar(f.attrs["n_trajectories"], name, "n_trajectories")) \
            if "n_trajectories" in f.attrs else None
        names, n_traj = self._fields(f, name, dims, n_traj, len(time), info)
        params, param_names = self._params(f, name, n_traj, info)
        info["boundary_conditions"] = _boundaries(f, name)
        self.itemsize = max(f[fl.key].dtype.itemsize for fl in self.fields)
        return TrajectoryMeta(n_traj, len(time), (*self.space, len(names)), dt, time,
                              system=info.get("dataset_name"), field_names=names,
                              params=params, param_names=param_names, x=coords[dims[0]],
                              space_dims=dims, coords=coords, layout=self.kind, info=info)

    @staticmethod
    def _spatial_dims(f: h5py.File, dims_group: h5py.Group, name: str) -> tuple[str, ...]:
        """Axis names from `dimensions.spatial_dims` (else x, y, z as present), checked
        against `n_spatial_dims`."""
        if "spatial_dims" in dims_group.attrs:
            dims = string_list(dims_group.attrs["spatial_dims"], name, "dimensions.spatial_dims")
        else:
            dims = [a for a in AXES if a in dims_group]
        if "n_spatial_dims" in f.attrs:
            n = int(scalar(f.attrs["n_spatial_dims"], name, "n_spatial_dims"))
            if n != len(dims):
                raise InputError(f"{name}: n_spatial_dims is {n} but 'dimensions' names "
                                 f"{len(dims)} spatial axes ({', '.join(dims) or 'none'})")
        if not 1 <= len(dims) <= 3:
            raise InputError(f"{name}: The Well layout needs 1-3 spatial axes, found "
                             f"{len(dims)}")
        return tuple(dims)

    def _fields(self, f: h5py.File, name: str, dims: tuple[str, ...], n_traj: int | None,
                n_time: int, info: dict[str, Any]) -> tuple[list[str], int]:
        """Validate every field against its flags; collect WellFields and channel names."""
        self.fields, names = [], []
        for order, gkey in enumerate(FIELD_GROUPS):
            group = _group(f, gkey, name, required=False)
            for base in [] if group is None else _listed(group, name):
                key = f"{gkey}/{base}"
                if not isinstance(group.get(base), h5py.Dataset):
                    raise InputError(f"{name}: {gkey}.field_names lists '{base}' but '{key}' "
                                     "is not a dataset")
                ds = float_dataset(f, key, name)
                sv = _flag(ds.attrs, "sample_varying", f"{name}: {key}")
                if sv and n_traj is None:
                    n_traj = ds.shape[0]  # no n_trajectories attribute: the first field says
                self.fields.append(self._field(ds, key, name, order, sv, n_traj, n_time))
                comps = _component_names(base, order, dims)
                names += comps
                if not self.fields[-1].time_varying:
                    info.setdefault("constant_fields", []).extend(comps)
        if not self.fields:
            raise InputError(f"{name}: t0_fields, t1_fields and t2_fields hold no fields")
        return names, 1 if n_traj is None else n_traj

    def _field(self, ds: h5py.Dataset, key: str, name: str, order: int, sv: bool,
               n_traj: int | None, n_time: int) -> WellField:
        """A WellField, checking the stored shape against the field's flags."""
        tv = _flag(ds.attrs, "time_varying", f"{name}: {key}")
        n_dims = len(self.space)
        varying = np.ones(n_dims, bool) if "dim_varying" not in ds.attrs else \
            np.asarray(ds.attrs["dim_varying"]).astype(bool).reshape(-1)
        if len(varying) != n_dims:
            raise InputError(f"{name}: '{key}' has dim_varying {varying.tolist()}, expected "
                             f"{n_dims} flags")
        lead = ([n_traj] if sv else []) + ([n_time] if tv else [])
        space = tuple(s if v else 1 for s, v in zip(self.space, varying, strict=True))
        comps = [n_dims] * order
        allowed = {tuple(lead + list(space) + comps),
                   tuple(lead + [s for s, v in zip(space, varying, strict=True) if v] + comps)}
        if order == 2:
            allowed |= {shape[:-2] + (n_dims**2,) for shape in allowed}
        if ds.shape not in allowed:
            raise InputError(f"{name}: '{key}' has shape {ds.shape}, expected "
                             f"{tuple(lead + list(space) + comps)} (sample_varying={sv}, "
                             f"time_varying={tv}, dim_varying={varying.tolist()})")
        return WellField(key, sv, tv, space, math.prod(comps))

    @staticmethod
    def _params(f: h5py.File, name: str, n_traj: int,
                info: dict[str, Any]) -> tuple[np.ndarray | None, list[str] | None]:
        """Time-constant scalars (per trajectory or shared) and numeric simulation_parameters
        as params (n_traj, n_params); time-varying scalars are listed in info."""
        columns: dict[str, np.ndarray] = {}
        group = _group(f, "scalars", name, required=False)
        for key in [] if group is None else _listed(group, name):
            ds = group.get(key)
            where = f"{name}: scalars/{key}"
            if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fiub" or \
                    _flag(ds.attrs, "time_varying", where):
                info.setdefault("time_varying_scalars", []).append(key)
                continue
            values = np.asarray(ds[()], dtype=np.float64).reshape(-1)
            if len(values) not in (1, n_traj):
                raise InputError(f"{where} has {len(values)} values, expected 1 or {n_traj}")
            columns[key] = np.broadcast_to(values, (n_traj,))
        if "simulation_parameters" in f.attrs:
            for key in string_list(f.attrs["simulation_parameters"], name,
                                   "simulation_parameters"):
                value = np.asarray(f.attrs.get(key, np.nan))
                if key not in columns and value.size == 1 and value.dtype.kind in "fiub":
                    columns[key] = np.full(n_traj, float(value.reshape(-1)[0]))
        if not columns:
            return None, None
        return np.stack(list(columns.values()), axis=1), list(columns)  # (n_traj, n_params)

    def read(self, f: h5py.File, first: int, stop: int, start: int,
             length: int) -> np.ndarray:
        b = stop - first
        parts = []
        for fl in self.fields:
            index = ((slice(first, stop),) if fl.sample_varying else ()) + \
                ((slice(start, start + length),) if fl.time_varying else ())
            arr = f[fl.key][index]  # only this window of a varying field
            arr = arr.reshape((b if fl.sample_varying else 1, length if fl.time_varying else 1,
                               *fl.space, fl.n_comp))
            parts.append(np.broadcast_to(arr, (b, length, *self.space, fl.n_comp)))
        return np.concatenate(parts, axis=-1)  # (b, length, *space, n_fields)


def _boundaries(f: h5py.File, name: str) -> dict[str, dict[str, Any]]:
    """{condition: {"type": bc_type, "dims": associated_dims}} from `boundary_conditions/`."""
    group = _group(f, "boundary_conditions", name, required=False)
    out = {}
    for key, bc in ([] if group is None else group.items()):
        if isinstance(bc, h5py.Group):
            dims = bc.attrs.get("associated_dims")
            out[key] = {"type": text(bc.attrs.get("bc_type", "unknown")),
                        "dims": [] if dims is None else string_list(dims, name, "associated_dims")}
    return out
