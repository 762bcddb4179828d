"""What every preprocessing stage may use: the run's paths and settings, where rejected rows go, the stage
clock, and the Arrow helpers the stages share (IPC files in the work directory, strings as numpy objects).

Stages get this context plus the frozen results of earlier stages; none of them keeps state of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shoprank.config import ShoprankConfig

__all__ = ["Progress", "RunContext", "StageTimer", "absent_columns", "as_array", "read_ipc", "strings",
           "timestamp_unit", "write_ipc"]

Progress = Callable[[str], None]


class StageTimer:
    """Seconds per stage and the peak RSS reached by the end of each (both go to report.json)."""

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


@dataclass(frozen=True)
class RunContext:
    """One preprocessing run: inputs, outputs, settings and the sinks every stage writes to."""

    raw: Path  # the landed tables (catalogue, events, impressions parquet) and source.json
    out: Path  # the features directory
    transform_dir: Path  # the fitted transform and the catalogue it serves with
    work: Path  # scratch files (partitions, buckets), removed at the end
    config: ShoprankConfig
    info: dict  # source.json: format, task, absent columns
    quarantine: pq.ParquetWriter  # every rejected row, with its reason
    timer: StageTimer
    progress: Progress


def absent_columns(info: dict, table: str) -> tuple[str, ...]:
    """Columns the source does not have for `table` (source.json's "absent")."""
    return tuple(info.get("absent", {}).get(table, ()))


def timestamp_unit(info: dict) -> str:
    """What numbers in the landed tables' `timestamp` count in: loaders and the generator write epoch seconds;
    a directory of tables is read as it is (its `timestamp_unit` option, else each value by its size)."""
    if info.get("format", "tables") == "tables":
        return str(info.get("timestamp_unit", "auto"))
    return "s"


def strings(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A string column as a numpy object array, nulls as ""."""
    return np.asarray(arr.fill_null("").to_numpy(zero_copy_only=False), dtype=object)


def as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous Arrow array (no copy when there is a single chunk)."""
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values


def write_ipc(path: Path, table: pa.Table) -> Path:
    with pa.ipc.new_file(str(path), table.schema) as w:
        w.write_table(table)
    return path


def read_ipc(path: Path, columns: list[str] | None = None) -> pa.Table:
    with pa.OSFile(str(path)) as f:
        t = pa.ipc.open_file(f).read_all()
    return t.select(columns) if columns else t
