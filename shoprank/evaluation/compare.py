"""The artefacts side by side: the baseline SavedModel, the optimised SavedModel, the int8 model and the ONNX
export, scored on the same test rows in one process (so latencies are comparable), with their sizes.

The optimise step calls this after `shoprank.modeling.optimize.optimize`; the blessing gate reads its result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shoprank.config import ShoprankConfig
from shoprank.evaluation.evaluate import evaluate_scores
from shoprank.features.dataset import load_split
from shoprank.features.transform import INPUTS
from shoprank.layout import MODEL_FILE, ONNX_DIR, SAVED_MODEL_DIR, TFLITE_FILE
from shoprank.scoring.backends import artefact_size, latency_ms, load_scorer, score_in_batches

__all__ = ["compare_artefacts"]

Progress = Callable[[str], None]


def compare_artefacts(baseline_dir: str | Path, optimized_dir: str | Path, features_dir: str | Path,
                      config: ShoprankConfig, progress: Progress = print) -> dict[str, dict]:
    """Side by side in one process: size, gzip size, CPU latency at batch 1 and 256, and test quality of
    the baseline SavedModel, the optimised SavedModel, the int8 TFLite model and (when exported) the ONNX
    export. Test scores of each are saved next to the optimised bundle as scores_<name>.npy (the golden check
    compares against them); the ONNX entry also records its largest |score difference| from the optimised
    SavedModel over the whole test set (the blessing gate's export check)."""
    test = load_split(features_dir, "test")
    columns = {k: test.column(k) for k in INPUTS}
    paths = {"baseline_savedmodel": Path(baseline_dir) / SAVED_MODEL_DIR,
             "optimized_savedmodel": Path(optimized_dir) / SAVED_MODEL_DIR,
             "int8_tflite": Path(optimized_dir) / TFLITE_FILE}
    onnx_model = Path(optimized_dir) / ONNX_DIR / MODEL_FILE
    if onnx_model.is_file():
        paths["onnx"] = onnx_model
    k = config.evaluation.top_k
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
        out[name] = {"path": str(path), **artefact_size(path), "latency_ms": lat, "auc": m["auc"],
                     f"ndcg_at_{k}": m[f"ndcg_at_{k}"], "log_loss": m["log_loss"], "mrr": m["mrr"]}
        if name == "onnx":
            diff = np.abs(scores - scored["optimized_savedmodel"]).max()
            out[name]["max_abs_diff_vs_optimized_savedmodel"] = float(diff)
            progress(f"[optimize] onnx vs optimised SavedModel: max |score diff| "
                     f"{out[name]['max_abs_diff_vs_optimized_savedmodel']:.2e} over {len(scores):,} test rows")
        progress(f"[optimize] {name}: AUC {m['auc']:.4f}, NDCG@{k} {m[f'ndcg_at_{k}']:.4f}, "
                 f"{out[name]['gzip_bytes']:,} gzip bytes, {lat['1']:.3f} ms @1, {lat['256']:.3f} ms @256 "
                 f"({time.perf_counter() - t0:.1f}s)")
    return out
