"""Two-dimensional incompressible Navier-Stokes (Kolmogorov flow) in vorticity form.

On the periodic square [0, 2 pi)^2 the vorticity omega = v_x - u_y of a velocity (u, v) with
div u = 0 obeys

    omega_t + u . grad(omega) = nu lap(omega) - drag omega + f,    lap(psi) = -omega,
    u = psi_y,  v = -psi_x,

where f = curl(A sin(k_f y) e_x) = -A k_f cos(k_f y) is the curl of the Kolmogorov body force
A sin(k_f y) e_x (Chandler & Kerswell 2013, J. Fluid Mech. 722, 554, where nu = 1/Re and
A = 1; Kochkov et al. 2021, PNAS 118, e2101784118, who add the linear drag).

Discretisation: Fourier pseudo-spectral in space (Canuto et al. 2006, "Spectral Methods"), the
advection term in conservative form div(u omega) evaluated on the grid and dealiased with
Orszag's (1971) 2/3 rule; in time, Crank-Nicolson for the linear terms (viscosity, drag) and
second-order Adams-Bashforth for advection and forcing ("CNAB2", Ascher, Ruuth & Wetton 1995,
SIAM J. Numer. Anal. 32, 797), started with one forward-Euler step. Each saved step `dt` is
split into at least `substeps` internal steps, more when the flow is fast (a CFL limit).

Arrays: grid states are (..., n_x, n_y) with state[..., i, j] = omega(x_i, y_j),
x_i = 2 pi i / n_x (ij indexing); Fourier states are real FFTs over the last axis,
(..., n_x, n_y // 2 + 1). All trajectories of a batch are advanced together.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

# Kolmogorov flow at Re = 1/nu = 40 with forcing wavenumber 4: the weakly turbulent (chaotic,
# bursting) regime of Chandler & Kerswell (2013). On a 64 x 64 grid the enstrophy spectrum falls
# ~1e-5 below its peak at the 2/3 cut-off (resolved). Saved every 0.25 time units; the internal
# step is dt / substeps or smaller, so that the advective CFL number max|u| h / dx stays below
# `cfl` (AB2 blew up at 0.6 in bursts; with 0.3 the step is ~0.013 at n = 64 and halves when n
# doubles). Vorticity decorrelates in ~5 time units, so a burn-in of 50 forgets the random
# initial state.
NS2D_DEFAULTS: dict[str, float] = {
    "nu": 1.0 / 40.0, "drag": 0.0, "forcing": 1.0, "kf": 4.0, "nx": 64.0,
    "dt": 0.25, "substeps": 4.0, "cfl": 0.3, "burn_in": 50.0, "amp": 1.0,
}
# Largest Lyapunov exponent keyed by (nu, drag, forcing, kf), measured with
# `lyapunov_exponent` at nx = 64: 0.123 +- 0.004 (16 trajectories x 500 time units,
# renormalised every time unit, eps = 1e-7; other seeds gave 0.119 +- 0.011 (8 x 300) and,
# renormalising every 2 time units from eps = 1e-6, 0.123 +- 0.006 (8 x 300)),
# i.e. a Lyapunov time of ~8.1 time units (32 saved steps). Used only on grids of nx >= 64,
# where the flow is resolved.
NS2D_LAMBDA_MAX: dict[tuple[float, float, float, float], float] = {
    (1.0 / 40.0, 0.0, 1.0, 4.0): 0.123,
}
MAX_BATCH = 8  # trajectories integrated together (one internal step size), at most


@dataclass
class SpectralGrid:
    """Wavenumbers, the dealiasing mask and the Laplacian of an n x n periodic 2 pi grid."""

    n: int

    def __post_init__(self) -> None:
        self.kx = np.fft.fftfreq(self.n, 1.0 / self.n)[:, None]  # (n, 1) integers
        self.ky = np.fft.rfftfreq(self.n, 1.0 / self.n)[None, :]  # (1, n // 2 + 1)
        self.k2 = self.kx**2 + self.ky**2  # (n, n // 2 + 1)
        self.inv_k2 = np.where(self.k2 > 0, 1.0 / np.where(self.k2 > 0, self.k2, 1.0), 0.0)
        cut = self.n / 3.0  # keep |k_x|, |k_y| < n / 3 (2/3 rule)
        self.dealias = (np.abs(self.kx) < cut) & (np.abs(self.ky) < cut)

    def to_grid(self, w_hat: np.ndarray) -> np.ndarray:
        """Inverse real FFT: (..., n, n // 2 + 1) -> (..., n, n)."""
        return np.fft.irfft2(w_hat, s=(self.n, self.n), axes=(-2, -1))

    def to_fourier(self, w: np.ndarray) -> np.ndarray:
        """Real FFT: (..., n, n) -> (..., n, n // 2 + 1)."""
        return np.fft.rfft2(w, axes=(-2, -1))

    def velocity(self, w_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid velocity (u, v) = (psi_y, -psi_x) with psi_hat = omega_hat / |k|^2."""
        psi_hat = w_hat * self.inv_k2
        return self.to_grid(1j * self.ky * psi_hat), self.to_grid(-1j * self.kx * psi_hat)

    def advection(self, w_hat: np.ndarray) -> np.ndarray:
        """Fourier coefficients of -u . grad(omega) = -div(u omega), dealiased."""
        u, v = self.velocity(w_hat)
        w = self.to_grid(w_hat)
        adv = 1j * self.kx * self.to_fourier(u * w) + 1j * self.ky * self.to_fourier(v * w)
        return -adv * self.dealias


class CNAB2:
    """Crank-Nicolson / Adams-Bashforth-2 stepper for omega_t = lin omega + N(omega) + f.

    Fourier coefficients advance by a step h as
    (1 - h lin / 2) w1 = (1 + h lin / 2) w0 + h ((1 + r/2) N(w0) - (r/2) N(w_prev) + f),
    with r = h / h_prev the step ratio (variable-step AB2, so the step may change between
    saved states) and N(w_prev) = N(w0) on the first step (forward Euler). Second order in h.
    """

    def __init__(self, grid: SpectralGrid, nu: float, drag: float,
                 force_hat: np.ndarray) -> None:
        self.grid, self.force_hat = grid, force_hat
        self.lin = -nu * grid.k2 - drag
        self.h = 0.0
        self.ratio = 1.0
        self.prev: np.ndarray | None = None

    def set_step(self, h: float) -> None:
        """Use step h from the next step on (CN factors recomputed only when h changes)."""
        if h != self.h:
            self.ratio = h / self.h if self.h else 1.0
            self.h = h
            self.num = 1.0 + 0.5 * h * self.lin
            self.inv_den = 1.0 / (1.0 - 0.5 * h * self.lin)

    def step(self, w_hat: np.ndarray) -> np.ndarray:
        """One step of size h of a batch of Fourier states (..., n, n // 2 + 1)."""
        nonlin = self.grid.advection(w_hat)
        r = self.ratio
        explicit = nonlin if self.prev is None else (1.0 + 0.5 * r) * nonlin - 0.5 * r * self.prev
        self.prev, self.ratio = nonlin, 1.0
        return (self.num * w_hat + self.h * (explicit + self.force_hat)) * self.inv_den

    def substeps(self, w_hat: np.ndarray, dt: float, minimum: int, cfl: float) -> int:
        """Internal steps for the next saved interval dt: at least `minimum`, and enough that
        max|u| h / dx <= cfl for the current state (AB2 needs a small advective CFL number)."""
        u, v = self.grid.velocity(w_hat)
        speed = max(float(np.abs(u).max()), float(np.abs(v).max()))
        dx = 2.0 * np.pi / self.grid.n
        return max(minimum, math.ceil(dt * speed / (cfl * dx)))


def kolmogorov_forcing(grid: SpectralGrid, amplitude: float, kf: int) -> np.ndarray:
    """Fourier coefficients of f = -A k_f cos(k_f y), the curl of A sin(k_f y) e_x."""
    y = np.arange(grid.n) * (2.0 * np.pi / grid.n)
    f = np.broadcast_to(-amplitude * kf * np.cos(kf * y)[None, :], (grid.n, grid.n))
    return grid.to_fourier(f)


def random_vorticity(rng: np.random.Generator, n_traj: int, grid: SpectralGrid,
                     amp: float, k_peak: float = 4.0) -> np.ndarray:
    """Smooth zero-mean random vorticity fields (n_traj, n, n): Gaussian Fourier coefficients
    with amplitude |k| exp(-|k|^2 / (2 k_peak^2)), dealiased, each scaled to rms = amp."""
    shape = (n_traj, *grid.k2.shape)
    coef = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    k = np.sqrt(grid.k2)
    w = grid.to_grid(coef * k * np.exp(-grid.k2 / (2.0 * k_peak**2)) * grid.dealias)
    return amp * w / w.std(axis=(-2, -1), keepdims=True)


def integrate(w0: np.ndarray, params: dict[str, float], n_save: int,
              n_burn: int = 0) -> np.ndarray:
    """Integrate grid vorticity w0 (n_traj, n, n) with `params` (see NS2D_DEFAULTS); discard
    n_burn saved steps; return (n_traj, n_save, n, n). The internal step is chosen per saved
    interval (`CNAB2.substeps`), shared by the batch."""
    grid = SpectralGrid(w0.shape[-1])
    dt, minimum, cfl = params["dt"], int(params["substeps"]), params["cfl"]
    force = kolmogorov_forcing(grid, params["forcing"], int(params["kf"]))
    stepper = CNAB2(grid, params["nu"], params["drag"], force)
    w_hat = grid.to_fourier(np.asarray(w0, dtype=np.float64)) * grid.dealias
    out = np.empty((n_save, *w_hat.shape), dtype=w_hat.dtype)
    for i in range(n_burn + n_save):
        if i >= n_burn:
            out[i - n_burn] = w_hat
        if i == n_burn + n_save - 1:
            break
        n_sub = stepper.substeps(w_hat, dt, minimum, cfl)
        stepper.set_step(dt / n_sub)
        for _ in range(n_sub):
            w_hat = stepper.step(w_hat)
    return np.moveaxis(grid.to_grid(out), 0, 1)  # (n_save, b, n, n) -> (b, n_save, n, n)


def batches(n_traj: int) -> list[slice]:
    """How `run_ns2d` splits n_traj trajectories into batches integrated independently:
    at least two when there are two (so two cores can share the work), of at most
    `MAX_BATCH`, as even as possible; a function of n_traj only, so the trajectories do not
    depend on the machine's core count."""
    k = max(min(n_traj, 2), math.ceil(n_traj / MAX_BATCH))
    edges = np.linspace(0, n_traj, k + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def run_ns2d(n_traj: int, n_steps: int, rng: np.random.Generator,
             params: dict[str, float]) -> np.ndarray:
    """Kolmogorov-flow trajectories (n_traj, n_steps, n, n, 1) of the field `vorticity` from
    random smooth initial vorticity, after the burn-in. The `batches` are integrated on up to
    as many threads as there are cores (numpy's FFTs release the GIL)."""
    grid = SpectralGrid(int(params["nx"]))
    w0 = random_vorticity(rng, n_traj, grid, params["amp"])
    n_burn = int(round(params["burn_in"] / params["dt"]))
    parts, err = batches(n_traj), np.geterr()  # numpy's error settings are per thread

    def one(b: slice) -> np.ndarray:
        with np.errstate(**err):  # the caller's, e.g. `simulate`'s silenced overflow
            return integrate(w0[b], params, n_steps, n_burn)

    with ThreadPoolExecutor(min(len(parts), os.cpu_count() or 1)) as pool:
        return np.concatenate(list(pool.map(one, parts)))[..., None]


def ns2d_lyapunov_time(params: dict[str, float]) -> float | None:
    """1 / lambda_max for parameters in NS2D_LAMBDA_MAX on a grid of nx >= 64; else None."""
    key = tuple(float(params[k]) for k in ("nu", "drag", "forcing", "kf"))
    lam = NS2D_LAMBDA_MAX.get(key)  # type: ignore[arg-type]
    return None if lam is None or params["nx"] < 64 else 1.0 / lam


def lyapunov_exponent(params: dict[str, float], n_traj: int, t_total: float, seed: int = 0,
                      eps: float = 1e-7, renorm: float = 1.0) -> tuple[float, float]:
    """Largest Lyapunov exponent by the two-trajectory method of Benettin et al. (1980,
    Meccanica 15, 9): a copy perturbed by eps (in the L2 norm of the vorticity) is advanced
    alongside each trajectory and renormalised every `renorm` time units; lambda is the mean
    log growth per unit time. Returns (mean, standard error over trajectories)."""
    grid = SpectralGrid(int(params["nx"]))
    rng = np.random.default_rng(seed)
    n_burn = int(round(params["burn_in"] / params["dt"]))
    w0 = integrate(random_vorticity(rng, n_traj, grid, params["amp"]), params, 1, n_burn)[:, 0]
    pert = random_vorticity(rng, n_traj, grid, 1.0)
    w1 = w0 + eps * pert / np.linalg.norm(pert, axis=(-2, -1), keepdims=True)
    step = {**params, "dt": renorm}
    logs = []
    for _ in range(int(round(t_total / renorm))):
        pair = integrate(np.concatenate([w0, w1]), step, 2)[:, -1]  # (2 n_traj, n, n)
        w0, w1 = pair[:n_traj], pair[n_traj:]
        dist = np.linalg.norm(w1 - w0, axis=(-2, -1), keepdims=True)
        logs.append(np.log(dist[:, 0, 0] / eps))
        w1 = w0 + (w1 - w0) * (eps / dist)
    lam = np.mean(logs, axis=0) / renorm  # (n_traj,)
    return float(lam.mean()), float(lam.std(ddof=1) / np.sqrt(n_traj)) if n_traj > 1 else 0.0


def grid_2d(params: dict[str, float]) -> dict[str, np.ndarray]:
    """Coordinates x and y of the periodic grid x_i = 2 pi i / n."""
    axis = np.arange(int(params["nx"])) * (2.0 * np.pi / params["nx"])
    return {"x": axis, "y": axis.copy()}
