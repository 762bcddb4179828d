"""The cluster promotion's decisions and sequencing (shoprank.rollout), without a cluster.

What is tested here: the settings the pipeline parameters produce (and that a profile's defaults are its
overlay's InferenceService), the apply configurations, the rollout plan (phases, canary only in Knative,
idempotent reruns, what a rollback re-applies), conflict handling, readiness waiting, the smoke request over
real HTTP on loopback, and the order of calls `run_rollout` makes, through `ScriptedApi`.

What is not tested here: the Kubernetes API server's behaviour. `ScriptedApi` records calls and answers reads
from a script; it does not emulate server-side apply, field ownership, defaulting, validation or RBAC. Those
are tested against a real kube-apiserver with KServe's CRDs in tests/cluster (`make test-cluster`).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoprank import rollout
from shoprank.promotion import PlanError
from shoprank.rollout import (
    ApplyConflict,
    Conflict,
    DeploymentUnreadable,
    PromoteParams,
    RolloutConfig,
    SmokeContext,
    SmokeResult,
    apply_body,
    desired_inference_service,
    plan_rollout,
    serving_settings,
)

REPO = Path(__file__).resolve().parents[1]
NAME, NS = "shoprank-ranker", "shoprank"
OLD = "s3://shoprank-models/shoprank-ranker/v000000000001"
NEW = "s3://shoprank-models/shoprank-ranker/v000000000002"
ADDRESS = "http://shoprank-ranker-predictor.shoprank.svc.cluster.local"


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


# --- settings from pipeline parameters ---------------------------------------------------------------------


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


def test_gpu_triton_rollout_moves_triton_and_the_transformer_together():
    old = live(desired(OLD, profile="gpu-triton", transformer_image="reg/serving:1"))
    new = desired(NEW, profile="gpu-triton", transformer_image="reg/serving:1")
    plan = plan_rollout(old, new)
    assert plan.action == "patch"
    assert set(plan.changes) == {"spec.predictor.model.storageUri", "spec.transformer.storageUris"}
    body = plan.phases[0].body
    assert body["spec"]["predictor"]["model"]["storageUri"] == NEW + "/triton"
    assert body["spec"]["transformer"]["storageUris"] == [{"uri": NEW, "mountPath": "/mnt/models"}]
    assert "args" not in body["spec"]["predictor"]["model"]  # Triton's arguments are its runtime's
    restore = plan.rollback[0]
    assert restore["spec"]["transformer"]["storageUris"][0]["uri"] == OLD
    assert restore["spec"]["predictor"]["model"]["storageUri"] == OLD + "/triton"


def test_leaving_gpu_triton_removes_the_transformer_and_going_back_restores_it():
    triton = live(desired(OLD, profile="gpu-triton", transformer_image="reg/serving:1"))
    plan = plan_rollout(triton, desired(NEW, profile="gpu"))
    assert "spec.transformer" in plan.changes
    assert "transformer" not in plan.phases[0].body["spec"]  # the apply leaves it out: SSA removes what it owned
    assert plan.rollback[0]["spec"]["transformer"]["containers"][0]["image"] == "reg/serving:1"
    plain = live(desired(OLD, profile="gpu"))
    plan = plan_rollout(plain, desired(NEW, profile="gpu-triton", transformer_image="reg/serving:1"))
    assert "spec.transformer.containers" in plan.changes
    assert "transformer" not in plan.rollback[0]["spec"]


def test_default_parameters_match_the_default_overlay():
    assert PromoteParams().profile == rollout.DEFAULT_PROFILE == "gpu"
    settings, autoscaling, notes = serving_settings(PromoteParams(), NEW, NAME)
    assert settings.use_gpu and settings.gpu_count == 1 and settings.max_replicas == 4 and autoscaling
    assert settings.gpu_node_selector == {"nvidia.com/gpu.present": "true"} and notes == ()


def test_parameters_override_the_profile():
    settings, _, _ = serving_settings(PromoteParams(
        profile="gpu", namespace="ranking", gpu_count=2, gpu_node_label="cloud.google.com/gke-accelerator=nvidia-l4",
        min_replicas=2, max_replicas=10, scale_target=50), NEW, NAME)
    isvc = rollout.desired_inference_service(settings)
    predictor = isvc["spec"]["predictor"]
    assert isvc["metadata"]["namespace"] == "ranking"
    assert predictor["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert predictor["model"]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 10)
    assert predictor["autoScaling"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 50


def test_gpu_switch_only_moves_placement():
    settings, _, _ = serving_settings(PromoteParams(profile="gpu", gpu="false"), NEW, NAME)
    predictor = rollout.desired_inference_service(settings)["spec"]["predictor"]
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


# --- what is applied ---------------------------------------------------------------------------------------


def test_apply_body_holds_only_the_owned_fields():
    body = apply_body(live(desired()))
    assert set(body) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(body["metadata"]) == {"name", "namespace", "labels", "annotations"}
    assert "kubectl.kubernetes.io/last-applied-configuration" not in body["metadata"]["annotations"]
    assert "protocolVersion" not in body["spec"]["predictor"]["model"]  # someone else's field is not sent
    assert body["spec"]["predictor"]["model"]["storageUri"] == NEW
    assert "canaryTrafficPercent" not in body["spec"]["predictor"]


def test_apply_body_is_the_same_for_a_rerun():
    assert json.dumps(apply_body(desired())) == json.dumps(apply_body(desired()))


def test_knative_bodies_turn_tag_routing_on_and_carry_the_canary():
    body = apply_body(desired(profile="cpu", deployment_mode="Knative"), canary_percent=10)
    assert body["metadata"]["annotations"][rollout.TAG_ROUTING_ANNOTATION] == "true"
    assert body["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert rollout.TAG_ROUTING_ANNOTATION not in apply_body(desired())["metadata"]["annotations"]


# --- the plan ----------------------------------------------------------------------------------------------


def test_first_promotion_creates_with_no_canary_and_nothing_to_restore():
    plan = plan_rollout(None, desired(profile="cpu", deployment_mode="Knative"), canary_percent=20)
    assert plan.action == "create" and [p.name for p in plan.phases] == ["rollout"]
    assert "canaryTrafficPercent" not in plan.phases[0].body["spec"]["predictor"]
    assert plan.rollback == () and "no delete verb" in plan.rollback_note


def test_new_version_in_standard_mode_is_one_phase_and_rollback_restores_the_previous_values():
    previous = live(desired(OLD))
    plan = plan_rollout(previous, desired(NEW))
    assert plan.action == "patch" and plan.changes == ("spec.predictor.model.storageUri",)
    (phase,) = plan.phases
    assert phase.name == "rollout" and phase.smoke and phase.target == "service" and phase.expects_new_revision
    assert phase.body == apply_body(desired(NEW))
    (restore,) = plan.rollback
    assert restore == apply_body(desired(OLD)) and "protocolVersion" not in restore["spec"]["predictor"]["model"]


def test_rollback_removes_what_the_new_version_added():
    previous = live(desired(OLD, profile="gpu", gpu="false"))
    plan = plan_rollout(previous, desired(NEW, profile="gpu"))
    assert "nodeSelector" in plan.phases[0].body["spec"]["predictor"]
    # Absent from the restore configuration: server-side apply drops it if shoprank-promote was its only owner.
    assert "nodeSelector" not in plan.rollback[0]["spec"]["predictor"]


def test_canary_then_full_in_knative():
    kn = {"profile": "cpu", "deployment_mode": "Knative"}
    plan = plan_rollout(live(desired(OLD, **kn), ready("Knative", "r1")), desired(NEW, **kn), canary_percent=10)
    assert [p.name for p in plan.phases] == ["canary", "full"] and plan.canary_percent == 10
    canary, full = plan.phases
    assert canary.body["spec"]["predictor"]["canaryTrafficPercent"] == 10 and canary.target == "latest"
    assert canary.smoke and canary.expects_new_revision
    assert "canaryTrafficPercent" not in full.body["spec"]["predictor"] and not full.expects_new_revision
    back_to_previous, restore = plan.rollback
    assert back_to_previous["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert restore["spec"]["predictor"]["model"]["storageUri"] == OLD


def test_no_canary_phase_in_standard_mode_even_if_asked():
    plan = plan_rollout(live(desired(OLD)), desired(NEW), canary_percent=10)
    assert [p.name for p in plan.phases] == ["rollout"] and plan.canary_percent is None
    assert "canaryTrafficPercent" not in plan.phases[0].body["spec"]["predictor"]


def test_rerun_of_the_same_version_applies_nothing_and_only_verifies():
    plan = plan_rollout(live(desired(NEW)), desired(NEW), canary_percent=10)
    assert plan.action == "noop" and plan.rollback == ()
    (verify,) = plan.phases
    assert verify.name == "verify" and verify.body is None and verify.smoke


def test_leftover_canary_is_finished_without_a_new_revision():
    kn = {"profile": "cpu", "deployment_mode": "Knative"}
    current = live(desired(NEW, **kn), ready("Knative", "r2"))
    current["spec"]["predictor"]["canaryTrafficPercent"] = 10
    plan = plan_rollout(current, desired(NEW, **kn), canary_percent=10)
    (phase,) = plan.phases
    assert plan.action == "patch" and not phase.expects_new_revision
    assert "canaryTrafficPercent" not in phase.body["spec"]["predictor"]


def test_a_mode_change_is_refused():
    with pytest.raises(PlanError, match="delete it first"):
        plan_rollout(live(desired(OLD)), desired(NEW, deployment_mode="Knative", profile="cpu"))


# --- conflicts ---------------------------------------------------------------------------------------------

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


def test_parse_conflicts():
    assert rollout.parse_conflicts(json.dumps(STATUS_409)) == [
        Conflict("shoprank-deploy", ".spec.predictor.model.storageUri"),
        Conflict("kubectl-edit", ".spec.predictor.maxReplicas")]
    assert rollout.parse_conflicts("not json") == [] and rollout.parse_conflicts(None) == []


def test_force_only_over_the_deploy_manager():
    deploy_only = [Conflict("shoprank-deploy", ".spec.predictor.model.storageUri")]
    assert rollout.resolve_conflicts(deploy_only)[0]
    both = rollout.parse_conflicts(STATUS_409)
    force, why = rollout.resolve_conflicts(both)
    assert not force and "kubectl-edit" in why and "force_conflicts" in why
    assert rollout.resolve_conflicts(both, force_all=True)[0]
    assert not rollout.resolve_conflicts([])[0]


# --- readiness ---------------------------------------------------------------------------------------------


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


def test_wait_returns_when_ready():
    clock = FakeClock()
    read = reader({"status": not_ready()}, {"status": not_ready()}, {"status": ready()})
    result = rollout.wait_until_ready(read, timeout_s=60, poll_s=5, clock=clock, sleep=clock.sleep)
    assert result.ready and not result.timed_out and clock.now == 10


def test_wait_times_out():
    clock = FakeClock()
    result = rollout.wait_until_ready(reader({"status": not_ready("Pending")}), timeout_s=30, poll_s=7,
                                      clock=clock, sleep=clock.sleep)
    assert not result.ready and result.timed_out and clock.now == 30 and "Pending" in result.detail


def test_wait_stops_at_a_failed_model_load():
    failed = not_ready()
    failed["modelStatus"] = {"transitionStatus": "BlockedByFailedLoad",
                             "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "no such bucket"}}
    clock = FakeClock()
    result = rollout.wait_until_ready(reader({"status": failed}), timeout_s=600, clock=clock, sleep=clock.sleep)
    assert not result.ready and not result.timed_out and "no such bucket" in result.detail and clock.now == 0


def test_wait_does_not_trust_a_stale_knative_revision():
    clock = FakeClock()
    read = reader({"status": ready("Knative", "r1")}, {"status": ready("Knative", "r2")})
    result = rollout.wait_until_ready(read, timeout_s=60, poll_s=5, previous_revision="r1",
                                      expects_new_revision=True, clock=clock, sleep=clock.sleep)
    assert result.ready and clock.now == 5


def deployment(source: str, *, replicas=2, updated=2, total=2, available=2, generation=4, observed=4):
    return {"metadata": {"generation": generation},
            "spec": {"replicas": replicas, "template": {"metadata": {"annotations": {
                rollout.SOURCE_URI_ANNOTATION: source}}}},
            "status": {"observedGeneration": observed, "updatedReplicas": updated, "replicas": total,
                       "availableReplicas": available}}


@pytest.mark.parametrize("dep, ok, reason", [
    (deployment(NEW), True, "rolled out"),
    (deployment(OLD), False, "still runs"),
    (deployment(NEW, observed=3), False, "not observed"),
    (deployment(NEW, updated=1, total=3), False, "1 of 2 replicas updated"),
    (deployment(NEW, total=3), False, "old replicas"),
    (deployment(NEW, available=1), False, "1 of 2 updated replicas available"),
])
def test_deployment_rolled_out(dep, ok, reason):
    got, why = rollout.deployment_rolled_out(dep, NEW)
    assert got == ok and reason in why


def test_standard_mode_waits_for_the_deployment_when_it_can_read_it():
    clock = FakeClock()
    deployments = iter([deployment(OLD), deployment(NEW, total=3), deployment(NEW)])
    result = rollout.wait_until_ready(reader({"status": ready()}), timeout_s=60, poll_s=5,
                                      read_deployment=lambda: next(deployments), storage_uri=NEW,
                                      clock=clock, sleep=clock.sleep)
    assert result.ready and clock.now == 10


def test_standard_mode_without_deployment_access_notes_it():
    def forbidden() -> dict[str, Any]:
        raise DeploymentUnreadable("HTTP 403 Forbidden")

    clock = FakeClock()
    result = rollout.wait_until_ready(reader({"status": ready()}), timeout_s=60, read_deployment=forbidden,
                                      storage_uri=NEW, clock=clock, sleep=clock.sleep)
    assert result.ready and "403" in result.notes[0] and "smoke" in result.notes[0]


# --- the smoke request -------------------------------------------------------------------------------------


def test_smoke_url_choice():
    assert rollout.smoke_url({"status": ready()}, "service") == ADDRESS
    assert rollout.smoke_url({"status": ready("Knative", "r2", "http://latest-x")}, "latest") == "http://latest-x"
    assert rollout.smoke_url({"status": ready("Knative", "r2")}, "latest") == ADDRESS  # no tag: the service
    assert rollout.smoke_url({"status": {"url": "http://ext"}}, "service") == "http://ext"
    assert rollout.smoke_url(None, "service") is None


def good_response(candidates=rollout.SMOKE_CANDIDATES) -> dict[str, Any]:
    return {"model_name": NAME, "outputs": [
        {"name": "scores", "datatype": "FP32", "shape": [3], "data": [0.1, 0.7, 0.2]},
        {"name": "ranking", "datatype": "BYTES", "shape": [3], "data": [candidates[1], candidates[2], candidates[0]]},
    ]}


def test_check_ranking_response():
    assert rollout.check_ranking_response(good_response()) is None
    bad = good_response()
    bad["outputs"][0]["data"] = [0.1, float("nan"), 0.2]
    assert "finite" in rollout.check_ranking_response(bad)
    assert "no 'ranking'" in rollout.check_ranking_response({"outputs": bad["outputs"][:1]})
    bad = good_response()
    bad["outputs"][1]["data"] = ["x", "y", "z"]
    assert "permutation" in rollout.check_ranking_response(bad)


class V2Server:
    """A loopback HTTP server answering the v2 model metadata and infer paths from a script."""

    def __init__(self, versions: list[list[str]], infer: dict[str, Any] | None = None, status: int = 200):
        self.versions, self.infer, self.status, self.requests = versions, infer or good_response(), status, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                outer.requests.append(("GET", self.path, None))
                versions = outer.versions.pop(0) if len(outer.versions) > 1 else outer.versions[0]
                self._send(200, {"name": NAME, "versions": versions, "platform": "shoprank"})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(("POST", self.path, body))
                self._send(outer.status, outer.infer if outer.status == 200 else {"error": "bad input"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> V2Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_ranking_smoke_waits_for_the_new_version_to_answer():
    clock = FakeClock()
    with V2Server([["v000000000001"], ["v000000000001"], ["v000000000002"]]) as server:
        result = rollout.ranking_smoke(SmokeContext(server.url, NAME, "v000000000002", 60, "rollout"),
                                       clock=clock, sleep=clock.sleep)
    assert result.ok, result.detail
    method, path, body = server.requests[-1]
    assert (method, path) == ("POST", f"/v2/models/{NAME}/infer")
    assert {i["name"]: i["datatype"] for i in body["inputs"]} == {
        "query": "BYTES", "user_id": "BYTES", "history": "BYTES", "candidates": "BYTES"}
    assert clock.now == 10


def test_ranking_smoke_fails_on_a_refused_request_and_on_old_pods_that_stay():
    with V2Server([[]], status=400) as server:
        result = rollout.ranking_smoke(SmokeContext(server.url, NAME, "v000000000002", 60, "rollout"))
    assert not result.ok and "HTTP 400" in result.detail
    clock = FakeClock()
    with V2Server([["v000000000001"]]) as server:
        result = rollout.ranking_smoke(SmokeContext(server.url, NAME, "v000000000002", 20, "rollout"),
                                       clock=clock, sleep=clock.sleep)
    assert not result.ok and "answered by version v000000000001" in result.detail


def test_ranking_smoke_without_a_url_or_server():
    assert "no URL" in rollout.ranking_smoke(SmokeContext(None, NAME, "v1", 5, "rollout")).detail
    clock = FakeClock()
    result = rollout.ranking_smoke(SmokeContext("http://127.0.0.1:9", NAME, "v1", 10, "rollout"),
                                   clock=clock, sleep=clock.sleep, request_timeout_s=1)
    assert not result.ok and "within 10s" in result.detail


# --- run_rollout: the order of calls -----------------------------------------------------------------------


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
        assert field_manager == rollout.FIELD_MANAGER
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


def run(api: ScriptedApi, plan: rollout.RolloutPlan, smoke: FakeSmoke, timeout: float = 60) -> dict[str, Any]:
    clock = FakeClock()
    config = RolloutConfig(ready_timeout_s=timeout, poll_s=5, smoke_timeout_s=30)
    return rollout.run_rollout(api, plan, namespace=NS, name=NAME, version="v000000000002", storage_uri=NEW,
                               smoke=smoke, config=config, clock=clock, sleep=clock.sleep)


def test_new_version_is_applied_checked_and_promoted():
    api, smoke = ScriptedApi(live(desired(OLD))), FakeSmoke(True)
    plan = plan_rollout(api.current, desired(NEW))
    result = run(api, plan, smoke)
    assert result["outcome"] == "promoted" and api.applies == [(apply_body(desired(NEW)), False)]
    (ctx,) = smoke.calls
    assert (ctx.url, ctx.model_name, ctx.version, ctx.phase) == (ADDRESS, NAME, "v000000000002", "rollout")
    (phase,) = result["phases"]
    assert phase["ready"] and phase["smoke"]["ok"] and "403" in phase["notes"][0]
    assert result["rollback"] is None and result["url"] == ADDRESS


def test_failed_smoke_rolls_back_to_the_previous_spec():
    api, smoke = ScriptedApi(live(desired(OLD))), FakeSmoke(False)
    result = run(api, plan_rollout(api.current, desired(NEW)), smoke)
    assert result["outcome"] == "rolled_back" and "smoke test failed" in result["reason"]
    assert [b["spec"]["predictor"]["model"]["storageUri"] for b, _ in api.applies] == [NEW, OLD]
    assert api.applies[1][0] == apply_body(desired(OLD))
    assert result["rollback"]["applied"] and result["rollback"]["ready"]


def test_never_ready_is_rolled_back_after_the_timeout():
    api = ScriptedApi(live(desired(OLD)), status=lambda n, body: not_ready("Pending") if n == 1 else ready())
    smoke = FakeSmoke()
    result = run(api, plan_rollout(api.current, desired(NEW)), smoke, timeout=30)
    assert result["outcome"] == "rolled_back" and "timeout" in result["reason"]
    assert result["phases"][0]["timed_out"] and smoke.calls == []
    assert api.applies[-1][0]["spec"]["predictor"]["model"]["storageUri"] == OLD


def test_failed_first_promotion_has_nothing_to_restore():
    api = ScriptedApi(None, status=lambda n, body: not_ready("Unschedulable"))
    result = run(api, plan_rollout(None, desired(NEW)), FakeSmoke(), timeout=20)
    assert result["outcome"] == "failed" and len(api.applies) == 1
    assert not result["rollback"]["applied"] and "delete inferenceservice" in result["reason"]


def test_conflict_with_the_deploy_manifest_is_taken_over():
    api = ScriptedApi(live(desired(OLD)), conflicts=[[Conflict("shoprank-deploy", ".spec.predictor.model.storageUri")]])
    result = run(api, plan_rollout(api.current, desired(NEW)), FakeSmoke(True))
    assert result["outcome"] == "promoted" and api.applies == [(apply_body(desired(NEW)), True)]
    assert result["forced_from"] == ["shoprank-deploy"]


def test_conflict_with_anyone_else_is_refused_and_nothing_changes():
    api = ScriptedApi(live(desired(OLD)), conflicts=[[Conflict("kubectl-edit", ".spec.predictor.maxReplicas")]])
    result = run(api, plan_rollout(api.current, desired(NEW)), FakeSmoke())
    assert result["outcome"] == "failed" and "kubectl-edit" in result["reason"] and api.applies == []


def knative_status(n: int, body: dict | None) -> dict[str, Any]:
    return ready("Knative", "r2", "http://latest-shoprank-ranker-predictor.example")


def test_knative_canary_then_full():
    kn = {"profile": "cpu", "deployment_mode": "Knative"}
    api, smoke = ScriptedApi(live(desired(OLD, **kn), ready("Knative", "r1")), status=knative_status), FakeSmoke()
    result = run(api, plan_rollout(api.current, desired(NEW, **kn), canary_percent=25), smoke)
    assert result["outcome"] == "promoted"
    assert [b["spec"]["predictor"].get("canaryTrafficPercent") for b, _ in api.applies] == [25, None]
    assert smoke.calls[0].url == "http://latest-shoprank-ranker-predictor.example" and len(smoke.calls) == 1
    assert [p["name"] for p in result["phases"]] == ["canary", "full"]


def test_knative_canary_failure_sends_traffic_back_then_restores():
    kn = {"profile": "cpu", "deployment_mode": "Knative"}
    api = ScriptedApi(live(desired(OLD, **kn), ready("Knative", "r1")), status=knative_status)
    result = run(api, plan_rollout(api.current, desired(NEW, **kn), canary_percent=25), FakeSmoke(False))
    assert result["outcome"] == "rolled_back"
    assert [(b["spec"]["predictor"].get("canaryTrafficPercent"), b["spec"]["predictor"]["model"]["storageUri"])
            for b, _ in api.applies] == [(25, NEW), (0, NEW), (None, OLD)]


def test_rerun_applies_nothing_and_verifies():
    api, smoke = ScriptedApi(live(desired(NEW))), FakeSmoke(True)
    result = run(api, plan_rollout(api.current, desired(NEW)), smoke)
    assert result["outcome"] == "unchanged" and api.applies == [] and len(smoke.calls) == 1


def test_rerun_of_a_broken_service_is_reported_not_hidden():
    api = ScriptedApi(live(desired(NEW), not_ready("CrashLoopBackOff")))
    result = run(api, plan_rollout(api.current, desired(NEW)), FakeSmoke(), timeout=10)
    assert result["outcome"] == "failed" and api.applies == [] and "CrashLoopBackOff" in result["reason"]


# --- the whole step ------------------------------------------------------------------------------------------


def fake_artefacts(tmp_path: Path) -> tuple[Path, Path, Path]:
    opt, tr = tmp_path / "optimized", tmp_path / "transform"
    (opt / "saved_model").mkdir(parents=True)
    (opt / "saved_model" / "saved_model.pb").write_bytes(b"pb")
    (opt / "model.tflite").write_bytes(b"int8 model")
    tr.mkdir()
    (tr / "transform.json").write_text("{}")
    (tr / "catalogue.parquet").write_bytes(b"PAR1")
    summary = tmp_path / "summary.json"
    summary.write_text("{}")
    return opt, tr, summary


def test_promote_to_kserve_uploads_rolls_out_and_records(tmp_path):
    opt, tr, summary = fake_artefacts(tmp_path)
    mount = tmp_path / "pvc"
    mount.mkdir()
    root = "pvc://shoprank-models/ranker"
    previous = live(desired(f"{root}/{NAME}/v000000000001", profile="cpu"))
    api = ScriptedApi(previous)
    params = PromoteParams(profile="cpu", smoke="none", ready_timeout_s=30)
    record = rollout.promote_to_kserve(opt, tr, summary, model_root=root, model_name=NAME, params=params,
                                       api=api, pvc_mount_path=mount)
    version = record["version"]
    assert record["outcome"] == "promoted" and record["previous_version"] == "v000000000001"
    assert record["storage_uri"] == f"{root}/{NAME}/{version}" and record["smoke"] == "none"
    assert record["action"] == "patch" and record["uploaded"] and record["deploy_target"] == "kserve"
    assert (mount / "ranker" / NAME / version / "transform" / "transform.json").exists()
    assert (mount / "ranker" / NAME / "LATEST").read_text() == version + "\n"
    assert api.applies[0][0]["spec"]["predictor"]["model"]["storageUri"] == record["storage_uri"]
    assert json.loads(json.dumps(record)) == record  # fits the component's output metadata

    again = rollout.promote_to_kserve(opt, tr, summary, model_root=root, model_name=NAME, params=params,
                                      api=ScriptedApi(api.get(NS, NAME)), pvc_mount_path=mount)
    assert again["outcome"] == "unchanged" and again["previous_version"] == version and not again["uploaded"]


def test_promote_to_kserve_gpu_triton_lays_out_the_model_repository_and_adds_the_transformer(tmp_path):
    opt, tr, summary = fake_artefacts(tmp_path)
    mount = tmp_path / "pvc"
    mount.mkdir()
    params = PromoteParams(profile="gpu-triton", smoke="none", ready_timeout_s=30)
    with pytest.raises(ValueError, match="no ONNX export|has none"):  # refused before anything is written
        rollout.promote_to_kserve(opt, tr, summary, model_root="pvc://m", model_name=NAME,
                                  params=replace(params, transformer_image="reg/serving:1"),
                                  api=ScriptedApi(None), pvc_mount_path=mount)
    assert list(mount.iterdir()) == []
    (opt / "onnx").mkdir()
    (opt / "onnx" / "model.onnx").write_bytes(b"onnx")
    (opt / "onnx" / "config.pbtxt").write_text('backend: "onnxruntime"\n')
    with pytest.raises(ValueError, match="transformer_image"):
        rollout.promote_to_kserve(opt, tr, summary, model_root="pvc://m", model_name=NAME, params=params,
                                  api=ScriptedApi(None), pvc_mount_path=mount)
    api = ScriptedApi(None)
    record = rollout.promote_to_kserve(opt, tr, summary, model_root="pvc://m", model_name=NAME,
                                       params=replace(params, transformer_image="reg/serving:1"), api=api,
                                       pvc_mount_path=mount)
    version = record["version"]
    bundle = mount / NAME / version  # pvc://CLAIM/PATH is mounted at the claim
    assert (bundle / "triton" / NAME / "config.pbtxt").read_text() == 'backend: "onnxruntime"\n'
    assert (bundle / "triton" / NAME / "1" / "model.onnx").read_bytes() == b"onnx"
    assert (bundle / "transform" / "catalogue.parquet").exists()  # what the transformer reads
    spec = api.applies[0][0]["spec"]
    assert spec["predictor"]["model"]["storageUri"] == f"pvc://m/{NAME}/{version}/triton"
    assert spec["predictor"]["model"]["runtime"] == "kserve-tritonserver"
    assert spec["transformer"]["storageUris"] == [{"uri": record["storage_uri"], "mountPath": "/mnt/models"}]
    assert spec["transformer"]["containers"][0]["image"] == "reg/serving:1"
    assert record["outcome"] == "promoted"


def test_promote_to_kserve_refuses_a_local_root_and_bad_settings_before_writing(tmp_path):
    opt, tr, summary = fake_artefacts(tmp_path)
    with pytest.raises(ValueError, match="cannot read"):
        rollout.promote_to_kserve(opt, tr, summary, model_root=str(tmp_path / "m"), model_name=NAME,
                                  params=PromoteParams(), api=ScriptedApi(None))
    mount = tmp_path / "pvc"
    mount.mkdir()
    with pytest.raises(ValueError, match="unknown serving profile"):
        rollout.promote_to_kserve(opt, tr, summary, model_root="pvc://m", model_name=NAME,
                                  params=PromoteParams(profile="nope"), api=ScriptedApi(None), pvc_mount_path=mount)
    assert list(mount.iterdir()) == []


def test_promote_to_kserve_records_a_refused_mode_change(tmp_path):
    opt, tr, summary = fake_artefacts(tmp_path)
    mount = tmp_path / "pvc"
    mount.mkdir()
    api = ScriptedApi(live(desired(OLD, profile="cpu")))
    record = rollout.promote_to_kserve(opt, tr, summary, model_root="pvc://m", model_name=NAME,
                                       params=PromoteParams(profile="cpu", deployment_mode="Knative", smoke="none"),
                                       api=api, pvc_mount_path=mount)
    assert record["outcome"] == "failed" and "delete it first" in record["reason"] and api.applies == []
    assert record["previous_storage_uri"] == OLD and record["previous_version"] is None


# --- what KServeApi sends ----------------------------------------------------------------------------------


class Recorder(BaseHTTPRequestHandler):
    """Records requests and answers from `Recorder.answers` (path prefix -> (code, JSON)). It checks what the
    client sends, nothing about how an API server would treat it."""

    seen: list[dict[str, Any]] = []
    answers: dict[str, tuple[int, dict[str, Any]]] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        Recorder.seen.append({"method": self.command, "path": self.path, "headers": headers,
                              "body": json.loads(body) if body else None})
        code, payload = next((v for k, v in Recorder.answers.items() if self.path.startswith(k)), (404, {}))
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PATCH = _answer  # noqa: N815


@pytest.fixture
def recorder():
    from kubernetes import client

    Recorder.seen, Recorder.answers = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}",
                                  api_key={"authorization": "t0ken"}, api_key_prefix={"authorization": "Bearer"})
    yield rollout.KServeApi(client.ApiClient(config))
    server.shutdown()
    server.server_close()


def test_apply_is_a_server_side_apply_request(recorder):
    path = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices/{NAME}"
    body = apply_body(desired())
    Recorder.answers = {path: (200, body)}
    assert recorder.apply(body, field_manager=rollout.FIELD_MANAGER) == body
    recorder.apply(body, field_manager=rollout.FIELD_MANAGER, force=True)
    first, forced = Recorder.seen
    assert first["method"] == "PATCH" and first["path"] == f"{path}?fieldManager=shoprank-promote"
    assert first["headers"]["content-type"] == "application/apply-patch+yaml"
    assert first["headers"]["authorization"] == "Bearer t0ken" and first["body"] == body
    assert forced["path"].endswith("fieldManager=shoprank-promote&force=true")


def test_a_409_becomes_apply_conflict_and_404_none(recorder):
    path = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices/{NAME}"
    Recorder.answers = {path: (409, STATUS_409)}
    with pytest.raises(ApplyConflict) as err:
        recorder.apply(apply_body(desired()), field_manager=rollout.FIELD_MANAGER)
    assert {c.manager for c in err.value.conflicts} == {"shoprank-deploy", "kubectl-edit"}
    Recorder.answers = {}
    assert recorder.get(NS, NAME) is None
    with pytest.raises(DeploymentUnreadable, match="404"):
        recorder.get_predictor_deployment(NS, NAME)
    assert Recorder.seen[-1]["path"] == f"/apis/apps/v1/namespaces/{NS}/deployments/{NAME}-predictor"


def test_shoprank_promotion_modules_import_neither_kfp_nor_kserve():
    code = ("import sys, shoprank.rollout, shoprank.model_store; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('kfp', 'kserve', 'kubernetes', 'boto3')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_pod_problems_say_why_pods_are_not_ready():
    unschedulable = {"metadata": {"name": "p1"}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/4 nodes are available: 2 Insufficient nvidia.com/gpu."}]}}
    crashing = {"metadata": {"name": "p3"}, "status": {"conditions": [{"type": "PodScheduled", "status": "True"}],
                                                       "containerStatuses": [{"name": "kserve-container", "state": {
                                                           "waiting": {"reason": "CrashLoopBackOff"}}}]}}
    leaving = {"metadata": {"name": "p4", "deletionTimestamp": "x"}, "status": unschedulable["status"]}
    problems = rollout.pod_problems([unschedulable, dict(unschedulable, metadata={"name": "p2"}), crashing, leaving])
    assert problems == ["2 predictor pods Pending, Unschedulable: 0/4 nodes are available: 2 Insufficient "
                        "nvidia.com/gpu.", "1 predictor pod container kserve-container CrashLoopBackOff:"]


def test_a_timed_out_phase_reports_the_pod_problems_the_api_sees():
    api = ScriptedApi(live(desired(OLD)), status=lambda *_: not_ready("Progressing"))
    api.predictor_pod_problems = lambda ns, name: ["1 predictor pod Pending, Unschedulable: no GPU"]
    result = run(api, plan_rollout(api.current, desired(NEW)), FakeSmoke(True), timeout=10)
    assert result["outcome"] == "rolled_back" and "Unschedulable: no GPU" in result["reason"]
    assert result["phases"][0]["pod_problems"] == ["1 predictor pod Pending, Unschedulable: no GPU"]


def test_a_failure_of_the_pods_being_replaced_is_not_the_new_versions():
    from shoprank.rollout import failure_of_another_version

    placeholder = ("model BlockedByFailedLoad (ModelLoadFailed: ... Initializing, args: src_uri "
                   "[s3://shoprank-models/shoprank-ranker/latest] dest_path [/mnt/models] ... No model found)")
    new = "s3://shoprank-models/shoprank-ranker/v0123456789ab"
    assert failure_of_another_version(placeholder, new)
    own = placeholder.replace("shoprank-ranker/latest", "shoprank-ranker/v0123456789ab")
    assert not failure_of_another_version(own, new)
    assert not failure_of_another_version("model BlockedByFailedLoad (ModelLoadFailed)", new)  # cannot tell: fail
    assert not failure_of_another_version(placeholder, None)
