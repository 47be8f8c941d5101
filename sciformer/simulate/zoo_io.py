"""Zoo corpus files: `simulate_zoo` writes one, `iter_zoo` reads it lazily.

A corpus is one netCDF4/HDF5 file (written with h5netcdf) with one group per accepted system,
`systems/<index>_<bases>`, each laid out like a trajectory file (docs/zoo.md): `states`
(trajectory, time, field) float32, coordinates `time` and `field`, and attributes `system`,
`base_systems`, `params` and `coupling` (JSON), `dt`, `period`, `timescale`,
`lyapunov_time`, `lyapunov_exponents`. Each group opens with
`xarray.open_dataset(path, group="systems/<name>", engine="h5netcdf")`. Root attributes list
the base systems used, the library drawn from and the held-out systems, the generator settings
and how many drawn systems were rejected for which reason.

`write_system_trajectories` writes one library system (a held-out one, typically) as an
ordinary trajectory file that `sciformer evaluate` reads.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5netcdf
import h5py
import numpy as np

from sciformer.errors import ConfigError, InputError
from sciformer.io.atomic import atomic_path
from sciformer.io.trajectory_writer import write_trajectories
from sciformer.simulate import zoo
from sciformer.simulate.systems import HELD_OUT, LIBRARY, FlowSystem, get_flow, training_systems

FORMAT = "sciformer-zoo"
FORMAT_VERSION = 1
CORPUS_NAME = "zoo.h5"  # file name used when `out` is a directory
_FILE_SUFFIXES = (".h5", ".hdf5", ".nc")


@dataclass
class ZooSettings:
    """How a corpus is generated (all stored in the file's root attributes)."""

    n_traj: int = 4  # trajectories per system, from different initial conditions
    n_time: int = 1024  # saved points per trajectory
    points_per_scale: int = 50  # saved points per characteristic timescale
    perturbation: float = 0.15  # parameters multiplied by 1 + U(-p, p)
    coupled_fraction: float = 0.5  # share of draws that are driver -> response pairs
    max_dim: int = 10  # largest dimension of a coupled pair
    coupling_strength: tuple[float, float] = (0.5, 3.0)  # kappa = k * driver timescale
    burn_scales: int = 40  # transient, in library timescales
    min_lyapunov_per_scale: float = 0.02  # acceptance threshold on lambda_max * timescale

    def check(self) -> None:
        """ConfigError naming the first setting out of range."""
        bad = [("n_traj", self.n_traj >= 1), ("n_time", self.n_time >= 2),
               ("points_per_scale", self.points_per_scale >= 4),
               ("perturbation", 0.0 <= self.perturbation < 1.0),
               ("coupled_fraction", 0.0 <= self.coupled_fraction <= 1.0),
               ("max_dim", self.max_dim >= 3), ("burn_scales", self.burn_scales >= 2),
               ("coupling_strength", 0.0 < self.coupling_strength[0]
                <= self.coupling_strength[1]),
               ("min_lyapunov_per_scale", self.min_lyapunov_per_scale >= 0.0)]
        for key, ok in bad:
            if not ok:
                raise ConfigError(f"zoo setting {key!r} out of range: {getattr(self, key)!r}")


@dataclass
class ZooSummary:
    """What `simulate_zoo` did."""

    path: Path
    n_systems: int
    attempts: int
    rejections: dict[str, int]
    base_systems: list[str]
    seconds: float
    names: list[str] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        """Accepted systems per drawn system."""
        return self.n_systems / self.attempts


def corpus_path(out: str | os.PathLike) -> Path:
    """`out` itself if it names an .h5/.hdf5/.nc file, else `out`/zoo.h5 (a directory)."""
    out = Path(out)
    return out if out.suffix in _FILE_SUFFIXES else out / CORPUS_NAME


def _group_name(index: int, system: zoo.ZooSystem) -> str:
    return f"{index:05d}_{'-'.join(system.bases)}"


def _write_group(parent: h5netcdf.Group, name: str, run: zoo.SystemRun,
                 rng_key: list[int]) -> None:
    """One accepted system as a group laid out like a trajectory file."""
    g = parent.create_group(name)
    n_traj, n_time, dim = run.states.shape
    g.dimensions = {"trajectory": n_traj, "time": n_time, "field": dim}
    g.create_variable("time", ("time",), data=np.arange(n_time) * run.dt).attrs["units"] = "1"
    g.create_variable("field", ("field",), dtype=h5py.string_dtype(),
                      data=np.array(run.system.field_names, dtype=object))
    g.create_variable("states", ("trajectory", "time", "field"),
                      data=run.states.astype(np.float32)).attrs["units"] = "1"
    s = run.system
    g.attrs.update({
        "system": s.name, "base_systems": list(s.bases), "params": json.dumps(s.params),
        "coupling": json.dumps(s.coupling) if s.coupling else "", "dt": float(run.dt),
        "period": float(run.period), "timescale": float(run.timescale),
        "lyapunov_exponent": run.lyapunov_exponent, "lyapunov_time": run.lyapunov_time,
        "lyapunov_exponents": run.exponents.astype(np.float64),
        "field_names": list(s.field_names), "rng_key": np.array(rng_key, dtype=np.int64),
        "rk4_step": float(run.h), "rk4_local_error": float(run.local_error)})


def _root_attrs(f: h5netcdf.File, settings: ZooSettings, summary: ZooSummary, seed: int,
                library: list[FlowSystem], held_out: tuple[str, ...]) -> None:
    f.attrs.update({
        "Conventions": "CF-1.8", "format": FORMAT, "format_version": FORMAT_VERSION,
        "base_systems": summary.base_systems, "library_systems": [s.name for s in library],
        "held_out_systems": list(held_out), "n_systems": summary.n_systems, "seed": int(seed),
        "attempts": summary.attempts, "rejections": json.dumps(summary.rejections),
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(settings).items()}})


def simulate_zoo(n_systems: int, out: str | os.PathLike, seed: int,
                 settings: ZooSettings | None = None, *, max_attempts: int | None = None,
                 library: list[FlowSystem] | None = None, held_out: tuple[str, ...] = HELD_OUT,
                 progress: Callable[[int, int], None] | None = None) -> ZooSummary:
    """Write a corpus of `n_systems` accepted chaotic systems to `out` (a file, or a directory
    that gets zoo.h5) and return a summary. Draw `attempt` uses the generator seeded by
    (seed, attempt), so a seed reproduces the corpus. ConfigError (and no file) if fewer than
    n_systems are accepted within max_attempts draws (default 20 * n_systems)."""
    settings = settings or ZooSettings()
    settings.check()
    library = training_systems() if library is None else list(library)
    zoo.check_library(library, held_out)
    if n_systems < 1:
        raise ConfigError(f"n_systems must be >= 1, got {n_systems}")
    max_attempts = 20 * n_systems if max_attempts is None else max_attempts
    path, start = corpus_path(out), time.perf_counter()
    summary = ZooSummary(path, 0, 0, {}, [], 0.0)
    rejections: Counter[str] = Counter()
    with atomic_path(path) as tmp, h5netcdf.File(tmp, "w") as f:
        systems = f.create_group("systems")
        while summary.n_systems < n_systems:
            if summary.attempts >= max_attempts:
                raise ConfigError(
                    f"zoo: only {summary.n_systems} of {n_systems} systems accepted in "
                    f"{max_attempts} draws (rejected: {dict(rejections)}); raise max_attempts "
                    "or relax the settings")
            key = [int(seed), summary.attempts]
            run = _draw_and_run(library, settings, np.random.default_rng(key))
            summary.attempts += 1
            if run.reason is not None:
                rejections[run.reason] += 1
                continue
            name = _group_name(summary.n_systems, run.system)
            _write_group(systems, name, run, key)
            summary.names.append(name)
            summary.base_systems = sorted({*summary.base_systems, *run.system.bases})
            summary.n_systems += 1
            if progress is not None:
                progress(summary.n_systems, summary.attempts)
        summary.rejections = dict(rejections)
        _root_attrs(f, settings, summary, seed, library, held_out)
    summary.seconds = time.perf_counter() - start
    return summary


def _draw_and_run(library: list[FlowSystem], settings: ZooSettings,
                  rng: np.random.Generator) -> zoo.SystemRun:
    """Draw one system, integrate it and run the acceptance checks."""
    s = settings
    system = zoo.draw_system(library, rng, s.perturbation, s.coupled_fraction, s.max_dim,
                             s.coupling_strength)
    run = zoo.integrate_system(system, s.n_traj, s.n_time, s.points_per_scale, rng,
                               s.burn_scales)
    return zoo.check_system(run, s.min_lyapunov_per_scale)


def write_system_trajectories(system: str, path: str | os.PathLike, n_traj: int, n_time: int,
                              seed: int, params: dict[str, float] | None = None,
                              settings: ZooSettings | None = None) -> zoo.SystemRun:
    """Simulate library system `system` (held-out ones included) at `params` (defaults if None)
    and write it as a trajectory file (the `sciformer simulate` contract, with
    `lyapunov_time`); ConfigError if the run fails the zoo's acceptance checks."""
    flow = get_flow(system)
    unknown = sorted(set(params or {}) - set(flow.params))
    if unknown:
        raise ConfigError(f"system {system!r}: unknown param {unknown[0]!r}; valid params: "
                          f"{', '.join(flow.params)}")
    s = settings or ZooSettings()
    s.check()
    if n_traj < 1 or n_time < 2:
        raise ConfigError(f"n_traj must be >= 1 and n_time >= 2, got {n_traj} and {n_time}")
    p = {**flow.params, **{k: float(v) for k, v in (params or {}).items()}}
    run = zoo.integrate_system(zoo.single_system(flow, p), n_traj, n_time, s.points_per_scale,
                               np.random.default_rng(seed), s.burn_scales)
    run = zoo.check_system(run, s.min_lyapunov_per_scale)
    if run.reason is not None:
        raise ConfigError(f"system {system!r} with params {p} was rejected: {run.reason}")
    names = list(p)
    write_trajectories(
        path, run.states.astype(np.float32), dt=run.dt, system=system,
        lyapunov_time=run.lyapunov_time, field_names=flow.names(),
        params=np.tile([p[k] for k in names], (n_traj, 1)), param_names=names,
        attrs={"seed": int(seed), "period": run.period, "timescale": run.timescale,
               "lyapunov_exponents": run.exponents, "citation": flow.citation,
               "rk4_step": run.h, "rk4_local_error": run.local_error,
               "zoo_held_out": int(system in HELD_OUT)})
    return run


def write_held_out(out_dir: str | os.PathLike, n_traj: int, n_time: int, seed: int,
                   settings: ZooSettings | None = None) -> list[Path]:
    """Each held-out system at its defaults as `out_dir/<name>.h5`; the paths written."""
    paths = []
    for i, name in enumerate(HELD_OUT):
        path = Path(out_dir) / f"{name}.h5"
        write_system_trajectories(name, path, n_traj, n_time, seed + i, settings=settings)
        paths.append(path)
    return paths


# --- reading -----------------------------------------------------------------------------------

@dataclass
class ZooEntry:
    """Metadata of one corpus system (its states stay on disk)."""

    name: str  # group name under systems/
    system: str  # "chen" or "chen>lu"
    base_systems: list[str]
    params: dict[str, dict[str, float]]
    coupling: dict | None
    shape: tuple[int, int, int]  # (n_traj, n_time, n_fields)
    dt: float
    period: float
    timescale: float
    lyapunov_time: float
    field_names: list[str]


def _text(value: object) -> str:
    """A string attribute (str, bytes, or a length-1 array of either)."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    return value.decode() if isinstance(value, bytes | np.bytes_) else str(value)


def _number(value: object) -> float:
    """A numeric attribute (h5netcdf stores scalars as length-1 arrays); ValueError if not one
    number."""
    arr = np.asarray(value)
    if arr.size != 1 or arr.dtype.kind not in "fiu":
        raise ValueError(f"expected one number, found {value!r}")
    return float(arr.reshape(-1)[0])


def _plain(value: object) -> object:
    """An attribute as plain Python: str, number, or list."""
    if isinstance(value, bytes | np.bytes_ | str):
        return _text(value)
    arr = np.asarray(value)
    if arr.dtype.kind in "OSU":
        return [_text(x) for x in arr.reshape(-1)]
    return arr.reshape(-1)[0].item() if arr.size == 1 else arr.tolist()


def _entry(path: Path, name: str, g: h5py.Group) -> ZooEntry:
    """Metadata of group `name`; InputError naming the file and group if malformed."""
    try:
        a = g.attrs
        coupling = _text(a["coupling"])
        return ZooEntry(
            name=name, system=_text(a["system"]),
            base_systems=[_text(b) for b in np.atleast_1d(a["base_systems"])],
            params=json.loads(_text(a["params"])),
            coupling=json.loads(coupling) if coupling else None, shape=tuple(g["states"].shape),
            dt=_number(a["dt"]), period=_number(a["period"]), timescale=_number(a["timescale"]),
            lyapunov_time=_number(a["lyapunov_time"]),
            field_names=[_text(n) for n in np.atleast_1d(a["field_names"])])
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: zoo group systems/{name} is malformed ({exc})") from None


def read_zoo_attrs(path: str | os.PathLike) -> dict:
    """The corpus's root attributes (base_systems, held_out_systems, settings, ...)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: v for k, v in f.attrs.items() if k != "_NCProperties"}
    except OSError as exc:
        raise InputError(f"{path}: cannot open zoo corpus ({exc})") from None
    if _text(attrs.get("format", "")) != FORMAT:
        raise InputError(f"{path}: not a zoo corpus (root attribute 'format' is not {FORMAT!r})")
    return {k: _plain(v) for k, v in attrs.items()}


def iter_zoo(path: str | os.PathLike) -> Iterator[tuple[str, ZooEntry, h5py.Dataset]]:
    """Yield (group name, metadata, states dataset (n_traj, n_time, n_fields)) per system, in
    index order. The dataset reads from disk on slicing and is valid only until the next item
    (the file closes when the iteration ends)."""
    path = Path(path)
    read_zoo_attrs(path)
    with h5py.File(path, "r") as f:
        systems = f.get("systems")
        if not isinstance(systems, h5py.Group):
            raise InputError(f"{path}: zoo corpus has no 'systems' group")
        for name in sorted(systems):
            g = systems[name]
            yield name, _entry(path, name, g), g["states"]


def zoo_index(path: str | os.PathLike) -> list[ZooEntry]:
    """Metadata of every system in the corpus, in index order."""
    return [entry for _, entry, _ in iter_zoo(path)]


__all__ = ["CORPUS_NAME", "FORMAT", "LIBRARY", "ZooEntry", "ZooSettings", "ZooSummary",
           "corpus_path", "iter_zoo", "read_zoo_attrs", "simulate_zoo", "write_held_out",
           "write_system_trajectories", "zoo_index"]
