"""Classification and ranking metrics in plain numpy (so they are unit-testable by hand)."""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "calibration",
    "log_loss",
    "precision_recall_curve",
    "ranking_metrics",
    "roc_auc",
    "roc_curve",
    "threshold_metrics",
    "tie_statistics",
]


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    boundaries = np.flatnonzero(np.diff(xs)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [xs.size]])
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(x.size)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U), ties counted half."""
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, scores: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(scores, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def threshold_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of `scores >= threshold`, plus the confusion counts."""
    y = np.asarray(labels).astype(bool)
    pred = np.asarray(scores) >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    tn = int((~pred & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / max(y.size, 1), "precision": precision, "recall": recall, "f1": f1,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def roc_curve(labels: np.ndarray, scores: np.ndarray, points: int = 200):
    """(fpr, tpr, thresholds), thinned to about `points` points for plots and the KFP UI."""
    y = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    s, y = np.asarray(scores)[order], y[order]
    distinct = np.concatenate([np.flatnonzero(np.diff(s)), [s.size - 1]])
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.concatenate([[0.0], tps / max(tps[-1], 1)])
    fpr = np.concatenate([[0.0], fps / max(fps[-1], 1)])
    thr = np.concatenate([[1.0], s[distinct]])
    if tpr.size > points:
        keep = np.unique(np.linspace(0, tpr.size - 1, points).astype(int))
        tpr, fpr, thr = tpr[keep], fpr[keep], thr[keep]
    return fpr, tpr, thr


def precision_recall_curve(labels: np.ndarray, scores: np.ndarray, points: int = 200):
    y = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    y = y[order]
    tps = np.cumsum(y)
    k = np.arange(1, y.size + 1)
    precision, recall = tps / k, tps / max(tps[-1], 1)
    keep = np.unique(np.linspace(0, y.size - 1, min(points, y.size)).astype(int))
    return recall[keep], precision[keep]


def _groups(group_ids: np.ndarray):
    """Start offsets and lengths of the contiguous runs of equal ids (rows sorted by group)."""
    g = np.asarray(group_ids)
    starts = np.concatenate([[0], np.flatnonzero(g[1:] != g[:-1]) + 1])
    lengths = np.diff(np.concatenate([starts, [g.size]]))
    return starts, lengths


def _padded(group_ids: np.ndarray, *columns: np.ndarray, fill: float):
    """Lay grouped rows out as [n_groups, max_len] matrices, padding with `fill`."""
    starts, lengths = _groups(group_ids)
    width = int(lengths.max())
    row = np.repeat(np.arange(starts.size), lengths)
    col = np.arange(group_ids.size) - np.repeat(starts, lengths)
    out = []
    for c in columns:
        m = np.full((starts.size, width), fill, dtype=np.float64)
        m[row, col] = c
        out.append(m)
    return out


def _tie_groups(sorted_scores: np.ndarray) -> np.ndarray:
    """Global labels of the runs of equal scores in each row of a [lists, width] matrix sorted by score (a
    padding entry, -inf, forms its own run after the real ones)."""
    n, w = sorted_scores.shape
    new = np.ones((n, w), dtype=bool)
    new[:, 1:] = sorted_scores[:, 1:] != sorted_scores[:, :-1]
    return np.cumsum(new.ravel()) - 1


def _tie_mean(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each entry replaced by the mean of its tie group (labels from `_tie_groups`), same shape."""
    sums = np.bincount(labels, weights=values.ravel())
    counts = np.bincount(labels)
    return (sums / counts)[labels].reshape(values.shape)


def _expected_reciprocal_rank(start: np.ndarray, size: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """E[1 / rank of the first relevant row] when the first tie group that holds a relevant row starts after
    `start` rows, has `size` rows of which `relevant` are relevant, and is ordered uniformly at random.

    The first relevant row lands at place j (1-based) of the group with probability C(size-j, r-1) / C(size, r)."""
    out = 1.0 / (start + 1.0)
    for i in np.flatnonzero((size > 1) & (relevant < size)):
        m, r, s = int(size[i]), int(relevant[i]), float(start[i])
        total = math.comb(m, r)
        out[i] = sum(math.comb(m - j, r - 1) / total / (s + j) for j in range(1, m - r + 2))
    return out


def ranking_metrics(group_ids: np.ndarray, gains: np.ndarray, scores: np.ndarray, k: int = 10) -> dict:
    """NDCG@k (graded gains 2^g - 1), MRR and Recall@k over lists that have at least one relevant row.

    Rows of one list must be contiguous. Tied scores are averaged, as scikit-learn's `ndcg_score` does
    (`ignore_ties=False`): each metric is its expectation over a uniformly random order of the tied rows, so no
    order of the input rows (the logging policy's, for the test split) can favour or hurt a model that ties.
    NDCG and Recall@k are linear in the gains at each place, so a tie group contributes its mean gain (mean
    relevance) at each of its places; MRR is not, so it is computed exactly from the distribution of the first
    relevant row's place in its tie group. tests/evaluation/test_metrics.py checks NDCG against scikit-learn
    and MRR/Recall@k against an enumeration of every order of the ties.
    """
    gains_m, scores_m = _padded(np.asarray(group_ids), np.asarray(gains, float), np.asarray(scores, float),
                                fill=np.nan)
    valid = np.nan_to_num(gains_m, nan=0.0).max(axis=1) > 0
    gains_m, scores_m = gains_m[valid], scores_m[valid]
    if gains_m.shape[0] == 0:
        return {"ndcg_at_k": float("nan"), "mrr": float("nan"), "recall_at_k": float("nan"), "lists": 0}
    scores_m = np.where(np.isnan(scores_m), -np.inf, scores_m)  # padding after every real row
    g = np.nan_to_num(gains_m, nan=0.0)
    order = np.argsort(-scores_m, axis=1, kind="stable")
    ranked_scores = np.take_along_axis(scores_m, order, axis=1)
    ranked = np.take_along_axis(g, order, axis=1)
    labels = _tie_groups(ranked_scores)
    width = g.shape[1]
    kk = min(k, width)
    discount = np.zeros(width)
    discount[:kk] = 1.0 / np.log2(np.arange(2, kk + 2))
    dcg = (_tie_mean(2.0 ** ranked - 1, labels) * discount).sum(axis=1)
    ideal = -np.sort(-g, axis=1)
    idcg = ((2.0 ** ideal - 1) * discount).sum(axis=1)
    relevant = (ranked > 0).astype(float)
    n_relevant = relevant.sum(axis=1)
    recall = _tie_mean(relevant, labels)[:, :kk].sum(axis=1) / n_relevant
    # MRR: the first tie group holding a relevant row; its start, size and relevant count.
    rows = np.arange(g.shape[0])
    first = relevant.argmax(axis=1)
    label_of_first = labels.reshape(g.shape)[rows, first]
    counts = np.bincount(labels)
    rel_counts = np.bincount(labels, weights=relevant.ravel())
    start = np.argmax(labels.reshape(g.shape) == label_of_first[:, None], axis=1)
    mrr = _expected_reciprocal_rank(start, counts[label_of_first], rel_counts[label_of_first].astype(int))
    return {"ndcg_at_k": float(np.mean(dcg / idcg)), "mrr": float(np.mean(mrr)),
            "recall_at_k": float(np.mean(recall)), "lists": int(g.shape[0])}


def tie_statistics(group_ids: np.ndarray, scores: np.ndarray) -> dict:
    """How often a model ties: distinct scores over all rows, and the share of lists with at least one pair of
    equal scores (issue 11: the int8 model's 256 output levels tied in 4,881 of 5,006 test lists)."""
    s = np.asarray(scores, dtype=np.float64)
    starts, lengths = _groups(np.asarray(group_ids))
    (m,) = _padded(np.asarray(group_ids), s, fill=np.nan)
    m = np.sort(np.where(np.isnan(m), np.inf, m), axis=1)
    real = np.arange(m.shape[1])[None, :] < lengths[:, None]
    equal = (m[:, 1:] == m[:, :-1]) & real[:, 1:]
    tied = equal.any(axis=1)
    return {"rows": int(s.size), "distinct_scores": int(np.unique(s).size), "lists": int(starts.size),
            "lists_with_ties": int(tied.sum()), "share_of_lists_with_ties": float(tied.mean()) if starts.size else 0.0,
            "tied_pairs": int(equal.sum())}


def calibration(labels: np.ndarray, scores: np.ndarray, bins: int = 10):
    """Mean predicted vs observed rate per score bin (for the reliability plot)."""
    s = np.asarray(scores, float)
    y = np.asarray(labels, float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(s, edges) - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    pred = np.bincount(idx, weights=s, minlength=bins) / np.maximum(count, 1)
    obs = np.bincount(idx, weights=y, minlength=bins) / np.maximum(count, 1)
    keep = count > 0
    return pred[keep], obs[keep], count[keep]
