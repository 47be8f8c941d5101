"""Known-answer tests for sciformer.evaluate.baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from sciformer.errors import InputError
from sciformer.evaluate.baselines import (
    BASELINES,
    ClimatologyMean,
    Persistence,
    RidgeAR,
    unigram_baseline,
)
from sciformer.evaluate.metrics import nrmse_per_step


def _ar2_system(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A stable AR(2) in 3-D with an offset: x = Q z + c, each z_i a damped oscillation."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    r, theta = np.array([0.97, 0.95, 0.9]), np.array([0.3, 0.7, 1.2])
    a1 = q @ np.diag(2 * r * np.cos(theta)) @ q.T
    a2 = q @ np.diag(-(r**2)) @ q.T
    c = np.array([1.0, -2.0, 0.5])
    return a1, a2, c


def _simulate_ar2(a1, a2, c, n_traj: int, n_time: int, rng) -> np.ndarray:
    """Noise-free trajectories (n_traj, n_time, 3) from random starts around the fixed point."""
    fixed = np.linalg.solve(np.eye(3) - a1 - a2, c)
    x = np.empty((n_traj, n_time, 3))
    x[:, :2] = fixed + rng.standard_normal((n_traj, 2, 3))
    for t in range(2, n_time):
        x[:, t] = x[:, t - 1] @ a1.T + x[:, t - 2] @ a2.T + c
    return x


def _oscillator(n_traj: int, n_time: int, rng, noise: float = 0.0) -> np.ndarray:
    """Damped harmonic oscillator x'' + 2 zeta w x' + w^2 x = 0 sampled at dt = 0.1, state
    (x, v), exact propagator, optional observation noise."""
    w, zeta, dt = 1.0, 0.05, 0.1
    a = np.array([[0.0, 1.0], [-(w**2), -2 * zeta * w]])
    evals, evecs = np.linalg.eig(a)
    prop = (evecs @ np.diag(np.exp(evals * dt)) @ np.linalg.inv(evecs)).real
    s = np.empty((n_traj, n_time, 2))
    s[:, 0] = rng.uniform(-1, 1, (n_traj, 2))
    for t in range(1, n_time):
        s[:, t] = s[:, t - 1] @ prop.T
    return s + noise * rng.standard_normal(s.shape)


def test_registry_names():
    assert BASELINES == {"persistence": Persistence, "mean": ClimatologyMean,
                         "ridge_ar": RidgeAR}


def test_persistence_repeats_last_state():
    ctx = np.random.default_rng(0).standard_normal((3, 5, 4))
    pred = Persistence().fit([np.zeros((10, 4))]).predict(ctx, 7)
    assert pred.shape == (3, 7, 4)
    np.testing.assert_array_equal(pred, np.repeat(ctx[:, -1:], 7, axis=1))


def test_mean_is_training_mean_over_all_steps():
    train = [np.full((3, 2), 1.0), np.full((1, 2), 5.0)]  # 3 steps of 1, 1 step of 5 -> 2
    pred = ClimatologyMean().fit(train).predict(np.zeros((2, 4, 2)), 3)
    np.testing.assert_allclose(pred, np.full((2, 3, 2), 2.0))


def test_ridge_recovers_exact_ar2_system():
    a1, a2, c = _ar2_system()
    rng = np.random.default_rng(1)
    model = RidgeAR(lags=2).fit(list(_simulate_ar2(a1, a2, c, 40, 30, rng)))
    test = _simulate_ar2(a1, a2, c, 5, 60, rng)
    pred = model.predict(test[:, :10], 50)
    assert np.max(np.abs(pred - test[:, 10:])) < 1e-5  # values are O(5); alpha=1e-6 bias only
    state_w = model.coef_ + np.vstack([np.zeros((3, 3)), np.eye(3)]) * (
        model.target_ == "increment")  # increments: x_{t+1} = x_t + w^T lags + b
    np.testing.assert_allclose(state_w[3:], a1.T, atol=1e-6)  # newest lag last
    np.testing.assert_allclose(state_w[:3], a2.T, atol=1e-6)


def test_ridge_predicts_noisy_damped_oscillator_well():
    rng = np.random.default_rng(2)
    train = list(_oscillator(20, 200, rng, noise=0.01))
    test = _oscillator(10, 80, rng)
    scale = float(np.concatenate(train).std())
    ctx, truth = test[:, :30], test[:, 30:]
    ridge = nrmse_per_step(RidgeAR(lags=4).fit(train).predict(ctx, 50), truth, scale)
    persist = nrmse_per_step(Persistence().fit(train).predict(ctx, 50), truth, scale)
    assert ridge.mean() < 0.05
    assert ridge.mean() < 0.2 * persist.mean()


def test_ridge_weights_equal_sklearn_ridge():
    x = _oscillator(1, 60, np.random.default_rng(3), noise=0.05)[0]
    model = RidgeAR(lags=2, alphas=[0.5]).fit([x])
    feats = np.concatenate([x[:-2], x[1:-1]], axis=1)  # [x_{t-1}, x_t] -> x_{t+1}
    target = x[2:] - x[1:-1] if model.target_ == "increment" else x[2:]
    mu, sd = feats.mean(axis=0), feats.std(axis=0)
    ref = Ridge(alpha=0.5).fit((feats - mu) / sd, target)
    ctx = x[None, 10:12]
    want = ref.predict((ctx.reshape(1, -1) - mu) / sd)[0]
    want = want + ctx[0, -1] if model.target_ == "increment" else want
    np.testing.assert_allclose(model.predict(ctx, 1)[0, 0], want, rtol=1e-9, atol=1e-12)


def test_ridge_target_choice_follows_the_data():
    rng = np.random.default_rng(4)
    walk = [np.cumsum(rng.standard_normal((300, 2)), axis=0)]
    white = [rng.standard_normal((300, 2))]
    # under heavy shrinkage the increment target falls back to persistence, the state to the mean
    assert RidgeAR(lags=2, alphas=[1e5]).fit(walk).target_ == "increment"
    assert RidgeAR(lags=2, alphas=[1e5]).fit(white).target_ == "state"


def test_ridge_subsamples_rows_reproducibly():
    train = list(_oscillator(5, 100, np.random.default_rng(5), noise=0.01))
    a = RidgeAR(lags=3, max_rows=50, seed=7).fit(train)
    b = RidgeAR(lags=3, max_rows=50, seed=7).fit(train)
    assert a.n_rows_ == 50
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert RidgeAR(lags=3).fit(train).n_rows_ == 5 * 97


def test_ridge_rollout_of_unstable_fit_stays_finite():
    grow = [1.1 ** np.arange(40.0)[:, None]]
    pred = RidgeAR(lags=1, alphas=[1e-6]).fit(grow).predict(np.array([[[1.0]]]), 2000)
    assert np.all(np.isfinite(pred))
    assert pred.max() <= 1.1**39 * 11 + 1e-6


def test_bad_training_data_named():
    with pytest.raises(InputError, match="training trajectory 1: 3 time steps"):
        RidgeAR(lags=4).fit([np.zeros((10, 2)), np.zeros((3, 2))])
    with pytest.raises(InputError, match=r"training trajectory 1: shape \(5, 3\)"):
        Persistence().fit([np.zeros((5, 2)), np.zeros((5, 3))])
    bad = np.zeros((5, 2))
    bad[2, 1] = np.nan
    with pytest.raises(InputError, match="training trajectory 0: contains NaN"):
        ClimatologyMean().fit([bad])
    with pytest.raises(InputError, match="no training trajectories"):
        Persistence().fit([])


def test_bad_context_rejected():
    model = RidgeAR(lags=4).fit([np.random.default_rng(6).standard_normal((30, 2))])
    with pytest.raises(ValueError, match=r"C >= 4"):
        model.predict(np.zeros((1, 3, 2)), 5)
    with pytest.raises(ValueError, match="got"):
        model.predict(np.zeros((1, 6, 3)), 5)
    with pytest.raises(ValueError, match="horizon"):
        model.predict(np.zeros((1, 6, 2)), 0)
    with pytest.raises(RuntimeError, match="before fit"):
        Persistence().predict(np.zeros((1, 1, 1)), 1)


def test_unigram_perplexity_is_exp_entropy():
    counts = np.zeros(33)
    counts[[4, 5, 6, 7]] = [49, 24, 14, 9]  # +1 smoothing -> p = .5, .25, .15, .1
    p = np.array([0.5, 0.25, 0.15, 0.1])
    true = np.repeat([4, 5, 6, 7], [50, 25, 15, 10])  # drawn exactly in proportion to p
    out = unigram_baseline(counts, true, residue_ids=[4, 5, 6, 7])
    assert out["perplexity"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert out["accuracy"] == 0.5 and out["n_masked"] == 100


def test_unigram_default_esm_residue_ids():
    counts = np.zeros(33)
    counts[5] = 100.0  # all 'A'; 28 residue-position ids (<unk> and L..-) share the +1s
    out = unigram_baseline(counts, np.array([5, 5, 4]))
    p5, p4 = 101 / 128, 1 / 128
    assert out["perplexity"] == pytest.approx(math.exp(-(2 * math.log(p5) + math.log(p4)) / 3))
    assert out["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="true id 32"):
        unigram_baseline(counts, np.array([5, 32]))  # <mask> is never a residue
    assert unigram_baseline(counts, np.zeros(0, dtype=int))["perplexity"] is None
