"""The artefacts side by side: the baseline SavedModel, the optimised SavedModel, the int8 composition (int8
request tower + item vectors at the tables' precision + float pair head: what the CPU server runs) and the ONNX
export, scored on the same test rows in one process (so latencies are comparable), with their sizes and how
often each ties (issue 11: the whole-graph int8 model's 256 output levels tied in 98% of the test lists).

The optimise step calls this after `shoprank.modeling.optimize.optimize`; the blessing gate reads its result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shoprank.config import ShoprankConfig
from shoprank.evaluation.evaluate import evaluate_scores
from shoprank.evaluation.metrics import tie_statistics
from shoprank.features.dataset import load_split
from shoprank.features.transform import INPUTS
from shoprank.layout import MODEL_FILE, ONNX_DIR, SAVED_MODEL_DIR, TFLITE_FILE, TOWERS_DIR
from shoprank.scoring.backends import artefact_size, latency_ms, load_scorer, score_in_batches

__all__ = ["compare_artefacts"]

Progress = Callable[[str], None]


def _item_precision(scorer, columns: dict[str, np.ndarray], scores: np.ndarray, test, config: ShoprankConfig) -> dict:
    """What storing the item vectors at the scorer's precision (float16) costs: max |score diff| against float32
    item vectors on the test rows, and the float32 variant's AUC and NDCG."""
    k = f"ndcg_at_{config.evaluation.top_k}"
    stored = scorer.item_dtype
    scorer.item_dtype = np.dtype(np.float32)
    try:
        exact = score_in_batches(scorer, columns, config.evaluation.batch_size)
    finally:
        scorer.item_dtype = stored
    m = evaluate_scores(test, exact, config)
    return {"dtype": stored.name, "max_abs_diff_vs_float32": float(np.abs(exact - scores).max()),
            "float32_auc": m["auc"], f"float32_{k}": m[k]}


def _served_latency(scorer, optimized_dir: Path, test, config: ShoprankConfig) -> dict[str, float] | None:
    """Median ms of the composition as the server runs it on the first 1 and 256 test rows: the request tower once
    per request among them, their item vectors gathered from the item tables by id, the head. None without tables
    (then the tensor path's latency stands: both towers on every row). The rows' affinity ids are the test split's:
    counting them from the query and the tables is transform work, in the serving benchmark's transform share."""
    import pyarrow.parquet as pq

    from shoprank.features.affinity import AFFINITY_INPUT
    from shoprank.features.transform import REQUEST_INPUTS
    from shoprank.layout import ITEMS_DIR
    from shoprank.scoring.item_tables import ItemTables

    if not (optimized_dir / ITEMS_DIR).is_dir():
        return None
    tables = ItemTables(optimized_dir / ITEMS_DIR)
    groups = np.asarray(test.column("request")[:256])
    ids = pq.read_table(test.directory / "rows.parquet", columns=["item_id"]).column(0).to_pylist()[:256]
    out = {}
    for b in (1, 256):
        g = groups[:b]
        first = np.concatenate([[0], np.flatnonzero(g[1:] != g[:-1]) + 1])
        request = {k: np.asarray(test.column(k)[first]) for k in REQUEST_INPUTS}
        rr = np.repeat(np.arange(first.size), np.diff(np.concatenate([first, [b]])))
        rows = tables.rows(ids[:b])
        affinity = np.asarray(test.column(AFFINITY_INPUT)[:b])

        def run(request=request, rr=rr, rows=rows, affinity=affinity):
            scorer.score_pairs(scorer.request_vectors(request), rr, tables.item_vectors(rows), affinity)

        for _ in range(3):
            run()
        times = []
        for _ in range(config.optimize.latency_repeats):
            t = time.perf_counter()
            run()
            times.append((time.perf_counter() - t) * 1000)
        out[str(b)] = round(float(np.median(times)), 4)
    return out


def compare_artefacts(baseline_dir: str | Path, optimized_dir: str | Path, features_dir: str | Path,
                      config: ShoprankConfig, progress: Progress = print) -> dict[str, dict]:
    """Side by side in one process: size, gzip size, CPU latency at batch 1 and 256, test quality and ties of
    the baseline SavedModel, the optimised SavedModel, the int8 composition (`int8_tflite`: the towers/ directory,
    scored with its item tower on the test rows, rounded as the tables store its output; a whole-graph
    model.tflite when an older optimised model has one) and (when exported) the ONNX export. The composition's
    latency is the served path's when the item tables are made (request tower once per request, item vectors
    gathered by id, head; `tensor_path_latency_ms`: both towers on every row, what a tensor request costs).

    Test scores of each are saved next to the optimised bundle as scores_<name>.npy (the gate compares the served
    path against them); the ONNX entry also records its largest |score difference| from the optimised
    SavedModel over the whole test set (the blessing gate's export check), and the composition what its item
    vectors' storage precision costs (`item_vectors_precision`: the same scores with float32 item vectors)."""
    test = load_split(features_dir, "test")
    columns = {k: test.column(k) for k in INPUTS}
    paths = {"baseline_savedmodel": Path(baseline_dir) / SAVED_MODEL_DIR,
             "optimized_savedmodel": Path(optimized_dir) / SAVED_MODEL_DIR,
             "int8_tflite": Path(optimized_dir) / TOWERS_DIR}
    if not paths["int8_tflite"].is_dir() and (Path(optimized_dir) / TFLITE_FILE).is_file():
        paths["int8_tflite"] = Path(optimized_dir) / TFLITE_FILE
    onnx_model = Path(optimized_dir) / ONNX_DIR / MODEL_FILE
    if onnx_model.is_file():
        paths["onnx"] = onnx_model
    k = config.evaluation.top_k
    groups = np.asarray(test.column("request"))
    out: dict[str, dict] = {}
    scored: dict[str, np.ndarray] = {}
    for name, path in paths.items():
        t0 = time.perf_counter()
        scorer = load_scorer(path)
        scores = score_in_batches(scorer, columns, config.evaluation.batch_size)
        np.save(Path(optimized_dir) / f"scores_{name}.npy", scores)
        scored[name] = scores
        m = evaluate_scores(test, scores, config)
        lat = {str(b): round(latency_ms(scorer, columns, b, config.optimize.latency_repeats), 4) for b in (1, 256)}
        served = _served_latency(scorer, Path(optimized_dir), test, config) if hasattr(scorer, "score_pairs") else None
        if served is not None:  # the composition as a ranking request runs it; the tensor path's beside it
            lat, tensor_lat = served, lat
        out[name] = {"path": str(path), **artefact_size(path), "latency_ms": lat, "auc": m["auc"],
                     f"ndcg_at_{k}": m[f"ndcg_at_{k}"], "log_loss": m["log_loss"], "mrr": m["mrr"],
                     f"recall_at_{k}": m[f"recall_at_{k}"], "ties": tie_statistics(groups, scores)}
        if served is not None:
            out[name]["tensor_path_latency_ms"] = tensor_lat
        if getattr(scorer, "item_dtype", np.dtype(np.float32)) != np.float32:
            out[name]["item_vectors_precision"] = _item_precision(scorer, columns, scores, test, config)
            progress(f"[optimize] {name}: item vectors {scorer.item_dtype.name} vs float32: "
                     f"{out[name]['item_vectors_precision']}")
        if name == "onnx":
            diff = np.abs(scores - scored["optimized_savedmodel"]).max()
            out[name]["max_abs_diff_vs_optimized_savedmodel"] = float(diff)
            progress(f"[optimize] onnx vs optimised SavedModel: max |score diff| "
                     f"{out[name]['max_abs_diff_vs_optimized_savedmodel']:.2e} over {len(scores):,} test rows")
        ties = out[name]["ties"]
        progress(f"[optimize] {name}: AUC {m['auc']:.4f}, NDCG@{k} {m[f'ndcg_at_{k}']:.4f}, "
                 f"{ties['distinct_scores']:,} distinct scores, {ties['lists_with_ties']:,}/{ties['lists']:,} lists "
                 "with ties, "
                 f"{out[name]['gzip_bytes']:,} gzip bytes, {lat['1']:.3f} ms @1, {lat['256']:.3f} ms @256 "
                 f"({time.perf_counter() - t0:.1f}s)")
    return out
