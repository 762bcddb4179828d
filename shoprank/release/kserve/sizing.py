"""Memory for the container that runs the shoprank server, from the bundle it will load.

Why: a fixed 2 GiB limit was wrong both ways. A default catalogue used a tenth of it; a 2,000,000-item catalogue
needed 2.27 GB per worker, so the pod would have been OOM-killed while loading, and the rollout would only have
said "not ready". The promote step now sizes the container from the bundle it is about to serve: the memory
request is what the server needs, the limit leaves `LIMIT_HEADROOM` on top, and a bundle that needs more than
the profile allows (`ServingSettings.max_memory`, the nodes' size) is refused before anything is applied, with
the number it needs.

What the estimate is made of (`MemoryNeed`), per server process (a worker, plus the parent that serves gRPC when
there are several workers), from the bundle's files as they are on disk, whatever the layout:
- the runtime: Python, KServe, the backend's runtime, with an empty catalogue (`RUNTIME_BYTES`, measured RSS
  after warm-up) plus the bounds of the token cache and of the per-query affinity caches (`TOKEN_CACHE_BYTES`,
  `QUERY_CACHE_BYTES`: filled only by traffic, so a benchmark of 64 repeated queries does not show them);
- the catalogue in memory, for a bundle without per-item tables: per item `ITEM_BYTES` (the Python objects, the
  index, the precomputed item columns) plus the item's share of the column bytes (the parquet file's
  uncompressed size, from its metadata). A bundle with per-item tables (`*.npy`, memory-mapped: issue 11's
  item tables) is served from them, and the catalogue's Python objects are never built;
- transform.json (`JSON_FACTOR` times its size: vocabularies as Python dicts) and the backend's model files
  (tflite: every `*.tflite` and `*.npz`, whole-graph model or towers and head; savedmodel: saved_model/;
  onnx: triton/);
and once per pod, the files the server memory-maps (`*.npy` tables): the workers share their pages.

Measured here (int8 backend, 1 worker, RSS after 300 requests; tests/release/kserve/test_sizing.py shows the
arithmetic, `make bench-serve` compares the estimate with the served bundle's real RSS): the tiny bundle (600
items) 226 MB; the same with 100,000 items 335 MB and 500,000 items 640 MB, i.e. ~830 bytes per item of which
~56 are column bytes. Numbers for the savedmodel and onnx runtimes are the issue's measurement (TensorFlow
loaded: ~900 MB) and an allowance (onnxruntime), not measured here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from shoprank.layout import (
    CATALOGUE_FILE,
    SAVED_MODEL_DIR,
    TFLITE_FILE,
    TRANSFORM_DIR,
    TRANSFORM_FILE,
    TRITON_DIR,
)

__all__ = [
    "ITEM_BYTES",
    "JSON_FACTOR",
    "LIMIT_HEADROOM",
    "MIB",
    "RUNTIME_BYTES",
    "MemoryNeed",
    "TooLarge",
    "memory_need",
    "parse_quantity",
    "quantity",
]

MIB = 1 << 20
# Resident memory of one server process with an (almost) empty catalogue, after warm-up, by backend. "remote" is
# the transformer (no model in process).
RUNTIME_BYTES = {"tflite": 230 * MIB, "onnx": 300 * MIB, "savedmodel": 950 * MIB, "remote": 220 * MIB}
TOKEN_CACHE_BYTES = 32 * MIB  # == shoprank.features.transform.TOKEN_CACHE_BYTES (release does not import features)
# The per-query caches' bounds: the transform's affinity ids (AFFINITY_CACHE_BYTES) and the ranker's folded affinity
# (shoprank.scoring.ranker.FOLD_CACHE_BYTES), 16 MiB each; tests/release/kserve/test_sizing.py checks the sum.
QUERY_CACHE_BYTES = 32 * MIB
ITEM_BYTES = 780
JSON_FACTOR = 8
LIMIT_HEADROOM = 1.5  # limit = request x this: transient arrays of a full batch, allocator slack
_ROUND = 64 * MIB
_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "K": 10**3, "M": 10**6, "G": 10**9,
          "T": 10**12, "k": 10**3}


class TooLarge(ValueError):
    """The bundle needs more memory than the profile allows a replica."""


def parse_quantity(text: str) -> int:
    """A Kubernetes memory quantity ("2Gi", "512Mi", "1G", "1000") in bytes."""
    s = str(text).strip()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * _UNITS[unit])
    return int(float(s))


def quantity(n_bytes: int) -> str:
    """Bytes rounded up to 64 Mi, as a Kubernetes quantity in the API server's canonical form (the largest binary
    unit that divides it: "1Gi", not "1024Mi"). KServe's webhook rewrites quantities to that form, so "1024Mi"
    read back as "1Gi" and every later promotion saw a resource change (found by the cluster tests)."""
    mib = math.ceil(n_bytes / _ROUND) * _ROUND // MIB
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


@dataclass(frozen=True)
class MemoryNeed:
    """What one replica of the server needs (bytes); `request` and `limit` as Kubernetes quantities."""

    backend: str
    processes: int  # server processes in the container: workers, plus the gRPC parent when there are several
    runtime_bytes: int  # per process
    catalogue_items: int
    catalogue_bytes: int  # per process: the catalogue in memory
    model_bytes: int  # per process: transform.json in memory and the backend's model files
    shared_bytes: int  # once: memory-mapped tables

    @property
    def per_process_bytes(self) -> int:
        return self.runtime_bytes + self.catalogue_bytes + self.model_bytes

    @property
    def total_bytes(self) -> int:
        return self.processes * self.per_process_bytes + self.shared_bytes

    @property
    def request(self) -> str:
        return quantity(self.total_bytes)

    @property
    def limit(self) -> str:
        return quantity(int(self.total_bytes * LIMIT_HEADROOM))

    def describe(self) -> str:
        mib = lambda n: f"{n / MIB:.0f} MiB"  # noqa: E731
        return (f"{self.processes} process(es) x ({mib(self.runtime_bytes)} runtime + {mib(self.catalogue_bytes)} "
                f"for {self.catalogue_items} catalogue items + {mib(self.model_bytes)} model and transform) + "
                f"{mib(self.shared_bytes)} shared tables = {mib(self.total_bytes)}; request {self.request}, "
                f"limit {self.limit}")

    def check(self, max_memory: str) -> None:
        """Raise TooLarge when the limit would exceed `max_memory`."""
        if parse_quantity(self.limit) > parse_quantity(max_memory):
            raise TooLarge(f"this bundle needs a memory limit of {self.limit} per replica ({self.describe()}), "
                           f"above the profile's max_memory {max_memory}: serve it on larger nodes (raise "
                           "max_memory) or with a smaller catalogue")


def _catalogue(path: Path) -> tuple[int, int]:
    """Items and their in-memory bytes (ITEM_BYTES each plus the uncompressed column bytes)."""
    if not path.is_file():
        return 0, 0
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    column_bytes = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return meta.num_rows, meta.num_rows * ITEM_BYTES + column_bytes


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _model_bytes(root: Path, backend: str) -> int:
    if backend == "tflite":  # the whole-graph int8 model, or the towers and the pair head's weights
        return sum(p.stat().st_size for pattern in (f"*{Path(TFLITE_FILE).suffix}", "*.npz")
                   for p in root.rglob(pattern) if p.is_file() and SAVED_MODEL_DIR not in p.parts)
    if backend == "savedmodel":
        return _tree_bytes(root / SAVED_MODEL_DIR)
    if backend == "onnx":
        return _tree_bytes(root / TRITON_DIR)
    return 0  # "remote": the transformer loads no model


def memory_need(bundle_dir: str | Path, backend: str, workers: int = 1) -> MemoryNeed:
    """The memory a replica serving `bundle_dir` with `backend` (tflite, savedmodel, onnx; "remote" for the
    transformer, which loads no model) and `workers` REST workers needs."""
    if backend not in RUNTIME_BYTES:
        raise ValueError(f"unknown backend {backend!r}: one of {sorted(RUNTIME_BYTES)}")
    root = Path(bundle_dir)
    items, catalogue_bytes = _catalogue(root / TRANSFORM_DIR / CATALOGUE_FILE)
    tables = [p for p in root.rglob("*.npy") if p.is_file()]
    if tables:  # served from the memory-mapped tables: the catalogue's Python objects are not built
        catalogue_bytes = 0
    model_bytes = JSON_FACTOR * _tree_bytes(root / TRANSFORM_DIR / TRANSFORM_FILE) + _model_bytes(root, backend)
    shared = sum(p.stat().st_size for p in tables)
    return MemoryNeed(backend=backend, processes=workers + (1 if workers > 1 else 0),
                      runtime_bytes=RUNTIME_BYTES[backend] + TOKEN_CACHE_BYTES + QUERY_CACHE_BYTES,
                      catalogue_items=items,
                      catalogue_bytes=catalogue_bytes, model_bytes=model_bytes, shared_bytes=shared)
