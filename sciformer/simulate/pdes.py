"""Kuramoto–Sivashinsky and viscous Burgers: 1-D periodic PDE reference systems.

Both are solved pseudo-spectrally, u_t = L u + N(u) with a diagonal linear operator L in
Fourier space and the nonlinearity N(u) = -(u^2 / 2)_x evaluated on the grid, using ETDRK4
(Cox & Matthews 2002, J. Comput. Phys. 176, 430) with the coefficients computed by contour
integrals as in Kassam & Trefethen (2005), SIAM J. Sci. Comput. 26, 1214. The k = 0 mode has
L = 0 and N = 0, so the spatial mean of u is conserved to rounding error.

All trajectories are advanced together as one (n_traj, n_x // 2 + 1) array of real-FFT
coefficients. States are returned as (n_traj, n_steps, n_x, 1): one field `u` on the grid
x_j = j * length / n_x.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# KS on [0, 22) with 64 modes is the standard small chaotic KS benchmark (Cvitanović et al.
# 2010; Vlachas et al. 2018); internal step 0.05, saved every 0.25 time units.
KS_DEFAULTS: dict[str, float] = {
    "L": 22.0, "nx": 64.0, "dt": 0.25, "substeps": 5.0, "burn_in": 200.0, "amp": 1.0,
}
# Largest Lyapunov exponent of KS keyed by domain length: L = 22 -> 0.043 (Edson et al. 2019,
# Chaos 29, 043107; Vlachas et al. 2018), i.e. a Lyapunov time of about 23 time units. The value
# used in the forecasting literature is kept so VPT compares with peers; Ding et al. (2016, PRL
# 116, 014101) give 0.048, and a two-trajectory (Benettin) estimate with this solver gives
# 0.049 +- 0.001 (16 trajectories x 4000 time units).
KS_LAMBDA_MAX: dict[float, float] = {22.0: 0.043}
# Burgers on [0, 2 pi) with nu = 0.01: the default amplitude keeps shocks (width ~ 2 nu / amp)
# resolved on 128 points; internal step 0.025, saved every 0.05.
BURGERS_DEFAULTS: dict[str, float] = {
    "nu": 0.01, "nx": 128.0, "dt": 0.05, "substeps": 2.0, "amp": 0.5, "modes": 3.0,
}

Nonlinear = Callable[[np.ndarray], np.ndarray]


def wavenumbers(nx: int, length: float) -> np.ndarray:
    """Real-FFT wavenumbers 2 pi m / length, m = 0 .. nx/2, for a periodic grid of nx points."""
    return 2.0 * np.pi / length * np.arange(nx // 2 + 1)


def advection(k: np.ndarray, nx: int, dealias: bool = False) -> Nonlinear:
    """N(v) = -(1/2) i k FFT(u^2), u = IFFT(v): the conservative form of -u u_x.

    The Nyquist mode of the odd derivative is zeroed (its derivative is not real). With
    `dealias`, the top third of modes is dropped from the product (Orszag's 2/3 rule).
    """
    g = -0.5j * k
    g[-1] = 0.0 if nx % 2 == 0 else g[-1]
    if dealias:
        g[k >= (2.0 / 3.0) * k[-1]] = 0.0

    def nonlinear(v: np.ndarray) -> np.ndarray:
        u = np.fft.irfft(v, n=nx, axis=-1)
        return g * np.fft.rfft(u * u, axis=-1)

    return nonlinear


@dataclass
class ETDRK4:
    """Exponential time differencing RK4 for v' = lin * v + N(v), lin diagonal and real.

    Coefficients follow Kassam & Trefethen (2005): phi-functions of h*lin are evaluated as
    means over n_contour points on a unit circle around each h*lin (upper half only, since
    lin is real), which avoids cancellation where h*lin is near 0.
    """

    lin: np.ndarray
    nonlinear: Nonlinear
    h: float
    n_contour: int = 32

    def __post_init__(self) -> None:
        hl = self.h * self.lin
        self.e, self.e2 = np.exp(hl), np.exp(hl / 2.0)
        r = np.exp(1j * np.pi * (np.arange(1, self.n_contour + 1) - 0.5) / self.n_contour)
        lr = hl[:, None] + r[None, :]  # (n_modes, n_contour)
        ex = np.exp(lr)

        def mean(z: np.ndarray) -> np.ndarray:
            return self.h * np.real(z.mean(axis=1))

        self.q = mean((np.exp(lr / 2.0) - 1.0) / lr)
        self.f1 = mean((-4.0 - lr + ex * (4.0 - 3.0 * lr + lr**2)) / lr**3)
        self.f2 = mean((2.0 + lr + ex * (lr - 2.0)) / lr**3)
        self.f3 = mean((-4.0 - 3.0 * lr - lr**2 + ex * (4.0 - lr)) / lr**3)

    def step(self, v: np.ndarray) -> np.ndarray:
        """Advance Fourier coefficients v (..., n_modes) by one step h (K&T 2005, eq. 2.5)."""
        nv = self.nonlinear(v)
        a = self.e2 * v + self.q * nv
        na = self.nonlinear(a)
        b = self.e2 * v + self.q * na
        nb = self.nonlinear(b)
        c = self.e2 * a + self.q * (2.0 * nb - nv)
        nc = self.nonlinear(c)
        return self.e * v + nv * self.f1 + 2.0 * (na + nb) * self.f2 + nc * self.f3


def integrate_spectral(u0: np.ndarray, lin: np.ndarray, nonlinear: Nonlinear, dt: float,
                       substeps: int, n_save: int, n_burn: int = 0) -> np.ndarray:
    """Integrate grid states u0 (n, nx); discard n_burn saved steps; return (n, n_save, nx)."""
    nx = u0.shape[-1]
    solver = ETDRK4(lin, nonlinear, dt / substeps)
    v = np.fft.rfft(np.asarray(u0, dtype=np.float64), axis=-1)
    for _ in range(n_burn * substeps):
        v = solver.step(v)
    out = np.empty((n_save, *v.shape), dtype=v.dtype)
    out[0] = v
    for i in range(1, n_save):
        for _ in range(substeps):
            v = solver.step(v)
        out[i] = v
    return np.moveaxis(np.fft.irfft(out, n=nx, axis=-1), 0, 1)  # (n, n_save, nx)


def ks_operators(nx: int, length: float) -> tuple[np.ndarray, Nonlinear]:
    """KS u_t + u u_x + u_xx + u_xxxx = 0: lin = k^2 - k^4, no dealiasing (modes with
    k > 1 are damped like k^4, so aliasing errors are negligible, as in K&T 2005)."""
    k = wavenumbers(nx, length)
    return k**2 - k**4, advection(k, nx)


def burgers_operators(nx: int, nu: float) -> tuple[np.ndarray, Nonlinear]:
    """Burgers u_t + u u_x = nu u_xx on [0, 2 pi): lin = -nu k^2, 2/3-rule dealiasing
    (steep fronts put energy near the grid scale, where aliasing would pile it up)."""
    k = wavenumbers(nx, 2.0 * np.pi)
    return -nu * k**2, advection(k, nx, dealias=True)


def grid(nx: int, length: float) -> np.ndarray:
    """The periodic grid x_j = j * length / nx."""
    return np.arange(nx) * (length / nx)


def random_fourier(rng: np.random.Generator, n_traj: int, x: np.ndarray, length: float,
                   modes: int, amp: float) -> np.ndarray:
    """Smooth zero-mean random fields sum_m a_m cos(2 pi m x / length + phi_m), m = 1..modes,
    a_m ~ N(0, 1) / m, each rescaled to max |u| = amp."""
    m = np.arange(1, modes + 1)
    a = rng.normal(size=(n_traj, modes)) / m
    phi = rng.uniform(0.0, 2.0 * np.pi, size=(n_traj, modes))
    arg = 2.0 * np.pi * m[None, :, None] * x[None, None, :] / length + phi[:, :, None]
    u = np.einsum("nm,nmx->nx", a, np.cos(arg))  # (n_traj, nx)
    return amp * u / np.abs(u).max(axis=1, keepdims=True)


def run_ks(n_traj: int, n_steps: int, rng: np.random.Generator,
           params: dict[str, float]) -> np.ndarray:
    """KS trajectories (n_traj, n_steps, nx, 1) from random smooth zero-mean states, after
    the burn-in (transients die out well within 200 time units at L = 22)."""
    nx, length = int(params["nx"]), params["L"]
    u0 = random_fourier(rng, n_traj, grid(nx, length), length, 4, params["amp"])
    lin, nonlinear = ks_operators(nx, length)
    n_burn = int(round(params["burn_in"] / params["dt"]))
    states = integrate_spectral(u0, lin, nonlinear, params["dt"], int(params["substeps"]),
                                n_steps, n_burn)
    return states[..., None]


def run_burgers(n_traj: int, n_steps: int, rng: np.random.Generator,
                params: dict[str, float]) -> np.ndarray:
    """Burgers trajectories (n_traj, n_steps, nx, 1): random smooth waves of a few modes plus
    a random mean (uniform in +-amp/4, which the flow conserves), steepening into viscous
    shocks that then decay. No burn-in: the transient is the dynamics."""
    nx = int(params["nx"])
    x = grid(nx, 2.0 * np.pi)
    u0 = random_fourier(rng, n_traj, x, 2.0 * np.pi, int(params["modes"]), params["amp"])
    u0 += rng.uniform(-0.25, 0.25, size=(n_traj, 1)) * params["amp"]
    lin, nonlinear = burgers_operators(nx, params["nu"])
    states = integrate_spectral(u0, lin, nonlinear, params["dt"], int(params["substeps"]), n_steps)
    return states[..., None]


def ks_lyapunov_time(params: dict[str, float]) -> float | None:
    """1 / lambda_max for a domain length in the table (L = 22: ~23.3); None otherwise."""
    lam = KS_LAMBDA_MAX.get(float(params["L"]))
    return None if lam is None else 1.0 / lam


def field_grid(params: dict[str, float], length_key: str | None) -> np.ndarray:
    """Grid of a field system: length from params[length_key], or 2 pi when None."""
    length = params[length_key] if length_key else 2.0 * np.pi
    return grid(int(params["nx"]), length)
