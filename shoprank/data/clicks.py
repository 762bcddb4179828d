"""The click model of the synthetic shop, as functions: examination by position, the exact expected clicks of
any ranking, and labels drawn without position bias.

The generator (`shoprank.data.synthetic`) draws clicks from a position-based model (PBM): an impression shown
at position k (0 = top) is examined with probability theta_k = (1 / (1 + k)) ** POSITION_BIAS_POWER, and an
examined item is clicked with its true relevance, the oracle. Clicks are therefore biased twice: by the
logging policy's choice of what to show on top, and by examination. Knowing both halves, this module gives
what logs alone cannot:

* `expected_clicks`: the exact expected clicks per request of *any* ordering of the logged lists (the truth
  a counterfactual estimate is checked against; `shoprank.evaluation.counterfactual`);
* `unbiased_labels`: labels drawn from the relevance alone (every item examined), which train the
  "unbiased-label bound": the same model as today's, fed what position-blind clicks would have been.

`rank_examination` (the examination a row would get under another ordering, ties shared) is the one piece
that real data need too: the counterfactual estimators use it with *estimated* examination probabilities.
Plain numpy; rows of one request must be contiguous (the features directory's layout).
"""

from __future__ import annotations

import numpy as np

from shoprank.data.synthetic import POSITION_BIAS_POWER

__all__ = ["examination", "expected_clicks", "group_bounds", "rank_examination", "unbiased_labels"]


def examination(positions: np.ndarray | int, power: float = POSITION_BIAS_POWER) -> np.ndarray:
    """The generator's examination probability at each 0-based position: (1 / (1 + k)) ** power."""
    k = np.asarray(positions, dtype=np.float64)
    return (1.0 / (1.0 + k)) ** power


def group_bounds(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets and lengths of the contiguous runs of equal ids (the requests of a split)."""
    g = np.asarray(groups)
    if g.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.concatenate([[0], np.flatnonzero(g[1:] != g[:-1]) + 1])
    return starts, np.diff(np.concatenate([starts, [g.size]]))


def rank_examination(groups: np.ndarray, scores: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Per row, the examination probability it gets when its list is shown in descending `scores`: theta at
    its 0-based rank (ranks past the end of `theta` take its last value). Rows tied in score share the mean
    theta of their tied ranks -- the expectation under random tie-breaking, so a model that cannot tell two
    items apart (an int8 model often cannot) is neither credited nor blamed for an arbitrary order."""
    g = np.asarray(groups)
    s = np.asarray(scores, dtype=np.float64)
    th = np.asarray(theta, dtype=np.float64)
    n = g.size
    if n == 0:
        return np.zeros(0)
    starts, lengths = group_bounds(g)
    gid = np.repeat(np.arange(starts.size), lengths)
    order = np.lexsort((-s, gid))  # by request, best score first
    rank = np.arange(n) - np.repeat(starts, lengths)  # rank of the row at each sorted slot
    theta_at = th[np.minimum(rank, th.size - 1)]
    s_sorted, g_sorted = s[order], gid[order]
    new_block = np.ones(n, bool)
    new_block[1:] = (s_sorted[1:] != s_sorted[:-1]) | (g_sorted[1:] != g_sorted[:-1])
    block = np.cumsum(new_block) - 1
    mean = np.bincount(block, weights=theta_at) / np.bincount(block)
    out = np.empty(n)
    out[order] = mean[block]
    return out


def expected_clicks(groups: np.ndarray, relevance: np.ndarray, scores: np.ndarray,
                    theta: np.ndarray | None = None) -> np.ndarray:
    """Exact expected clicks of each request when its rows are shown in descending `scores`:
    sum over rows of examination(rank) * relevance. `theta` defaults to the generator's examination over the
    longest list. Returns one value per request (in the order of the requests in `groups`)."""
    g = np.asarray(groups)
    starts, lengths = group_bounds(g)
    if theta is None:
        theta = examination(np.arange(int(lengths.max()) if lengths.size else 1))
    per_row = rank_examination(g, scores, theta) * np.asarray(relevance, dtype=np.float64)
    return np.add.reduceat(per_row, starts) if starts.size else np.zeros(0)


def unbiased_labels(relevance: np.ndarray, seed: int) -> np.ndarray:
    """Labels drawn without position bias: 1 with the row's true relevance (every item examined), from
    `seed` alone, so the same split always gets the same labels. Only data with an oracle (the generator's)
    can have them."""
    r = np.asarray(relevance, dtype=np.float64)
    return (np.random.default_rng(seed).random(r.size) < r).astype(np.int8)
