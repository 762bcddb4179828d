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
