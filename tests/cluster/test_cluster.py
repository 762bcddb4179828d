"""shoprank against a real Kubernetes control plane with KServe's CRDs and KServe's controller (`make test-cluster`).

In order: the cluster itself; every overlay through the API server's dry run; `make deploy` of the GPU overlay
(KServe turns it into a Deployment, Service and HPA; the scheduler places the pods on the simulated GPU nodes);
the pipeline runner's RBAC as the API server decides it; the promote step (shoprank.release.kserve.rollout) creating,
patching, re-running, rolling back, and reporting an unschedulable GPU request, as admin and as the pipeline's
own ServiceAccount; the Triton variant (Triton on a simulated GPU node, the transformer for real on the real
node); a scale check (100 GPU nodes, 20 InferenceServices); `make undeploy`.

The promotions here use the GPU profile, whose pods land on the simulated (KWOK) GPU nodes: they run no
containers and are Running and Ready as soon as they are scheduled, so these tests check what the API server
and KServe's controller do (apply semantics, field ownership, RBAC, scheduling), a version "never becomes
Ready" when its pods cannot be scheduled, and no smoke request is sent (smoke="none"). What real pods do (the
CPU overlay on the real node, smoke requests, rollouts under load, a bundle that does not load, the HPA) is in
test_real_node.py.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deploy import cli
from shoprank.release.bundle import publish_bundle
from shoprank.release.kserve import names, plan, profiles, rollout, spec, wait
from shoprank.release.kserve.client import KServeApi
from shoprank.release.kserve.profiles import PromoteParams
from shoprank.release.kserve.rollout import RolloutConfig
from shoprank.release.model_store import LocalStore, S3Store
from tests.support import kserve_crds  # noqa: E402

pytestmark = pytest.mark.cluster

Cluster = Any  # tests/cluster/conftest.py's Cluster (conftest modules are not imported by name)
SERVING_IMAGE = "registry.invalid/shoprank-serving:cluster-test"  # never pulled: the simulated nodes run nothing
NAME = "shoprank-ranker"
RUNNER = "shoprank-pipeline-runner"
RUN = os.urandom(2).hex()  # namespaces are new each session, so a kept cluster (SHOPRANK_KEEP_CLUSTER=1) reruns
NS_DRY, NS_CPU, NS_GPU = f"shoprank-dry-{RUN}", f"shoprank-cpu-{RUN}", f"shoprank-gpu-{RUN}"
NS_PROMOTE, NS_SCALE, NS_TRITON = f"shoprank-promote-{RUN}", f"shoprank-scale-{RUN}", f"shoprank-triton-{RUN}"
NS_TAKEOVER = f"shoprank-takeover-{RUN}"
ISVC_LABEL = "serving.kserve.io/inferenceservice"
SOURCE_URI = "internal.serving.kserve.io/storage-initializer-sourceuri"
GPU_LABEL = ("nvidia.com/gpu.present", "true")
# s3:// as in production. The simulated pods never fetch their bundle, so these promotions publish to a local
# folder (shoprank.release.model_store.LocalStore); the Triton test's transformer runs for real and fetches from the
# cluster's S3 store. On kind,
# KServe's storage initializer gets a dummy credential secret and the simulated pods never run it.
MODEL_ROOT = "s3://shoprank-models/cluster-test"
BUCKET = "shoprank-models"
OVERLAY_HPA = {"cpu": (2, 8, 70), "gpu": (2, 4, 60)}  # min, max, CPU target of manifests/overlays/*


# --- helpers ----------------------------------------------------------------------------------------------------


def deploy(cluster: Cluster, overlay: str, namespace: str, *extra: str) -> str:
    # KServe's pod webhook reads the storage secret the ServiceAccount names (and refuses pods without it).
    cluster.storage_secret(namespace)
    proc = cluster.make("deploy", f"OVERLAY={overlay}", f"NAMESPACE={namespace}", "KFP_UPLOAD=0",
                        f"SERVING_IMAGE={cluster.serving_image}", *extra)
    assert proc.returncode == 0, f"make deploy OVERLAY={overlay} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


_deployed: set[tuple[str, str]] = set()


def triton_prerequisites(cluster: Cluster, namespace: str) -> None:
    """What `make deploy OVERLAY=gpu-triton` checks for: KServe's own kserve-tritonserver ClusterServingRuntime
    (from the release's module, as KServe's cluster resources install it) and the storage secret the model
    reader's ServiceAccount names (manifests/base says to create it). KServe's controller builds the
    transformer's storage initializer itself and refuses to reconcile without that secret."""
    runtime = kserve_crds.runtime_manifest("kserve-tritonserver")
    cluster.kubectl("apply", "--server-side", "-f", str(runtime))
    cluster.storage_secret(namespace)


def undeploy(cluster: Cluster, overlay: str, namespace: str) -> None:
    """`make undeploy`: the objects go, and so does the namespace deploy created (Terminating, then gone)."""
    proc = cluster.make("undeploy", f"OVERLAY={overlay}", f"NAMESPACE={namespace}", "KFP_UPLOAD=0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _deployed.discard((overlay, namespace))
    # The tests create the namespace before deploy (the storage secret KServe's webhook needs goes in first), as a
    # platform engineer would: undeploy then keeps it, saying so, and the test removes it itself.
    assert f"namespace {namespace} was not created by deploy: kept" in proc.stdout, proc.stdout
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")

    def gone():
        got = cluster.kubectl("get", "namespace", namespace, "-o", "json", check=False)
        return got.returncode != 0 or json.loads(got.stdout)["status"]["phase"] == "Terminating"
    cluster.wait_for(f"namespace {namespace} deleted", gone, 60)


def ensure_deployed(cluster: Cluster, overlay: str, namespace: str) -> None:
    if (overlay, namespace) not in _deployed:
        deploy(cluster, overlay, namespace)
        _deployed.add((overlay, namespace))


def condition(obj: dict[str, Any] | None, kind: str) -> str | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond.get("status")
    return None


def node_kinds(cluster: Cluster) -> dict[str, str]:
    out = {}
    for node in cluster.get_json("nodes")["items"]:
        labels = node["metadata"].get("labels") or {}
        out[node["metadata"]["name"]] = "gpu" if labels.get(GPU_LABEL[0]) == GPU_LABEL[1] else "cpu"
    return out


def predictor_pods(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    pods = cluster.get_json("pods", "-n", namespace, "-l", f"{ISVC_LABEL}={name}")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def wait_rolled_out(cluster: Cluster, namespace: str, name: str, storage_uri: str | None = None,
                    timeout: float = 120) -> dict[str, Any]:
    """The predictor Deployment KServe made has rolled out (and runs `storage_uri`, when given)."""
    def done():
        got = cluster.kubectl("get", "deployment", f"{name}-predictor", "-n", namespace, "-o", "json", check=False)
        if got.returncode != 0:
            return None
        dep = json.loads(got.stdout)
        ok, _ = wait.deployment_rolled_out(dep, storage_uri)
        return dep if ok and dep["status"].get("availableReplicas", 0) >= 1 else None
    return cluster.wait_for(f"Deployment {namespace}/{name}-predictor rolled out", done, timeout)


def isvc(cluster: Cluster, namespace: str, name: str = NAME) -> dict[str, Any]:
    return cluster.get_json("inferenceservice", name, "-n", namespace, "--show-managed-fields")


def artefacts(base: Path, content: bytes) -> tuple[Path, Path, Path]:
    """Stand-in optimised model (SavedModel, int8, ONNX export + Triton config) + transform (the bundle version
    is a hash of the content)."""
    opt, tr = base / "optimized", base / "transform"
    (opt / "saved_model").mkdir(parents=True)
    (opt / "saved_model" / "saved_model.pb").write_bytes(b"pb " + content)
    (opt / "model.tflite").write_bytes(b"int8 " + content)
    (opt / "onnx").mkdir()
    (opt / "onnx" / "model.onnx").write_bytes(b"onnx " + content)
    (opt / "onnx" / "config.pbtxt").write_text('backend: "onnxruntime"\n')
    tr.mkdir()
    (tr / "transform.json").write_text("{}")
    # A real (tiny) catalogue: the promote step sizes the predictor's memory from the bundle's tables.
    pq.write_table(pa.table({"item_id": ["i1", "i2", "i3"], "title": ["a", "b", "c"]}), tr / "catalogue.parquet")
    summary = base / "summary.json"
    summary.write_text("{}")
    return opt, tr, summary


PROMOTE_DEFAULTS = {"profile": "gpu", "min_replicas": 1}  # one GPU replica (+1 during a rollout) per service


def promote(api_client: Any, tmp: Path, content: bytes, *, namespace: str, name: str, timeout_s: int = 90,
            **params: Any) -> dict[str, Any]:
    work = tmp / f"{name}-{content.decode()}-{time.monotonic_ns()}"
    opt, tr, summary = artefacts(work, content)
    return rollout.promote_to_kserve(
        opt, tr, summary, model_root=MODEL_ROOT, model_name=name, api=KServeApi(api_client),
        params=PromoteParams(namespace=namespace, smoke="none", ready_timeout_s=timeout_s,
                             **{**PROMOTE_DEFAULTS, **params}),
        store=LocalStore(tmp / "bucket"), config=RolloutConfig(poll_s=1))


# --- the cluster ------------------------------------------------------------------------------------------------


def test_control_plane_nodes_crds_and_kserve_controller(cluster: Cluster):
    if cluster.kind == "local":
        version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
        assert version == cluster.state["versions"]["kubernetes"]
    # RBAC decides (AlwaysAllow would answer yes), for a ServiceAccount nobody granted anything.
    denied = cluster.kubectl("auth", "can-i", "list", "secrets", "-A", "--as=system:serviceaccount:default:default",
                             check=False)
    assert denied.stdout.strip() == "no"
    kinds = node_kinds(cluster)
    cpu_nodes = ["shoprank-node"] if cluster.kind == "local" else ["cpu-node-0", "cpu-node-1"]
    for node in (*cpu_nodes, "gpu-node-0", "gpu-node-1"):
        assert kinds[node] == ("gpu" if node.startswith("gpu") else "cpu"), node
    gpu = cluster.get_json("node", "gpu-node-0")
    assert gpu["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in gpu["spec"]["taints"]
    assert "nvidia.com/gpu" not in cluster.get_json("node", cpu_nodes[0])["status"]["allocatable"]
    assert condition(gpu, "Ready") == "True"
    crd = cluster.get_json("crd", "inferenceservices.serving.kserve.io")
    assert condition(crd, "Established") == "True"
    assert [v["name"] for v in crd["spec"]["versions"] if v["served"]] == ["v1beta1"]
    assert cluster.kserve_controller, "KServe's controller is not running (see the cluster logs)"


# --- manifests: server-side validation --------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", cli.available_overlays())
def test_every_overlay_passes_server_side_dry_run(cluster: Cluster, overlay: str):
    cluster.kubectl("create", "namespace", NS_DRY, check=False)
    if overlay == "gpu-triton":
        triton_prerequisites(cluster, NS_DRY)
    out = deploy(cluster, overlay, NS_DRY, "DRY_RUN=1")
    assert "dry run: the API server accepted all" in out
    # The same objects with plain (client-side) apply, as the issue words it.
    docs = cli.render(cli.Options("deploy", overlay=overlay, namespace=NS_DRY, serving_image=SERVING_IMAGE))
    got = cluster.kubectl("apply", "--dry-run=server", "-f", "-",
                          stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    assert got.stdout.count("(server dry run)") == len(docs)
    assert cluster.get_json("inferenceservices,servingruntimes,roles", "-n", NS_DRY)["items"] == []


def test_the_dry_run_really_validates_against_kserves_schema(cluster: Cluster):
    """A negative control: the same dry run refuses what KServe's CRD schema (or its webhook) refuses."""
    cluster.kubectl("create", "namespace", NS_DRY, check=False)
    docs = cli.render(cli.Options("deploy", overlay="cpu", namespace=NS_DRY, serving_image=SERVING_IMAGE))
    isvc_doc = next(d for d in docs if d["kind"] == "InferenceService")
    for broken, needle in ((("minReplicas", "many"), "minReplicas"), (("replicasPlease", 3), "replicasPlease")):
        bad = json.loads(json.dumps(isvc_doc))
        bad["spec"]["predictor"][broken[0]] = broken[1]
        got = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(bad), check=False)
        assert got.returncode != 0 and needle in got.stderr, got.stderr


# --- make deploy ------------------------------------------------------------------------------------------------


# The CPU overlay's pods run for real on the real node: its deploy is tested with a promoted model in
# test_real_node.py (with the overlay's placeholder storageUri they would wait for a bundle that is not there).
@pytest.mark.parametrize("overlay,namespace", [("gpu", NS_GPU)])
def test_make_deploy_and_what_kserve_makes_of_it(cluster: Cluster, overlay: str, namespace: str):
    t0 = time.monotonic()
    out = deploy(cluster, overlay, namespace)
    _deployed.add((overlay, namespace))
    assert "Kubeflow Pipelines upload skipped (KFP_UPLOAD=0)" in out
    obj = isvc(cluster, namespace)
    assert {m["manager"] for m in obj["metadata"]["managedFields"]} >= {"shoprank-deploy"}
    cluster.wait_for(f"InferenceService {namespace}/{NAME} Ready",
                     lambda: condition(isvc(cluster, namespace), "Ready") == "True", 120)
    dep = wait_rolled_out(cluster, namespace, NAME)
    cluster.timings[f"deploy_{overlay}_to_ready_s"] = round(time.monotonic() - t0, 1)
    template = dep["spec"]["template"]["spec"]
    kinds = node_kinds(cluster)
    pods = predictor_pods(cluster, namespace, NAME)
    assert pods and all(p["spec"].get("nodeName") for p in pods)
    assert {kinds[p["spec"]["nodeName"]] for p in pods} == {overlay}, [p["spec"]["nodeName"] for p in pods]
    container = template["containers"][0]
    if overlay == "gpu":
        assert template["nodeSelector"] == {GPU_LABEL[0]: GPU_LABEL[1]}
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    else:
        assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["image"] == cluster.serving_image
    hpa = cluster.get_json("hpa", f"{NAME}-predictor", "-n", namespace)
    low, high, target = OVERLAY_HPA[overlay]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (low, high)
    metric = hpa["spec"]["metrics"][0]["resource"]
    assert (metric["name"], metric["target"]["averageUtilization"]) == ("cpu", target)
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{NAME}-predictor"
    cluster.get_json("service", f"{NAME}-predictor", "-n", namespace)

    # A second deploy changes nothing.
    generation = isvc(cluster, namespace)["metadata"]["generation"]
    deploy(cluster, overlay, namespace)
    assert isvc(cluster, namespace)["metadata"]["generation"] == generation


def test_gpu_replicas_land_only_on_gpu_nodes(cluster: Cluster):
    """Scale the GPU predictor to 4 replicas (the 4 GPUs of the two GPU nodes): all on GPU nodes."""
    ensure_deployed(cluster, "gpu", NS_GPU)
    cluster.kubectl("patch", "inferenceservice", NAME, "-n", NS_GPU, "--type=merge", "--field-manager=cluster-test",
                    "-p", json.dumps({"spec": {"predictor": {"minReplicas": 4}}}))
    kinds = node_kinds(cluster)

    def four_running():
        pods = [p for p in predictor_pods(cluster, NS_GPU, NAME) if p["status"].get("phase") == "Running"]
        return pods if len(pods) >= 4 else None
    pods = cluster.wait_for("4 GPU predictor pods Running", four_running, 120)
    assert {kinds[p["spec"]["nodeName"]] for p in pods} == {"gpu"}
    assert cluster.get_json("hpa", f"{NAME}-predictor", "-n", NS_GPU)["spec"]["minReplicas"] == 4
    # Give the GPUs back (the HPA would keep 4 replicas for its 5 min scale-down window) and check undeploy.
    undeploy(cluster, "gpu", NS_GPU)
    cluster.wait_for("the GPU pods deleted", lambda: not predictor_pods(cluster, NS_GPU, NAME), 60)


# --- RBAC -------------------------------------------------------------------------------------------------------


def can_i(cluster: Cluster, namespace: str, *args: str) -> bool:
    got = cluster.kubectl("auth", "can-i", *args, f"--as=system:serviceaccount:{namespace}:{RUNNER}", check=False)
    assert got.stdout.strip() in ("yes", "no"), got.stderr
    return got.stdout.strip() == "yes"


def test_pipeline_runner_rbac(cluster: Cluster, promote_ns: str):
    cluster.kubectl("create", "namespace", NS_DRY, check=False)
    ns = ["-n", promote_ns]
    for verb in ("get", "list", "watch", "create", "patch", "update"):
        assert can_i(cluster, promote_ns, verb, "inferenceservices.serving.kserve.io", *ns), verb
    assert can_i(cluster, promote_ns, "patch", f"inferenceservices.serving.kserve.io/{NAME}", *ns)
    refused = [
        ("delete", "inferenceservices.serving.kserve.io", *ns),
        ("get", "secrets", *ns), ("list", "secrets", *ns), ("get", "secret/shoprank-storage", *ns),
        ("patch", "inferenceservices.serving.kserve.io", "-n", NS_DRY),  # another namespace
        ("get", "inferenceservices.serving.kserve.io", "-n", "default"),
        ("list", "inferenceservices.serving.kserve.io", "--all-namespaces"),
        ("patch", "servingruntimes.serving.kserve.io", *ns), ("create", "pods", *ns),
        ("update", "roles", *ns), ("create", "rolebindings", *ns),
        ("get", "nodes"), ("list", "namespaces"), ("create", "namespaces"), ("create", "clusterrolebindings"),
        ("list", "clusterservingruntimes.serving.kserve.io"), ("get", "customresourcedefinitions"),
    ]
    allowed = [args for args in refused if can_i(cluster, promote_ns, *args)]
    assert allowed == [], f"the pipeline runner may do more than promotion needs: {allowed}"


# --- the promote step -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promote_ns(cluster: Cluster) -> str:
    """The shoprank base (ServingRuntime, ServiceAccounts, Role) and the GPU overlay in a namespace; promotion
    creates its own InferenceService (named `ranker-e2e`, so none exists before the first promotion). Two more
    simulated GPU nodes give the promotions room beside the overlay's two replicas."""
    cluster.add_gpu_nodes(["gpu-node-2", "gpu-node-3"])
    ensure_deployed(cluster, "gpu", NS_PROMOTE)
    return NS_PROMOTE


E2E = "ranker-e2e"
_versions: dict[str, str] = {}


def test_first_promotion_creates_the_inference_service(cluster: Cluster, promote_ns: str, tmp_path_factory):
    tmp = tmp_path_factory.getbasetemp() / "promote"
    assert cluster.kubectl("get", "inferenceservice", E2E, "-n", promote_ns, check=False).returncode != 0
    t0 = time.monotonic()
    record = promote(cluster.api_client, tmp, b"v1", namespace=promote_ns, name=E2E)
    cluster.timings["first_promotion_s"] = round(time.monotonic() - t0, 1)
    assert (record["outcome"], record["action"], record["previous_version"]) == ("promoted", "create", None), record
    _versions["v1"] = record["version"]
    obj = isvc(cluster, promote_ns, E2E)
    assert obj["spec"]["predictor"]["model"]["storageUri"] == record["storage_uri"]
    assert "shoprank-promote" in {m["manager"] for m in obj["metadata"]["managedFields"]}
    dep = wait_rolled_out(cluster, promote_ns, E2E, record["storage_uri"])
    assert dep["spec"]["template"]["metadata"]["annotations"][SOURCE_URI] == record["storage_uri"]
    kinds = node_kinds(cluster)
    assert {kinds[p["spec"]["nodeName"]] for p in predictor_pods(cluster, promote_ns, E2E)} == {"gpu"}


def test_second_version_patches_it(cluster: Cluster, promote_ns: str, tmp_path_factory):
    tmp = tmp_path_factory.getbasetemp() / "promote"
    before = isvc(cluster, promote_ns, E2E)
    record = promote(cluster.api_client, tmp, b"v2", namespace=promote_ns, name=E2E)
    assert (record["outcome"], record["action"]) == ("promoted", "patch"), record
    assert record["previous_version"] == _versions["v1"] and record["version"] != _versions["v1"]
    assert record["changes"] == ["spec.predictor.model.storageUri"]
    _versions["v2"] = record["version"]
    after = isvc(cluster, promote_ns, E2E)
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert after["spec"]["predictor"]["model"]["storageUri"] == record["storage_uri"]
    wait_rolled_out(cluster, promote_ns, E2E, record["storage_uri"])


def _settled(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """The object once KServe's controller stopped writing its status (two equal reads 2 s apart)."""
    def stable():
        first = isvc(cluster, namespace, name)
        time.sleep(2)
        second = isvc(cluster, namespace, name)
        same = first["metadata"]["resourceVersion"] == second["metadata"]["resourceVersion"]
        return second if same and condition(second, "Ready") == "True" else None
    return cluster.wait_for("the InferenceService to settle", stable, 60, poll=0)


def test_rerun_with_the_same_version_changes_nothing(cluster: Cluster, promote_ns: str, tmp_path_factory):
    tmp = tmp_path_factory.getbasetemp() / "promote"
    before = _settled(cluster, promote_ns, E2E)
    record = promote(cluster.api_client, tmp, b"v2", namespace=promote_ns, name=E2E)
    assert (record["outcome"], record["action"], record["version"]) == ("unchanged", "noop", _versions["v2"])
    assert record["uploaded"] is False  # the bundle is already in storage
    # Server-side apply of the very same configuration is a no-op for the API server too.
    settings, autoscaling, _ = profiles.serving_settings(PromoteParams(namespace=promote_ns, **PROMOTE_DEFAULTS),
                                                         record["storage_uri"], E2E)
    # Memory as promote sizes it from the bundle (the same bundle, built again in a scratch folder).
    scratch = tmp / f"resize-{time.monotonic_ns()}"
    with contextlib.redirect_stdout(io.StringIO()):
        staged = publish_bundle(*artefacts(scratch, b"v2"), str(scratch / "root"), E2E)
    settings, _ = rollout.size_memory(settings, staged["bundle_dir"])
    desired = spec.desired_inference_service(settings, autoscaling=autoscaling)
    KServeApi(cluster.api_client).apply(plan.apply_body(desired), field_manager=names.FIELD_MANAGER)
    after = isvc(cluster, promote_ns, E2E)
    for key in ("resourceVersion", "generation", "managedFields"):
        assert after["metadata"][key] == before["metadata"][key], key


def test_a_version_that_never_becomes_ready_is_rolled_back(cluster: Cluster, promote_ns: str, tmp_path_factory):
    """v3 asks for GPU nodes labelled for a pool this cluster does not have: its pods never schedule, so the
    predictor never rolls out; after the timeout the previous spec is applied again and v2 keeps serving.
    (test_real_node.py has the real-pod case: a bundle that does not load.)"""
    tmp = tmp_path_factory.getbasetemp() / "promote"
    before = isvc(cluster, promote_ns, E2E)
    t0 = time.monotonic()
    record = promote(cluster.api_client, tmp, b"v3", namespace=promote_ns, name=E2E, timeout_s=20,
                     gpu_node_label="shoprank.dev/gpu-pool=missing")
    cluster.timings["rollback_s"] = round(time.monotonic() - t0, 1)
    assert record["outcome"] == "rolled_back", record
    cluster.notes["never_ready_promotion_reason"] = record["reason"]
    assert record["previous_version"] == _versions["v2"] and record["phases"][0]["timed_out"]
    assert record["rollback"]["applied"] and record["rollback"]["ready"], record["rollback"]
    after = isvc(cluster, promote_ns, E2E)
    v2_uri = before["spec"]["predictor"]["model"]["storageUri"]
    assert after["spec"]["predictor"]["model"]["storageUri"] == v2_uri
    assert after["spec"]["predictor"].get("nodeSelector") == before["spec"]["predictor"].get("nodeSelector")
    assert after["spec"]["predictor"]["model"]["resources"] == before["spec"]["predictor"]["model"]["resources"]
    dep = wait_rolled_out(cluster, promote_ns, E2E, v2_uri)
    assert dep["spec"]["template"]["spec"]["nodeSelector"] == {GPU_LABEL[0]: GPU_LABEL[1]}
    assert (tmp / "bucket" / "cluster-test" / E2E / "LATEST").read_text().strip() == _versions["v2"]


def test_more_gpus_than_any_node_has_stays_pending_and_is_reported(cluster: Cluster, promote_ns: str,
                                                                   tmp_path_factory):
    tmp = tmp_path_factory.getbasetemp() / "promote"
    record = promote(cluster.api_client, tmp, b"v4", namespace=promote_ns, name=E2E, timeout_s=20, gpu_count=16)
    assert record["outcome"] == "rolled_back", record
    cluster.notes["unschedulable_gpu_promotion_reason"] = record["reason"]
    assert "Insufficient nvidia.com/gpu" in record["reason"], record["reason"]
    assert "Unschedulable" in record["reason"], record["reason"]
    wait_rolled_out(cluster, promote_ns, E2E, isvc(cluster, promote_ns, E2E)["spec"]["predictor"]["model"]
                    ["storageUri"])
    assert isvc(cluster, promote_ns, E2E)["spec"]["predictor"]["model"]["storageUri"].endswith(_versions["v2"])


def test_promotion_as_the_pipeline_runner_service_account(cluster: Cluster, promote_ns: str, tmp_path_factory):
    """The promote step with the pipeline runner's own token (as in a KFP pod): its Role suffices. It cannot
    read the Deployment, so readiness rests on the InferenceService status (noted in the record)."""
    from kubernetes import client

    tmp = tmp_path_factory.getbasetemp() / "promote"
    token = cluster.kubectl("create", "token", RUNNER, "-n", promote_ns, "--duration=600s").stdout.strip()
    admin = cluster.api_client.configuration
    conf = client.Configuration()
    conf.host, conf.ssl_ca_cert = admin.host, admin.ssl_ca_cert
    conf.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(conf) as as_runner:
        record = promote(as_runner, tmp, b"v5", namespace=promote_ns, name=E2E)
        assert (record["outcome"], record["previous_version"]) == ("promoted", _versions["v2"]), record
        assert any("not readable (HTTP 403" in n for n in record["phases"][0]["notes"]), record["phases"]
        # The same token cannot reach anything else.
        with pytest.raises(client.exceptions.ApiException) as denied:
            client.CoreV1Api(as_runner).list_namespaced_secret(promote_ns)
        assert denied.value.status == 403
    wait_rolled_out(cluster, promote_ns, E2E, record["storage_uri"])


def test_promotion_takes_over_from_make_deploy_but_not_from_a_person(cluster: Cluster, tmp_path_factory):
    """Field ownership as the API server keeps it: the InferenceService `make deploy` created (placeholder
    storageUri, manager shoprank-deploy) is taken over by the promote step; a later `make deploy` leaves it alone;
    a value a person set with another manager is not overwritten: the promotion fails and names the field."""
    ensure_deployed(cluster, "gpu", NS_TAKEOVER)
    tmp = tmp_path_factory.getbasetemp() / "takeover"
    record = promote(cluster.api_client, tmp, b"t1", namespace=NS_TAKEOVER, name=NAME)
    assert (record["outcome"], record["action"], record["forced_from"]) == ("promoted", "patch", ["shoprank-deploy"])
    owners = {m["manager"]: m for m in isvc(cluster, NS_TAKEOVER)["metadata"]["managedFields"]}
    assert "f:storageUri" in json.dumps(owners["shoprank-promote"]["fieldsV1"])
    assert "f:storageUri" not in json.dumps(owners["shoprank-deploy"].get("fieldsV1", {}))
    wait_rolled_out(cluster, NS_TAKEOVER, NAME, record["storage_uri"])

    out = deploy(cluster, "gpu", NS_TAKEOVER)
    assert "managed by the pipeline's promote step" in out
    assert isvc(cluster, NS_TAKEOVER)["spec"]["predictor"]["model"]["storageUri"] == record["storage_uri"]

    cluster.kubectl("patch", "inferenceservice", NAME, "-n", NS_TAKEOVER, "--type=merge", "--field-manager=oncall",
                    "-p", json.dumps({"spec": {"predictor": {"maxReplicas": 12}}}))
    refused = promote(cluster.api_client, tmp, b"t2", namespace=NS_TAKEOVER, name=NAME)
    assert refused["outcome"] == "failed", refused
    assert "maxReplicas" in refused["reason"] and "oncall" in refused["reason"], refused["reason"]
    live = isvc(cluster, NS_TAKEOVER)
    assert live["spec"]["predictor"]["maxReplicas"] == 12
    assert live["spec"]["predictor"]["model"]["storageUri"] == record["storage_uri"]


# --- the Triton variant -----------------------------------------------------------------------------------------


def test_gpu_triton_promotion_runs_triton_on_gpu_behind_the_transformer(cluster: Cluster, s3: Any, tiny_bundle,
                                                                         tiny_features):
    """`make deploy OVERLAY=gpu-triton`, then the promote step with serving_profile=gpu-triton and the session's
    tiny model: KServe's controller makes a Triton predictor (KServe's own kserve-tritonserver runtime, on a
    simulated GPU node) that loads the bundle's triton/ model repository, and a transformer, which runs for real
    on the real node: KServe's storage initializer fetches the bundle from the cluster's S3 store and the
    transformer loads it and becomes Ready."""
    # Without the storage secret (KServe's controller would fail the transformer with `secrets
    # "shoprank-storage" not found`, as this test found out), make deploy stops and says so.
    refused = cluster.make("deploy", "OVERLAY=gpu-triton", f"NAMESPACE={NS_TRITON}", "KFP_UPLOAD=0",
                           f"SERVING_IMAGE={cluster.serving_image}")
    assert refused.returncode != 0 and "secret shoprank-storage is missing" in refused.stdout + refused.stderr
    triton_prerequisites(cluster, NS_TRITON)
    ensure_deployed(cluster, "gpu-triton", NS_TRITON)
    prefix = f"triton-{RUN}"
    record = rollout.promote_to_kserve(
        tiny_bundle["optimized_dir"], tiny_features[1], tiny_bundle["bundle_dir"] / "summary.json",
        model_root=f"s3://{BUCKET}/{prefix}", model_name=NAME, api=KServeApi(cluster.api_client),
        params=PromoteParams(profile="gpu-triton", namespace=NS_TRITON, smoke="none", ready_timeout_s=240,
                             transformer_image=cluster.serving_image),
        store=S3Store(BUCKET, s3), config=RolloutConfig(poll_s=2))
    assert (record["outcome"], record["action"]) == ("promoted", "patch"), record
    bundle = record["storage_uri"]
    repository = f"{bundle}/triton"
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/{NAME}/{record['version']}/")
    keys = {o["Key"].split(record["version"] + "/", 1)[1] for o in listed.get("Contents", [])}
    assert {f"triton/{NAME}/1/model.onnx", f"triton/{NAME}/config.pbtxt", "transform/transform.json"} <= keys
    obj = isvc(cluster, NS_TRITON)
    assert obj["spec"]["predictor"]["model"]["storageUri"] == repository
    assert obj["spec"]["transformer"]["storageUris"][0]["uri"] == bundle
    dep = wait_rolled_out(cluster, NS_TRITON, NAME, repository)
    kinds = node_kinds(cluster)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "tritonserver" and "--model-store=/mnt/models" in container["args"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {kinds[p["spec"]["nodeName"]] for p in predictor_pods(cluster, NS_TRITON, NAME)
            if p["metadata"]["labels"].get("component") == "predictor"} == {"gpu"}

    def transformer_rolled_out():
        got = cluster.kubectl("get", "deployment", f"{NAME}-transformer", "-n", NS_TRITON, "-o", "json", check=False)
        if got.returncode:
            return None
        found = json.loads(got.stdout)
        inits = found["spec"]["template"]["spec"].get("initContainers") or []
        fetches = any(bundle in (c.get("args") or []) for c in inits)
        ok, _ = wait.deployment_rolled_out(found)
        return found if ok and fetches else None
    transformer = cluster.wait_for("the transformer Deployment fetching the bundle", transformer_rolled_out, 240)
    spec = transformer["spec"]["template"]["spec"]
    [main] = [c for c in spec["containers"] if c["name"] == "kserve-container"]
    assert main["image"] == cluster.serving_image and "--model_dir=/mnt/models" in main["args"]
    assert any(a.startswith("--predictor_host") for a in main["args"]), main["args"]  # KServe wires it to Triton
    assert "nvidia.com/gpu" not in json.dumps(main["resources"])
    cluster.wait_for("the InferenceService Ready", lambda: condition(isvc(cluster, NS_TRITON), "Ready") == "True", 90)
    if cluster.kind == "local":  # the transformer ran for real: on the real node, its initializer exited 0
        running = [p for p in predictor_pods(cluster, NS_TRITON, NAME)
                   if p["metadata"]["labels"].get("component") == "transformer"]
        assert running and {p["spec"]["nodeName"] for p in running} == {"shoprank-node"}
        for pod in running:
            [init] = pod["status"]["initContainerStatuses"]
            assert init["state"]["terminated"]["exitCode"] == 0, init
    undeploy(cluster, "gpu-triton", NS_TRITON)  # frees the real node for test_real_node.py


# --- scale -------------------------------------------------------------------------------------------------------


def test_scale_100_gpu_nodes_20_inference_services(cluster: Cluster, tmp_path_factory):
    from kubernetes import config

    t0 = time.monotonic()
    cluster.add_gpu_nodes([f"gpu-scale-{i:03d}" for i in range(100)])
    cluster.timings["scale_add_100_nodes_s"] = round(time.monotonic() - t0, 1)
    ensure_deployed(cluster, "gpu", NS_SCALE)
    tmp = tmp_path_factory.getbasetemp() / "scale"
    names = [f"ranker-{i:02d}" for i in range(20)]

    def one(name: str, content: bytes) -> dict[str, Any]:
        api_client = config.new_client_from_config(config_file=cluster.kubeconfig)
        try:
            return promote(api_client, tmp, content, namespace=NS_SCALE, name=name, profile="gpu", timeout_s=240)
        finally:
            api_client.close()

    for step, content in (("create", b"s1"), ("patch", b"s2")):
        t1 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=5) as pool:
            records = dict(zip(names, pool.map(lambda n, c=content: one(n, c), names)))
        cluster.timings[f"scale_promote_20_{step}_s"] = round(time.monotonic() - t1, 1)
        bad = {n: (r["outcome"], r["reason"]) for n, r in records.items()
               if (r["outcome"], r["action"]) != ("promoted", step)}
        assert not bad, bad
    kinds = node_kinds(cluster)
    assert sum(1 for k in kinds.values() if k == "gpu") >= 102
    for name, record in records.items():
        dep = wait_rolled_out(cluster, NS_SCALE, name, record["storage_uri"], timeout=60)
        assert dep["spec"]["template"]["metadata"]["annotations"][SOURCE_URI] == record["storage_uri"]
        pods = predictor_pods(cluster, NS_SCALE, name)
        assert pods and {kinds[p["spec"]["nodeName"]] for p in pods} == {"gpu"}, name
    cluster.timings["scale_total_s"] = round(time.monotonic() - t0, 1)


# --- make undeploy ---------------------------------------------------------------------------------------------


def test_make_undeploy_removes_what_deploy_created(cluster: Cluster):
    ensure_deployed(cluster, "cpu", NS_CPU)
    undeploy(cluster, "cpu", NS_CPU)
    cluster.wait_for("the CPU predictor pods deleted", lambda: not predictor_pods(cluster, NS_CPU, NAME), 60)
