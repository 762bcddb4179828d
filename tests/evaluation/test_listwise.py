"""Tie-aware per-list metrics: equal to the shared metrics without ties, and to the average over every order of
the tied rows with ties."""

import itertools

import numpy as np
import pytest

from shoprank.evaluation.listwise import list_index, list_metrics, table_metrics
from shoprank.evaluation.metrics import ranking_metrics, roc_auc


def _strict(gains: np.ndarray, order: np.ndarray, k: int) -> tuple[float, float, float]:
    """NDCG@k, reciprocal rank and Recall@k of one list shown in `order` (no ties)."""
    g = gains[order]
    disc = 1.0 / np.log2(np.arange(2, g.size + 2))
    dcg = ((2.0 ** g[:k] - 1) * disc[:k]).sum()
    idcg = ((2.0 ** np.sort(gains)[::-1][:k] - 1) * disc[:k]).sum()
    rel = g > 0
    return dcg / idcg, 1.0 / (np.argmax(rel) + 1), rel[:k].sum() / rel.sum()


def _expected_over_tie_orders(gains: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Average of the strict metrics over every order of the rows that the scores allow (ties in any order)."""
    values = np.unique(scores)[::-1]
    blocks = [np.flatnonzero(scores == v) for v in values]
    results = [_strict(gains, np.concatenate(p), k)
               for p in itertools.product(*(list(itertools.permutations(b)) for b in blocks))]
    return np.mean(results, axis=0)


def test_without_ties_equals_the_shared_ranking_metrics():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), rng.integers(2, 15, 40))
    gains = rng.integers(0, 3, groups.size) * (rng.random(groups.size) < 0.4)
    scores = rng.random(groups.size)
    shared = ranking_metrics(groups, gains, scores, 5)
    mine = list_metrics(groups, gains, scores, 5).means(5)
    assert mine["lists"] == shared["lists"]
    assert mine["ndcg_at_5"] == pytest.approx(shared["ndcg_at_k"])
    assert mine["mrr"] == pytest.approx(shared["mrr"])
    assert mine["recall_at_5"] == pytest.approx(shared["recall_at_k"])


@pytest.mark.parametrize("seed", range(6))
def test_ties_average_over_every_order_of_the_tied_rows(seed):
    rng = np.random.default_rng(seed)
    n = 7
    gains = rng.integers(0, 3, n)
    gains[rng.integers(n)] = 2  # at least one relevant row
    scores = rng.integers(0, 3, n).astype(float)  # few distinct values: big tied blocks
    k = 3
    m = list_metrics(np.zeros(n), gains, scores, k)
    ndcg, rr, recall = _expected_over_tie_orders(gains, scores, k)
    assert m.ndcg[0] == pytest.approx(ndcg)
    assert m.rr[0] == pytest.approx(rr)
    assert m.recall[0] == pytest.approx(recall)


def test_row_order_does_not_matter_with_ties_here_nor_in_the_shared_metrics():
    gains = np.array([1, 0, 0, 0])
    scores = np.zeros(4)  # all tied: before issue 11 the shared metric credited the stored order (MRR 1.0)
    expected_rr = (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4
    assert ranking_metrics(np.zeros(4), gains, scores, 2)["mrr"] == pytest.approx(expected_rr)
    forward = list_metrics(np.zeros(4), gains, scores, 2)
    backward = list_metrics(np.zeros(4), gains[::-1], scores, 2)
    assert forward.rr[0] == pytest.approx(backward.rr[0]) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert forward.recall[0] == pytest.approx(0.5)


def test_lists_without_a_relevant_row_are_left_out_and_indexed():
    groups = np.array([5, 5, 9, 9, 9, 2, 2])
    gains = np.array([0, 0, 1, 0, 0, 0, 2])
    m = list_metrics(groups, gains, np.arange(7.0), 10)
    assert m.n_lists == 3 and m.lists.tolist() == [1, 2]
    idx, n = list_index(groups)
    assert n == 3 and idx.tolist() == [0, 0, 1, 1, 1, 2, 2]
    t = table_metrics(groups, gains > 0, gains, np.arange(7.0), 10)
    assert t["lists"] == 2 and t["auc"] == roc_auc(gains > 0, np.arange(7.0))
