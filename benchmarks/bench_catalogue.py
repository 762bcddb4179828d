"""Large catalogues (issue 11, item 10): a serving worker's start-up time and memory with N catalogue items.

    python -m benchmarks.bench_catalogue build   --items 2000000 --out /tmp/cat2m   # a synthetic bundle
    python -m benchmarks.bench_catalogue measure --bundle /tmp/cat2m/bundle [--requests 20000] [--server]

`build` makes a bundle as the pipeline lays it out (towers/, items/, transform/) for a synthetic shop of N items
without running the pipeline: the catalogue from shoprank.data.synthetic.Shop, a transform fitted on it (item
vocabulary of N ids, so the request tower's history embedding has N rows, as a trained model's would), a model of the
default architecture with its initial (untrained) weights, its towers exported as the optimise step does (int8
request tower calibrated on random ids) and the item tables made by `build_item_tables`, the pipeline's own code.
Untrained weights: quality means nothing here, sizes and costs do.

`measure` loads the bundle in a fresh process as a server worker does (Ranker.load, one warm-up ranking) and reports
the time to ready and the memory (/proc: RSS split into anonymous and file-backed pages, PSS), then after
`--requests` random 100-candidate rankings (every request touches ~100 random rows of the item tables, so the
file-backed pages grow towards the tables' size; they are shared by all workers and reclaimable, anonymous pages are
not). `--server` also starts `python -m serving` with one worker and times it to /v2/health/ready.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _status() -> dict[str, float]:
    """This process's memory in MiB: RSS, its anonymous and file-backed parts, and PSS."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            out["Pss"] = round(int(line.split()[1]) / 1024, 1)
    return out


def _pid_rss_mib(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


class _RandomSplit:
    """Stand-in for a training split (SplitData) for int8 calibration: random ids within the vocabularies."""

    def __init__(self, sizes: dict[str, int], shapes: dict[str, tuple[int, ...]], rows: int = 4096, seed: int = 0):
        from shoprank.features.transform import INPUTS

        vocab = {"query_tokens": "token", "title_tokens": "token", "history_items": "item", "item_id": "item",
                 "history_categories": "category", "category": "category", "history_brands": "brand",
                 "brand": "brand", "price_bucket": "price"}
        rng = np.random.default_rng(seed)
        self.rows = rows
        self._cols = {k: rng.integers(0, sizes[vocab[k]], size=(rows, *shapes[k])).astype(np.int32) for k in INPUTS}

    def column(self, name: str) -> np.ndarray:
        return self._cols[name]


def build(n_items: int, out: Path) -> Path:
    from shoprank.config import resolve_config
    from shoprank.data.synthetic import Shop
    from shoprank.features.transform import Catalogue, FeatureTransform, input_shapes
    from shoprank.layout import CATALOGUE_FILE, ITEMS_DIR, MANIFEST, TOWERS_DIR, TRANSFORM_DIR
    from shoprank.modeling.model import build_model
    from shoprank.modeling.towers import export_towers
    from shoprank.scoring.item_tables import build_item_tables

    t0 = time.perf_counter()
    config = resolve_config("default", {"data": {"n_items": n_items}, "features": {"max_items": n_items},
                                        "optimize": {"representative_batches": 32}})
    bundle = out / "bundle"
    tdir = bundle / TRANSFORM_DIR
    tdir.mkdir(parents=True, exist_ok=True)
    shop = Shop(config.data)
    table = shop.catalogue_table()
    del shop
    catalogue = Catalogue.from_table(table)
    catalogue.save(tdir / CATALOGUE_FILE)
    transform = FeatureTransform.fit([], catalogue.title, catalogue.item_id, catalogue.category, catalogue.brand,
                                     catalogue.price, config.features)
    transform.save(tdir)
    sizes = transform.sizes
    del catalogue, table, transform
    print(f"[build] catalogue and transform of {n_items:,} items ({time.perf_counter() - t0:.0f}s): sizes {sizes}",
          flush=True)
    t1 = time.perf_counter()
    model = build_model(sizes, config.model, config.features)
    export_towers(model, _RandomSplit(sizes, input_shapes(config.features)), bundle, config)
    del model
    print(f"[build] towers ({time.perf_counter() - t1:.0f}s): "
          + ", ".join(f"{f.name} {f.stat().st_size / 2**20:.1f} MiB" for f in sorted((bundle / TOWERS_DIR).iterdir())),
          flush=True)
    t2 = time.perf_counter()
    meta = build_item_tables(tdir, bundle / ITEMS_DIR, bundle / TOWERS_DIR, progress=print)
    sizes_mib = {f.name: round(f.stat().st_size / 2**20, 1) for f in sorted((bundle / ITEMS_DIR).iterdir())}
    print(f"[build] item tables ({time.perf_counter() - t2:.0f}s): {sizes_mib}", flush=True)
    (bundle / MANIFEST).write_text(json.dumps({"model_name": "shoprank-ranker", "version": f"synthetic-{n_items}",
                                               "items": meta["catalogue_rows"]}))
    print(f"[build] {bundle} in {time.perf_counter() - t0:.0f}s", flush=True)
    return bundle


def _requests(ids: list[str], n: int, candidates: int = 100, history: int = 10, seed: int = 1):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield ("red running shoe", [ids[j] for j in rng.integers(len(ids), size=history)],
               [ids[j] for j in rng.integers(len(ids), size=candidates)])


def measure(bundle: Path, requests: int) -> dict:
    """In this (fresh) process: load as a worker does, then random rankings; times and memory."""
    before = _status()
    t0 = time.perf_counter()
    from shoprank.scoring.ranker import Ranker

    ranker = Ranker.load(bundle, "tflite", num_threads=1)
    warm = ranker.items.some_ids(4)
    ranker.rank(["warm up"], [warm[:1]], [warm])
    ready_s = time.perf_counter() - t0
    out = {"items": len(ranker.items), "ready_s": round(ready_s, 2), "memory_mib_at_start": before,
           "memory_mib_ready": _status()}
    print(f"[measure] {out['items']:,} items: ready in {ready_s:.2f}s, {out['memory_mib_ready']}", flush=True)
    # Random catalogue ids without reading the whole id table: rows of the sorted id array.
    rng = np.random.default_rng(0)
    sorted_ids = ranker.items._ids
    ids = [sorted_ids[i].decode() for i in rng.integers(len(sorted_ids), size=200_000)]
    done, t1, c1 = 0, time.perf_counter(), time.process_time()
    for step in sorted({min(requests, x) for x in (1_000, 10_000, requests)}):
        for q, h, c in _requests(ids, step - done, seed=step):
            ranker.rank([q], [h], [c])
        done = step
        out[f"memory_mib_after_{step}_requests"] = _status()
        print(f"[measure] after {step:,} requests ({(time.perf_counter() - t1) / step * 1000:.3f} ms wall, "
              f"{(time.process_time() - c1) / step * 1000:.3f} ms CPU per request): "
              f"{out[f'memory_mib_after_{step}_requests']}", flush=True)
    out["ms_per_request"] = round((time.perf_counter() - t1) / max(done, 1) * 1000, 4)
    out["cpu_ms_per_request"] = round((time.process_time() - c1) / max(done, 1) * 1000, 4)
    return out


def measure_server(bundle: Path, port: int = 18555, requests: int = 2000) -> dict:
    """`python -m serving` with one worker: seconds from start to /v2/health/ready, its RSS then and after
    `requests` rankings over HTTP."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "serving", "--model_name", "shoprank-ranker", "--model_dir", str(bundle),
           "--http_port", str(port), "--grpc_port", str(port + 1), "--workers", "1"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.05)
        out = {"server_ready_s": round(time.perf_counter() - t0, 2), "server_rss_mib_ready": _pid_rss_mib(proc.pid)}
        from shoprank.scoring.item_tables import ItemTables

        tables = ItemTables(bundle / "items")
        rng = np.random.default_rng(3)
        ids = [tables._ids[i].decode() for i in rng.integers(len(tables._ids), size=50_000)]
        for q, h, c in _requests(ids, requests, seed=5):
            body = json.dumps({"inputs": [
                {"name": "query", "datatype": "BYTES", "shape": [1], "data": [q]},
                {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["u1"]},
                {"name": "history", "datatype": "BYTES", "shape": [len(h)], "data": h},
                {"name": "candidates", "datatype": "BYTES", "shape": [len(c)], "data": c}]}).encode()
            req = urllib.request.Request(f"{url}/v2/models/shoprank-ranker/infer", data=body,
                                         headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                r.read()
        out[f"server_rss_mib_after_{requests}_requests"] = _pid_rss_mib(proc.pid)
        return out
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--items", type=int, default=2_000_000)
    b.add_argument("--out", type=Path, required=True)
    m = sub.add_parser("measure")
    m.add_argument("--bundle", type=Path, required=True)
    m.add_argument("--requests", type=int, default=20_000)
    m.add_argument("--server", action="store_true")
    m.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.command == "build":
        build(args.items, args.out)
        return
    result = measure(args.bundle, args.requests)
    if args.server:
        result |= measure_server(args.bundle)
        print(f"[measure] server: {json.dumps({k: v for k, v in result.items() if k.startswith('server')})}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
