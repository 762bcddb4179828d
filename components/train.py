"""The train step: the ranking model, trained on the preprocessed tensors, by one process or by several workers."""

import os

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components import COMPONENT_IMAGE

__all__ = ["TRAIN_MOUNT_PATH", "TRAIN_PVC", "train"]

# Multi-worker training on a cluster shares its inputs and the chief's model through a ReadWriteMany claim mounted
# on the train step and on every worker (shoprank.release.trainjob). Compile with SHOPRANK_TRAIN_PVC=<claim> to
# mount it (`make compile`/`make deploy TRAIN_PVC=...`); without it, train_workers > 1 fails on a cluster with
# that explanation, and locally it runs the workers as processes.
TRAIN_PVC = os.environ.get("SHOPRANK_TRAIN_PVC", "")
TRAIN_MOUNT_PATH = "/mnt/shoprank-train"


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def train(preset: str, overrides: str, features: Input[Dataset], transform: Input[Artifact],
          model: Output[Model], train_metrics: Output[Metrics], train_workers: int = 1,
          tuned_overrides: str = "{}", accelerator_limit: str = "0", node_selector: dict = None,
          tolerations: list = None):
    """Train the ranking model under the tf.distribute strategy the environment implies.

    With train_workers > 1: on a cluster (in a pod), a TFJob of that many workers running the component image
    (shoprank.release.trainjob), waited for here, its chief's model returned as this step's model; elsewhere
    (kfp.local) that many worker processes on loopback (shoprank.modeling.distributed.launch_local). Both train
    under MultiWorkerMirroredStrategy, and only the chief (worker 0) saves.

    Args:
        preset: Size of the run's settings: tiny, small, default or large (shoprank.config.PRESETS).
        overrides: JSON of settings on top of the preset, e.g. {"optimize": {"target_sparsity": 0.7}}; unknown
            keys are refused.
        features: The model tensors of each split.
        transform: The fitted transform (sizes of the vocabularies the model embeds).
        model: The trained model (SavedModel).
        train_metrics: Epochs, parameter count, workers, samples/s and the last epoch's loss and validation AUC.
        train_workers: Training processes (1: this step trains; more: a multi-worker job).
        tuned_overrides: JSON of the settings the tune step chose, on top of overrides ("{}": none).
        accelerator_limit: GPUs per worker of a multi-worker job (train-placement's count).
        node_selector: Node selector of a multi-worker job's workers (train-placement's).
        tolerations: Tolerations of a multi-worker job's workers (train-placement's).
    """
    import json
    import os

    from shoprank.telemetry import gpu_present, quiet_native_logs, stage

    quiet_native_logs()  # first: TensorFlow's C++ start-up notices stay out of the log (VERBOSE=1 keeps them)
    import tensorflow as tf

    from shoprank.config import merge_overrides, resolve_config
    from shoprank.modeling import distributed

    gpus = tf.config.list_physical_devices("GPU")
    names = ", ".join(tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus)
    if gpus:
        print(f"[train] GPU: {len(gpus)} found ({names}), training on it", flush=True)
    elif gpu_present():
        print("[train] GPU: this machine has one, but TensorFlow cannot use it (a CPU-only build, or no CUDA "
              "libraries: pip install 'tensorflow[and-cuda]'); training on the CPU", flush=True)
    else:
        print("[train] GPU: none found, training on the CPU", flush=True)
    settings = json.dumps(merge_overrides(overrides, tuned_overrides))
    config = resolve_config(preset, settings)
    with stage("train") as record:
        if train_workers <= 1:
            from shoprank.modeling.train import train as run

            result = run(features.path, transform.path, model.path, config)
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            from shoprank.release.trainjob import JobSettings, TFJobApi, job_name, run_training_job

            ns_file = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
            namespace = open(ns_file).read().strip() if os.path.exists(ns_file) else "default"
            pod = os.environ.get("HOSTNAME", "shoprank")
            name = job_name(pod)
            job = JobSettings(name=name, namespace=namespace, workers=train_workers, preset=preset, overrides=settings,
                              image=os.environ.get("SHOPRANK_COMPONENT_IMAGE", ""),
                              claim=os.environ.get("SHOPRANK_TRAIN_PVC", ""),
                              mount_path=os.environ.get("SHOPRANK_TRAIN_MOUNT", "/mnt/shoprank-train"),
                              job_dir=name, gpu_count=int(accelerator_limit or 0), node_selector=node_selector or {},
                              tolerations=tolerations or [], labels={"shoprank.dev/pipeline-pod": pod[:63]})
            result = run_training_job(job, features.path, transform.path, model.path, TFJobApi.from_environment())
        else:
            result = distributed.launch_local(train_workers, features.path, transform.path, model.path, preset,
                                              settings)
        record["workers"] = train_workers
        record["samples_per_second"] = result.get("samples_per_second")
    model.metadata.update({"framework": "tensorflow", "format": "savedmodel", "parameters": result["parameters"],
                           "strategy": result["strategy"], "workers": train_workers})
    last = result["epochs"][-1]
    train_metrics.log_metric("epochs", len(result["epochs"]))
    train_metrics.log_metric("parameters", result["parameters"])
    train_metrics.log_metric("workers", train_workers)
    if result.get("samples_per_second"):
        train_metrics.log_metric("samples_per_second", result["samples_per_second"])
    for key in ("loss", "val_loss", "val_auc"):
        if key in last:
            train_metrics.log_metric(key, round(last[key], 5))
