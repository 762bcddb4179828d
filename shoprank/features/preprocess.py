"""Preprocess: validate, split, fit the transform on the training period, build behaviour sequences, and
write model tensors per split -- streaming, with a bounded working set whatever the data size.

Two tasks share the pipeline:

* search (impressions present: the synthetic shop, ESCI, your own tables): one request per `request_id`,
  its impression rows the candidates;
* recommend (an event log without impressions): every event of a `recommend.target_events` type is a
  request whose positive is its item, with `recommend.negatives` sampled negatives (next-interaction
  ranking); histories hold the user's `recommend.history_events` strictly before it.

Splits: by request time (train < t1 <= validation < t2 <= test, the time quantiles of the shares) when
requests have timestamps; by the impressions' `split` column when it is filled (ESCI: "train"/"test";
validation is a hash-chosen share of train, validation_share / (train_share + validation_share)); by a
hash of the request id when there are neither. The vocabularies are fitted on the training period only.

How it streams (sizes from `config.preprocess`): the catalogue is validated in memory; events and
impressions are read by parquet row-group batches, checked row by row (shoprank.data.validation) and written
to hash partitions on disk (events by user, impressions by request); each partition is then loaded alone
to find duplicates and build requests. Only per-request scalars (time, first row, size, split) are
global. Requests get their global order (split, time, first row); histories are built per user
partition; rows and requests are written to files sorted by that order in buckets of about
`bucket_rows` rows, and the last pass turns one bucket at a time into model tensors, appended to the
split's .npy files. The tensors are assembled from `FeatureTransform.transform` outputs per catalogue item
and per request (the transform's outputs depend only on those), and the assembly is checked against a
direct `transform` call on raw fields for requests of every split.

Layout of the features directory (one folder per split):
    <split>/<input>.npy    model inputs (int32), one row per impression, rows of a request contiguous
    <split>/<column>.npy   clicked, carted, purchased, gain, oracle, request, top_category
    <split>/rows.parquet   request_id and item_id of every row
    <split>/meta.json      row count, top-category names
    quarantine.parquet     every rejected row with its reason
    golden_requests.json   raw test requests (ids and text) for the serving path checks
    report.json            validation counts, split sizes, vocabulary sizes, timings
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shoprank.config import ShoprankConfig
from shoprank.data.sources import read_source_info
from shoprank.data.streaming import (
    NpyWriter,
    Partitions,
    clear_directory,
    fixed_lists,
    from_fixed_lists,
    iter_parquet,
    iter_slices,
    mix64,
    partition_of,
    read_bucket,
    string_hash,
    unit_interval,
    write_bucketed,
)
from shoprank.data.validation import (
    DUPLICATE,
    QUARANTINE_SCHEMA,
    CheckedChunk,
    TableValidator,
    duplicate_mask,
    key_codes,
    quarantine_table,
    timestamp_window,
)
from shoprank.errors import DataValidationError
from shoprank.features.dataset import LABEL_COLUMNS, SPLITS
from shoprank.features.transform import INPUTS, FeatureTransform, RawBatch
from shoprank.schema import CATALOGUE, EVENT_TYPES, EVENTS, IMPRESSIONS, INTEREST_EVENTS, SPLIT_VALUES, top_category

ROW_INPUTS = ("title_tokens", "item_id", "category", "brand", "price_bucket")  # depend on the item only
HISTORY_INPUTS = {"history_items": "item_id", "history_categories": "category", "history_brands": "brand"}
NO_CATEGORY = "(no category)"
Progress = Callable[[str], None]


# --- behaviour sequences ----------------------------------------------------------------------------
def history_rows(ev_user: np.ndarray, ev_ts: np.ndarray, ev_item: np.ndarray, req_user: np.ndarray,
                 req_ts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The last `length` events of each request's user strictly before the request time.

    Users are integer codes (shared by events and requests), events in their original order (ties in
    time keep it). Returns the events' `ev_item` values [R, length] (oldest first, -1 = padding on the
    left) and the number used per request."""
    big = np.int64(1) << np.int64(34)  # > any epoch-second timestamp
    ev_key = ev_user.astype(np.int64) * big + ev_ts.astype(np.int64)
    order = np.argsort(ev_key, kind="stable")
    ev_key, items = ev_key[order], np.asarray(ev_item)[order]
    start = np.searchsorted(ev_key, req_user.astype(np.int64) * big, side="left")
    end = np.searchsorted(ev_key, req_user.astype(np.int64) * big + req_ts.astype(np.int64), side="left")
    idx = end[:, None] - length + np.arange(length)[None, :]
    valid = idx >= start[:, None]
    picked = items[np.clip(idx, 0, max(len(items) - 1, 0))] if len(items) else np.zeros(idx.shape, items.dtype)
    return np.where(valid, picked, -1), valid.sum(axis=1)


def build_histories(events: pd.DataFrame, req_user: np.ndarray, req_ts: np.ndarray, length: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The last `length` interest events of each request's user strictly before the request time.

    Returns (item ids [R, length] as objects, "" for padding, oldest first) and the count used.
    """
    ev = events[events["event"].isin(INTEREST_EVENTS)]
    users = pd.Index(pd.unique(np.concatenate([ev["user_id"].to_numpy(), req_user])))
    items = ev["item_id"].to_numpy(object)
    rows, used = history_rows(users.get_indexer(ev["user_id"].to_numpy()), ev["timestamp"].to_numpy(np.int64),
                              np.arange(len(items)), users.get_indexer(req_user), np.asarray(req_ts), length)
    out = np.where(rows >= 0, items[np.clip(rows, 0, max(len(items) - 1, 0))] if len(items) else "", "")
    return out, used


# --- the catalogue ----------------------------------------------------------------------------------
@dataclass
class CatalogueData:
    ids: pa.Array  # clean item ids, catalogue order
    title: np.ndarray
    category: np.ndarray
    brand: np.ndarray
    price: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def id_strings(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.ids.take(pa.array(np.asarray(rows, np.int64))).to_numpy(zero_copy_only=False),
                          dtype=object)


def _strings(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(arr.fill_null("").to_numpy(zero_copy_only=False), dtype=object)


def _absent(info: dict, table: str) -> tuple[str, ...]:
    return tuple(info.get("absent", {}).get(table, ()))


def _read_catalogue(raw: Path, config: ShoprankConfig, info: dict, quarantine: pq.ParquetWriter
                    ) -> tuple[CatalogueData, TableValidator]:
    table = pq.read_table(raw / "catalogue.parquet")
    if table.num_rows == 0:
        raise DataValidationError("catalogue: the table has no rows; items need at least an item_id")
    v = TableValidator(CATALOGUE, config.validation, absent=_absent(info, "catalogue"))
    checked = v.check(table)
    codes = checked.codes
    dup = duplicate_mask([key_codes(checked.table["item_id"].combine_chunks())]) & (codes == 0)
    codes[dup] = v.reasons.code(DUPLICATE)
    quarantine.write_table(v.quarantine(table, codes, 0))
    v.finish()
    clean = checked.table.filter(pa.array(codes == 0))
    cat = CatalogueData(clean["item_id"].combine_chunks(), _strings(clean["title"]), _strings(clean["category"]),
                        _strings(clean["brand"]), clean["price"].to_numpy(zero_copy_only=False).astype(np.float64))
    return cat, v


# --- pass 1: row checks and hash partitions ---------------------------------------------------------
# What the partitions keep of each row (what later steps use; quarantine records of duplicates show these).
EV_PART = pa.schema([("_row", pa.int64()), ("_code", pa.uint16()), ("timestamp", pa.int64()),
                     ("user_id", pa.string()), ("event", pa.int8()), ("item", pa.int32()), ("query", pa.string())])
IMP_PART = pa.schema([("_row", pa.int64()), ("_code", pa.uint16()), ("request_id", pa.string()),
                      ("timestamp", pa.int64()), ("user_id", pa.string()), ("query", pa.string()),
                      ("item", pa.int32()), ("position", pa.int32()),
                      ("clicked", pa.int8()), ("carted", pa.int8()), ("purchased", pa.int8()),
                      ("oracle", pa.float32()), ("relevance", pa.int8()), ("split", pa.string())])


def _parts_for(rows: int, config: ShoprankConfig) -> int:
    return max(1, math.ceil(rows / config.preprocess.partition_rows))


def _stream_table(path: Path, validator: TableValidator, parts: Partitions, key: str,
                  quarantine: pq.ParquetWriter, chunk_rows: int, extra: Callable) -> int:
    """Check every chunk of a raw table and append all its rows (with their reason codes) to the hash
    partitions of `key`; row-level rejects go to the quarantine now, duplicates later."""
    row0 = 0
    for chunk in iter_parquet(pq.ParquetFile(path), chunk_rows):
        checked = validator.check(chunk)
        quarantine.write_table(validator.quarantine(chunk, checked.codes, row0))
        t = checked.table
        cols = {"_row": pa.array(np.arange(row0, row0 + chunk.num_rows, dtype=np.int64)),
                "_code": pa.array(checked.codes, pa.uint16())}
        cols |= extra(t, checked)
        parts.write(pa.table(cols), partition_of(t[key], parts.parts))
        row0 += chunk.num_rows
        del chunk, checked, t, cols  # before the next read: one chunk in memory, not two
    return row0


def _event_codes(events: pa.ChunkedArray) -> pa.Array:
    return pc.index_in(events, value_set=pa.array(EVENT_TYPES)).fill_null(-1).cast(pa.int8())


def _ev_columns(t: pa.Table, checked: CheckedChunk) -> dict:
    return {"timestamp": t["timestamp"], "user_id": t["user_id"], "event": _event_codes(t["event"]),
            "item": pa.array(checked.item_rows, pa.int32()), "query": t["query"]}


def _imp_columns(t: pa.Table, checked: CheckedChunk) -> dict:
    cols = {c: t[c] for c in IMP_PART.names if c in t.column_names and c != "item"}
    return cols | {"item": pa.array(checked.item_rows, pa.int32())}


def _dedup(table: pa.Table, keys: list[str], validator: TableValidator, cat: CatalogueData,
           quarantine: pq.ParquetWriter, record_columns: Callable) -> np.ndarray:
    """Mark rows repeating an earlier row's key (any earlier row, as in validate_table) and quarantine
    them; returns the mask of clean rows. The partition holds every row of its keys."""
    codes = table["_code"].to_numpy(zero_copy_only=False)
    rows = table["_row"].to_numpy(zero_copy_only=False)
    if len(rows) > 1 and (np.diff(rows) < 0).any():
        raise RuntimeError("partition rows out of order")  # written chunk by chunk, in order
    dup = duplicate_mask([key_codes(table[k].combine_chunks()) for k in keys]) & (codes == 0)
    if dup.any():
        idx = np.flatnonzero(dup)
        recs = [json.dumps(r, default=str) for r in record_columns(table.take(pa.array(idx)), cat)]
        why = [DUPLICATE] * len(idx)
        validator.count(why, recs, rows[idx])
        quarantine.write_table(quarantine_table(validator.schema.name, rows[idx], why, recs))
    return (codes == 0) & ~dup


def _event_records(t: pa.Table, cat: CatalogueData) -> list[dict]:
    ev = np.asarray(EVENT_TYPES, dtype=object)
    return [{"timestamp": r["timestamp"], "user_id": r["user_id"],
             "event": ev[r["event"]] if r["event"] >= 0 else None,
             "item_id": cat.id_strings([r["item"]])[0] if r["item"] >= 0 else None, "query": r["query"]}
            for r in t.to_pylist()]


def _impression_records(t: pa.Table, cat: CatalogueData) -> list[dict]:
    out = []
    for r in t.to_pylist():
        r.pop("_row"), r.pop("_code")
        item = r.pop("item")
        r["item_id"] = cat.id_strings([item])[0] if item >= 0 else None
        out.append(r)
    return out


# --- requests -----------------------------------------------------------------------------------------
class Requests:
    """Per-request scalars of every partition (the only global state that grows with the data, about 25
    bytes a request). Pieces wait on disk until `freeze` fills one preallocated array per field."""

    FIELDS = (("part", np.int32), ("ts", np.int64), ("first_row", np.int64), ("n_rows", np.int32),
              ("split_col", np.int8), ("hash", np.uint64))

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pieces: list[tuple[Path, int]] = []
        self.with_hash = True

    def add(self, p: int, ts: np.ndarray, first_row: np.ndarray, n_rows: np.ndarray, split_col: np.ndarray,
            hashes: np.ndarray | None = None) -> None:
        """Requests of partition `p`; `hashes` (of the request ids, for hash splits) only where needed."""
        n = len(ts)
        values = {"part": np.full(n, p), "ts": ts, "first_row": first_row, "n_rows": n_rows,
                  "split_col": split_col, "hash": hashes if hashes is not None else np.zeros(n)}
        self.with_hash &= hashes is not None
        path = self.dir / f"requests-{len(self.pieces):05d}.npz"
        np.savez(path, **{k: np.asarray(values[k], dtype) for k, dtype in self.FIELDS})
        self.pieces.append((path, n))

    def freeze(self) -> dict[str, np.ndarray]:
        """One array per field. Without request-id hashes (event targets), the hash is the source row's."""
        total = sum(n for _, n in self.pieces)
        out = {k: np.empty(total, dtype) for k, dtype in self.FIELDS}
        lo = 0
        for path, n in self.pieces:
            with np.load(path) as piece:
                for k, _ in self.FIELDS:
                    out[k][lo: lo + n] = piece[k]
            path.unlink()
            lo += n
        if not self.with_hash:
            out["hash"] = mix64(out["first_row"].astype(np.uint64))
        return out


def assign_splits(req: dict[str, np.ndarray], has_ts: bool, config: ShoprankConfig) -> tuple[np.ndarray, str, list]:
    """Split index per request (0 train, 1 validation, 2 test), the mode, and the split times."""
    fc = config.features
    n = len(req["ts"])
    u = unit_interval(mix64(req["hash"] ^ np.uint64(0x5EED)))
    col = req["split_col"]
    if (col >= 0).any():
        val_share = fc.validation_share / max(fc.train_share + fc.validation_share, 1e-9)
        by_hash = np.select([u < fc.train_share, u < fc.train_share + fc.validation_share], [0, 1], 2)
        split = np.where(col == 0, np.where(u < val_share, 1, 0), np.where(col > 0, col, by_hash))
        return split.astype(np.int8), "column", None
    if has_ts and n:
        shares = np.cumsum([fc.train_share, fc.validation_share])
        t1, t2 = np.quantile(req["ts"], shares)
        split = np.select([req["ts"] < t1, req["ts"] < t2], [0, 1], 2)
        return split.astype(np.int8), "time", [int(t1), int(t2)]
    split = np.select([u < fc.train_share, u < fc.train_share + fc.validation_share], [0, 1], 2)
    return split.astype(np.int8), "hash", None


# --- the feature transform over items and requests ---------------------------------------------------
def _empty_lists(n: int) -> list[list[str]]:
    return [[] for _ in range(n)]


def item_tensors(transform: FeatureTransform, cat: CatalogueData, chunk: int = 200_000) -> dict[str, np.ndarray]:
    """`transform` outputs that depend on the candidate item, for every catalogue item."""
    n = len(cat)
    out = {k: [] for k in ROW_INPUTS}
    ids = _strings(cat.ids)
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


def _gather(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    safe = np.clip(rows, 0, max(len(table) - 1, 0))
    out = table[safe] if len(table) else np.zeros(rows.shape + table.shape[1:], np.int32)
    return np.where(rows >= 0, out, 0) if out.ndim == rows.ndim else np.where((rows >= 0)[..., None], out, 0)


def _select_past_items(counts: np.ndarray, max_items: int) -> np.ndarray:
    """Catalogue rows seen in the training period; past `max_items`, the most frequent ones."""
    past = np.flatnonzero(counts > 0)
    if len(past) > max_items:
        order = np.lexsort((past, -counts[past]))
        past = np.sort(past[order[:max_items]])
    return past


# --- negatives for recommendation --------------------------------------------------------------------
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


# --- the driver ---------------------------------------------------------------------------------------
REQ_OUT = pa.schema([("order", pa.int64()), ("request_id", pa.string()), ("user_id", pa.string()),
                     ("query", pa.string()), ("hist_len", pa.int32())])
ROW_OUT = pa.schema([("order", pa.int64()), ("item", pa.int32()), ("clicked", pa.int8()), ("carted", pa.int8()),
                     ("purchased", pa.int8()), ("gain", pa.int8()), ("oracle", pa.float32())])


class _Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.marks: dict[str, float] = {}
        self.peak_mib: dict[str, float] = {}
        self._last = self.t0

    def mark(self, name: str) -> float:
        """Record the time since the previous mark (and the peak RSS so far) under `name`; returns it."""
        from shoprank.telemetry import peak_rss_mib

        now = time.perf_counter()
        self.marks[name] = round(now - self._last, 2)
        self.peak_mib[name] = round(peak_rss_mib(), 1)
        secs, self._last = now - self._last, now
        return secs


def _write_ipc(path: Path, table: pa.Table) -> Path:
    with pa.ipc.new_file(str(path), table.schema) as w:
        w.write_table(table)
    return path


def _read_ipc(path: Path, columns: list[str] | None = None) -> pa.Table:
    with pa.OSFile(str(path)) as f:
        t = pa.ipc.open_file(f).read_all()
    return t.select(columns) if columns else t


def preprocess(raw_dir: str | Path, features_dir: str | Path, transform_dir: str | Path,
               config: ShoprankConfig, progress: Progress = print, now: int | None = None) -> dict:
    """Run the whole preprocessing step; returns the report (also written to report.json)."""
    out = Path(features_dir)
    out.mkdir(parents=True, exist_ok=True)
    Path(transform_dir).mkdir(parents=True, exist_ok=True)
    work = out / "_work"
    clear_directory(work)
    work.mkdir()
    quarantine = pq.ParquetWriter(str(out / "quarantine.parquet"), QUARANTINE_SCHEMA)
    try:
        return _Preprocessor(Path(raw_dir), out, Path(transform_dir), work, config, progress, now, quarantine).run()
    finally:
        quarantine.close()
        clear_directory(work)


class _Preprocessor:
    """The stages of `preprocess`, in order; each keeps only what later stages need."""

    def __init__(self, raw: Path, out: Path, tdir: Path, work: Path, config: ShoprankConfig, progress: Progress,
                 now: int | None, quarantine: pq.ParquetWriter):
        self.raw, self.out, self.tdir, self.work = raw, out, tdir, work
        self.config, self.fc, self.rc = config, config.features, config.recommend
        self.progress, self.quarantine = progress, quarantine
        self.window = timestamp_window(config.validation, now)
        self.info = read_source_info(raw)
        self.timer = _Timer()
        self.n_ev = pq.ParquetFile(raw / "events.parquet").metadata.num_rows
        self.n_imp = pq.ParquetFile(raw / "impressions.parquet").metadata.num_rows
        self.task = "search" if self.n_imp > 0 else "recommend"
        self.target_types = np.array([EVENT_TYPES.index(e) for e in self.rc.target_events], np.int8)

    def run(self) -> dict:
        self.check_rows()
        self.clean_partitions()
        self.order_requests()
        self.fit_transform()
        self.histories_and_rows()
        self.write_tensors()
        return self.write_report()

    # 1. The catalogue (in memory), then every row of events and impressions checked and partitioned.
    def check_rows(self) -> None:
        config, chunk = self.config, self.config.sources.chunk_rows
        self.cat, self.v_cat = _read_catalogue(self.raw, config, self.info, self.quarantine)
        self.v_ev = TableValidator(EVENTS, config.validation, known_items=self.cat.ids,
                                   timestamp_range=self.window, absent=_absent(self.info, "events"))
        self.p_ev = Partitions(self.work, "events", _parts_for(self.n_ev, config), EV_PART)
        self.candidate_targets = 0

        def ev_columns(t: pa.Table, checked: CheckedChunk) -> dict:
            cols = _ev_columns(t, checked)
            ok = checked.codes == 0
            self.candidate_targets += int(np.isin(cols["event"].to_numpy(zero_copy_only=False)[ok],
                                                  self.target_types).sum())
            return cols

        _stream_table(self.raw / "events.parquet", self.v_ev, self.p_ev, "user_id", self.quarantine, chunk,
                      ev_columns)
        self.p_ev.close()
        self.v_ev.report().check_budget(config.validation, EVENTS.key)  # duplicates can only add to it
        self.v_imp = TableValidator(IMPRESSIONS, config.validation, known_items=self.cat.ids,
                                    timestamp_range=self.window, absent=_absent(self.info, "impressions"))
        self.p_imp = None
        if self.task == "search":
            self.p_imp = Partitions(self.work, "impressions", _parts_for(self.n_imp, config), IMP_PART)
            _stream_table(self.raw / "impressions.parquet", self.v_imp, self.p_imp, "request_id", self.quarantine,
                          chunk, _imp_columns)
            self.p_imp.close()
            self.v_imp.report().check_budget(config.validation, IMPRESSIONS.key)
        secs = self.timer.mark("validate_rows")
        self.progress(f"[preprocess] checked {self.n_ev:,} events and {self.n_imp:,} impressions row by row into "
                      f"{self.p_ev.parts}+{self.p_imp.parts if self.p_imp else 0} partitions ({secs:.1f}s, "
                      f"{(self.n_ev + self.n_imp) / max(secs, 1e-9):,.0f} rows/s); task: {self.task}")

    # 2. Per partition: duplicates out, clean rows kept, requests built.
    def clean_partitions(self) -> None:
        reqs = Requests(self.work / "requests")
        self.ev_paths, self.req_paths, self.row_paths = [], [], []
        rc = self.rc
        sample_rate = min(1.0, rc.max_targets / max(self.candidate_targets, 1)) if rc.max_targets else 1.0
        for p in range(self.p_ev.parts):
            t = self.p_ev.read(p)
            clean = _dedup(t, ["user_id", "timestamp", "event", "item"], self.v_ev, self.cat, self.quarantine,
                           _event_records)
            t = t.filter(pa.array(clean)).drop_columns(["_code"])
            self.ev_paths.append(_write_ipc(self.work / f"ev-clean-{p:04d}.arrow", t))
            if self.task == "recommend":  # every clean event of a target type is a request
                rows = t["_row"].to_numpy(zero_copy_only=False)
                target = np.isin(t["event"].to_numpy(zero_copy_only=False), self.target_types)
                if sample_rate < 1.0:
                    target &= unit_interval(mix64(rows.astype(np.uint64) ^ np.uint64(rc.seed))) < sample_rate
                idx = np.flatnonzero(target)
                reqs.add(p, t["timestamp"].to_numpy(zero_copy_only=False)[idx], rows[idx], np.ones(len(idx)),
                         np.full(len(idx), -1))
                self.req_paths.append(_write_ipc(self.work / f"req-{p:04d}.arrow", pa.table(
                    {"query": t["query"].combine_chunks().take(pa.array(idx)).fill_null("")})))
            del t  # before the next partition is read
        self.v_ev_report = self.v_ev.finish()
        if self.p_imp is not None:
            for p in range(self.p_imp.parts):
                self._impression_partition(p, reqs)
            self.v_imp_report = self.v_imp.finish()
        else:
            self.v_imp_report = self.v_imp.report()
        self.req = reqs.freeze()
        self.n_requests = len(self.req["ts"])
        if self.n_requests == 0:
            what = (f"no event of the target types {list(rc.target_events)} (recommend.target_events)"
                    if self.task == "recommend" else "no clean impressions")
            raise DataValidationError(f"nothing to train on: {what}")
        secs = self.timer.mark("dedup_requests")
        self.progress(f"[preprocess] duplicates checked, {self.n_requests:,} requests ({secs:.1f}s)")
        self.validation = {r.table: r.to_dict() for r in (self.v_cat.report(), self.v_ev_report, self.v_imp_report)}
        self.quarantined = sum(v["quarantined"] for v in self.validation.values())
        per_table = "; ".join(f"{t}: {v['quarantined']}" for t, v in self.validation.items())
        self.progress(f"[preprocess] validated: quarantined {self.quarantined:,} rows ({per_table})")

    def _impression_partition(self, p: int, reqs: Requests) -> None:
        """Clean rows of one request-hash partition, and its requests in order of first appearance."""
        t = self.p_imp.read(p)
        clean = _dedup(t, ["request_id", "item"], self.v_imp, self.cat, self.quarantine, _impression_records)
        t = t.filter(pa.array(clean)).drop_columns(["_code"])
        enc = pc.dictionary_encode(t["request_id"].combine_chunks())  # codes in order of first appearance
        code = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        n_req = len(enc.dictionary)
        first_idx = np.unique(code, return_index=True)[1]  # rows are in source order
        first = t["_row"].to_numpy(zero_copy_only=False)[first_idx]
        has = t["timestamp"].is_valid().to_numpy(zero_copy_only=False)
        ts = t["timestamp"].fill_null(0).to_numpy(zero_copy_only=False)
        req_ts = np.full(n_req, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(req_ts, code[has], ts[has])
        req_ts[req_ts == np.iinfo(np.int64).max] = 0
        take = pa.array(first_idx)
        split_col = pc.index_in(t["split"].combine_chunks().take(take), value_set=pa.array(SPLIT_VALUES))
        requests = pa.table({"request_id": enc.dictionary, "user_id": t["user_id"].combine_chunks().take(take),
                             "query": t["query"].combine_chunks().take(take).fill_null(""),
                             "first_row": pa.array(first)})
        self.row_paths.append(_write_ipc(self.work / f"imp-clean-{p:04d}.arrow",
                                         t.append_column("_req", pa.array(code))))
        self.req_paths.append(_write_ipc(self.work / f"req-{p:04d}.arrow", requests))
        reqs.add(p, req_ts, first, np.bincount(code, minlength=n_req),
                 split_col.fill_null(-1).to_numpy(zero_copy_only=False), string_hash(enc.dictionary))

    # 3. Splits and the global order (split, request time, first row in the source); buckets of rows.
    def order_requests(self) -> None:
        req, n = self.req, self.n_requests
        has_ts = self.task == "recommend" or "timestamp" not in _absent(self.info, "impressions")
        self.split, self.mode, self.split_times = assign_splits(req, has_ts, self.config)
        del req["hash"], req["split_col"]
        if self.task == "recommend":
            self.negatives = min(self.rc.negatives, len(self.cat) - 1)
            if self.negatives < 1:
                raise DataValidationError("recommend: the catalogue needs at least two items for negatives")
            req["n_rows"][:] = 1 + self.negatives
        order_idx = np.lexsort((req["first_row"], req["ts"], self.split))
        self.order = np.empty(n, np.int64)
        self.order[order_idx] = np.arange(n)
        split_sorted = self.split[order_idx]
        self.split_start = np.searchsorted(split_sorted, np.arange(4)).astype(np.int64)
        cum = np.concatenate([[0], np.cumsum(req.pop("n_rows")[order_idx], dtype=np.int64)])
        del order_idx
        self.split_rows = [int(cum[self.split_start[s + 1]] - cum[self.split_start[s]]) for s in range(3)]
        # Buckets: consecutive requests of about bucket_rows rows, never straddling two splits.
        bucket_rows = self.config.preprocess.bucket_rows
        cuts = np.searchsorted(cum, np.arange(bucket_rows, cum[-1], bucket_rows), side="left")
        self.edges = np.unique(np.concatenate([[0, n], cuts, self.split_start])).astype(np.int64)
        self.bucket_split = split_sorted[self.edges[:-1].clip(0, max(n - 1, 0))]
        self.n_buckets = len(self.edges) - 1
        parts = max(self.p_ev.parts, len(self.req_paths))
        self.offsets = np.concatenate([[0], np.cumsum(np.bincount(req.pop("part"), minlength=parts))])

    def local(self, name: str, p: int) -> np.ndarray:
        """A per-request array restricted to the requests of partition `p`."""
        values = {"order": self.order, "split": self.split}.get(name)
        if values is None:
            values = self.req[name]
        return values[self.offsets[p]: self.offsets[p + 1]]

    # 4. The transform, fitted on the training period only.
    def fit_transform(self) -> None:
        cat, fc = self.cat, self.fc
        counts = np.zeros(len(cat), np.int64)  # training-period occurrences per catalogue item
        t1 = self.split_times[0] if self.split_times else None
        if t1 is not None:
            for path in self.ev_paths:
                t = _read_ipc(path, ["timestamp", "item"])
                ts = t["timestamp"].to_numpy(zero_copy_only=False)
                counts += np.bincount(t["item"].to_numpy(zero_copy_only=False)[ts < t1], minlength=len(cat))
        for p, path in enumerate(self.row_paths):
            t = _read_ipc(path, ["timestamp", "item", "_req"])
            if self.mode == "time":
                past = t["timestamp"].to_numpy(zero_copy_only=False) < t1
            else:
                past = self.local("split", p)[t["_req"].to_numpy(zero_copy_only=False)] == 0
            counts += np.bincount(t["item"].to_numpy(zero_copy_only=False)[past], minlength=len(cat))
        query_counts: Counter = Counter()  # queries of the training requests (one per request)
        for p, path in enumerate(self.req_paths):
            train_q = _read_ipc(path, ["query"])["query"].combine_chunks().filter(
                pa.array(self.local("split", p) == 0))
            for d in pc.value_counts(train_q).to_pylist():
                query_counts[d["values"]] += d["counts"]
        self.counts = counts
        past = _select_past_items(counts, fc.max_items)
        train_queries = (q for q, c in query_counts.items() for _ in range(c))
        ids = _strings(cat.ids)
        self.transform = FeatureTransform.fit(train_queries, cat.title[past], ids[past], cat.category[past],
                                              cat.brand[past], cat.price[past], fc)
        self.transform.save(self.tdir)
        pq.write_table(pa.table({"item_id": ids, "title": cat.title, "category": cat.category, "brand": cat.brand,
                                 "price": cat.price}), self.tdir / "catalogue.parquet")
        self.items = item_tensors(self.transform, cat)
        tops = np.array([top_category(c) or NO_CATEGORY for c in cat.category], dtype=object)
        self.top_names = sorted(set(tops.tolist()))
        self.top_code = pd.Index(self.top_names).get_indexer(tops).astype(np.int16)
        secs = self.timer.mark("fit_transform")
        self.progress(f"[preprocess] vocabularies {self.transform.sizes} from {len(past):,} training-period items "
                      f"({secs:.1f}s)")

    # 5. Histories per user partition; requests and rows written in order, one record batch per bucket.
    def histories_and_rows(self) -> None:
        work = self.work
        self.req_schema = REQ_OUT.append(pa.field("hist", pa.list_(pa.int32(), self.fc.history_len)))
        self.reqout = [work / f"reqout-{p:04d}.arrow" for p in range(self.p_ev.parts)]
        n_row_files = self.p_ev.parts if self.task == "recommend" else len(self.row_paths)
        self.rowout = [work / f"rowout-{p:04d}.arrow" for p in range(n_row_files)]
        routed = self._route_requests() if self.task == "search" else None
        for p in range(len(self.row_paths)):
            self._search_rows(p)
        cdf = None
        if self.task == "recommend" and self.rc.negative_sampling == "popularity" and self.counts.sum() > 0:
            cdf = np.cumsum(self.counts).astype(np.float64)
        hist_types = np.array([EVENT_TYPES.index(e) for e in (
            self.rc.history_events if self.task == "recommend" else INTEREST_EVENTS)], np.int8)
        for p in range(self.p_ev.parts):
            allev = _read_ipc(self.ev_paths[p])
            ev = allev.filter(pa.array(np.isin(allev["event"].to_numpy(zero_copy_only=False), hist_types)))
            if routed is not None:
                r = routed.read(p)
                r_order = r["order"].to_numpy(zero_copy_only=False)
                r_ts = r["ts"].to_numpy(zero_copy_only=False)
                r_user, r_id, r_query = _as_array(r["user_id"]).fill_null(""), r["request_id"], r["query"]
            else:
                mine_rows = self.local("first_row", p)
                tgt = allev.take(pa.array(np.searchsorted(allev["_row"].to_numpy(zero_copy_only=False), mine_rows)))
                r_order = self.local("order", p)
                r_ts = tgt["timestamp"].to_numpy(zero_copy_only=False)
                r_user, r_query = _as_array(tgt["user_id"]).fill_null(""), tgt["query"].fill_null("")
                r_id = pc.binary_join_element_wise("e", pa.array(mine_rows).cast(pa.string()), "")
            del allev
            users = pc.dictionary_encode(pa.concat_arrays([_as_array(ev["user_id"]).cast(pa.string()),
                                                           _as_array(r_user).cast(pa.string())]))
            ucode = users.indices.to_numpy(zero_copy_only=False)
            n_e = ev.num_rows
            hrows, hused = history_rows(ucode[:n_e], ev["timestamp"].to_numpy(zero_copy_only=False),
                                        ev["item"].to_numpy(zero_copy_only=False).astype(np.int64), ucode[n_e:],
                                        r_ts, self.fc.history_len)
            del ev, users, ucode
            srt = np.argsort(r_order, kind="stable")
            take = pa.array(srt)
            rq = pa.table({"order": pa.array(r_order[srt]), "request_id": _as_array(r_id).take(take),
                           "user_id": _as_array(r_user).take(take), "query": _as_array(r_query).take(take),
                           "hist_len": pa.array(hused[srt].astype(np.int32)),
                           "hist": fixed_lists(hrows[srt].astype(np.int32))}, schema=self.req_schema)
            write_bucketed(self.reqout[p], rq, _bucket_of(self.edges, r_order[srt]), self.n_buckets)
            if routed is None:
                self._recommend_rows(p, mine_rows, tgt, r_order, cdf)
                del tgt
            del rq, hrows, hused, r_user, r_query, r_id  # before the next partition is read
        secs = self.timer.mark("histories")
        self.progress(f"[preprocess] histories and {self.n_buckets} ordered buckets written ({secs:.1f}s)")

    def _route_requests(self) -> Partitions:
        """Requests travel to the partition of their user's events (anonymous ones spread by request)."""
        parts = self.p_ev.parts
        routed = Partitions(self.work, "req-by-user", parts, pa.schema(
            [("order", pa.int64()), ("request_id", pa.string()), ("user_id", pa.string()), ("query", pa.string()),
             ("ts", pa.int64())]))
        for p, path in enumerate(self.req_paths):
            r = _read_ipc(path)
            user = r["user_id"].combine_chunks()
            target = partition_of(user, parts)
            anon = pc.equal(pc.binary_length(user.fill_null("")), 0).to_numpy(zero_copy_only=False)
            target = np.where(anon, partition_of(r["request_id"], parts), target)
            routed.write(pa.table({"order": pa.array(self.local("order", p)), "request_id": r["request_id"],
                                   "user_id": user, "query": r["query"], "ts": pa.array(self.local("ts", p))}), target)
        routed.close()
        return routed

    def _search_rows(self, p: int) -> None:
        """Impression rows of partition `p` in (order, position, source row) order, bucketed."""
        t = _read_ipc(self.row_paths[p])
        rorder = self.local("order", p)[t["_req"].to_numpy(zero_copy_only=False)]
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
                         | {"gain": pa.array(gain), "oracle": t["oracle"].take(take).fill_null(np.nan)}, schema=ROW_OUT)
        write_bucketed(self.rowout[p], table, _bucket_of(self.edges, rorder[srt]), self.n_buckets)

    def _recommend_rows(self, p: int, target_rows: np.ndarray, tgt: pa.Table, r_order: np.ndarray,
                        cdf: np.ndarray | None) -> None:
        """Each target's positive plus sampled negatives, at a hash-chosen slot so position tells nothing."""
        neg, seed = self.negatives, self.rc.seed
        width = neg + 1
        pos_item = tgt["item"].to_numpy(zero_copy_only=False).astype(np.int64)
        negs = sample_negatives(target_rows, pos_item, neg, cdf, len(self.cat), seed)
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
                            "oracle": pa.array(np.full(row_order.size, np.nan, np.float32))}, schema=ROW_OUT)
        write_bucketed(self.rowout[p], table, _bucket_of(self.edges, row_order[s]), self.n_buckets)

    # 6. One bucket at a time: model tensors appended to each split's files.
    def write_tensors(self) -> None:
        fc, items, cat = self.fc, self.items, self.cat
        hist_len = fc.history_len
        cat_ids = _strings(cat.ids)
        writers, rows_writers, stats = {}, {}, {}
        for s, name in enumerate(SPLITS):
            d = self.out / name
            d.mkdir(exist_ok=True)
            n = self.split_rows[s]
            tails = {"query_tokens": (fc.query_len,), "title_tokens": (fc.title_len,)} | {
                k: (hist_len,) for k in HISTORY_INPUTS}
            w = {k: NpyWriter(d / f"{k}.npy", np.int32, n, tails.get(k, ())) for k in INPUTS}
            w |= {k: NpyWriter(d / f"{k}.npy", np.int8, n) for k in (*LABEL_COLUMNS, "gain")}
            w |= {"oracle": NpyWriter(d / "oracle.npy", np.float32, n),
                  "request": NpyWriter(d / "request.npy", np.int32, n),
                  "top_category": NpyWriter(d / "top_category.npy", np.int16, n)}
            writers[name] = w
            rows_writers[name] = pq.ParquetWriter(str(d / "rows.parquet"), pa.schema(
                [("request_id", pa.string()), ("item_id", pa.string())]))
            stats[name] = {"clicks": 0, "positives": 0, "empty": 0, "seconds": 0.0, "checked": False}
        self.golden: list[dict] = []
        for b in range(self.n_buckets):
            tb = time.perf_counter()
            lo, hi = int(self.edges[b]), int(self.edges[b + 1])
            s = int(self.bucket_split[b])
            name = SPLITS[s]
            rq = read_bucket(self.reqout, b, self.req_schema)
            rq = rq.take(pa.array(np.argsort(rq["order"].to_numpy(zero_copy_only=False), kind="stable")))
            r_order = rq["order"].to_numpy(zero_copy_only=False)
            if len(r_order) != hi - lo or (len(r_order) and (r_order[0] != lo or r_order[-1] != hi - 1)):
                raise RuntimeError(f"bucket {b}: {len(r_order)} requests for orders [{lo}, {hi})")
            rw = read_bucket(self.rowout, b, ROW_OUT)
            rw = rw.take(pa.array(np.argsort(rw["order"].to_numpy(zero_copy_only=False), kind="stable")))
            rr = rw["order"].to_numpy(zero_copy_only=False) - lo  # request within the bucket
            item = rw["item"].to_numpy(zero_copy_only=False).astype(np.int64)
            hist = from_fixed_lists(rq["hist"], hist_len).astype(np.int64)
            tensors = {"query_tokens": query_tensors(self.transform, _strings(rq["query"]))[rr]}
            tensors |= {k: _gather(items[src], hist)[rr] for k, src in HISTORY_INPUTS.items()}
            tensors |= {k: items[k][item] for k in ROW_INPUTS}
            w = writers[name]
            for k in INPUTS:
                w[k].write(tensors[k])
            for c in (*LABEL_COLUMNS, "gain"):
                w[c].write(rw[c].to_numpy(zero_copy_only=False))
            w["oracle"].write(rw["oracle"].to_numpy(zero_copy_only=False))
            split_row0 = w["request"].written
            w["request"].write(rr + lo - self.split_start[s])
            w["top_category"].write(self.top_code[item])
            req_ids = _strings(rq["request_id"])
            rows_writers[name].write_table(pa.table({"request_id": pa.array(req_ids[rr], pa.string()),
                                                     "item_id": pa.array(cat_ids[item], pa.string())}))
            st = stats[name]
            st["clicks"] += int(rw["clicked"].to_numpy(zero_copy_only=False).astype(np.int64).sum())
            st["positives"] += int(rw[self.config.train.label].to_numpy(zero_copy_only=False).astype(np.int64).sum())
            st["empty"] += int((rq["hist_len"].to_numpy(zero_copy_only=False) == 0).sum())
            if not st["checked"]:
                _check_assembly(self.transform, cat, rq, hist, rr, item, tensors, cat_ids)
                st["checked"] = True
            if s == 2 and len(self.golden) < fc.golden_requests:
                self._golden(rq, hist, rr, item, cat_ids, req_ids, split_row0)
            st["seconds"] += time.perf_counter() - tb
            del rq, rw, tensors, hist, item, rr, req_ids  # before the next bucket is read
        self.splits = {}
        for s, name in enumerate(SPLITS):
            for w in writers[name].values():
                w.close()
            rows_writers[name].close()
            n_req, n_rows = int(self.split_start[s + 1] - self.split_start[s]), self.split_rows[s]
            meta = {"rows": n_rows, "requests": n_req, "top_categories": self.top_names,
                    "click_rate": stats[name]["clicks"] / n_rows if n_rows else 0.0,
                    "empty_history_share": stats[name]["empty"] / n_req if n_req else 0.0}
            (self.out / name / "meta.json").write_text(json.dumps(meta))
            self.splits[name] = meta | {"seconds": round(stats[name]["seconds"], 2)}
            self.progress(f"[preprocess] {name}: {meta['rows']:,} rows, {meta['requests']:,} requests, "
                          f"click rate {meta['click_rate']:.3f}")
        self.timer.mark("write_tensors")
        label = self.config.train.label
        if self.split_rows[0] and stats["train"]["positives"] == 0:
            raise DataValidationError(
                f"the training split has no positive '{label}' label (train.label); "
                + ("this source has no purchases: use train.label=clicked" if label != "clicked" else
                   "every candidate is negative: check the labels of the source"))

    def _golden(self, rq: pa.Table, hist: np.ndarray, rr: np.ndarray, item: np.ndarray, cat_ids: np.ndarray,
                req_ids: np.ndarray, split_row0: int) -> None:
        """Raw test requests (ids and text) for the serving-path checks of the blessing gate."""
        starts = np.searchsorted(rr, np.arange(rq.num_rows + 1))
        queries, users = _strings(rq["query"]), _strings(rq["user_id"])
        for i in range(min(rq.num_rows, self.fc.golden_requests - len(self.golden))):
            a, z = starts[i], starts[i + 1]
            self.golden.append({"request_id": req_ids[i], "query": queries[i], "user_id": users[i],
                                "history": [cat_ids[h] for h in hist[i] if h >= 0],
                                "candidates": cat_ids[item[a:z]].tolist(),
                                "test_rows": [int(split_row0 + a), int(split_row0 + z)]})

    def write_report(self) -> dict:
        (self.out / "golden_requests.json").write_text(json.dumps(self.golden, indent=1))
        marks = self.timer.marks
        total = round(time.perf_counter() - self.timer.t0, 2)
        rows_in = self.n_ev + self.n_imp
        report = {"source": {k: self.info[k] for k in ("format", "task", "location", "preset") if k in self.info},
                  "task": self.task, "split_mode": self.mode, "validation": self.validation,
                  "quarantined_rows": int(self.quarantined), "splits": self.splits, "split_times": self.split_times,
                  "vocabulary_sizes": self.transform.sizes,
                  "rows_in": {"events": self.n_ev, "impressions": self.n_imp, "catalogue": self.v_cat.rows_in},
                  "partitions": {"events": self.p_ev.parts, "impressions": self.p_imp.parts if self.p_imp else 0,
                                 "buckets": self.n_buckets},
                  "timings": marks, "peak_rss_mib": self.timer.peak_mib, "seconds": total,
                  "validate_split_rows_per_second": round(
                      rows_in / max(marks["validate_rows"] + marks["dedup_requests"], 1e-9))}
        (self.out / "report.json").write_text(json.dumps(report, indent=2))
        self.progress(f"[preprocess] done in {total}s")
        return report


def _as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values


def _bucket_of(edges: np.ndarray, orders: np.ndarray) -> np.ndarray:
    return np.searchsorted(edges, orders, side="right") - 1


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
    batch = RawBatch(queries=list(_strings(rq["query"])[:k]), histories=histories,
                     history_categories=[[cat.category[h] for h in hr] for hr in hrows],
                     history_brands=[[cat.brand[h] for h in hr] for hr in hrows], row_request=rr[rows],
                     item_id=cat_ids[item[rows]], title=cat.title[item[rows]], category=cat.category[item[rows]],
                     brand=cat.brand[item[rows]], price=cat.price[item[rows]])
    direct = transform.transform(batch)
    for key in INPUTS:
        if not np.array_equal(direct[key], tensors[key][rows]):
            raise RuntimeError(f"preprocess: assembled '{key}' differs from FeatureTransform.transform")
