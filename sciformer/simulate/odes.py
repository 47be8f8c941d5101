"""Lorenz-63 and Lorenz-96: chaotic ODE reference systems, integrated with classical RK4.

All trajectories of a batch are integrated together as one (n_traj, d) array, so the cost is a
few numpy operations per RK4 stage however many trajectories there are. Each saved step of
size `dt` is split into `substeps` RK4 steps; a burn-in of `burn_in` time units is discarded so
that saved states lie on the attractor.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Rhs = Callable[[np.ndarray], np.ndarray]

# Lorenz (1963), J. Atmos. Sci. 20, 130: the classical chaotic parameters.
LORENZ63_DEFAULTS: dict[str, float] = {
    "sigma": 10.0, "rho": 28.0, "beta": 8.0 / 3.0,
    "dt": 0.01, "substeps": 2.0, "burn_in": 10.0,
}
# Lorenz (1996), "Predictability: a problem partly solved"; N = 40, F = 8 as in Lorenz &
# Emanuel (1998) and most forecasting benchmarks.
LORENZ96_DEFAULTS: dict[str, float] = {
    "n": 40.0, "F": 8.0, "dt": 0.05, "substeps": 5.0, "burn_in": 10.0,
}
# Largest Lyapunov exponent of Lorenz-63 at the classical parameters, lambda_max ~ 0.9056
# (Sprott, "Chaos and Time-Series Analysis", 2003, table of exponents).
LORENZ63_LAMBDA_MAX = 0.9056
# Largest Lyapunov exponent of Lorenz-96 with N = 40, keyed by forcing F:
# F = 8 -> 1.68 (Vlachas et al. 2020, Neural Networks 126, 191; Pathak et al. 2018).
LORENZ96_LAMBDA_MAX: dict[float, float] = {8.0: 1.68}


def lorenz63_rhs(x: np.ndarray, sigma: float, rho: float, beta: float) -> np.ndarray:
    """Lorenz-63 vector field for states (..., 3):
    x' = sigma (y - x), y' = x (rho - z) - y, z' = x y - beta z."""
    u, v, w = x[..., 0], x[..., 1], x[..., 2]
    return np.stack([sigma * (v - u), u * (rho - w) - v, u * v - beta * w], axis=-1)


def lorenz96_rhs(x: np.ndarray, forcing: float) -> np.ndarray:
    """Lorenz-96 vector field for states (..., N), cyclic indices:
    x_i' = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F."""
    n = x.shape[-1]
    xp = np.concatenate([x[..., -2:], x, x[..., :1]], axis=-1)  # (..., n + 3): cyclic padding
    # xp[..., j + 2] = x_j, so x_{i-2}, x_{i-1}, x_{i+1} are slices starting at 0, 1, 3.
    return (xp[..., 3:n + 3] - xp[..., 0:n]) * xp[..., 1:n + 1] - x + forcing


def rk4_step(rhs: Rhs, x: np.ndarray, h: float) -> np.ndarray:
    """One classical fourth-order Runge-Kutta step of size h."""
    k1 = rhs(x)
    k2 = rhs(x + 0.5 * h * k1)
    k3 = rhs(x + 0.5 * h * k2)
    k4 = rhs(x + h * k3)
    return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def rk4_trajectory(rhs: Rhs, x0: np.ndarray, dt: float, substeps: int, n_save: int,
                   n_burn: int = 0) -> np.ndarray:
    """Integrate x0 (n, d); discard n_burn saved steps, then return (n, n_save, d).

    Saved step 0 is the state after the burn-in; consecutive saved steps are dt apart, each
    made of `substeps` RK4 steps of size dt / substeps.
    """
    h = dt / substeps
    x = np.array(x0, dtype=np.float64)
    for _ in range(n_burn * substeps):
        x = rk4_step(rhs, x, h)
    out = np.empty((n_save, *x.shape))
    out[0] = x
    for i in range(1, n_save):
        for _ in range(substeps):
            x = rk4_step(rhs, x, h)
        out[i] = x
    return np.moveaxis(out, 0, 1)  # (n_save, n, d) -> (n, n_save, d)


def _burn_steps(params: dict[str, float]) -> int:
    """Number of saved steps that make up the burn-in time."""
    return int(round(params["burn_in"] / params["dt"]))


def run_lorenz63(n_traj: int, n_steps: int, rng: np.random.Generator,
                 params: dict[str, float]) -> np.ndarray:
    """Lorenz-63 trajectories (n_traj, n_steps, 3) from random initial states near the
    attractor (z around 25), after the burn-in."""
    x0 = rng.normal(0.0, 5.0, size=(n_traj, 3)) + np.array([0.0, 0.0, 25.0])
    p = params

    def rhs(x: np.ndarray) -> np.ndarray:
        return lorenz63_rhs(x, p["sigma"], p["rho"], p["beta"])

    return rk4_trajectory(rhs, x0, p["dt"], int(p["substeps"]), n_steps, _burn_steps(p))


def run_lorenz96(n_traj: int, n_steps: int, rng: np.random.Generator,
                 params: dict[str, float]) -> np.ndarray:
    """Lorenz-96 trajectories (n_traj, n_steps, n): the rest state x_i = F plus unit Gaussian
    noise, integrated past the burn-in."""
    n = int(params["n"])
    x0 = params["F"] + rng.normal(0.0, 1.0, size=(n_traj, n))

    def rhs(x: np.ndarray) -> np.ndarray:
        return lorenz96_rhs(x, params["F"])

    return rk4_trajectory(rhs, x0, params["dt"], int(params["substeps"]), n_steps,
                          _burn_steps(params))


def lorenz63_lyapunov_time(params: dict[str, float]) -> float | None:
    """1 / lambda_max at the classical parameters (~1.104 time units); None otherwise."""
    classical = all(np.isclose(params[k], LORENZ63_DEFAULTS[k]) for k in ("sigma", "rho", "beta"))
    return 1.0 / LORENZ63_LAMBDA_MAX if classical else None


def lorenz96_lyapunov_time(params: dict[str, float]) -> float | None:
    """1 / lambda_max for N = 40 at a forcing in the table (F = 8: ~0.595); None otherwise."""
    lam = LORENZ96_LAMBDA_MAX.get(float(params["F"])) if int(params["n"]) == 40 else None
    return None if lam is None else 1.0 / lam
