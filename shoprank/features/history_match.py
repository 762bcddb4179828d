"""History match: how many of the request's recent items share the candidate's top category, category and brand.

What it is: for a (request, candidate) row, three counts over the request's behaviour history (its last
`history_len` items): entries whose top category, whose category and whose brand equal the candidate's. They go
to the model as three more columns of the pair input (`shoprank.features.affinity.AFFINITY_INPUT`, after the
query's affinity columns), one embedding row of the hidden layer per count, so each count is a learned step
function.

Why (issue 14): the history tower (a Conv over item + category + brand embeddings, max-pooled, dotted with the
candidate) says whether the history holds something like the candidate, not how much of it does. On one default
run's features, LightGBM on the network's own inputs scored test AUC 0.8021; with the history's top-category
match count and length added, 0.8055; the network with these columns went 0.8012 -> 0.8042 (float, same seed).

Label-free and from ids only: the transform computes it from the history's and the candidate's category and brand
indices (the category -> top category map is derived from the category vocabulary), so preprocessing and the
model server make it the same way from the same arrays. Counts above the column's last id share that id.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shoprank.schema import top_category

__all__ = ["HISTORY_MATCH_FIELDS", "category_tops", "history_match"]

# The candidate fields a history entry is compared on, in column order.
HISTORY_MATCH_FIELDS = ("top_category", "category", "brand")


def category_tops(categories: Sequence[str], first_index: int, size: int) -> np.ndarray:
    """The top category's index of every category id (int64 [size]): `categories` are the vocabulary's values,
    whose ids start at `first_index`; padding and out-of-vocabulary ids get -1 (they match nothing)."""
    tops = [top_category(c) for c in categories]
    index = {t: i for i, t in enumerate(sorted(set(tops)))}
    out = np.full(size, -1, np.int64)
    out[first_index: first_index + len(tops)] = [index[t] for t in tops]
    return out


def history_match(history_categories: np.ndarray, history_brands: np.ndarray, category: np.ndarray,
                  brand: np.ndarray, category_top: np.ndarray, row_request: np.ndarray | None = None) -> np.ndarray:
    """Counts [N, 3] (HISTORY_MATCH_FIELDS order, int32) for N candidate rows: histories [N, L] (or [R, L] with
    `row_request`, each row's request; or [1, L], one request's, broadcast over the rows), candidates' category and
    brand ids [N]. History id 0 is padding."""
    hc = np.asarray(history_categories, np.int64)
    hb = np.asarray(history_brands, np.int64)
    if row_request is not None:
        rr = np.asarray(row_request, np.intp)
        hc, hb = np.take(hc, rr, axis=0), np.take(hb, rr, axis=0)
    c = np.asarray(category, np.int64)[:, None]
    b = np.asarray(brand, np.int64)[:, None]
    n_cat = category_top.size
    hist_top = np.where((hc > 0) & (hc < n_cat), category_top[np.clip(hc, 0, n_cat - 1)], -1)
    cand_top = np.where((c >= 0) & (c < n_cat), category_top[np.clip(c, 0, n_cat - 1)], -1)
    out = np.empty((len(c), len(HISTORY_MATCH_FIELDS)), np.int32)
    out[:, 0] = ((hist_top == cand_top) & (hist_top >= 0)).sum(axis=1)
    out[:, 1] = ((hc == c) & (hc > 0)).sum(axis=1)
    out[:, 2] = ((hb == b) & (hb > 0)).sum(axis=1)
    return out
