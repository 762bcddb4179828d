"""When a rollout is done: reading KServe's status, the predictor Deployment and its pods, and polling them.

Why on its own: "Ready" is subtle (Ready stays True on the old pods during a Standard-mode rolling update; a
Knative revision may not have been created yet right after an apply), and waiting must be testable without a
cluster or real time. The status readers are pure functions over the API's JSON; `wait_until_ready` polls a
reader callable with an injectable clock and sleep. No Kubernetes client here: `shoprank.release.kserve.client`
supplies the readers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shoprank.release.kserve.names import SOURCE_URI_ANNOTATION, STANDARD

__all__ = [
    "DeploymentUnreadable",
    "ReadyResult",
    "deployment_rolled_out",
    "failure_of_another_version",
    "has_failed",
    "is_ready",
    "latest_created_revision",
    "pod_problems",
    "predictor_status",
    "wait_until_ready",
]


# --- KServe's status ---------------------------------------------------------------------------------------


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


# --- the predictor Deployment and waiting ------------------------------------------------------------------


def predictor_status(isvc: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """`status.components.predictor` of an InferenceService ({} when absent)."""
    return (((isvc or {}).get("status") or {}).get("components") or {}).get("predictor") or {}


def latest_created_revision(isvc: Mapping[str, Any] | None) -> str | None:
    """The predictor's latest created revision (Knative mode; None in Standard mode)."""
    return predictor_status(isvc).get("latestCreatedRevision")


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
    """What `wait_until_ready` saw last: ready or not, whether time ran out, why, and the object it read."""

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
    """The predictor Deployment cannot be read (no RBAC, or it does not exist): rely on other evidence.

    What a `read_deployment` callable of `wait_until_ready` raises (KServeApi.get_predictor_deployment does)."""


def wait_until_ready(read: Callable[[], dict[str, Any] | None], *, timeout_s: float, poll_s: float = 5.0,
                     previous_revision: str | None = None, expects_new_revision: bool = False,
                     read_deployment: Callable[[], dict[str, Any]] | None = None, storage_uri: str | None = None,
                     clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep) -> ReadyResult:
    """Poll until the InferenceService is Ready for this change, a terminal failure shows, or the timeout.

    Ready means `is_ready` and, where the status can tell stale from fresh: in Knative mode a new
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


# --- why pods are not Ready -------------------------------------------------------------------------------

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
