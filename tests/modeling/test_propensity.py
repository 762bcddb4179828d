"""Propensity estimation by regression EM recovers known examination probabilities from simulated PBM clicks.

What is not tested here: the bias a relevance regression that misses what the logging policy knew leaves in the
propensities (no log-only estimator avoids it); `make bench-debias` measures it on the synthetic shop."""

import numpy as np
import pytest

from shoprank.data.clicks import examination
from shoprank.modeling.propensity import Propensities, fit_examination, position_slots, power_law, regression_em


def _pbm_log(n_req: int = 30000, width: int = 10, confounded: bool = True, seed: int = 0):
    """Lists shown by a noisy relevance ranking (confounded: relevant items on top) or at random, clicks drawn
    from examination * relevance."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-0.5, 1.5, (n_req, width))
    relevance = 1 / (1 + np.exp(-logit))
    noise = rng.normal(0, 1.0, logit.shape) if confounded else rng.normal(0, 100.0, logit.shape)
    positions = np.argsort(np.argsort(-(logit + noise), axis=1), axis=1)
    theta = examination(np.arange(width))
    clicks = rng.random(logit.shape) < theta[positions] * relevance
    return clicks.reshape(-1), positions.reshape(-1), relevance.reshape(-1), theta


def test_fit_examination_recovers_theta_given_relevance():
    clicks, positions, relevance, theta = _pbm_log()
    est = fit_examination(clicks, positions, relevance, theta.size)
    np.testing.assert_allclose(est / est[0], theta, rtol=0.08)


def test_regression_em_recovers_theta_from_a_relevance_score():
    """Relevance only through a monotone score (here the true logit), propensities from confounded logs."""
    clicks, positions, relevance, theta = _pbm_log(seed=1)
    logit = np.log(relevance / (1 - relevance))
    est, gamma = regression_em(clicks, positions, logit, theta.size, bins=50)
    assert est[0] == 1.0
    np.testing.assert_allclose(est, theta, rtol=0.1)
    assert np.corrcoef(gamma, relevance)[0, 1] > 0.95


def test_naive_click_rate_by_position_is_too_steep_on_confounded_logs():
    """Why EM: relevant items sit on top, so the click rate alone overstates the position's part."""
    clicks, positions, _, theta = _pbm_log(seed=2)
    ctr = np.bincount(positions, weights=clicks) / np.bincount(positions)
    assert ctr[-1] / ctr[0] < 0.7 * theta[-1]


def test_propensities_relative_save_load_and_deep_positions(tmp_path):
    p = Propensities.relative(np.array([0.8, 0.4, 0.2]), "test")
    assert p.theta == (1.0, 0.5, 0.25) and abs(p.top - 0.8) < 1e-12
    np.testing.assert_allclose(p.absolute(), [0.8, 0.4, 0.2])
    np.testing.assert_allclose(p.at(np.array([0, 2, 7])), [1.0, 0.25, 0.25])  # deeper: the last value
    p.save(tmp_path)
    assert Propensities.load(tmp_path) == p
    assert Propensities.load(tmp_path / "nothing") is None
    assert position_slots(np.array([0, 3, 12]), 5).tolist() == [0, 3, 4]


def test_power_law_fitted_on_the_top_positions_extends_the_curve():
    """The generator's curve is a power law: the fit on positions 1-5 recovers it everywhere, and deep estimates
    that are off (the confounded ones) do not move it."""
    true = examination(np.arange(20))
    noisy = true.copy()
    noisy[8:] *= 0.3  # deep positions underestimated, as confounded EM does
    curve, eta = power_law(noisy, 6)
    assert eta == pytest.approx(0.7, abs=1e-9)
    np.testing.assert_allclose(curve, true, rtol=1e-9)
    longer, _ = power_law(noisy, 6, 30)
    assert longer.size == 30 and longer[0] == 1.0
