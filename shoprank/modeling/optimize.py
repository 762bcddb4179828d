"""Optimisation for deployment: magnitude pruning while fine-tuning, then the export: the optimised SavedModel
(the whole graph: GPU serving, ONNX for Triton) and the served composition's towers, the request tower in
full int8 (post-training quantisation to TFLite; shoprank.modeling.towers)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shoprank.config import ShoprankConfig
from shoprank.features.dataset import load_split
from shoprank.layout import MODEL_FILE, ONNX_DIR, SAVED_MODEL_DIR, SCORE, TOWERS_DIR
from shoprank.modeling._tf import keras
from shoprank.modeling.debias import plan_training
from shoprank.modeling.model import load_keras_model, save_model_bundle
from shoprank.modeling.propensity import Propensities
from shoprank.modeling.towers import export_towers, representative_batches
from shoprank.modeling.train import ProgressLogger, compile_model

__all__ = [
    "PRUNABLE",
    "Progress",
    "is_prunable",
    "optimize",
    "prune",
    "representative_batches",
    "sparsity_report",
]

Progress = Callable[[str], None]
PRUNABLE = (keras.layers.Embedding, keras.layers.Conv1D, keras.layers.Dense)


def _tfmot():
    import tensorflow_model_optimization as tfmot  # after shoprank.modeling._tf: tf_keras is already chosen

    return tfmot


# Never pruned: the affinity input's rows of the hidden layer. Each of its ~200 rows is what one bucket of a
# query -> category/brand statistic adds to the hidden layer (every training row reads 6 of them), and it is served
# from the float pair head (head.npz), where zeros save nothing. Pruned to 80% with the rest, the optimised model
# lost 0.0046 NDCG@10 against the baseline (issue 14).
NOT_PRUNED = ("affinity_hidden",)


def is_prunable(layer, min_params: int) -> bool:
    """Embedding, Conv1D and Dense layers with at least `min_params` weights, except the output layer and
    NOT_PRUNED."""
    return (isinstance(layer, PRUNABLE) and layer.name != SCORE and layer.name not in NOT_PRUNED
            and int(np.prod(layer.get_weights()[0].shape)) >= min_params)


def sparsity_report(model: keras.Model, min_params: int = 0) -> dict[str, dict]:
    """Share of zero weights per prunable layer's kernel / embedding table, and over those layers."""
    layers, zeros, total = {}, 0, 0
    for layer in model.layers:
        if not is_prunable(layer, min_params):
            continue
        w = layer.get_weights()[0]
        z = int((w == 0).sum())
        layers[layer.name] = {"params": int(w.size), "sparsity": round(z / w.size, 4)}
        zeros, total = zeros + z, total + w.size
    all_params = sum(int(np.prod(w.shape)) for w in model.get_weights())
    return {"layers": layers, "overall": round(zeros / max(total, 1), 4), "pruned_params": int(total),
            "zero_share_of_all_weights": round(zeros / max(all_params, 1), 4)}


def prune(model_dir: str | Path, features_dir: str | Path, config: ShoprankConfig,
          progress: Progress = print) -> keras.Model:
    """Fine-tune a copy of the trained model under a PolynomialDecay sparsity schedule; strip wrappers."""
    tfmot = _tfmot()
    oc, tc = config.optimize, config.train
    keras.utils.set_random_seed(tc.seed + 1)
    # A fresh model built from the saved weights: pruning wraps layers in place, so never the baseline.
    base = load_keras_model(model_dir)
    train_split, val_split = load_split(features_dir, "train"), load_split(features_dir, "validation")
    steps = -(-train_split.rows // tc.batch_size) * oc.finetune_epochs
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=oc.target_sparsity, begin_step=0,
        end_step=max(1, int(steps * oc.pruning_end)), frequency=max(1, min(oc.pruning_frequency, steps // 10 or 1)))

    def wrap(layer):
        if is_prunable(layer, oc.min_prunable_params):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    pruned = keras.models.clone_model(base, clone_function=wrap)
    # Fine-tuning learns from the same debiased objective as training (shoprank.modeling.debias), continuing
    # the trained model's propensities: on raw clicks it would learn the position bias back.
    trained = Propensities.load(model_dir)
    plan = plan_training(pruned, train_split, val_split, config, tc.batch_size, compile_model, progress,
                         initial_theta=None if trained is None else trained.absolute(),
                         learning_rate=oc.finetune_learning_rate, seed=tc.seed + 1)
    progress(f"[optimize] pruning to {oc.target_sparsity:.0%} sparsity over {steps} fine-tuning steps")
    logger = ProgressLogger(progress, train_split.rows, tc.batch_size, stage="optimize")
    plan.fit_model.fit(plan.train_data, validation_data=plan.val_data, epochs=oc.finetune_epochs,
                       callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), logger, *plan.callbacks], verbose=0)
    return tfmot.sparsity.keras.strip_pruning(pruned)


def optimize(model_dir: str | Path, features_dir: str | Path, out_dir: str | Path, config: ShoprankConfig,
             progress: Progress = print) -> dict:
    """Prune + fine-tune, export the optimised bundle to out_dir/ (the whole graph as a SavedModel and, for
    Triton, ONNX) and the served composition's towers beside it (towers/, shoprank.modeling.towers)."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    stripped = prune(model_dir, features_dir, config, progress)
    meta = json.loads((Path(model_dir) / "model.json").read_text())
    save_model_bundle(stripped, meta["sizes"], config.model, config.features, out)
    sparsity = sparsity_report(stripped, config.optimize.min_prunable_params)
    progress(f"[optimize] pruned: overall sparsity {sparsity['overall']:.3f} ({time.perf_counter() - t0:.1f}s)")
    tq = time.perf_counter()
    export_towers(stripped, load_split(features_dir, "train"), out, config)
    sizes = {f.name: f.stat().st_size for f in sorted((out / TOWERS_DIR).iterdir())}
    progress("[optimize] towers (int8 request tower, float item tower, float pair head): "
             + ", ".join(f"{n} {b:,} bytes" for n, b in sizes.items()) + f" ({time.perf_counter() - tq:.1f}s)")
    if config.optimize.export_onnx:
        from shoprank.modeling.onnx_export import export_for_triton

        to = time.perf_counter()
        onnx_dir = export_for_triton(out / SAVED_MODEL_DIR, out / ONNX_DIR, config.optimize.onnx_opset, config.triton)
        progress(f"[optimize] ONNX export (opset {config.optimize.onnx_opset}) + Triton config: "
                 f"{(onnx_dir / MODEL_FILE).stat().st_size:,} bytes ({time.perf_counter() - to:.1f}s)")
    result = {"sparsity": sparsity, "parameters": int(stripped.count_params()),
              "seconds": round(time.perf_counter() - t0, 2)}
    (out / "optimization.json").write_text(json.dumps(result, indent=2))
    return result
