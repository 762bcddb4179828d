"""The synthetic shop's click model as functions: examination, the exact expected clicks of any ranking (checked
against simulated clicks), ties, and labels drawn without position bias."""

import numpy as np
import pyarrow.parquet as pq

from shoprank.data.clicks import examination, expected_clicks, group_bounds, rank_examination, unbiased_labels
from shoprank.data.synthetic import POSITION_BIAS_POWER


def test_examination_is_the_generators_curve():
    th = examination(np.arange(4))
    assert th[0] == 1.0
    np.testing.assert_allclose(th, (1.0 / (1.0 + np.arange(4))) ** POSITION_BIAS_POWER)
    assert np.all(np.diff(th) < 0)


def test_generator_clicks_follow_examination_times_relevance(tiny_raw):
    """The click model here is the one the generator draws from: click rate / (examination * relevance) ~ 1."""
    df = pq.read_table(tiny_raw / "impressions.parquet").to_pandas()
    df = df[df["position"] >= 0]
    expected = examination(df["position"].to_numpy()) * df["oracle"].to_numpy()
    assert abs(df["clicked"].mean() / expected.mean() - 1) < 0.03


def test_rank_examination_follows_the_scores_and_shares_ties():
    groups = np.array([0, 0, 0, 1, 1])
    theta = np.array([1.0, 0.5, 0.25])
    out = rank_examination(groups, np.array([0.1, 0.9, 0.5, 2.0, 2.0]), theta)
    np.testing.assert_allclose(out, [0.25, 1.0, 0.5, 0.75, 0.75])  # the tie shares ranks 0 and 1
    # Ranks past theta's end take its last value.
    np.testing.assert_allclose(rank_examination(np.zeros(4, int), np.arange(4.0), theta), [0.25, 0.25, 0.5, 1.0])


def test_expected_clicks_equal_simulated_clicks():
    rng = np.random.default_rng(0)
    n_req, width = 300, 8
    groups = np.repeat(np.arange(n_req), width)
    relevance = rng.random(groups.size)
    scores = relevance + rng.normal(0, 0.3, groups.size)
    theta = examination(np.arange(width))
    truth = expected_clicks(groups, relevance, scores, theta)
    assert truth.shape == (n_req,)
    # Simulate: show each list by descending score, click with theta(rank) * relevance.
    rank = np.argsort(np.argsort(-scores.reshape(n_req, width), axis=1), axis=1).reshape(-1)
    p = theta[rank] * relevance
    sims = [(rng.random(p.size) < p).reshape(n_req, width).sum(axis=1).mean() for _ in range(400)]
    assert abs(np.mean(sims) - truth.mean()) < 4 * np.std(sims) / np.sqrt(len(sims))
    # The best ordering (by relevance) gets the most expected clicks.
    assert expected_clicks(groups, relevance, relevance, theta).mean() > truth.mean()


def test_unbiased_labels_are_drawn_from_relevance_alone():
    r = np.random.default_rng(1).random(200_000)
    a, b = unbiased_labels(r, 5), unbiased_labels(r, 5)
    assert np.array_equal(a, b) and a.dtype == np.int8
    assert abs(a.mean() - r.mean()) < 0.005
    hi, lo = r > 0.8, r < 0.2
    assert a[hi].mean() > 0.85 and a[lo].mean() < 0.15
    assert not np.array_equal(a, unbiased_labels(r, 6))


def test_group_bounds():
    starts, lengths = group_bounds(np.array([3, 3, 5, 7, 7, 7]))
    assert starts.tolist() == [0, 2, 3] and lengths.tolist() == [2, 1, 3]
