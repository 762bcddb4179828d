"""Memory sizing from the bundle (shoprank.release.kserve.sizing): the arithmetic on real files.

The coefficients (RUNTIME_BYTES, ITEM_BYTES) are measurements, documented in the module; that the estimate
covers a served bundle's real RSS is checked by `make bench-serve` (benchmarks/bench_serving.py reports both),
not here: it needs the server running.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shoprank.release.kserve import sizing
from shoprank.release.kserve.sizing import MIB, TooLarge, memory_need, parse_quantity, quantity


def bundle(tmp_path: Path, items: int, table_bytes: int = 0) -> Path:
    b = tmp_path / "bundle"
    (b / "transform").mkdir(parents=True)
    (b / "model.tflite").write_bytes(b"m" * 1000)
    (b / "saved_model").mkdir()
    (b / "saved_model" / "saved_model.pb").write_bytes(b"s" * 5000)
    (b / "transform" / "transform.json").write_text("{}" * 50)
    ids = [f"sku-{i}" for i in range(items)]
    pq.write_table(pa.table({"item_id": ids, "title": ["t"] * items}), b / "transform" / "catalogue.parquet")
    if table_bytes:
        (b / "transform" / "item_tower.npy").write_bytes(b"\0" * table_bytes)
    return b


def test_quantities():
    assert parse_quantity("2Gi") == 2 << 30 and parse_quantity("512Mi") == 512 << 20
    assert parse_quantity("1G") == 10**9 and parse_quantity("1000") == 1000 and parse_quantity("1.5Gi") == 3 << 29
    assert quantity(1) == "64Mi" and quantity(64 * MIB) == "64Mi" and quantity(64 * MIB + 1) == "128Mi"
    # The API server's canonical form, as KServe's webhook writes it back: no diff on the next promotion.
    assert quantity(1024 * MIB) == "1Gi" and quantity(2048 * MIB - 1) == "2Gi" and quantity(1536 * MIB) == "1536Mi"


def test_the_estimate_adds_runtime_catalogue_model_and_transform(tmp_path):
    b = bundle(tmp_path, items=1000)
    need = memory_need(b, "tflite")
    column_bytes = need.catalogue_bytes - 1000 * sizing.ITEM_BYTES
    assert need.catalogue_items == 1000 and 0 < column_bytes < 1000 * 64  # the catalogue's objects, in the heap
    assert need.model_bytes == 1000 + sizing.JSON_FACTOR * 100  # the int8 model, not the SavedModel
    assert need.shared_bytes == 0
    assert need.total_bytes == need.runtime_bytes + need.catalogue_bytes + need.model_bytes
    assert memory_need(b, "savedmodel").model_bytes == 5000 + sizing.JSON_FACTOR * 100
    assert memory_need(b, "remote").model_bytes == sizing.JSON_FACTOR * 100  # the transformer: no model


def test_a_bundle_with_memory_mapped_item_tables_counts_them_once_and_no_catalogue_objects(tmp_path):
    b = bundle(tmp_path, items=1000, table_bytes=3 * MIB)  # transform/item_tower.npy
    (b / "model.tflite").unlink()  # the towers instead of a whole-graph model
    (b / "towers").mkdir()
    (b / "towers" / "request_tower.tflite").write_bytes(b"r" * 700)
    (b / "towers" / "head.npz").write_bytes(b"h" * 300)
    need = memory_need(b, "tflite")
    assert need.catalogue_items == 1000 and need.catalogue_bytes == 0 and need.shared_bytes == 3 * MIB
    assert need.model_bytes == 1000 + sizing.JSON_FACTOR * 100
    assert need.total_bytes == need.runtime_bytes + need.model_bytes + 3 * MIB


def test_workers_multiply_the_private_part_and_share_the_tables(tmp_path):
    b = bundle(tmp_path, items=100, table_bytes=10 * MIB)
    one, two = memory_need(b, "tflite", workers=1), memory_need(b, "tflite", workers=2)
    assert one.processes == 1 and two.processes == 3  # two workers and the gRPC parent
    assert two.total_bytes == 3 * one.per_process_bytes + 10 * MIB


def test_a_large_catalogue_is_refused_with_the_number_it_needs(tmp_path):
    need = memory_need(bundle(tmp_path, items=20_000), "tflite")
    need.check("8Gi")
    assert parse_quantity(need.limit) >= sizing.LIMIT_HEADROOM * need.total_bytes
    with pytest.raises(TooLarge, match=rf"needs a memory limit of {need.limit} per replica .*20000 catalogue items"):
        need.check("256Mi")
    with pytest.raises(ValueError, match="unknown backend"):
        memory_need(tmp_path, "triton")


def test_the_cache_bounds_are_the_servers():
    # release does not import features or scoring (import contracts); the test does, and checks the copies.
    from shoprank.features import transform
    from shoprank.scoring import ranker

    assert sizing.TOKEN_CACHE_BYTES == transform.TOKEN_CACHE_BYTES
    assert sizing.QUERY_CACHE_BYTES == transform.AFFINITY_CACHE_BYTES + ranker.FOLD_CACHE_BYTES
