"""Planning (shoprank.release.kserve.plan): merge patches, apply bodies, rollout phases (canary only in Knative,
idempotent reruns), what a rollback re-applies, and which conflicts to force.
"""

from __future__ import annotations

import json

import pytest

from shoprank.errors import PlanError
from shoprank.release.kserve.names import TAG_ROUTING_ANNOTATION
from shoprank.release.kserve.plan import (
    Conflict,
    apply_body,
    full_rollout_patch,
    parse_conflicts,
    plan_promotion,
    plan_rollout,
    resolve_conflicts,
    rollback_spec,
)
from shoprank.release.kserve.spec import GPU_RESOURCE, ServingSettings, build_inference_service
from tests.release.kserve.support import (
    NEW,
    OLD,
    STATUS_409,
    V1,
    V2,
    apply_merge_patch,
    as_live,
    desired,
    live,
    ready,
    ready_status,
)


def test_plan_creates_when_nothing_is_deployed():
    desired = build_inference_service(ServingSettings(storage_uri=V1))
    plan = plan_promotion(None, desired)
    assert plan.action == "create" and plan.body == desired
    assert plan.body is not desired  # a copy: the caller may send it without aliasing


def test_plan_patches_a_new_model_version_with_a_minimal_merge_patch():
    current = as_live(build_inference_service(ServingSettings(storage_uri=V1)))
    desired = build_inference_service(ServingSettings(storage_uri=V2))
    plan = plan_promotion(current, desired)
    assert plan.action == "patch"
    assert plan.body == {"spec": {"predictor": {"model": {"storageUri": V2}}}}
    assert plan.changes == ("spec.predictor.model.storageUri",)
    assert V1 in plan.reason and V2 in plan.reason


def test_rerun_after_patch_is_a_noop():
    current = as_live(build_inference_service(ServingSettings(storage_uri=V1)))
    desired = build_inference_service(ServingSettings(storage_uri=V2))
    plan = plan_promotion(current, desired)
    patched = apply_merge_patch(current, plan.body)
    again = plan_promotion(patched, desired)
    assert again.action == "noop" and again.body is None
    assert V2 in again.reason


def test_rerun_of_the_same_model_is_a_noop_despite_server_fields():
    desired = build_inference_service(ServingSettings(storage_uri=V1))
    current = as_live(desired)
    current["metadata"]["annotations"]["team"] = "search"  # someone else's annotation
    current["metadata"]["labels"]["extra"] = "x"
    current["spec"]["predictor"]["model"]["resources"]["limits"]["cpu"] = 2  # a number, same quantity
    assert plan_promotion(current, desired).action == "noop"


def test_plan_patches_resources_and_removes_what_is_no_longer_wanted():
    gpu = ServingSettings(storage_uri=V1, model_format="shoprank-savedmodel", backend="savedmodel",
                          use_gpu=True, max_replicas=4)
    cpu = ServingSettings(storage_uri=V1, max_replicas=4)
    current = as_live(build_inference_service(gpu))
    desired = build_inference_service(cpu)
    plan = plan_promotion(current, desired)
    assert plan.action == "patch"
    predictor = plan.body["spec"]["predictor"]
    assert predictor["nodeSelector"] is None and predictor["tolerations"] is None
    assert predictor["model"]["resources"]["limits"][GPU_RESOURCE] is None
    assert predictor["model"]["args"] == ["--backend=tflite"]
    assert predictor["model"]["modelFormat"] == {"name": "shoprank-tflite"}
    patched = apply_merge_patch(current, plan.body)
    assert GPU_RESOURCE not in str(patched["spec"])
    assert patched["spec"]["predictor"]["model"]["name"] == "kserve-container"  # untouched
    assert plan_promotion(patched, desired).action == "noop"


def test_plan_refuses_a_deployment_mode_change():
    current = as_live(build_inference_service(ServingSettings(storage_uri=V1)))
    desired = build_inference_service(ServingSettings(storage_uri=V2, deployment_mode="Knative"))
    with pytest.raises(PlanError, match="cannot change"):
        plan_promotion(current, desired)


def test_plan_accepts_the_legacy_name_of_the_same_mode():
    current = as_live(build_inference_service(ServingSettings(storage_uri=V1)))
    current["status"]["deploymentMode"] = "RawDeployment"
    assert plan_promotion(current, build_inference_service(ServingSettings(storage_uri=V1))).action == "noop"


def test_plan_waits_for_a_deletion():
    current = as_live(build_inference_service(ServingSettings(storage_uri=V1)))
    current["metadata"]["deletionTimestamp"] = "2026-01-02T00:00:00Z"
    with pytest.raises(PlanError, match="being deleted"):
        plan_promotion(current, build_inference_service(ServingSettings(storage_uri=V2)))


def test_plan_rejects_another_object():
    current = as_live(build_inference_service(ServingSettings(storage_uri=V1, name="other")))
    with pytest.raises(ValueError, match="is not shoprank/shoprank-ranker"):
        plan_promotion(current, build_inference_service(ServingSettings(storage_uri=V1)))


def knative(storage_uri: str, canary: int | None = None) -> ServingSettings:
    return ServingSettings(storage_uri=storage_uri, deployment_mode="Knative", scale_metric="concurrency",
                           scale_target=8, canary_traffic_percent=canary)


def test_canary_goes_with_a_new_model_in_knative():
    current = as_live(build_inference_service(knative(V1)), **ready_status("Knative"))
    plan = plan_promotion(current, build_inference_service(knative(V2, canary=10)))
    assert plan.action == "patch"
    assert plan.body["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert "canary gets 10%" in plan.reason


def test_canary_is_dropped_on_create():
    plan = plan_promotion(None, build_inference_service(knative(V1, canary=10)))
    assert plan.action == "create"
    assert "canaryTrafficPercent" not in plan.body["spec"]["predictor"]


def test_canary_alone_never_patches_and_rerun_mid_canary_is_a_noop():
    desired = build_inference_service(knative(V2, canary=10))
    fully_rolled_out = as_live(build_inference_service(knative(V2)), **ready_status("Knative"))
    assert plan_promotion(fully_rolled_out, desired).action == "noop"
    mid_canary = as_live(desired, **ready_status("Knative"))
    assert plan_promotion(mid_canary, desired).action == "noop"


def test_full_rollout_ends_the_canary_and_a_leftover_split_is_removed():
    live = as_live(build_inference_service(knative(V2, canary=10)), **ready_status("Knative"))
    done = apply_merge_patch(live, full_rollout_patch())
    assert "canaryTrafficPercent" not in done["spec"]["predictor"]
    plan = plan_promotion(live, build_inference_service(knative(V2)))
    assert plan.action == "patch"
    assert plan.body == {"spec": {"predictor": {"canaryTrafficPercent": None}}}


def test_rollback_restores_the_previous_spec():
    previous = as_live(build_inference_service(ServingSettings(storage_uri=V1)))
    rollback = rollback_spec(previous, name="shoprank-ranker", namespace="shoprank")
    assert rollback.action == "restore" and V1 in rollback.reason
    manifest = rollback.manifest
    assert "status" not in manifest
    for server_field in ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields"):
        assert server_field not in manifest["metadata"]
    assert "kubectl.kubernetes.io/last-applied-configuration" not in manifest["metadata"]["annotations"]
    assert manifest["spec"] == previous["spec"] and manifest["spec"] is not previous["spec"]

    # the failed promotion is live now; planning towards the restored manifest patches the old model back
    failed = as_live(build_inference_service(ServingSettings(storage_uri=V2)))
    plan = plan_promotion(failed, manifest)
    assert plan.action == "patch" and plan.body == {"spec": {"predictor": {"model": {"storageUri": V1}}}}
    assert plan_promotion(apply_merge_patch(failed, plan.body), manifest).action == "noop"


def test_rollback_of_a_knative_canary_takes_all_traffic_back():
    previous = as_live(build_inference_service(knative(V1)), **ready_status("Knative"))
    failed = as_live(build_inference_service(knative(V2, canary=10)), **ready_status("Knative"))
    manifest = rollback_spec(previous, name="shoprank-ranker", namespace="shoprank").manifest
    plan = plan_promotion(failed, manifest)
    assert plan.body["spec"]["predictor"]["canaryTrafficPercent"] is None
    assert plan.body["spec"]["predictor"]["model"] == {"storageUri": V1}


def test_rollback_without_a_previous_is_a_deletion():
    rollback = rollback_spec(None, name="shoprank-ranker", namespace="shoprank")
    assert rollback.action == "delete" and rollback.manifest is None
    assert (rollback.name, rollback.namespace) == ("shoprank-ranker", "shoprank")


def test_rollback_rejects_another_object():
    previous = as_live(build_inference_service(ServingSettings(storage_uri=V1, name="other")))
    with pytest.raises(ValueError, match="is not shoprank/shoprank-ranker"):
        rollback_spec(previous, name="shoprank-ranker", namespace="shoprank")


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
    assert body["metadata"]["annotations"][TAG_ROUTING_ANNOTATION] == "true"
    assert body["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert TAG_ROUTING_ANNOTATION not in apply_body(desired())["metadata"]["annotations"]


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


def test_parse_conflicts():
    assert parse_conflicts(json.dumps(STATUS_409)) == [
        Conflict("shoprank-deploy", ".spec.predictor.model.storageUri"),
        Conflict("kubectl-edit", ".spec.predictor.maxReplicas")]
    assert parse_conflicts("not json") == [] and parse_conflicts(None) == []


def test_force_only_over_the_deploy_manager():
    deploy_only = [Conflict("shoprank-deploy", ".spec.predictor.model.storageUri")]
    assert resolve_conflicts(deploy_only)[0]
    both = parse_conflicts(STATUS_409)
    force, why = resolve_conflicts(both)
    assert not force and "kubectl-edit" in why and "force_conflicts" in why
    assert resolve_conflicts(both, force_all=True)[0]
    assert not resolve_conflicts([])[0]
