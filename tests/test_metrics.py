"""Known-answer tests for sciformer.evaluation.metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm

from sciformer.evaluation.metrics import (
    DEFINITIONS,
    channel_nrmse,
    coverage_per_step,
    crps_from_quantiles,
    crps_from_samples,
    forecast_metrics,
    masked_metrics,
    nrmse_at,
    nrmse_per_step,
    pit_histogram,
    smape_per_step,
    valid_prediction_time,
    valid_prediction_time_smape,
    vrmse_per_step,
)


@pytest.fixture
def truth() -> np.ndarray:
    return np.random.default_rng(0).normal(2.0, 1.5, size=(4, 12, 5))


def test_perfect_forecast_scores_zero_and_full_vpt(truth):
    m = forecast_metrics(truth, truth, scale=1.5)
    assert m["nrmse"] == 0 and m["nrmse_ch"] == 0 and m["smape"] == 0 and m["crps"] == 0
    assert m["vpt"] == 12 and m["vpt_smape"] == 12 and m["vpt_unit"] == "steps"
    assert m["per_step"]["nrmse"] == [0.0] * 12
    assert m["crps_from"] == "point" and m["nrmse_per_channel"] == [0.0] * 5
    assert "vrmse" not in m and "coverage_80" not in m and "pit" not in m  # ODE, point
    json.dumps(m, allow_nan=False)  # plain JSON types only


def test_constant_offset_gives_exact_nrmse(truth):
    np.testing.assert_allclose(nrmse_per_step(truth + 0.3, truth, scale=2.0), np.full(12, 0.15))


def test_predicting_the_mean_scores_about_one():
    x = np.random.default_rng(1).standard_normal((200, 3, 4))
    curve = nrmse_per_step(np.zeros_like(x), x, scale=float(x.std()))
    assert np.all(np.abs(curve - 1) < 0.1)


def test_vrmse_per_field_ddof1_by_hand():
    """A field of 3 points x 2 fields (features ordered (x, field)); one window, one step."""
    u, v = np.array([1.0, 2.0, 6.0]), np.array([10.0, 10.0, 13.0])  # the two fields
    t = np.stack([u, v], axis=1).reshape(1, 1, 6)
    p = t + np.stack([[1.0, 2.0, 2.0], [0.0, 3.0, 0.0]], axis=1).reshape(1, 1, 6)
    # u: mean err^2 = (1 + 4 + 4) / 3 = 3; var_ddof1 = ((1-3)^2 + (2-3)^2 + (6-3)^2) / 2 = 7
    # v: mean err^2 = 9 / 3 = 3; var_ddof1 = (1 + 1 + 4) / 2 = 3
    got = vrmse_per_step(p, t, state_shape=(3, 2), eps=0.0)
    np.testing.assert_allclose(got, [[math.sqrt(3 / 7), 1.0]])
    m = forecast_metrics(p, t, scale=1.0, state_shape=(3, 2), channel_std=[1.0, 1.0])
    assert m["vrmse_per_field"] == pytest.approx([math.sqrt(3 / 7), 1.0], rel=1e-6)
    assert m["vrmse"] == pytest.approx((math.sqrt(3 / 7) + 1.0) / 2, rel=1e-6)
    # averaged over windows, not pooled: a second, perfect window halves it
    two = vrmse_per_step(np.concatenate([p, t]), np.concatenate([t, t]), (3, 2), eps=0.0)
    np.testing.assert_allclose(two, [[math.sqrt(3 / 7) / 2, 0.5]])


def test_vrmse_needs_a_field():
    t = np.ones((1, 2, 3))
    with pytest.raises(ValueError, match="field"):
        vrmse_per_step(t, t, state_shape=(3,))


def test_channel_normalised_nrmse_weighs_channels_by_their_own_std():
    t = np.zeros((2, 3, 2))
    p = t + np.array([1.0, 10.0])  # errors 1 and 10 in channels of std 2 and 20
    e = channel_nrmse(p, t, channel_std=[2.0, 20.0])
    np.testing.assert_allclose(e, np.full((2, 3), 0.5))
    m = forecast_metrics(p, t, scale=5.0, channel_std=[2.0, 20.0])
    assert m["nrmse_per_channel"] == pytest.approx([0.5, 0.5])
    assert m["nrmse_ch"] == pytest.approx(0.5)
    assert m["nrmse"] == pytest.approx(math.sqrt((1 + 100) / 2) / 5.0)  # pooled climatology


def test_vpt_on_constructed_nrmse_curve():
    """Channel std 2: an error e in both channels is an nrmse_ch of e / 2."""
    h = 10
    t = np.zeros((2, h, 2))
    err = np.array([[0.2, 0.4, 0.8, 0.99, 1.0, 1.02, 3, 3, 3, 3],  # crosses 0.5 at lead 6
                    [0.1, 0.1, 1.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]])  # one spike: lead 3
    p = t + err[:, :, None]
    np.testing.assert_array_equal(valid_prediction_time(p, t, [2.0, 2.0]), [5, 2])
    m = forecast_metrics(p, t, scale=1.0, channel_std=[2.0, 2.0], dt_steps_per_lyapunov=2.5)
    assert m["vpt"] == pytest.approx((5 + 2) / 2 / 2.5) and m["vpt_unit"] == "lyapunov_times"
    p[0, 4:] = np.nan  # a diverged step counts as exceeding
    assert valid_prediction_time(p, t, [2.0, 2.0])[0] == 4


def test_smape_known_values_and_zero_over_zero():
    assert smape_per_step(np.ones((1, 1, 1)), np.full((1, 1, 1), 3.0))[0] == pytest.approx(100.0)
    assert smape_per_step(np.zeros((1, 1, 1)), np.zeros((1, 1, 1)))[0] == 0.0
    assert smape_per_step(np.zeros((1, 1, 1)), np.ones((1, 1, 1)))[0] == pytest.approx(200.0)
    assert smape_per_step(-np.ones((1, 1, 1)), np.ones((1, 1, 1)))[0] == pytest.approx(200.0)


def test_nonfinite_forecast_is_invalid_and_json_null(truth):
    pred = truth.copy()
    pred[:, 5:] = np.inf
    assert np.all(valid_prediction_time_smape(pred, truth) == 5)
    assert np.all(valid_prediction_time(pred, truth, np.ones(5)) == 5)
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
    np.testing.assert_array_equal(valid_prediction_time_smape(p, t), [k, 13])
    m = forecast_metrics(p, t, scale=1.0, dt_steps_per_lyapunov=4.0)
    assert m["vpt_smape"] == pytest.approx((k + 13) / 2 / 4.0)
    assert m["vpt_unit"] == "lyapunov_times"


def test_vpt_threshold_is_inclusive():
    t = np.ones((1, 3, 1))
    p = np.full((1, 3, 1), (200 + 30) / (200 - 30))  # 200 (p - 1) / (p + 1) = 30 exactly
    assert smape_per_step(p, t)[0] == pytest.approx(30.0)
    assert valid_prediction_time_smape(p - 1e-9, t)[0] == 3
    assert valid_prediction_time_smape(p + 1e-6, t)[0] == 0


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
    mae = np.abs(pred - truth).mean(axis=(0, 2))
    np.testing.assert_allclose(crps_from_samples(samples, truth), mae, atol=1e-12)
    m = forecast_metrics(pred, truth, scale=1.0)  # a point forecast: CRPS = MAE
    assert m["crps_from"] == "point"
    np.testing.assert_allclose(m["per_step"]["crps"], mae, rtol=1e-12)


def test_coverage_known_answer_from_evenly_spaced_samples():
    """Samples 0..100 (101 of them): the 0.1/0.9 quantiles are 10 and 90, 0.25/0.75 are 25
    and 75 exactly; truths 5, 20, 50, 80, 95 lie in 1, 3 of the 5 intervals' insides."""
    truth = np.array([5.0, 20.0, 50.0, 80.0, 95.0]).reshape(5, 1, 1)
    samples = np.broadcast_to(np.arange(101.0)[:, None, None, None], (101, 5, 1, 1))
    cov = coverage_per_step(samples, truth)
    assert cov["coverage_50"].tolist() == [0.2] and cov["coverage_80"].tolist() == [0.6]
    # a truth equal to a path value is a tie, inside with the probability that its randomised
    # rank lands in the interval: 90 among 0..100 has PIT (90 + 2U) / 102, <= 0.9 for U <= 0.9
    many = np.broadcast_to(np.arange(101.0)[:, None, None, None], (101, 4000, 1, 1))
    edge = coverage_per_step(many, np.full((4000, 1, 1), 90.0))
    np.testing.assert_allclose(edge["coverage_80"], 0.9, atol=0.015)
    # paths that all equal the truth (a forecast at the data's resolution): nominal, not 1
    ties = coverage_per_step(np.zeros((19, 4000, 1, 1)), np.zeros((4000, 1, 1)))
    np.testing.assert_allclose(ties["coverage_80"], 0.8, atol=0.02)
    np.testing.assert_allclose(ties["coverage_50"], 0.5, atol=0.02)


def test_coverage_and_pit_of_the_true_distribution_are_nominal():
    rng = np.random.default_rng(5)
    truth = rng.standard_normal((2000, 2, 5))
    samples = rng.standard_normal((199, *truth.shape))  # same law as the truth
    cov = coverage_per_step(samples, truth)
    # the randomised PIT is exactly uniform here, so the expected coverage is the mass
    np.testing.assert_allclose(cov["coverage_80"], 0.8, atol=0.015)
    np.testing.assert_allclose(cov["coverage_50"], 0.5, atol=0.015)
    np.testing.assert_allclose(pit_histogram(samples, truth), np.full(10, 0.1), atol=0.012)
    narrow = pit_histogram(0.5 * samples, truth)  # overconfident: U-shaped
    assert narrow[0] > 0.17 and narrow[-1] > 0.17 and narrow[4] < 0.07


def test_pit_known_answers_and_ties():
    truth = np.zeros((300, 1, 1))
    above = np.ones((19, 300, 1, 1))  # every sample above the truth: PIT in [0, 1/20)
    np.testing.assert_array_equal(pit_histogram(above, truth), [1.0] + [0.0] * 9)
    # all samples equal to the truth: the rank is a tie, spread uniformly over [0, 1]
    ties = pit_histogram(np.zeros((19, 300, 1, 1)), truth, seed=1)
    np.testing.assert_allclose(ties, np.full(10, 0.1), atol=0.05)
    assert ties.sum() == pytest.approx(1.0)


def test_metrics_from_samples_report_calibration():
    rng = np.random.default_rng(6)
    truth = rng.standard_normal((40, 3, 2))
    samples = rng.standard_normal((50, *truth.shape))
    m = forecast_metrics(np.median(samples, axis=0), truth, scale=1.0, samples=samples)
    assert m["crps_from"] == "samples" and len(m["coverage_80"]) == 3
    assert m["coverage_50"] == pytest.approx(coverage_per_step(samples, truth)["coverage_50"])
    assert m["pit"]["n"] == truth.size and len(m["pit"]["fraction"]) == 10
    assert m["pit"]["edges"][:3] == [0.0, 0.1, 0.2]
    assert sum(m["pit"]["fraction"]) == pytest.approx(1.0)
    assert {"vpt", "vpt_smape", "coverage_80", "pit", "crps", "vrmse"} <= set(DEFINITIONS)


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
    assert m["crps"] == pytest.approx(2 * 0.2 / 3) and m["crps_from"] == "quantiles"
    assert m["coverage_80"] == [1.0] * 12 and "coverage_50" not in m  # no 0.25/0.75 levels
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
