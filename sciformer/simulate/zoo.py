"""The dynamics zoo: many distinct chaotic flows made from the library in `systems`.

Following the recipe of Panda (Lai, Bao & Gilpin 2025), a zoo system is either one library flow
with its parameters perturbed (each multiplied by 1 + U(-s, s)), or a driver -> response pair
of two perturbed flows: the response's time is rescaled so both have the driver's
characteristic timescale, and one response variable is pulled towards one driver variable,

    r_j' = c f_r(r)_j + k (g d_i + o - r_j),   c = P_r / P_d,

with P the library timescales, g and o mapping the driver variable's mean and spread at default
parameters onto the response variable's, and coupling strength k = kappa / P_d. The driver is
unaffected (a skew product), so the pair has dimension d1 + d2 and is chaotic whenever the
driver is.

`integrate_system` runs a batch of trajectories from jittered initial conditions with RK4,
discards a transient, estimates the characteristic timescale from it (the oscillation period of
the fastest variable, or two Lyapunov times where shorter), samples a fixed number of points per
timescale, and estimates the largest Lyapunov exponent along the way (Benettin et al. 1980,
flow direction removed; see `lyapunov`). `check_system` keeps only systems that stay bounded,
keep oscillating and have lambda_max * timescale above a threshold on every trajectory.
The corpus file is written by `zoo_io`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sciformer.errors import ConfigError
from sciformer.simulate.lyapunov import PairedIntegrator
from sciformer.simulate.odes import rk4_step, rk4_trajectory
from sciformer.simulate.systems import FlowSystem, Params

Rhs = Callable[[np.ndarray], np.ndarray]
MAX_ABS_STATE = 1e4  # a state beyond this (or non-finite) counts as diverged
LOCAL_TOLERANCE = 1e-6  # largest accepted RK4 error of one saved step, relative to the std
MAX_REFINEMENTS = 3  # times the RK4 step may be halved to meet LOCAL_TOLERANCE
_JITTER = 0.01  # initial-condition noise, relative to (1 + |x0|)


@dataclass
class ZooSystem:
    """A flow ready to integrate: one perturbed library system or a coupled pair."""

    name: str  # "chen" or "chen>lu"
    bases: list[str]  # base systems, driver first
    params: dict[str, Params]  # base name -> its (perturbed) parameters
    rhs: Rhs
    x0: np.ndarray  # (dim,)
    timescale: float  # expected timescale (library value; the driver's for a pair)
    h_max: float  # largest RK4 step that keeps the integration accurate
    field_names: list[str]
    coupling: dict | None = None

    @property
    def dim(self) -> int:
        """Number of state variables."""
        return len(self.x0)


@dataclass
class SystemRun:
    """Trajectories of one zoo system plus what the acceptance checks measured."""

    system: ZooSystem
    states: np.ndarray  # (n_traj, n_time, dim) float64
    dt: float
    period: float  # oscillation period estimated from the transient's second half
    timescale: float  # min(period, 2 / lambda_max estimated over that half); dt = timescale / ppp
    exponents: np.ndarray  # (n_traj,) lambda_max estimates, 1 / time unit
    reason: str | None = None  # why the system was rejected; None if accepted
    h: float = math.nan  # RK4 step used for the saved window
    local_error: float = math.nan  # largest one-saved-step RK4 error / the variable's std
    details: dict = field(default_factory=dict)

    @property
    def lyapunov_exponent(self) -> float:
        """Mean lambda_max over trajectories."""
        return float(np.mean(self.exponents))

    @property
    def lyapunov_time(self) -> float:
        """1 / lambda_max in the system's time units (inf if not positive)."""
        lam = self.lyapunov_exponent
        return 1.0 / lam if lam > 0 else math.inf


# --- building systems --------------------------------------------------------------------------

def perturb(params: Params, rng: np.random.Generator, scale: float) -> Params:
    """Each parameter multiplied by 1 + U(-scale, scale) (zeros stay zero, signs are kept)."""
    return {k: float(v * (1.0 + rng.uniform(-scale, scale))) for k, v in params.items()}


def single_system(flow: FlowSystem, params: Params | None = None) -> ZooSystem:
    """A zoo system made of one library flow at `params` (its defaults if None)."""
    p = dict(flow.params if params is None else params)
    return ZooSystem(
        name=flow.name, bases=[flow.name], params={flow.name: p},
        rhs=functools.partial(flow.rhs, p=p), x0=np.array(flow.x0, dtype=np.float64),
        timescale=flow.timescale, h_max=flow.timescale / flow.steps_per_timescale,
        field_names=flow.names())


@functools.cache
def attractor_stats(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (dim,) of each variable of library flow `name` at its
    default parameters (2 trajectories, 20 timescales after 10 of transient; coarse RK4 is
    enough for these scales)."""
    from sciformer.simulate.systems import get_flow

    flow = get_flow(name)
    x0 = np.array(flow.x0) + _JITTER * np.array([[0.0], [1.0]]) * (1.0 + np.abs(flow.x0))
    sub = max(1, flow.steps_per_timescale // 80)  # 20 points per timescale, 4 x fewer steps
    states = rk4_trajectory(functools.partial(flow.rhs, p=flow.params), x0, flow.timescale / 20,
                            sub, 400, 200)  # (2, 400, dim)
    return states.mean(axis=(0, 1)), np.maximum(states.std(axis=(0, 1)), 1e-12)


def coupled_system(driver: FlowSystem, response: FlowSystem, p_driver: Params,
                   p_response: Params, rng: np.random.Generator,
                   strength: tuple[float, float]) -> ZooSystem:
    """Driver -> response skew product (see the module docstring); the coupled variables and
    kappa = k * P_d ~ U(strength) are drawn from `rng` and recorded in `coupling`."""
    d1 = driver.dim
    i, j = int(rng.integers(driver.dim)), int(rng.integers(response.dim))
    kappa = float(rng.uniform(*strength))
    k, c = kappa / driver.timescale, response.timescale / driver.timescale
    mean_d, std_d = attractor_stats(driver.name)
    mean_r, std_r = attractor_stats(response.name)
    gain = float(std_r[j] / std_d[i])
    offset = float(mean_r[j] - gain * mean_d[i])
    f_d, f_r = driver.rhs, response.rhs

    def rhs(s: np.ndarray) -> np.ndarray:
        ds, rs = s[..., :d1], s[..., d1:]
        dr = c * f_r(rs, p_response)
        dr[..., j] += k * (gain * ds[..., i] + offset - rs[..., j])
        return np.concatenate([f_d(ds, p_driver), dr], axis=-1)

    names = [f"{driver.name}.{n}" for n in driver.names()] + \
        [f"{response.name}.{n}" for n in response.names()]
    h_max = driver.timescale / max(driver.steps_per_timescale, response.steps_per_timescale)
    coupling = {"driver": driver.name, "response": response.name, "driver_channel": i,
                "response_channel": d1 + j, "strength": k, "kappa": kappa, "time_scale": c,
                "gain": gain, "offset": offset}
    return ZooSystem(
        name=f"{driver.name}>{response.name}", bases=[driver.name, response.name],
        params={driver.name: dict(p_driver), response.name: dict(p_response)}, rhs=rhs,
        x0=np.concatenate([driver.x0, response.x0]).astype(np.float64),
        timescale=driver.timescale,
        h_max=h_max, field_names=names, coupling=coupling)


def draw_system(library: list[FlowSystem], rng: np.random.Generator, perturbation: float,
                coupled_fraction: float, max_dim: int,
                strength: tuple[float, float]) -> ZooSystem:
    """One random zoo system: a perturbed library flow, or (with probability
    `coupled_fraction`) a coupled pair of two distinct flows with total dimension <= max_dim."""
    first = library[int(rng.integers(len(library)))]
    partners = [s for s in library if s.name != first.name and first.dim + s.dim <= max_dim]
    p_first = perturb(first.params, rng, perturbation)
    if not partners or rng.uniform() >= coupled_fraction:
        return single_system(first, p_first)
    second = partners[int(rng.integers(len(partners)))]
    p_second = perturb(second.params, rng, perturbation)
    return coupled_system(first, second, p_first, p_second, rng, strength)


# --- integrating and checking ------------------------------------------------------------------

def estimate_period(states: np.ndarray, dt: float, hysteresis: float = 0.5) -> float:
    """Characteristic period: the mean time between upward crossings of a variable's mean
    (a crossing counts once the variable has gone below mean - hysteresis * std and then above
    mean + hysteresis * std), median over trajectories, of the fastest variable. inf when no
    variable oscillates (fewer than 3 crossings)."""
    s = np.asarray(states, dtype=np.float64)  # (n_traj, n_time, dim)
    mean, std = s.mean(axis=1, keepdims=True), s.std(axis=1, keepdims=True)
    side = np.where(s > mean + hysteresis * std, 1, 0) - np.where(s < mean - hysteresis * std, 1, 0)
    t = np.arange(s.shape[1])[None, :, None]
    last = np.maximum.accumulate(np.where(side != 0, t, 0), axis=1)  # last time off the band
    held = np.take_along_axis(side, last, axis=1)  # side carried forward through the band
    up = (held[:, 1:] == 1) & (held[:, :-1] == -1)  # (n_traj, n_time - 1, dim)
    periods = np.full(s.shape[::2], np.inf)  # (n_traj, dim)
    for a, c in zip(*np.nonzero(up.sum(axis=1) >= 3), strict=True):
        times = np.flatnonzero(up[a, :, c])
        periods[a, c] = (times[-1] - times[0]) * dt / (len(times) - 1)
    return float(np.min(np.median(periods, axis=0)))


def _diverged(x: np.ndarray) -> bool:
    """True if any state is non-finite or beyond MAX_ABS_STATE."""
    return not (np.isfinite(x).all() and np.abs(x).max() < MAX_ABS_STATE)


def _jittered(x0: np.ndarray, n_traj: int, rng: np.random.Generator) -> np.ndarray:
    """n_traj initial states (n_traj, dim) near x0."""
    return x0 + _JITTER * (1.0 + np.abs(x0)) * rng.normal(size=(n_traj, len(x0)))


def _transient(pair: PairedIntegrator, system: ZooSystem, h_max: float, n_scales: int,
               per_scale: int = 20) -> tuple[np.ndarray | None, np.ndarray, float]:
    """Run n_scales library timescales of transient; return (coarse states of its second half
    (n, t, dim), or None if it diverged; summed log-growth over that half; its duration)."""
    n_sub = max(1, math.ceil(system.timescale / per_scale / h_max))
    h = system.timescale / per_scale / n_sub
    keep_from = (n_scales // 2) * per_scale
    coarse, total = [], np.zeros(pair.n)
    for step in range(n_scales * per_scale):
        pair.advance(h, n_sub)
        if step % 2 == 0 or step >= keep_from:  # keep delta's growth far from nonlinear
            growth = pair.renormalise()
            total += growth if step >= keep_from else 0.0
        if step % per_scale == 0 and _diverged(pair.states):
            return None, total, 0.0
        if step >= keep_from:
            coarse.append(pair.states.copy())
    return np.stack(coarse, axis=1), total, (n_scales * per_scale - keep_from) * h * n_sub


def _rejected(system: ZooSystem, n_traj: int, reason: str, period: float = math.nan,
              exponents: np.ndarray | None = None) -> SystemRun:
    """A run stopped early, with no states."""
    exps = np.full(n_traj, math.nan) if exponents is None else exponents
    return SystemRun(system, np.empty((n_traj, 0, system.dim)), math.nan, period, math.nan,
                     exps, reason)


def local_error(rhs: Rhs, states: np.ndarray, dt: float, n_sub: int) -> float:
    """Step-doubling check of a saved trajectory (n, t, dim): the largest difference between
    each saved step (n_sub RK4 steps) and the same step redone with 2 n_sub steps, relative to
    that variable's standard deviation along the trajectory. For RK4 this is 15/16 of the
    error of the coarse step (Richardson)."""
    x = states[:, :-1].reshape(-1, states.shape[-1])  # (n * (t - 1), dim): all steps at once
    for _ in range(2 * n_sub):
        x = rk4_step(rhs, x, dt / (2 * n_sub))
    diff = np.abs(states[:, 1:] - x.reshape(states[:, 1:].shape))  # (n, t - 1, dim)
    std = np.maximum(states.std(axis=1, keepdims=True), 1e-300)
    return float((diff / std).max())


def _integrate_once(system: ZooSystem, h_max: float, n_traj: int, n_time: int,
                    points_per_scale: int, rng: np.random.Generator,
                    burn_scales: int) -> SystemRun:
    """One attempt of `integrate_system` with RK4 steps no longer than h_max."""
    pair = PairedIntegrator(system.rhs, _jittered(system.x0, n_traj, rng), rng, remove_flow=True)
    with np.errstate(all="ignore"):
        coarse, total, elapsed = _transient(pair, system, h_max, burn_scales)
        if coarse is None:
            return _rejected(system, n_traj, "diverged")
        period = estimate_period(coarse, system.timescale / 20)
        if not math.isfinite(period):
            return _rejected(system, n_traj, "not oscillating", period, total / elapsed)
        lam = float(np.mean(total)) / elapsed
        timescale = min(period, 2.0 / lam) if lam > 0 else period
        dt = timescale / points_per_scale
        n_sub = max(1, math.ceil(dt / h_max))
        out = np.empty((n_time, n_traj, system.dim))
        out[0] = pair.states
        for t in range(1, n_time):
            pair.advance(dt / n_sub, n_sub)
            total += pair.renormalise()
            out[t] = pair.states
        states = np.moveaxis(out, 0, 1)  # (n_time, n_traj, dim) -> (n_traj, n_time, dim)
        if _diverged(states):
            return _rejected(system, n_traj, "diverged", period)
        exponents = total / (elapsed + (n_time - 1) * dt)
        err = local_error(system.rhs, states, dt, n_sub)
    return SystemRun(system, states, dt, period, timescale, exponents, h=dt / n_sub,
                     local_error=err)


def integrate_system(system: ZooSystem, n_traj: int, n_time: int, points_per_scale: int,
                     rng: np.random.Generator, burn_scales: int = 40) -> SystemRun:
    """Trajectories (n_traj, n_time, dim) of `system` sampled at `points_per_scale` points per
    characteristic timescale, estimated after `burn_scales` library timescales of transient,
    with lambda_max accumulated over the transient's second half and the saved window.

    A run whose saved steps miss LOCAL_TOLERANCE (`local_error`) is redone with the RK4 step
    halved, up to MAX_REFINEMENTS times, and a run that diverges is redone once with half the
    step (stiff spikes, as in the hyperchaotic Rössler flow, blow up RK4 steps that are fine
    elsewhere); after that it is returned with reason "diverged" or "inaccurate". A run that
    stops oscillating during the transient is returned early with reason "not oscillating"."""
    h_max, diverged = system.h_max, 0
    for refinement in range(MAX_REFINEMENTS + 1):
        run = _integrate_once(system, h_max, n_traj, n_time, points_per_scale, rng, burn_scales)
        run.details["refinements"] = refinement
        if run.reason is None and run.local_error <= LOCAL_TOLERANCE:
            return run
        diverged += run.reason == "diverged"
        if run.reason not in (None, "diverged") or diverged == 2:
            return run
        h_max /= 2.0
    if run.reason is None:
        run.reason = "inaccurate"
    return run


def check_system(run: SystemRun, min_lyapunov_per_scale: float = 0.02) -> SystemRun:
    """Set run.reason when an integrated system must be rejected: collapsed (a trajectory
    stopped moving: a fixed point) or not chaotic (some trajectory's lambda_max * timescale
    <= min_lyapunov_per_scale). Divergence (a state non-finite or beyond MAX_ABS_STATE) and
    inaccuracy were already flagged by `integrate_system`."""
    if run.reason is not None:
        return run
    scale = 1.0 + np.abs(run.states).mean(axis=1)  # (n_traj, dim)
    moving = (run.states.std(axis=1) / scale).max(axis=1)  # (n_traj,)
    lam_t = run.exponents * run.timescale
    run.details.update({"lyapunov_per_scale_min": float(lam_t.min()),
                        "relative_std_min": float(moving.min())})
    if moving.min() < 1e-6:
        run.reason = "collapsed"
    elif not np.all(lam_t > min_lyapunov_per_scale):
        run.reason = "not chaotic"
    return run


def check_library(library: list[FlowSystem], held_out: tuple[str, ...]) -> None:
    """ConfigError if the library is empty or names a held-out system."""
    if not library:
        raise ConfigError("the zoo library is empty")
    leaked = sorted({s.name for s in library} & set(held_out))
    if leaked:
        raise ConfigError(f"zoo library includes held-out system(s) {', '.join(leaked)}; "
                          "held-out systems are for evaluation only")
