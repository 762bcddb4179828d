"""The shoprank pipeline: ingest -> preprocess -> train -> evaluate -> optimize -> validate -> promote.

The same function is compiled for Kubeflow (`make compile`) and run locally through kfp.local
(`make run`). Settings that only mean something on a cluster (resources, accelerator, node selector,
toleration) compile into the YAML and are ignored locally.
"""


from kfp import dsl, kubernetes

from components.evaluate import evaluate
from components.ingest import ingest
from components.optimize import optimize
from components.placement import train_placement
from components.preprocess import preprocess
from components.promote import MODEL_PVC, PVC_MOUNT_PATH, promote
from components.train import train
from components.validate import validate

__all__ = ["GPU_TAINT", "PIPELINE_NAME", "shoprank_pipeline"]

PIPELINE_NAME = "shoprank"
GPU_TAINT = "nvidia.com/gpu"


def _resources(task: dsl.PipelineTask, cpu: str, memory: str, retries: int = 1) -> dsl.PipelineTask:
    return (task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
            .set_retry(retries))


@dsl.pipeline(name=PIPELINE_NAME, description="Train, optimise (prune + int8), validate and promote the "
                                               "shoprank search ranking model.")
def shoprank_pipeline(
    preset: str = "default",
    overrides: str = "{}",
    data_source: str = "synthetic",
    use_gpu: bool = False,
    gpu_count: int = 1,
    gpu_node_label: str = "nvidia.com/gpu.present=true",
    model_root: str = "runs/models",
    model_name: str = "shoprank-ranker",
    deploy_target: str = "local",
    serving_profile: str = "gpu",
    serving_namespace: str = "shoprank",
    serving_gpu: str = "",
    serving_gpu_count: int = 0,
    serving_gpu_node_label: str = "",
    serving_min_replicas: int = -1,
    serving_max_replicas: int = 0,
    serving_scale_metric: str = "",
    serving_scale_target: int = 0,
    serving_deployment_mode: str = "",
    serving_canary_percent: int = 0,
    serving_ready_timeout_s: int = 600,
    serving_smoke: str = "ranking",
    serving_transformer_image: str = "",
) -> dsl.Artifact:
    """Train, optimise, validate and promote the ranking model; returns the run summary (JSON).

    Promotion runs only when the model is blessed. The serving_* parameters are declared once, as
    shoprank.release.kserve.profiles.PromoteParams (tests/pipelines/test_compile.py checks this signature and
    the promote component's against it); those left at "", 0 or -1 take the values of
    manifests/overlays/<serving_profile>. gpu-triton serves the ONNX export, laid out by the promote step as a
    Triton model repository, on KServe's Triton runtime behind the shoprank transformer.

    Args:
        preset: Size of the run's settings: tiny, small, default or large (shoprank.config.PRESETS).
        overrides: JSON of settings on top of the preset, e.g. {"optimize": {"target_sparsity": 0.7}}; unknown
            keys are refused.
        data_source: "synthetic", a path or storage URI (s3://, gs://) of a directory with the shoprank tables,
            "esci:<path or URI>[?locale=us]" or "events:<path or URI>[?preset=retailrocket|taobao]"
            (shoprank.data.sources).
        use_gpu: Train on a GPU node (accelerator, node selector and toleration are set at run time).
        gpu_count: GPUs for the train step when use_gpu.
        gpu_node_label: key=value of the GPU nodes' label, the train step's node selector when use_gpu.
        model_root: Where versions are published: a local path (deploy_target local), or s3://, gs:// or
            pvc:// (deploy_target kserve).
        model_name: The model's folder under model_root, and the InferenceService's name.
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
        serving_transformer_image: gpu-triton only: the shoprank serving image that runs the transformer in
            front of Triton.
    """
    raw = ingest(source=data_source, preset=preset, overrides=overrides)
    _resources(raw, "1", "4G").set_caching_options(True)
    pre = preprocess(preset=preset, overrides=overrides, raw_data=raw.outputs["raw_data"])
    _resources(pre, "2", "8G").set_caching_options(True)

    # Train on GPU nodes when use_gpu: accelerator, node selector and toleration are set from a
    # placement computed at run time (ignored by kfp.local, honoured by Kubeflow).
    place = train_placement(use_gpu=use_gpu, gpu_count=gpu_count, gpu_node_label=gpu_node_label,
                            gpu_taint=GPU_TAINT)
    _resources(place, "100m", "256M")
    fit = train(preset=preset, overrides=overrides, features=pre.outputs["features"],
                transform=pre.outputs["transform"])
    _resources(fit, "2", "8G").set_caching_options(True)
    fit.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(place.outputs["accelerator_limit"])
    kubernetes.add_node_selector_json(fit, place.outputs["node_selector"])
    kubernetes.add_toleration_json(fit, place.outputs["tolerations"])
    model = fit.outputs["model"]

    ev = evaluate(preset=preset, overrides=overrides, model=model, features=pre.outputs["features"])
    _resources(ev, "2", "4G")
    opt = optimize(preset=preset, overrides=overrides, model=model, features=pre.outputs["features"],
                   transform=pre.outputs["transform"])
    _resources(opt, "2", "6G")
    gate = validate(preset=preset, overrides=overrides, features=pre.outputs["features"],
                    transform=pre.outputs["transform"], optimized_model=opt.outputs["optimized_model"],
                    evaluation=ev.outputs["evaluation"], comparison=opt.outputs["comparison"])
    _resources(gate, "2", "4G").set_caching_options(False)

    with dsl.If(gate.outputs["Output"] == True, name="blessed"):  # noqa: E712
        pub = promote(model_root=model_root, model_name=model_name,
                      optimized_model=opt.outputs["optimized_model"], transform=pre.outputs["transform"],
                      summary=gate.outputs["summary"], deploy_target=deploy_target,
                      serving_profile=serving_profile, serving_namespace=serving_namespace, serving_gpu=serving_gpu,
                      serving_gpu_count=serving_gpu_count, serving_gpu_node_label=serving_gpu_node_label,
                      serving_min_replicas=serving_min_replicas, serving_max_replicas=serving_max_replicas,
                      serving_scale_metric=serving_scale_metric, serving_scale_target=serving_scale_target,
                      serving_deployment_mode=serving_deployment_mode,
                      serving_canary_percent=serving_canary_percent,
                      serving_ready_timeout_s=serving_ready_timeout_s, serving_smoke=serving_smoke,
                      serving_transformer_image=serving_transformer_image)
        # Retries are safe on a cluster too: a rerun plans from the live InferenceService (a rollout already
        # applied is verified, not repeated); a rolled-back promotion does not fail the task, so is not retried.
        _resources(pub, "1", "2G", retries=2).set_caching_options(False)
        if MODEL_PVC:  # pvc:// model roots: the claim is mounted where the component writes the bundle
            kubernetes.mount_pvc(pub, pvc_name=MODEL_PVC, mount_path=PVC_MOUNT_PATH)
    return gate.outputs["summary"]
