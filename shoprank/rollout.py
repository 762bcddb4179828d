"""Cluster promotion: publish the blessed bundle to versioned storage, then roll the InferenceService forward
with server-side apply, check it, and roll it back when it does not come up.

Layers, so that the decisions are plain functions and the Kubernetes calls are few and explicit:

- pure decisions: `serving_settings` (pipeline parameters on top of an overlay profile), `apply_body` (the
  server-side-apply configuration: only the fields the promote step owns), `plan_rollout` (phases to apply and
  what to apply to undo them, on top of `shoprank.promotion.plan_promotion`), `resolve_conflicts` (when to
  force), `smoke_url`, `deployment_rolled_out`, `build_record`;
- waiting: `wait_until_ready` polls a reader callable with an injectable clock;
- the API: `KServeApi` (get, server-side apply, read the predictor Deployment) with the kubernetes client;
- `run_rollout` drives a plan through the API; `promote_to_kserve` is the whole step for the component.

Unit tests (tests/test_rollout.py) cover the decisions, the waiting logic and the sequencing of `run_rollout`
with a recording stand-in that returns scripted objects. That stand-in does not emulate the API server: how
the API server treats these requests (apply semantics, field ownership and conflicts, status, RBAC) is
tested against a real kube-apiserver with KServe's CRDs in tests/cluster (`make test-cluster`).

Server-side apply: every write is an apply by the field manager `shoprank-promote` of `apply_body(...)`, so a
rerun applies the same configuration (no change, no new revision), fields owned by other managers (a human's
annotation, a transformer someone added) are left alone, and fields the step stops setting are removed only
if nobody else owns them. Conflicts are not forced by default: only fields owned by the `make deploy`
manager (`shoprank-deploy`, which creates the InferenceService with a placeholder storageUri for promotion
to replace) are taken over; a conflict with anyone else fails the step and names the fields and managers,
unless `force_conflicts` is set.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from shoprank import model_store
from shoprank.bundle import publish_bundle
from shoprank.promotion import (
    API_VERSION,
    AUTOSCALER_CLASS_ANNOTATION,
    DEPLOYMENT_MODE_ANNOTATION,
    KIND,
    KNATIVE,
    MANAGED_ANNOTATIONS,
    MANAGED_MODEL_FIELDS,
    MANAGED_PREDICTOR_FIELDS,
    MANAGED_TRANSFORMER_FIELDS,
    OPTIONAL_MODEL_FIELDS,
    OPTIONAL_PREDICTOR_FIELDS,
    STANDARD,
    TRITON_RUNTIME,
    PlanError,
    Resources,
    ServingSettings,
    build_inference_service,
    decide_after_rollout,
    has_failed,
    is_ready,
    normalize_deployment_mode,
    plan_promotion,
    rollback_spec,
)

FIELD_MANAGER = "shoprank-promote"
DEPLOY_FIELD_MANAGER = "shoprank-deploy"  # `make deploy` applies the overlays with this manager
GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
TAG_ROUTING_ANNOTATION = "serving.kserve.io/enable-tag-routing"
SOURCE_URI_ANNOTATION = "internal.serving.kserve.io/storage-initializer-sourceuri"
MANAGED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/part-of")
CANARY_FIELD = "spec.predictor.canaryTrafficPercent"

# Outcomes: promoted (new version serving), unchanged (already serving it), rolled_back (the rollout failed and
# the previous spec was re-applied), failed (refused, or failed with nothing to restore: a human must act).
OUTCOMES = ("promoted", "unchanged", "rolled_back", "failed")


# --- settings: overlay profiles and pipeline parameters -------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """What `manifests/overlays/<name>` deploys, as ServingSettings values (tests compare them)."""

    settings: Mapping[str, Any]
    autoscaling: bool = True  # False: no HPA (autoscalerClass none), as the kind overlay


PROFILES: dict[str, Profile] = {
    "gpu": Profile({"model_format": "shoprank-savedmodel", "backend": "savedmodel", "use_gpu": True,
                    "gpu_count": 1, "min_replicas": 2, "max_replicas": 4, "scale_metric": "cpu",
                    "scale_target": 60, "resources": Resources("2", "4Gi", "4", "8Gi")}),
    "cpu": Profile({"model_format": "shoprank-tflite", "backend": "tflite", "use_gpu": False,
                    "min_replicas": 2, "max_replicas": 8, "scale_metric": "cpu", "scale_target": 70,
                    "resources": Resources("500m", "1Gi", "2", "2Gi")}),
    # The ONNX export on KServe's Triton runtime (onnxruntime + TensorRT) behind the shoprank transformer;
    # manifests/overlays/gpu-triton. The transformer image is a parameter (serving_transformer_image).
    "gpu-triton": Profile({"model_format": "onnx", "backend": "triton", "runtime": TRITON_RUNTIME, "use_gpu": True,
                           "gpu_count": 1, "min_replicas": 2, "max_replicas": 4, "scale_metric": "cpu",
                           "scale_target": 60, "resources": Resources("2", "4Gi", "4", "8Gi")}),
    "kind": Profile({"model_format": "shoprank-tflite", "backend": "tflite", "use_gpu": False,
                     "min_replicas": 1, "max_replicas": 1, "scale_metric": "cpu", "scale_target": 70,
                     "resources": Resources("100m", "256Mi", "500m", "512Mi")}, autoscaling=False),
}
DEFAULT_PROFILE = "gpu"  # the default overlay of `make deploy`
SMOKE_MODES = ("ranking", "none")


@dataclass(frozen=True)
class PromoteParams:
    """The promote step's cluster parameters, as the pipeline passes them.

    Empty strings, 0 and -1 mean "the profile's value" (KFP parameters cannot be None). `gpu` is "", "true"
    or "false" and toggles only the GPU request and placement; the profile picks format and resources.
    `canary_percent` > 0 sends that share of traffic to the new revision first, in Knative mode only.
    """

    profile: str = DEFAULT_PROFILE
    namespace: str = "shoprank"
    gpu: str = ""
    gpu_count: int = 0
    gpu_node_label: str = ""
    min_replicas: int = -1
    max_replicas: int = 0
    scale_metric: str = ""
    scale_target: int = 0
    deployment_mode: str = ""
    canary_percent: int = 0
    ready_timeout_s: int = 600
    smoke: str = "ranking"
    smoke_url: str = ""
    force_conflicts: bool = False
    transformer_image: str = ""  # gpu-triton: the shoprank serving image that runs the transformer


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


def desired_inference_service(settings: ServingSettings, *, autoscaling: bool = True) -> dict[str, Any]:
    """`build_inference_service`, without an autoscaler where the profile has none (the kind overlay)."""
    manifest = build_inference_service(settings)
    if not autoscaling and settings.deployment_mode == STANDARD:
        manifest["metadata"]["annotations"][AUTOSCALER_CLASS_ANNOTATION] = "none"
        manifest["spec"]["predictor"].pop("autoScaling", None)
    return manifest


# --- what to apply ---------------------------------------------------------------------------------------


def _mode_of(manifest: Mapping[str, Any]) -> str | None:
    mode = ((manifest.get("metadata") or {}).get("annotations") or {}).get(DEPLOYMENT_MODE_ANNOTATION)
    return normalize_deployment_mode(mode) if mode else None


def apply_body(manifest: Mapping[str, Any], *, canary_percent: int | None = None) -> dict[str, Any]:
    """The server-side-apply configuration for an InferenceService manifest: only the fields the promote
    step owns (promotion.MANAGED_*, two labels), plus `canaryTrafficPercent` when a canary step wants it.

    Everything else on the live object belongs to other managers and is neither sent nor touched. In Knative
    mode tag routing is switched on so the new revision has its own `latest-` URL for the smoke request.
    """
    meta = manifest.get("metadata") or {}
    predictor = ((manifest.get("spec") or {}).get("predictor")) or {}
    model = predictor.get("model") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k in MANAGED_ANNOTATIONS}
    if _mode_of(manifest) == KNATIVE:
        annotations[TAG_ROUTING_ANNOTATION] = "true"
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k in MANAGED_LABELS}
    body_meta: dict[str, Any] = {"name": meta["name"], "namespace": meta["namespace"]}
    if labels:
        body_meta["labels"] = labels
    if annotations:
        body_meta["annotations"] = annotations
    body_predictor: dict[str, Any] = {k: predictor[k] for k in MANAGED_PREDICTOR_FIELDS + OPTIONAL_PREDICTOR_FIELDS
                                      if k in predictor}
    if canary_percent is not None:
        body_predictor["canaryTrafficPercent"] = canary_percent
    body_predictor["model"] = {k: model[k] for k in MANAGED_MODEL_FIELDS + OPTIONAL_MODEL_FIELDS if k in model}
    spec: dict[str, Any] = {"predictor": body_predictor}
    transformer = (manifest.get("spec") or {}).get("transformer")
    if transformer:  # left out, a transformer this manager applied before is removed by the apply
        spec["transformer"] = {k: transformer[k] for k in MANAGED_TRANSFORMER_FIELDS if k in transformer}
    return {"apiVersion": manifest.get("apiVersion", API_VERSION), "kind": manifest.get("kind", KIND),
            "metadata": body_meta, "spec": spec}


@dataclass(frozen=True)
class Phase:
    """One apply (if any), then wait for Ready; `smoke` says whether to smoke-test after it and where to send it
    ("latest": the new revision's own URL, Knative canary; "service": the service's address)."""

    name: Literal["rollout", "canary", "full", "verify"]
    body: dict[str, Any] | None  # None: apply nothing, only check (a rerun of what is already there)
    expects_new_revision: bool
    smoke: bool
    target: Literal["latest", "service"] = "service"


@dataclass(frozen=True)
class RolloutPlan:
    """Everything `run_rollout` will do, decided before the first write.

    `rollback` holds the apply bodies that undo the phases, in order (empty when there is nothing to restore:
    the promotion created the service); `rollback_note` says why or what.
    """

    action: Literal["create", "patch", "noop"]
    reason: str
    changes: tuple[str, ...]
    phases: tuple[Phase, ...]
    rollback: tuple[dict[str, Any], ...]
    rollback_note: str
    canary_percent: int | None


def plan_rollout(current: Mapping[str, Any] | None, desired: Mapping[str, Any], *,
                 canary_percent: int | None = None) -> RolloutPlan:
    """Phases and rollback for moving `current` (the live object, or None) to `desired`.

    - nothing to change (a rerun of the same model and settings): apply nothing, only "verify" that the
      service is Ready and answers (a rerun after an interrupted rollout must not report success blindly);
    - create: one phase, no canary (there is no previous revision);
    - patch in Knative mode with a canary percentage: "canary" (new revision takes that share; smoke its own
      URL), then "full" (all traffic; wait for Ready);
    - any other patch: one "rollout" phase, smoke-tested on the service address.

    Rolling back re-applies the previous object's values of the owned fields (after a canary first sends all
    traffic back to the previous revision with canaryTrafficPercent 0). `desired` must not carry a canary
    percentage itself; pass it here. Raises promotion.PlanError when KServe cannot move there by an apply.
    """
    desired = json.loads(json.dumps(desired))  # a private copy
    desired["spec"]["predictor"].pop("canaryTrafficPercent", None)
    plan = plan_promotion(current, desired)
    meta = desired["metadata"]
    if plan.action == "noop":
        verify = Phase("verify", None, expects_new_revision=False, smoke=True)
        return RolloutPlan("noop", plan.reason, (), (verify,), (),
                           "nothing was applied, so there is nothing to roll back", None)
    full_body = apply_body(desired)
    if current is None:
        note = (f"nothing to restore: this promotion creates {meta['namespace']}/{meta['name']}. The pipeline "
                "runner's Role has no delete verb, so a failed first promotion leaves it in place (it served "
                f"nothing before); remove it with `kubectl -n {meta['namespace']} delete inferenceservice "
                f"{meta['name']}` if unwanted")
        phase = Phase("rollout", full_body, expects_new_revision=True, smoke=True)
        return RolloutPlan("create", plan.reason, plan.changes, (phase,), (), note, None)
    restore = rollback_spec(current, name=meta["name"], namespace=meta["namespace"])
    assert restore.manifest is not None  # current is not None, so this is a restore
    restore_body = apply_body(restore.manifest)
    new_revision = any(change != CANARY_FIELD for change in plan.changes)
    knative = _mode_of(desired) == KNATIVE
    if knative and canary_percent and new_revision:
        phases = (
            Phase("canary", apply_body(desired, canary_percent=canary_percent), expects_new_revision=True,
                  smoke=True, target="latest"),
            Phase("full", full_body, expects_new_revision=False, smoke=False),
        )
        back = (apply_body(desired, canary_percent=0), restore_body)
        note = f"send all traffic back to the previous revision, then {restore.reason}"
        return RolloutPlan("patch", plan.reason, plan.changes, phases, back, note, canary_percent)
    phase = Phase("rollout", full_body, expects_new_revision=new_revision, smoke=True)
    return RolloutPlan("patch", plan.reason, plan.changes, (phase,), (restore_body,), restore.reason, None)


# --- conflicts ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conflict:
    manager: str
    field: str


_CONFLICT_RE = re.compile(r'conflict with "([^"]+)"')


def parse_conflicts(status_body: str | bytes | Mapping[str, Any] | None) -> list[Conflict]:
    """The field-manager conflicts of a 409 answer to an apply (a metav1.Status)."""
    if status_body is None:
        return []
    if isinstance(status_body, str | bytes):
        try:
            status_body = json.loads(status_body)
        except ValueError:
            return []
    causes = ((status_body or {}).get("details") or {}).get("causes") or []
    out = []
    for cause in causes:
        if cause.get("reason") != "FieldManagerConflict":
            continue
        match = _CONFLICT_RE.search(cause.get("message", ""))
        out.append(Conflict(match.group(1) if match else "?", cause.get("field", "?")))
    return out


def resolve_conflicts(conflicts: Iterable[Conflict], *, take_over_from: Iterable[str] = (DEPLOY_FIELD_MANAGER,),
                      force_all: bool = False) -> tuple[bool, str]:
    """Whether to re-apply with force, and why (or why not).

    Forcing is right only for fields the promote step is meant to own and someone set before it: the
    InferenceService `make deploy` creates (a placeholder storageUri, the overlay's settings). Anyone else's
    values are a concurrent edit and are not overwritten unless `force_all` says so.
    """
    conflicts = list(conflicts)
    if not conflicts:
        return False, "no field-manager conflict reported"
    listing = ", ".join(sorted(f"{c.field} (owned by {c.manager})" for c in conflicts))
    managers = {c.manager for c in conflicts}
    if force_all:
        return True, f"force_conflicts is set: taking over {listing}"
    allowed = set(take_over_from)
    if managers <= allowed:
        return True, f"taking over from {', '.join(sorted(managers))} (the deploy-time manifest): {listing}"
    return False, (f"refusing to overwrite fields another manager owns: {listing}. Resolve it with them, or "
                   "rerun with force_conflicts to take the fields over")


# --- readiness ---------------------------------------------------------------------------------------------


def _predictor_status(isvc: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (((isvc or {}).get("status") or {}).get("components") or {}).get("predictor") or {}


def latest_created_revision(isvc: Mapping[str, Any] | None) -> str | None:
    return _predictor_status(isvc).get("latestCreatedRevision")


def deployment_rolled_out(deployment: Mapping[str, Any], storage_uri: str | None = None) -> tuple[bool, str]:
    """Whether a predictor Deployment (Standard mode) finished rolling out the wanted model, as `kubectl rollout
    status` decides, plus: its pod template must already carry `storage_uri` (KServe writes it to an
    annotation), since right after an apply the Deployment may not have been updated yet."""
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    template_meta = ((spec.get("template") or {}).get("metadata")) or {}
    source = (template_meta.get("annotations") or {}).get(SOURCE_URI_ANNOTATION)
    if storage_uri and source is not None and source != storage_uri:
        return False, f"predictor Deployment still runs {source}"
    generation = (deployment.get("metadata") or {}).get("generation", 0)
    if status.get("observedGeneration", 0) < generation:
        return False, "predictor Deployment update not observed yet"
    wanted = spec.get("replicas", 1)
    updated, replicas = status.get("updatedReplicas", 0), status.get("replicas", 0)
    available = status.get("availableReplicas", 0)
    if updated < wanted:
        return False, f"{updated} of {wanted} replicas updated"
    if replicas > updated:
        return False, f"{replicas - updated} old replicas pending termination"
    if available < updated:
        return False, f"{available} of {updated} updated replicas available"
    return True, f"{updated} replicas rolled out"


@dataclass(frozen=True)
class ReadyResult:
    ready: bool
    timed_out: bool
    detail: str
    seconds: float
    isvc: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()


_URI_RE = re.compile(r"[a-z][a-z0-9+.-]*://[^\s\[\]\"',()]+")


def failure_of_another_version(detail: str, storage_uri: str | None) -> bool:
    """Whether KServe's failure report is about pods of another version than `storage_uri`.

    KServe reports the last failed model load of the InferenceService's pods. In Standard mode the pods being
    replaced keep failing while the new ones start: after `make deploy`, whose placeholder storageUri holds no
    model, every first promotion would read that failure and give up at once (found on the local cluster's real
    node). The storage initializer's log in the report names the URI it failed on: a report naming URIs but
    not this one is the other pods' (waiting goes on, to the new pods' readiness or the timeout)."""
    if not storage_uri:
        return False
    uris = _URI_RE.findall(detail)
    return bool(uris) and not any(u.rstrip("/.") == storage_uri.rstrip("/") for u in uris)


class DeploymentUnreadable(Exception):
    """The predictor Deployment cannot be read (no RBAC, or it does not exist): rely on other evidence."""


def wait_until_ready(read: Callable[[], dict[str, Any] | None], *, timeout_s: float, poll_s: float = 5.0,
                     previous_revision: str | None = None, expects_new_revision: bool = False,
                     read_deployment: Callable[[], dict[str, Any]] | None = None, storage_uri: str | None = None,
                     clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep) -> ReadyResult:
    """Poll until the InferenceService is Ready for this change, a terminal failure shows, or the timeout.

    Ready means `promotion.is_ready` and, where the status can tell stale from fresh: in Knative mode a new
    revision must have been created when one is expected; in Standard mode, when `read_deployment` can read the
    predictor Deployment, it must have rolled out `storage_uri` (Ready stays True on the old pods during a
    rolling update). If the Deployment cannot be read (the narrow Role does not grant it), the smoke request
    is what tells the new version from the old one; that is noted.
    """
    start = clock()
    notes: list[str] = []
    detail, isvc = "not read yet", None
    deployment_readable = read_deployment is not None
    while True:
        isvc = read()
        if isvc is None:
            detail = "InferenceService not found"
        else:
            status = isvc.get("status") or {}
            failed, why = has_failed(status)
            if failed and failure_of_another_version(why, storage_uri):
                note = "a failed model load of the pods being replaced is reported; waiting for the new pods"
                if note not in notes:
                    notes.append(note)
                status = {k: v for k, v in status.items() if k != "modelStatus"}
            elif failed:
                return ReadyResult(False, False, why, clock() - start, isvc, tuple(notes))
            ok, detail = is_ready(status)
            if ok and expects_new_revision and previous_revision and \
                    latest_created_revision(isvc) == previous_revision:
                ok, detail = False, f"new revision not created yet (latest is {previous_revision})"
            if ok and deployment_readable and status.get("deploymentMode", STANDARD) in (STANDARD,
                                                                                        "RawDeployment"):
                try:
                    ok, detail = deployment_rolled_out(read_deployment(), storage_uri)  # type: ignore[misc]
                except DeploymentUnreadable as exc:
                    deployment_readable = False
                    notes.append(f"predictor Deployment not readable ({exc}): Ready may reflect the old pods "
                                 "until the rolling update ends; the smoke request checks the new version")
            if ok:
                return ReadyResult(True, False, detail, clock() - start, isvc, tuple(notes))
        elapsed = clock() - start
        if elapsed >= timeout_s:
            return ReadyResult(False, True, detail, elapsed, isvc, tuple(notes))
        sleep(min(poll_s, max(0.0, timeout_s - elapsed)))


# --- smoke request -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmokeContext:
    """What a smoke check gets: where to send it (None when the status has no URL), the served model's name,
    the version that should answer, and how long it may keep retrying."""

    url: str | None
    model_name: str
    version: str
    timeout_s: float
    phase: str


@dataclass(frozen=True)
class SmokeResult:
    ok: bool
    detail: str


SmokeCheck = Callable[[SmokeContext], SmokeResult]
_BUNDLE_VERSION_RE = re.compile(r"^v[0-9a-f]{12}$")  # shoprank.bundle.bundle_version
SMOKE_CANDIDATES = ("i0000001", "i0000002", "i0000003")


def smoke_url(isvc: Mapping[str, Any] | None, target: Literal["latest", "service"]) -> str | None:
    """Where the smoke request goes: the new revision's tagged URL for a Knative canary (tag routing), else the
    cluster-local address (reachable from a pipeline pod), else the external URL."""
    status = (isvc or {}).get("status") or {}
    predictor = _predictor_status(isvc)
    if target == "latest":
        for entry in predictor.get("traffic") or []:
            if entry.get("tag") == "latest" and entry.get("url"):
                return entry["url"]
    candidates = [((status.get("address") or {}).get("url")), status.get("url"),
                  ((predictor.get("address") or {}).get("url")), predictor.get("url")]
    return next((c for c in candidates if c), None)


def ranking_request(candidates: Iterable[str] = SMOKE_CANDIDATES) -> dict[str, Any]:
    """A v2 ranking request (the shoprank server's BYTES interface); unknown item ids are scored too."""
    items = list(candidates)
    return {"inputs": [
        {"name": "query", "datatype": "BYTES", "shape": [1], "data": ["running shoes"]},
        {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["shoprank-smoke-test"]},
        {"name": "history", "datatype": "BYTES", "shape": [1], "data": [items[0]]},
        {"name": "candidates", "datatype": "BYTES", "shape": [len(items)], "data": items},
    ]}


def check_ranking_response(response: Mapping[str, Any], candidates: Iterable[str] = SMOKE_CANDIDATES) -> str | None:
    """None when the v2 response is a ranking of the candidates with finite scores; else what is wrong."""
    items = list(candidates)
    outputs = {o.get("name"): o for o in response.get("outputs") or []}
    for name in ("scores", "ranking"):
        if name not in outputs:
            return f"response has no '{name}' output (outputs: {sorted(outputs)})"
    scores, ranking = outputs["scores"].get("data") or [], outputs["ranking"].get("data") or []
    if len(scores) != len(items) or not all(isinstance(s, int | float) and math.isfinite(s) for s in scores):
        return f"'scores' should be {len(items)} finite numbers, got {scores!r:.200}"
    if sorted(ranking) != sorted(items):
        return f"'ranking' should be a permutation of the candidates, got {ranking!r:.200}"
    return None


def served_versions(metadata: Mapping[str, Any]) -> list[str]:
    """Bundle versions a v2 model-metadata answer reports (`versions`), if it reports shoprank versions."""
    return [v for v in metadata.get("versions") or [] if isinstance(v, str) and _BUNDLE_VERSION_RE.match(v)]


def _http_json(url: str, payload: Mapping[str, Any] | None, timeout: float) -> dict[str, Any]:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (URL from the cluster)
        return json.loads(response.read())


def ranking_smoke(ctx: SmokeContext, *, clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep, request_timeout_s: float = 10.0) -> SmokeResult:
    """Send a v2 ranking request until it is answered correctly by the new version, or the time is up.

    When the model's metadata (`GET /v2/models/NAME`) reports shoprank bundle versions, the answer must come
    from `ctx.version`; an old version answering means old pods still serve (Standard mode mid-rollout), so
    it retries. Errors are retried too: the first requests after Ready may meet a cold model.
    """
    if not ctx.url:
        return SmokeResult(False, "no URL for the smoke request in the InferenceService status (set smoke_url)")
    base = ctx.url.rstrip("/") + f"/v2/models/{ctx.model_name}"
    deadline, last = clock() + ctx.timeout_s, "no attempt"
    while True:
        try:
            versions = served_versions(_http_json(base, None, request_timeout_s))
            if versions and ctx.version not in versions:
                last = f"answered by version {', '.join(versions)}, waiting for {ctx.version}"
            else:
                problem = check_ranking_response(_http_json(base + "/infer", ranking_request(), request_timeout_s))
                if problem is None:
                    return SmokeResult(True, f"v2 ranking request to {base}/infer answered correctly")
                return SmokeResult(False, problem)  # a wrong answer is not transient
        except urllib.error.HTTPError as exc:
            body = exc.read()[:300].decode(errors="replace")
            last = f"HTTP {exc.code} from {exc.url}: {body}"
            if 400 <= exc.code < 500 and exc.code not in (404, 408, 429):
                return SmokeResult(False, last)  # the request is refused: retrying will not help
        except (OSError, ValueError) as exc:  # connection refused, timeouts, DNS, bad JSON
            last = f"{type(exc).__name__}: {exc}"
        if clock() >= deadline:
            return SmokeResult(False, f"no correct answer within {ctx.timeout_s:.0f}s: {last}")
        sleep(min(5.0, max(0.0, deadline - clock())))


def no_smoke(ctx: SmokeContext) -> SmokeResult:
    """`smoke=none`: no request is sent (the cluster tests' simulated nodes run no model server)."""
    return SmokeResult(True, "skipped: smoke=none")


# --- the API -------------------------------------------------------------------------------------------------

ISVC_POD_LABEL = "serving.kserve.io/inferenceservice"  # KServe labels an InferenceService's pods with its name
_WAITING_PROBLEMS = ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
                     "CreateContainerError", "InvalidImageName", "RunContainerError")


def pod_problems(pods: Iterable[Mapping[str, Any]]) -> list[str]:
    """Why pods are not Ready, from their status: unschedulable (with the scheduler's message, e.g.
    "Insufficient nvidia.com/gpu") or a container stuck waiting. One line per distinct problem, with a count."""
    seen: dict[str, int] = {}
    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        status = pod.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                line = f"Pending, {cond.get('reason') or 'not scheduled'}: {cond.get('message') or ''}".strip()
                seen[line] = seen.get(line, 0) + 1
        for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _WAITING_PROBLEMS:
                line = f"container {container.get('name')} {waiting['reason']}: {waiting.get('message') or ''}"
                seen[line.strip()] = seen.get(line.strip(), 0) + 1
    return [f"{count} predictor pod{'s' if count > 1 else ''} {line}" for line, count in seen.items()]


class ApplyConflict(Exception):
    def __init__(self, conflicts: list[Conflict], message: str) -> None:
        super().__init__(message)
        self.conflicts = conflicts


class InferenceServiceApi(Protocol):
    def get(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def apply(self, body: Mapping[str, Any], *, field_manager: str, force: bool = False) -> dict[str, Any]: ...

    def get_predictor_deployment(self, namespace: str, name: str) -> dict[str, Any]: ...


class KServeApi:
    """InferenceService reads and server-side applies through the kubernetes client's ApiClient.

    Written against the real API (`/apis/serving.kserve.io/v1beta1/...` with `application/apply-patch+yaml`,
    `fieldManager`, `force`); the generated CustomObjectsApi cannot send an apply patch in kubernetes 30.1
    (it fixes the content type to merge patch), hence `call_api`. Exercised against kube-apiserver and KServe's
    controller in tests/cluster (`make test-cluster`).
    """

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    @classmethod
    def from_environment(cls, context: str | None = None) -> KServeApi:
        """In a pod: its ServiceAccount; elsewhere: the kubeconfig's (current or named) context."""
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config(context=context)
        return cls(client.ApiClient())

    @staticmethod
    def _path(namespace: str, name: str) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client import CustomObjectsApi
        from kubernetes.client.exceptions import ApiException

        try:
            return CustomObjectsApi(self.api_client).get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def apply(self, body: Mapping[str, Any], *, field_manager: str, force: bool = False) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        meta = body["metadata"]
        query = [("fieldManager", field_manager)]
        if force:
            query.append(("force", "true"))
        try:
            return self.api_client.call_api(
                self._path(meta["namespace"], meta["name"]), "PATCH", query_params=query,
                header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
                body=dict(body), response_type="object", auth_settings=["BearerToken"],
                _return_http_data_only=True)
        except ApiException as exc:
            if exc.status == 409:
                conflicts = parse_conflicts(exc.body)
                raise ApplyConflict(conflicts, f"apply conflicts: {exc.body}") from exc
            raise

    def get_predictor_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        from kubernetes.client import AppsV1Api
        from kubernetes.client.exceptions import ApiException

        try:
            deployment = AppsV1Api(self.api_client).read_namespaced_deployment(f"{name}-predictor", namespace)
        except ApiException as exc:
            if exc.status in (401, 403, 404):
                raise DeploymentUnreadable(f"HTTP {exc.status} {exc.reason}") from exc
            raise
        return self.api_client.sanitize_for_serialization(deployment)


    def predictor_pod_problems(self, namespace: str, name: str) -> list[str]:
        """`pod_problems` of the InferenceService's pods; [] when pods cannot be read (the pipeline runner's
        Role does not grant them: then the timeout alone is reported)."""
        from kubernetes.client import CoreV1Api
        from kubernetes.client.exceptions import ApiException

        try:
            pods = CoreV1Api(self.api_client).list_namespaced_pod(namespace,
                                                                  label_selector=f"{ISVC_POD_LABEL}={name}")
        except ApiException as exc:
            if exc.status in (401, 403):
                return []
            raise
        return pod_problems(self.api_client.sanitize_for_serialization(pods).get("items") or [])


# --- driving a plan ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutConfig:
    ready_timeout_s: float = 600.0  # per wait (each phase, and the rollback)
    poll_s: float = 5.0
    smoke_timeout_s: float = 120.0  # at least this long to retry the smoke request
    field_manager: str = FIELD_MANAGER
    take_over_from: tuple[str, ...] = (DEPLOY_FIELD_MANAGER,)
    force_conflicts: bool = False
    read_deployment: bool = True  # try the predictor Deployment's rollout status (Standard mode)


@dataclass
class _Log:
    events: list[dict[str, Any]] = field(default_factory=list)
    forced: list[str] = field(default_factory=list)

    def add(self, **event: Any) -> None:
        self.events.append(event)
        print(f"[promote] {json.dumps(event, default=str)}", flush=True)


def _apply(api: InferenceServiceApi, body: Mapping[str, Any], config: RolloutConfig, log: _Log) -> None:
    """Apply without force; on a conflict, force only what `resolve_conflicts` allows, else re-raise."""
    try:
        api.apply(body, field_manager=config.field_manager)
    except ApplyConflict as exc:
        force, why = resolve_conflicts(exc.conflicts, take_over_from=config.take_over_from,
                                       force_all=config.force_conflicts)
        log.add(step="conflict", forced=force, detail=why)
        if not force:
            raise ApplyConflict(exc.conflicts, why) from exc
        api.apply(body, field_manager=config.field_manager, force=True)
        log.forced.extend(sorted({c.manager for c in exc.conflicts}))


def _pod_problems(api: InferenceServiceApi, namespace: str, name: str) -> list[str]:
    """The API's `predictor_pod_problems` where it has one (KServeApi); [] otherwise or on any error."""
    reader = getattr(api, "predictor_pod_problems", None)
    if reader is None:
        return []
    try:
        return list(reader(namespace, name))
    except Exception as exc:  # noqa: BLE001 - a diagnostic must never change the outcome
        return [f"predictor pods not inspected ({type(exc).__name__}: {exc})"]


def run_rollout(api: InferenceServiceApi, plan: RolloutPlan, *, namespace: str, name: str, version: str,
                storage_uri: str, smoke: SmokeCheck, config: RolloutConfig | None = None,
                smoke_url_override: str = "", clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Apply the plan's phases; after each, wait for Ready and smoke-test where the phase says; on the first
    failure apply the rollback bodies and wait for the restored service. Returns the rollout part of the
    record (outcome, reason, phases, rollback, forced managers, events)."""
    config = config or RolloutConfig()
    log = _Log()
    result: dict[str, Any] = {"phases": [], "rollback": None, "forced_from": log.forced, "events": log.events}

    def read() -> dict[str, Any] | None:
        return api.get(namespace, name)

    def read_deployment() -> dict[str, Any]:
        return api.get_predictor_deployment(namespace, name)

    verdict: tuple[str, str] | None = None
    last = ""
    isvc = read()
    for phase in plan.phases:
        before = latest_created_revision(isvc)
        if phase.body is not None:
            try:
                _apply(api, phase.body, config, log)
            except ApplyConflict as exc:
                verdict = ("failed" if not result["phases"] else "rollback", f"{phase.name}: {exc}")
                log.add(step="apply", phase=phase.name, ok=False, detail=str(exc))
                break
            log.add(step="apply", phase=phase.name, ok=True)
        waited = wait_until_ready(
            read, timeout_s=config.ready_timeout_s, poll_s=config.poll_s, previous_revision=before,
            expects_new_revision=phase.expects_new_revision,
            read_deployment=read_deployment if config.read_deployment else None, storage_uri=storage_uri,
            clock=clock, sleep=sleep)
        isvc = waited.isvc
        record = {"name": phase.name, "ready": waited.ready, "timed_out": waited.timed_out,
                  "ready_detail": waited.detail, "seconds": round(waited.seconds, 1), "notes": list(waited.notes)}
        smoke_ok: bool | None = True  # a phase without a smoke step counts as passed once Ready
        if waited.ready and phase.smoke:
            url = smoke_url_override or smoke_url(isvc, phase.target)
            remaining = max(0.0, config.ready_timeout_s - waited.seconds)
            outcome = smoke(SmokeContext(url, name, version, max(config.smoke_timeout_s, remaining), phase.name))
            smoke_ok = outcome.ok
            record["smoke"] = {"ok": outcome.ok, "detail": outcome.detail, "url": url}
        result["phases"].append(record)
        detail = record.get("smoke", {}).get("detail") or waited.detail
        if not waited.ready:
            problems = _pod_problems(api, namespace, name)
            if problems:  # say why the pods are not Ready (unschedulable, crash looping...), not only that
                record["pod_problems"] = problems
                detail = f"{detail}; {'; '.join(problems)}"
        decision = decide_after_rollout(waited.ready, smoke_ok, waited.timed_out, detail)
        log.add(step="verdict", phase=phase.name, status=decision.status, reason=decision.reason)
        last = decision.reason
        if not decision.promoted:
            verdict = ("rollback", f"{phase.name}: {decision.reason}")
            break
    result["url"] = smoke_url(isvc, "service")
    if verdict is None:
        outcome = "unchanged" if plan.action == "noop" else "promoted"
        result.update(outcome=outcome, reason=f"{plan.reason}; {last}")
        return result

    kind, reason = verdict
    if kind == "failed":
        result.update(outcome="failed", reason=reason)
        return result
    if not plan.rollback:
        result.update(outcome="failed", reason=f"{reason}; {plan.rollback_note}")
        result["rollback"] = {"applied": False, "detail": plan.rollback_note}
        return result
    rollback: dict[str, Any] = {"applied": False, "detail": plan.rollback_note}
    result["rollback"] = rollback
    try:
        for body in plan.rollback:
            _apply(api, body, config, log)
        rollback["applied"] = True
    except ApplyConflict as exc:
        rollback["detail"] = f"rollback apply refused: {exc}"
        result.update(outcome="failed", reason=f"{reason}; {rollback['detail']}")
        return result
    restored_uri = plan.rollback[-1]["spec"]["predictor"].get("model", {}).get("storageUri")
    restored = wait_until_ready(read, timeout_s=config.ready_timeout_s, poll_s=config.poll_s,
                                read_deployment=read_deployment if config.read_deployment else None,
                                storage_uri=restored_uri, clock=clock, sleep=sleep)
    rollback.update(ready=restored.ready, ready_detail=restored.detail, seconds=round(restored.seconds, 1))
    log.add(step="rollback", ready=restored.ready, detail=restored.detail)
    result.update(outcome="rolled_back", reason=reason, url=smoke_url(restored.isvc, "service"))
    return result


# --- the whole step -----------------------------------------------------------------------------------------


def build_record(*, model_name: str, version: str, namespace: str, storage_uri: str,
                 previous_storage_uri: str | None, previous_version: str | None, settings: ServingSettings,
                 plan: RolloutPlan | None, rollout: Mapping[str, Any], upload: model_store.UploadResult | None,
                 smoke_mode: str, notes: Iterable[str] = ()) -> dict[str, Any]:
    """The promote step's output record (also the component's output metadata): JSON-serialisable."""
    return {
        "deploy_target": "kserve",
        "model_name": model_name,
        "version": version,
        "previous_version": previous_version,
        "outcome": rollout["outcome"],
        "reason": rollout["reason"],
        "namespace": namespace,
        "inference_service": settings.name,
        "storage_uri": storage_uri,
        "previous_storage_uri": previous_storage_uri,
        "deployment_mode": settings.deployment_mode,
        "action": plan.action if plan else None,
        "changes": list(plan.changes) if plan else [],
        "canary_percent": plan.canary_percent if plan else None,
        "smoke": smoke_mode,
        "phases": list(rollout.get("phases") or []),
        "rollback": rollout.get("rollback"),
        "forced_from": list(rollout.get("forced_from") or []),
        "url": rollout.get("url"),
        "uploaded": upload.uploaded if upload else None,
        "notes": list(notes),
        "field_manager": FIELD_MANAGER,
    }


def _stage_bundle(optimized_dir: str | Path, transform_dir: str | Path, summary_path: str | Path,
                  staging_root: Path, model_name: str) -> dict[str, Any]:
    # publish_bundle builds the bundle (and its content-addressed version) in a scratch root; its own
    # "[promote] promoted" line would be wrong here (nothing is in service yet), so it is kept quiet.
    with contextlib.redirect_stdout(io.StringIO()):
        return publish_bundle(optimized_dir, transform_dir, summary_path, str(staging_root), model_name)


def promote_to_kserve(optimized_dir: str | Path, transform_dir: str | Path, summary_path: str | Path, *,
                      model_root: str, model_name: str, params: PromoteParams,
                      api: InferenceServiceApi | None = None, smoke: SmokeCheck | None = None,
                      store: model_store.ObjectStore | None = None,
                      pvc_mount_path: str | Path = model_store.DEFAULT_PVC_MOUNT,
                      config: RolloutConfig | None = None) -> dict[str, Any]:
    """Upload the bundle to `<model_root>/<model_name>/<version>/`, roll the InferenceService to it, check it,
    roll back on failure; point LATEST at the version once it serves. Returns the record (see build_record).

    `api`, `smoke` and `store` default to the real ones (the pod's ServiceAccount, the HTTP ranking request
    or none per `params.smoke`, the scheme's object store); tests and the cluster tests inject their own.
    """
    root = model_store.parse_storage_uri(model_root)
    if not root.kserve_readable:
        raise ValueError(f"model root {model_root!r} is a local path, which KServe's storage initializer "
                         "cannot read: use s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or pvc://CLAIM/PATH")
    config = config or RolloutConfig()
    config = replace(config, ready_timeout_s=float(params.ready_timeout_s), force_conflicts=params.force_conflicts)
    with tempfile.TemporaryDirectory(prefix="shoprank-bundle-") as scratch:
        staged = _stage_bundle(optimized_dir, transform_dir, summary_path, Path(scratch), model_name)
        version = staged["version"]
        storage_uri = model_store.version_location(model_root, model_name, version).uri
        # Validate every setting before anything is written anywhere.
        settings, autoscaling, notes = serving_settings(params, storage_uri, model_name)
        if settings.backend == "triton" and not staged.get("triton_repository"):
            raise ValueError(f"serving profile {params.profile!r} serves the ONNX export, and this model has none "
                             "(optimize.export_onnx is off): re-run with it on, or promote with profile gpu")
        upload = model_store.upload_bundle(staged["bundle_dir"], model_root, model_name, version, store=store,
                                           pvc_mount_path=pvc_mount_path)
    print(f"[promote] bundle {version} {'uploaded to' if upload.uploaded else 'already at'} {storage_uri}",
          flush=True)
    api = api or KServeApi.from_environment()
    if smoke is None:
        smoke = no_smoke if params.smoke == "none" else ranking_smoke
    smoke_mode = params.smoke if smoke in (no_smoke, ranking_smoke) else "custom"
    desired = desired_inference_service(settings, autoscaling=autoscaling)
    current = api.get(settings.namespace, settings.name)
    previous_uri = (((current or {}).get("spec") or {}).get("predictor") or {}).get("model", {}).get("storageUri")
    previous_version = model_store.version_of_uri(previous_uri, model_root, model_name)
    canary = params.canary_percent if settings.deployment_mode == KNATIVE and params.canary_percent else None
    common = dict(model_name=model_name, version=version, namespace=settings.namespace, storage_uri=storage_uri,
                  previous_storage_uri=previous_uri, previous_version=previous_version, settings=settings,
                  upload=upload, smoke_mode=smoke_mode)
    try:
        plan = plan_rollout(current, desired, canary_percent=canary)
    except PlanError as exc:
        return build_record(plan=None, rollout={"outcome": "failed", "reason": str(exc)}, notes=notes, **common)
    print(f"[promote] {plan.action}: {plan.reason}", flush=True)
    # What the predictor itself loads (the Triton variant: the bundle's triton/ repository).
    predictor_uri = desired["spec"]["predictor"]["model"]["storageUri"]
    rollout = run_rollout(api, plan, namespace=settings.namespace, name=settings.name, version=version,
                          storage_uri=predictor_uri, smoke=smoke, config=config, smoke_url_override=params.smoke_url)
    if rollout["outcome"] in ("promoted", "unchanged"):
        pointer = model_store.write_latest(model_root, model_name, version, store=store,
                                           pvc_mount_path=pvc_mount_path)
        notes = (*notes, f"{pointer} -> {version}")
    record = build_record(plan=plan, rollout=rollout, notes=notes, **common)
    print(f"[promote] {record['outcome']}: {model_name} {previous_version or previous_uri or '-'} -> {version} "
          f"({record['reason']})", flush=True)
    return record
