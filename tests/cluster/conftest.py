"""The cluster under test: the local control plane of hack/cluster/localcluster.py (default), or a kind cluster
with KServe (`CLUSTER=kind`, after `make kind-up`; needs Docker, cannot run on the project's machines).

Nothing here skips: a cluster that cannot be built or started fails every test with the reason.

- local: uses a cluster already started by `make cluster-up`, else starts one (building the binaries if they
  are not cached) and stops it after the session (`SHOPRANK_KEEP_CLUSTER=1` keeps it).
- The local cluster has one real node (a kubelet with containerd, hack/cluster/node.py) beside the simulated
  GPU nodes: pods of the CPU overlay run there for real, from the images `cluster-up` built (the serving image
  of this checkout: `serving_image`), and fetch their bundles from the cluster's S3 store (`s3`).
- kind: the current kubectl context must be the kind cluster (`kind-$KIND_CLUSTER`, default kind-shoprank) with
  KServe installed; KWOK (the same pinned build) runs locally against it to add the same simulated CPU and GPU
  nodes, so scheduling checks mean the same thing there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hack.cluster import localcluster as lc

REPO = Path(__file__).resolve().parents[2]
CLUSTER = os.environ.get("CLUSTER", "local")
SERVING_IMAGE = "registry.invalid/shoprank-serving:cluster-test"
BUCKET = "shoprank-models"


@dataclass
class Cluster:
    kind: str
    kubeconfig: str
    state: dict[str, Any]
    kserve_controller: bool
    api_client: Any = None
    timings: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, KUBECONFIG=self.kubeconfig)

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, env=self.env,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc

    def get_json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def make(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                              env=self.env, timeout=timeout, check=False)

    @property
    def serving_image(self) -> str:
        """The serving image pods run: on the local cluster the one built from this checkout and loaded into
        the real node; on kind a name never pulled (its pods are simulated)."""
        return (self.state.get("images") or {}).get("serving") or SERVING_IMAGE

    def storage_secret(self, namespace: str) -> None:
        """The `shoprank-storage` secret for the cluster's S3 store (localcluster.storage_secret); KServe's pod
        webhook refuses predictor pods without the secret their ServiceAccount names."""
        self.kubectl("create", "namespace", namespace, check=False)
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                     stdin=json.dumps(lc.storage_secret(self.state, namespace)))

    def add_gpu_nodes(self, names: list[str], gpus: int = 8) -> None:
        lc.add_nodes(self.state, [(n, gpus) for n in names])
        lc.wait_nodes_ready(self.state, names, timeout=180)

    def wait_for(self, what: str, check, timeout: float = 90, poll: float = 0.5):
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(poll)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


_SESSION: dict[str, Cluster] = {}


def pytest_terminal_summary(terminalreporter) -> None:
    cluster = _SESSION.get("cluster")
    if cluster is None:
        return
    terminalreporter.section(f"cluster ({cluster.kind})")
    if cluster.state.get("start_seconds") is not None:
        terminalreporter.write_line(f"cluster start: {cluster.state['start_seconds']}s "
                                    f"({'by this session' if cluster.state.get('started_here') else 'before'})")
    for key, value in {**cluster.timings, **cluster.notes}.items():
        terminalreporter.write_line(f"{key}: {value}")


def _fail(msg: str) -> None:
    pytest.fail(f"cluster tests cannot run: {msg}", pytrace=False)


def _local() -> tuple[Cluster, bool]:
    state = lc.load_state()
    started = False
    if not (state and state.get("up") and lc.status() == 0):
        t0 = time.monotonic()
        try:
            state = lc.up()
        except lc.ClusterError as exc:
            _fail(str(exc))
        started = True
        state["started_here"] = True
        print(f"\n[cluster-test] cluster started in {time.monotonic() - t0:.1f}s")
    assert state is not None
    cluster = Cluster("local", state["kubeconfig"], state, bool(state["procs"].get("kserve-manager")))
    return cluster, started


def _kind() -> tuple[Cluster, bool]:
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        _fail("CLUSTER=kind needs a running Docker engine (none answers `docker info`)")
    context = f"kind-{os.environ.get('KIND_CLUSTER', 'shoprank')}"
    kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    current = subprocess.run(["kubectl", "config", "current-context"], capture_output=True, text=True).stdout.strip()
    if current != context:
        _fail(f"CLUSTER=kind: the current kubectl context is {current!r}, not {context!r} (run `make kind-up`)")
    try:
        state = lc.attach_kwok(kubeconfig)
    except lc.ClusterError as exc:
        _fail(str(exc))
    return Cluster("kind", kubeconfig, state, kserve_controller=True), True


class KubectlProxy:
    """`kubectl proxy` on a free loopback port: plain HTTP to the API server for clients that cannot present
    the kubeconfig's client certificate (the promote step's smoke request, the request loops). Services are
    reached through the API server's service proxy, which sends each request to a ready endpoint."""

    def __init__(self, kubeconfig: str) -> None:
        self.proc = subprocess.Popen(["kubectl", "--kubeconfig", kubeconfig, "proxy", "--port=0",
                                      "--address=127.0.0.1", "--keepalive=30s"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not match:
            self.proc.kill()
            raise AssertionError(f"kubectl proxy did not start: {line!r}")
        self.url = f"http://127.0.0.1:{match.group(1)}"
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for _ in self.proc.stdout or []:
            pass

    def service_url(self, namespace: str, service: str, port: int = 80) -> str:
        return f"{self.url}/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="session")
def api_proxy(cluster) -> KubectlProxy:
    proxy = KubectlProxy(cluster.kubeconfig)
    yield proxy
    proxy.close()


@pytest.fixture(scope="session")
def s3(cluster):
    """A boto3 client for the cluster's S3 store (versitygw in the node's network namespace) and the bucket
    the tests publish bundles to, created through the S3 API."""
    if not cluster.state.get("s3"):
        pytest.fail("the cluster has no S3 store (the local cluster starts one with its real node)", pytrace=False)
    client = lc.s3_client(cluster.state)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if BUCKET not in existing:
        client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(scope="session")
def cluster():
    if CLUSTER not in ("local", "kind"):
        _fail(f"CLUSTER={CLUSTER!r}: use local (default) or kind")
    cluster, started = _kind() if CLUSTER == "kind" else _local()
    from kubernetes import config

    cluster.api_client = config.new_client_from_config(config_file=cluster.kubeconfig)
    _SESSION["cluster"] = cluster
    yield cluster
    cluster.api_client.close()
    if started and os.environ.get("SHOPRANK_KEEP_CLUSTER") != "1":
        if CLUSTER == "kind":
            lc.detach_kwok(cluster.state)
        else:
            lc.down()
