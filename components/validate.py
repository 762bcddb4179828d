"""The validate step: the blessing gate that decides whether the model is promoted."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components import COMPONENT_IMAGE

__all__ = ["validate"]


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def validate(preset: str, overrides: str, features: Input[Dataset], transform: Input[Artifact],
             optimized_model: Input[Model], evaluation: Input[Artifact], comparison: Input[Artifact],
             blessing: Output[Artifact], summary: Output[Artifact], report: Output[HTML],
             gate_metrics: Output[Metrics]) -> bool:
    """The blessing gate: quality budgets vs the baseline, size/latency budgets, serving-path check, the int8
    network vs the LambdaMART reference (whose scores the evaluate step wrote into `evaluation`).

    Returns whether the model is blessed (a single output: kfp.local resolves conditions on it).

    Args:
        preset: Size of the run's settings: tiny, small, default or large (shoprank.config.PRESETS).
        overrides: JSON of settings on top of the preset, e.g. {"optimize": {"target_sparsity": 0.7}}; unknown
            keys are refused.
        features: The model tensors of each split and the golden requests of the serving-path check.
        transform: The fitted transform and the item catalogue (the serving path uses them).
        optimized_model: The optimise step's model, the candidate for blessing.
        evaluation: The evaluate step's results for the trained model, the baseline, and the LambdaMART
            reference's test scores (reference/).
        comparison: The optimise step's comparison of the artefacts.
        blessing: The gate's verdict with its reasons, the run summary and the report.
        summary: The run summary (JSON), published with the bundle and returned by the pipeline.
        report: The HTML gate report.
        gate_metrics: Blessed (0/1) and the int8 model's AUC drop, size and speed ratios; the tie-aware metrics
            of baseline, int8 and reference and the bootstrap interval of int8 - reference; the counterfactual
            estimates of expected clicks per request with their 95% intervals (synthetic: the truth) and the
            true-relevance NDCG@k of each model.
    """
    from shoprank.telemetry import quiet_native_logs, stage

    quiet_native_logs()  # first: TensorFlow's C++ start-up notices stay out of the log (VERBOSE=1 keeps them)
    import json
    import shutil
    from pathlib import Path

    from shoprank.config import resolve_config
    from shoprank.evaluation.counterfactual import kfp_metrics as cf_metrics
    from shoprank.evaluation.gate import validate as run
    from shoprank.evaluation.reference import kfp_metrics

    config = resolve_config(preset, overrides)
    baseline = json.loads((Path(evaluation.path) / "evaluation.json").read_text())
    artefacts = json.loads(Path(comparison.path).read_text())["artefacts"]
    with stage("validate"):
        result = run(features.path, transform.path, optimized_model.path, baseline, artefacts, config,
                     blessing.path, evaluation_dir=evaluation.path)
    shutil.copy(Path(blessing.path) / "summary.json", summary.path)
    shutil.copy(Path(blessing.path) / "report.html", report.path)
    blessing.metadata.update({"blessed": result["blessed"], "reasons": result["blessing_reasons"]})
    gate_metrics.log_metric("blessed", int(result["blessed"]))
    gate_metrics.log_metric("int8_auc_drop", round(result["ratios"]["int8_auc_drop"], 5))
    gate_metrics.log_metric("int8_gzip_smaller_x", round(result["ratios"]["int8_gzip_smaller_x"], 2))
    gate_metrics.log_metric("int8_b256_faster_x", round(result["ratios"]["int8_b256_faster_x"], 2))
    for key, value in kfp_metrics(result.get("reference") or {}, config.evaluation.top_k).items():
        gate_metrics.log_metric(key, value)
    true_ndcg = result.get(f"true_ndcg_at_{config.evaluation.top_k}")
    for key, value in cf_metrics(result["counterfactual"], true_ndcg).items():
        gate_metrics.log_metric(key, value)
    return bool(result["blessed"])
