"""Tie-aware per-list ranking metrics: NDCG@k, reciprocal rank and Recall@k for every request.

Why a module of its own: the LambdaMART reference is compared with the int8 network, whose scores take few
distinct values (tied rows are common), and the comparison is a paired bootstrap over requests, which needs one
value per request and model. A metric that breaks ties by row order would credit or penalise a model for the
order preprocessing wrote the rows in. Here tied rows share their positions: NDCG and Recall average the
gains of a tied block over the positions it occupies (as sklearn's `ndcg_score` does), and the reciprocal
rank is its expectation over a random order of the tied block. `shoprank.evaluation.metrics.ranking_metrics` (the
means the evaluation, the gate and the README report) is tie-aware the same way since issue 11;
tests/evaluation/test_metrics.py checks that the two agree.

Gains are the graded `gain` column (what the pipeline's NDCG uses), transformed as 2**gain - 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shoprank.evaluation.metrics import roc_auc

__all__ = ["ListMetrics", "list_index", "list_metrics", "table_metrics"]


@dataclass(frozen=True)
class ListMetrics:
    """One value per request list that has a relevant row (`lists` holds their indices among all lists)."""

    ndcg: np.ndarray
    rr: np.ndarray
    recall: np.ndarray
    lists: np.ndarray  # index of each kept list among all lists (in row order)
    n_lists: int  # all lists, with or without a relevant row

    def means(self, k: int) -> dict[str, float]:
        if self.ndcg.size == 0:
            return {f"ndcg_at_{k}": float("nan"), "mrr": float("nan"), f"recall_at_{k}": float("nan"), "lists": 0}
        return {f"ndcg_at_{k}": float(self.ndcg.mean()), "mrr": float(self.rr.mean()),
                f"recall_at_{k}": float(self.recall.mean()), "lists": int(self.ndcg.size)}


def list_index(groups: np.ndarray) -> tuple[np.ndarray, int]:
    """Per row, the index of its request list (rows of a list are contiguous), and the number of lists."""
    g = np.asarray(groups)
    if g.size == 0:
        return np.zeros(0, np.int64), 0
    idx = np.cumsum(np.concatenate([[True], g[1:] != g[:-1]])) - 1
    return idx, int(idx[-1] + 1)


def _list_bounds(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(groups)
    if g.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.concatenate([[0], np.flatnonzero(g[1:] != g[:-1]) + 1])
    return starts, np.diff(np.concatenate([starts, [g.size]]))


def list_metrics(groups: np.ndarray, gains: np.ndarray, scores: np.ndarray, k: int = 10) -> ListMetrics:
    """Tie-aware NDCG@k, reciprocal rank and Recall@k of every list with a relevant row.

    Rows of one list must be contiguous in `groups`. NaN scores rank last."""
    starts, lengths = _list_bounds(groups)
    n_lists = int(starts.size)
    if n_lists == 0:
        e = np.zeros(0)
        return ListMetrics(e, e, e, np.zeros(0, np.int64), 0)
    width = int(lengths.max())
    row = np.repeat(np.arange(n_lists), lengths)
    col = np.arange(row.size) - np.repeat(starts, lengths)
    g = np.zeros((n_lists, width))
    s = np.full((n_lists, width), -np.inf)
    pad = np.ones((n_lists, width), bool)
    g[row, col] = np.asarray(gains, np.float64)
    sc = np.asarray(scores, np.float64)
    s[row, col] = np.where(np.isnan(sc), -np.inf, sc)
    pad[row, col] = False
    keep = (g > 0).any(axis=1)
    g, s, pad = g[keep], s[keep], pad[keep]
    n = g.shape[0]
    if n == 0:
        e = np.zeros(0)
        return ListMetrics(e, e, e, np.zeros(0, np.int64), n_lists)
    # Sort each list by score, padding last (its own block, gain 0, never tied with a real row).
    key = np.where(pad, np.inf, -s)
    order = np.argsort(key, axis=1, kind="stable")  # padding sits after a list's rows: stays after them
    ks = np.take_along_axis(key, order, axis=1)
    gs = np.take_along_axis(g, order, axis=1)
    ps = np.take_along_axis(pad, order, axis=1)
    # Tied blocks: a new block starts where the sort key changes (or padding begins).
    new = np.ones_like(ks, bool)
    new[:, 1:] = (ks[:, 1:] != ks[:, :-1]) | (ps[:, 1:] != ps[:, :-1])
    block = np.cumsum(new, axis=1) - 1  # block index within the list
    flat = block + (np.arange(n) * width)[:, None]  # unique block id over all lists
    size = np.bincount(flat.ravel(), minlength=n * width)
    gain2 = 2.0 ** gs - 1.0
    rel = (gs > 0).astype(np.float64)
    mean_gain = (np.bincount(flat.ravel(), gain2.ravel(), n * width) / np.maximum(size, 1))[flat]
    mean_rel = (np.bincount(flat.ravel(), rel.ravel(), n * width) / np.maximum(size, 1))[flat]
    kk = min(k, width)
    discount = np.zeros(width)
    discount[:kk] = 1.0 / np.log2(np.arange(2, kk + 2))
    dcg = (mean_gain * discount).sum(axis=1)
    ideal = -np.sort(-(2.0 ** g - 1.0), axis=1)
    idcg = (ideal * discount).sum(axis=1)
    n_rel = rel.sum(axis=1)
    recall = (mean_rel[:, :kk]).sum(axis=1) / n_rel
    # Reciprocal rank: the first block holding a relevant row starts at position p (0-based), has m rows of
    # which r are relevant; in a random order of the block the first relevant row is at p + j with
    # probability prod_{i<j-1} (m-r-i)/(m-i) * r/(m-j+1).
    rel_in_block = np.bincount(flat.ravel(), rel.ravel(), n * width)
    first_pos = (rel > 0).argmax(axis=1)
    first_block = flat[np.arange(n), first_pos]
    m = size[first_block].astype(np.float64)
    r = rel_in_block[first_block]
    p = (flat == first_block[:, None]).argmax(axis=1).astype(np.float64)
    rr = np.zeros(n)
    survive = np.ones(n)  # probability that the first j-1 drawn rows of the block are not relevant
    for j in range(1, width + 1):
        live = j <= m - r + 1
        if not live.any():
            break
        remaining = m - (j - 1)
        hit = np.where(live, r / np.maximum(remaining, 1), 0.0)
        rr += survive * hit / (p + j)
        survive = survive * np.where(live, (remaining - r) / np.maximum(remaining, 1), 0.0)
    return ListMetrics(dcg / idcg, rr, recall, np.flatnonzero(keep), n_lists)


def table_metrics(groups: np.ndarray, labels: np.ndarray, gains: np.ndarray, scores: np.ndarray, k: int = 10
                  ) -> dict[str, float]:
    """AUC (labels, ties counted half) and tie-aware NDCG@k / MRR / Recall@k (gains) of one model's scores."""
    out = {"auc": roc_auc(labels, scores)}
    out |= list_metrics(groups, gains, scores, k).means(k)
    return out
