"""Stage 1b, row checks and hash partitions: events and impressions are read by parquet row-group batches,
checked row by row (shoprank.data.validation) and written to hash partitions on disk -- events by user,
impressions by request -- so that the next stages can load one partition at a time and still see every
row of a user (histories) or of a request (duplicates, request scalars).

Row-level rejects go to the quarantine here; duplicates need the whole partition and are found in the next
stage, so the validators travel on with their counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shoprank.config import ShoprankConfig
from shoprank.data.streaming import Partitions, iter_parquet, partition_of
from shoprank.data.validation import CheckedChunk, TableValidator
from shoprank.features.preprocess.catalogue import CatalogueData
from shoprank.features.preprocess.context import RunContext, absent_columns, timestamp_unit
from shoprank.schema import EVENT_TYPES, EVENTS, IMPRESSIONS

__all__ = ["EV_PART", "IMP_PART", "PartitionedRows", "partition_rows"]

# What the partitions keep of each row (what later steps use; quarantine records of duplicates show these).
EV_PART = pa.schema([("_row", pa.int64()), ("_code", pa.uint16()), ("timestamp", pa.int64()),
                     ("subsecond_us", pa.int32()), ("user_id", pa.string()), ("event", pa.int8()),
                     ("item", pa.int32()), ("query", pa.string())])
IMP_PART = pa.schema([("_row", pa.int64()), ("_code", pa.uint16()), ("request_id", pa.string()),
                      ("timestamp", pa.int64()), ("subsecond_us", pa.int32()), ("user_id", pa.string()),
                      ("query", pa.string()),
                      ("item", pa.int32()), ("position", pa.int32()),
                      ("clicked", pa.int8()), ("carted", pa.int8()), ("purchased", pa.int8()),
                      ("oracle", pa.float32()), ("relevance", pa.int8()), ("split", pa.string())])


@dataclass(frozen=True)
class PartitionedRows:
    """Every checked row of events and impressions, in hash partitions (closed), with the running tallies."""

    task: str  # "search" (impressions present) or "recommend" (an event log only)
    n_events: int  # source rows
    n_impressions: int
    events: Partitions  # by user: EV_PART rows, each with its reason code (0 = clean so far)
    impressions: Partitions | None  # by request: IMP_PART rows; None for recommend
    event_validator: TableValidator  # counts so far; the next stage adds the duplicates
    impression_validator: TableValidator
    target_types: np.ndarray  # event codes of recommend.target_events
    candidate_targets: int  # clean events of a target type (duplicates not yet removed), for max_targets


def partition_rows(ctx: RunContext, catalogue: CatalogueData, window: tuple[int, int] | None) -> PartitionedRows:
    """Check every event and impression row (timestamps within `window`, items in `catalogue`) and
    partition them; raises when a table is over the bad-row budget."""
    config, raw, chunk = ctx.config, ctx.raw, ctx.config.sources.chunk_rows
    n_ev = pq.ParquetFile(raw / "events.parquet").metadata.num_rows
    n_imp = pq.ParquetFile(raw / "impressions.parquet").metadata.num_rows
    task = "search" if n_imp > 0 else "recommend"
    target_types = np.array([EVENT_TYPES.index(e) for e in config.recommend.target_events], np.int8)

    unit = timestamp_unit(ctx.info)
    v_ev = TableValidator(EVENTS, config.validation, known_items=catalogue.ids, timestamp_range=window,
                          absent=absent_columns(ctx.info, "events"), timestamp_unit=unit)
    p_ev = Partitions(ctx.work, "events", _parts_for(n_ev, config), EV_PART)
    candidate_targets = 0

    def ev_columns(t: pa.Table, checked: CheckedChunk) -> dict:
        nonlocal candidate_targets
        cols = _ev_columns(t, checked)
        ok = checked.codes == 0
        candidate_targets += int(np.isin(cols["event"].to_numpy(zero_copy_only=False)[ok], target_types).sum())
        return cols

    _stream_table(raw / "events.parquet", v_ev, p_ev, "user_id", ctx.quarantine, chunk, ev_columns)
    p_ev.close()
    v_ev.report().check_budget(config.validation, EVENTS.key)  # duplicates can only add to it
    v_imp = TableValidator(IMPRESSIONS, config.validation, known_items=catalogue.ids, timestamp_range=window,
                           absent=absent_columns(ctx.info, "impressions"), timestamp_unit=unit)
    p_imp = None
    if task == "search":
        p_imp = Partitions(ctx.work, "impressions", _parts_for(n_imp, config), IMP_PART)
        _stream_table(raw / "impressions.parquet", v_imp, p_imp, "request_id", ctx.quarantine, chunk,
                      _imp_columns)
        p_imp.close()
        v_imp.report().check_budget(config.validation, IMPRESSIONS.key)
    secs = ctx.timer.mark("validate_rows")
    ctx.progress(f"[preprocess] checked {n_ev:,} events and {n_imp:,} impressions row by row into "
                 f"{p_ev.parts}+{p_imp.parts if p_imp else 0} partitions ({secs:.1f}s, "
                 f"{(n_ev + n_imp) / max(secs, 1e-9):,.0f} rows/s); task: {task}")
    return PartitionedRows(task, n_ev, n_imp, p_ev, p_imp, v_ev, v_imp, target_types, candidate_targets)


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
    return {"timestamp": t["timestamp"], "subsecond_us": t["subsecond_us"].fill_null(0), "user_id": t["user_id"],
            "event": _event_codes(t["event"]),
            "item": pa.array(checked.item_rows, pa.int32()), "query": t["query"]}


def _imp_columns(t: pa.Table, checked: CheckedChunk) -> dict:
    cols = {c: t[c] for c in IMP_PART.names if c in t.column_names and c != "item"}
    return cols | {"item": pa.array(checked.item_rows, pa.int32()), "subsecond_us": t["subsecond_us"].fill_null(0)}
