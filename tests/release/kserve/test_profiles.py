"""The settings the pipeline's serving parameters produce (shoprank.release.kserve.profiles), and that a
profile's defaults are its overlay's InferenceService.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoprank.release.kserve.plan import plan_rollout
from shoprank.release.kserve.profiles import (
    DEFAULT_PROFILE,
    PIPELINE_PREFIX,
    PROFILES,
    SERVING_PARAMETERS,
    PromoteParams,
    serving_settings,
)
from shoprank.release.kserve.spec import desired_inference_service
from tests.release.kserve.support import NAME, NEW, desired, live

REPO = Path(__file__).resolve().parents[3]


def kustomize(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("`kubectl` (with kustomize) is needed to render manifests/overlays")
    out = subprocess.run([kubectl, "kustomize", str(REPO / "manifests" / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("profile", ["gpu", "cpu", "kind"])
def test_profile_defaults_are_the_overlays_inference_service(profile):
    rendered = next(d for d in kustomize(profile) if d["kind"] == "InferenceService")
    placeholder = rendered["spec"]["predictor"]["model"]["storageUri"]
    built = desired(placeholder, profile=profile)
    assert built["spec"] == rendered["spec"]
    assert built["metadata"]["annotations"] == rendered["metadata"]["annotations"]
    assert plan_rollout(live(rendered), built).action == "noop"


def test_gpu_triton_profile_is_the_overlays_inference_service():
    rendered = next(d for d in kustomize("gpu-triton") if d["kind"] == "InferenceService")
    bundle = rendered["spec"]["transformer"]["storageUris"][0]["uri"]
    assert rendered["spec"]["predictor"]["model"]["storageUri"] == bundle + "/triton"
    image = rendered["spec"]["transformer"]["containers"][0]["image"]
    built = desired(bundle, profile="gpu-triton", transformer_image=image)
    assert built["spec"] == rendered["spec"]
    assert built["metadata"]["annotations"] == rendered["metadata"]["annotations"]
    assert plan_rollout(live(rendered), built).action == "noop"


def test_default_parameters_match_the_default_overlay():
    assert PromoteParams().profile == DEFAULT_PROFILE == "gpu"
    settings, autoscaling, notes = serving_settings(PromoteParams(), NEW, NAME)
    assert settings.use_gpu and settings.gpu_count == 1 and settings.max_replicas == 4 and autoscaling
    assert settings.gpu_node_selector == {"nvidia.com/gpu.present": "true"} and notes == ()


def test_parameters_override_the_profile():
    settings, _, _ = serving_settings(PromoteParams(
        profile="gpu", namespace="ranking", gpu_count=2, gpu_node_label="cloud.google.com/gke-accelerator=nvidia-l4",
        min_replicas=2, max_replicas=10, scale_target=50), NEW, NAME)
    isvc = desired_inference_service(settings)
    predictor = isvc["spec"]["predictor"]
    assert isvc["metadata"]["namespace"] == "ranking"
    assert predictor["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert predictor["model"]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 10)
    assert predictor["autoScaling"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 50


def test_gpu_switch_only_moves_placement():
    settings, _, _ = serving_settings(PromoteParams(profile="gpu", gpu="false"), NEW, NAME)
    predictor = desired_inference_service(settings)["spec"]["predictor"]
    assert "nodeSelector" not in predictor and "tolerations" not in predictor
    assert "nvidia.com/gpu" not in predictor["model"]["resources"]["limits"]
    assert predictor["model"]["modelFormat"] == {"name": "shoprank-savedmodel"}


def test_canary_is_noted_and_ignored_in_standard_mode():
    settings, _, notes = serving_settings(PromoteParams(profile="cpu", canary_percent=10), NEW, NAME)
    assert settings.deployment_mode == "Standard" and settings.canary_traffic_percent is None
    assert "ignored" in notes[0] and "Knative" in notes[0]


def test_min_replicas_zero_is_a_real_value_in_knative():
    settings, _, _ = serving_settings(PromoteParams(profile="cpu", deployment_mode="Knative", min_replicas=0,
                                                    scale_metric="concurrency", scale_target=8), NEW, NAME)
    assert settings.min_replicas == 0


@pytest.mark.parametrize("params, message", [
    ({"profile": "gpu-triton"}, "transformer_image"),
    ({"profile": "cpu", "transformer_image": "reg/serving:1"}, "Triton variant"),
    ({"profile": "tpu"}, "unknown serving profile"),
    ({"gpu": "maybe"}, "true or false"),
    ({"gpu_node_label": "a=b=c"}, "key=value"),
    ({"deployment_mode": "Serverful"}, "deployment mode"),
    ({"canary_percent": 101}, "0..100"),
    ({"smoke": "tensor"}, "smoke must be"),
    ({"ready_timeout_s": 0}, "ready_timeout_s"),
    ({"profile": "cpu", "min_replicas": 0}, "min_replicas"),
])
def test_bad_parameters_are_refused_before_anything_happens(params, message):
    with pytest.raises(ValueError, match=message):
        serving_settings(PromoteParams(**params), NEW, NAME)


# --- the declaration of the serving parameters -------------------------------------------------------------


def test_serving_parameters_are_promote_params_fields_with_a_description():
    assert [p.attribute for p in SERVING_PARAMETERS] == [f.name for f in dataclasses.fields(PromoteParams)]
    defaults = PromoteParams()
    for p in SERVING_PARAMETERS:
        assert p.name == PIPELINE_PREFIX + p.attribute
        assert p.type in (str, int, bool) and type(p.default) is p.type  # KFP parameter types, never None
        assert getattr(defaults, p.attribute) == p.default
        assert p.description.strip() and p.description == " ".join(p.description.split()), p.name


def test_the_declared_defaults_take_the_profiles_values():
    """Defaults mean "the profile's value": settings from all defaults are the default profile's own."""
    settings, _, _ = serving_settings(PromoteParams(), NEW, NAME)
    for key, value in PROFILES[DEFAULT_PROFILE].settings.items():
        assert getattr(settings, key) == value, key
