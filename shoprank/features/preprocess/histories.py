"""Stage 5, behaviour histories and ordered rows: for each user partition, every request's history (the
user's last `history_len` events of the history types strictly before the request time) is built from
that partition's events, and requests and candidate rows are written to files sorted by the global order,
one record batch per bucket, so that the tensor stage reads one bucket at a time.

Search requests first travel to the partition of their user's events (anonymous ones spread by request);
their candidate rows are the impressions, ordered by (request order, position, source row). Recommend
requests are the target events themselves; their candidates are the positive plus sampled negatives, at a
hash-chosen slot so that position tells nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shoprank.data.streaming import Partitions, fixed_lists, mix64, partition_of, unit_interval, write_bucketed
from shoprank.data.timestamps import MICROS
from shoprank.features.dataset import LABEL_COLUMNS
from shoprank.features.preprocess.context import RunContext, as_array, read_ipc
from shoprank.features.preprocess.requests import CleanPartitions
from shoprank.features.preprocess.rows import PartitionedRows
from shoprank.features.preprocess.splits import OrderedRequests, bucket_of
from shoprank.schema import EVENT_TYPES, INTEREST_EVENTS

__all__ = ["REQ_OUT", "ROW_OUT", "OrderedBuckets", "history_rows", "sample_negatives", "write_ordered_buckets"]

REQ_OUT = pa.schema([("order", pa.int64()), ("request_id", pa.string()), ("user_id", pa.string()),
                     ("query", pa.string()), ("hist_len", pa.int32())])
ROW_OUT = pa.schema([("order", pa.int64()), ("item", pa.int32()), ("clicked", pa.int8()), ("carted", pa.int8()),
                     ("purchased", pa.int8()), ("gain", pa.int8()), ("oracle", pa.float32()),
                     ("position", pa.int32())])  # where the row was shown (0 = top); -1 unknown


@dataclass(frozen=True)
class OrderedBuckets:
    """Requests and rows in the global order, bucketed: record batch b of every file holds bucket b."""

    request_schema: pa.Schema  # REQ_OUT plus "hist", the history's item codes (-1 = padding)
    request_files: tuple[Path, ...]  # one per user partition
    row_files: tuple[Path, ...]  # ROW_OUT, one per partition of the rows' origin


def history_rows(ev_user: np.ndarray, ev_ts: np.ndarray, ev_item: np.ndarray, req_user: np.ndarray,
                 req_ts: np.ndarray, length: int, ev_sub: np.ndarray | None = None,
                 req_sub: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The last `length` events of each request's user strictly before the request time.

    Users are integer codes (shared by events and requests), events in their original order (ties in
    time keep it). Times are epoch seconds, with the microseconds within the second in `ev_sub`/`req_sub`
    when the log has them (events of one second then keep their logged order). Returns the events'
    `ev_item` values [R, length] (oldest first, -1 = padding on the left) and the number used per request."""
    big = np.int64(1) << np.int64(34)  # > any epoch-second timestamp
    ev_ts, req_ts = np.asarray(ev_ts, np.int64), np.asarray(req_ts, np.int64)
    if (ev_sub is not None and np.any(ev_sub)) or (req_sub is not None and np.any(req_sub)):
        # Microsecond times, ranked so that user code and time still fit one int64 key.
        n_e = len(ev_ts)
        micro = np.concatenate([ev_ts * MICROS + (ev_sub if ev_sub is not None else 0),
                                req_ts * MICROS + (req_sub if req_sub is not None else 0)])
        rank = np.unique(micro, return_inverse=True)[1].reshape(-1).astype(np.int64)
        ev_ts, req_ts = rank[:n_e], rank[n_e:]
    ev_key = ev_user.astype(np.int64) * big + ev_ts
    order = np.argsort(ev_key, kind="stable")
    ev_key, items = ev_key[order], np.asarray(ev_item)[order]
    start = np.searchsorted(ev_key, req_user.astype(np.int64) * big, side="left")
    end = np.searchsorted(ev_key, req_user.astype(np.int64) * big + req_ts.astype(np.int64), side="left")
    idx = end[:, None] - length + np.arange(length)[None, :]
    valid = idx >= start[:, None]
    picked = items[np.clip(idx, 0, max(len(items) - 1, 0))] if len(items) else np.zeros(idx.shape, items.dtype)
    return np.where(valid, picked, -1), valid.sum(axis=1)


def sample_negatives(row_ids: np.ndarray, positives: np.ndarray, k: int, cdf: np.ndarray | None, n_items: int,
                     seed: int) -> np.ndarray:
    """`k` distinct items per target, none equal to its positive, drawn by a counter-based hash of
    (seed, target row, draw) -- the same whatever the partitioning. `cdf`: cumulative popularity over
    catalogue rows (None = uniform)."""
    n = len(row_ids)
    out = np.full((n, k), -1, np.int64)
    filled = np.zeros(n, np.int64)
    base = mix64(row_ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ np.uint64(seed))
    attempts = 4 * k + 8
    for a in range(attempts):
        h = mix64(base + np.uint64(a + 1))
        u = unit_interval(h)
        if cdf is not None:
            cand = np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), n_items - 1)
        else:
            cand = np.minimum((u * n_items).astype(np.int64), n_items - 1)
        ok = (filled < k) & (cand != positives) & ~(out == cand[:, None]).any(axis=1)
        rows = np.flatnonzero(ok)
        out[rows, filled[rows]] = cand[rows]
        filled[rows] += 1
        if (filled >= k).all():
            return out
    # Rare (tiny catalogues, one dominant item): fill with the next distinct catalogue rows.
    for r in np.flatnonzero(filled < k):
        step = 1
        while filled[r] < k:
            cand = (positives[r] + step) % n_items
            if cand not in out[r]:
                out[r, filled[r]] = cand
                filled[r] += 1
            step += 1
    return out


def write_ordered_buckets(ctx: RunContext, rows: PartitionedRows, clean: CleanPartitions,
                          requests: OrderedRequests, n_items: int, train_item_counts: np.ndarray) -> OrderedBuckets:
    """Histories per user partition; requests and rows written in order, one record batch per bucket.
    `n_items` and `train_item_counts` (per catalogue item) are where recommend draws its negatives."""
    fc, rc, work = ctx.config.features, ctx.config.recommend, ctx.work
    n_parts, n_buckets, edges = rows.events.parts, requests.n_buckets, requests.edges
    req_schema = REQ_OUT.append(pa.field("hist", pa.list_(pa.int32(), fc.history_len)))
    reqout = tuple(work / f"reqout-{p:04d}.arrow" for p in range(n_parts))
    n_row_files = n_parts if rows.task == "recommend" else len(clean.impression_files)
    rowout = tuple(work / f"rowout-{p:04d}.arrow" for p in range(n_row_files))
    routed = _route_requests(work, n_parts, clean, requests) if rows.task == "search" else None
    for p in range(len(clean.impression_files)):
        _search_rows(clean.impression_files[p], requests, p, rowout[p], n_buckets)
    cdf = None
    if rows.task == "recommend" and rc.negative_sampling == "popularity" and train_item_counts.sum() > 0:
        cdf = np.cumsum(train_item_counts).astype(np.float64)
    hist_types = np.array([EVENT_TYPES.index(e) for e in (
        rc.history_events if rows.task == "recommend" else INTEREST_EVENTS)], np.int8)
    for p in range(n_parts):
        allev = read_ipc(clean.event_files[p])
        ev = allev.filter(pa.array(np.isin(allev["event"].to_numpy(zero_copy_only=False), hist_types)))
        if routed is not None:
            r = routed.read(p)
            r_order = r["order"].to_numpy(zero_copy_only=False)
            r_ts = r["ts"].to_numpy(zero_copy_only=False)
            r_sub = r["sub"].to_numpy(zero_copy_only=False)
            r_user, r_id, r_query = as_array(r["user_id"]).fill_null(""), r["request_id"], r["query"]
        else:
            mine_rows = requests.local("first_row", p)
            tgt = allev.take(pa.array(np.searchsorted(allev["_row"].to_numpy(zero_copy_only=False), mine_rows)))
            r_order = requests.local("order", p)
            r_ts = tgt["timestamp"].to_numpy(zero_copy_only=False)
            r_sub = tgt["subsecond_us"].to_numpy(zero_copy_only=False)
            r_user, r_query = as_array(tgt["user_id"]).fill_null(""), tgt["query"].fill_null("")
            r_id = pc.binary_join_element_wise("e", pa.array(mine_rows).cast(pa.string()), "")
        del allev
        users = pc.dictionary_encode(pa.concat_arrays([as_array(ev["user_id"]).cast(pa.string()),
                                                       as_array(r_user).cast(pa.string())]))
        ucode = users.indices.to_numpy(zero_copy_only=False)
        n_e = ev.num_rows
        hrows, hused = history_rows(ucode[:n_e], ev["timestamp"].to_numpy(zero_copy_only=False),
                                    ev["item"].to_numpy(zero_copy_only=False).astype(np.int64), ucode[n_e:],
                                    r_ts, fc.history_len, ev["subsecond_us"].to_numpy(zero_copy_only=False), r_sub)
        del ev, users, ucode
        srt = np.argsort(r_order, kind="stable")
        take = pa.array(srt)
        rq = pa.table({"order": pa.array(r_order[srt]), "request_id": as_array(r_id).take(take),
                       "user_id": as_array(r_user).take(take), "query": as_array(r_query).take(take),
                       "hist_len": pa.array(hused[srt].astype(np.int32)),
                       "hist": fixed_lists(hrows[srt].astype(np.int32))}, schema=req_schema)
        write_bucketed(reqout[p], rq, bucket_of(edges, r_order[srt]), n_buckets)
        if routed is None:
            _recommend_rows(mine_rows, tgt, r_order, cdf, requests.negatives, n_items, rc.seed, edges, n_buckets,
                            rowout[p])
            del tgt
        del rq, hrows, hused, r_user, r_query, r_id  # before the next partition is read
    secs = ctx.timer.mark("histories")
    ctx.progress(f"[preprocess] histories and {n_buckets} ordered buckets written ({secs:.1f}s)")
    return OrderedBuckets(req_schema, reqout, rowout)


def _route_requests(work: Path, parts: int, clean: CleanPartitions, requests: OrderedRequests) -> Partitions:
    """Requests travel to the partition of their user's events (anonymous ones spread by request)."""
    routed = Partitions(work, "req-by-user", parts, pa.schema(
        [("order", pa.int64()), ("request_id", pa.string()), ("user_id", pa.string()), ("query", pa.string()),
         ("ts", pa.int64()), ("sub", pa.int32())]))
    for p, path in enumerate(clean.request_files):
        r = read_ipc(path)
        user = r["user_id"].combine_chunks()
        target = partition_of(user, parts)
        anon = pc.equal(pc.binary_length(user.fill_null("")), 0).to_numpy(zero_copy_only=False)
        target = np.where(anon, partition_of(r["request_id"], parts), target)
        routed.write(pa.table({"order": pa.array(requests.local("order", p)), "request_id": r["request_id"],
                               "user_id": user, "query": r["query"], "ts": pa.array(requests.local("ts", p)),
                               "sub": pa.array(requests.local("sub", p))}),
                     target)
    routed.close()
    return routed


def _search_rows(path: Path, requests: OrderedRequests, p: int, out: Path, n_buckets: int) -> None:
    """Impression rows of partition `p` (file `path`) in (order, position, source row) order, bucketed."""
    t = read_ipc(path)
    rorder = requests.local("order", p)[t["_req"].to_numpy(zero_copy_only=False)]
    pos = t["position"].fill_null(0).to_numpy(zero_copy_only=False)
    srt = np.lexsort((t["_row"].to_numpy(zero_copy_only=False), pos, rorder))
    labels = {c: t[c].to_numpy(zero_copy_only=False)[srt].astype(np.int8) for c in LABEL_COLUMNS}
    gain = sum(labels.values()).astype(np.int8)
    rel = t["relevance"]
    if rel.null_count < len(rel):  # graded relevance (ESCI) is the gain where given
        rv = rel.fill_null(-1).to_numpy(zero_copy_only=False)[srt]
        gain = np.where(rv >= 0, rv, gain).astype(np.int8)
    take = pa.array(srt)
    table = pa.table({"order": pa.array(rorder[srt]), "item": t["item"].take(take)}
                     | {c: pa.array(v) for c, v in labels.items()}
                     | {"gain": pa.array(gain), "oracle": t["oracle"].take(take).fill_null(np.nan),
                        "position": t["position"].take(take).fill_null(-1)}, schema=ROW_OUT)
    write_bucketed(out, table, bucket_of(requests.edges, rorder[srt]), n_buckets)


def _recommend_rows(target_rows: np.ndarray, tgt: pa.Table, r_order: np.ndarray, cdf: np.ndarray | None,
                    neg: int, n_items: int, seed: int, edges: np.ndarray, n_buckets: int, out: Path) -> None:
    """Each target's positive plus sampled negatives, at a hash-chosen slot so position tells nothing."""
    width = neg + 1
    pos_item = tgt["item"].to_numpy(zero_copy_only=False).astype(np.int64)
    negs = sample_negatives(target_rows, pos_item, neg, cdf, n_items, seed)
    slot = (mix64(target_rows.astype(np.uint64) ^ np.uint64(seed + 1)) % np.uint64(width)).astype(np.int64)
    col = np.arange(width)[None, :]
    is_pos = col == slot[:, None]
    cand = np.take_along_axis(negs, np.clip(np.where(col < slot[:, None], col, col - 1), 0, neg - 1), axis=1)
    cand[is_pos] = pos_item
    event = tgt["event"].to_numpy(zero_copy_only=False)[:, None]
    cart, purchase = EVENT_TYPES.index("cart"), EVENT_TYPES.index("purchase")
    labels = {"clicked": is_pos, "carted": is_pos & ((event == cart) | (event == purchase)),
              "purchased": is_pos & (event == purchase)}
    labels = {k: v.astype(np.int8).reshape(-1) for k, v in labels.items()}
    row_order = np.repeat(r_order, width)
    s = np.argsort(row_order, kind="stable")
    table = pa.table({"order": pa.array(row_order[s]), "item": pa.array(cand.reshape(-1)[s].astype(np.int32))}
                     | {k: pa.array(v[s]) for k, v in labels.items()}
                     | {"gain": pa.array(sum(labels.values())[s].astype(np.int8)),
                        "oracle": pa.array(np.full(row_order.size, np.nan, np.float32)),
                        "position": pa.array(np.full(row_order.size, -1, np.int32))}, schema=ROW_OUT)
    write_bucketed(out, table, bucket_of(edges, row_order[s]), n_buckets)

