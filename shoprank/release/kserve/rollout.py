"""Cluster promotion: publish the blessed bundle to versioned storage, then roll the InferenceService forward
with server-side apply, check it, and roll it back when it does not come up.

Why this module: it is the driver, the only place that sequences the layers below it, so that the decisions are
plain functions and the Kubernetes calls are few and explicit:

- `shoprank.release.kserve.names`: the API group, annotations, labels, field managers and runtimes;
- `shoprank.release.kserve.spec`: `ServingSettings` and the desired InferenceService;
- `shoprank.release.kserve.profiles`: the overlay profiles and `PromoteParams` (the pipeline's `serving_*`
  parameters, declared once), `serving_settings` (parameters on top of a profile);
- `shoprank.release.kserve.plan`: `plan_promotion`, `apply_body` (the server-side-apply configuration: only the
  fields the promote step owns), `plan_rollout` (phases to apply and what to apply to undo them),
  `rollback_spec`, `resolve_conflicts` (when to force);
- `shoprank.release.kserve.wait`: `is_ready`, `deployment_rolled_out`, `wait_until_ready` (polls a reader
  callable with an injectable clock);
- `shoprank.release.kserve.smoke`: `smoke_url` and the v2 ranking request;
- `shoprank.release.kserve.client`: `KServeApi` (get, server-side apply, read the predictor Deployment) with the
  kubernetes client, and the `InferenceServiceApi` Protocol;
- here: `decide_after_rollout` (keep or roll back), `run_rollout` drives a plan through the API, `build_record`,
  and `promote_to_kserve` is the whole step for the component.

Unit tests (tests/release/kserve/) cover the decisions, the waiting logic and the sequencing of `run_rollout`
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
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from shoprank.errors import PlanError
from shoprank.release import model_store
from shoprank.release.bundle import publish_bundle
from shoprank.release.kserve.client import ApplyConflict, InferenceServiceApi, KServeApi
from shoprank.release.kserve.names import DEPLOY_FIELD_MANAGER, FIELD_MANAGER, KNATIVE
from shoprank.release.kserve.plan import RolloutPlan, plan_rollout, resolve_conflicts
from shoprank.release.kserve.profiles import PromoteParams, serving_settings
from shoprank.release.kserve.sizing import MemoryNeed, memory_need
from shoprank.release.kserve.smoke import (
    SmokeCheck,
    SmokeContext,
    catalogue_items,
    no_smoke,
    ranking_smoke,
    smoke_url,
)
from shoprank.release.kserve.spec import ServingSettings, desired_inference_service
from shoprank.release.kserve.wait import latest_created_revision, wait_until_ready

__all__ = [
    "OUTCOMES",
    "Outcome",
    "RolloutConfig",
    "build_record",
    "decide_after_rollout",
    "promote_to_kserve",
    "run_rollout",
    "size_memory",
]

# Outcomes: promoted (new version serving), unchanged (already serving it), rolled_back (the rollout failed and
# the previous spec was re-applied), failed (refused, or failed with nothing to restore: a human must act).
OUTCOMES = ("promoted", "unchanged", "rolled_back", "failed")


# --- the verdict on a phase ------------------------------------------------------------------------------------


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


# --- driving a plan ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutConfig:
    """How `run_rollout` waits and applies: timeouts, polling, the field manager and whom to take fields from."""

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
                smoke_url_override: str = "", smoke_items: tuple[str, ...] = (),
                clock: Callable[[], float] = time.monotonic,
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
            outcome = smoke(SmokeContext(url, name, version, max(config.smoke_timeout_s, remaining), phase.name,
                                         smoke_items))
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


def size_memory(settings: ServingSettings, bundle_dir: str | Path) -> tuple[ServingSettings, MemoryNeed]:
    """The settings with the memory of the container that runs the shoprank server (the predictor; the
    transformer in the Triton variant, where Triton is the predictor) sized from the bundle; TooLarge (a
    ValueError) when it needs more than `settings.max_memory`."""
    triton = settings.backend == "triton"
    need = memory_need(bundle_dir, "remote" if triton else settings.backend)
    need.check(settings.max_memory)
    key = "transformer_resources" if triton else "resources"
    sized = replace(getattr(settings, key), memory_request=need.request, memory_limit=need.limit)
    return replace(settings, **{key: sized}), need


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
        settings, need = size_memory(settings, staged["bundle_dir"])  # TooLarge: refused, nothing written
        notes = (*notes, f"memory sized from the bundle: {need.describe()}")
        items = catalogue_items(staged["bundle_dir"])  # the smoke request's candidates
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
                          storage_uri=predictor_uri, smoke=smoke, config=config, smoke_url_override=params.smoke_url,
                          smoke_items=items)
    if rollout["outcome"] in ("promoted", "unchanged"):
        pointer = model_store.write_latest(model_root, model_name, version, store=store,
                                           pvc_mount_path=pvc_mount_path)
        notes = (*notes, f"{pointer} -> {version}")
    record = build_record(plan=plan, rollout=rollout, notes=notes, **common)
    print(f"[promote] {record['outcome']}: {model_name} {previous_version or previous_uri or '-'} -> {version} "
          f"({record['reason']})", flush=True)
    return record
