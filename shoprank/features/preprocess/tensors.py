"""Stage 6, model tensors: one bucket at a time, the ordered requests and rows become the model inputs and
labels, appended to each split's .npy files, with rows.parquet (ids) and meta.json per split.

The tensors are assembled from `FeatureTransform.transform` outputs per catalogue item (computed when the
transform was fitted) and per request (query tokens, once per distinct text; histories gathered from the
item tensors) -- the transform's outputs depend only on those. The assembly is checked against a direct
`transform` call on raw fields for requests of every split. The first test requests are kept, raw (ids and
text), as the golden requests of the serving-path checks.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from shoprank.data.streaming import NpyWriter, from_fixed_lists, read_bucket
from shoprank.errors import DataValidationError
from shoprank.features.dataset import LABEL_COLUMNS, SPLITS
from shoprank.features.preprocess.catalogue import CatalogueData
from shoprank.features.preprocess.context import RunContext, strings
from shoprank.features.preprocess.fit import ROW_INPUTS, FittedTransform
from shoprank.features.preprocess.histories import ROW_OUT, OrderedBuckets
from shoprank.features.preprocess.splits import OrderedRequests
from shoprank.features.transform import INPUTS, PAIR_INPUTS, FeatureTransform, RawBatch

__all__ = ["HISTORY_INPUTS", "STREAMED_INPUTS", "TEST_REQUESTS", "WrittenSplits", "query_tensors", "write_tensors"]

HISTORY_INPUTS = {"history_items": "item_id", "history_categories": "category", "history_brands": "brand"}
# The inputs written here: all but the pair inputs, which the affinity stage writes once the training labels are in.
STREAMED_INPUTS = tuple(k for k in INPUTS if k not in PAIR_INPUTS)
# test/requests.parquet: one row per test request, in the split's order (the `request` column's codes).
TEST_REQUESTS = pa.schema([("request_id", pa.string()), ("query", pa.string()),
                           ("history", pa.list_(pa.string()))])


@dataclass(frozen=True)
class WrittenSplits:
    """What the report needs of the written splits."""

    splits: dict[str, dict]  # per split: meta.json plus the seconds spent writing it
    golden: tuple[dict, ...]  # raw test requests for golden_requests.json


def write_tensors(ctx: RunContext, cat: CatalogueData, requests: OrderedRequests, fitted: FittedTransform,
                  buckets: OrderedBuckets) -> WrittenSplits:
    """One bucket at a time: model tensors appended to each split's files. Raises when the training split
    has no positive label."""
    config, out = ctx.config, ctx.out
    fc, items, transform = config.features, fitted.items, fitted.transform
    hist_len = fc.history_len
    cat_ids = strings(cat.ids)
    writers, rows_writers, stats = {}, {}, {}
    for s, name in enumerate(SPLITS):
        d = out / name
        d.mkdir(exist_ok=True)
        n = requests.split_rows[s]
        tails = {"query_tokens": (fc.query_len,), "title_tokens": (fc.title_len,)} | {
            k: (hist_len,) for k in HISTORY_INPUTS}
        w = {k: NpyWriter(d / f"{k}.npy", np.int32, n, tails.get(k, ())) for k in STREAMED_INPUTS}
        w |= {k: NpyWriter(d / f"{k}.npy", np.int8, n) for k in (*LABEL_COLUMNS, "gain")}
        w |= {"oracle": NpyWriter(d / "oracle.npy", np.float32, n),
              "position": NpyWriter(d / "position.npy", np.int16, n),
              "request": NpyWriter(d / "request.npy", np.int32, n),
              "top_category": NpyWriter(d / "top_category.npy", np.int16, n)}
        writers[name] = w
        rows_writers[name] = pq.ParquetWriter(str(d / "rows.parquet"), pa.schema(
            [("request_id", pa.string()), ("item_id", pa.string())]))
        stats[name] = {"clicks": 0, "positives": 0, "empty": 0, "seconds": 0.0, "checked": False}
    golden: list[dict] = []
    # The test requests raw (ids and text): what another model's own transform needs to score the test split
    # (the counterfactual comparison with the promoted model, which may have other vocabularies).
    test_requests = pq.ParquetWriter(str(out / SPLITS[2] / "requests.parquet"), TEST_REQUESTS)
    for b in range(requests.n_buckets):
        tb = time.perf_counter()
        lo, hi = int(requests.edges[b]), int(requests.edges[b + 1])
        s = int(requests.bucket_split[b])
        name = SPLITS[s]
        rq = read_bucket(buckets.request_files, b, buckets.request_schema)
        rq = rq.take(pa.array(np.argsort(rq["order"].to_numpy(zero_copy_only=False), kind="stable")))
        r_order = rq["order"].to_numpy(zero_copy_only=False)
        if len(r_order) != hi - lo or (len(r_order) and (r_order[0] != lo or r_order[-1] != hi - 1)):
            raise RuntimeError(f"bucket {b}: {len(r_order)} requests for orders [{lo}, {hi})")
        rw = read_bucket(buckets.row_files, b, ROW_OUT)
        rw = rw.take(pa.array(np.argsort(rw["order"].to_numpy(zero_copy_only=False), kind="stable")))
        rr = rw["order"].to_numpy(zero_copy_only=False) - lo  # request within the bucket
        item = rw["item"].to_numpy(zero_copy_only=False).astype(np.int64)
        hist = from_fixed_lists(rq["hist"], hist_len).astype(np.int64)
        tensors = {"query_tokens": query_tensors(transform, strings(rq["query"]))[rr]}
        tensors |= {k: _gather(items[src], hist)[rr] for k, src in HISTORY_INPUTS.items()}
        tensors |= {k: items[k][item] for k in ROW_INPUTS}
        w = writers[name]
        for k in STREAMED_INPUTS:
            w[k].write(tensors[k])
        for c in (*LABEL_COLUMNS, "gain"):
            w[c].write(rw[c].to_numpy(zero_copy_only=False))
        w["oracle"].write(rw["oracle"].to_numpy(zero_copy_only=False))
        w["position"].write(np.clip(rw["position"].to_numpy(zero_copy_only=False), -1, np.iinfo(np.int16).max))
        split_row0 = w["request"].written
        w["request"].write(rr + lo - requests.split_start[s])
        w["top_category"].write(fitted.top_code[item])
        req_ids = strings(rq["request_id"])
        rows_writers[name].write_table(pa.table({"request_id": pa.array(req_ids[rr], pa.string()),
                                                 "item_id": pa.array(cat_ids[item], pa.string())}))
        st = stats[name]
        st["clicks"] += int(rw["clicked"].to_numpy(zero_copy_only=False).astype(np.int64).sum())
        st["positives"] += int(rw[config.train.label].to_numpy(zero_copy_only=False).astype(np.int64).sum())
        st["empty"] += int((rq["hist_len"].to_numpy(zero_copy_only=False) == 0).sum())
        if not st["checked"]:
            _check_assembly(transform, cat, rq, hist, rr, item, tensors, cat_ids)
            st["checked"] = True
        if s == 2:
            test_requests.write_table(_raw_requests(rq, hist, cat_ids))
        if s == 2 and len(golden) < fc.golden_requests:
            golden += _golden(rq, hist, rr, item, cat_ids, req_ids, split_row0, fc.golden_requests - len(golden))
        st["seconds"] += time.perf_counter() - tb
        del rq, rw, tensors, hist, item, rr, req_ids  # before the next bucket is read
    test_requests.close()
    splits = {}
    for s, name in enumerate(SPLITS):
        for w in writers[name].values():
            w.close()
        rows_writers[name].close()
        n_req, n_rows = int(requests.split_start[s + 1] - requests.split_start[s]), requests.split_rows[s]
        meta = {"rows": n_rows, "requests": n_req, "top_categories": fitted.top_names,
                "click_rate": stats[name]["clicks"] / n_rows if n_rows else 0.0,
                "empty_history_share": stats[name]["empty"] / n_req if n_req else 0.0}
        (out / name / "meta.json").write_text(json.dumps(meta))
        splits[name] = meta | {"seconds": round(stats[name]["seconds"], 2)}
        ctx.progress(f"[preprocess] {name}: {meta['rows']:,} rows, {meta['requests']:,} requests, "
                     f"click rate {meta['click_rate']:.3f}")
    ctx.timer.mark("write_tensors")
    label = config.train.label
    if requests.split_rows[0] and stats["train"]["positives"] == 0:
        raise DataValidationError(
            f"the training split has no positive '{label}' label (train.label); "
            + ("this source has no purchases: use train.label=clicked" if label != "clicked" else
               "every candidate is negative: check the labels of the source"))
    return WrittenSplits(splits, tuple(golden))


def query_tensors(transform: FeatureTransform, queries: np.ndarray) -> np.ndarray:
    """`transform`'s query tokens for each query (computed once per distinct text)."""
    inverse, uniq = pd.factorize(np.asarray(queries, dtype=object))
    m = len(uniq)
    if m == 0:
        return np.zeros((0, transform.config.query_len), np.int32)
    t = transform.transform(RawBatch(queries=list(uniq), histories=_empty_lists(m),
                                     history_categories=_empty_lists(m), history_brands=_empty_lists(m),
                                     row_request=np.arange(m), item_id=[""] * m, title=[""] * m,
                                     category=[""] * m, brand=[""] * m, price=np.full(m, np.nan)))
    return t["query_tokens"][inverse]


def _empty_lists(n: int) -> list[list[str]]:
    return [[] for _ in range(n)]


def _gather(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    safe = np.clip(rows, 0, max(len(table) - 1, 0))
    out = table[safe] if len(table) else np.zeros(rows.shape + table.shape[1:], np.int32)
    return np.where(rows >= 0, out, 0) if out.ndim == rows.ndim else np.where((rows >= 0)[..., None], out, 0)


def _raw_requests(rq: pa.Table, hist: np.ndarray, cat_ids: np.ndarray) -> pa.Table:
    """The bucket's requests as ids and text: request id, query, history item ids (oldest first)."""
    histories = [cat_ids[h[h >= 0]].tolist() for h in hist]
    return pa.table({"request_id": pa.array(strings(rq["request_id"]), pa.string()),
                     "query": pa.array(strings(rq["query"]), pa.string()),
                     "history": pa.array(histories, pa.list_(pa.string()))}, schema=TEST_REQUESTS)


def _golden(rq: pa.Table, hist: np.ndarray, rr: np.ndarray, item: np.ndarray, cat_ids: np.ndarray,
            req_ids: np.ndarray, split_row0: int, limit: int) -> list[dict]:
    """Up to `limit` raw test requests (ids and text) of a bucket, for the serving-path checks of the
    blessing gate."""
    starts = np.searchsorted(rr, np.arange(rq.num_rows + 1))
    queries, users = strings(rq["query"]), strings(rq["user_id"])
    out = []
    for i in range(min(rq.num_rows, limit)):
        a, z = starts[i], starts[i + 1]
        out.append({"request_id": req_ids[i], "query": queries[i], "user_id": users[i],
                    "history": [cat_ids[h] for h in hist[i] if h >= 0],
                    "candidates": cat_ids[item[a:z]].tolist(),
                    "test_rows": [int(split_row0 + a), int(split_row0 + z)]})
    return out


def _check_assembly(transform: FeatureTransform, cat: CatalogueData, rq: pa.Table, hist: np.ndarray,
                    rr: np.ndarray, item: np.ndarray, tensors: dict[str, np.ndarray], cat_ids: np.ndarray,
                    n: int = 32) -> None:
    """The assembled tensors of the first `n` requests must equal one direct `transform` call on their
    raw fields (ids, text, catalogue fields): the decomposition by item and by request must not drift."""
    k = min(n, rq.num_rows)
    if k == 0:
        return
    rows = np.flatnonzero(rr < k)
    histories = [[cat_ids[h] for h in hist[i] if h >= 0] for i in range(k)]
    hrows = [[h for h in hist[i] if h >= 0] for i in range(k)]
    batch = RawBatch(queries=list(strings(rq["query"])[:k]), histories=histories,
                     history_categories=[[cat.category[h] for h in hr] for hr in hrows],
                     history_brands=[[cat.brand[h] for h in hr] for hr in hrows], row_request=rr[rows],
                     item_id=cat_ids[item[rows]], title=cat.title[item[rows]], category=cat.category[item[rows]],
                     brand=cat.brand[item[rows]], price=cat.price[item[rows]])
    direct = transform.transform(batch)
    for key in STREAMED_INPUTS:
        if not np.array_equal(direct[key], tensors[key][rows]):
            raise RuntimeError(f"preprocess: assembled '{key}' differs from FeatureTransform.transform")
