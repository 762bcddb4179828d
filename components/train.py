"""The train step: the ranking model, trained on the preprocessed tensors."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components import COMPONENT_IMAGE

__all__ = ["train"]


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def train(preset: str, overrides: str, features: Input[Dataset], transform: Input[Artifact],
          model: Output[Model], train_metrics: Output[Metrics]):
    """Train the ranking model under the tf.distribute strategy the environment implies.

    Args:
        preset: Size of the run's settings: tiny, small, default or large (shoprank.config.PRESETS).
        overrides: JSON of settings on top of the preset, e.g. {"optimize": {"target_sparsity": 0.7}}; unknown
            keys are refused.
        features: The model tensors of each split.
        transform: The fitted transform (sizes of the vocabularies the model embeds).
        model: The trained model (SavedModel).
        train_metrics: Epochs, parameter count and the last epoch's loss and validation AUC.
    """
    from shoprank.telemetry import gpu_present, quiet_native_logs, stage

    quiet_native_logs()  # first: TensorFlow's C++ start-up notices stay out of the log (VERBOSE=1 keeps them)
    import tensorflow as tf

    from shoprank.config import resolve_config
    from shoprank.modeling.train import train as run  # imports TensorFlow with tf_keras as its Keras

    gpus = tf.config.list_physical_devices("GPU")
    names = ", ".join(tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus)
    if gpus:
        print(f"[train] GPU: {len(gpus)} found ({names}), training on it", flush=True)
    elif gpu_present():
        print("[train] GPU: this machine has one, but TensorFlow cannot use it (a CPU-only build, or no CUDA "
              "libraries: pip install 'tensorflow[and-cuda]'); training on the CPU", flush=True)
    else:
        print("[train] GPU: none found, training on the CPU", flush=True)
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
