"""What a pipeline run asks to serve: the overlay profiles, the promote step's parameters, and the settings
they make together.

Why here, and light: the 16 `serving_*` parameters are declared once, as the fields of `PromoteParams`
(type, default and description), and `SERVING_PARAMETERS` lists them as the pipeline and the promote component
name them. KFP needs literal Python signatures, so `pipelines/shoprank_pipeline.py` and `components/promote.py`
spell them out again; tests/pipelines/test_compile.py checks that both match this declaration (names, types,
defaults and descriptions). `deploy/cli.py` reads `PROFILES` too, so this module imports only the standard
library, `shoprank.release.kserve.names` and `shoprank.release.kserve.spec`.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from shoprank.release.kserve.names import KNATIVE, STANDARD, TRITON_RUNTIME, normalize_deployment_mode
from shoprank.release.kserve.spec import Resources, ServingSettings

__all__ = [
    "DEFAULT_PROFILE",
    "PIPELINE_PREFIX",
    "PROFILES",
    "SERVING_PARAMETERS",
    "SMOKE_MODES",
    "TRITON_PROFILE",
    "Profile",
    "PromoteParams",
    "ServingParameter",
    "serving_settings",
]


@dataclass(frozen=True)
class Profile:
    """What `manifests/overlays/<name>` deploys, as ServingSettings values (tests compare them). The memory of
    the container that runs the shoprank server is sized from the bundle at promotion, up to `max_memory`; the
    overlays' memory values are what `make deploy` starts with, before a bundle is promoted."""

    settings: Mapping[str, Any]
    autoscaling: bool = True  # False: no HPA (autoscalerClass none), as the kind overlay


TRITON_PROFILE = "gpu-triton"
PROFILES: dict[str, Profile] = {
    "gpu": Profile({"model_format": "shoprank-savedmodel", "backend": "savedmodel", "use_gpu": True,
                    "gpu_count": 1, "min_replicas": 2, "max_replicas": 4, "scale_metric": "cpu",
                    "scale_target": 60, "resources": Resources("2", "4Gi", "4", "8Gi"),
                    "max_memory": "16Gi"}),
    "cpu": Profile({"model_format": "shoprank-tflite", "backend": "tflite", "use_gpu": False,
                    "min_replicas": 2, "max_replicas": 8, "scale_metric": "cpu", "scale_target": 70,
                    "resources": Resources("500m", "1Gi", "2", "2Gi"), "max_memory": "8Gi"}),
    # The ONNX export on KServe's Triton runtime (onnxruntime + TensorRT) behind the shoprank transformer;
    # manifests/overlays/gpu-triton. The transformer image is a parameter (serving_transformer_image).
    TRITON_PROFILE: Profile({"model_format": "onnx", "backend": "triton", "runtime": TRITON_RUNTIME,
                             "use_gpu": True, "gpu_count": 1, "min_replicas": 2, "max_replicas": 4,
                             "scale_metric": "cpu", "scale_target": 60,
                             "resources": Resources("2", "4Gi", "4", "8Gi"), "max_memory": "8Gi"}),
    "kind": Profile({"model_format": "shoprank-tflite", "backend": "tflite", "use_gpu": False,
                     "min_replicas": 1, "max_replicas": 1, "scale_metric": "cpu", "scale_target": 70,
                     "resources": Resources("100m", "256Mi", "500m", "512Mi"), "max_memory": "1Gi"},
                    autoscaling=False),
}
DEFAULT_PROFILE = "gpu"  # the default overlay of `make deploy`
SMOKE_MODES = ("ranking", "none")
PIPELINE_PREFIX = "serving_"  # PromoteParams.<name> is the pipeline's and the component's serving_<name>


def _param(default: Any, description: str, *, pipeline: bool = True) -> Any:
    """A PromoteParams field: its default, the description the Kubeflow UI shows, and whether the pipeline
    exposes it (the component always does)."""
    return field(default=default, metadata={"description": description, "pipeline": pipeline})


@dataclass(frozen=True)
class PromoteParams:
    """The promote step's cluster parameters, as the pipeline passes them: the one declaration of them.

    Empty strings, 0 and -1 mean "the profile's value" (KFP parameters cannot be None). `gpu` is "", "true"
    or "false" and toggles only the GPU request and placement; the profile picks format and resources.
    `canary_percent` > 0 sends that share of traffic to the new revision first, in Knative mode only.
    """

    profile: str = _param(DEFAULT_PROFILE, "The overlay in manifests/overlays whose InferenceService settings the "
                          "other serving_* values start from: gpu, gpu-triton, cpu or kind.")
    namespace: str = _param("shoprank", "Namespace of the InferenceService.")
    gpu: str = _param("", '"true" or "false": request a GPU and GPU node placement or not (the format and '
                      'resources stay the profile\'s); "" keeps the profile\'s choice.')
    gpu_count: int = _param(0, "GPUs per predictor replica; 0 keeps the profile's.")
    gpu_node_label: str = _param("", "key=value (or key, meaning key=true) of the GPU nodes' label for the node "
                                 'selector; "" keeps nvidia.com/gpu.present=true.')
    min_replicas: int = _param(-1, "Minimum predictor replicas (0 scales to zero, Knative only); -1 keeps the "
                               "profile's.")
    max_replicas: int = _param(0, "Maximum predictor replicas; 0 keeps the profile's.")
    scale_metric: str = _param("", "Autoscaling metric: cpu or memory (HPA), concurrency or rps (Knative only); "
                               '"" keeps the profile\'s.')
    scale_target: int = _param(0, "Autoscaling target (a utilisation percentage for cpu and memory); 0 keeps "
                               "the profile's.")
    deployment_mode: str = _param("", 'KServe deployment mode, Standard or Knative; "" means Standard. KServe '
                                  "cannot change the mode of a live InferenceService.")
    canary_percent: int = _param(0, "Knative only: the share of traffic (1..100) the new revision gets, checked "
                                 "by the smoke request, before the full rollout; 0 rolls out at once.")
    ready_timeout_s: int = _param(600, "Seconds to wait for Ready, per rollout phase and for a rollback.")
    smoke: str = _param("ranking", '"ranking": send a v2 ranking request to the new version once it is Ready; '
                        '"none": send nothing.')
    smoke_url: str = _param("", 'Base URL of the smoke request; "" takes it from the InferenceService status.',
                            pipeline=False)
    force_conflicts: bool = _param(False, "Take over fields another field manager owns; without it only the "
                                   "fields `make deploy` set are taken over.", pipeline=False)
    transformer_image: str = _param("", "gpu-triton only: the shoprank serving image that runs the transformer "
                                    "in front of Triton.")


@dataclass(frozen=True)
class ServingParameter:
    """One serving parameter as the pipeline and the promote component declare it."""

    attribute: str  # the PromoteParams field
    name: str  # the pipeline's and the component's parameter: serving_<field>
    type: type
    default: str | int | bool
    description: str
    in_pipeline: bool  # False: the promote component has it, the pipeline does not pass it


def _serving_parameters() -> tuple[ServingParameter, ...]:
    hints = typing.get_type_hints(PromoteParams)
    return tuple(ServingParameter(f.name, PIPELINE_PREFIX + f.name, hints[f.name], f.default,
                                  f.metadata["description"], f.metadata["pipeline"]) for f in fields(PromoteParams))


SERVING_PARAMETERS = _serving_parameters()


def _parse_label(label: str) -> dict[str, str]:
    key, sep, value = label.strip().partition("=")
    if not key or (sep and not value) or "=" in value:
        raise ValueError(f"node selector label {label!r} must be key=value (or just key, meaning key=true)")
    return {key: value or "true"}


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, not {text!r}")


def serving_settings(params: PromoteParams, storage_uri: str, name: str) -> tuple[ServingSettings, bool,
                                                                                  tuple[str, ...]]:
    """ServingSettings from a profile with the parameters that are set on top; also whether to autoscale and
    notes on what was adjusted (recorded in the outcome)."""
    if params.profile not in PROFILES:
        raise ValueError(f"unknown serving profile {params.profile!r}: one of {sorted(PROFILES)}")
    profile = PROFILES[params.profile]
    values: dict[str, Any] = dict(profile.settings, storage_uri=storage_uri, name=name, namespace=params.namespace)
    notes: list[str] = []
    if params.gpu:
        values["use_gpu"] = _parse_bool(params.gpu)
    if params.gpu_count:
        values["gpu_count"] = params.gpu_count
    if params.transformer_image:
        values["transformer_image"] = params.transformer_image
    if params.gpu_node_label:
        values["gpu_node_selector"] = _parse_label(params.gpu_node_label)
    if params.min_replicas >= 0:
        values["min_replicas"] = params.min_replicas
    if params.max_replicas:
        values["max_replicas"] = params.max_replicas
    if params.scale_metric:
        values["scale_metric"] = params.scale_metric
    if params.scale_target:
        values["scale_target"] = params.scale_target
    mode = normalize_deployment_mode(params.deployment_mode) if params.deployment_mode else STANDARD
    values["deployment_mode"] = mode
    if params.canary_percent < 0 or params.canary_percent > 100:
        raise ValueError("canary_percent must be within 0..100")
    if params.canary_percent and mode != KNATIVE:
        # Standard mode has one Deployment and no revisions to split traffic between: roll out directly,
        # behind the same Ready and smoke checks, and say so.
        notes.append(f"canary_percent {params.canary_percent} ignored: {mode} mode cannot split traffic "
                     "between revisions (use deployment_mode Knative); rolled out directly")
    if params.smoke not in SMOKE_MODES:
        raise ValueError(f"smoke must be one of {SMOKE_MODES}, not {params.smoke!r}")
    if params.ready_timeout_s < 1:
        raise ValueError("ready_timeout_s must be >= 1")
    return ServingSettings(**values), profile.autoscaling, tuple(notes)
