"""Reference simulators: chaotic ODEs, 1-D and 2-D PDEs written in the trajectory HDF5 contract.

`SYSTEMS` is the one explicit table of systems; `simulate` runs one of them for a batch of
trajectories (initial conditions drawn from a seeded Generator, so a seed reproduces the data
exactly) and `simulate_to_file` writes the result with `write_trajectories`. Every parameter
of a system, numerical ones included (saved step `dt`, RK/ETD `substeps`, `burn_in`), is
overridable by name and stored per trajectory in the file's `params`.

`simulate_zoo` writes a corpus of many perturbed and coupled chaotic flows (docs/zoo.md);
`write_system_trajectories` writes one of its library systems as a trajectory file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sciformer.errors import ConfigError
from sciformer.io.trajectories import write_trajectories
from sciformer.simulate import odes, pdes, pdes2d
from sciformer.simulate.zoo_io import simulate_zoo, write_system_trajectories

ParamDict = dict[str, float]


@dataclass
class SimResult:
    """A batch of simulated trajectories plus the metadata the file contract stores."""

    system: str
    states: np.ndarray  # (n_traj, n_steps, n_channels) or (n_traj, n_steps, *space, 1), float64
    dt: float  # saved time step
    time: np.ndarray  # (n_steps,), 0 at the first saved state (after the burn-in)
    lyapunov_time: float | None
    field_names: list[str]
    params: np.ndarray  # (n_traj, n_params)
    param_names: list[str]
    x: np.ndarray | None = None  # grid of fields along x
    y: np.ndarray | None = None  # grid of 2-D fields along y


@dataclass
class SystemSpec:
    """One simulated system: defaults, integer-valued params, and how to run it."""

    name: str
    default_params: ParamDict
    run: Callable[[int, int, np.random.Generator, ParamDict], np.ndarray]  # -> states
    lyapunov_time: Callable[[ParamDict], float | None]  # may depend on params; None if unknown
    field_names: Callable[[ParamDict], list[str]]
    integer_params: tuple[str, ...] = ("substeps",)
    grid: Callable[[ParamDict], dict[str, np.ndarray]] | None = None  # coordinates by axis
    description: str = ""

    @property
    def dt(self) -> float:
        """Default saved time step."""
        return self.default_params["dt"]


SYSTEMS: dict[str, SystemSpec] = {
    "lorenz63": SystemSpec(
        "lorenz63", odes.LORENZ63_DEFAULTS, odes.run_lorenz63, odes.lorenz63_lyapunov_time,
        lambda p: ["x", "y", "z"], description="Lorenz (1963) convection model, 3 variables"),
    "lorenz96": SystemSpec(
        "lorenz96", odes.LORENZ96_DEFAULTS, odes.run_lorenz96, odes.lorenz96_lyapunov_time,
        lambda p: [f"x{i}" for i in range(int(p["n"]))], ("n", "substeps"),
        description="Lorenz (1996) ring of n variables with forcing F"),
    "ks": SystemSpec(
        "ks", pdes.KS_DEFAULTS, pdes.run_ks, pdes.ks_lyapunov_time, lambda p: ["u"],
        ("nx", "substeps"), lambda p: {"x": pdes.field_grid(p, "L")},
        description="Kuramoto-Sivashinsky on a periodic domain of length L"),
    "burgers": SystemSpec(
        "burgers", pdes.BURGERS_DEFAULTS, pdes.run_burgers, lambda p: None, lambda p: ["u"],
        ("nx", "substeps", "modes"), lambda p: {"x": pdes.field_grid(p, None)},
        description="viscous Burgers on [0, 2 pi), viscosity nu"),
    "ns2d": SystemSpec(
        "ns2d", pdes2d.NS2D_DEFAULTS, pdes2d.run_ns2d, pdes2d.ns2d_lyapunov_time,
        lambda p: ["vorticity"], ("nx", "substeps", "kf"), pdes2d.grid_2d,
        description="2-D incompressible Navier-Stokes (vorticity), Kolmogorov forcing, "
                    "on [0, 2 pi)^2 with an nx x nx grid"),
}
_MIN_INT = {"nx": 8, "n": 4}  # spectral grids need a few points; L96 needs i-2..i+1 distinct
_MAY_BE_ANY = {"F", "forcing"}  # forcing may be zero or negative
_MAY_BE_ZERO = {"burn_in", "drag"}


def get_system(system: str) -> SystemSpec:
    """The spec of `system`, or ConfigError listing the valid names."""
    spec = SYSTEMS.get(system)
    if spec is None:
        raise ConfigError(f"unknown system {system!r}; valid systems: {', '.join(SYSTEMS)}")
    return spec


def _check_value(system: str, key: str, value: float, integer: bool) -> float:
    """One parameter value, checked to be finite, positive where it must be, integral where it
    counts something."""
    where = f"system {system!r} param {key!r}"
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{where}: must be finite, got {value}")
    if integer and (value != int(value) or value < _MIN_INT.get(key, 1)):
        raise ConfigError(f"{where}: must be an integer >= {_MIN_INT.get(key, 1)}, got {value:g}")
    if key == "nx" and int(value) % 2:
        raise ConfigError(f"{where}: must be even (real FFT grid), got {value:g}")
    if key not in _MAY_BE_ANY and (value < 0 or (value == 0 and key not in _MAY_BE_ZERO)):
        raise ConfigError(f"{where}: must be positive, got {value:g}")
    return value


def resolve_params(system: str, params: dict[str, float] | None = None) -> ParamDict:
    """Defaults of `system` overridden by `params`; ConfigError on unknown names or bad values."""
    spec = get_system(system)
    unknown = sorted(set(params or {}) - set(spec.default_params))
    if unknown:
        raise ConfigError(f"system {system!r}: unknown param {unknown[0]!r}; valid params: "
                          f"{', '.join(spec.default_params)}")
    merged = {**spec.default_params, **(params or {})}
    resolved = {k: _check_value(system, k, v, k in spec.integer_params) for k, v in merged.items()}
    ratio = resolved["burn_in"] / resolved["dt"] if "burn_in" in resolved else 0.0
    if not math.isclose(ratio, round(ratio), abs_tol=1e-9):
        raise ConfigError(f"system {system!r}: burn_in {resolved['burn_in']:g} is not a whole "
                          f"number of steps dt = {resolved['dt']:g}")
    return resolved


def _check_finite(system: str, states: np.ndarray, p: ParamDict) -> None:
    """ConfigError naming the first trajectory and step that blew up (NaN, Inf, or beyond
    float32, the precision the file stores): unstable parameters, e.g. too large a dt."""
    big = np.finfo(np.float32).max
    bad = ~(np.abs(states.reshape(*states.shape[:2], -1)) <= big).all(axis=2)  # (n_traj, n_steps)
    if bad.any():
        i, t = (int(v) for v in np.argwhere(bad)[0])
        raise ConfigError(f"system {system!r}: trajectory {i} blew up at step {t} (NaN, Inf or "
                          f"beyond float32) with dt={p['dt']:g}; use a smaller dt, more "
                          "substeps or milder parameters")


def simulate(system: str, n_traj: int, n_steps: int, seed: int,
             params: dict[str, float] | None = None) -> SimResult:
    """Simulate `n_traj` trajectories of `n_steps` saved steps of `system` (see SYSTEMS).

    The same (system, n_traj, n_steps, seed, params) always gives the same states.
    """
    spec = get_system(system)
    p = resolve_params(system, params)
    if n_traj < 1 or n_steps < 1:
        raise ConfigError(f"n_traj and n_steps must be >= 1, got {n_traj} and {n_steps}")
    with np.errstate(all="ignore"):  # a blow-up is reported once, by _check_finite
        states = spec.run(n_traj, n_steps, np.random.default_rng(seed), p)
    _check_finite(system, states, p)
    names = list(p)
    coords = {} if spec.grid is None else spec.grid(p)
    return SimResult(
        system=spec.name, states=states, dt=p["dt"], time=np.arange(n_steps) * p["dt"],
        lyapunov_time=spec.lyapunov_time(p), field_names=spec.field_names(p),
        params=np.tile(np.array([p[k] for k in names]), (n_traj, 1)), param_names=names,
        x=coords.get("x"), y=coords.get("y"))


def simulate_to_file(system: str, path: str | os.PathLike, n_traj: int, n_steps: int, seed: int,
                     params: dict[str, float] | None = None) -> Path:
    """Simulate and write the trajectories (float32 states) atomically to `path`; return it."""
    res = simulate(system, n_traj, n_steps, seed, params)
    write_trajectories(
        path, res.states.astype(np.float32), dt=res.dt, time=res.time, system=res.system,
        lyapunov_time=res.lyapunov_time, field_names=res.field_names, params=res.params,
        param_names=res.param_names, x=res.x, y=res.y, attrs={"seed": int(seed)})
    return Path(path)


__all__ = ["SYSTEMS", "SimResult", "SystemSpec", "get_system", "resolve_params", "simulate",
           "simulate_to_file", "simulate_zoo", "write_system_trajectories"]
