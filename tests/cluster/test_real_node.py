"""Real pods on the local cluster's real node (kubelet + containerd in the node's network namespace), with
KServe's pod webhook and storage initializer running for real (`make test-cluster`).

In order, in one namespace: `make deploy OVERLAY=cpu`, then the promote step with the smoke request on (the
InferenceService becomes Ready on pods of the serving image built from this checkout, which fetched the bundle
from the cluster's S3 store; a ranking request through the Service answers the in-process ranker's scores);
kube-score over what KServe rendered, against the accepted findings; a second version rolled out under a
bounded request loop (no failed request, the answering model_version switches); a version whose bundle does not
load (the server stays up, never Ready): promote rolls back while the old pods keep answering; the HPA with
metrics-server: 1 -> 2 replicas under a bounded load and back to 1 after it (the local cluster's HPA windows
are shortened, hack/cluster/localcluster.py).

Requests go through the API server's service proxy (`kubectl proxy`, tests/cluster/conftest.py): the API
server sends each one to a ready endpoint of the predictor Service, as a Service address would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from shoprank.layout import REQUEST_TOWER_FILE, TOWERS_DIR
from shoprank.release.kserve import names, rollout
from shoprank.release.kserve.client import KServeApi
from shoprank.release.kserve.profiles import PromoteParams
from shoprank.release.kserve.rollout import RolloutConfig
from shoprank.release.model_store import S3Store

pytestmark = pytest.mark.cluster

Cluster = Any
NAME = "shoprank-ranker"  # the overlay's InferenceService (its NetworkPolicy and PDB select this name)
RUN = os.urandom(2).hex()
NS = f"shoprank-real-{RUN}"
BUCKET = "shoprank-models"
MODEL_ROOT = f"s3://{BUCKET}/real-{RUN}"
ISVC_LABEL = "serving.kserve.io/inferenceservice"
ACCEPTED = Path(__file__).with_name("kube-score-accepted.yaml")
LOOP_RATE = 20.0  # requests per second of the rollout loops


# --- bundles ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Artefacts:
    optimized: Path
    transform: Path
    summary: Path


@pytest.fixture(scope="module")
def artefacts(tiny_bundle, tiny_features, tmp_path_factory) -> dict[str, Artefacts]:
    """Three versions from the session's tiny model: v1 as trained; v2 the same model with its transform file
    rewritten (other bytes, same content: a new version that scores the same); broken, whose int8 request
    tower is not a model (the server starts, fails to load it, and stays not ready)."""
    base = tmp_path_factory.mktemp("real-node-artefacts")
    optimized, transform = tiny_bundle["optimized_dir"], tiny_features[1]
    summary = tiny_bundle["bundle_dir"] / "summary.json"
    v2_transform = base / "v2-transform"
    shutil.copytree(transform, v2_transform)
    payload = json.loads((v2_transform / "transform.json").read_text())
    (v2_transform / "transform.json").write_text(json.dumps(payload, indent=1, sort_keys=True))
    broken = base / "broken-optimized"
    shutil.copytree(optimized, broken)
    (broken / TOWERS_DIR / REQUEST_TOWER_FILE).write_bytes(b"not a flatbuffer")  # what the int8 backend loads
    return {"v1": Artefacts(optimized, transform, summary), "v2": Artefacts(optimized, v2_transform, summary),
            "broken": Artefacts(broken, transform, summary)}


@pytest.fixture(scope="module")
def golden(tiny_bundle) -> list[dict[str, Any]]:
    return json.loads((tiny_bundle["features_dir"] / "golden_requests.json").read_text())


def ranking_body(g: dict[str, Any]) -> dict[str, Any]:
    return {"inputs": [
        {"name": "query", "datatype": "BYTES", "shape": [1], "data": [g["query"]]},
        {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": [g["user_id"]]},
        {"name": "candidates", "datatype": "BYTES", "shape": [len(g["candidates"])], "data": g["candidates"]},
        {"name": "history", "datatype": "BYTES", "shape": [len(g["history"])], "data": g["history"]},
    ]}


# --- the cluster side ---------------------------------------------------------------------------------------


def post(url: str, body: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback kubectl proxy
        return json.loads(response.read())


def infer_url(api_proxy: Any) -> str:
    return api_proxy.service_url(NS, f"{NAME}-predictor") + f"/v2/models/{NAME}/infer"


def pods(cluster: Cluster) -> list[dict[str, Any]]:
    items = cluster.get_json("pods", "-n", NS, "-l", f"{ISVC_LABEL}={NAME},component=predictor")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def ready_pods(cluster: Cluster) -> list[dict[str, Any]]:
    return [p for p in pods(cluster)
            if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])]


def promote(cluster: Cluster, s3: Any, api_proxy: Any, version: Artefacts, *, timeout_s: int = 240,
            **params: Any) -> dict[str, Any]:
    """The promote step as the pipeline runs it, with the smoke request on, sent through the API server's
    service proxy (the Service's cluster DNS name does not resolve on this machine)."""
    smoke_url = api_proxy.service_url(NS, f"{NAME}-predictor")
    return rollout.promote_to_kserve(
        version.optimized, version.transform, version.summary, model_root=MODEL_ROOT, model_name=NAME,
        api=KServeApi(cluster.api_client),
        params=PromoteParams(profile="cpu", namespace=NS, smoke="ranking", smoke_url=smoke_url,
                             ready_timeout_s=timeout_s, **params),
        store=S3Store(BUCKET, s3), config=RolloutConfig(poll_s=2, smoke_timeout_s=60))


@dataclass
class Loop:
    """A bounded request loop (LOOP_RATE requests/s, at most `limit_s` seconds) against the predictor Service;
    records every answer's model_version and every failure."""

    url: str
    body: dict[str, Any]
    rate: float = LOOP_RATE
    limit_s: float = 600
    versions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        start = time.monotonic()
        sent = 0
        while not self._stop.is_set() and time.monotonic() - start < self.limit_s:
            try:
                answer = post(self.url, self.body)
                self.versions.append(answer.get("model_version", ""))
            except (urllib.error.URLError, OSError, ValueError) as exc:
                detail = exc.read()[:200] if isinstance(exc, urllib.error.HTTPError) else ""
                self.failures.append(f"{time.monotonic() - start:.1f}s {type(exc).__name__}: {exc} {detail!r}")
            sent += 1
            delay = start + sent / self.rate - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)

    def __enter__(self) -> Loop:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(30)

    def switches(self) -> list[str]:
        """The answering versions in order, repeats collapsed (v1, v2 means one switch)."""
        out: list[str] = []
        for v in self.versions:
            if not out or out[-1] != v:
                out.append(v)
        return out


# --- tests -----------------------------------------------------------------------------------------------------

_state: dict[str, Any] = {}


@pytest.fixture(scope="module")
def deployed(cluster: Cluster):
    """`make deploy OVERLAY=cpu` with this checkout's serving image into a namespace with the storage secret;
    undeployed at the end (the real node's two cores are shared by every real-pod test)."""
    cluster.storage_secret(NS)
    proc = cluster.make("deploy", "OVERLAY=cpu", f"NAMESPACE={NS}", "KFP_UPLOAD=0",
                        f"SERVING_IMAGE={cluster.serving_image}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield NS
    proc = cluster.make("undeploy", "OVERLAY=cpu", f"NAMESPACE={NS}", "KFP_UPLOAD=0")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_real_node_is_ready_beside_the_simulated_gpu_nodes(cluster: Cluster):
    from hack.cluster import node

    nodes = {n["metadata"]["name"]: n for n in cluster.get_json("nodes")["items"]}
    real = nodes[node.NODE_NAME]
    assert {c["type"]: c["status"] for c in real["status"]["conditions"]}["Ready"] == "True"
    assert real["metadata"]["labels"]["shoprank.dev/node-kind"] == "cpu"
    assert "kwok.x-k8s.io/node" not in (real["metadata"].get("annotations") or {})
    assert {"type": "InternalIP", "address": node.NODE_IP} in real["status"]["addresses"]
    assert real["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert real["status"]["nodeInfo"]["kubeletVersion"] == cluster.state["versions"]["kubernetes"]
    simulated = {n for n, v in nodes.items() if (v["metadata"].get("annotations") or {}).get("kwok.x-k8s.io/node")}
    assert simulated and all(nodes[n]["metadata"]["labels"].get("nvidia.com/gpu.present") == "true"
                             for n in simulated)
    # The API server reaches the kubelet at the node's address (what logs, exec and port-forward need).
    health = cluster.kubectl("get", "--raw", f"/api/v1/nodes/{node.NODE_NAME}/proxy/healthz").stdout
    assert health.strip() == "ok"


def test_deploy_then_promote_with_smoke_serves_the_in_process_scores(cluster: Cluster, deployed: str, s3: Any,
                                                                      api_proxy: Any, artefacts, golden,
                                                                      tiny_bundle):
    t0 = time.monotonic()
    record = promote(cluster, s3, api_proxy, artefacts["v1"])
    cluster.timings["real_first_promotion_s"] = round(time.monotonic() - t0, 1)
    assert (record["outcome"], record["action"]) == ("promoted", "patch"), record
    assert record["phases"][0]["smoke"]["ok"], record["phases"]
    _state["v1"] = record["version"]
    isvc = cluster.get_json("inferenceservice", NAME, "-n", NS)
    assert {c["type"]: c["status"] for c in isvc["status"]["conditions"]}["Ready"] == "True"
    running = ready_pods(cluster)
    assert len(running) == 2, [p["metadata"]["name"] for p in pods(cluster)]  # the overlay's minReplicas
    for pod in running:
        assert pod["spec"]["nodeName"] == "shoprank-node"
        [main] = [c for c in pod["spec"]["containers"] if c["name"] == "kserve-container"]
        assert main["image"] == cluster.serving_image
        # KServe's pod webhook injected its storage initializer (the image built here), which ran and exited 0.
        [init] = pod["spec"]["initContainers"]
        assert init["name"] == "storage-initializer" and init["image"] == cluster.state["images"]["storage-initializer"]
        assert init["args"][0] == record["storage_uri"]
        env = {e["name"]: e.get("value") for e in init.get("env") or []}
        assert env.get("AWS_ENDPOINT_URL") == cluster.state["s3"]["endpoint"], env
        [status] = pod["status"]["initContainerStatuses"]
        assert status["state"]["terminated"]["exitCode"] == 0
    # The initializer's log, read through the API server and the kubelet.
    log = cluster.kubectl("logs", "-n", NS, running[0]["metadata"]["name"], "-c", "storage-initializer").stdout
    assert record["storage_uri"] in log, log[-2000:]

    from shoprank.scoring.ranker import Ranker

    ranker = Ranker.load(tiny_bundle["bundle_dir"], "tflite")
    url = infer_url(api_proxy)
    for g in golden:
        answer = post(url, ranking_body(g))
        assert answer["model_version"] == record["version"]
        scores = next(np.asarray(o["data"], np.float64) for o in answer["outputs"] if o["name"] == "scores")
        [expected] = ranker.rank([g["query"]], [g["history"]], [g["candidates"]])
        np.testing.assert_allclose(scores, expected.scores, rtol=0, atol=1e-5)


def _rendered_objects(cluster: Cluster) -> list[dict[str, Any]]:
    """What KServe's controller rendered from the cpu overlay (Deployment, Service, HPA) and what the overlay
    adds (NetworkPolicy, PodDisruptionBudget), without status and server-set metadata."""
    docs = []
    for kind in ("deployment", "service", "horizontalpodautoscaler", "networkpolicy", "poddisruptionbudget"):
        for obj in cluster.get_json(kind, "-n", NS)["items"]:
            obj.pop("status", None)
            meta = obj["metadata"]
            for key in ("managedFields", "resourceVersion", "uid", "creationTimestamp", "generation"):
                meta.pop(key, None)
            obj["apiVersion"] = obj.get("apiVersion") or "v1"
            obj["kind"] = obj.get("kind") or kind
            docs.append(obj)
    return docs


def kube_score_findings(cluster: Cluster, docs: list[dict[str, Any]]) -> dict[tuple[str, str, str], str]:
    """(kind/name, check id, the container or '') -> kube-score's summary, for every check it grades WARNING or
    CRITICAL."""
    binary = Path(cluster.state["bin"]) / "kube-score"
    text = "\n---\n".join(yaml.safe_dump(d) for d in docs)
    proc = subprocess.run([str(binary), "score", "--output-format=json", "-"], input=text, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.stdout.strip().startswith("["), proc.stderr
    found: dict[tuple[str, str, str], str] = {}
    for obj in json.loads(proc.stdout):
        where = f"{obj['type_meta']['kind']}/{obj['object_meta']['name']}"
        for check in obj["checks"]:
            if check["grade"] in (1, 5) and not check.get("skipped"):  # 1 CRITICAL, 5 WARNING
                for comment in check.get("comments") or [{"path": ""}]:
                    found[(where, check["check"]["id"], comment.get("path") or "")] = comment.get("summary", "")
    return found


def test_kube_score_over_what_kserve_renders(cluster: Cluster, deployed: str):
    """Every finding is either fixed or listed, with its reason, in kube-score-accepted.yaml; an accepted
    finding that no longer occurs is reported too (the list must not outlive its reasons)."""
    accepted = yaml.safe_load(ACCEPTED.read_text())["accepted"]
    for entry in accepted:
        assert entry.get("reason", "").strip(), entry
    allowed = {(e["object"].replace("NAME", NAME), e["check"], e.get("path", "")) for e in accepted}
    summaries = kube_score_findings(cluster, _rendered_objects(cluster))
    found = set(summaries)
    cluster.notes["kube_score_findings"] = f"{len(found)}, all accepted: {sorted(c for _, c, _ in found)}"
    assert not found - allowed, f"kube-score findings not accepted: {[(f, summaries[f]) for f in found - allowed]}"
    assert not allowed - found, f"accepted findings that no longer occur: {sorted(allowed - found)}"
    for check in ("container-ephemeral-storage-request-and-limit", "deployment-has-poddisruptionbudget",
                  "networkpolicy-targets-pod"):
        assert check not in {c for _, c, _ in found}, check
    # The ingress policy is there: what kube-score still notes is the absence of an egress one (accepted).
    for (_, check, _), summary in summaries.items():
        if check == "pod-networkpolicy":
            assert summary == "The pod does not have a matching egress NetworkPolicy", summary


def test_a_second_version_rolls_out_under_load_without_a_failed_request(cluster: Cluster, deployed: str, s3: Any,
                                                                        api_proxy: Any, artefacts, golden):
    with Loop(infer_url(api_proxy), ranking_body(golden[0])) as loop:
        time.sleep(3)
        t0 = time.monotonic()
        record = promote(cluster, s3, api_proxy, artefacts["v2"])
        cluster.timings["real_rollout_under_load_s"] = round(time.monotonic() - t0, 1)
        done = len(loop.versions)
        time.sleep(3)
    assert (record["outcome"], record["action"]) == ("promoted", "patch"), record
    _state["v2"] = record["version"]
    cluster.notes["rollout_loop"] = (f"{len(loop.versions)} answers, {len(loop.failures)} failed, "
                                     f"{dict(Counter(loop.versions))}")
    assert not loop.failures, loop.failures[:10]
    assert len(loop.versions) >= 10 * LOOP_RATE * 0.5
    # Before: the old version only; while both ReplicaSets have Ready pods the Service sends requests to both
    # (answers alternate); once promote returned (rolled out, smoke-tested): the new version only.
    assert loop.switches()[0] == _state["v1"] and set(loop.versions) == {_state["v1"], record["version"]}
    after = loop.versions[done:]
    assert after and set(after) == {record["version"]}, Counter(after)


def test_a_bundle_that_does_not_load_is_rolled_back_while_the_old_pods_answer(cluster: Cluster, deployed: str,
                                                                              s3: Any, api_proxy: Any, artefacts,
                                                                              golden):
    with Loop(infer_url(api_proxy), ranking_body(golden[0])) as loop:
        time.sleep(3)
        t0 = time.monotonic()
        record = promote(cluster, s3, api_proxy, artefacts["broken"], timeout_s=60)
        cluster.timings["real_rollback_s"] = round(time.monotonic() - t0, 1)
        # The rolled-back Deployment removes the new pod; keep asking while it goes.
        cluster.wait_for("the broken version's pods gone", lambda: all(
            p["metadata"]["annotations"].get(names.SOURCE_URI_ANNOTATION) != record["storage_uri"]
            for p in pods(cluster)), 120)
    assert record["outcome"] == "rolled_back", record
    assert record["previous_version"] == _state["v2"] and record["phases"][0]["timed_out"], record["phases"]
    assert record["rollback"]["applied"] and record["rollback"]["ready"], record["rollback"]
    cluster.notes["broken_bundle_reason"] = record["reason"][:300]
    assert not loop.failures, loop.failures[:10]
    assert set(loop.versions) == {_state["v2"]}, Counter(loop.versions)
    live = cluster.get_json("inferenceservice", NAME, "-n", NS)
    assert live["spec"]["predictor"]["model"]["storageUri"].endswith(_state["v2"])
    latest = s3.get_object(Bucket=BUCKET, Key=f"real-{RUN}/{NAME}/LATEST")["Body"].read().decode().strip()
    assert latest == _state["v2"]


def _hpa(cluster: Cluster) -> dict[str, Any]:
    return cluster.get_json("hpa", f"{NAME}-predictor", "-n", NS)


def test_the_hpa_scales_on_cpu_from_metrics_server(cluster: Cluster, deployed: str, s3: Any, api_proxy: Any,
                                                   artefacts, golden):
    """min 1, max 2, and a CPU target of 10% of the 500m request, so that a bounded load on two cores moves it:
    1 replica at rest, 2 under the load, 1 again after it (scale-down window 20 s on this cluster)."""
    record = promote(cluster, s3, api_proxy, artefacts["v2"], min_replicas=1, max_replicas=2, scale_target=10)
    assert record["outcome"] == "promoted" and record["version"] == _state["v2"], record
    t0 = time.monotonic()
    cluster.wait_for("1 predictor replica at rest", lambda: len(pods(cluster)) == 1 and
                     _hpa(cluster)["status"].get("currentReplicas") == 1, 180, poll=2)
    # metrics-server's readings, through the aggregated API.
    usage = json.loads(cluster.kubectl("get", "--raw", f"/apis/metrics.k8s.io/v1beta1/namespaces/{NS}/pods").stdout)
    assert usage["items"] and usage["items"][0]["containers"], usage
    big = max(golden, key=lambda g: len(g["candidates"]))
    with Loop(infer_url(api_proxy), ranking_body(big), rate=60, limit_s=240) as loop:
        cluster.wait_for("the HPA at 2 replicas, both Ready", lambda: len(ready_pods(cluster)) == 2, 200, poll=2)
        cluster.timings["hpa_scale_up_s"] = round(time.monotonic() - t0, 1)
    assert not loop.failures, loop.failures[:10]
    t1 = time.monotonic()
    cluster.wait_for("back to 1 replica after the load", lambda: len(pods(cluster)) == 1, 240, poll=2)
    cluster.timings["hpa_scale_down_s"] = round(time.monotonic() - t1, 1)
    events = cluster.kubectl("get", "events", "-n", NS, "--field-selector",
                             f"involvedObject.name={NAME}-predictor,reason=SuccessfulRescale", "-o", "json").stdout
    messages = [e["message"] for e in json.loads(events)["items"]]
    assert any("New size: 2" in m and "cpu resource utilization" in m for m in messages), messages
    assert any("New size: 1" in m for m in messages), messages
