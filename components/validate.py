from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def validate(preset: str, overrides: str, features: Input[Dataset], transform: Input[Artifact],
             optimized_model: Input[Model], evaluation: Input[Artifact], comparison: Input[Artifact],
             blessing: Output[Artifact], summary: Output[Artifact], report: Output[HTML],
             gate_metrics: Output[Metrics]) -> bool:
    """The blessing gate: quality budgets vs the baseline, size/latency budgets, serving-path check, the int8
    network vs the LambdaMART reference (whose scores the evaluate step wrote into `evaluation`).

    Returns whether the model is blessed (a single output: kfp.local resolves conditions on it)."""
    import json
    import shutil
    from pathlib import Path

    from shoprank.config import resolve_config
    from shoprank.evaluation.gate import validate as run
    from shoprank.evaluation.reference import kfp_metrics
    from shoprank.telemetry import stage

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
    return bool(result["blessed"])
