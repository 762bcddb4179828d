import math

import numpy as np
import pytest

from shoprank.evaluation.metrics import log_loss, ranking_metrics, roc_auc, roc_curve, threshold_metrics


def test_auc_by_hand():
    # positives 0.8, 0.4; negatives 0.6, 0.2: pairs (0.8>0.6, 0.8>0.2, 0.4<0.6, 0.4>0.2) -> 3/4
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.8, 0.6, 0.4, 0.2])) == pytest.approx(0.75)


def test_auc_counts_ties_half():
    assert roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_log_loss_and_threshold_metrics_by_hand():
    y, p = np.array([1, 0]), np.array([0.8, 0.4])
    assert log_loss(y, p) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    m = threshold_metrics(np.array([1, 1, 0, 0]), np.array([0.9, 0.2, 0.7, 0.1]), 0.5)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 1, 1, 1)
    assert m["precision"] == m["recall"] == m["f1"] == m["accuracy"] == 0.5


def test_ranking_metrics_by_hand():
    # List 1: gains [0, 2, 1] scored [0.9, 0.5, 0.1] -> ranked gains 0, 2, 1.
    # DCG = 3/log2(3) + 1/log2(4); IDCG = 3 + 1/log2(3). List 2 has no relevant row: ignored.
    groups = np.array([0, 0, 0, 1, 1])
    gains = np.array([0, 2, 1, 0, 0])
    scores = np.array([0.9, 0.5, 0.1, 0.3, 0.2])
    m = ranking_metrics(groups, gains, scores, k=10)
    dcg = 3 / math.log2(3) + 1 / 2
    idcg = 3 + 1 / math.log2(3)
    assert m["ndcg_at_k"] == pytest.approx(dcg / idcg)
    assert m["mrr"] == pytest.approx(0.5)
    assert m["recall_at_k"] == pytest.approx(1.0)
    assert m["lists"] == 1
    assert ranking_metrics(groups, gains, scores, k=1)["recall_at_k"] == pytest.approx(0.0)


def test_roc_curve_ends_at_corners():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 5000)
    fpr, tpr, _ = roc_curve(y, rng.random(5000), points=50)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1 and len(fpr) <= 50
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.5, abs=0.03)


# --- tie-aware ranking metrics ----------------------------------------------------------------------------------
def _random_lists(rng, n_lists: int, sizes: tuple[int, int], levels: int):
    """Random lists with many ties: scores drawn from `levels` values, graded gains 0..3 (some all zero)."""
    groups, gains, scores = [], [], []
    for i in range(n_lists):
        n = int(rng.integers(*sizes))
        groups.append(np.full(n, i))
        gains.append(rng.choice([0, 0, 0, 1, 2, 3], size=n))
        scores.append(rng.integers(0, levels, size=n) / levels)
    return np.concatenate(groups), np.concatenate(gains).astype(float), np.concatenate(scores)


def test_tie_aware_ndcg_equals_sklearn_ndcg_score():
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(11)
    for levels, k in ((3, 10), (5, 3), (40, 10), (1000, 5)):
        groups, gains, scores = _random_lists(rng, 300, (2, 25), levels)
        ours = ranking_metrics(groups, gains, scores, k=k)
        expected = []
        for g in np.unique(groups):
            m = groups == g
            if gains[m].max() > 0:  # lists without a relevant row are left out, as ranking_metrics does
                expected.append(ndcg_score([2.0 ** gains[m] - 1], [scores[m]], k=k, ignore_ties=False))
        assert ours["lists"] == len(expected)
        assert ours["ndcg_at_k"] == pytest.approx(np.mean(expected), rel=1e-12, abs=1e-12), (levels, k)


def _expected_over_tie_orders(gains: np.ndarray, scores: np.ndarray, k: int) -> tuple[float, float]:
    """MRR and Recall@k of one list averaged over every order of its tied rows (brute force)."""
    from itertools import permutations, product

    values = sorted(set(scores.tolist()), reverse=True)
    blocks = [np.flatnonzero(scores == v) for v in values]
    rr, rec, n = 0.0, 0.0, 0
    for orders in product(*(permutations(b.tolist()) for b in blocks)):
        ranked = gains[[i for o in orders for i in o]] > 0
        rr += 1.0 / (np.argmax(ranked) + 1)
        rec += ranked[:k].sum() / ranked.sum()
        n += 1
    return rr / n, rec / n


def test_tie_aware_mrr_and_recall_are_expectations_over_tie_orders():
    rng = np.random.default_rng(5)
    for k in (1, 2, 4):
        groups, gains, scores = _random_lists(rng, 120, (2, 7), 3)
        ours = ranking_metrics(groups, gains, scores, k=k)
        mrr, rec = [], []
        for g in np.unique(groups):
            m = groups == g
            if gains[m].max() > 0:
                a, b = _expected_over_tie_orders(gains[m], scores[m], k)
                mrr.append(a)
                rec.append(b)
        assert ours["mrr"] == pytest.approx(np.mean(mrr), rel=1e-12)
        assert ours["recall_at_k"] == pytest.approx(np.mean(rec), rel=1e-12)


def test_tie_aware_metrics_do_not_depend_on_row_order_within_ties():
    """The issue-11 failure: with ties broken by row order, a model that ties reads better or worse depending on
    the logging policy's order. Reversing the rows of every list now changes nothing."""
    rng = np.random.default_rng(2)
    groups, gains, scores = _random_lists(rng, 200, (5, 30), 4)
    flipped = np.concatenate([np.flatnonzero(groups == g)[::-1] for g in np.unique(groups)])
    a = ranking_metrics(groups, gains, scores, k=10)
    b = ranking_metrics(groups[flipped], gains[flipped], scores[flipped], k=10)
    for key in ("ndcg_at_k", "mrr", "recall_at_k"):
        assert a[key] == pytest.approx(b[key], rel=1e-12)
    # Without ties, tie-awareness changes nothing: the by-hand test above still holds for distinct scores.
    one = ranking_metrics(np.zeros(3, int), np.array([1.0, 0, 0]), np.array([0.5, 0.5, 0.5]), k=1)
    assert one["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3) and one["recall_at_k"] == pytest.approx(1 / 3)


def test_tie_statistics_counts_lists_with_equal_scores():
    from shoprank.evaluation.metrics import tie_statistics

    groups = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    scores = np.array([0.1, 0.2, 0.1, 0.3, 0.4, 0.5, 0.5, 0.5])
    t = tie_statistics(groups, scores)
    assert t == {"rows": 8, "distinct_scores": 5, "lists": 3, "lists_with_ties": 2,
                 "share_of_lists_with_ties": pytest.approx(2 / 3), "tied_pairs": 3}


def test_tie_aware_means_equal_the_per_list_metrics_of_the_reference_comparison():
    """shoprank.evaluation.listwise (per-list values for the paired bootstrap against the LambdaMART reference)
    and ranking_metrics (the means the evaluation and the gate report) define ties the same way."""
    from shoprank.evaluation.listwise import list_metrics

    rng = np.random.default_rng(9)
    for levels, k in ((3, 10), (6, 3), (10_000, 10)):
        groups, gains, scores = _random_lists(rng, 250, (2, 25), levels)
        ours = ranking_metrics(groups, gains, scores, k=k)
        theirs = list_metrics(groups, gains, scores, k).means(k)
        assert ours["lists"] == theirs["lists"]
        for a, b in (("ndcg_at_k", f"ndcg_at_{k}"), ("mrr", "mrr"), ("recall_at_k", f"recall_at_{k}")):
            assert ours[a] == pytest.approx(theirs[b], rel=1e-12), (a, levels, k)
