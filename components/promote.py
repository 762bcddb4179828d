"""The promote step: publish the blessed bundle, locally or to a cluster (KServe), and record the outcome."""

import os

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from components import COMPONENT_IMAGE

__all__ = ["MODEL_PVC", "PVC_MOUNT_PATH", "promote"]

# pvc:// model roots: compile with SHOPRANK_MODEL_PVC=<claim> and the pipeline mounts that claim on the promote
# task here (the bundle is written through the mount; KServe reads pvc://<claim>/...). Unset: no mount.
MODEL_PVC = os.environ.get("SHOPRANK_MODEL_PVC", "")
PVC_MOUNT_PATH = "/mnt/shoprank-models"


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def promote(model_root: str, model_name: str, optimized_model: Input[Model], transform: Input[Artifact],
            summary: Input[Artifact], promotion: Output[Artifact], deploy_target: str = "local",
            serving_profile: str = "gpu", serving_namespace: str = "shoprank", serving_gpu: str = "",
            serving_gpu_count: int = 0, serving_gpu_node_label: str = "", serving_min_replicas: int = -1,
            serving_max_replicas: int = 0, serving_scale_metric: str = "", serving_scale_target: int = 0,
            serving_deployment_mode: str = "", serving_canary_percent: int = 0,
            serving_ready_timeout_s: int = 600, serving_smoke: str = "ranking", serving_smoke_url: str = "",
            serving_force_conflicts: bool = False, serving_transformer_image: str = "",
            pvc_mount_path: str = "/mnt/shoprank-models"):
    """Publish the blessed bundle to <model_root>/<model_name>/<version>/.

    deploy_target "local" (the default, `make run`): publish to a local path and point LATEST at it.
    deploy_target "kserve": upload to s3://, gs:// or pvc:// and roll the InferenceService to the new version
    (server-side apply, canary in Knative mode, wait for Ready, smoke request, roll back on failure; see
    shoprank.release.kserve.rollout). The serving_* values left at "", 0 or -1 come from the overlay named by
    serving_profile (gpu, gpu-triton, cpu, kind); gpu-triton serves the ONNX export on KServe's Triton runtime
    (the bundle's triton/ model repository) behind the shoprank transformer (serving_transformer_image). The
    serving_* parameters are declared once, as shoprank.release.kserve.profiles.PromoteParams;
    tests/pipelines/test_compile.py checks this signature against it.
    The output metadata holds the previous and new versions and the outcome; an outcome of "failed" (refused,
    or failed with nothing to restore) also fails the task, while "rolled_back" does not: the previous model
    serves and the record says why.

    Args:
        model_root: Where versions are published: a local path (deploy_target local), or s3://, gs:// or
            pvc:// (deploy_target kserve).
        model_name: The model's folder under model_root, and the InferenceService's name.
        optimized_model: The optimise step's model (SavedModel, int8 TFLite, the ONNX export if any).
        transform: The fitted transform (vocabularies, price edges) and the item catalogue.
        summary: The blessing gate's run summary, published with the bundle.
        promotion: The promotion record (JSON): versions, outcome and reason; also the output's metadata.
        deploy_target: "local" publishes to the local path model_root; "kserve" uploads to model_root and rolls
            out the InferenceService.
        serving_profile: The overlay in manifests/overlays whose InferenceService settings the other serving_*
            values start from: gpu, gpu-triton, cpu or kind.
        serving_namespace: Namespace of the InferenceService.
        serving_gpu: "true" or "false": request a GPU and GPU node placement or not (the format and resources
            stay the profile's); "" keeps the profile's choice.
        serving_gpu_count: GPUs per predictor replica; 0 keeps the profile's.
        serving_gpu_node_label: key=value (or key, meaning key=true) of the GPU nodes' label for the node
            selector; "" keeps nvidia.com/gpu.present=true.
        serving_min_replicas: Minimum predictor replicas (0 scales to zero, Knative only); -1 keeps the
            profile's.
        serving_max_replicas: Maximum predictor replicas; 0 keeps the profile's.
        serving_scale_metric: Autoscaling metric: cpu or memory (HPA), concurrency or rps (Knative only); ""
            keeps the profile's.
        serving_scale_target: Autoscaling target (a utilisation percentage for cpu and memory); 0 keeps the
            profile's.
        serving_deployment_mode: KServe deployment mode, Standard or Knative; "" means Standard. KServe cannot
            change the mode of a live InferenceService.
        serving_canary_percent: Knative only: the share of traffic (1..100) the new revision gets, checked by
            the smoke request, before the full rollout; 0 rolls out at once.
        serving_ready_timeout_s: Seconds to wait for Ready, per rollout phase and for a rollback.
        serving_smoke: "ranking": send a v2 ranking request to the new version once it is Ready; "none": send
            nothing.
        serving_smoke_url: Base URL of the smoke request; "" takes it from the InferenceService status.
        serving_force_conflicts: Take over fields another field manager owns; without it only the fields
            `make deploy` set are taken over.
        serving_transformer_image: gpu-triton only: the shoprank serving image that runs the transformer in
            front of Triton.
        pvc_mount_path: Where a pvc:// model_root's claim is mounted in this step's pod (the pipeline mounts it
            when compiled with SHOPRANK_MODEL_PVC).
    """
    import json

    from shoprank.errors import retry_transient
    from shoprank.telemetry import stage

    with stage("promote"):  # storage and cluster errors that pass are tried again here; refusals fail at once
        if deploy_target == "local":
            from shoprank.release.bundle import publish_bundle

            record = retry_transient(lambda: publish_bundle(optimized_model.path, transform.path, summary.path,
                                                            model_root, model_name), what="promote")
        elif deploy_target == "kserve":
            from shoprank.release.kserve.profiles import PromoteParams
            from shoprank.release.kserve.rollout import promote_to_kserve

            params = PromoteParams(
                profile=serving_profile, namespace=serving_namespace, gpu=serving_gpu,
                gpu_count=serving_gpu_count, gpu_node_label=serving_gpu_node_label,
                min_replicas=serving_min_replicas, max_replicas=serving_max_replicas,
                scale_metric=serving_scale_metric, scale_target=serving_scale_target,
                deployment_mode=serving_deployment_mode, canary_percent=serving_canary_percent,
                ready_timeout_s=serving_ready_timeout_s, smoke=serving_smoke, smoke_url=serving_smoke_url,
                force_conflicts=serving_force_conflicts, transformer_image=serving_transformer_image)
            record = retry_transient(lambda: promote_to_kserve(
                optimized_model.path, transform.path, summary.path, model_root=model_root, model_name=model_name,
                params=params, pvc_mount_path=pvc_mount_path), what="promote")
        else:
            raise ValueError(f"deploy_target must be 'local' or 'kserve', not {deploy_target!r}")
    with open(promotion.path, "w") as fh:
        json.dump(record, fh, indent=2)
    promotion.metadata.update(record)
    if record.get("outcome") == "failed":
        raise RuntimeError(f"promotion failed: {record.get('reason')}")
