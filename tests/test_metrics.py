"""Known-answer tests for sciformer.evaluate.metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm

from sciformer.evaluate.metrics import (
    crps_from_quantiles,
    crps_from_samples,
    forecast_metrics,
    masked_metrics,
    nrmse_at,
    nrmse_per_step,
    smape_per_step,
    valid_prediction_time,
    vrmse_per_step,
)


@pytest.fixture
def truth() -> np.ndarray:
    return np.random.default_rng(0).normal(2.0, 1.5, size=(4, 12, 5))


def test_perfect_forecast_scores_zero_and_full_vpt(truth):
    m = forecast_metrics(truth, truth, scale=1.5)
    assert m["nrmse"] == 0 and m["vrmse"] == 0 and m["smape"] == 0
    assert m["vpt"] == 12 and m["vpt_unit"] == "steps"
    assert m["per_step"]["nrmse"] == [0.0] * 12
    assert "crps" not in m
    json.dumps(m, allow_nan=False)  # plain JSON types only


def test_constant_offset_gives_exact_nrmse(truth):
    np.testing.assert_allclose(nrmse_per_step(truth + 0.3, truth, scale=2.0), np.full(12, 0.15))


def test_predicting_the_mean_scores_about_one():
    x = np.random.default_rng(1).standard_normal((200, 3, 4))
    curve = nrmse_per_step(np.zeros_like(x), x, scale=float(x.std()))
    assert np.all(np.abs(curve - 1) < 0.1)


def test_vrmse_per_trajectory_variance():
    t = np.array([[[0.0, 2.0]]])  # var_F = 1
    p = np.array([[[1.0, 3.0]]])  # err^2 = 1
    np.testing.assert_allclose(vrmse_per_step(p, t, eps=0.0), [1.0])
    # averaged over trajectories, not pooled: second trajectory has error 0
    t2, p2 = np.concatenate([t, t]), np.concatenate([p, t])
    np.testing.assert_allclose(vrmse_per_step(p2, t2, eps=0.0), [0.5])


def test_smape_known_values_and_zero_over_zero():
    assert smape_per_step(np.ones((1, 1, 1)), np.full((1, 1, 1), 3.0))[0] == pytest.approx(100.0)
    assert smape_per_step(np.zeros((1, 1, 1)), np.zeros((1, 1, 1)))[0] == 0.0
    assert smape_per_step(np.zeros((1, 1, 1)), np.ones((1, 1, 1)))[0] == pytest.approx(200.0)
    assert smape_per_step(-np.ones((1, 1, 1)), np.ones((1, 1, 1)))[0] == pytest.approx(200.0)


def test_nonfinite_forecast_is_invalid_and_json_null(truth):
    pred = truth.copy()
    pred[:, 5:] = np.inf
    assert np.all(valid_prediction_time(pred, truth) == 5)
    assert smape_per_step(pred, truth)[6] == 200.0
    m = forecast_metrics(pred, truth, scale=1.0)
    assert m["nrmse"] is None and m["per_step"]["nrmse"][4] == 0.0
    assert m["per_step"]["nrmse"][5] is None
    json.dumps(m, allow_nan=False)


def test_vpt_on_hand_built_crossing():
    h, k = 20, 7
    t = np.ones((2, h, 3))
    p = t.copy()
    p[0, :k] = 1.2  # sMAPE 18.2 % for the first k steps
    p[0, k:] = 2.0  # sMAPE 66.7 % from step k on
    p[1, 13] = 1.5  # 40 % at step 13 only: VPT stops there even though later steps recover
    np.testing.assert_array_equal(valid_prediction_time(p, t), [k, 13])
    m = forecast_metrics(p, t, scale=1.0, dt_steps_per_lyapunov=4.0)
    assert m["vpt"] == pytest.approx((k + 13) / 2 / 4.0)
    assert m["vpt_unit"] == "lyapunov_times"


def test_vpt_threshold_is_inclusive():
    t = np.ones((1, 3, 1))
    p = np.full((1, 3, 1), (200 + 30) / (200 - 30))  # 200 (p - 1) / (p + 1) = 30 exactly
    assert smape_per_step(p, t)[0] == pytest.approx(30.0)
    assert valid_prediction_time(p - 1e-9, t)[0] == 3
    assert valid_prediction_time(p + 1e-6, t)[0] == 0


def _crps_brute(samples: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """O(m^2) definition E|X - y| - 0.5 E|X - X'| per point, averaged like the library."""
    term1 = np.abs(samples - truth).mean(axis=0)
    term2 = np.abs(samples[:, None] - samples[None, :]).mean(axis=(0, 1))
    return (term1 - 0.5 * term2).mean(axis=(0, 2))


def test_crps_samples_matches_brute_force():
    rng = np.random.default_rng(2)
    samples = rng.standard_normal((17, 3, 4, 2)) * 2 + 1
    truth = rng.standard_normal((3, 4, 2))
    np.testing.assert_allclose(crps_from_samples(samples, truth), _crps_brute(samples, truth),
                               rtol=1e-12)


def test_crps_of_point_mass_is_mae(truth):
    pred = truth + np.random.default_rng(3).standard_normal(truth.shape)
    samples = np.repeat(pred[None], 5, axis=0)
    np.testing.assert_allclose(crps_from_samples(samples, truth),
                               np.abs(pred - truth).mean(axis=(0, 2)), atol=1e-12)


def test_quantile_crps_approaches_sample_crps_for_normal():
    rng = np.random.default_rng(4)
    truth = rng.standard_normal((50, 2, 3))
    levels = (np.arange(99) + 0.5) / 99
    q = np.broadcast_to(norm.ppf(levels)[:, None, None, None], (99, *truth.shape))
    samples = rng.standard_normal((4000, *truth.shape))
    # closed-form CRPS of N(0, 1) (Gneiting & Raftery 2007) as the common reference
    exact = (truth * (2 * norm.cdf(truth) - 1) + 2 * norm.pdf(truth) - 1 / np.sqrt(np.pi))
    exact = exact.mean(axis=(0, 2))
    np.testing.assert_allclose(crps_from_quantiles(q, levels, truth), exact, rtol=0.03)
    np.testing.assert_allclose(crps_from_samples(samples, truth), exact, rtol=0.03)


def test_forecast_metrics_crps_from_quantiles_or_samples(truth):
    levels = np.array([0.1, 0.5, 0.9])
    q = np.stack([truth - 1, truth, truth + 1])
    m = forecast_metrics(truth, truth, scale=1.0, quantiles=q, levels=levels)
    # pinball: 0.1 * 1 at the 0.1 level (y above q), 0 at the median, 0.1 at 0.9 -> 2 * 0.2 / 3
    assert m["crps"] == pytest.approx(2 * 0.2 / 3)
    assert len(m["per_step"]["crps"]) == 12
    samples = np.repeat(truth[None], 3, axis=0)
    assert forecast_metrics(truth, truth, scale=1.0, samples=samples)["crps"] == 0.0


@pytest.mark.parametrize("levels", [[0.5, 0.1, 0.9], [0.0, 0.5, 1.0]])
def test_bad_quantile_levels_rejected(truth, levels):
    q = np.stack([truth] * 3)
    with pytest.raises(ValueError, match="ascending"):
        crps_from_quantiles(q, np.array(levels), truth)


def test_shape_mismatch_and_bad_scale_rejected(truth):
    with pytest.raises(ValueError, match=r"\(n_traj, H, F\)"):
        nrmse_per_step(truth[:, :5], truth, scale=1.0)
    with pytest.raises(ValueError, match="scale"):
        nrmse_per_step(truth, truth, scale=0.0)
    with pytest.raises(ValueError, match="samples"):
        crps_from_samples(truth, truth)
    with pytest.raises(ValueError, match="levels"):
        forecast_metrics(truth, truth, scale=1.0, quantiles=np.stack([truth]))


def test_nrmse_at_picks_one_based_lead_times():
    assert nrmse_at([0.1, 0.2, 0.3, 0.4], [1, 4]) == {"h1": 0.1, "h4": 0.4}
    with pytest.raises(ValueError, match="lead time 5"):
        nrmse_at([0.1, 0.2], [5])


def test_masked_metrics_on_hand_made_log_probs():
    logp = np.log([0.5, 0.25, 1.0, 0.125])
    m = masked_metrics(logp, np.array([4, 5, 6, 7]), np.array([4, 9, 6, 9]))
    assert m["perplexity"] == pytest.approx(math.exp((math.log(2) + math.log(4) + 0
                                                      + math.log(8)) / 4))
    assert m["accuracy"] == 0.5 and m["n_masked"] == 4
    assert masked_metrics(np.zeros(0), np.zeros(0), np.zeros(0))["n_masked"] == 0
    with pytest.raises(ValueError, match="<= 0"):
        masked_metrics(np.array([0.5]), np.array([1]), np.array([1]))
    with pytest.raises(ValueError, match="per masked position"):
        masked_metrics(np.zeros(2), np.zeros(3), np.zeros(2))
