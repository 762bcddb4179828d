"""How to get from the live InferenceService to the desired one: patches, apply bodies, phases, rollback.

Why on its own: every decision about what to write is made here, before the first write, as pure functions
over plain dicts (the shapes the Kubernetes API returns as JSON), so it is tested without a cluster.

- `plan_promotion(current, desired)`: create, patch (an RFC 7386 merge patch of the owned fields) or nothing
  (a rerun of the same model and settings is a no-op); refuses what KServe cannot do by a patch (`PlanError`);
- `apply_body(manifest)`: the server-side-apply configuration, only the fields the promote step owns
  (`shoprank.release.kserve.names.MANAGED_*`);
- `plan_rollout(current, desired)`: the phases to apply (canary then full in Knative mode) and the apply bodies
  that undo them, built on `plan_promotion` and `rollback_spec`;
- `parse_conflicts` / `resolve_conflicts`: which field-manager conflicts of an apply to take over by force.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from shoprank.errors import PlanError
from shoprank.release.kserve.names import (
    API_VERSION,
    CANARY_FIELD,
    DEPLOY_FIELD_MANAGER,
    DEPLOYMENT_MODE_ANNOTATION,
    KIND,
    KNATIVE,
    LEGACY_MODES,
    MANAGED_ANNOTATIONS,
    MANAGED_LABELS,
    MANAGED_MODEL_FIELDS,
    MANAGED_PREDICTOR_FIELDS,
    MANAGED_TRANSFORMER_FIELDS,
    OPTIONAL_MODEL_FIELDS,
    OPTIONAL_PREDICTOR_FIELDS,
    TAG_ROUTING_ANNOTATION,
    normalize_deployment_mode,
)

__all__ = [
    "Conflict",
    "Phase",
    "Plan",
    "Rollback",
    "RolloutPlan",
    "apply_body",
    "full_rollout_patch",
    "parse_conflicts",
    "plan_promotion",
    "plan_rollout",
    "resolve_conflicts",
    "rollback_spec",
]

_SERVER_METADATA = (
    "uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
    "deletionGracePeriodSeconds", "managedFields", "selfLink", "ownerReferences", "finalizers",
)
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


# --- the merge patch ---------------------------------------------------------------------------------------


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
    return LEGACY_MODES.get(mode, mode)


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
    if desired_mode and current_mode and LEGACY_MODES.get(desired_mode, desired_mode) != current_mode:
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


# --- the rollback spec ---------------------------------------------------------------------------------


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


# --- what to apply ---------------------------------------------------------------------------------------


def _mode_of(manifest: Mapping[str, Any]) -> str | None:
    mode = ((manifest.get("metadata") or {}).get("annotations") or {}).get(DEPLOYMENT_MODE_ANNOTATION)
    return normalize_deployment_mode(mode) if mode else None


def apply_body(manifest: Mapping[str, Any], *, canary_percent: int | None = None) -> dict[str, Any]:
    """The server-side-apply configuration for an InferenceService manifest: only the fields the promote
    step owns (`names.MANAGED_*`, `names.MANAGED_LABELS`), plus `canaryTrafficPercent` when a canary step wants it.

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
    percentage itself; pass it here. Raises shoprank.errors.PlanError when KServe cannot move there by an apply.
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
