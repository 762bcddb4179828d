"""The local cluster's real node: a kubelet with containerd (Debian's) that runs pods for real, inside a
network namespace that `cluster-up` creates, beside the simulated (KWOK) GPU nodes. Driven by localcluster.py.

Network (nothing but loopback and addresses inside the node's namespace is ever contacted):

    host namespace                         namespace shoprank-node
    127.0.0.1: API server, etcd, KServe    127.0.0.1:6443 -> host 127.0.0.1:<API server> (nsforward.py)
    shoprank-h0 10.213.0.1/30  <-- veth --> eth0 10.213.0.2/30 (the node's InternalIP):
                                             kubelet :10250, metrics-server :4443, S3 store :9000
    route 10.213.1.0/24 via 10.213.0.2      cni0 10.213.1.1/24 (bridge plugin) -- pods 10.213.1.x

The API server reaches the kubelet (logs, exec, port-forward) and metrics-server at 10.213.0.2, and pods
(service proxy) through the route to the pod range; the kubelet, containerd (and so the CNI bridge) and
metrics-server run inside the namespace (`nsenter --net`, same mount namespace as the host so that the
kubelet's volume mounts are what containerd sees). Pods get routes to 10.213.0.0/16 only and no DNS servers:
they can reach the node's services and each other, nothing else. The namespace has no default route.

Runtime: containerd 1.6 with runc, cgroupfs, `restrict_oom_score_adj` (this sandbox forbids a negative
oom_score_adj), a sandbox image built here (hack/cluster/pause). The kubelet (same k8s.io/kubernetes as the
control plane) needs `failCgroupV1: false` on this hybrid cgroup v1 machine, and no QoS cgroups
(../shared/STACK.md, "A real kubelet node").

Object store: versitygw (Apache-2.0, an S3 gateway over a local folder, built from its Go module) on
10.213.0.2:9000, plain HTTP, one random key pair per cluster start. KServe's storage initializer fetches the
bundles from it with the credentials of the `shoprank-storage` secret, as it would from S3 in production.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

NETNS = "shoprank-node"
NETNS_PATH = f"/run/netns/{NETNS}"
HOST_IF, NODE_IF = "shoprank-h0", "eth0"
HOST_IP, NODE_IP, LINK_PREFIX = "10.213.0.1", "10.213.0.2", 30
POD_CIDR, POD_GATEWAY, BRIDGE = "10.213.1.0/24", "10.213.1.1", "cni0"
NODE_RANGE = "10.213.0.0/16"  # the only destinations a pod has a route to
NODE_NAME = "shoprank-node"
NODE_LABELS = {"shoprank.dev/node-kind": "cpu", "shoprank.dev/real-node": "true"}
APISERVER_IN_NODE = "127.0.0.1:6443"
KUBELET_PORT, METRICS_PORT, S3_PORT = 10250, 4443, 9000
S3_REGION = "us-east-1"
CNI_BIN = "/usr/lib/cni"  # Debian's containernetworking-plugins
PACKAGES = {"containerd": "containerd", "ctr": "containerd", "runc": "runc", "nsenter": "util-linux",
            "ip": "iproute2", f"{CNI_BIN}/bridge": "containernetworking-plugins"}


class NodeError(RuntimeError):
    """The node could not be set up; the message says why (and what the machine would need)."""


def missing_packages() -> list[str]:
    """Debian packages the node needs that are not installed (.ci/run installs them)."""
    missing = set()
    for tool, package in PACKAGES.items():
        found = os.path.exists(tool) if tool.startswith("/") else shutil.which(tool) is not None
        if not found:
            missing.add(package)
    return sorted(missing)


def _run(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise NodeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc


# --- the network namespace ----------------------------------------------------------------------------------------


def netns_exists() -> bool:
    return os.path.exists(NETNS_PATH)


def create_network() -> None:
    """The namespace, the veth pair, the route to the pod range; idempotent only from a clean state (down
    removes all of it)."""
    if netns_exists() or _run("ip", "link", "show", HOST_IF, check=False).returncode == 0:
        delete_network()
    steps = [
        ("ip", "netns", "add", NETNS),
        ("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NODE_IF, "netns", NETNS),
        ("ip", "addr", "add", f"{HOST_IP}/{LINK_PREFIX}", "dev", HOST_IF),
        ("ip", "link", "set", HOST_IF, "up"),
        ("ip", "-n", NETNS, "link", "set", "lo", "up"),
        ("ip", "-n", NETNS, "addr", "add", f"{NODE_IP}/{LINK_PREFIX}", "dev", NODE_IF),
        ("ip", "-n", NETNS, "link", "set", NODE_IF, "up"),
        ("ip", "route", "add", POD_CIDR, "via", NODE_IP, "dev", HOST_IF),
        ("ip", "netns", "exec", NETNS, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"),
    ]
    for step in steps:
        try:
            _run(*step)
        except NodeError as exc:
            raise NodeError(f"setting up the node's network namespace: {exc}. The machine needs root with "
                            "CAP_NET_ADMIN and CAP_SYS_ADMIN (ip netns, veth)") from exc


def delete_network() -> None:
    """Remove the veth pair (both ends go together) and the namespace; the route goes with the interface."""
    _run("ip", "link", "delete", HOST_IF, check=False)
    if netns_exists():
        _run("ip", "netns", "delete", NETNS, check=False)


# --- configuration -------------------------------------------------------------------------------------------------


def node_dirs(run: Path) -> dict[str, Path]:
    base = run / "node"
    return {"base": base, "containerd_state": base / "containerd" / "state", "cni_conf": base / "cni" / "net.d",
            "cni_data": base / "cni" / "ipam", "kubelet": base / "kubelet", "pod_logs": base / "pod-logs",
            "s3": base / "s3"}


def containerd_socket(run: Path) -> str:
    return str(node_dirs(run)["base"] / "containerd" / "containerd.sock")


def write_containerd_config(run: Path, sandbox_image: str, root: Path) -> Path:
    """containerd's configuration and the pods' CNI network. `root` (content, snapshots, metadata) outlives a
    cluster: the imported images stay there, so a restart does not import gigabytes again; every container is
    deleted at shutdown (kill_tasks). Its runtime state is under the cluster's folder."""
    dirs = node_dirs(run)
    root.mkdir(parents=True, exist_ok=True)
    for key in ("containerd_state", "cni_conf", "cni_data"):
        dirs[key].mkdir(parents=True, exist_ok=True)
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    config = f"""version = 2
root = "{root}"
state = "{dirs['containerd_state']}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{containerd_socket(run)}"

[ttrpc]
  address = "{containerd_socket(run)}.ttrpc"

[debug]
  level = "warn"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{dirs['base'] / 'containerd' / 'opt'}"

[{cri}]
  sandbox_image = "{sandbox_image}"
  # This sandbox forbids a negative oom_score_adj: without this every sandbox fails in runc with
  # "can't get final child's PID from pipe: EOF" (../shared/STACK.md).
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  max_concurrent_downloads = 1

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "{shutil.which('runc') or '/usr/sbin/runc'}"

[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{dirs['cni_conf']}"
  max_conf_num = 1
"""
    path = dirs["base"] / "containerd.toml"
    path.write_text(config)
    cni = {"cniVersion": "1.0.0", "name": "shoprank-pods",
           "plugins": [{"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
                        "hairpinMode": True,
                        "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                                 "routes": [{"dst": NODE_RANGE}], "dataDir": str(dirs["cni_data"])}}]}
    (dirs["cni_conf"] / "10-shoprank.conflist").write_text(json.dumps(cni, indent=1))
    return path


def write_kubelet_config(run: Path, pki: Path, healthz_port: int) -> Path:
    dirs = node_dirs(run)
    for key in ("kubelet", "pod_logs"):
        dirs[key].mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        # This machine has the hybrid cgroup v1/v2 layout: 1.35 refuses cgroup v1 unless told (KEP-5573).
        "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupsPerQOS": False, "enforceNodeAllocatable": [],
        "failSwapOn": False, "containerRuntimeEndpoint": f"unix://{containerd_socket(run)}",
        "address": NODE_IP, "port": KUBELET_PORT, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
        "tlsCertFile": str(pki / "kubelet.crt"), "tlsPrivateKeyFile": str(pki / "kubelet.key"),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "podLogsDir": str(dirs["pod_logs"]),
        "volumePluginDir": str(dirs["kubelet"] / "volume-plugins"),
        "resolvConf": "",  # pods get no DNS server: nothing outside the node's namespace is ever asked
        "clusterDomain": "cluster.local",
        "registerNode": True, "rotateCertificates": False, "serverTLSBootstrap": False,
        "makeIPTablesUtilChains": False, "protectKernelDefaults": False,
        # The images are built here and imported: never garbage-collect them, never pull.
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99, "serializeImagePulls": True,
        # A shared disk: evict only when it is really full.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%", "imagefs.available": "2%",
                         "nodefs.inodesFree": "2%"},
        "maxPods": 30, "nodeStatusReportFrequency": "10s", "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s", "fileCheckFrequency": "10s",
        "shutdownGracePeriod": "0s", "containerLogMaxSize": "10Mi", "containerLogMaxFiles": 2,
    }
    path = dirs["base"] / "kubelet.yaml"
    path.write_text(json.dumps(config, indent=1))
    return path


def kubelet_args(run: Path, config: Path, kubeconfig: Path) -> list[str]:
    labels = ",".join(f"{k}={v}" for k, v in NODE_LABELS.items())
    return ["kubelet", f"--config={config}", f"--kubeconfig={kubeconfig}", f"--root-dir={node_dirs(run)['kubelet']}",
            f"--node-ip={NODE_IP}", f"--hostname-override={NODE_NAME}", f"--node-labels={labels}", "--v=1"]


def containerd_args(config: Path) -> list[str]:
    return ["containerd", f"--config={config}"]


def s3_args(run: Path, access_key: str, secret_key: str) -> list[str]:
    data = node_dirs(run)["s3"]
    data.mkdir(parents=True, exist_ok=True)
    return ["versitygw", f"--port={NODE_IP}:{S3_PORT}", f"--access={access_key}", f"--secret={secret_key}",
            f"--region={S3_REGION}", "--quiet", "--health=/health", "posix", str(data)]


def metrics_server_args(run: Path, pki: Path, kubeconfig: Path) -> list[str]:
    selector = ",".join(f"{k}={v}" for k, v in NODE_LABELS.items())
    return ["metrics-server", f"--bind-address={NODE_IP}", f"--secure-port={METRICS_PORT}",
            f"--tls-cert-file={pki / 'metrics-server.crt'}", f"--tls-private-key-file={pki / 'metrics-server.key'}",
            f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}", "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            f"--kubelet-client-certificate={pki / 'metrics-server-client.crt'}",
            f"--kubelet-client-key={pki / 'metrics-server-client.key'}",
            # Only the real node: the simulated nodes' addresses (KWOK's 10.0.0.1) must never be contacted.
            f"--node-selector={selector}", "--metric-resolution=10s", "--kubelet-request-timeout=5s",
            "--v=1"]


def new_s3_credentials() -> tuple[str, str]:
    return "shoprank" + secrets.token_hex(6), secrets.token_urlsafe(24)


def metrics_api_objects(pki: Path) -> list[dict[str, Any]]:
    """metrics-server's Service (no selector: it runs as a process in the node's namespace), its Endpoints
    (10.213.0.2:4443) and the APIService that makes the API server proxy metrics.k8s.io to it."""
    import base64

    ca = base64.b64encode((pki / "ca.crt").read_bytes()).decode()
    ns = "kube-system"
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "metrics-server", "namespace": ns},
         "spec": {"ports": [{"name": "https", "port": 443, "targetPort": METRICS_PORT, "protocol": "TCP"}]}},
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "metrics-server", "namespace": ns},
         "subsets": [{"addresses": [{"ip": NODE_IP}],
                      "ports": [{"name": "https", "port": METRICS_PORT, "protocol": "TCP"}]}]},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
         "metadata": {"name": "v1beta1.metrics.k8s.io"},
         "spec": {"group": "metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100,
                  "versionPriority": 100, "caBundle": ca,
                  "service": {"name": "metrics-server", "namespace": ns, "port": 443}}},
    ]


# --- teardown ----------------------------------------------------------------------------------------------------


def sandbox_netns_paths(address: str) -> list[str]:
    """The network namespaces of the pod sandboxes containerd knows (read from their OCI specs), so teardown
    removes exactly those."""
    ctr = shutil.which("ctr")
    if ctr is None or not os.path.exists(address):
        return []
    listed = subprocess.run([ctr, "--address", address, "--namespace", "k8s.io", "containers", "list", "--quiet"],
                            capture_output=True, text=True, timeout=30, check=False).stdout.split()
    paths = []
    for cid in listed:
        info = subprocess.run([ctr, "--address", address, "--namespace", "k8s.io", "containers", "info", cid],
                              capture_output=True, text=True, timeout=30, check=False)
        try:
            spec = json.loads(info.stdout).get("Spec") or {}
        except ValueError:
            continue
        for ns in (spec.get("linux") or {}).get("namespaces") or []:
            if ns.get("type") == "network" and ns.get("path", "").startswith("/var/run/netns/cni-"):
                paths.append(ns["path"])
    return sorted(set(paths))


def kill_tasks(address: str) -> None:
    """SIGKILL every container task containerd runs for the node, and delete tasks and containers."""
    ctr = shutil.which("ctr")
    if ctr is None or not os.path.exists(address):
        return
    base = [ctr, "--address", address, "--namespace", "k8s.io"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=60, check=False)

    tasks = [line.split()[0] for line in run("tasks", "list").stdout.splitlines()[1:] if line.strip()]
    for task in tasks:
        run("tasks", "kill", "--signal", "SIGKILL", task)
    deadline = time.monotonic() + 15
    for task in tasks:
        while run("tasks", "delete", task).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.3)
    for cid in run("containers", "list", "--quiet").stdout.split():
        run("containers", "delete", cid)


def unmount_under(path: Path) -> None:
    """Unmount everything mounted below `path` (deepest first): container root filesystems, shm, the kubelet's
    volume mounts."""
    prefix = str(path.resolve()) + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    points = sorted({line.split()[4] for line in lines if line.split()[4].startswith(prefix)},
                    key=lambda p: p.count("/"), reverse=True)
    for point in points:
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30, check=False)


CONTAINER_LOG_LINKS = Path("/var/log/containers")  # the kubelet's fixed folder of per-container log links


def remove_log_links(run: Path) -> None:
    """The kubelet links every container's log into /var/log/containers; remove the links into this cluster."""
    target = str(node_dirs(run)["pod_logs"].resolve())
    if not CONTAINER_LOG_LINKS.is_dir():
        return
    for link in CONTAINER_LOG_LINKS.iterdir():
        try:
            if link.is_symlink() and os.readlink(link).startswith(target):
                link.unlink()
        except OSError:
            pass


def remove_netns_files(paths: list[str]) -> None:
    for path in paths:
        subprocess.run(["umount", path], capture_output=True, timeout=30, check=False)
        try:
            os.unlink(path)
        except OSError:
            pass
