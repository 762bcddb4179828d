"""Per-item tables: everything the server needs per catalogue item, precomputed when the bundle is made and
memory-mapped by every worker (`np.load(mmap_mode="r")`: the pages are the OS page cache's, shared by all
worker processes and reclaimable, not per-worker heap).

Rows: the catalogue's rows in catalogue order, then one row for the empty id, one per hashed out-of-vocabulary
bucket of the item vocabulary, and one per vocabulary id the catalogue lacks. Every id a request can carry
therefore has a row, with what the feature transform gives it (an unknown id: its OOV bucket's item index, no
title, category, brand or price), so a request never needs the transform's item vocabulary or the catalogue's
Python objects (at 2M items those took 42 s and 2.27 GB per worker, issue 11).

Files (`<dir>/`, written by `build_item_tables`; layout in items.json):
    ids.npy          fixed-width UTF-8 ids (numpy "S<w>"), sorted: binary search by `np.searchsorted`
    id_rows.npy      int32: the row of each sorted id
    flags.npy        uint8 per row: IN_CATALOGUE, IN_VOCABULARY (a candidate is "unknown" unless both)
    <input>.npy      int32 per row: the transform's item inputs (ITEM_INPUTS; title_tokens is [rows, title_len]),
                     computed by `FeatureTransform.transform` itself; the history look-up uses item_id, category,
                     brand; the whole-graph backends (SavedModel, ONNX, the Triton transformer) gather all five
    vectors.npy      [rows, 2F + H] item tower outputs (title | candidate | item_hidden) at the towers' item
                     dtype (float16 by default), when made with towers (the composed CPU backend reads them)
    items.json       row counts, special rows, id width, dtype, files

Not tested here: ids whose UTF-8 form ends in NUL bytes (numpy's "S" type strips them; no real catalogue has them).
"""

from __future__ import annotations

import json
import mmap
import time
import zlib
from collections.abc import Callable, Sequence
from itertools import repeat
from pathlib import Path

import numpy as np

from shoprank.features.transform import ITEM_INPUTS, Catalogue, FeatureTransform, RawBatch
from shoprank.layout import CATALOGUE_FILE, ITEMS_META

__all__ = ["IN_CATALOGUE", "IN_MEMORY_BYTES", "IN_VOCABULARY", "ItemTables", "build_item_tables"]

IN_CATALOGUE = 1
IN_VOCABULARY = 2
_IDS, _ID_ROWS, _FLAGS, _VECTORS = "ids.npy", "id_rows.npy", "flags.npy", "vectors.npy"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# Below this many bytes, a table is also worth a private in-memory form (see ItemTables).
IN_MEMORY_BYTES = 32 << 20
_DICT_BYTES_PER_ID = 100  # a Python str and its dict entry, about


class ItemTables:
    """The memory-mapped tables of one bundle (see the module doc). Loading maps files and reads items.json:
    constant time whatever the catalogue size. Read-only, so one instance can serve concurrent readers.

    Small catalogues also get private in-memory forms, when each costs at most `in_memory_bytes` per process: the
    item vectors widened to float32 (exactly the float16 values: the scores are the same bits) and a dict from id
    to row. They save ~20 us and ~50 us of CPU per 100-candidate request (gather without conversion; a hash look-up
    instead of a binary search over fixed-width bytes); a 2M-item catalogue stays on the shared mapping (the float32
    vectors alone would be 1.5 GB per worker). `in_memory_bytes=0` keeps everything mapped."""

    def __init__(self, directory: str | Path, in_memory_bytes: int = IN_MEMORY_BYTES):
        self.directory = Path(directory)
        self.meta = json.loads((self.directory / ITEMS_META).read_text())
        m = self.meta
        self.rows_total = int(m["rows"])
        self.catalogue_rows = int(m["catalogue_rows"])
        self.padding_row = int(m["padding_row"])
        self.oov_buckets = int(m["oov_buckets"])
        self.id_width = int(m["id_width"])

        def load(name: str, random_access: bool = False) -> np.ndarray:
            mapped = np.load(self.directory / name, mmap_mode="r")
            if random_access and mapped.size and hasattr(mmap, "MADV_RANDOM"):
                # Requests touch scattered rows: no read-ahead, and no mapping of the neighbouring pages on a fault
                # (the kernel's fault-around), so a worker's RSS counts the rows it reads, not their neighbours.
                mapped._mmap.madvise(mmap.MADV_RANDOM)
            # A plain ndarray over the mapping (np.memmap's subclass hooks cost microseconds per gather).
            return np.asarray(mapped)

        self._ids = load(_IDS, random_access=True)
        self._id_rows = load(_ID_ROWS, random_access=True)
        self.flags = load(_FLAGS)
        self.inputs = {k: load(f"{k}.npy") for k in ITEM_INPUTS}
        self.vectors = load(_VECTORS, random_access=True) if (self.directory / _VECTORS).is_file() else None
        both = IN_CATALOGUE | IN_VOCABULARY
        self._known = (self.flags & both) == both  # one byte per row, in this process (2 MB at 2M items)
        # float16 -> float32 through a table of all 65,536 half values (256 KB): exact, and about twice as fast as
        # numpy's cast (measured: 100 x 192 values, 26 us instead of 40 us on the 2-core build machine).
        self._half = (np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
                      if self.vectors is not None and self.vectors.dtype == np.float16 else None)
        if self.vectors is not None and self.vectors.size * 4 <= in_memory_bytes:
            self.vectors = self.vectors.astype(np.float32)
            self._half = None
        self._index: dict[str, int] | None = None
        if len(self._ids) * _DICT_BYTES_PER_ID <= in_memory_bytes:
            self._index = dict(zip((v.decode("utf-8") for v in self._ids.tolist()), self._id_rows.tolist()))

    def __len__(self) -> int:
        """Catalogue items (the extra rows for unknown ids are not counted)."""
        return self.catalogue_rows

    def some_ids(self, n: int) -> list[str]:
        """Up to n catalogue ids (for a warm-up or a smoke request)."""
        head = np.asarray(self._id_rows[: n + int(self.meta["extra_vocabulary_rows"])])
        return [self._ids[i].decode("utf-8") for i in np.flatnonzero(head < self.catalogue_rows)[:n].tolist()]

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """The row of each id (int64): its catalogue or vocabulary row, the empty id's row, or its OOV bucket's row
        (the bucket `Vocabulary.lookup` hashes it to). Binary search over the sorted ids: no per-worker dict."""
        n = len(item_ids)
        if n == 0:
            return np.zeros(0, np.int64)
        if self._index is not None:
            out = np.fromiter(map(self._index.get, item_ids, repeat(-1)), np.int64, n)
            if out.min() < 0:
                for j in np.flatnonzero(out < 0).tolist():
                    out[j] = self._miss(item_ids[j].encode("utf-8"))
            return out
        encoded = [s.encode("utf-8") for s in item_ids]
        if len(self._ids) == 0:
            return np.array([self._miss(e) for e in encoded], np.int64)
        keys = np.array(encoded, dtype=self._ids.dtype)  # longer ids are cut here, and refused below
        pos = np.searchsorted(self._ids, keys)
        np.minimum(pos, len(self._ids) - 1, out=pos)
        found = self._ids[pos] == keys
        if max(map(len, encoded)) > self.id_width:  # cut to the width above: such an id has no row of its own
            found &= np.fromiter(map(len, encoded), np.int64, n) <= self.id_width
        out = np.take(self._id_rows, pos).astype(np.int64)
        if found.all():
            return out
        for j in np.flatnonzero(~found).tolist():
            out[j] = self._miss(encoded[j])
        return out

    def _miss(self, encoded: bytes) -> int:
        """The row of an id with no row of its own: its OOV bucket's (as Vocabulary.lookup hashes), or the empty
        id's."""
        return self.padding_row + (1 + zlib.crc32(encoded) % self.oov_buckets if encoded else 0)

    def known(self, rows: np.ndarray) -> np.ndarray:
        """Whether the model knows each row's item: in the catalogue and in the item vocabulary."""
        return np.take(self._known, rows)

    def in_catalogue(self, rows: np.ndarray) -> np.ndarray:
        return (np.take(self.flags, rows) & IN_CATALOGUE) != 0

    def item_inputs(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The transform's item inputs (ITEM_INPUTS) of each row."""
        return {k: np.take(v, rows, axis=0) for k, v in self.inputs.items()}

    def item_vectors(self, rows: np.ndarray) -> np.ndarray:
        """[N, 2F + H] float32 item vectors of each row."""
        if self.vectors is None:
            raise FileNotFoundError(f"{self.directory} has no {_VECTORS}: these tables were made without towers")
        gathered = np.take(self.vectors, rows, axis=0)
        if self._half is not None:
            return np.take(self._half, gathered.view(np.uint16))
        return gathered.astype(np.float32, copy=False)


def _open(directory: Path, name: str, dtype, shape: tuple[int, ...]) -> np.ndarray:
    return np.lib.format.open_memmap(directory / name, mode="w+", dtype=dtype, shape=shape)


def build_item_tables(transform_dir: str | Path, out_dir: str | Path, towers_dir: str | Path | None = None,
                      batch_rows: int = 65_536, num_threads: int | None = None,
                      progress: Progress = _quiet) -> dict:
    """Write the tables for the transform's catalogue (and with `towers_dir`, the item tower's vectors) to
    `out_dir`; returns items.json's content. Item inputs come from `FeatureTransform.transform` (the one transform)
    in batches of `batch_rows`, written straight to memory-mapped files, so memory stays bounded at any size."""
    t0 = time.perf_counter()
    tdir, out = Path(transform_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    transform = FeatureTransform.load(tdir)
    catalogue = Catalogue.load(tdir / CATALOGUE_FILE)
    vocab = transform.vocabs["item"]
    n_cat = len(catalogue)
    oov = vocab.oov_buckets
    in_catalogue = set(catalogue.item_id.tolist())
    extra = [v for v in vocab.values if v not in in_catalogue]  # vocabulary ids the catalogue lacks (usually none)
    padding_row = n_cat
    n_rows = n_cat + 1 + oov + len(extra)
    title_len = transform.config.title_len

    inputs = {k: _open(out, f"{k}.npy", np.int32, (n_rows, title_len) if k == "title_tokens" else (n_rows,))
              for k in ITEM_INPUTS}
    flags = np.zeros(n_rows, np.uint8)

    def put(lo: int, item_id: Sequence[str], title, category, brand, price) -> None:
        m = len(item_id)
        batch = RawBatch(queries=[""], histories=[[]], history_categories=[[]], history_brands=[[]],
                         row_request=np.zeros(m, np.int64), item_id=list(item_id), title=title, category=category,
                         brand=brand, price=np.asarray(price, dtype=np.float64))
        tensors = transform.transform(batch)
        for k in ITEM_INPUTS:
            inputs[k][lo: lo + m] = tensors[k]

    for lo in range(0, n_cat, batch_rows):
        hi = min(n_cat, lo + batch_rows)
        put(lo, catalogue.item_id[lo:hi], catalogue.title[lo:hi], catalogue.category[lo:hi],
            catalogue.brand[lo:hi], catalogue.price[lo:hi])
        flags[lo:hi] = IN_CATALOGUE | np.fromiter((IN_VOCABULARY * vocab.known(v) for v in catalogue.item_id[lo:hi]),
                                                  np.uint8, hi - lo)
    # The empty id (the transform's padding index) and vocabulary ids outside the catalogue: what the transform
    # gives an id without catalogue fields (no title, category, brand; price missing).
    special = ["", *extra]
    blank = np.full(len(special), "", dtype=object)
    put(padding_row, special[:1], blank[:1], blank[:1], blank[:1], [np.nan])
    if extra:
        put(padding_row + 1 + oov, extra, blank[1:], blank[1:], blank[1:], np.full(len(extra), np.nan))
        flags[padding_row + 1 + oov:] = IN_VOCABULARY
    # One row per OOV bucket b (1..oov): an unknown id hashes to item index b (Vocabulary.lookup) and, having no
    # catalogue fields, has nothing else: the padding row with its item index.
    for b in range(1, oov + 1):
        for k in ITEM_INPUTS:
            inputs[k][padding_row + b] = inputs[k][padding_row]
        inputs["item_id"][padding_row + b] = b
    for k in ITEM_INPUTS:
        inputs[k].flush()
    np.save(out / _FLAGS, flags)

    ids = [*catalogue.item_id.tolist(), *extra]
    id_rows = np.concatenate([np.arange(n_cat), padding_row + 1 + oov + np.arange(len(extra))]).astype(np.int32)
    encoded = np.array([s.encode("utf-8") for s in ids], dtype=bytes) if ids else np.zeros(0, "S1")
    order = np.argsort(encoded, kind="stable")
    np.save(out / _IDS, encoded[order])
    np.save(out / _ID_ROWS, id_rows[order])
    width = int(encoded.dtype.itemsize)
    del catalogue, in_catalogue, ids, encoded
    progress(f"[items] {n_cat:,} catalogue rows + {1 + oov + len(extra)} rows for unknown ids: ids and inputs "
             f"({time.perf_counter() - t0:.1f}s)")

    meta = {"rows": n_rows, "catalogue_rows": n_cat, "padding_row": padding_row, "oov_buckets": oov,
            "extra_vocabulary_rows": len(extra), "id_width": width, "inputs": list(ITEM_INPUTS),
            "files": sorted([_IDS, _ID_ROWS, _FLAGS, *(f"{k}.npy" for k in ITEM_INPUTS)])}
    if towers_dir is not None:
        from shoprank.scoring.composed import ComposedScorer

        tv = time.perf_counter()
        scorer = ComposedScorer(towers_dir, num_threads)
        width_v = sum(scorer.meta["item_vectors"].values())
        vectors = _open(out, _VECTORS, scorer.item_dtype, (n_rows, width_v))
        for lo in range(0, n_rows, batch_rows):
            hi = min(n_rows, lo + batch_rows)
            vectors[lo:hi] = scorer.item_vectors({k: np.asarray(inputs[k][lo:hi]) for k in ITEM_INPUTS})
        vectors.flush()
        del vectors
        meta |= {"vectors_dtype": scorer.item_dtype.name, "vector_columns": scorer.meta["item_vectors"],
                 "files": sorted([*meta["files"], _VECTORS])}
        progress(f"[items] item tower over {n_rows:,} rows -> {_VECTORS} [{n_rows:,} x {width_v}] "
                 f"{scorer.item_dtype.name} ({time.perf_counter() - tv:.1f}s)")
    (out / ITEMS_META).write_text(json.dumps(meta, indent=1))
    return meta
