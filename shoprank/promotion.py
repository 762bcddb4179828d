"""Decision logic of the promote step: which InferenceService to want, how to get there, when to roll back.

Pure functions over plain dicts (the shapes the Kubernetes API returns as JSON); standard library only, so
the pipeline component, the deploy tooling and the tests share them without a cluster. The API calls that
act on these decisions live elsewhere.

The flow the promote step follows:

1. `desired = build_inference_service(settings)` with `settings.storage_uri` from `versioned_storage_uri`;
2. `plan = plan_promotion(current, desired)`: create it, merge-patch it (`plan.body` is an RFC 7386 merge
   patch, send it as `application/merge-patch+json`), or nothing (a rerun of the same model is a no-op);
3. poll `is_ready(status)` (stop early when `has_failed(status)`), run the smoke test;
4. `decide_after_rollout(ready, smoke_ok, timed_out)`; on `rolled_back`, `rollback_spec(previous, ...)`
   and plan again from the current object to the restored manifest. After a good Knative canary,
   `full_rollout_patch()` moves all traffic to the new revision.
"""

from __future__ import annotations

import copy
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"

DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
AUTOSCALER_CLASS_ANNOTATION = "serving.kserve.io/autoscalerClass"
KNATIVE_CLASS_ANNOTATION = "autoscaling.knative.dev/class"
KNATIVE_HPA_CLASS = "hpa.autoscaling.knative.dev"

STANDARD = "Standard"
KNATIVE = "Knative"
DEPLOYMENT_MODES = (STANDARD, KNATIVE)
# KServe < 0.16 names; KServe itself still accepts and normalises them.
_LEGACY_MODES = {"RawDeployment": STANDARD, "Serverless": KNATIVE}

GPU_RESOURCE = "nvidia.com/gpu"
HTTP_PORT = 8080
# Model formats whose backend is fixed (the shoprank ServingRuntime's --backend flag).
FORMAT_BACKENDS = {
    "shoprank-tflite": "tflite",
    "shoprank-savedmodel": "savedmodel",
    "tensorflow": "savedmodel",
    "onnx": "triton",  # the ONNX export on KServe's Triton runtime, behind the shoprank transformer
}
TRITON_RUNTIME = "kserve-tritonserver"  # KServe's stock ClusterServingRuntime for Triton
TRITON_REPOSITORY = "triton"  # the bundle's Triton model repository folder (shoprank.onnx_export.TRITON_DIR)
MODEL_MOUNT = "/mnt/models"  # where KServe's storage initializer puts a storage URI's files
SCRATCH_VOLUME = "tmp"  # emptyDir at /tmp: the root filesystem is read-only
# Metrics each autoscaler understands: HPA (Standard, or Knative with the HPA class) and Knative's KPA.
HPA_METRICS = ("cpu", "memory")
KPA_METRICS = ("concurrency", "rps")

_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # KServe's InferenceService name rule (DNS-1035)
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# Fields the promote step owns. Only these are compared and patched, so defaults the KServe webhook adds
# and fields other tools own are left alone. canaryTrafficPercent is handled on its own (see plan_promotion).
MANAGED_ANNOTATIONS = (DEPLOYMENT_MODE_ANNOTATION, AUTOSCALER_CLASS_ANNOTATION, KNATIVE_CLASS_ANNOTATION)
MANAGED_PREDICTOR_FIELDS = (
    "serviceAccountName", "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "autoScaling",
    "nodeSelector", "tolerations",
)
MANAGED_MODEL_FIELDS = (
    "modelFormat", "runtime", "storageUri", "args", "resources", "securityContext", "readinessProbe",
    "livenessProbe",
)
# Owned only where the desired object has them (the Triton variant): other profiles leave them to whoever
# set them (an overlay's scratch volume), so that a rerun stays a no-op.
OPTIONAL_PREDICTOR_FIELDS = ("volumes",)
OPTIONAL_MODEL_FIELDS = ("volumeMounts",)
# The transformer (Triton variant) is owned whole: compared whenever the desired or the live object has one.
MANAGED_TRANSFORMER_FIELDS = (
    "serviceAccountName", "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "autoScaling",
    "storageUris", "volumes", "containers",
)
_SERVER_METADATA = (
    "uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
    "deletionGracePeriodSeconds", "managedFields", "selfLink", "ownerReferences", "finalizers",
)
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


class PlanError(ValueError):
    """The current object cannot be moved to the desired one by a patch (needs a human or a delete)."""


def normalize_deployment_mode(mode: str) -> str:
    """`Standard` or `Knative`; the pre-0.16 names RawDeployment/Serverless are mapped to them."""
    mode = _LEGACY_MODES.get(mode, mode)
    if mode not in DEPLOYMENT_MODES:
        raise ValueError(f"deployment mode must be one of {DEPLOYMENT_MODES}, not {mode!r}")
    return mode


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
    runtime: str = "shoprank-ranker"
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
        "storageUri": posixpath.join(s.storage_uri, TRITON_REPOSITORY) if triton else s.storage_uri,
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


def versioned_storage_uri(root: str, model_name: str, version: str | int) -> str:
    """`<root>/<model_name>/<version>` for s3://, gs://, pvc://, file:// roots and local paths."""
    version = str(version)
    for label, part in (("model_name", model_name), ("version", version)):
        if not _SEGMENT_RE.match(part) or part in (".", ".."):
            raise ValueError(f"{label} {part!r} must be one path segment of letters, digits, '.', '_', '-'")
    root = root.strip()
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", root)
    if match is None:  # a local path, absolute or relative
        if not root:
            raise ValueError("storage root is empty")
        return posixpath.join(root.rstrip("/") or "/", model_name, version)
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme in ("s3", "gs", "pvc"):
        rest = rest.strip("/")
        if not rest:
            what = "a PVC name" if scheme == "pvc" else "a bucket"
            raise ValueError(f"{root!r} names no {what}")
        return f"{scheme}://{rest}/{model_name}/{version}"
    if scheme == "file":
        if not rest.startswith("/"):
            raise ValueError(f"{root!r}: a file:// root must be an absolute path")
        return "file://" + posixpath.join(rest.rstrip("/") or "/", model_name, version)
    raise ValueError(f"unsupported storage scheme {scheme!r} in {root!r} (use s3://, gs://, pvc://, a path)")


# --- planning ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What to do to reach the desired InferenceService.

    `body` is the manifest to create (action "create"), an RFC 7386 JSON merge patch (action "patch"; send
    it as application/merge-patch+json), or None (action "noop"). `changes` lists the fields that differ.
    """

    action: Literal["create", "patch", "noop"]
    reason: str
    body: dict[str, Any] | None = None
    changes: tuple[str, ...] = ()


def _norm(value: Any) -> Any:
    """Compare quantities written as numbers and as strings alike (1 == "1")."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _norm(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_norm(v) for v in value]
    return value


def _merge_diff(current: Any, desired: Any) -> Any:
    """The merge patch that turns `current` into `desired` (None deletes a key; lists are replaced)."""
    if isinstance(current, Mapping) and isinstance(desired, Mapping):
        patch: dict[str, Any] = {}
        for key in current.keys() | desired.keys():
            if key not in desired or desired[key] is None:
                if current.get(key) is not None:
                    patch[key] = None
            elif _norm(current.get(key)) != _norm(desired[key]):
                patch[key] = _merge_diff(current.get(key), desired[key])
        return patch
    return copy.deepcopy(desired)


def _current_mode(current: Mapping[str, Any]) -> str | None:
    mode = (current.get("status") or {}).get("deploymentMode") or (
        (current.get("metadata") or {}).get("annotations") or {}).get(DEPLOYMENT_MODE_ANNOTATION)
    if not mode:
        return None
    return _LEGACY_MODES.get(mode, mode)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _owned(always: tuple[str, ...], optional: tuple[str, ...], desired: Mapping[str, Any]) -> tuple[str, ...]:
    return always + tuple(k for k in optional if k in desired)


def _field_patch(where: str, current: Mapping[str, Any], desired: Mapping[str, Any], keys: Iterable[str],
                 changes: list[str]) -> dict[str, Any]:
    """Merge patch of the owned `keys` that differ; appends `where.key` to `changes` for each."""
    patch: dict[str, Any] = {}
    for key in keys:
        if _norm(desired.get(key)) != _norm(current.get(key)):
            changes.append(f"{where}.{key}")
            patch[key] = _merge_diff(current.get(key), desired.get(key))
    return patch


def plan_promotion(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> Plan:
    """Decide between create, patch and noop by comparing the fields the promote step owns.

    A rerun with the same model, format, runtime, resources, scaling and placement is a noop, whatever
    status, defaults or fields of other owners the live object carries. Canary traffic only accompanies a
    real change: it is dropped on create (there is no previous revision) and a canary percentage alone
    never triggers a patch (that would shift traffic back to the previous revision); a leftover canary
    split on the live object with no canary wanted is removed. A change of deployment mode or an object
    being deleted raise PlanError: KServe refuses the first, and the second has to finish first.
    """
    meta = desired.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    where = f"{namespace}/{name}"
    d_predictor = desired["spec"]["predictor"]
    d_model = d_predictor.get("model") or {}
    d_annotations = meta.get("annotations") or {}
    d_canary = d_predictor.get("canaryTrafficPercent")

    if current is None:
        body = copy.deepcopy(dict(desired))
        body["spec"]["predictor"].pop("canaryTrafficPercent", None)
        return Plan("create", f"no InferenceService {where} yet", body)

    c_meta = current.get("metadata") or {}
    if current.get("kind", KIND) != KIND or (c_meta.get("name"), c_meta.get("namespace", namespace)) != (
        name, namespace
    ):
        raise ValueError(f"current object {c_meta.get('namespace')}/{c_meta.get('name')} is not {where}")
    if c_meta.get("deletionTimestamp"):
        raise PlanError(f"InferenceService {where} is being deleted; wait for it to go, then create it")
    desired_mode = d_annotations.get(DEPLOYMENT_MODE_ANNOTATION)
    current_mode = _current_mode(current)
    if desired_mode and current_mode and _LEGACY_MODES.get(desired_mode, desired_mode) != current_mode:
        raise PlanError(f"InferenceService {where} runs in {current_mode} mode and KServe cannot change "
                        f"it to {desired_mode}: delete it first (or keep the mode)")

    c_annotations = c_meta.get("annotations") or {}
    c_predictor = (current.get("spec") or {}).get("predictor") or {}
    c_model = c_predictor.get("model") or {}
    c_canary = c_predictor.get("canaryTrafficPercent")

    changes: list[str] = []
    annotations_patch: dict[str, Any] = {}
    for key in MANAGED_ANNOTATIONS:
        if d_annotations.get(key) != c_annotations.get(key):
            changes.append(f"metadata.annotations[{key}]")
            annotations_patch[key] = d_annotations.get(key)
    predictor_patch = _field_patch("spec.predictor", c_predictor, d_predictor, _owned(
        MANAGED_PREDICTOR_FIELDS, OPTIONAL_PREDICTOR_FIELDS, d_predictor), changes)
    model_patch = _field_patch("spec.predictor.model", c_model, d_model, _owned(
        MANAGED_MODEL_FIELDS, OPTIONAL_MODEL_FIELDS, d_model), changes)
    d_transformer = desired["spec"].get("transformer")
    c_transformer = (current.get("spec") or {}).get("transformer")
    transformer_patch: dict[str, Any] | None = {}
    if d_transformer is None and c_transformer is not None:
        changes.append("spec.transformer")
        transformer_patch = None  # the new spec has no transformer: remove it
    elif d_transformer is not None:
        transformer_patch = _field_patch("spec.transformer", c_transformer or {}, d_transformer,
                                         MANAGED_TRANSFORMER_FIELDS, changes)

    if changes:
        if d_canary != c_canary:
            predictor_patch["canaryTrafficPercent"] = d_canary
    elif c_canary is not None and c_canary < 100 and d_canary is None:
        changes.append("spec.predictor.canaryTrafficPercent")
        predictor_patch["canaryTrafficPercent"] = None

    if not changes:
        return Plan("noop", f"{where} already serves {c_model.get('storageUri')} with the wanted spec")

    if model_patch:
        predictor_patch["model"] = model_patch
    body: dict[str, Any] = {"spec": {"predictor": predictor_patch}}
    if transformer_patch is None or transformer_patch:
        body["spec"]["transformer"] = transformer_patch
    if annotations_patch:
        body["metadata"] = {"annotations": annotations_patch}
    details = []
    for key in ("storageUri", "modelFormat", "runtime"):
        if key in model_patch:
            details.append(f"{key} {_short(c_model.get(key))} -> {_short(d_model.get(key))}")
    reason = f"{where}: changed " + ", ".join(changes)
    if details:
        reason += " (" + "; ".join(details) + ")"
    if "canaryTrafficPercent" in predictor_patch and predictor_patch["canaryTrafficPercent"] is not None:
        reason += f"; canary gets {predictor_patch['canaryTrafficPercent']}% of traffic"
    return Plan("patch", reason, body, tuple(changes))


def full_rollout_patch() -> dict[str, Any]:
    """Merge patch that ends a Knative canary: all traffic to the latest revision."""
    return {"spec": {"predictor": {"canaryTrafficPercent": None}}}


# --- readiness and the verdict -------------------------------------------------------------------------


def _conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c.get("type", ""): c for c in status.get("conditions") or [] if isinstance(c, Mapping)}


def _explain(condition: Mapping[str, Any]) -> str:
    parts = [condition.get("type", "?"), str(condition.get("status", "Unknown"))]
    for key in ("reason", "message"):
        if condition.get(key):
            parts.append(str(condition[key]))
    return ": ".join(parts)


def has_failed(isvc_status: Mapping[str, Any] | None) -> tuple[bool, str]:
    """Whether KServe reports a failure that waiting will not fix (model failed to load, invalid spec)."""
    model_status = (isvc_status or {}).get("modelStatus") or {}
    transition = model_status.get("transitionStatus")
    if transition in ("BlockedByFailedLoad", "InvalidSpec"):
        failure = model_status.get("lastFailureInfo") or {}
        detail = ": ".join(str(failure[k]) for k in ("reason", "message") if failure.get(k))
        return True, f"model {transition}" + (f" ({detail})" if detail else "")
    return False, ""


def is_ready(isvc_status: Mapping[str, Any] | None) -> tuple[bool, str]:
    """Read KServe's status: ready only when the Ready condition is True and the latest model is up.

    Beyond `Ready`, a loaded-but-outdated model (`modelStatus.transitionStatus` other than UpToDate) and,
    in Knative mode, a latest created revision that is not the latest ready one also count as not ready.
    In Standard mode `Ready` stays True on the old pods during a rolling update, so the caller should also
    see the Deployment's rollout finish (or smoke-test the new version explicitly).
    """
    if not isvc_status:
        return False, "no status yet"
    conditions = _conditions(isvc_status)
    stopped = conditions.get("Stopped")
    if stopped and stopped.get("status") == "True":
        return False, "stopped (serving.kserve.io/stop is set)"
    failed, why = has_failed(isvc_status)
    if failed:
        return False, why
    ready = conditions.get("Ready")
    if ready is None:
        return False, "no Ready condition yet"
    if ready.get("status") != "True":
        for ctype in ("PredictorReady", "TransformerReady", "IngressReady", "LatestDeploymentReady",
                      "PredictorConfigurationReady", "RoutesReady"):
            cond = conditions.get(ctype)
            if cond is not None and cond.get("status") != "True":
                return False, _explain(cond)
        return False, _explain(ready)
    latest = conditions.get("LatestDeploymentReady")
    if latest is not None and latest.get("status") != "True":
        return False, _explain(latest)
    transition = ((isvc_status.get("modelStatus") or {}).get("transitionStatus"))
    if transition and transition != "UpToDate":
        return False, f"model transition {transition}"
    for component, spec in (isvc_status.get("components") or {}).items():
        created, ready_rev = spec.get("latestCreatedRevision"), spec.get("latestReadyRevision")
        if created and ready_rev and created != ready_rev:
            return False, f"{component} revision {created} not ready yet (serving {ready_rev})"
    return True, _explain(ready)


@dataclass(frozen=True)
class Outcome:
    """The verdict on a rollout: keep it ("promoted") or restore the previous one ("rolled_back")."""

    status: Literal["promoted", "rolled_back"]
    reason: str

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"


def decide_after_rollout(ready: bool, smoke_ok: bool | None, timed_out: bool, detail: str = "") -> Outcome:
    """Promote only a rollout that became ready in time and passed the smoke test; otherwise roll back.

    `smoke_ok` is None when the smoke test did not run; `detail` (e.g. is_ready's reason) is appended.
    A timeout wins over everything else: the deadline is part of the contract.
    """
    suffix = f": {detail}" if detail else ""
    if timed_out:
        return Outcome("rolled_back", "not ready before the timeout" + suffix)
    if not ready:
        return Outcome("rolled_back", "rollout failed" + suffix)
    if smoke_ok is None:
        return Outcome("rolled_back", "ready, but the smoke test did not run" + suffix)
    if not smoke_ok:
        return Outcome("rolled_back", "smoke test failed" + suffix)
    return Outcome("promoted", "ready and the smoke test passed" + suffix)


@dataclass(frozen=True)
class Rollback:
    """How to undo a promotion: re-apply `manifest` ("restore") or delete the service ("delete")."""

    action: Literal["restore", "delete"]
    name: str
    namespace: str
    reason: str
    manifest: dict[str, Any] | None = None


def rollback_spec(previous: Mapping[str, Any] | None, *, name: str, namespace: str) -> Rollback:
    """The previous InferenceService to re-apply, cleaned of status and server-set metadata.

    A canary percentage of the previous object is dropped: the restored revision takes all traffic.

    Feed `manifest` to `plan_promotion(current, manifest)` to get the patch. With no previous object the
    promotion created the service, and undoing it is a deletion (which needs the `delete` verb; the
    pipeline runner's Role does not grant it, so that case is reported for a human to act on).
    """
    if previous is None:
        return Rollback("delete", name, namespace, f"{namespace}/{name} did not exist before this promotion")
    meta = previous.get("metadata") or {}
    if (meta.get("name"), meta.get("namespace", namespace)) != (name, namespace):
        found = f"{meta.get('namespace')}/{meta.get('name')}"
        raise ValueError(f"previous object {found} is not {namespace}/{name}")
    clean_meta = {k: copy.deepcopy(v) for k, v in meta.items() if k not in _SERVER_METADATA}
    clean_meta["namespace"] = namespace
    annotations = {k: v for k, v in (clean_meta.get("annotations") or {}).items() if k != _LAST_APPLIED}
    if annotations:
        clean_meta["annotations"] = annotations
    else:
        clean_meta.pop("annotations", None)
    manifest = {
        "apiVersion": previous.get("apiVersion", API_VERSION),
        "kind": previous.get("kind", KIND),
        "metadata": clean_meta,
        "spec": copy.deepcopy(dict(previous.get("spec") or {})),
    }
    predictor = manifest["spec"].get("predictor") or {}
    predictor.pop("canaryTrafficPercent", None)  # a restore takes all traffic at once
    storage = (predictor.get("model") or {}).get("storageUri")
    return Rollback("restore", name, namespace, f"restore {namespace}/{name} to {storage}", manifest)
