"""The evaluate step: test-set metrics, the ROC for the UI and the evaluation report of the trained model."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components import COMPONENT_IMAGE

__all__ = ["evaluate"]


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def evaluate(preset: str, overrides: str, model: Input[Model], features: Input[Dataset],
             metrics: Output[Metrics], roc: Output[ClassificationMetrics], report: Output[HTML],
             evaluation: Output[Artifact]):
    """Test-set metrics (classification, ranking, oracle, slices), the LambdaMART reference beside them, the ROC
    for the UI, an HTML report.

    Args:
        preset: Size of the run's settings: tiny, small, default or large (shoprank.config.PRESETS).
        overrides: JSON of settings on top of the preset, e.g. {"optimize": {"target_sparsity": 0.7}}; unknown
            keys are refused.
        model: The trained model.
        features: The model tensors of each split (the test split is scored).
        metrics: The headline test-set metrics (AUC, log loss, MRR, NDCG@k, ...), and the LambdaMART reference's
            (tie-aware) metrics, its cost and the bootstrap interval of baseline - reference; the counterfactual
            estimate of expected clicks per request with its 95% interval (and, on synthetic data, the truth) and
            the true-relevance NDCG@k.
        roc: The ROC curve and confusion matrix for the UI.
        report: The HTML evaluation report.
        evaluation: evaluation.json (metrics, curves, slices, the reference) and the report, for the blessing
            gate; the reference's test scores, model and feature importances in reference/.
    """
    from shoprank.telemetry import quiet_native_logs, stage

    quiet_native_logs()  # first: TensorFlow's C++ start-up notices stay out of the log (VERBOSE=1 keeps them)
    import math
    import shutil
    from pathlib import Path

    from shoprank.config import resolve_config
    from shoprank.evaluation.counterfactual import kfp_metrics as cf_metrics
    from shoprank.evaluation.evaluate import evaluate_model
    from shoprank.evaluation.reference import kfp_metrics

    config = resolve_config(preset, overrides)
    with stage("evaluate"):
        result = evaluate_model(Path(model.path) / "saved_model", features.path, evaluation.path, config)
    m, c = result["metrics"], result["curves"]["baseline"]
    for key in ("auc", "log_loss", "accuracy", "precision", "recall", "f1", "mrr",
                f"ndcg_at_{config.evaluation.top_k}", f"recall_at_{config.evaluation.top_k}"):
        if math.isfinite(m[key]):  # e.g. no positive in the test set: nothing to log
            metrics.log_metric(key, round(m[key], 5))
    if "oracle" in m:
        metrics.log_metric("oracle_auc", round(m["oracle"]["auc"], 5))
        metrics.log_metric("oracle_auc_share", round(m["oracle_auc_share"], 5))
    for key, value in kfp_metrics(m.get("reference", {}), config.evaluation.top_k).items():
        metrics.log_metric(key, value)
    true_ndcg = {"baseline": m.get(f"true_ndcg_at_{config.evaluation.top_k}")}
    for key, value in cf_metrics(m["counterfactual"], true_ndcg).items():
        metrics.log_metric(key, value)
    roc.log_roc_curve(c["roc"]["fpr"], c["roc"]["tpr"], c["roc"]["threshold"])
    roc.log_confusion_matrix(c["confusion"]["labels"], c["confusion"]["matrix"])
    shutil.copy(Path(evaluation.path) / "report.html", report.path)
