"""The desired InferenceService (shoprank.release.kserve.spec): settings, validation, the manifest built.
"""

from __future__ import annotations

import pytest

from shoprank.release.kserve.names import (
    AUTOSCALER_CLASS_ANNOTATION,
    DEPLOYMENT_MODE_ANNOTATION,
    KNATIVE_CLASS_ANNOTATION,
)
from shoprank.release.kserve.spec import GPU_RESOURCE, Resources, ServingSettings, Toleration, build_inference_service
from tests.release.kserve.support import V1


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
