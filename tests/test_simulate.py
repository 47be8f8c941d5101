"""Reference simulators: known answers (scipy, Cole-Hopf, decaying and forced Fourier modes of
2-D Navier-Stokes), conservation, convergence order, determinism, stored metadata and errors."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.integrate import solve_ivp

from sciformer.errors import ConfigError
from sciformer.io.trajectories import TrajectoryFile
from sciformer.simulate import (
    SYSTEMS,
    odes,
    pdes,
    pdes2d,
    resolve_params,
    simulate,
    simulate_to_file,
)


def _scipy_endpoint(rhs, x0: np.ndarray, t_end: float) -> np.ndarray:
    """High-accuracy reference: DOP853 at rtol = atol = 1e-10."""
    sol = solve_ivp(lambda t, x: rhs(x), (0.0, t_end), x0, method="DOP853", rtol=1e-10, atol=1e-10)
    return sol.y[:, -1]


def test_lorenz63_matches_scipy_over_one_time_unit():
    res = simulate("lorenz63", 3, 101, seed=0)  # dt = 0.01, so step 100 is t = 1
    for i in range(3):
        ref = _scipy_endpoint(lambda x: odes.lorenz63_rhs(x, 10.0, 28.0, 8.0 / 3.0),
                              res.states[i, 0], 1.0)
        np.testing.assert_allclose(res.states[i, 100], ref, atol=2e-5)


def test_lorenz96_matches_scipy_over_one_time_unit():
    res = simulate("lorenz96", 2, 21, seed=1)  # dt = 0.05, so step 20 is t = 1
    assert res.states.shape == (2, 21, 40)
    for i in range(2):
        ref = _scipy_endpoint(lambda x: odes.lorenz96_rhs(x, 8.0), res.states[i, 0], 1.0)
        np.testing.assert_allclose(res.states[i, 20], ref, atol=2e-4)


def test_rk4_error_shrinks_at_fourth_order():
    x0 = np.array([[1.0, 2.0, 20.0]])

    def rhs(x):
        return odes.lorenz63_rhs(x, 10.0, 28.0, 8.0 / 3.0)

    ref = _scipy_endpoint(lambda x: rhs(x[None])[0], x0[0], 1.0)
    errs = [np.abs(odes.rk4_trajectory(rhs, x0, 0.1, sub, 11)[0, -1] - ref).max()
            for sub in (5, 10)]  # h = 0.02, 0.01
    assert errs[1] < errs[0]
    assert errs[0] / errs[1] > 12.0  # 2^4 = 16 for a fourth-order method


def test_ks_etdrk4_error_shrinks_at_high_order():
    nx, length = 64, 22.0
    lin, nonlinear = pdes.ks_operators(nx, length)
    u0 = pdes.random_fourier(np.random.default_rng(3), 2, pdes.grid(nx, length), length, 4, 1.0)

    def run(h: float) -> np.ndarray:
        return pdes.integrate_spectral(u0, lin, nonlinear, 5.0, int(round(5.0 / h)), 2)[:, -1]

    ref = run(0.005)
    errs = [np.abs(run(h) - ref).max() for h in (0.1, 0.05)]
    assert errs[1] < errs[0] < 1e-2
    assert errs[0] / errs[1] > 8.0  # observed ~12-16: order well above 3


def test_burgers_matches_cole_hopf_exact_solution():
    # Cole-Hopf: phi = 1 + a exp(-nu t) cos x solves phi_t = nu phi_xx, so
    # u = -2 nu phi_x / phi is an exact periodic solution of u_t + u u_x = nu u_xx.
    nu, a, nx = 0.1, 0.5, 64
    x = pdes.grid(nx, 2.0 * np.pi)

    def exact(t: float) -> np.ndarray:
        e = a * np.exp(-nu * t)
        return 2.0 * nu * e * np.sin(x) / (1.0 + e * np.cos(x))

    lin, nonlinear = pdes.burgers_operators(nx, nu)
    states = pdes.integrate_spectral(exact(0.0)[None], lin, nonlinear, 0.5, 10, 11)
    for i in range(11):
        np.testing.assert_allclose(states[0, i], exact(0.5 * i), atol=1e-9)


@pytest.mark.parametrize("system", ["ks", "burgers"])
def test_field_systems_conserve_spatial_mean(system):
    params = {"burn_in": 0.0} if system == "ks" else {}
    res = simulate(system, 3, 200, seed=2, params=params)
    means = res.states[..., 0].mean(axis=-1)  # (n_traj, n_steps)
    assert np.abs(means - means[:, :1]).max() < 1e-10
    if system == "burgers":  # a random nonzero mean, so conservation is not trivially 0 = 0
        assert np.abs(means[:, 0]).min() > 1e-4


def test_ks_conserves_a_nonzero_mean():
    nx, length = 64, 22.0
    lin, nonlinear = pdes.ks_operators(nx, length)
    x = pdes.grid(nx, length)
    u0 = 0.3 + pdes.random_fourier(np.random.default_rng(0), 2, x, length, 4, 1.0)
    states = pdes.integrate_spectral(u0, lin, nonlinear, 0.25, 5, 200)
    np.testing.assert_allclose(states.mean(axis=-1), 0.3, atol=1e-10)


@pytest.mark.parametrize("system", list(SYSTEMS))
def test_determinism_by_seed(system):
    params = {} if system == "burgers" else {"burn_in": 5.0 if system == "ks" else 1.0}
    if system == "ns2d":
        params["nx"] = 16
    a = simulate(system, 2, 30, seed=7, params=params).states
    b = simulate(system, 2, 30, seed=7, params=params).states
    c = simulate(system, 2, 30, seed=8, params=params).states
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.isfinite(a).all()


def test_shapes_and_metadata():
    res = simulate("ks", 2, 10, seed=0, params={"nx": 32, "burn_in": 10.0})
    assert res.states.shape == (2, 10, 32, 1)
    assert res.field_names == ["u"] and res.x.shape == (32,) and res.x[1] == pytest.approx(22 / 32)
    assert res.lyapunov_time == pytest.approx(1 / 0.043)
    quick = {"burn_in": 0.0}
    assert simulate("lorenz63", 1, 5, 0, quick).lyapunov_time == pytest.approx(1.104, abs=1e-3)
    assert simulate("lorenz96", 1, 5, 0, quick).lyapunov_time == pytest.approx(1 / 1.68)
    assert simulate("lorenz96", 1, 5, 0, {**quick, "F": 5.0}).lyapunov_time is None
    assert simulate("lorenz63", 1, 5, 0, {**quick, "rho": 35}).lyapunov_time is None
    assert simulate("burgers", 1, 5, seed=0).lyapunov_time is None
    assert pdes2d.ns2d_lyapunov_time(pdes2d.NS2D_DEFAULTS) == pytest.approx(1 / 0.123)
    assert pdes2d.ns2d_lyapunov_time({**pdes2d.NS2D_DEFAULTS, "nx": 32}) is None
    assert pdes2d.ns2d_lyapunov_time({**pdes2d.NS2D_DEFAULTS, "nu": 0.01}) is None
    l96 = simulate("lorenz96", 1, 5, 0, {**quick, "n": 8})
    assert l96.states.shape == (1, 5, 8) and l96.field_names == [f"x{i}" for i in range(8)]


def test_params_stored_in_file(tmp_path):
    path = simulate_to_file("lorenz63", tmp_path / "l63.h5", 3, 40, seed=4,
                            params={"rho": 30.0, "burn_in": 1.0})
    with TrajectoryFile(path) as tf:
        m = tf.meta
        assert (m.n_traj, m.n_time, m.state_shape) == (3, 40, (3,))
        assert m.system == "lorenz63" and m.dt == pytest.approx(0.01)
        assert m.field_names == ["x", "y", "z"] and m.lyapunov_time is None
        assert m.param_names == list(SYSTEMS["lorenz63"].default_params)
        rho = m.params[:, m.param_names.index("rho")]
        np.testing.assert_array_equal(rho, [30.0, 30.0, 30.0])
        expected = simulate("lorenz63", 3, 40, seed=4, params={"rho": 30.0, "burn_in": 1.0})
        np.testing.assert_allclose(tf.trajectory(2), expected.states[2], rtol=1e-6)


def test_field_file_has_grid_and_lyapunov_time(tmp_path):
    path = simulate_to_file("ks", tmp_path / "ks.h5", 2, 12, seed=0, params={"burn_in": 5.0})
    with TrajectoryFile(path) as tf:
        assert tf.meta.state_shape == (64, 1) and tf.meta.field_names == ["u"]
        assert tf.meta.lyapunov_time == pytest.approx(23.26, abs=0.01)
        np.testing.assert_allclose(tf.meta.x, pdes.grid(64, 22.0))


def test_unknown_system_lists_valid_names():
    with pytest.raises(ConfigError, match="lorenz63, lorenz96, ks, burgers"):
        simulate("lorenz84", 1, 10, seed=0)


def test_unknown_param_lists_valid_params():
    with pytest.raises(ConfigError, match=r"'nu'.*valid params: L, nx"):
        simulate("ks", 1, 10, seed=0, params={"nu": 0.1})


@pytest.mark.parametrize("system, params, phrase", [
    ("ks", {"nx": 63}, "even"),
    ("burgers", {"nx": 4}, "integer >= 8"),
    ("lorenz63", {"substeps": 1.5}, "integer"),
    ("lorenz63", {"dt": -0.01}, "positive"),
    ("burgers", {"nu": float("nan")}, "finite"),
    ("lorenz96", {"n": 3}, "integer >= 4"),
    ("lorenz63", {"burn_in": 0.005}, "whole number"),
    ("lorenz63", {"sigma": "ten"}, "number"),
])
def test_bad_param_values(system, params, phrase):
    with pytest.raises(ConfigError, match=phrase) as info:
        resolve_params(system, params)
    assert system in str(info.value)


def test_bad_sizes():
    with pytest.raises(ConfigError, match="n_traj"):
        simulate("lorenz63", 0, 10, seed=0)


# ---- 2-D Navier-Stokes (Kolmogorov flow) ----------------------------------------------------
NS_FIXED = {**pdes2d.NS2D_DEFAULTS, "cfl": 1e9}  # the CFL limit never overrides `substeps`


def _ns_grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Meshgrid (X, Y) of the periodic 2 pi grid, ij indexing like the states."""
    axis = np.arange(n) * (2.0 * np.pi / n)
    return np.meshgrid(axis, axis, indexing="ij")


def test_ns2d_advection_matches_the_analytic_jacobian():
    # omega = cos x + cos 2y: psi = cos x + cos(2y) / 4, u = psi_y = -sin(2y) / 2,
    # v = -psi_x = sin x, so -(u omega_x + v omega_y) = 1.5 sin x sin 2y.
    grid = pdes2d.SpectralGrid(32)
    x, y = _ns_grid(32)
    adv = grid.to_grid(grid.advection(grid.to_fourier(np.cos(x) + np.cos(2 * y))))
    np.testing.assert_allclose(adv, 1.5 * np.sin(x) * np.sin(2 * y), atol=1e-12)


def test_ns2d_taylor_green_decays_exactly_and_error_is_second_order():
    # 2 sin x sin y lies on one wavenumber shell, so advection vanishes and the vorticity
    # decays as exp(-(2 nu + drag) t); Crank-Nicolson's error shrinks 4x per halved step.
    params = {**NS_FIXED, "nu": 0.05, "drag": 0.1, "forcing": 0.0, "dt": 1.0}
    x, y = _ns_grid(16)
    w0 = 2 * np.sin(x) * np.sin(y)
    exact = w0 * np.exp(-(2 * 0.05 + 0.1) * 4.0)
    errs = [np.abs(pdes2d.integrate(w0[None], {**params, "substeps": s}, 5)[0, 4] - exact).max()
            for s in (2, 4)]
    assert errs[1] < 2e-4
    assert 3.8 < errs[0] / errs[1] < 4.2


def test_ns2d_forced_flow_approaches_the_laminar_kolmogorov_solution():
    # From rest, forcing -A k cos(k y) drives one mode (no advection):
    # omega(t) = -A k cos(k y) (1 - exp(-lam t)) / lam with lam = nu k^2 + drag.
    params = {**NS_FIXED, "nu": 0.05, "drag": 0.1, "forcing": 0.7, "kf": 2.0, "dt": 0.5,
              "substeps": 10}
    _, y = _ns_grid(16)
    states = pdes2d.integrate(np.zeros((1, 16, 16)), params, 9)[0]  # t = 0 .. 4
    lam = 0.05 * 4 + 0.1
    for i, t in enumerate(np.arange(9) * 0.5):
        exact = -0.7 * 2 * np.cos(2 * y) * (1 - np.exp(-lam * t)) / lam
        np.testing.assert_allclose(states[i], exact, atol=2e-4)


def test_ns2d_turbulent_error_shrinks_at_second_order():
    params = {**NS_FIXED, "nx": 32.0, "dt": 1.0}
    grid = pdes2d.SpectralGrid(32)
    w0 = pdes2d.random_vorticity(np.random.default_rng(0), 2, grid, 1.0)  # max |omega| ~ 3

    def run(substeps: int) -> np.ndarray:
        return pdes2d.integrate(w0, {**params, "substeps": substeps}, 2)[:, -1]

    ref = run(512)
    errs = [np.abs(run(s) - ref).max() for s in (32, 64)]
    assert errs[1] < errs[0] < 1e-2
    assert errs[0] / errs[1] > 3.5  # second order: 4 (observed 4.0)


def test_ns2d_inviscid_flow_conserves_mean_energy_and_enstrophy():
    # Unforced, inviscid, undamped: the dealiased Galerkin system conserves the mean vorticity
    # exactly, and energy and enstrophy up to the time-stepping error, which is second order.
    params = {**pdes2d.NS2D_DEFAULTS, "nu": 0.0, "drag": 0.0, "forcing": 0.0, "nx": 32.0,
              "dt": 0.5}
    grid = pdes2d.SpectralGrid(32)
    w0 = 0.3 + pdes2d.random_vorticity(np.random.default_rng(1), 2, grid, 1.0)

    def drifts(cfl: float) -> tuple[float, float]:
        states = pdes2d.integrate(w0, {**params, "cfl": cfl}, 9)  # (2, 9, 32, 32), t = 0 .. 4
        np.testing.assert_allclose(states.mean(axis=(-2, -1)), 0.3, atol=1e-12)
        u, v = grid.velocity(grid.to_fourier(states))
        energy = (u**2 + v**2).mean(axis=(-2, -1))
        enstrophy = ((states - 0.3) ** 2).mean(axis=(-2, -1))
        return tuple(float(np.abs(q / q[:, :1] - 1).max()) for q in (energy, enstrophy))

    coarse, fine = drifts(0.3), drifts(0.15)
    assert coarse[0] < 5e-3 and coarse[1] < 1e-2  # observed 2.3e-3, 8.6e-3
    assert fine[0] < coarse[0] / 3 and fine[1] < coarse[1] / 3.5


def test_ns2d_cfl_limit_adds_substeps_for_fast_flow():
    grid = pdes2d.SpectralGrid(32)
    stepper = pdes2d.CNAB2(grid, 0.01, 0.0, np.zeros(grid.k2.shape))
    x, y = _ns_grid(32)
    w_hat = grid.to_fourier(4.0 * np.cos(y))  # u = psi_y = -4 sin y: max |u| = 4
    dx = 2 * np.pi / 32
    assert stepper.substeps(w_hat, 1.0, 2, 0.5) == int(np.ceil(4.0 / (0.5 * dx)))
    assert stepper.substeps(w_hat * 1e-3, 1.0, 2, 0.5) == 2


def test_ns2d_file_opens_in_xarray_and_the_reader(tmp_path):
    path = simulate_to_file("ns2d", tmp_path / "ns.h5", 2, 6, seed=0,
                            params={"nx": 16, "burn_in": 1.0})
    expected = simulate("ns2d", 2, 6, seed=0, params={"nx": 16, "burn_in": 1.0})
    assert expected.states.shape == (2, 6, 16, 16, 1)
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert ds["states"].dims == ("trajectory", "time", "x", "y", "field")
        assert list(ds["field"].values) == ["vorticity"] and ds.attrs["system"] == "ns2d"
        np.testing.assert_allclose(ds["y"].values, np.arange(16) * 2 * np.pi / 16)
        np.testing.assert_allclose(ds["states"].values, expected.states, rtol=1e-6, atol=1e-6)
    with TrajectoryFile(path) as tf:
        m = tf.meta
        assert (m.state_shape, m.space_dims, m.field_names) == ((16, 16, 1), ("x", "y"),
                                                                 ["vorticity"])
        assert m.dt == pytest.approx(0.25) and m.param_names[0] == "nu"
        np.testing.assert_allclose(m.coords["x"], m.coords["y"])
        np.testing.assert_allclose(tf.window(1, 2, 3), expected.states[1, 2:5], rtol=1e-6,
                                   atol=1e-6)


def test_ns2d_batches_cover_every_trajectory_once_and_do_not_depend_on_cores():
    """The simulator's batches tile 0..n in order, at most MAX_BATCH each, two or more from
    two trajectories on; a trajectory is the same whichever batch it is simulated in."""
    for n in (1, 2, 3, 6, 14, 17, 40):
        parts = pdes2d.batches(n)
        assert [i for b in parts for i in range(b.start, b.stop)] == list(range(n))
        assert all(0 < b.stop - b.start <= pdes2d.MAX_BATCH for b in parts)
        assert len(parts) >= min(n, 2)
    params = {**pdes2d.NS2D_DEFAULTS, "nx": 16.0, "burn_in": 0.5}
    both = pdes2d.run_ns2d(2, 3, np.random.default_rng(0), params)  # two batches of one
    grid = pdes2d.SpectralGrid(16)
    w0 = pdes2d.random_vorticity(np.random.default_rng(0), 2, grid, params["amp"])
    alone = pdes2d.integrate(w0[1:], params, 3, 2)[..., None]
    np.testing.assert_array_equal(both[1:], alone)


def test_ns2d_threads_keep_the_callers_numpy_error_settings(monkeypatch):
    """The batches run on worker threads with the caller's np.errstate (numpy keeps it per
    thread), so `simulate`'s silenced blow-up warnings stay silenced."""
    seen = []
    monkeypatch.setattr(pdes2d, "integrate", lambda w0, *a: seen.append(np.geterr()) or w0)
    with np.errstate(over="ignore", invalid="ignore"):
        pdes2d.run_ns2d(3, 1, np.random.default_rng(0), {**pdes2d.NS2D_DEFAULTS, "nx": 8.0})
    assert len(seen) == 2 and all(e["over"] == e["invalid"] == "ignore" for e in seen)
