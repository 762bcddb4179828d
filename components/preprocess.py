"""The preprocess step: validation, the time split, the fitted transform and the model tensors."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components import COMPONENT_IMAGE

__all__ = ["preprocess"]


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def preprocess(preset: str, overrides: str, raw_data: Input[Dataset], features: Output[Dataset],
               transform: Output[Artifact], quarantine: Output[Dataset], data_metrics: Output[Metrics]):
    """Validate (quarantine bad rows), split by time, fit the transform on the past, write model tensors.

    Args:
        preset: Size of the run's settings: tiny, small, default or large (shoprank.config.PRESETS).
        overrides: JSON of settings on top of the preset, e.g. {"optimize": {"target_sparsity": 0.7}}; unknown
            keys are refused.
        raw_data: The ingested shoprank tables.
        features: The model tensors of each split (train, validation, test).
        transform: The transform fitted on the training period (vocabularies, price edges) and the item catalogue.
        quarantine: The rows validation refused, with the reason.
        data_metrics: Row counts: quarantined, valid per table, per split.
    """
    import shutil
    from pathlib import Path

    from shoprank.config import resolve_config
    from shoprank.features.preprocess import preprocess as run
    from shoprank.telemetry import stage

    with stage("preprocess"):
        report = run(raw_data.path, features.path, transform.path, resolve_config(preset, overrides))
    Path(quarantine.path).mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(features.path) / "quarantine.parquet", Path(quarantine.path) / "quarantine.parquet")
    quarantine.metadata["rows"] = report["quarantined_rows"]
    data_metrics.log_metric("quarantined_rows", report["quarantined_rows"])
    for table, v in report["validation"].items():
        data_metrics.log_metric(f"{table}_rows_ok", v["rows_ok"])
    for split, v in report["splits"].items():
        data_metrics.log_metric(f"{split}_rows", v["rows"])
