"""The driver (shoprank.release.kserve.rollout): the verdict on a phase, the order of calls `run_rollout` makes
(through `ScriptedApi`, see tests/release/kserve/support.py), and the whole promote step `promote_to_kserve`.

What is not tested here: the Kubernetes API server's behaviour (server-side apply, field ownership, defaulting,
validation, RBAC). Those are tested against a real kube-apiserver with KServe's CRDs in tests/cluster
(`make test-cluster`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shoprank.release.kserve import rollout, sizing
from shoprank.release.kserve.plan import Conflict, apply_body, plan_rollout
from shoprank.release.kserve.profiles import PromoteParams
from shoprank.release.kserve.rollout import decide_after_rollout
from tests.release.kserve.support import (
    ADDRESS,
    NAME,
    NEW,
    NS,
    OLD,
    FakeSmoke,
    ScriptedApi,
    desired,
    live,
    not_ready,
    ready,
    run,
)

REPO = Path(__file__).resolve().parents[3]



def test_promoted_when_ready_and_smoke_passes():
    outcome = decide_after_rollout(ready=True, smoke_ok=True, timed_out=False)
    assert outcome.promoted and outcome.status == "promoted"


def test_rolled_back_on_timeout():
    outcome = decide_after_rollout(ready=False, smoke_ok=None, timed_out=True, detail="Ready: Unknown")
    assert outcome.status == "rolled_back" and not outcome.promoted
    assert outcome.reason == "not ready before the timeout: Ready: Unknown"
    # the deadline wins even if readiness arrived with it
    assert decide_after_rollout(ready=True, smoke_ok=True, timed_out=True).status == "rolled_back"


def test_rolled_back_on_failed_smoke():
    outcome = decide_after_rollout(ready=True, smoke_ok=False, timed_out=False, detail="NDCG 0.0")
    assert outcome.status == "rolled_back" and outcome.reason == "smoke test failed: NDCG 0.0"


def test_rolled_back_when_rollout_failed_or_smoke_did_not_run():
    assert decide_after_rollout(False, None, False).reason == "rollout failed"
    assert decide_after_rollout(True, None, False).status == "rolled_back"


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


def test_a_timed_out_phase_reports_the_pod_problems_the_api_sees():
    api = ScriptedApi(live(desired(OLD)), status=lambda *_: not_ready("Progressing"))
    api.predictor_pod_problems = lambda ns, name: ["1 predictor pod Pending, Unschedulable: no GPU"]
    result = run(api, plan_rollout(api.current, desired(NEW)), FakeSmoke(True), timeout=10)
    assert result["outcome"] == "rolled_back" and "Unschedulable: no GPU" in result["reason"]
    assert result["phases"][0]["pod_problems"] == ["1 predictor pod Pending, Unschedulable: no GPU"]


def fake_artefacts(tmp_path: Path) -> tuple[Path, Path, Path]:
    opt, tr = tmp_path / "optimized", tmp_path / "transform"
    (opt / "saved_model").mkdir(parents=True)
    (opt / "saved_model" / "saved_model.pb").write_bytes(b"pb")
    (opt / "model.tflite").write_bytes(b"int8 model")
    tr.mkdir()
    (tr / "transform.json").write_text("{}")
    ids = [f"sku-{i}" for i in range(50)]
    pq.write_table(pa.table({"item_id": ids, "title": ["a title"] * 50, "category": ["c"] * 50,
                             "brand": ["b"] * 50, "price": [9.5] * 50}), tr / "catalogue.parquet")
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
    # Memory from the bundle (shoprank.release.kserve.sizing), not the profile's fixed 1Gi / 2Gi.
    need = sizing.memory_need(mount / "ranker" / NAME / version, "tflite")
    memory = {k: v["memory"] for k, v in api.applies[0][0]["spec"]["predictor"]["model"]["resources"].items()}
    assert memory == {"requests": need.request, "limits": need.limit} == {"requests": "320Mi", "limits": "448Mi"}
    assert any("memory sized from the bundle" in n and "50 catalogue items" in n for n in record["notes"])

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


def test_promote_to_kserve_refuses_a_bundle_too_large_for_the_profile_with_the_number_it_needs(tmp_path,
                                                                                               monkeypatch):
    opt, tr, summary = fake_artefacts(tmp_path)
    mount = tmp_path / "pvc"
    mount.mkdir()
    monkeypatch.setattr(sizing, "ITEM_BYTES", 100 << 20)  # 50 items of 100 MiB each: ~5 GiB
    with pytest.raises(sizing.TooLarge, match=r"needs a memory limit of \d+Mi .* above the profile's max_memory 1Gi"):
        rollout.promote_to_kserve(opt, tr, summary, model_root="pvc://m", model_name=NAME,
                                  params=PromoteParams(profile="kind", smoke="none"), api=ScriptedApi(None),
                                  pvc_mount_path=mount)
    assert list(mount.iterdir()) == []  # refused before the upload


def test_promote_to_kserve_sends_the_smoke_request_with_the_bundles_catalogue_ids(tmp_path):
    opt, tr, summary = fake_artefacts(tmp_path)
    mount = tmp_path / "pvc"
    mount.mkdir()
    seen = []

    def smoke(ctx):
        seen.append(ctx.items)
        return FakeSmoke(True)(ctx)

    record = rollout.promote_to_kserve(opt, tr, summary, model_root="pvc://m", model_name=NAME,
                                       params=PromoteParams(profile="cpu", ready_timeout_s=30),
                                       api=ScriptedApi(None), smoke=smoke, pvc_mount_path=mount)
    assert record["outcome"] == "promoted", record["reason"]
    assert seen and all(len(items) == 3 and all(i.startswith("sku-") for i in items) for items in seen)


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


def test_shoprank_promotion_modules_import_neither_kfp_nor_kserve():
    code = ("import sys, shoprank.release.kserve.rollout, shoprank.release.model_store; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('kfp', 'kserve', 'kubernetes', 'boto3')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
