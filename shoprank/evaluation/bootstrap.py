"""Paired bootstrap over requests: is model A's test NDCG@k (and AUC) different from model B's?

Why paired and why requests: the two models score the same test rows, so most of the noise (easy and hard
requests) is shared; resampling whole requests keeps each list intact, which is the unit a ranking metric is
averaged over, and keeps the rows of one request (correlated by their shared query and user) together.
One resample draws as many requests as the test set has, with replacement; A and B are evaluated on the same
draw; the interval is the percentile interval of the differences A - B.

A resample is represented by how often each request was drawn (its count), not by copying rows: NDCG@k is a
count-weighted mean of per-request values, and AUC a count-weighted Mann-Whitney statistic over rows sorted
once per model, so 1,000 resamples of a 100,000-row test set take seconds. The draws are
`numpy.random.default_rng(seed).integers(0, n_requests, n_requests)` per resample, in order: a test
recomputes them directly (copying the drawn requests' rows) and finds the same interval.
"""

from __future__ import annotations

import numpy as np

from shoprank.evaluation.listwise import list_index, list_metrics

__all__ = ["draws", "paired_bootstrap", "weighted_auc"]


def draws(n_lists: int, resamples: int, seed: int):
    """The request indices of each resample, in order (a generator: one array of n_lists at a time)."""
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield rng.integers(0, n_lists, n_lists)


class _SortedAUC:
    """One model's rows sorted by score, with tied blocks, for count-weighted AUC over many resamples."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray, row_list: np.ndarray):
        s = np.asarray(scores, np.float64)
        order = np.argsort(s, kind="mergesort")
        ss = s[order]
        self.block = np.concatenate([[0], np.cumsum(ss[1:] != ss[:-1])]) if ss.size else np.zeros(0, np.int64)
        self.n_blocks = int(self.block[-1] + 1) if ss.size else 0
        self.y = np.asarray(labels)[order].astype(np.float64)
        self.row_list = row_list[order]

    def auc(self, list_counts: np.ndarray) -> float:
        w = list_counts[self.row_list].astype(np.float64)
        return weighted_auc(self.block, self.n_blocks, self.y, w)


def weighted_auc(block: np.ndarray, n_blocks: int, y: np.ndarray, w: np.ndarray) -> float:
    """AUC of rows sorted by ascending score (tied rows share a `block` id), each row counted `w` times;
    ties count half. Equal to `roc_auc` on the rows repeated by their weights."""
    pos = np.bincount(block, w * y, n_blocks)
    neg = np.bincount(block, w * (1.0 - y), n_blocks)
    p, q = pos.sum(), neg.sum()
    if p == 0 or q == 0:
        return float("nan")
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (p * q))


def paired_bootstrap(groups: np.ndarray, labels: np.ndarray, gains: np.ndarray, scores_a: np.ndarray,
                     scores_b: np.ndarray, k: int = 10, resamples: int = 1000, seed: int = 0, level: float = 0.95,
                     auc: bool = True) -> dict:
    """Paired bootstrap of A - B over requests on tie-aware NDCG@k (and AUC when `auc`).

    Returns per metric: a, b and diff on the full test set, the bootstrap standard error of diff, the
    percentile interval [low, high] at `level`, and `share_below_zero` (share of resamples with A < B)."""
    row_list, n_lists = list_index(groups)
    ma = list_metrics(groups, gains, scores_a, k)
    mb = list_metrics(groups, gains, scores_b, k)
    # Same lists kept for both models (the relevant rows do not depend on the scores).
    per_list = np.zeros(n_lists)
    kept = np.zeros(n_lists)
    per_list[ma.lists] = ma.ndcg - mb.ndcg
    kept[ma.lists] = 1.0
    key = f"ndcg_at_{k}"
    metrics = {key: {"a": float(ma.ndcg.mean()) if ma.ndcg.size else float("nan"),
                     "b": float(mb.ndcg.mean()) if mb.ndcg.size else float("nan")}}
    sa = sb = None
    if auc:
        sa, sb = _SortedAUC(labels, scores_a, row_list), _SortedAUC(labels, scores_b, row_list)
        ones = np.ones(n_lists)
        metrics["auc"] = {"a": sa.auc(ones), "b": sb.auc(ones)}
    samples: dict[str, list[float]] = {m: [] for m in metrics}
    for idx in draws(n_lists, resamples, seed):
        counts = np.bincount(idx, minlength=n_lists).astype(np.float64)
        denom = counts @ kept
        samples[key].append(float(counts @ per_list / denom) if denom > 0 else float("nan"))
        if auc:
            samples["auc"].append(sa.auc(counts) - sb.auc(counts))
    tail = (1.0 - level) / 2.0 * 100.0
    out = {"resamples": resamples, "seed": seed, "level": level, "unit": "request", "lists": n_lists}
    for m, v in metrics.items():
        d = np.asarray(samples[m])
        d = d[np.isfinite(d)]
        low, high = (np.percentile(d, [tail, 100.0 - tail]) if d.size else (float("nan"), float("nan")))
        out[m] = v | {"diff": v["a"] - v["b"], "low": float(low), "high": float(high),
                      "std_error": float(d.std(ddof=1)) if d.size > 1 else float("nan"),
                      "share_below_zero": float((d < 0).mean()) if d.size else float("nan")}
    return out
