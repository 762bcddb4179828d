"""Stage 2, duplicates and requests: each hash partition is loaded alone, rows repeating an earlier row's
key are quarantined, the clean rows are written back to the work directory, and the partition's requests
are built:

* search: one request per `request_id`, its impression rows the candidates (time = its earliest row);
* recommend: every clean event of a `recommend.target_events` type is a request (about
  `recommend.max_targets` of them, chosen by a hash of the source row, when that is set).

Only per-request scalars (partition, time, first row, size, split column, id hash) are global; they wait on
disk until the next stage loads them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shoprank.data.streaming import Partitions, mix64, string_hash, unit_interval
from shoprank.data.timestamps import MICROS
from shoprank.data.validation import DUPLICATE, TableValidator, duplicate_mask, key_codes, quarantine_table
from shoprank.errors import DataValidationError
from shoprank.features.preprocess.catalogue import CatalogueData, CheckedCatalogue
from shoprank.features.preprocess.context import RunContext, write_ipc
from shoprank.features.preprocess.rows import PartitionedRows
from shoprank.schema import EVENT_TYPES, SPLIT_VALUES

__all__ = ["CleanPartitions", "RequestPieces", "Requests", "deduplicate"]


@dataclass(frozen=True)
class RequestPieces:
    """The per-request scalars of every partition, in pieces on disk (partition order, requests in order
    of first appearance within each); `load` reads them into one array per field and deletes the pieces."""

    pieces: tuple[tuple[Path, int], ...]  # (file, requests in it)
    with_hash: bool  # the pieces hold request-id hashes (search); otherwise the source row's hash is used

    def __len__(self) -> int:
        return sum(n for _, n in self.pieces)

    def load(self) -> dict[str, np.ndarray]:
        """One array per field of `Requests.FIELDS`. Without request-id hashes (event targets), the hash is
        the source row's. Reads the pieces once: they are removed."""
        total = len(self)
        out = {k: np.empty(total, dtype) for k, dtype in Requests.FIELDS}
        lo = 0
        for path, n in self.pieces:
            with np.load(path) as piece:
                for k, _ in Requests.FIELDS:
                    out[k][lo: lo + n] = piece[k]
            path.unlink()
            lo += n
        if not self.with_hash:
            out["hash"] = mix64(out["first_row"].astype(np.uint64))
        return out


class Requests:
    """Collects the per-request scalars of each partition (the only global state that grows with the data,
    37 bytes a request: the FIELDS below) as pieces on disk; `pieces` hands them on."""

    FIELDS = (("part", np.int32), ("ts", np.int64), ("sub", np.int32), ("first_row", np.int64), ("n_rows", np.int32),
              ("split_col", np.int8), ("hash", np.uint64))

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._pieces: list[tuple[Path, int]] = []
        self._with_hash = True

    def add(self, p: int, ts: np.ndarray, sub: np.ndarray, first_row: np.ndarray, n_rows: np.ndarray,
            split_col: np.ndarray, hashes: np.ndarray | None = None) -> None:
        """Requests of partition `p` (time: epoch seconds `ts` and microseconds `sub`); `hashes` (of the
        request ids, for hash splits) only where needed."""
        n = len(ts)
        values = {"part": np.full(n, p), "ts": ts, "sub": sub, "first_row": first_row, "n_rows": n_rows,
                  "split_col": split_col, "hash": hashes if hashes is not None else np.zeros(n)}
        self._with_hash &= hashes is not None
        path = self.dir / f"requests-{len(self._pieces):05d}.npz"
        np.savez(path, **{k: np.asarray(values[k], dtype) for k, dtype in self.FIELDS})
        self._pieces.append((path, n))

    def pieces(self) -> RequestPieces:
        return RequestPieces(tuple(self._pieces), self._with_hash)


@dataclass(frozen=True)
class CleanPartitions:
    """Clean rows and requests per partition (arrow IPC files in the work directory), and the final
    validation counts."""

    event_files: tuple[Path, ...]  # per event partition: clean events (EV_PART without _code), source order
    request_files: tuple[Path, ...]  # per partition: request_id, user_id, query (+ first_row for search)
    impression_files: tuple[Path, ...]  # per impression partition: clean rows plus _req, the request's index
    requests: RequestPieces  # per-request scalars, partition by partition in the order of request_files
    validation: dict[str, dict]  # per table: TableReport.to_dict()
    quarantined: int  # rows quarantined in all tables


def deduplicate(ctx: RunContext, catalogue: CheckedCatalogue, rows: PartitionedRows) -> CleanPartitions:
    """Per partition: duplicates out, clean rows kept, requests built. Raises when a table ends over the
    bad-row budget or nothing is left to train on."""
    rc, cat = ctx.config.recommend, catalogue.items
    reqs = Requests(ctx.work / "requests")
    ev_paths: list[Path] = []
    req_paths: list[Path] = []
    row_paths: list[Path] = []
    sample_rate = min(1.0, rc.max_targets / max(rows.candidate_targets, 1)) if rc.max_targets else 1.0
    for p in range(rows.events.parts):
        t = rows.events.read(p)
        # Two events of one second are one only when their logged times agree to the microsecond too.
        clean = _dedup(t, ["user_id", "timestamp", "subsecond_us", "event", "item"], rows.event_validator, cat,
                       ctx.quarantine, _event_records)
        t = t.filter(pa.array(clean)).drop_columns(["_code"])
        ev_paths.append(write_ipc(ctx.work / f"ev-clean-{p:04d}.arrow", t))
        if rows.task == "recommend":  # every clean event of a target type is a request
            src_rows = t["_row"].to_numpy(zero_copy_only=False)
            target = np.isin(t["event"].to_numpy(zero_copy_only=False), rows.target_types)
            if sample_rate < 1.0:
                target &= unit_interval(mix64(src_rows.astype(np.uint64) ^ np.uint64(rc.seed))) < sample_rate
            idx = np.flatnonzero(target)
            reqs.add(p, t["timestamp"].to_numpy(zero_copy_only=False)[idx],
                     t["subsecond_us"].to_numpy(zero_copy_only=False)[idx], src_rows[idx], np.ones(len(idx)),
                     np.full(len(idx), -1))
            req_paths.append(write_ipc(ctx.work / f"req-{p:04d}.arrow", pa.table(
                {"query": t["query"].combine_chunks().take(pa.array(idx)).fill_null("")})))
        del t  # before the next partition is read
    ev_report = rows.event_validator.finish()
    if rows.impressions is not None:
        for p in range(rows.impressions.parts):
            rows_file, req_file = _impression_partition(ctx, rows.impressions, rows.impression_validator, cat, p,
                                                        reqs)
            row_paths.append(rows_file)
            req_paths.append(req_file)
        imp_report = rows.impression_validator.finish()
    else:
        imp_report = rows.impression_validator.report()
    pieces = reqs.pieces()
    n_requests = len(pieces)
    if n_requests == 0:
        what = (f"no event of the target types {list(rc.target_events)} (recommend.target_events)"
                if rows.task == "recommend" else "no clean impressions")
        raise DataValidationError(f"nothing to train on: {what}")
    secs = ctx.timer.mark("dedup_requests")
    ctx.progress(f"[preprocess] duplicates checked, {n_requests:,} requests ({secs:.1f}s)")
    validation = {r.table: r.to_dict() for r in (catalogue.report, ev_report, imp_report)}
    quarantined = sum(v["quarantined"] for v in validation.values())
    per_table = "; ".join(f"{t}: {v['quarantined']}" for t, v in validation.items())
    ctx.progress(f"[preprocess] validated: quarantined {quarantined:,} rows ({per_table})")
    return CleanPartitions(tuple(ev_paths), tuple(req_paths), tuple(row_paths), pieces, validation, quarantined)


def _impression_partition(ctx: RunContext, parts: Partitions, validator: TableValidator, cat: CatalogueData,
                          p: int, reqs: Requests) -> tuple[Path, Path]:
    """Clean rows of one request-hash partition, and its requests in order of first appearance; returns
    the files of both."""
    t = parts.read(p)
    clean = _dedup(t, ["request_id", "item"], validator, cat, ctx.quarantine, _impression_records)
    t = t.filter(pa.array(clean)).drop_columns(["_code"])
    enc = pc.dictionary_encode(t["request_id"].combine_chunks())  # codes in order of first appearance
    code = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    n_req = len(enc.dictionary)
    first_idx = np.unique(code, return_index=True)[1]  # rows are in source order
    first = t["_row"].to_numpy(zero_copy_only=False)[first_idx]
    has = t["timestamp"].is_valid().to_numpy(zero_copy_only=False)
    # The request's time is its earliest row's, to the microsecond: seconds * 1e6 + microseconds.
    ts = (t["timestamp"].fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64) * MICROS
          + t["subsecond_us"].fill_null(0).to_numpy(zero_copy_only=False))
    req_ts = np.full(n_req, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(req_ts, code[has], ts[has])
    req_ts[req_ts == np.iinfo(np.int64).max] = 0
    req_ts, req_sub = np.divmod(req_ts, MICROS)
    take = pa.array(first_idx)
    split_col = pc.index_in(t["split"].combine_chunks().take(take), value_set=pa.array(SPLIT_VALUES))
    requests = pa.table({"request_id": enc.dictionary, "user_id": t["user_id"].combine_chunks().take(take),
                         "query": t["query"].combine_chunks().take(take).fill_null(""),
                         "first_row": pa.array(first)})
    rows_file = write_ipc(ctx.work / f"imp-clean-{p:04d}.arrow", t.append_column("_req", pa.array(code)))
    req_file = write_ipc(ctx.work / f"req-{p:04d}.arrow", requests)
    reqs.add(p, req_ts, req_sub, first, np.bincount(code, minlength=n_req),
             split_col.fill_null(-1).to_numpy(zero_copy_only=False), string_hash(enc.dictionary))
    return rows_file, req_file


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
    return [{"timestamp": r["timestamp"]} | ({"subsecond_us": r["subsecond_us"]} if r["subsecond_us"] else {})
            | {"user_id": r["user_id"], "event": ev[r["event"]] if r["event"] >= 0 else None,
               "item_id": cat.id_strings([r["item"]])[0] if r["item"] >= 0 else None, "query": r["query"]}
            for r in t.to_pylist()]


def _impression_records(t: pa.Table, cat: CatalogueData) -> list[dict]:
    out = []
    for r in t.to_pylist():
        r.pop("_row"), r.pop("_code")
        if not r["subsecond_us"]:  # whole seconds: the record reads as the source row did
            r.pop("subsecond_us")
        item = r.pop("item")
        r["item_id"] = cat.id_strings([item])[0] if item >= 0 else None
        out.append(r)
    return out
