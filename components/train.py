from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def train(preset: str, overrides: str, features: Input[Dataset], transform: Input[Artifact],
          model: Output[Model], train_metrics: Output[Metrics]):
    """Train the ranking model under the tf.distribute strategy the environment implies."""
    from shoprank.config import resolve_config
    from shoprank.modeling.train import train as run
    from shoprank.telemetry import stage

    with stage("train"):
        result = run(features.path, transform.path, model.path, resolve_config(preset, overrides))
    model.metadata.update({"framework": "tensorflow", "format": "savedmodel", "parameters": result["parameters"],
                           "strategy": result["strategy"]})
    last = result["epochs"][-1]
    train_metrics.log_metric("epochs", len(result["epochs"]))
    train_metrics.log_metric("parameters", result["parameters"])
    for key in ("loss", "val_loss", "val_auc"):
        if key in last:
            train_metrics.log_metric(key, round(last[key], 5))
