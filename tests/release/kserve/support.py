"""Shared by the tests of shoprank.release.kserve: InferenceService objects as the API returns them, a fake clock,
and `ScriptedApi`, the recording stand-in for the Kubernetes API.

`ScriptedApi` records calls and answers reads from a script; it does not emulate server-side apply, field
ownership, defaulting, validation or RBAC. Those are tested against a real kube-apiserver with KServe's CRDs in
tests/cluster (`make test-cluster`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from shoprank.release.kserve import rollout
from shoprank.release.kserve.client import ApplyConflict
from shoprank.release.kserve.names import FIELD_MANAGER
from shoprank.release.kserve.plan import Conflict, RolloutPlan
from shoprank.release.kserve.profiles import PromoteParams, serving_settings
from shoprank.release.kserve.rollout import RolloutConfig
from shoprank.release.kserve.smoke import SmokeContext, SmokeResult
from shoprank.release.kserve.spec import desired_inference_service
from shoprank.release.kserve.wait import DeploymentUnreadable

NAME, NS = "shoprank-ranker", "shoprank"
OLD = "s3://shoprank-models/shoprank-ranker/v000000000001"
NEW = "s3://shoprank-models/shoprank-ranker/v000000000002"
ADDRESS = "http://shoprank-ranker-predictor.shoprank.svc.cluster.local"
V1 = "s3://shoprank-models/shoprank-ranker/20260101-1"  # plan_promotion's tests use these two
V2 = "s3://shoprank-models/shoprank-ranker/20260102-1"


def desired(storage_uri: str = NEW, **params: Any) -> dict[str, Any]:
    settings, autoscaling, _ = serving_settings(PromoteParams(**params), storage_uri, NAME)
    return desired_inference_service(settings, autoscaling=autoscaling)


def live(manifest: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a GET returns for an applied manifest: server metadata, defaults of other owners, a status."""
    obj = copy.deepcopy(manifest)
    obj["metadata"].update(uid="u-1", resourceVersion="7", generation=3, managedFields=[{"manager": "x"}])
    obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = "{}"
    obj["spec"]["predictor"]["model"]["protocolVersion"] = "v2"  # someone else's field
    obj["status"] = status if status is not None else ready()
    return obj


def ready(mode: str = "Standard", revision: str | None = None, tag_url: str | None = None) -> dict[str, Any]:
    predictor: dict[str, Any] = {"url": "http://shoprank-ranker-predictor.shoprank.example.com"}
    if revision:
        predictor.update(latestCreatedRevision=revision, latestReadyRevision=revision)
    if tag_url:
        predictor["traffic"] = [{"tag": "latest", "url": tag_url, "percent": 10, "latestRevision": True},
                                {"tag": "prev", "url": "http://prev.example", "percent": 90}]
    return {"deploymentMode": mode, "url": "http://shoprank-ranker.shoprank.example.com",
            "address": {"url": ADDRESS}, "components": {"predictor": predictor},
            "conditions": [{"type": "PredictorReady", "status": "True"}, {"type": "Ready", "status": "True"}],
            "modelStatus": {"transitionStatus": "UpToDate"}}


def not_ready(reason: str = "MinimumReplicasUnavailable") -> dict[str, Any]:
    return {"deploymentMode": "Standard",
            "conditions": [{"type": "PredictorReady", "status": "False", "reason": reason},
                           {"type": "Ready", "status": "False", "reason": reason}],
            "modelStatus": {"transitionStatus": "InProgress"}}


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


STATUS_409 = {
    "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
    "message": "Apply failed with 2 conflicts: ...",
    "details": {"name": NAME, "group": "serving.kserve.io", "kind": "inferenceservices", "causes": [
        {"reason": "FieldManagerConflict", "message": 'conflict with "shoprank-deploy" using serving.kserve.io/v1beta1',
         "field": ".spec.predictor.model.storageUri"},
        {"reason": "FieldManagerConflict", "message": 'conflict with "kubectl-edit" using serving.kserve.io/v1beta1',
         "field": ".spec.predictor.maxReplicas"},
    ]},
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def reader(*objects: dict[str, Any] | None) -> Callable[[], dict[str, Any] | None]:
    """Returns the objects in turn, then the last one forever."""
    items = list(objects)

    def read() -> dict[str, Any] | None:
        return items.pop(0) if len(items) > 1 else items[0]

    return read


class ScriptedApi:
    """Records applies and answers reads from a script (see the module docstring: no API-server emulation).

    `status(n, body)` gives the status a read returns after n applies, the last applied body being `body`.
    `conflicts` are raised, once each, by non-forced applies.
    """

    def __init__(self, current: dict[str, Any] | None, status: Callable[[int, dict | None], dict] | None = None,
                 conflicts: list[list[Conflict]] | None = None, deployment: dict[str, Any] | None = None):
        self.current = current
        self.status = status or (lambda n, body: ready())
        self.conflicts = list(conflicts or [])
        self.deployment = deployment
        self.applies: list[tuple[dict[str, Any], bool]] = []

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        if not self.applies:
            return copy.deepcopy(self.current)
        body = self.applies[-1][0]
        return {**copy.deepcopy(body), "status": self.status(len(self.applies), body)}

    def apply(self, body: dict[str, Any], *, field_manager: str, force: bool = False) -> dict[str, Any]:
        assert field_manager == FIELD_MANAGER
        if self.conflicts and not force:
            conflicts = self.conflicts.pop(0)
            raise ApplyConflict(conflicts, "conflict")
        self.applies.append((copy.deepcopy(body), force))
        return body

    def get_predictor_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        if self.deployment is None:
            raise DeploymentUnreadable("HTTP 403 Forbidden")
        return self.deployment


class FakeSmoke:
    def __init__(self, *results: bool) -> None:
        self.results, self.calls = list(results), []

    def __call__(self, ctx: SmokeContext) -> SmokeResult:
        self.calls.append(ctx)
        ok = self.results.pop(0) if self.results else True
        return SmokeResult(ok, "answered" if ok else "HTTP 500 from the model")


def run(api: ScriptedApi, plan: RolloutPlan, smoke: FakeSmoke, timeout: float = 60) -> dict[str, Any]:
    clock = FakeClock()
    config = RolloutConfig(ready_timeout_s=timeout, poll_s=5, smoke_timeout_s=30)
    return rollout.run_rollout(api, plan, namespace=NS, name=NAME, version="v000000000002", storage_uri=NEW,
                               smoke=smoke, config=config, clock=clock, sleep=clock.sleep)
