"""The InferenceService shoprank wants: `ServingSettings` and the manifest built from them.

Why on its own: what the promote step writes must be the same object the overlays in `manifests/` deploy
(tests/deploy compares them), and the builders are pure functions over plain dicts, so the pipeline, the
deploy tooling and the tests share them without a cluster. Which settings a pipeline run asks for is
`shoprank.release.kserve.profiles`; how to move a live object to this one is `shoprank.release.kserve.plan`.
Standard library and `shoprank.layout` only.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from shoprank.layout import TRITON_DIR
from shoprank.release.kserve.names import (
    API_VERSION,
    AUTOSCALER_CLASS_ANNOTATION,
    DEPLOYMENT_MODE_ANNOTATION,
    KIND,
    KNATIVE,
    KNATIVE_CLASS_ANNOTATION,
    KNATIVE_HPA_CLASS,
    SHOPRANK_RUNTIME,
    STANDARD,
    TRITON_RUNTIME,
    normalize_deployment_mode,
)

__all__ = [
    "FORMAT_BACKENDS",
    "GPU_RESOURCE",
    "HPA_METRICS",
    "HTTP_PORT",
    "KPA_METRICS",
    "MODEL_MOUNT",
    "SCRATCH_VOLUME",
    "Resources",
    "ServingSettings",
    "Toleration",
    "build_inference_service",
    "build_transformer",
    "desired_inference_service",
]

GPU_RESOURCE = "nvidia.com/gpu"
HTTP_PORT = 8080
# Model formats whose backend is fixed (the shoprank ServingRuntime's --backend flag).
FORMAT_BACKENDS = {
    "shoprank-tflite": "tflite",
    "shoprank-savedmodel": "savedmodel",
    "tensorflow": "savedmodel",
    "onnx": "triton",  # the ONNX export on KServe's Triton runtime, behind the shoprank transformer
}
MODEL_MOUNT = "/mnt/models"  # where KServe's storage initializer puts a storage URI's files
SCRATCH_VOLUME = "tmp"  # emptyDir at /tmp: the root filesystem is read-only
# Metrics each autoscaler understands: HPA (Standard, or Knative with the HPA class) and Knative's KPA.
HPA_METRICS = ("cpu", "memory")
KPA_METRICS = ("concurrency", "rps")

_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # KServe's InferenceService name rule (DNS-1035)
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|K|M|G|T)?$")

# --- settings -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Toleration:
    """A pod toleration; the default tolerates the NVIDIA device plugin's GPU taint."""

    key: str = GPU_RESOURCE
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: str | None = "NoSchedule"

    def __post_init__(self) -> None:
        if self.operator not in ("Exists", "Equal"):
            raise ValueError(f"toleration operator must be Exists or Equal, not {self.operator!r}")
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("a toleration with operator Exists takes no value")

    def to_k8s(self) -> dict[str, str]:
        out = {"key": self.key, "operator": self.operator}
        if self.value is not None:
            out["value"] = self.value
        if self.effect is not None:
            out["effect"] = self.effect
        return out


@dataclass(frozen=True)
class Resources:
    """CPU/memory/ephemeral-storage requests and limits of a serving container (Kubernetes quantity strings).

    Ephemeral storage bounds what a replica may write to its node's disk (the bundle the storage initializer
    downloads, /tmp, logs): without a limit one replica can fill the node and get others evicted; the request
    lets the scheduler count it."""

    cpu_request: str = "500m"
    memory_request: str = "1Gi"
    cpu_limit: str = "2"
    memory_limit: str = "2Gi"
    ephemeral_request: str = "256Mi"
    ephemeral_limit: str = "1Gi"

    def to_k8s(self, gpu_count: int = 0) -> dict[str, dict[str, str]]:
        requests = {"cpu": str(self.cpu_request), "memory": str(self.memory_request),
                    "ephemeral-storage": str(self.ephemeral_request)}
        limits = {"cpu": str(self.cpu_limit), "memory": str(self.memory_limit),
                  "ephemeral-storage": str(self.ephemeral_limit)}
        if gpu_count:
            requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(gpu_count)
        return {"requests": requests, "limits": limits}


@dataclass(frozen=True)
class ServingSettings:
    """Everything the promote step needs to know to write the InferenceService.

    The defaults reproduce `manifests/overlays/cpu`. `gpu_node_selector` and `tolerations` apply only when
    `use_gpu` is set. `canary_traffic_percent` needs `deployment_mode="Knative"`: only Knative keeps the
    previous revision to split traffic with.
    """

    storage_uri: str
    name: str = "shoprank-ranker"
    namespace: str = "shoprank"
    model_format: str = "shoprank-tflite"
    backend: str = "tflite"
    runtime: str = SHOPRANK_RUNTIME
    service_account: str | None = "shoprank-model-reader"
    use_gpu: bool = False
    gpu_count: int = 1
    gpu_node_selector: Mapping[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    tolerations: tuple[Toleration, ...] = (Toleration(),)
    min_replicas: int = 2  # production overlays start at 2 (with a PodDisruptionBudget): no single replica
    max_replicas: int = 8
    scale_metric: str = "cpu"
    scale_target: int = 70
    deployment_mode: str = STANDARD
    canary_traffic_percent: int | None = None
    resources: Resources = field(default_factory=Resources)
    # The Triton variant (model_format "onnx"): the shoprank transformer in front of Triton does the ranking
    # requests (catalogue look-up + the pipeline's transform) and micro-batching; it reads the bundle's
    # transform/ through its own storage URI.
    transformer_image: str = ""
    transformer_resources: Resources = field(default_factory=lambda: Resources("500m", "512Mi", "1", "1Gi"))
    transformer_max_replicas: int = 4
    transformer_scale_target: int = 70  # CPU utilisation %: the transformer's work is all on the CPU
    # The most memory the container that runs the shoprank server may be given (the nodes' size, less what else
    # runs there): promotion sizes the container's memory from the bundle (shoprank.release.kserve.sizing) and
    # refuses a bundle that needs more.
    max_memory: str = "8Gi"

    def __post_init__(self) -> None:
        object.__setattr__(self, "deployment_mode", normalize_deployment_mode(self.deployment_mode))
        object.__setattr__(self, "tolerations", tuple(self.tolerations))
        object.__setattr__(self, "gpu_node_selector", dict(self.gpu_node_selector))
        problems = list(self._problems())
        if problems:
            raise ValueError("invalid serving settings: " + "; ".join(problems))

    def _problems(self) -> Iterable[str]:
        if not _NAME_RE.match(self.name) or len(self.name) > 63:
            yield f"name {self.name!r} must be a DNS-1035 label (a-z, 0-9, '-', starting with a letter)"
        if not _DNS_LABEL_RE.match(self.namespace) or len(self.namespace) > 63:
            yield f"namespace {self.namespace!r} is not a DNS label"
        if not self.storage_uri.strip():
            yield "storage_uri is empty"
        expected_backend = FORMAT_BACKENDS.get(self.model_format)
        if expected_backend and self.backend != expected_backend:
            yield f"model format {self.model_format} needs backend {expected_backend}, not {self.backend}"
        if self.backend == "triton":
            if self.runtime != TRITON_RUNTIME:
                yield f"model format {self.model_format} is served by the {TRITON_RUNTIME} runtime, not {self.runtime}"
            if not self.transformer_image.strip():
                yield ("the Triton variant needs transformer_image (the shoprank serving image): Triton answers "
                       "tensor requests only, the transformer turns ranking requests into them")
            if self.transformer_max_replicas < max(1, self.min_replicas):
                yield "transformer_max_replicas must be >= max(1, min_replicas)"
            if not 1 <= self.transformer_scale_target <= 100:
                yield "transformer_scale_target is a CPU utilisation percentage: 1..100"
        elif self.transformer_image:
            yield "transformer_image is used by the Triton variant (model format onnx) only"
        if self.use_gpu and self.gpu_count < 1:
            yield "use_gpu needs gpu_count >= 1"
        knative = self.deployment_mode == KNATIVE
        if self.min_replicas < (0 if knative else 1):
            yield f"min_replicas must be >= {0 if knative else 1} in {self.deployment_mode} mode"
        if self.max_replicas < max(1, self.min_replicas):
            yield "max_replicas must be >= max(1, min_replicas)"
        allowed = HPA_METRICS + KPA_METRICS if knative else HPA_METRICS
        if self.scale_metric not in allowed:
            yield f"scale_metric {self.scale_metric!r} is not one of {allowed} in {self.deployment_mode} mode"
        if knative and self.scale_metric in HPA_METRICS and self.min_replicas < 1:
            yield f"scaling to zero needs a Knative metric {KPA_METRICS}, not {self.scale_metric}"
        if self.scale_metric in HPA_METRICS and not 1 <= self.scale_target <= 100:
            yield f"scale_target is a utilisation percentage for {self.scale_metric}: 1..100"
        if self.scale_target < 1:
            yield "scale_target must be >= 1"
        if not _QUANTITY_RE.match(str(self.max_memory)):
            yield f"max_memory {self.max_memory!r} is not a Kubernetes memory quantity (e.g. 8Gi)"
        if self.canary_traffic_percent is not None:
            if not knative:
                yield (f"canary_traffic_percent needs deployment_mode {KNATIVE}; "
                       f"{self.deployment_mode} mode has no previous revision to split traffic with")
            if not 0 <= self.canary_traffic_percent <= 100:
                yield "canary_traffic_percent must be within 0..100"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ServingSettings:
        """Build from plain data (e.g. a pipeline parameter's JSON); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown serving settings: {unknown}")
        values = dict(data)
        if "tolerations" in values:
            values["tolerations"] = tuple(
                t if isinstance(t, Toleration) else Toleration(**t) for t in values["tolerations"]
            )
        for key in ("resources", "transformer_resources"):
            if isinstance(values.get(key), Mapping):
                values[key] = Resources(**values[key])
        return cls(**values)


# --- the desired InferenceService ---------------------------------------------------------------------


def _security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _probe(path: str, initial_delay: int, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": HTTP_PORT},
        "initialDelaySeconds": initial_delay,
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def _autoscaling(mode: str, metric: str, target: int, annotations: dict[str, str] | None = None
                 ) -> dict[str, Any]:
    """A component's scaling fields: the autoScaling block (HPA, Standard) or Knative's scaleMetric/Target."""
    if mode == STANDARD:
        return {"autoScaling": {"metrics": [{
            "type": "Resource",
            "resource": {"name": metric, "target": {"type": "Utilization", "averageUtilization": target}},
        }]}}
    if metric in HPA_METRICS and annotations is not None:  # Knative's own autoscaler knows concurrency, rps
        annotations[KNATIVE_CLASS_ANNOTATION] = KNATIVE_HPA_CLASS
    return {"scaleMetric": metric, "scaleTarget": target}


def _scratch_volume(size: str) -> dict[str, Any]:
    return {"name": SCRATCH_VOLUME, "emptyDir": {"sizeLimit": size}}


def _scratch_mount() -> dict[str, str]:
    return {"name": SCRATCH_VOLUME, "mountPath": "/tmp"}


def build_transformer(s: ServingSettings) -> dict[str, Any]:
    """The shoprank transformer of the Triton variant: `python -m serving.transformer` reading the bundle
    (its transform/ and catalogue) from the version's storage URI; KServe adds --model_name, --predictor_host
    and --http_port. Same container settings as manifests/overlays/gpu-triton."""
    transformer: dict[str, Any] = {}
    if s.service_account:
        transformer["serviceAccountName"] = s.service_account
    transformer["minReplicas"] = max(1, s.min_replicas)
    transformer["maxReplicas"] = s.transformer_max_replicas
    if s.deployment_mode == STANDARD:  # its own HPA on CPU: the transformer's work is all on the CPU
        transformer.update(_autoscaling(STANDARD, "cpu", s.transformer_scale_target))
    else:  # Knative: one autoscaler class per InferenceService, so the predictor's metric
        transformer.update(_autoscaling(s.deployment_mode, s.scale_metric, s.scale_target))
    transformer["storageUris"] = [{"uri": s.storage_uri, "mountPath": MODEL_MOUNT}]
    transformer["volumes"] = [_scratch_volume("256Mi")]
    transformer["containers"] = [{
        "name": "kserve-container",
        "image": s.transformer_image,
        "command": ["python", "-m", "serving.transformer"],
        "args": ["--protocol=v2", f"--model_dir={MODEL_MOUNT}"],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "ports": [{"name": "http1", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "volumeMounts": [_scratch_mount()],
        "resources": s.transformer_resources.to_k8s(),
        "securityContext": _security_context(),
        "readinessProbe": _probe("/v2/health/ready", 5, 10, 3),
        "livenessProbe": _probe("/v2/health/live", 30, 15, 4),
    }]
    return transformer


def build_inference_service(settings: ServingSettings) -> dict[str, Any]:
    """The InferenceService the promote step wants, as a manifest dict (same shape as the overlays).

    The Triton variant (backend "triton") serves `<storage_uri>/triton` (the bundle's Triton model
    repository) on KServe's Triton runtime and puts the shoprank transformer in front of it."""
    s = settings
    triton = s.backend == "triton"
    annotations = {DEPLOYMENT_MODE_ANNOTATION: s.deployment_mode}
    predictor: dict[str, Any] = {}
    if s.service_account:
        predictor["serviceAccountName"] = s.service_account
    predictor["minReplicas"] = s.min_replicas
    predictor["maxReplicas"] = s.max_replicas
    if s.deployment_mode == STANDARD:
        annotations[AUTOSCALER_CLASS_ANNOTATION] = "hpa"
    predictor.update(_autoscaling(s.deployment_mode, s.scale_metric, s.scale_target, annotations))
    if s.deployment_mode != STANDARD and s.canary_traffic_percent is not None:
        predictor["canaryTrafficPercent"] = s.canary_traffic_percent
    if s.use_gpu:
        if s.gpu_node_selector:
            predictor["nodeSelector"] = dict(s.gpu_node_selector)
        if s.tolerations:
            predictor["tolerations"] = [t.to_k8s() for t in s.tolerations]
    model: dict[str, Any] = {
        "modelFormat": {"name": s.model_format, "version": "1"} if triton else {"name": s.model_format},
        "runtime": s.runtime,
        "storageUri": posixpath.join(s.storage_uri, TRITON_DIR) if triton else s.storage_uri,
    }
    if not triton:  # Triton's arguments come from its ServingRuntime
        model["args"] = [f"--backend={s.backend}"]
    if triton:  # TensorRT engine cache (config.pbtxt's trt_engine_cache_path) on a writable scratch volume
        predictor["volumes"] = [_scratch_volume("1Gi")]
        model["volumeMounts"] = [_scratch_mount()]
    predictor["model"] = model
    model.update({
        "resources": s.resources.to_k8s(s.gpu_count if s.use_gpu else 0),
        "securityContext": _security_context(),
        # GPU replicas load CUDA and warm up the graph first: give them longer.
        "readinessProbe": _probe("/v2/health/ready", 10 if s.use_gpu else 5, 10, 6 if s.use_gpu else 3),
        "livenessProbe": _probe("/v2/health/live", 60 if s.use_gpu else 30, 15, 4),
    })
    spec: dict[str, Any] = {"predictor": predictor}
    if triton:
        spec["transformer"] = build_transformer(s)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": s.name,
            "namespace": s.namespace,
            "annotations": annotations,
            "labels": {"app.kubernetes.io/name": s.name, "app.kubernetes.io/part-of": "shoprank"},
        },
        "spec": spec,
    }


def desired_inference_service(settings: ServingSettings, *, autoscaling: bool = True) -> dict[str, Any]:
    """`build_inference_service`, without an autoscaler where the profile has none (the kind overlay)."""
    manifest = build_inference_service(settings)
    if not autoscaling and settings.deployment_mode == STANDARD:
        manifest["metadata"]["annotations"][AUTOSCALER_CLASS_ANNOTATION] = "none"
        manifest["spec"]["predictor"].pop("autoScaling", None)
    return manifest
