"""Building blocks of the streaming preprocessing: stable hashing, on-disk hash partitions, bucketed
sorted files, and .npy files written sequentially.

Everything here holds at most one partition or one bucket in memory; the sizes come from
`config.preprocess` (partition_rows, bucket_rows), never from the data size.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "NpyWriter",
    "Partitions",
    "clear_directory",
    "fixed_lists",
    "from_fixed_lists",
    "iter_parquet",
    "iter_slices",
    "mix64",
    "partition_of",
    "read_bucket",
    "string_hash",
    "unit_interval",
    "write_bucketed",
]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_PRIME = np.uint64(0x100000001B3)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-spread 64-bit value per input (vectorised, wraps mod 2^64)."""
    z = np.asarray(x, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def unit_interval(h: np.ndarray) -> np.ndarray:
    """Hashes -> floats in [0, 1)."""
    return (np.asarray(h, np.uint64) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def string_hash(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A stable 64-bit hash per string (the same in every process and chunking; null and "" -> 0).

    Vectorised over the UTF-8 bytes: the first 8 bytes, the last 8 bytes and the length, mixed with
    mix64. Exact for ids up to 16 bytes; longer strings sharing both ends collide, which only unbalances
    a partition or a hash split a little, never changes a result."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if pa.types.is_dictionary(values.type):
        h = string_hash(values.dictionary)[values.indices.fill_null(0).to_numpy(zero_copy_only=False)]
        h[~values.is_valid().to_numpy(zero_copy_only=False)] = 0
        return h
    if not pa.types.is_string(values.type):
        values = values.cast(pa.string())
    n = len(values)
    if n == 0:
        return np.zeros(0, np.uint64)
    bufs = values.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int32, count=n + 1, offset=values.offset * 4).astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    data = np.concatenate([data[offsets[0]: offsets[-1]], np.zeros(8, np.uint8)])
    offsets -= offsets[0]
    starts, lengths = offsets[:-1], np.diff(offsets)
    head = np.zeros(n, np.uint64)
    tail = np.zeros(n, np.uint64)
    tail_start = np.maximum(offsets[1:] - 8, starts)
    for k in range(8):
        shift = np.uint64(8 * k)
        head |= np.where(k < lengths, data[starts + k], 0).astype(np.uint64) << shift
        tail |= np.where(tail_start + k < offsets[1:], data[tail_start + k], 0).astype(np.uint64) << shift
    with np.errstate(over="ignore"):
        h = mix64(head ^ mix64(tail + lengths.astype(np.uint64) * _PRIME))
    h[lengths == 0] = 0
    h[~values.is_valid().to_numpy(zero_copy_only=False)] = 0
    return h


def iter_parquet(pf: pq.ParquetFile, chunk_rows: int, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
    """A parquet file in chunks of at most about `chunk_rows` rows, one row group at a time.

    (`ParquetFile.iter_batches` over the whole file reads ahead across row groups: twice the resident
    memory on a 50M-row file. Row groups larger than two chunks are read in batches, without threads.)"""
    for i in range(pf.num_row_groups):
        if pf.metadata.row_group(i).num_rows <= 2 * chunk_rows:
            yield pf.read_row_group(i, columns=columns)
        else:
            for batch in pf.iter_batches(batch_size=chunk_rows, row_groups=[i], columns=columns, use_threads=False):
                yield pa.Table.from_batches([batch])


def partition_of(values: pa.Array | pa.ChunkedArray, parts: int) -> np.ndarray:
    return (string_hash(values) % np.uint64(max(parts, 1))).astype(np.int64)


class Partitions:
    """`parts` arrow IPC files under `directory`; rows are appended to the file of their partition."""

    def __init__(self, directory: str | Path, name: str, parts: int, schema: pa.Schema):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name, self.parts, self.schema = name, parts, schema
        self.paths = [self.dir / f"{name}-{p:04d}.arrow" for p in range(parts)]
        self._writers = [pa.ipc.new_file(str(p), schema) for p in self.paths]
        self.rows = np.zeros(parts, np.int64)

    def write(self, table: pa.Table, part: np.ndarray) -> None:
        if table.num_rows == 0:
            return
        if self.parts == 1:
            for batch in table.select(self.schema.names).cast(self.schema).to_batches():
                self._writers[0].write_batch(batch)
            self.rows[0] += table.num_rows
            return
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(self.parts + 1))
        table = table.select(self.schema.names).cast(self.schema).take(pa.array(order))
        for p in range(self.parts):
            lo, hi = bounds[p], bounds[p + 1]
            if hi > lo:
                for batch in table.slice(lo, hi - lo).to_batches():
                    self._writers[p].write_batch(batch)
                self.rows[p] += hi - lo

    def close(self) -> None:
        for w in self._writers:
            w.close()
        self._writers = []

    def read(self, p: int) -> pa.Table:
        with pa.OSFile(str(self.paths[p])) as f:
            return pa.ipc.open_file(f).read_all()


def write_bucketed(path: str | Path, table: pa.Table, bucket: np.ndarray, n_buckets: int) -> None:
    """Write `table` (sorted so that `bucket` is non-decreasing) as one record batch per bucket, so that
    `read_bucket` can fetch one bucket without reading the rest."""
    bounds = np.searchsorted(bucket, np.arange(n_buckets + 1))
    with pa.ipc.new_file(str(path), table.schema) as w:
        for b in range(n_buckets):
            part = table.slice(bounds[b], bounds[b + 1] - bounds[b])
            w.write_batch(part.combine_chunks().to_batches()[0] if part.num_rows else
                          pa.RecordBatch.from_pylist([], schema=table.schema))


def read_bucket(paths: Sequence[str | Path], b: int, schema: pa.Schema) -> pa.Table:
    """Bucket `b` of every bucketed file in `paths`, concatenated."""
    batches = []
    for p in paths:
        with pa.OSFile(str(p)) as f:
            batch = pa.ipc.open_file(f).get_batch(b)
        if batch.num_rows:
            batches.append(batch)
    return pa.Table.from_batches(batches, schema=schema)


class NpyWriter:
    """A .npy file of known final shape written front to back in slices (never a memory map, so the
    rows written do not stay in the process's resident memory)."""

    def __init__(self, path: str | Path, dtype: np.dtype | type, rows: int, tail: Sequence[int] = ()):
        self.path, self.dtype, self.rows, self.tail = Path(path), np.dtype(dtype), rows, tuple(tail)
        self._fh = open(self.path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (rows, *self.tail)}
        np.lib.format.write_array_header_1_0(self._fh, header)
        self.written = 0

    def write(self, values: np.ndarray) -> None:
        arr = np.ascontiguousarray(values, dtype=self.dtype)
        if arr.shape[1:] != self.tail:
            raise ValueError(f"{self.path.name}: rows of shape {arr.shape[1:]}, expected {self.tail}")
        arr.tofile(self._fh)
        self.written += arr.shape[0]

    def close(self) -> None:
        self._fh.close()
        if self.written != self.rows:
            raise RuntimeError(f"{self.path.name}: wrote {self.written} rows, expected {self.rows}")


def fixed_lists(values: np.ndarray) -> pa.FixedSizeListArray:
    """[n, k] int32 -> a fixed-size list column (k values per row)."""
    n, k = values.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values, np.int32).reshape(-1)), k)


def from_fixed_lists(column: pa.ChunkedArray | pa.Array, k: int) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, k).astype(np.int32, copy=False)


def iter_slices(n: int, size: int) -> Iterator[slice]:
    for lo in range(0, n, max(size, 1)):
        yield slice(lo, min(n, lo + size))


def clear_directory(path: str | Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
