"""The dynamics zoo: library vector fields against hand-computed values, integration accuracy,
the Lyapunov estimator on known answers, acceptance checks, held-out exclusion and the corpus
file (xarray per group, lazy reader, one-system trajectory files)."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import xarray as xr
from scipy.integrate import solve_ivp

from sciformer.errors import ConfigError
from sciformer.io.trajectories import TrajectoryFile
from sciformer.simulate import odes, simulate_zoo, write_system_trajectories, zoo
from sciformer.simulate.lyapunov import largest_lyapunov
from sciformer.simulate.systems import HELD_OUT, LIBRARY, FlowSystem, training_systems
from sciformer.simulate.zoo_io import ZooSettings, iter_zoo, read_zoo_attrs, zoo_index

S1, S2, S3, S4, S5, S6 = (math.sin(k) for k in range(1, 7))
# f(1, 2, 3[, 4, 5, 6]) at the default parameters, worked out by hand from each system's
# equations (see the docstrings in sciformer/simulate/systems.py).
HAND = {
    "rossler": [-5, 1.4, 0.2 + 3 * (1 - 5.7)],
    "hyper_rossler": [-5, 5.5, 6, -1.3],
    "chen": [35, 46, -7], "lu": [36, 37, -7], "hyper_chen": [39, 28, -7, 8],
    "hyper_lu": [40, 37, -7, 7], "lorenz84": [-11.25, -11, 8], "rucklidge": [5.4, 1, 1],
    "shimizu_morioka": [2, -3.5, -0.35], "burke_shaw": [-30, -32, 24.272],
    "chen_lee": [-1, -17, -1.14 + 2 / 3], "newton_leipnik": [61.6, 13.2, -9.475],
    "dadras": [15.2, 3.4, -23], "halvorsen": [-25.27, -27.54, -16.81],
    "aizawa": [-4.7, 8.1, -14.0], "rabinovich_fabrikant": [6.87, 10.74, -18.6],
    "chua_cubic": [10 * (2 + 5 / 48), 2, -32],
    "thomas": [S2 - 0.18, S3 - 0.36, S1 - 0.54],
    "labyrinth5": [S2 - 0.18, S3 - 0.36, S4 - 0.54, S5 - 0.72, S1 - 0.9],
    "labyrinth6": [S2 - 0.18, S3 - 0.36, S4 - 0.54, S5 - 0.72, S6 - 0.9, S1 - 1.08],
    "genesio_tesi": [2, 3, -3.52], "arneodo": [2, 3, -5.5], "moore_spiegel": [2, 3, -21],
    "duffing_ueda": [2, 21.4, -4, 3],
    "sprott_b": [6, -1, -1], "sprott_c": [6, -1, 0], "sprott_d": [-2, 4, 15],
    "sprott_e": [6, -1, -3], "sprott_f": [5, 0, -2], "sprott_g": [3.4, 1, 1],
    "sprott_h": [7, 2, -2], "sprott_i": [-0.4, 4, 2], "sprott_j": [6, -1, 5],
    "sprott_k": [-1, -1, 1.9], "sprott_l": [13.7, -1.1, 0], "sprott_m": [-3, -3, 5.4],
    "sprott_n": [-4, 10, -3], "sprott_o": [2, -2, 9.4], "sprott_p": [8.4, 3, 3],
    "sprott_q": [-3, -1, 8.6], "sprott_r": [-1.1, 3.4, -1], "sprott_s": [-9, 10, 2],
}
FAST = ZooSettings(n_traj=2, n_time=64, burn_scales=10)  # tiny corpora for tests


def _stuart_landau(x: np.ndarray) -> np.ndarray:
    """Hopf normal form: limit cycle r = 1, transverse exponent -2 (r' = r - r^3)."""
    a, b = x[..., 0], x[..., 1]
    r2 = a * a + b * b
    return np.stack([a - b - a * r2, a + b - b * r2], axis=-1)


def _van_der_pol(x: np.ndarray, p: dict | None = None) -> np.ndarray:
    a, b = x[..., 0], x[..., 1]
    return np.stack([b, (1 - a * a) * b - a], axis=-1)


VDP = FlowSystem("van_der_pol", _van_der_pol, {}, (2.0, 0.0), 6.7, "Van der Pol (1926)")


def test_hand_table_covers_the_library():
    assert set(HAND) == set(LIBRARY)


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_vector_field_matches_hand_computed_value(name):
    flow = LIBRARY[name]
    x = np.arange(1.0, flow.dim + 1.0)
    np.testing.assert_allclose(flow(x), HAND[name], rtol=1e-12, atol=1e-12)
    batch = np.stack([x, x])  # (2, d): vectorised over a batch
    np.testing.assert_allclose(flow(batch), [HAND[name]] * 2, rtol=1e-12, atol=1e-12)


def test_library_dimensions_held_out_and_shipped_systems():
    assert {f.dim for f in LIBRARY.values()} == {3, 4, 5, 6}
    assert set(HELD_OUT) <= set(LIBRARY) and len(HELD_OUT) == 5
    assert not {"lorenz63", "lorenz96"} & set(LIBRARY)
    assert {s.name for s in training_systems()} == set(LIBRARY) - set(HELD_OUT)


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_rk4_step_matches_dop853_over_one_timescale(name):
    flow = LIBRARY[name]
    rhs = functools.partial(flow.rhs, p=flow.params)
    # 5 timescales of transient to reach the attractor, then one timescale compared.
    tr = odes.rk4_trajectory(rhs, np.array([flow.x0]), flow.timescale / 20,
                             max(1, flow.steps_per_timescale // 20), 60)[0]
    scale = tr.std(axis=0).max()
    ref = solve_ivp(lambda t, x: rhs(x), (0.0, flow.timescale), tr[-1], method="DOP853",
                    rtol=1e-11, atol=1e-11 * scale).y[:, -1]
    ours = odes.rk4_trajectory(rhs, tr[-1:], flow.timescale, flow.steps_per_timescale, 2)[0, -1]
    assert np.abs(ours - ref).max() < 1e-5 * scale


def test_lyapunov_lorenz63_matches_published_value():
    rng = np.random.default_rng(0)
    x0 = rng.normal(0.0, 5.0, size=(8, 3)) + np.array([0.0, 0.0, 25.0])

    def rhs(x):
        return odes.lorenz63_rhs(x, 10.0, 28.0, 8.0 / 3.0)

    for remove_flow in (False, True):
        est = largest_lyapunov(rhs, x0, 0.01, 500, 10, 100, remove_flow=remove_flow)
        assert est.mean == pytest.approx(odes.LORENZ63_LAMBDA_MAX, rel=0.1)  # 0.9056
        assert est.elapsed == pytest.approx(50.0)


def test_lyapunov_limit_cycle_is_zero_and_transverse_exponent_with_flow_removed():
    x0 = np.random.default_rng(1).normal(size=(3, 2))
    plain = largest_lyapunov(_stuart_landau, x0, 0.01, 200, 10, 100)
    np.testing.assert_allclose(plain.per_trajectory, 0.0, atol=1e-3)
    quotient = largest_lyapunov(_stuart_landau, x0, 0.01, 200, 10, 100, remove_flow=True)
    np.testing.assert_allclose(quotient.per_trajectory, -2.0, atol=0.02)
    vdp = largest_lyapunov(_van_der_pol, x0, 0.01, 300, 10, 200)
    np.testing.assert_allclose(vdp.per_trajectory, 0.0, atol=0.01)
    assert largest_lyapunov(_van_der_pol, x0, 0.01, 300, 10, 200,
                            remove_flow=True).per_trajectory.max() < -0.5


def test_lyapunov_stable_fixed_point_is_the_largest_eigenvalue():
    x0 = np.random.default_rng(2).normal(size=(2, 2))
    est = largest_lyapunov(lambda x: x * np.array([-1.0, -2.0]), x0, 0.01, 100, 10, 20)
    np.testing.assert_allclose(est.per_trajectory, -1.0, atol=0.01)


def test_estimate_period_of_sines_and_of_a_constant():
    t = np.arange(4000) * 0.01
    states = np.stack([np.sin(2 * np.pi * t / 4.0), np.cos(2 * np.pi * t / 1.5)], -1)[None]
    assert zoo.estimate_period(states, 0.01) == pytest.approx(1.5, abs=0.01)  # fastest
    assert zoo.estimate_period(np.ones((1, 100, 3)), 0.1) == math.inf


def test_coupled_system_is_a_skew_product_with_recorded_coupling():
    chen, lu = LIBRARY["chen"], LIBRARY["lu"]
    s = zoo.coupled_system(chen, lu, chen.params, lu.params, np.random.default_rng(3), (1, 2))
    c = s.coupling
    x = np.arange(1.0, 7.0)  # driver (1, 2, 3), response (4, 5, 6)
    expect_r = c["time_scale"] * lu(x[3:])
    j, i = c["response_channel"] - 3, c["driver_channel"]
    expect_r[j] += c["strength"] * (c["gain"] * x[i] + c["offset"] - x[3 + j])
    np.testing.assert_allclose(s.rhs(x), np.concatenate([HAND["chen"], expect_r]), rtol=1e-12)
    assert s.name == "chen>lu" and s.dim == 6 and len(s.field_names) == 6
    assert c["time_scale"] == pytest.approx(lu.timescale / chen.timescale)
    assert c["strength"] == pytest.approx(c["kappa"] / chen.timescale)


def test_chaotic_system_accepted_with_its_lyapunov_time():
    run = zoo.check_system(zoo.integrate_system(zoo.single_system(LIBRARY["sprott_b"]), 2, 200,
                                                50, np.random.default_rng(0), 20))
    assert run.reason is None and run.states.shape == (2, 200, 3)
    assert run.dt == pytest.approx(run.timescale / 50)
    assert run.lyapunov_exponent == pytest.approx(0.21, rel=0.25)  # Sprott (1994): 0.21
    assert run.lyapunov_time == pytest.approx(1 / run.lyapunov_exponent)


def test_too_coarse_step_is_refined_until_saved_steps_are_accurate():
    system = zoo.single_system(LIBRARY["rossler"])
    system.h_max = system.timescale / 50  # 8 x coarser than the library's step
    run = zoo.integrate_system(system, 2, 256, 50, np.random.default_rng(0), 10)
    assert run.reason is None and run.details["refinements"] >= 1
    assert run.h <= system.h_max / 2 and run.local_error <= zoo.LOCAL_TOLERANCE
    first = zoo._integrate_once(system, system.h_max, 2, 256, 50, np.random.default_rng(0), 10)
    assert first.local_error > zoo.LOCAL_TOLERANCE  # what the refinement fixed


@pytest.mark.parametrize("params, reason", [({"b": 0.25}, "not chaotic"),  # periodic Thomas
                                            ({"b": -0.05}, "diverged")])  # anti-damped
def test_non_chaotic_or_unbounded_perturbations_are_rejected(params, reason):
    system = zoo.single_system(LIBRARY["thomas"], params)
    run = zoo.check_system(zoo.integrate_system(system, 2, 64, 50, np.random.default_rng(0), 10))
    assert run.reason == reason


def test_decay_to_a_fixed_point_is_rejected():
    sink = FlowSystem("sink", lambda x, p: -x, {}, (1.0, 1.0, 1.0), 1.0, "linear sink")
    run = zoo.check_system(zoo.integrate_system(zoo.single_system(sink), 2, 64, 50,
                                                np.random.default_rng(0), 60))
    assert run.reason in {"not oscillating", "collapsed"}


def test_zoo_keeps_only_chaotic_systems(tmp_path):
    chen = replace(LIBRARY["chen"])
    summary = simulate_zoo(3, tmp_path / "z.h5", seed=0, library=[VDP, chen],
                           settings=replace(FAST, coupled_fraction=0.0))
    entries = zoo_index(summary.path)
    assert [e.system for e in entries] == ["chen"] * 3
    assert summary.rejections.get("not chaotic", 0) >= 1  # every Van der Pol draw
    assert summary.attempts == 3 + sum(summary.rejections.values())
    assert all(0 < e.lyapunov_time < 2.0 for e in entries)  # Chen: lambda ~ 2


def test_zoo_gives_up_without_a_file_when_nothing_is_chaotic(tmp_path):
    with pytest.raises(ConfigError, match="only 0 of 2 systems accepted in 3 draws"):
        simulate_zoo(2, tmp_path / "z.h5", seed=0, library=[VDP], settings=FAST,
                     max_attempts=3)
    assert not list(tmp_path.iterdir())


def test_zoo_refuses_a_library_with_held_out_systems(tmp_path):
    with pytest.raises(ConfigError, match="held-out system"):
        simulate_zoo(1, tmp_path, seed=0, library=[LIBRARY["rossler"], LIBRARY["chen"]])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    return simulate_zoo(4, out, seed=3, settings=replace(FAST, coupled_fraction=0.5))


def test_corpus_excludes_held_out_and_records_bases(corpus):
    attrs = read_zoo_attrs(corpus.path)
    assert corpus.path.name == "zoo.h5"
    assert attrs["held_out_systems"] == list(HELD_OUT)
    used = {b for e in zoo_index(corpus.path) for b in e.base_systems}
    assert used == set(attrs["base_systems"]) == set(corpus.base_systems)
    assert not used & set(HELD_OUT)
    assert not set(attrs["library_systems"]) & set(HELD_OUT)
    assert attrs["n_systems"] == 4 and attrs["seed"] == 3
    assert sum(json.loads(attrs["rejections"]).values()) == attrs["attempts"] - 4


def test_corpus_groups_open_in_xarray_and_match_the_lazy_reader(corpus):
    n = 0
    for name, meta, states in iter_zoo(corpus.path):
        ds = xr.open_dataset(corpus.path, group=f"systems/{name}", engine="h5netcdf")
        assert ds["states"].dims == ("trajectory", "time", "field")
        assert ds["states"].shape == meta.shape == states.shape == (2, 64, len(meta.field_names))
        np.testing.assert_array_equal(ds["states"].values, states[...])
        np.testing.assert_allclose(np.diff(ds["time"].values), meta.dt)
        assert list(ds["field"].values) == meta.field_names
        assert ds.attrs["system"] == meta.system and meta.lyapunov_time > 0
        assert (meta.coupling is None) == (len(meta.base_systems) == 1)
        assert meta.shape[2] <= 10 and np.isfinite(states[...]).all()
        ds.close()
        n += 1
    assert n == 4


def test_corpus_is_reproducible_from_its_seed(corpus, tmp_path):
    again = simulate_zoo(2, tmp_path / "again.h5", seed=3, settings=replace(FAST))
    for (_, a, sa), (_, b, sb) in zip(iter_zoo(again.path), iter_zoo(corpus.path)):
        assert a.system == b.system
        np.testing.assert_array_equal(sa[...], sb[...])


def test_held_out_system_as_a_trajectory_file(tmp_path):
    path = tmp_path / "rossler.h5"
    run = write_system_trajectories("rossler", path, 2, 100, seed=0, settings=FAST)
    with TrajectoryFile(path) as f:
        assert (f.meta.n_traj, f.meta.n_time, f.meta.state_shape) == (2, 100, (3,))
        assert f.meta.system == "rossler" and f.meta.field_names == ["x", "y", "z"]
        assert f.meta.lyapunov_time == pytest.approx(run.lyapunov_time)
        assert f.meta.dt == pytest.approx(run.dt)
        assert f.meta.param_names == ["a", "b", "c"]
        np.testing.assert_allclose(f.meta.params[0], [0.2, 0.2, 5.7])
    with pytest.raises(ConfigError, match="rejected: not chaotic"):
        write_system_trajectories("thomas", tmp_path / "t.h5", 2, 64, 0, {"b": 0.25}, FAST)
    with pytest.raises(ConfigError, match="unknown param 'q'"):
        write_system_trajectories("rossler", tmp_path / "r.h5", 2, 64, 0, {"q": 1.0})


def test_cli_simulate_zoo_and_a_library_system(tmp_path):
    from click.testing import CliRunner

    from sciformer.cli import main
    from sciformer.io.trajectories import TrajectoryFile

    zoo = tmp_path / "zoo.h5"
    res = CliRunner().invoke(main, ["simulate", "zoo", "--out", str(zoo), "--n-systems", "2",
                                    "--n-steps", "200"])
    assert res.exit_code == 0, res.output
    assert len(zoo_index(zoo)) == 2
    one = tmp_path / "rossler.h5"
    res = CliRunner().invoke(main, ["simulate", "rossler", "--out", str(one), "--n-traj", "2",
                                    "--n-steps", "300"])
    assert res.exit_code == 0, res.output
    with TrajectoryFile(one) as f:
        assert f.meta.state_shape == (3,) and f.meta.lyapunov_time > 0
