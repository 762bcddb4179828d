"""Unit tests of the promote step's decision logic (shoprank.promotion): no cluster, no network."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shoprank.promotion import (
    AUTOSCALER_CLASS_ANNOTATION,
    DEPLOYMENT_MODE_ANNOTATION,
    GPU_RESOURCE,
    KNATIVE_CLASS_ANNOTATION,
    PlanError,
    Resources,
    ServingSettings,
    Toleration,
    build_inference_service,
    decide_after_rollout,
    full_rollout_patch,
    has_failed,
    is_ready,
    plan_promotion,
    rollback_spec,
    versioned_storage_uri,
)

V1 = "s3://shoprank-models/shoprank-ranker/20260101-1"
V2 = "s3://shoprank-models/shoprank-ranker/20260102-1"


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies application/merge-patch+json."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def as_live(manifest: dict[str, Any], **status: Any) -> dict[str, Any]:
    """What the API server returns for `manifest`: server metadata, webhook defaults, a status."""
    live = copy.deepcopy(manifest)
    live["metadata"].update(uid="0b7c", resourceVersion="4711", generation=3,
                            creationTimestamp="2026-01-01T00:00:00Z", managedFields=[{"manager": "x"}])
    live["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = "{}"
    live["spec"]["predictor"]["model"]["name"] = "kserve-container"  # a field nobody here owns
    live["status"] = status or ready_status()
    return live


def ready_status(mode: str = "Standard") -> dict[str, Any]:
    return {
        "deploymentMode": mode,
        "conditions": [
            {"type": "IngressReady", "status": "True"},
            {"type": "PredictorReady", "status": "True"},
            {"type": "Ready", "status": "True"},
        ],
        "modelStatus": {"transitionStatus": "UpToDate", "states": {"activeModelState": "Loaded"}},
    }


# --- build_inference_service -----------------------------------------------------------------------


def test_build_cpu_standard_defaults():
    isvc = build_inference_service(ServingSettings(storage_uri=V1))
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    assert isvc["metadata"]["name"] == "shoprank-ranker" and isvc["metadata"]["namespace"] == "shoprank"
    annotations = isvc["metadata"]["annotations"]
    assert annotations == {DEPLOYMENT_MODE_ANNOTATION: "Standard", AUTOSCALER_CLASS_ANNOTATION: "hpa"}
    predictor = isvc["spec"]["predictor"]
    assert predictor["serviceAccountName"] == "shoprank-model-reader"
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 8)
    [metric] = predictor["autoScaling"]["metrics"]
    assert metric["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}
    assert "scaleMetric" not in predictor and "canaryTrafficPercent" not in predictor
    assert "nodeSelector" not in predictor and "tolerations" not in predictor
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "shoprank-tflite"}
    assert model["runtime"] == "shoprank-ranker" and model["storageUri"] == V1
    assert model["args"] == ["--backend=tflite"]
    assert GPU_RESOURCE not in str(model["resources"])
    assert model["resources"]["limits"]["ephemeral-storage"] == "1Gi"
    ctx = model["securityContext"]
    assert ctx["runAsNonRoot"] and ctx["readOnlyRootFilesystem"] and not ctx["allowPrivilegeEscalation"]
    assert ctx["capabilities"] == {"drop": ["ALL"]} and ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert model["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert model["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}


def test_build_gpu():
    settings = ServingSettings(
        storage_uri=V1, model_format="shoprank-savedmodel", backend="savedmodel", use_gpu=True, gpu_count=2,
        gpu_node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
        tolerations=(Toleration(), Toleration(key="dedicated", operator="Equal", value="ml")),
    )
    predictor = build_inference_service(settings)["spec"]["predictor"]
    assert predictor["model"]["resources"]["limits"][GPU_RESOURCE] == "2"
    assert predictor["model"]["resources"]["requests"][GPU_RESOURCE] == "2"
    assert predictor["model"]["args"] == ["--backend=savedmodel"]
    assert predictor["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert predictor["tolerations"] == [
        {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
    ]


def test_gpu_placement_only_with_use_gpu():
    predictor = build_inference_service(ServingSettings(storage_uri=V1, use_gpu=False))["spec"]["predictor"]
    assert "nodeSelector" not in predictor and "tolerations" not in predictor


def test_canary_only_in_knative():
    with pytest.raises(ValueError, match="canary_traffic_percent needs deployment_mode Knative"):
        ServingSettings(storage_uri=V1, canary_traffic_percent=10)
    knative = ServingSettings(storage_uri=V1, deployment_mode="Knative", scale_metric="concurrency",
                              scale_target=8, canary_traffic_percent=10)
    isvc = build_inference_service(knative)
    predictor = isvc["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("concurrency", 8)
    assert "autoScaling" not in predictor
    assert isvc["metadata"]["annotations"] == {DEPLOYMENT_MODE_ANNOTATION: "Knative"}
    no_canary = ServingSettings(storage_uri=V1, deployment_mode="Knative", scale_metric="rps",
                                scale_target=50)
    assert "canaryTrafficPercent" not in build_inference_service(no_canary)["spec"]["predictor"]


def test_knative_on_cpu_metric_uses_the_hpa_class():
    isvc = build_inference_service(ServingSettings(storage_uri=V1, deployment_mode="Knative"))
    assert isvc["metadata"]["annotations"][KNATIVE_CLASS_ANNOTATION] == "hpa.autoscaling.knative.dev"
    assert isvc["spec"]["predictor"]["scaleMetric"] == "cpu"


def test_legacy_mode_names_are_normalised():
    assert ServingSettings(storage_uri=V1, deployment_mode="RawDeployment").deployment_mode == "Standard"
    assert ServingSettings(storage_uri=V1, deployment_mode="Serverless").deployment_mode == "Knative"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "Shop_Ranker"}, "DNS-1035"),
        ({"storage_uri": " "}, "storage_uri is empty"),
        ({"min_replicas": 3, "max_replicas": 2}, "max_replicas"),
        ({"min_replicas": 0}, "min_replicas must be >= 1 in Standard"),
        ({"deployment_mode": "Knative", "min_replicas": 0}, "scaling to zero"),
        ({"scale_metric": "concurrency"}, "scale_metric 'concurrency'"),
        ({"scale_target": 150}, "1..100"),
        ({"model_format": "shoprank-savedmodel", "backend": "tflite"}, "needs backend savedmodel"),
        ({"use_gpu": True, "gpu_count": 0}, "gpu_count"),
        ({"deployment_mode": "ModelMesh"}, "deployment mode must be one of"),
        ({"deployment_mode": "Knative", "canary_traffic_percent": 120}, "0..100"),
    ],
)
def test_settings_are_validated(overrides, message):
    values = {"storage_uri": V1, **overrides}
    with pytest.raises(ValueError, match=message):
        ServingSettings(**values)


def test_settings_from_plain_data():
    settings = ServingSettings.from_mapping({
        "storage_uri": V1, "use_gpu": True, "model_format": "shoprank-savedmodel", "backend": "savedmodel",
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "resources": {"cpu_request": "2", "memory_request": "4Gi", "cpu_limit": "4", "memory_limit": "8Gi"},
        "min_replicas": 1, "max_replicas": 4, "scale_target": 60,
    })
    assert settings.tolerations == (Toleration(),)
    assert settings.resources == Resources("2", "4Gi", "4", "8Gi")
    with pytest.raises(ValueError, match="unknown serving settings"):
        ServingSettings.from_mapping({"storage_uri": V1, "gpus": 1})


# --- versioned_storage_uri ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ("s3://shoprank-models", "s3://shoprank-models/ranker/7"),
        ("s3://shoprank-models/prod/", "s3://shoprank-models/prod/ranker/7"),
        ("gs://bucket/a/b", "gs://bucket/a/b/ranker/7"),
        ("pvc://models-pvc", "pvc://models-pvc/ranker/7"),
        ("pvc://models-pvc/exports//", "pvc://models-pvc/exports/ranker/7"),
        ("/mnt/models/", "/mnt/models/ranker/7"),
        ("artifacts/models", "artifacts/models/ranker/7"),
        ("/", "/ranker/7"),
        ("file:///tmp/models", "file:///tmp/models/ranker/7"),
    ],
)
def test_versioned_storage_uri(root, expected):
    assert versioned_storage_uri(root, "ranker", 7) == expected


@pytest.mark.parametrize(
    ("root", "model", "version", "message"),
    [
        ("s3://", "ranker", "1", "names no a bucket"),
        ("pvc:///", "ranker", "1", "names no a PVC name"),
        ("http://host/models", "ranker", "1", "unsupported storage scheme"),
        ("", "ranker", "1", "empty"),
        ("s3://b", "../etc", "1", "model_name"),
        ("s3://b", "ranker", "1/2", "version"),
        ("s3://b", "ranker", "..", "version"),
        ("file://relative/path", "ranker", "1", "absolute"),
    ],
)
def test_versioned_storage_uri_rejects(root, model, version, message):
    with pytest.raises(ValueError, match=message):
        versioned_storage_uri(root, model, version)


# --- plan_promotion ----------------------------------------------------------------------------------


def test_plan_creates_when_nothing_is_deployed():
    desired = build_inference_service(ServingSettings(storage_uri=V1))
    plan = plan_promotion(None, desired)
    assert plan.action == "create" and plan.body == desired
    assert plan.body is not desired  # a copy: the caller may send it without aliasing


def test_plan_patches_a_new_model_version_with_a_minimal_merge_patch():
    current = as_live(build_inference_service(ServingSettings(storage_uri=V1)))
    desired = build_inference_service(ServingSettings(storage_uri=V2))
    plan = plan_promotion(current, desired)
    assert plan.action == "patch"
    assert plan.body == {"spec": {"predictor": {"model": {"storageUri": V2}}}}
    assert plan.changes == ("spec.predictor.model.storageUri",)
    assert V1 in plan.reason and V2 in plan.reason


def test_rerun_after_patch_is_a_noop():
    current = as_live(build_inference_service(ServingSettings(storage_uri=V1)))
    desired = build_inference_service(ServingSettings(storage_uri=V2))
    plan = plan_promotion(current, desired)
    patched = apply_merge_patch(current, plan.body)
    again = plan_promotion(patched, desired)
    assert again.action == "noop" and again.body is None
    assert V2 in again.reason


def test_rerun_of_the_same_model_is_a_noop_despite_server_fields():
    desired = build_inference_service(ServingSettings(storage_uri=V1))
    current = as_live(desired)
    current["metadata"]["annotations"]["team"] = "search"  # someone else's annotation
    current["metadata"]["labels"]["extra"] = "x"
    current["spec"]["predictor"]["model"]["resources"]["limits"]["cpu"] = 2  # a number, same quantity
    assert plan_promotion(current, desired).action == "noop"


def test_plan_patches_resources_and_removes_what_is_no_longer_wanted():
    gpu = ServingSettings(storage_uri=V1, model_format="shoprank-savedmodel", backend="savedmodel",
                          use_gpu=True, max_replicas=4)
    cpu = ServingSettings(storage_uri=V1, max_replicas=4)
    current = as_live(build_inference_service(gpu))
    desired = build_inference_service(cpu)
    plan = plan_promotion(current, desired)
    assert plan.action == "patch"
    predictor = plan.body["spec"]["predictor"]
    assert predictor["nodeSelector"] is None and predictor["tolerations"] is None
    assert predictor["model"]["resources"]["limits"][GPU_RESOURCE] is None
    assert predictor["model"]["args"] == ["--backend=tflite"]
    assert predictor["model"]["modelFormat"] == {"name": "shoprank-tflite"}
    patched = apply_merge_patch(current, plan.body)
    assert GPU_RESOURCE not in str(patched["spec"])
    assert patched["spec"]["predictor"]["model"]["name"] == "kserve-container"  # untouched
    assert plan_promotion(patched, desired).action == "noop"


def test_plan_refuses_a_deployment_mode_change():
    current = as_live(build_inference_service(ServingSettings(storage_uri=V1)))
    desired = build_inference_service(ServingSettings(storage_uri=V2, deployment_mode="Knative"))
    with pytest.raises(PlanError, match="cannot change"):
        plan_promotion(current, desired)


def test_plan_accepts_the_legacy_name_of_the_same_mode():
    current = as_live(build_inference_service(ServingSettings(storage_uri=V1)))
    current["status"]["deploymentMode"] = "RawDeployment"
    assert plan_promotion(current, build_inference_service(ServingSettings(storage_uri=V1))).action == "noop"


def test_plan_waits_for_a_deletion():
    current = as_live(build_inference_service(ServingSettings(storage_uri=V1)))
    current["metadata"]["deletionTimestamp"] = "2026-01-02T00:00:00Z"
    with pytest.raises(PlanError, match="being deleted"):
        plan_promotion(current, build_inference_service(ServingSettings(storage_uri=V2)))


def test_plan_rejects_another_object():
    current = as_live(build_inference_service(ServingSettings(storage_uri=V1, name="other")))
    with pytest.raises(ValueError, match="is not shoprank/shoprank-ranker"):
        plan_promotion(current, build_inference_service(ServingSettings(storage_uri=V1)))


def knative(storage_uri: str, canary: int | None = None) -> ServingSettings:
    return ServingSettings(storage_uri=storage_uri, deployment_mode="Knative", scale_metric="concurrency",
                           scale_target=8, canary_traffic_percent=canary)


def test_canary_goes_with_a_new_model_in_knative():
    current = as_live(build_inference_service(knative(V1)), **ready_status("Knative"))
    plan = plan_promotion(current, build_inference_service(knative(V2, canary=10)))
    assert plan.action == "patch"
    assert plan.body["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert "canary gets 10%" in plan.reason


def test_canary_is_dropped_on_create():
    plan = plan_promotion(None, build_inference_service(knative(V1, canary=10)))
    assert plan.action == "create"
    assert "canaryTrafficPercent" not in plan.body["spec"]["predictor"]


def test_canary_alone_never_patches_and_rerun_mid_canary_is_a_noop():
    desired = build_inference_service(knative(V2, canary=10))
    fully_rolled_out = as_live(build_inference_service(knative(V2)), **ready_status("Knative"))
    assert plan_promotion(fully_rolled_out, desired).action == "noop"
    mid_canary = as_live(desired, **ready_status("Knative"))
    assert plan_promotion(mid_canary, desired).action == "noop"


def test_full_rollout_ends_the_canary_and_a_leftover_split_is_removed():
    live = as_live(build_inference_service(knative(V2, canary=10)), **ready_status("Knative"))
    done = apply_merge_patch(live, full_rollout_patch())
    assert "canaryTrafficPercent" not in done["spec"]["predictor"]
    plan = plan_promotion(live, build_inference_service(knative(V2)))
    assert plan.action == "patch"
    assert plan.body == {"spec": {"predictor": {"canaryTrafficPercent": None}}}


# --- readiness --------------------------------------------------------------------------------------


def test_is_ready():
    assert is_ready(ready_status()) == (True, "Ready: True")


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (None, "no status yet"),
        ({}, "no status yet"),
        ({"conditions": []}, "no Ready condition yet"),
        ({"conditions": [
            {"type": "PredictorReady", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": "deployment exceeded its progress deadline"},
            {"type": "Ready", "status": "False"},
        ]}, "PredictorReady: False: ProgressDeadlineExceeded: deployment exceeded its progress deadline"),
        ({"conditions": [{"type": "Ready", "status": "Unknown", "reason": "Creating"}]},
         "Ready: Unknown: Creating"),
        ({"conditions": [{"type": "Ready", "status": "True"}],
          "modelStatus": {"transitionStatus": "InProgress"}}, "model transition InProgress"),
        ({"conditions": [{"type": "Ready", "status": "True"},
                         {"type": "LatestDeploymentReady", "status": "Unknown"}]},
         "LatestDeploymentReady: Unknown"),
        ({"conditions": [{"type": "Ready", "status": "True"}],
          "components": {"predictor": {"latestCreatedRevision": "r-2", "latestReadyRevision": "r-1"}}},
         "predictor revision r-2 not ready yet (serving r-1)"),
        ({"conditions": [{"type": "Ready", "status": "True"}, {"type": "Stopped", "status": "True"}]},
         "stopped"),
    ],
)
def test_is_not_ready(status, reason):
    ready, why = is_ready(status)
    assert not ready
    assert why.startswith(reason)


def test_failed_model_load_is_terminal():
    status = {
        "conditions": [{"type": "Ready", "status": "True"}],  # the old pods still serve
        "modelStatus": {"transitionStatus": "BlockedByFailedLoad",
                        "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "bad tflite file"}},
    }
    assert has_failed(status) == (True, "model BlockedByFailedLoad (ModelLoadFailed: bad tflite file)")
    assert is_ready(status) == (False, "model BlockedByFailedLoad (ModelLoadFailed: bad tflite file)")
    assert has_failed(ready_status()) == (False, "")


# --- verdict and rollback ---------------------------------------------------------------------------


def test_promoted_when_ready_and_smoke_passes():
    outcome = decide_after_rollout(ready=True, smoke_ok=True, timed_out=False)
    assert outcome.promoted and outcome.status == "promoted"


def test_rolled_back_on_timeout():
    outcome = decide_after_rollout(ready=False, smoke_ok=None, timed_out=True, detail="Ready: Unknown")
    assert outcome.status == "rolled_back" and not outcome.promoted
    assert outcome.reason == "not ready before the timeout: Ready: Unknown"
    # the deadline wins even if readiness arrived with it
    assert decide_after_rollout(ready=True, smoke_ok=True, timed_out=True).status == "rolled_back"


def test_rolled_back_on_failed_smoke():
    outcome = decide_after_rollout(ready=True, smoke_ok=False, timed_out=False, detail="NDCG 0.0")
    assert outcome.status == "rolled_back" and outcome.reason == "smoke test failed: NDCG 0.0"


def test_rolled_back_when_rollout_failed_or_smoke_did_not_run():
    assert decide_after_rollout(False, None, False).reason == "rollout failed"
    assert decide_after_rollout(True, None, False).status == "rolled_back"


def test_rollback_restores_the_previous_spec():
    previous = as_live(build_inference_service(ServingSettings(storage_uri=V1)))
    rollback = rollback_spec(previous, name="shoprank-ranker", namespace="shoprank")
    assert rollback.action == "restore" and V1 in rollback.reason
    manifest = rollback.manifest
    assert "status" not in manifest
    for server_field in ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields"):
        assert server_field not in manifest["metadata"]
    assert "kubectl.kubernetes.io/last-applied-configuration" not in manifest["metadata"]["annotations"]
    assert manifest["spec"] == previous["spec"] and manifest["spec"] is not previous["spec"]

    # the failed promotion is live now; planning towards the restored manifest patches the old model back
    failed = as_live(build_inference_service(ServingSettings(storage_uri=V2)))
    plan = plan_promotion(failed, manifest)
    assert plan.action == "patch" and plan.body == {"spec": {"predictor": {"model": {"storageUri": V1}}}}
    assert plan_promotion(apply_merge_patch(failed, plan.body), manifest).action == "noop"


def test_rollback_of_a_knative_canary_takes_all_traffic_back():
    previous = as_live(build_inference_service(knative(V1)), **ready_status("Knative"))
    failed = as_live(build_inference_service(knative(V2, canary=10)), **ready_status("Knative"))
    manifest = rollback_spec(previous, name="shoprank-ranker", namespace="shoprank").manifest
    plan = plan_promotion(failed, manifest)
    assert plan.body["spec"]["predictor"]["canaryTrafficPercent"] is None
    assert plan.body["spec"]["predictor"]["model"] == {"storageUri": V1}


def test_rollback_without_a_previous_is_a_deletion():
    rollback = rollback_spec(None, name="shoprank-ranker", namespace="shoprank")
    assert rollback.action == "delete" and rollback.manifest is None
    assert (rollback.name, rollback.namespace) == ("shoprank-ranker", "shoprank")


def test_rollback_rejects_another_object():
    previous = as_live(build_inference_service(ServingSettings(storage_uri=V1, name="other")))
    with pytest.raises(ValueError, match="is not shoprank/shoprank-ranker"):
        rollback_spec(previous, name="shoprank-ranker", namespace="shoprank")
