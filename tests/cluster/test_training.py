"""The multi-worker train step's TFJob against the Kubeflow Training Operator (v1.8.1, built from its Go module by
hack/cluster/training.py): the CRD, the operator's validating webhook, its controller turning the job into pods with
TF_CONFIG, the scheduler placing them on the GPU nodes when the train step's GPU settings are given, the wait
following the job's real status to Succeeded, and the pipeline runner's RBAC for TFJobs.

The simulated (KWOK) GPU nodes run no containers, so no TensorFlow runs here: a worker "finishes" when the test writes
its pod status as the kubelet would (phase Succeeded, exit code 0). That is why the wait test pins its workers to the
GPU nodes (their node selector and toleration, no GPU requested): on the local cluster the only CPU node is the real
node (a kubelet, hack/cluster/node.py), whose kubelet would report its own status for the pods (the test image is
never pulled). The CPU placement test only checks where the scheduler puts the workers, so the real node is fine
there. Two workers training for real on the real node (the component image loaded into its containerd) are still to
do (deploy/README.md, "Training on several workers").
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from typing import Any

import pytest

from hack.cluster import training
from shoprank.release import trainjob
from shoprank.release.trainjob import JobSettings, TFJobApi

pytestmark = pytest.mark.cluster

Cluster = Any
RUN = os.urandom(2).hex()
NS = f"shoprank-train-{RUN}"
RUNNER = "shoprank-pipeline-runner"
IMAGE = "registry.invalid/shoprank-components:cluster-test"  # never pulled: the simulated nodes run nothing
CLAIM = "shoprank-train"
JOB_LABEL = "training.kubeflow.org/job-name"
GPU_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Cluster:
    """The TFJob CRD and the operator on the local cluster (kind: it must have been installed there)."""
    if cluster.kind == "local":
        t0 = time.monotonic()
        try:
            training.ensure(cluster.state)
        except Exception as exc:  # noqa: BLE001 - a cluster that cannot run the operator fails with the reason
            pytest.fail(f"the training operator cannot start: {exc}", pytrace=False)
        cluster.timings["training operator (build if needed, CRD, controller, webhook)"] = \
            round(time.monotonic() - t0, 1)
    else:
        cluster.kubectl("get", "crd", "tfjobs.kubeflow.org")
    cluster.kubectl("create", "namespace", NS, check=False)
    # The shared volume: a ReadWriteMany claim bound to a hostPath volume (the simulated nodes never mount it; the
    # real node's kubelet never gets that far: the test image is not in its containerd).
    volume = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"shoprank-train-{RUN}"},
              "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                       "storageClassName": "shoprank-train-test", "hostPath": {"path": f"/tmp/shoprank-train-{RUN}"},
                       "persistentVolumeReclaimPolicy": "Delete"}}
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": CLAIM, "namespace": NS},
             "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "shoprank-train-test",
                      "resources": {"requests": {"storage": "1Gi"}}}}
    for obj in (volume, claim):
        cluster.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(obj))
    cluster.wait_for("the training claim Bound", lambda: cluster.get_json("pvc", CLAIM, "-n", NS)
                     .get("status", {}).get("phase") == "Bound", timeout=60)
    yield cluster
    cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)
    cluster.kubectl("delete", "pv", f"shoprank-train-{RUN}", "--wait=false", check=False)


def job_settings(name: str, **changes: Any) -> JobSettings:
    base = dict(name=name, namespace=NS, image=IMAGE, workers=2, preset="tiny", overrides="{}", claim=CLAIM,
                mount_path="/mnt/shoprank-train", job_dir=name, cpu="100m", memory="128Mi")
    return JobSettings(**(base | changes))


def pods_of(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return cluster.get_json("pods", "-n", NS, "-l", f"{JOB_LABEL}={name}")["items"]


def scheduled(cluster: Cluster, name: str, count: int) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        pods = pods_of(cluster, name)
        return pods if len(pods) == count and all(p["spec"].get("nodeName") for p in pods) else None
    return cluster.wait_for(f"{count} pods of {name} scheduled", check, timeout=90)


def test_the_operator_runs_with_its_crd_and_webhook(operator: Cluster):
    crd = operator.get_json("crd", "tfjobs.kubeflow.org")
    assert any(c["type"] == "Established" and c["status"] == "True" for c in crd["status"]["conditions"])
    assert "v1" in [v["name"] for v in crd["spec"]["versions"] if v["served"]]
    if operator.kind == "local":
        assert training.running(operator.state)
        hooks = operator.get_json("validatingwebhookconfiguration", training.WEBHOOK_NAME)["webhooks"]
        assert hooks[0]["rules"][0]["resources"] == ["tfjobs"]


def test_the_job_passes_server_side_validation_and_wrong_ones_are_refused(operator: Cluster):
    api = TFJobApi(operator.api_client)
    body = trainjob.build_tfjob(job_settings("shoprank-train-dry", gpu_count=1, node_selector=GPU_SELECTOR,
                                             tolerations=[GPU_TOLERATION]))
    echoed = api.apply(body, field_manager=trainjob.FIELD_MANAGER, dry_run=True)
    assert echoed["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 2
    assert operator.kubectl("get", "tfjob", "shoprank-train-dry", "-n", NS, check=False).returncode != 0

    from kubernetes.client.exceptions import ApiException

    wrong_type = json.loads(json.dumps(body))
    wrong_type["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] = "two"
    with pytest.raises(ApiException) as refused:
        api.apply(wrong_type, field_manager=trainjob.FIELD_MANAGER, dry_run=True)
    # Server-side apply answers a value of the wrong type with 500 "failed to create typed patch object" (the
    # API server's own answer for such a patch, measured), naming the field.
    assert refused.value.status in (400, 422, 500), refused.value.body
    assert ".spec.tfReplicaSpecs.Worker.replicas: expected numeric" in refused.value.body
    # The operator's webhook: a TFJob must have a container named "tensorflow" (its schema cannot say so).
    renamed = json.loads(json.dumps(body))
    renamed["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["name"] = "trainer"
    with pytest.raises(ApiException) as refused:
        api.apply(renamed, field_manager=trainjob.FIELD_MANAGER, dry_run=True)
    assert "tensorflow" in refused.value.body, refused.value.body


@pytest.mark.parametrize("use_gpu", [True, False], ids=["gpu", "cpu"])
def test_workers_get_their_tf_config_and_land_on_the_right_nodes(operator: Cluster, use_gpu: bool):
    name = f"shoprank-train-{'gpu' if use_gpu else 'cpu'}"
    gpu = dict(gpu_count=1, node_selector=GPU_SELECTOR, tolerations=[GPU_TOLERATION]) if use_gpu else {}
    TFJobApi(operator.api_client).apply(trainjob.build_tfjob(job_settings(name, **gpu)),
                                        field_manager=trainjob.FIELD_MANAGER)
    pods = sorted(scheduled(operator, name, 2), key=lambda p: p["metadata"]["name"])
    nodes = operator.get_json("nodes")["items"]
    gpu_nodes = {n["metadata"]["name"] for n in nodes if n["metadata"]["labels"].get("nvidia.com/gpu.present")}
    for index, pod in enumerate(pods):
        assert (pod["spec"]["nodeName"] in gpu_nodes) is use_gpu, (pod["metadata"]["name"], pod["spec"]["nodeName"])
        (container,) = pod["spec"]["containers"]
        assert container["image"] == IMAGE
        env = {e["name"]: e.get("value") for e in container.get("env") or []}
        conf = json.loads(env["TF_CONFIG"])
        assert conf["task"] == {"type": "worker", "index": index}
        assert conf["cluster"]["worker"] == [f"{name}-worker-{i}.{NS}.svc:2222" for i in range(2)]
        limits = container["resources"]["limits"]
        assert (limits.get("nvidia.com/gpu") == "1") is use_gpu
    # The controller's headless Services give each worker the host name its TF_CONFIG uses.
    services = {s["metadata"]["name"] for s in operator.get_json("services", "-n", NS, "-l",
                                                                 f"{JOB_LABEL}={name}")["items"]}
    assert services == {f"{name}-worker-0", f"{name}-worker-1"}


def finish(cluster: Cluster, pod: dict[str, Any]) -> None:
    """What the kubelet reports when the worker's process exits 0."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {"status": {"phase": "Succeeded", "containerStatuses": [{
        "name": trainjob.CONTAINER, "image": IMAGE, "imageID": "", "ready": False, "restartCount": 0,
        "started": False, "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now,
                                                   "finishedAt": now}}}]}}
    cluster.kubectl("patch", "pod", pod["metadata"]["name"], "-n", NS, "--subresource=status", "--type=merge",
                    "-p", json.dumps(status))


def test_the_wait_follows_the_real_job_to_success(operator: Cluster):
    name = "shoprank-train-wait"
    api = TFJobApi(operator.api_client)
    # On the simulated GPU nodes (selector and toleration, no GPU): only there does the test play the kubelet.
    api.apply(trainjob.build_tfjob(job_settings(name, node_selector=GPU_SELECTOR, tolerations=[GPU_TOLERATION])),
              field_manager=trainjob.FIELD_MANAGER)
    pods = scheduled(operator, name, 2)
    lines: list[str] = []

    def workers_finish() -> None:
        # Until the wait has reported Running: finishing the pods as soon as the job is Running raced with the
        # wait's 1 s poll, which then went from Created to Succeeded (seen once in CI).
        operator.wait_for("the wait to report the job Running",
                          lambda: any(line.startswith("[train-job] Running: Worker: 2 active") for line in lines),
                          timeout=60)
        # The other worker first: the operator calls the job Succeeded as soon as worker 0 (the chief) succeeds,
        # and then deletes the pods still running (cleanPodPolicy Running).
        for pod in sorted(pods, key=lambda p: p["metadata"]["name"], reverse=True):
            finish(operator, pod)

    errors: list[BaseException] = []

    def run() -> None:
        try:
            workers_finish()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    t0 = time.monotonic()
    job = trainjob.wait_for_job(lambda: api.get(NS, name), progress=lines.append, timeout_s=120, poll_s=1)
    thread.join()
    assert not errors, errors
    operator.timings["TFJob created -> Succeeded (2 workers)"] = round(time.monotonic() - t0, 1)
    assert trainjob.job_state(job)[0] == "Succeeded"
    assert any(line.startswith("[train-job] Running: Worker: 2 active") for line in lines), lines
    assert lines[-1].startswith("[train-job] Succeeded"), lines


def can(cluster: Cluster, verb: str, resource: str, namespace: str) -> bool:
    proc = cluster.kubectl("auth", "can-i", verb, resource, "-n", namespace,
                           f"--as=system:serviceaccount:{NS}:{RUNNER}", check=False)
    return proc.stdout.strip() == "yes"


def test_the_pipeline_runner_may_manage_tfjobs_in_its_namespace_only(operator: Cluster):
    rendered = subprocess.run(["kubectl", "kustomize", "manifests/base"], capture_output=True, text=True,
                              check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__)))).stdout
    import yaml

    docs = [d for d in yaml.safe_load_all(rendered) if d]
    wanted = [d for d in docs if d["kind"] in ("Role", "RoleBinding", "ServiceAccount")
              and d["metadata"]["name"] in (RUNNER, "shoprank-training-jobs")]
    for doc in wanted:
        doc["metadata"]["namespace"] = NS
        for subject in doc.get("subjects") or []:
            subject["namespace"] = NS
    operator.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                            "items": wanted}))
    for verb in ("get", "list", "watch", "create", "patch"):
        assert can(operator, verb, "tfjobs.kubeflow.org", NS), verb
    assert not can(operator, "delete", "tfjobs.kubeflow.org", NS)
    assert not can(operator, "create", "tfjobs.kubeflow.org", "default")
    assert not can(operator, "create", "pytorchjobs.kubeflow.org", NS)
    assert not can(operator, "get", "pods", NS) and not can(operator, "get", "pods/log", NS)
