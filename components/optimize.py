"""The optimise step: pruning, the int8 TFLite model (and the ONNX export), and the artefacts compared."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components import COMPONENT_IMAGE

__all__ = ["optimize"]


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def optimize(preset: str, overrides: str, model: Input[Model], features: Input[Dataset], transform: Input[Artifact],
             optimized_model: Output[Model], comparison: Output[Artifact], optimize_metrics: Output[Metrics]):
    """Prune while fine-tuning, export the optimised SavedModel (the whole graph, and its ONNX export) and the
    served composition's towers (int8 request tower, float item tower and pair head), make the per-item tables of
    the transform's catalogue (items/: the item tower's vectors, memory-mapped by the server), and compare all
    artefacts side by side (size, latency, quality, ties).

    Args:
        preset: Size of the run's settings: tiny, small, default or large (shoprank.config.PRESETS).
        overrides: JSON of settings on top of the preset, e.g. {"optimize": {"target_sparsity": 0.7}}; unknown
            keys are refused.
        model: The trained model.
        features: The model tensors of each split (fine-tuning, calibration and the comparison).
        transform: The vocabularies and the catalogue (the item tables are made for its items).
        optimized_model: The pruned SavedModel, the towers (towers/), the item tables (items/) and, if enabled,
            the ONNX export.
        comparison: Size, latency, quality and ties of every artefact, side by side (JSON).
        optimize_metrics: Sparsity and each artefact's AUC, gzip size and latency at batch 256.
    """
    import json
    from pathlib import Path

    from shoprank.config import resolve_config
    from shoprank.evaluation.compare import compare_artefacts
    from shoprank.layout import ITEMS_DIR, TOWERS_DIR
    from shoprank.modeling.optimize import optimize as run
    from shoprank.scoring.item_tables import build_item_tables
    from shoprank.telemetry import stage

    config = resolve_config(preset, overrides)
    with stage("optimize"):
        result = run(model.path, features.path, optimized_model.path, config)
        opt = Path(optimized_model.path)
        build_item_tables(transform.path, opt / ITEMS_DIR, opt / TOWERS_DIR, progress=print)
        artefacts = compare_artefacts(model.path, optimized_model.path, features.path, config)
    with open(comparison.path, "w") as fh:
        json.dump({"artefacts": artefacts, "sparsity": result["sparsity"]}, fh, indent=2)
    formats = ["savedmodel", "tflite-int8-towers"] + (["onnx"] if "onnx" in artefacts else [])
    optimized_model.metadata.update({"framework": "tensorflow", "formats": formats,
                                     "sparsity": result["sparsity"]["overall"]})
    optimize_metrics.log_metric("sparsity", result["sparsity"]["overall"])
    for name, a in artefacts.items():
        optimize_metrics.log_metric(f"{name}_auc", round(a["auc"], 5))
        optimize_metrics.log_metric(f"{name}_gzip_bytes", a["gzip_bytes"])
        optimize_metrics.log_metric(f"{name}_ms_b256", a["latency_ms"]["256"])
