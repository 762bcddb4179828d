"""Stage 7, the pair input: the query affinity (shoprank.features.affinity), counted from the written training
split's labels, after the tensors, because it needs every training row's query tokens, category, brand and label;
and the history-match columns (shoprank.features.history_match), from the written history and candidate ids.

The tables go into the transform (saved again, so serving computes the input from the same tables); the input
is written beside the other model inputs: training rows out of fold, validation and test rows (and serving)
from the tables of the whole training split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shoprank.data.streaming import NpyWriter, iter_slices
from shoprank.features.affinity import AFFINITY_INPUT, AFFINITY_TARGETS, AFFINITY_WIDTH, QueryAffinity
from shoprank.features.dataset import SPLITS, load_split
from shoprank.features.preprocess.context import RunContext
from shoprank.features.preprocess.fit import FittedTransform

__all__ = ["AffinitySummary", "write_affinity"]


@dataclass(frozen=True)
class AffinitySummary:
    """What the report says of the stage: table sizes (pairs with a click) and the seconds it took."""

    pairs: dict[str, int]
    seconds: float


def write_affinity(ctx: RunContext, fitted: FittedTransform, chunk_rows: int = 500_000) -> AffinitySummary:
    """Fit the tables on the training split, write `<split>/query_affinity.npy` for every split and save the
    transform with its tables."""
    config, transform = ctx.config, fitted.transform
    fc = config.features
    train = load_split(ctx.out, SPLITS[0])
    sizes = transform.sizes
    targets = {name: np.asarray(train.column(name)) for name in AFFINITY_TARGETS}
    # The training period's items: one row per distinct item index of the training split (its title and targets).
    _, first = np.unique(np.asarray(train.column("item_id")), return_index=True)
    items = {name: np.asarray(train.column(name)[np.sort(first)]) for name in ("title_tokens", *AFFINITY_TARGETS)}
    affinity, train_inputs = QueryAffinity.fit(
        np.asarray(train.column("query_tokens")), targets, np.asarray(train.column(config.train.label)),
        np.asarray(train.column("request")), items, sizes["token"], {name: sizes[name] for name in AFFINITY_TARGETS},
        fc.affinity_buckets, fc.affinity_smoothing, fc.affinity_rate_smoothing, fc.affinity_title_smoothing,
        fc.affinity_folds, config.train.seed)
    del targets, items
    transform.affinity = affinity
    for name in SPLITS:
        split = load_split(ctx.out, name)
        n = split.rows
        writer = NpyWriter(split.directory / f"{AFFINITY_INPUT}.npy", np.int32, n, (AFFINITY_WIDTH,))
        tokens, hist_cat, hist_brand = (split.column(c) for c in ("query_tokens", "history_categories",
                                                                  "history_brands"))
        cols = {t: split.column(t) for t in AFFINITY_TARGETS}
        for s in iter_slices(n, chunk_rows):
            targets = {t: np.asarray(c[s]) for t, c in cols.items()}
            history = transform.history_columns(np.asarray(hist_cat[s]), np.asarray(hist_brand[s]), targets)
            # The training rows' query columns are the fit's out-of-fold ones; the other splits' come from the tables.
            query = (train_inputs[s] if name == SPLITS[0]
                     else transform.query_affinity(np.asarray(tokens[s]), targets))
            writer.write(np.concatenate([query, history], axis=1))
        writer.close()
    transform.save(ctx.transform_dir)
    secs = ctx.timer.mark("query_affinity")
    pairs = {name: int(t.keys.size) for name, t in affinity.tables.items()} | {
        f"{name}_title": int(t.keys.size) for name, t in affinity.titles.items()}
    ctx.progress(f"[preprocess] query affinity: token x target pairs with a '{config.train.label}' {pairs}, "
                 f"{fc.affinity_folds} folds for the training rows ({secs:.1f}s)")
    return AffinitySummary(pairs, round(secs, 2))
