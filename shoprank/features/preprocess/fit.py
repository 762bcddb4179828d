"""Stage 4, the feature transform, fitted on the training period only: the vocabularies see the queries of
training requests and the catalogue items that occur in the training period (time splits: rows and events
before t1; other splits: the rows of training requests), so that no validation or test item or word leaks
into them. The transform and the clean catalogue are saved for serving.

The transform's outputs for a candidate row depend only on its item, so they are computed here once per
catalogue item (`item_tensors`); the tensor stage gathers them by item code.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shoprank.data.streaming import iter_slices
from shoprank.features.preprocess.catalogue import CatalogueData
from shoprank.features.preprocess.context import RunContext, read_ipc, strings
from shoprank.features.preprocess.requests import CleanPartitions
from shoprank.features.preprocess.splits import OrderedRequests
from shoprank.features.transform import ITEM_INPUTS, FeatureTransform, RawBatch
from shoprank.schema import top_category

__all__ = ["NO_CATEGORY", "ROW_INPUTS", "FittedTransform", "fit_transform", "item_tensors"]

ROW_INPUTS = ITEM_INPUTS  # depend on the item only
NO_CATEGORY = "(no category)"


@dataclass(frozen=True)
class FittedTransform:
    """The fitted transform and what the later stages take from it per catalogue item."""

    transform: FeatureTransform
    items: dict[str, np.ndarray]  # ROW_INPUTS per catalogue item code
    top_names: list[str]  # the top-level categories, sorted (meta.json)
    top_code: np.ndarray  # int16 per catalogue item: its index in top_names
    train_item_counts: np.ndarray  # training-period occurrences per catalogue item (popularity negatives)


def fit_transform(ctx: RunContext, cat: CatalogueData, clean: CleanPartitions, requests: OrderedRequests
                  ) -> FittedTransform:
    """Fit the vocabularies on the training period, save the transform and catalogue to the transform
    directory, and compute the per-item tensors."""
    fc = ctx.config.features
    counts = np.zeros(len(cat), np.int64)  # training-period occurrences per catalogue item
    t1 = requests.split_times[0] if requests.split_times else None
    if t1 is not None:
        for path in clean.event_files:
            t = read_ipc(path, ["timestamp", "item"])
            ts = t["timestamp"].to_numpy(zero_copy_only=False)
            counts += np.bincount(t["item"].to_numpy(zero_copy_only=False)[ts < t1], minlength=len(cat))
    for p, path in enumerate(clean.impression_files):
        t = read_ipc(path, ["timestamp", "item", "_req"])
        if requests.mode == "time":
            past = t["timestamp"].to_numpy(zero_copy_only=False) < t1
        else:
            past = requests.local("split", p)[t["_req"].to_numpy(zero_copy_only=False)] == 0
        counts += np.bincount(t["item"].to_numpy(zero_copy_only=False)[past], minlength=len(cat))
    query_counts: Counter = Counter()  # queries of the training requests (one per request)
    for p, path in enumerate(clean.request_files):
        train_q = read_ipc(path, ["query"])["query"].combine_chunks().filter(
            pa.array(requests.local("split", p) == 0))
        for d in pc.value_counts(train_q).to_pylist():
            query_counts[d["values"]] += d["counts"]
    past = _select_past_items(counts, fc.max_items)
    train_queries = (q for q, c in query_counts.items() for _ in range(c))
    ids = strings(cat.ids)
    transform = FeatureTransform.fit(train_queries, cat.title[past], ids[past], cat.category[past],
                                     cat.brand[past], cat.price[past], fc, item_counts=counts[past])
    transform.save(ctx.transform_dir)
    pq.write_table(pa.table({"item_id": ids, "title": cat.title, "category": cat.category, "brand": cat.brand,
                             "price": cat.price}), ctx.transform_dir / "catalogue.parquet")
    items = item_tensors(transform, cat)
    tops = np.array([top_category(c) or NO_CATEGORY for c in cat.category], dtype=object)
    top_names = sorted(set(tops.tolist()))
    top_code = pd.Index(top_names).get_indexer(tops).astype(np.int16)
    secs = ctx.timer.mark("fit_transform")
    ctx.progress(f"[preprocess] vocabularies {transform.sizes} from {len(past):,} training-period items "
                 f"({secs:.1f}s)")
    return FittedTransform(transform, items, top_names, top_code, counts)


def item_tensors(transform: FeatureTransform, cat: CatalogueData, chunk: int = 200_000) -> dict[str, np.ndarray]:
    """`transform` outputs that depend on the candidate item, for every catalogue item."""
    n = len(cat)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ROW_INPUTS}
    ids = strings(cat.ids)
    for s in iter_slices(n, chunk):
        m = s.stop - s.start
        t = transform.transform(RawBatch(queries=[""], histories=[[]], history_categories=[[]], history_brands=[[]],
                                         row_request=np.zeros(m, np.int64), item_id=ids[s], title=cat.title[s],
                                         category=cat.category[s], brand=cat.brand[s], price=cat.price[s]))
        for k in ROW_INPUTS:
            out[k].append(t[k])
    fc = transform.config
    shapes = {"title_tokens": (0, fc.title_len)}
    return {k: np.concatenate(v) if v else np.zeros(shapes.get(k, (0,)), np.int32) for k, v in out.items()}


def _select_past_items(counts: np.ndarray, max_items: int) -> np.ndarray:
    """Catalogue rows seen in the training period; past `max_items`, the most frequent ones."""
    past = np.flatnonzero(counts > 0)
    if len(past) > max_items:
        order = np.lexsort((past, -counts[past]))
        past = np.sort(past[order[:max_items]])
    return past
