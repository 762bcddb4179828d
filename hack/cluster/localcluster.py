"""A local Kubernetes cluster for the cluster tests: real upstream binaries built from their Go modules, KServe's
CRDs and KServe's own controller, simulated GPU nodes (KWOK), and one real node (kubelet + containerd) that runs
the CPU serving pods for real, inside a network namespace of its own.

    python hack/cluster/localcluster.py build        build (or find cached) binaries, print progress
    python hack/cluster/localcluster.py up           build if needed, start everything, write the kubeconfig
    python hack/cluster/localcluster.py down         stop every process this driver started, remove state
    python hack/cluster/localcluster.py status       what runs (pids, ports, node, images); exit 1 when not up
    python hack/cluster/localcluster.py images       rebuild the images that changed, load them into the node
    python hack/cluster/localcluster.py kubeconfig   print the kubeconfig path (admin)
    python hack/cluster/localcluster.py add-nodes N  add N more simulated GPU nodes (the scale test)

What is real: etcd, kube-apiserver (TLS with generated certificates, RBAC + Node authorisation, the default
admission plugins plus NodeRestriction, ServiceAccount token signing, the kubelet API, the aggregation layer),
kube-controller-manager (Deployments, ReplicaSets, HPA with shortened windows, namespaces, ServiceAccount tokens,
EndpointSlices, garbage collection), kube-scheduler, KServe v0.20.0's CRDs and controller manager
(`cmd/manager`, Standard mode) with its InferenceService/ServingRuntime admission webhooks and its pod mutator
(storage initializer), the real node `shoprank-node` (node.py: kubelet, Debian's containerd and runc, CNI
bridge, metrics-server, an S3 store), and the images its pods run (images.py: built here, no registry).
What is simulated: the GPU nodes and the pods on them (KWOK marks scheduled pods Running and Ready; no
container runs).

Recipe: hack/cluster/k8s/go.mod (Kubernetes + etcd, kubelet included), hack/cluster/kwok/go.mod (KWOK), the
tool modules of TOOL_MODULES (metrics-server, kube-score, versitygw, the pause process), and KServe built in its
own module (its go.mod carries replace directives) with one build overlay that binds its webhook server to
127.0.0.1 instead of every interface. Binaries are cached outside the checkout under
`$SHOPRANK_CACHE_DIR/cluster/<key>/bin` (default ~/.cache/shoprank), the key a hash of the recipe; the state
of a running cluster (certificates, kubeconfigs, etcd data, the node's runtime state, logs, pids) under
`.../cluster/run/`. The control plane listens on 127.0.0.1 ports picked free at start; the node's addresses
are inside its network namespace (node.py).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

try:  # imported as hack.cluster.localcluster (tests) or run as a script from hack/cluster
    from hack.cluster import images, node
except ImportError:  # pragma: no cover - the script case
    import images  # type: ignore[no-redef]
    import node  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
RECIPE_VERSION = "2"  # bump to force a rebuild when the build steps below change
KSERVE_MODULE = "github.com/kserve/kserve"
KSERVE_VERSION = "v0.20.0"  # tests/support/kserve_crds.py pins the same
KSERVE_NAMESPACE = "kserve"
GPU_LABEL = ("nvidia.com/gpu.present", "true")  # manifests/overlays/gpu/gpu-node-selector.yaml
GPU_RESOURCE = "nvidia.com/gpu"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CIDR = "10.96.0.0/16"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kwok",
            "kserve-manager", "metrics-server", "kube-score", "versitygw", "pause")
# Go modules of the recipe besides Kubernetes: folder -> (module, main package). Each folder's go.mod pins the
# version (a `tool` line) and its go.sum the hashes of everything it builds from.
TOOL_MODULES = {"metrics-server": ("sigs.k8s.io/metrics-server", "sigs.k8s.io/metrics-server/cmd/metrics-server"),
                "kube-score": ("github.com/zegl/kube-score", "github.com/zegl/kube-score/cmd/kube-score"),
                "s3": ("github.com/versity/versitygw", "github.com/versity/versitygw/cmd/versitygw"),
                "pause": ("shoprank.local/hack/cluster/pause", ".")}
START_TIMEOUT_S = 120.0


class ClusterError(RuntimeError):
    """The cluster could not be built or started; the message says why."""


def log(msg: str) -> None:
    print(f"[cluster] {msg}", flush=True)


# --- versions, paths --------------------------------------------------------------------------------------------


def cache_root() -> Path:
    root = os.environ.get("SHOPRANK_CACHE_DIR") or os.path.join(Path.home(), ".cache", "shoprank")
    return Path(root) / "cluster"


def state_dir() -> Path:
    return Path(os.environ.get("SHOPRANK_CLUSTER_DIR") or cache_root() / "run")


def _module_version(gomod: Path, module: str) -> str:
    for line in gomod.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == module and len(parts) >= 2 and parts[1].startswith("v"):
            return parts[1]
    raise ClusterError(f"{gomod} does not require {module}")


def versions() -> dict[str, str]:
    k8s, kwok = HERE / "k8s" / "go.mod", HERE / "kwok" / "go.mod"
    out = {"kubernetes": _module_version(k8s, "k8s.io/kubernetes"),
           "etcd": _module_version(k8s, "go.etcd.io/etcd/server/v3"),
           "kwok": _module_version(kwok, "sigs.k8s.io/kwok"),
           "kserve": KSERVE_VERSION}
    for folder, (module, _) in TOOL_MODULES.items():
        if folder != "pause":
            out[folder] = _module_version(HERE / folder / "go.mod", module)
    return out


def go_binary() -> str:
    go = shutil.which("go")
    if go is None:
        raise ClusterError("the Go toolchain (`go`, 1.26+) is not on PATH: it builds the cluster's binaries "
                           "from their Go modules (hack/cluster/*/go.mod). Install Go and rerun.")
    return go


def build_key() -> str:
    digest = hashlib.sha256(RECIPE_VERSION.encode())
    parts = ["k8s/go.mod", "k8s/go.sum", "kwok/go.mod", "kwok/go.sum", "pause/main.go"]
    parts += [f"{folder}/{name}" for folder in TOOL_MODULES for name in ("go.mod", "go.sum")
              if (HERE / folder / name).is_file()]
    for part in parts:
        digest.update(part.encode() + b"\0" + (HERE / part).read_bytes())
    digest.update(json.dumps(versions(), sort_keys=True).encode())
    digest.update(_kserve_patch(_WEBHOOK_OPTIONS))
    go_version = subprocess.run([go_binary(), "env", "GOVERSION"], capture_output=True, text=True,
                                check=False).stdout.strip()
    digest.update(go_version.encode())
    v = versions()
    return f"k8s-{v['kubernetes']}-kwok-{v['kwok']}-kserve-{v['kserve']}-{digest.hexdigest()[:12]}"


def bin_dir() -> Path:
    return cache_root() / build_key() / "bin"


# --- build ------------------------------------------------------------------------------------------------------


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOCACHE", str(cache_root() / "go-build"))  # survives version bumps; outside the checkout
    env["GOFLAGS"] = "-mod=readonly -buildvcs=false"
    env["GOTOOLCHAIN"] = "local"
    env["CGO_ENABLED"] = "0"
    return env


def _run_build(label: str, cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    """Run `go build -v ...`, printing a progress line (packages compiled so far) every 30 s."""
    log(f"{label}: {' '.join(cmd)}  (in {cwd})")
    start = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen(["nice", "-n", "19", *cmd], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        last = start
        while proc.poll() is None:
            time.sleep(1)
            if time.monotonic() - last >= 30:
                last = time.monotonic()
                out.flush()
                out.seek(0)
                count = sum(1 for line in out if not line.startswith(("go: ", "#")))
                out.seek(0, os.SEEK_END)
                log(f"{label}: {count} packages compiled, {time.monotonic() - start:.0f}s")
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-40:])
        raise ClusterError(f"{label}: `{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}")
    log(f"{label}: done in {time.monotonic() - start:.0f}s")


def _kserve_source(go: str, env: dict[str, str]) -> Path:
    proc = subprocess.run([go, "mod", "download", "-json", f"{KSERVE_MODULE}@{KSERVE_VERSION}"],
                          cwd=tempfile.gettempdir(), env=dict(env, GOFLAGS="-mod=mod"), capture_output=True,
                          text=True, timeout=900, check=False)
    info = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    if proc.returncode != 0 or info.get("Error") or not info.get("Dir"):
        raise ClusterError(f"`go mod download {KSERVE_MODULE}@{KSERVE_VERSION}` failed: "
                           f"{info.get('Error') or proc.stderr.strip()}")
    return Path(info["Dir"])


_WEBHOOK_OPTIONS = b"Port: options.webhookPort,"


def _kserve_patch(source: bytes) -> bytes:
    """KServe's manager main.go with its webhook server bound to loopback (upstream binds every interface and
    has no flag for it). Applied to a copy; the module cache stays untouched."""
    return source.replace(_WEBHOOK_OPTIONS, _WEBHOOK_OPTIONS + b' Host: "127.0.0.1",')


def build(force: bool = False) -> Path:
    """Build every binary into the version-keyed cache (or find them there); return the bin folder."""
    go = go_binary()
    target = bin_dir()
    if not force and (target / ".complete").is_file() and all((target / b).is_file() for b in BINARIES):
        log(f"binaries cached in {target}")
        return target
    v = versions()
    log(f"building {', '.join(f'{k} {val}' for k, val in v.items())} into {target} "
        "(cold: ~15-20 min on 2 cores; later starts reuse the cache)")
    start = time.monotonic()
    env = _go_env()
    work = target.with_name("bin.partial")
    work.mkdir(parents=True, exist_ok=True)  # binaries of an interrupted build are rebuilt from the Go cache
    minor = v["kubernetes"].lstrip("v").split(".")[1]
    prefix = "k8s.io/component-base/version"
    ldflags = (f"-s -w -X {prefix}.gitVersion={v['kubernetes']} -X {prefix}.gitMajor=1 -X {prefix}.gitMinor={minor} "
               f"-X {prefix}.gitTreeState=clean -X {prefix}.buildDate=1970-01-01T00:00:00Z")
    k8s_pkgs = ["k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-controller-manager",
                "k8s.io/kubernetes/cmd/kube-scheduler", "k8s.io/kubernetes/cmd/kubelet"]
    # Downloads first (a failure here is the proxy, not the compiler).
    for mod in ("k8s", "kwok", *(m for m in TOOL_MODULES if m != "pause")):
        proc = subprocess.run([go, "mod", "download"], cwd=HERE / mod, env=env, capture_output=True, text=True,
                              timeout=1800, check=False)
        if proc.returncode != 0:
            raise ClusterError(f"`go mod download` in hack/cluster/{mod} failed: {proc.stderr.strip()[-2000:]}")
    _run_build("etcd", [go, "build", "-v", "-trimpath", "-ldflags=-s -w", "-o", str(work / "etcd"),
                        "go.etcd.io/etcd/server/v3"], HERE / "k8s", env)
    _run_build("kubernetes", [go, "build", "-v", "-trimpath", f"-ldflags={ldflags}", "-o", str(work) + "/",
                              *k8s_pkgs], HERE / "k8s", env)
    _run_build("kwok", [go, "build", "-v", "-trimpath", "-ldflags=-s -w", "-o", str(work / "kwok"),
                        "sigs.k8s.io/kwok/cmd/kwok"], HERE / "kwok", env)
    # The real node's tools: metrics-server, the manifest scorer, the S3 store, the sandbox's pause process.
    for folder, (_, package) in TOOL_MODULES.items():
        name = {"s3": "versitygw"}.get(folder, folder)
        _run_build(name, [go, "build", "-v", "-trimpath", "-ldflags=-s -w", "-o", str(work / name), package],
                   HERE / folder, env)
    # KServe: its own go.mod (with its replace directives) and go.sum, built from a writable copy of the Go
    # code it needs (go.mod, go.sum, pkg/, cmd/manager/; ~9 MB), with main.go patched as _kserve_patch says.
    source = _kserve_source(go, env)
    tree = work.with_name("kserve-src")
    shutil.rmtree(tree, ignore_errors=True)
    for part in ("go.mod", "go.sum", "pkg", "cmd/manager"):
        src, dst = source / part, tree / part
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*_test.go", "testdata"))
        else:
            shutil.copyfile(src, dst)
    for path in tree.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)  # the module cache is read-only; the copy need not be
    main_go = tree / "cmd" / "manager" / "main.go"
    original = main_go.read_bytes()
    if _WEBHOOK_OPTIONS not in original:
        raise ClusterError(f"{source}/cmd/manager/main.go: the webhook options line to patch is gone; update "
                           "_kserve_patch")
    main_go.write_bytes(_kserve_patch(original))
    _run_build("kserve", [go, "build", "-v", "-trimpath", "-ldflags=-s -w", "-o", str(work / "kserve-manager"),
                          "./cmd/manager"], tree, env)
    shutil.rmtree(tree, ignore_errors=True)
    (work / ".complete").write_text(json.dumps({"versions": v, "seconds": round(time.monotonic() - start)}))
    shutil.rmtree(target, ignore_errors=True)
    work.rename(target)
    log(f"built all binaries in {time.monotonic() - start:.0f}s -> {target}")
    return target


# --- certificates -----------------------------------------------------------------------------------------------


def _write_pki(pki: Path) -> None:
    """A CA; the API server's serving certificate; client certificates per component; the ServiceAccount
    signing key pair; a serving certificate for KServe's webhook (127.0.0.1)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    later = now + dt.timedelta(days=30)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def save(name: str, k: Any, cert: Any = None) -> None:
        (pki / f"{name}.key").write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
        os.chmod(pki / f"{name}.key", 0o600)
        if cert is not None:
            (pki / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shoprank-local-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(later)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    save("ca", ca_key, ca)

    def issue(name: str, cn: str, orgs: tuple[str, ...] = (), server_names: tuple[str, ...] = (),
              ips: tuple[str, ...] = ()) -> None:
        k = key()
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        usage = ExtendedKeyUsageOID.SERVER_AUTH if (server_names or ips) else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (x509.CertificateBuilder().subject_name(x509.Name(attrs)).issuer_name(ca_name)
                   .public_key(k.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(later)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if server_names or ips:
            sans = [x509.DNSName(n) for n in server_names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        save(name, k, builder.sign(ca_key, hashes.SHA256()))

    issue("apiserver", "kube-apiserver", server_names=("localhost", "kubernetes", "kubernetes.default",
                                                       "kubernetes.default.svc",
                                                       "kubernetes.default.svc.cluster.local"),
          ips=("127.0.0.1", str(ipaddress.ip_network(SERVICE_CIDR)[1])))
    issue("admin", "shoprank-admin", orgs=("system:masters",))
    issue("controller-manager", "system:kube-controller-manager")
    issue("scheduler", "system:kube-scheduler")
    # KWOK and KServe's controller act as cluster administrators here (their RBAC is not what is tested).
    issue("kwok", "kwok-controller", orgs=("system:masters",))
    issue("kserve", "kserve-controller-manager", orgs=("system:masters",))
    issue("webhook", "kserve-webhook", server_names=("localhost",), ips=("127.0.0.1",))
    # The real node: the kubelet's serving certificate (its InternalIP) and its client identity (the Node
    # authorizer and NodeRestriction apply to system:node:NAME); the API server's client certificate for the
    # kubelet API (logs, exec, port-forward); the aggregation layer's front proxy; metrics-server's serving
    # certificate (the aggregator checks the service name) and its client identity.
    issue("kubelet", node.NODE_NAME, server_names=(node.NODE_NAME,), ips=(node.NODE_IP,))
    issue("kubelet-node", f"system:node:{node.NODE_NAME}", orgs=("system:nodes",))
    issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", orgs=("system:masters",))
    issue("front-proxy-client", "front-proxy-client")
    issue("metrics-server", "metrics-server", server_names=("metrics-server.kube-system.svc", "metrics-server"),
          ips=(node.NODE_IP,))
    issue("metrics-server-client", "metrics-server", orgs=("system:masters",))
    sa_key = key()
    save("sa", sa_key)
    (pki / "sa.pub").write_bytes(sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                  serialization.PublicFormat.SubjectPublicKeyInfo))


def _kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "shoprank-local",
           "clusters": [{"name": "shoprank-local", "cluster": {"server": server,
                                                                "certificate-authority": str(pki / "ca.crt")}}],
           "users": [{"name": user, "user": {"client-certificate": str(pki / f"{user}.crt"),
                                             "client-key": str(pki / f"{user}.key")}}],
           "contexts": [{"name": "shoprank-local", "context": {"cluster": "shoprank-local", "user": user}}]}
    path.write_text(json.dumps(doc, indent=1))


# --- processes -----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _state_file() -> Path:
    return state_dir() / "state.json"


def load_state() -> dict[str, Any] | None:
    try:
        return json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None


def _save_state(state: dict[str, Any]) -> None:
    path = Path(state["dir"]) / "state.json"
    tmp = path.with_suffix(".part")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)


def _alive(pid: int, binary: str) -> bool:
    """The process `pid` runs and is ours (its executable is `binary`): a recycled pid is not signalled."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return os.path.realpath(exe) == os.path.realpath(binary)


def _start(state: dict[str, Any], name: str, args: list[str], env: dict[str, str] | None = None, *,
           exe: str | None = None, netns: str | None = None) -> None:
    """Start `args` (args[0] names a binary of the cache unless `exe` is given) with its output in logs/NAME.log;
    with `netns`, inside that network namespace (`nsenter --net`, which execs the binary: the recorded pid is
    the binary's own)."""
    logs = Path(state["dir"]) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    binary = exe or str(Path(state["bin"]) / args[0])
    cmd = [binary, *args[1:]]
    if netns:
        cmd = [shutil.which("nsenter") or "nsenter", f"--net={netns}", "--", *cmd]
    with open(logs / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=dict(os.environ, **(env or {})))
    if netns:  # wait for nsenter's exec, so that liveness checks see the binary
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc.poll() is None and not _alive(proc.pid, binary):
            time.sleep(0.02)
    state["procs"][name] = {"pid": proc.pid, "binary": binary}
    _save_state(state)


def log_tail(name: str, lines: int = 30) -> str:
    path = state_dir() / "logs" / f"{name}.log"
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait(what: str, check: Any, state: dict[str, Any], proc_name: str, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        info = state["procs"].get(proc_name)
        if info and not _alive(info["pid"], info["binary"]):
            raise ClusterError(f"{proc_name} exited while waiting for {what}; its log ends:\n{log_tail(proc_name)}")
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what} ({last}); {proc_name} log ends:\n"
                       f"{log_tail(proc_name)}")


def _https_ok(url: str, pki: Path, client: str = "admin") -> bool:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / f"{client}.crt"), str(pki / f"{client}.key"))
    with urllib.request.urlopen(url, context=ctx, timeout=5) as response:  # noqa: S310 - loopback
        return response.status == 200


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
        return response.status == 200


def kubectl(state: dict[str, Any], *args: str, stdin: str | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("kubectl")
    if binary is None:
        raise ClusterError("kubectl is not on PATH")
    proc = subprocess.run([binary, "--kubeconfig", state["kubeconfig"], *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


# --- objects -------------------------------------------------------------------------------------------------------


def node_manifest(name: str, *, gpus: int = 0, cpu: str = "32", memory: str = "128Gi") -> dict[str, Any]:
    """A KWOK-managed node. GPU nodes carry the manifests' GPU label, `nvidia.com/gpu` capacity and the
    `nvidia.com/gpu:NoSchedule` taint, as the NVIDIA GPU operator sets them up."""
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
              "type": "kwok", "shoprank.dev/node-kind": "gpu" if gpus else "cpu"}
    capacity = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "200Gi"}
    spec: dict[str, Any] = {}
    if gpus:
        labels[GPU_LABEL[0]] = GPU_LABEL[1]
        capacity[GPU_RESOURCE] = str(gpus)
        spec["taints"] = [{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}]
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels,
                         "annotations": {KWOK_ANNOTATION: "fake"}},
            "spec": spec,
            "status": {"capacity": capacity, "allocatable": dict(capacity)}}


# Simulated nodes. The local cluster's CPU node is the real one (node.NODE_NAME); on kind, KWOK adds simulated
# CPU nodes too (the kind node itself is cordoned).
GPU_NODES = (("gpu-node-0", 2), ("gpu-node-1", 2))
DEFAULT_NODES = (("cpu-node-0", 0), ("cpu-node-1", 0), *GPU_NODES)


def add_nodes(state: dict[str, Any], nodes: list[tuple[str, int]]) -> None:
    items = [node_manifest(name, gpus=gpus) for name, gpus in nodes]
    for i in range(0, len(items), 50):
        kubectl(state, "apply", "--server-side", "--field-manager=shoprank-cluster", "-f", "-",
                stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items[i:i + 50]}))


def wait_nodes_ready(state: dict[str, Any], names: list[str], timeout: float = 60) -> None:
    def ready() -> bool:
        out = kubectl(state, "get", "nodes", "-o", "json").stdout
        status = {}
        for node in json.loads(out)["items"]:
            conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions") or []}
            status[node["metadata"]["name"]] = conds.get("Ready") == "True"
        return all(status.get(n) for n in names)
    _wait(f"{len(names)} nodes Ready (KWOK)", ready, state, "kwok", timeout)


def kwok_config(state: dict[str, Any], kwok_dir: Path) -> Path:
    """KWOK's configuration: its own 'fast' stages (nodes Ready with lease heartbeats; pods Running and Ready
    once scheduled, deleted when asked), rendered from the KWOK module with `kubectl kustomize`."""
    stages = subprocess.run([shutil.which("kubectl") or "kubectl", "kustomize", str(kwok_dir / "kustomize" /
                                                                                     "stage" / "fast")],
                            capture_output=True, text=True, timeout=60, check=False)
    if stages.returncode != 0:
        raise ClusterError(f"rendering KWOK's stages failed: {stages.stderr}")
    path = Path(state["dir"]) / "kwok.yaml"
    options = {"podPlayStageParallelism": 8, "nodePlayStageParallelism": 8, "nodeLeaseParallelism": 8,
               "podsOnNodeSyncParallelism": 2}  # KWOK's defaults are not applied to a config file's options
    head = {"apiVersion": "config.kwok.x-k8s.io/v1alpha1", "kind": "KwokConfiguration", "options": options}
    path.write_text(json.dumps(head) + "\n---\n" + stages.stdout)
    return path


def _module_dir(module: str, version: str, cwd: Path) -> Path:
    proc = subprocess.run([go_binary(), "mod", "download", "-json", f"{module}@{version}"], cwd=cwd,
                          env=dict(_go_env(), GOFLAGS="-mod=mod"), capture_output=True, text=True, timeout=900,
                          check=False)
    info = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    if proc.returncode != 0 or not info.get("Dir"):
        raise ClusterError(f"`go mod download {module}@{version}` failed: {info.get('Error') or proc.stderr}")
    return Path(info["Dir"])


def kserve_crd_files(source: Path) -> list[Path]:
    """KServe's CRDs (config/crd/full), without the LLMInferenceService ones (another controller, and they
    need a conversion webhook)."""
    full = source / "config" / "crd" / "full"
    files = sorted(full.glob("serving.kserve.io_*.yaml"))
    for sub in ("clusterstoragecontainer", "localmodel"):
        files += sorted((full / sub).glob("serving.kserve.io_*.yaml"))
    return files


def kserve_configmap(source: Path, storage_initializer: str | None = None) -> dict[str, Any]:
    """KServe's `inferenceservice-config` with the Standard deployment mode as default and no Ingress; with
    `storage_initializer`, the storage initializer image built here (images.py) instead of KServe's."""
    import yaml

    docs = [d for d in yaml.safe_load_all((source / "config" / "configmap" / "inferenceservice.yaml").read_text())
            if d]
    cm = next(d for d in docs if d.get("kind") == "ConfigMap")
    data = cm["data"]
    data.pop("_example", None)
    data["deploy"] = json.dumps({"defaultDeploymentMode": "Standard"})
    ingress = json.loads(data["ingress"])
    ingress.update(disableIngressCreation=True, disableIstioVirtualHost=True)
    data["ingress"] = json.dumps(ingress)
    if storage_initializer:
        initializer = json.loads(data["storageInitializer"])
        initializer["image"] = storage_initializer
        data["storageInitializer"] = json.dumps(initializer)
    cm["metadata"]["namespace"] = KSERVE_NAMESPACE
    return cm


def kserve_webhooks(state: dict[str, Any]) -> list[dict[str, Any]]:
    """KServe's InferenceService defaulting/validation, its pod mutator (which injects the storage initializer
    and the storage credentials into predictor and transformer pods, selected as in KServe's own manifests) and
    ServingRuntime validation webhooks, served by the local manager on 127.0.0.1."""
    import base64

    ca = base64.b64encode((Path(state["dir"]) / "pki" / "ca.crt").read_bytes()).decode()
    base = f"https://127.0.0.1:{state['ports']['kserve_webhook']}"

    def hook(name: str, path: str, resource: str, version: str, ops: list[str]) -> dict[str, Any]:
        return {"name": name, "clientConfig": {"url": base + path, "caBundle": ca},
                "rules": [{"apiGroups": ["serving.kserve.io"], "apiVersions": [version], "operations": ops,
                           "resources": [resource]}],
                "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1", "v1beta1"],
                "timeoutSeconds": 10}

    pod_mutator = {
        "name": "inferenceservice.kserve-webhook-server.pod-mutator",
        "clientConfig": {"url": base + "/mutate-pods", "caBundle": ca},
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
        "namespaceSelector": {"matchExpressions": [{"key": "control-plane", "operator": "DoesNotExist"}]},
        "objectSelector": {"matchExpressions": [{"key": "serving.kserve.io/inferenceservice",
                                                 "operator": "Exists"}]},
        "failurePolicy": "Fail", "sideEffects": "None", "reinvocationPolicy": "IfNeeded",
        "admissionReviewVersions": ["v1", "v1beta1"], "timeoutSeconds": 10}
    return [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
         "metadata": {"name": "inferenceservice.serving.kserve.io"},
         "webhooks": [hook("inferenceservice.kserve-webhook-server.defaulter",
                           "/mutate-serving-kserve-io-v1beta1-inferenceservice", "inferenceservices", "v1beta1",
                           ["CREATE", "UPDATE"]), pod_mutator]},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
         "metadata": {"name": "inferenceservice.serving.kserve.io"},
         "webhooks": [hook("inferenceservice.kserve-webhook-server.validator",
                           "/validate-serving-kserve-io-v1beta1-inferenceservice", "inferenceservices", "v1beta1",
                           ["CREATE", "UPDATE"])]},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
         "metadata": {"name": "servingruntime.serving.kserve.io"},
         "webhooks": [hook("servingruntime.kserve-webhook-server.validator",
                           "/validate-serving-kserve-io-v1alpha1-servingruntime", "servingruntimes", "v1alpha1",
                           ["CREATE", "UPDATE"])]},
    ]


# --- up / down ------------------------------------------------------------------------------------------------------


def _ensure_down_if_stale() -> dict[str, Any] | None:
    state = load_state()
    if state is None:
        return None
    if all(_alive(p["pid"], p["binary"]) for p in state["procs"].values()) and state.get("up"):
        return state
    log("a previous cluster is half up or gone: cleaning it up first")
    down()
    return None


def up(*, kserve: bool = True) -> dict[str, Any]:
    """Start the cluster (building the binaries first if needed); return its state."""
    existing = _ensure_down_if_stale()
    if existing is not None:
        log(f"already up: KUBECONFIG={existing['kubeconfig']}")
        return existing
    missing = node.missing_packages()
    if missing:
        raise ClusterError(f"the real node needs Debian packages that are not installed: {' '.join(missing)} "
                           f"(apt-get install -y {' '.join(missing)}; .ci/run installs them)")
    # The images (debootstrap, pip: mostly downloads) build while Go compiles (CPU): a cold start saves their time.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        containers = pool.submit(_build_container_images)
        binaries = build()
        image_refs = build_images(binaries, containers.result())
    start = time.monotonic()
    run = state_dir()
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    pki = run / "pki"
    ports = {name: free_port() for name in ("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler",
                                            "kwok", "kserve_webhook", "kserve_metrics", "kserve_probe")}
    server = f"https://127.0.0.1:{ports['apiserver']}"
    state: dict[str, Any] = {"dir": str(run), "bin": str(binaries), "ports": ports, "server": server,
                             "kubeconfig": str(run / "kubeconfig"), "procs": {}, "up": False,
                             "versions": versions(), "kserve": kserve, "images": image_refs,
                             "node": {"name": node.NODE_NAME, "ip": node.NODE_IP, "netns": node.NETNS}}
    _save_state(state)
    try:
        _up(state, pki, kserve)
    except BaseException:
        log("start failed: stopping what was started")
        down(keep_logs=True)
        raise
    state["up"] = True
    state["start_seconds"] = round(time.monotonic() - start, 1)
    _save_state(state)
    log(f"cluster up in {state['start_seconds']}s: export KUBECONFIG={state['kubeconfig']}")
    return state


def _up(state: dict[str, Any], pki: Path, kserve: bool) -> None:
    run, ports, server = Path(state["dir"]), state["ports"], state["server"]
    t0 = time.monotonic()
    _write_pki(pki)
    for user in ("admin", "controller-manager", "scheduler", "kwok", "kserve"):
        _kubeconfig(run / (f"{user}.kubeconfig" if user != "admin" else "kubeconfig"), server, pki, user)
    log(f"certificates and kubeconfigs in {run} ({time.monotonic() - t0:.1f}s)")

    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
    _start(state, "etcd", ["etcd", "--name=local", f"--data-dir={run / 'etcd'}", f"--listen-client-urls={etcd_url}",
                           f"--advertise-client-urls={etcd_url}", f"--listen-peer-urls={peer_url}",
                           f"--initial-advertise-peer-urls={peer_url}", f"--initial-cluster=local={peer_url}",
                           "--listen-metrics-urls=", "--unsafe-no-fsync=true", "--log-level=warn",
                           "--quota-backend-bytes=4294967296"])
    _wait("etcd health", lambda: _http_ok(etcd_url + "/health"), state, "etcd", 60)
    log(f"etcd ready ({time.monotonic() - t0:.1f}s)")

    _start(state, "kube-apiserver", [
        "kube-apiserver", f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
        f"--secure-port={ports['apiserver']}", f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}", f"--client-ca-file={pki / 'ca.crt'}",
        "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
        f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-cluster-ip-range={SERVICE_CIDR}", "--allow-privileged=true", "--anonymous-auth=false",
        "--endpoint-reconciler-type=none", "--profiling=false",
        # The real node's kubelet API (logs, exec, port-forward, metrics-server's scrape) at its InternalIP,
        # with its serving certificate checked against the cluster CA.
        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}", "--kubelet-preferred-address-types=InternalIP",
        # The aggregation layer (metrics.k8s.io from metrics-server), routed to the endpoint's address since
        # there is no kube-proxy for Service IPs.
        f"--requestheader-client-ca-file={pki / 'ca.crt'}", "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
        f"--proxy-client-key-file={pki / 'front-proxy-client.key'}", "--enable-aggregator-routing=true",
        "--v=1"])
    _wait("kube-apiserver /readyz", lambda: _https_ok(server + "/readyz", pki), state, "kube-apiserver")
    log(f"kube-apiserver ready at {server} ({time.monotonic() - t0:.1f}s)")

    _start(state, "kube-controller-manager", [
        "kube-controller-manager", f"--kubeconfig={run / 'controller-manager.kubeconfig'}",
        f"--authentication-kubeconfig={run / 'controller-manager.kubeconfig'}",
        f"--authorization-kubeconfig={run / 'controller-manager.kubeconfig'}",
        "--bind-address=127.0.0.1", f"--secure-port={ports['controller_manager']}", "--leader-elect=false",
        "--use-service-account-credentials=true", f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}", f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--controllers=*",
        # HPA windows shortened for the tests (defaults: 5 min scale-down stabilisation, 5 min CPU
        # initialisation, 30 s readiness delay), so 1 -> 2 -> 1 replicas fits in a test.
        "--horizontal-pod-autoscaler-sync-period=5s", "--horizontal-pod-autoscaler-downscale-stabilization=20s",
        "--horizontal-pod-autoscaler-cpu-initialization-period=20s",
        "--horizontal-pod-autoscaler-initial-readiness-delay=10s", "--concurrent-deployment-syncs=10",
        "--concurrent-replicaset-syncs=10", "--kube-api-qps=100", "--kube-api-burst=200", "--v=1"])
    _start(state, "kube-scheduler", [
        "kube-scheduler", f"--kubeconfig={run / 'scheduler.kubeconfig'}",
        f"--authentication-kubeconfig={run / 'scheduler.kubeconfig'}",
        f"--authorization-kubeconfig={run / 'scheduler.kubeconfig'}",
        "--bind-address=127.0.0.1", f"--secure-port={ports['scheduler']}", "--leader-elect=false", "--v=1"])
    kwok_src = _module_dir("sigs.k8s.io/kwok", state["versions"]["kwok"], HERE / "kwok")
    _start(state, "kwok", [
        "kwok", f"--kubeconfig={run / 'kwok.kubeconfig'}", f"--config={kwok_config(state, kwok_src)}",
        f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake", "--node-lease-duration-seconds=40",
        f"--server-address=127.0.0.1:{ports['kwok']}", "--cidr=10.244.0.0/16", "--node-ip=10.0.0.1"])

    add_nodes(state, list(GPU_NODES))
    source = _kserve_source(go_binary(), _go_env())
    files = [arg for crd in kserve_crd_files(source) for arg in ("-f", str(crd))]
    kubectl(state, "apply", "--server-side", "--field-manager=shoprank-cluster", *files)
    def established() -> bool:
        crds = json.loads(kubectl(state, "get", "crd", "-o", "json").stdout)["items"]
        return bool(crds) and all(any(c["type"] == "Established" and c["status"] == "True"
                                      for c in (crd.get("status") or {}).get("conditions") or []) for crd in crds)
    _wait("KServe's CRDs Established", established, state, "kube-apiserver", 60)
    log(f"KServe {KSERVE_VERSION} CRDs installed ({time.monotonic() - t0:.1f}s)")
    wait_nodes_ready(state, [n for n, _ in GPU_NODES])
    _wait("the default ServiceAccount (kube-controller-manager)",
          lambda: kubectl(state, "get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
          state, "kube-controller-manager")
    log(f"nodes Ready, controllers running ({time.monotonic() - t0:.1f}s)")
    start_node(state)
    log(f"real node {node.NODE_NAME} Ready at {node.NODE_IP}, metrics-server and the S3 store up "
        f"({time.monotonic() - t0:.1f}s)")
    if kserve:
        start_kserve(state, source)
        log(f"KServe controller ready ({time.monotonic() - t0:.1f}s)")


STORAGE_SECRET = "shoprank-storage"  # manifests/base/model-reader-serviceaccount.yaml names it


def storage_secret(state: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The `shoprank-storage` secret for the cluster's S3 store, as a user creates it for an S3-compatible store
    (manifests/base/model-reader-serviceaccount.yaml): the key pair, and KServe's s3-* annotations with the
    store's address, which KServe's pod webhook turns into the storage initializer's AWS_* / S3_* variables."""
    s3 = state.get("s3") or {"endpoint": "http://s3.invalid", "access_key": "none", "secret_key": "none",
                             "region": "us-east-1"}
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": STORAGE_SECRET, "namespace": namespace, "annotations": {
                "serving.kserve.io/s3-endpoint": s3["endpoint"].split("://", 1)[1],
                "serving.kserve.io/s3-usehttps": "0", "serving.kserve.io/s3-region": s3["region"],
                "serving.kserve.io/s3-useanoncredential": "false"}},
            "stringData": {"AWS_ACCESS_KEY_ID": s3["access_key"], "AWS_SECRET_ACCESS_KEY": s3["secret_key"]}}


def s3_client(state: dict[str, Any]) -> Any:
    """A boto3 client for the cluster's S3 store (path-style addressing: the store has no per-bucket names)."""
    import boto3
    from botocore.config import Config

    s3 = state["s3"]
    return boto3.client("s3", endpoint_url=s3["endpoint"], aws_access_key_id=s3["access_key"],
                        aws_secret_access_key=s3["secret_key"], region_name=s3["region"],
                        config=Config(retries={"max_attempts": 3}, s3={"addressing_style": "path"}))


def images_cache() -> Path:
    path = cache_root() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _build_container_images() -> dict[str, str] | ClusterError:
    try:
        return images.build_containers(images_cache())
    except images.ImageError as exc:
        return ClusterError(f"building the real node's images failed: {exc}")


def build_images(binaries: Path, built: dict[str, str] | ClusterError | None = None) -> dict[str, str]:
    """The node's images (hack/cluster/images.py): built once per content, cached in podman's store; `built`:
    what a concurrent _build_container_images returned."""
    t0 = time.monotonic()
    if built is None:
        built = _build_container_images()
    if isinstance(built, ClusterError):
        raise built
    refs = dict(built, pause=images.pause_archive(images_cache(), binaries / "pause")[0])
    log(f"images ready ({time.monotonic() - t0:.0f}s): {', '.join(refs.values())}")
    return refs


def start_node(state: dict[str, Any]) -> None:
    """The real node: network namespace, containerd (images imported), the API server forwarder, kubelet
    (Ready), the S3 store, metrics-server (metrics.k8s.io served). See hack/cluster/node.py."""
    run, pki = Path(state["dir"]), Path(state["dir"]) / "pki"
    t0 = time.monotonic()
    node.create_network()
    state["node"]["network"] = True
    _save_state(state)
    ctr_sock = node.containerd_socket(run)
    config = node.write_containerd_config(run, state["images"]["pause"], cache_root() / "containerd")
    _start(state, "containerd", node.containerd_args(config), exe=shutil.which("containerd") or "containerd",
           netns=node.NETNS_PATH)
    _wait("containerd", lambda: images.ctr(ctr_sock, "version", check=False).returncode == 0, state, "containerd", 60)
    try:
        loaded = images.load(images_cache(), ctr_sock, state["images"], Path(state["bin"]) / "pause")
    except images.ImageError as exc:
        raise ClusterError(f"loading images into the node's containerd failed: {exc}") from exc
    log(f"containerd up, images in its store ({len(loaded)} imported, {time.monotonic() - t0:.0f}s)")

    host, port = node.APISERVER_IN_NODE.rsplit(":", 1)
    _start(state, "apiserver-forward", ["nsforward", str(HERE / "nsforward.py"), f"--netns={node.NETNS_PATH}",
                                        f"--listen={node.APISERVER_IN_NODE}",
                                        f"--connect=127.0.0.1:{state['ports']['apiserver']}"],
           exe=sys.executable)
    in_node = f"https://{node.APISERVER_IN_NODE}"
    _kubeconfig(run / "kubelet.kubeconfig", in_node, pki, "kubelet-node")
    _kubeconfig(run / "metrics-server.kubeconfig", in_node, pki, "metrics-server-client")
    state["ports"]["kubelet_healthz"] = free_port()
    kubelet_config = node.write_kubelet_config(run, pki, state["ports"]["kubelet_healthz"])
    _start(state, "kubelet", node.kubelet_args(run, kubelet_config, run / "kubelet.kubeconfig"),
           netns=node.NETNS_PATH)

    def ready() -> bool:
        got = kubectl(state, "get", "node", node.NODE_NAME, "-o", "json", check=False)
        if got.returncode != 0:
            return False
        conds = {c["type"]: c["status"] for c in json.loads(got.stdout).get("status", {}).get("conditions") or []}
        return conds.get("Ready") == "True"
    _wait(f"node {node.NODE_NAME} Ready (kubelet)", ready, state, "kubelet", 180)

    access, secret = node.new_s3_credentials()
    state["s3"] = {"endpoint": f"http://{node.NODE_IP}:{node.S3_PORT}", "access_key": access, "secret_key": secret,
                   "region": node.S3_REGION}
    _start(state, "s3-store", node.s3_args(run, access, secret), netns=node.NETNS_PATH)
    _wait("the S3 store (versitygw)", lambda: _http_ok(f"{state['s3']['endpoint']}/health"), state, "s3-store", 60)

    _start(state, "metrics-server", node.metrics_server_args(run, pki, run / "metrics-server.kubeconfig"),
           netns=node.NETNS_PATH)
    kubectl(state, "apply", "--server-side", "--force-conflicts", "--field-manager=shoprank-cluster", "-f", "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": node.metrics_api_objects(pki)}))

    def metrics_api() -> bool:
        got = kubectl(state, "get", "apiservice", "v1beta1.metrics.k8s.io", "-o", "json", check=False)
        conds = {c["type"]: c["status"] for c in
                 (json.loads(got.stdout).get("status", {}).get("conditions") or [] if got.returncode == 0 else [])}
        return conds.get("Available") == "True"
    _wait("metrics.k8s.io Available (metrics-server)", metrics_api, state, "metrics-server", 120)
    _save_state(state)


def stop_node(state: dict[str, Any]) -> None:
    """Stop the kubelet, every container of the node, containerd, metrics-server, the store and the forwarder;
    remove the pods' network namespaces, every mount below the state folder, the veth pair and the namespace."""
    run = Path(state["dir"])
    for name in ("metrics-server", "s3-store", "kubelet"):
        stop_process(state, name)
    sock = node.containerd_socket(run)
    netns_paths: list[str] = []
    if "containerd" in state["procs"]:
        netns_paths = node.sandbox_netns_paths(sock)
        node.kill_tasks(sock)
    stop_process(state, "containerd", timeout=30)
    stop_process(state, "apiserver-forward")
    node.remove_netns_files(netns_paths)
    node.remove_log_links(run)
    node.unmount_under(run)
    if (state.get("node") or {}).get("network") or node.netns_exists():
        node.delete_network()


def start_kserve(state: dict[str, Any], source: Path | None = None) -> None:
    """Start KServe's controller manager (Standard mode) and register its webhooks."""
    source = source or _kserve_source(go_binary(), _go_env())
    run, ports = Path(state["dir"]), state["ports"]
    kubectl(state, "create", "namespace", KSERVE_NAMESPACE, check=False)
    kubectl(state, "apply", "--server-side", "--force-conflicts", "--field-manager=shoprank-cluster", "-f", "-",
            stdin=json.dumps(kserve_configmap(source, state.get("images", {}).get("storage-initializer"))))
    certs = run / "kserve-tmp" / "k8s-webhook-server" / "serving-certs"
    certs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "pki" / "webhook.crt", certs / "tls.crt")
    shutil.copyfile(run / "pki" / "webhook.key", certs / "tls.key")
    _start(state, "kserve-manager", [
        "kserve-manager", f"--metrics-addr=127.0.0.1:{ports['kserve_metrics']}",
        f"--health-probe-addr=127.0.0.1:{ports['kserve_probe']}", f"--webhook-port={ports['kserve_webhook']}",
        "--leader-elect=false"],
        env={"KUBECONFIG": str(run / "kserve.kubeconfig"), "POD_NAMESPACE": KSERVE_NAMESPACE,
             "TMPDIR": str(run / "kserve-tmp")})
    _wait("KServe controller /readyz", lambda: _http_ok(f"http://127.0.0.1:{ports['kserve_probe']}/readyz"), state,
          "kserve-manager")
    kubectl(state, "apply", "--server-side", "--force-conflicts", "--field-manager=shoprank-cluster", "-f", "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": kserve_webhooks(state)}))


def stop_process(state: dict[str, Any], name: str, timeout: float = 15) -> None:
    info = state["procs"].pop(name, None)
    _save_state(state)
    if not info or not _alive(info["pid"], info["binary"]):
        return
    os.kill(info["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(info["pid"], info["binary"]):
        time.sleep(0.2)
    if _alive(info["pid"], info["binary"]):
        os.kill(info["pid"], signal.SIGKILL)


def down(keep_logs: bool = False) -> None:
    """Stop every process of the cluster (the pids this driver recorded, checked against their binaries), in
    reverse start order, and remove the state (with keep_logs, logs/ stays for a post-mortem)."""
    state = load_state()
    run = state_dir()
    if state is None:
        node.unmount_under(run)
        if node.netns_exists():
            node.delete_network()
        if run.exists() and not keep_logs:
            shutil.rmtree(run, ignore_errors=True)
        log("no cluster state: nothing to stop")
        return
    if state.get("node"):
        stop_node(state)
    for name in reversed(list(state["procs"])):
        stop_process(state, name)
    if keep_logs:
        for child in run.iterdir():
            if child.name != "logs":
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
    else:
        shutil.rmtree(run, ignore_errors=True)
    log("cluster down" + (f" (logs kept in {run / 'logs'})" if keep_logs else ""))


def attach_kwok(kubeconfig: str) -> dict[str, Any]:
    """CLUSTER=kind: run the pinned KWOK build locally against another cluster (kind with KServe) and add the
    same simulated CPU and GPU nodes, so the scheduling checks mean the same there. Returns a state like up()'s
    (no control-plane processes, `kubeconfig` the given one). Not runnable on the project's machines (no Docker)."""
    binaries = build()
    run = state_dir().with_name("kind-kwok")
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    state: dict[str, Any] = {"dir": str(run), "bin": str(binaries), "ports": {"kwok": free_port()},
                             "kubeconfig": kubeconfig, "procs": {}, "up": True, "versions": versions(),
                             "kserve": True, "attached": True}
    _save_state(state)
    kwok_src = _module_dir("sigs.k8s.io/kwok", state["versions"]["kwok"], HERE / "kwok")
    _start(state, "kwok", [
        "kwok", f"--kubeconfig={kubeconfig}", f"--config={kwok_config(state, kwok_src)}",
        f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake", "--node-lease-duration-seconds=40",
        f"--server-address=127.0.0.1:{state['ports']['kwok']}", "--cidr=10.245.0.0/16", "--node-ip=10.0.0.2"])
    # The kind node itself would take the CPU pods and try to pull the (unpullable) test image: cordon it.
    kubectl(state, "cordon", "-l", "type!=kwok")
    add_nodes(state, list(DEFAULT_NODES))
    wait_nodes_ready(state, [n for n, _ in DEFAULT_NODES])
    return state


def detach_kwok(state: dict[str, Any]) -> None:
    """Delete the simulated nodes from the kind cluster and stop the local KWOK."""
    kubectl(state, "delete", "nodes", "-l", "type=kwok", "--wait=false", check=False)
    kubectl(state, "uncordon", "-l", "type!=kwok", check=False)
    stop_process(state, "kwok")


def status() -> int:
    state = load_state()
    if state is None:
        print("down")
        return 1
    ok = True
    for name, info in state["procs"].items():
        alive = _alive(info["pid"], info["binary"])
        ok &= alive
        print(f"{name:26s} pid {info['pid']:>7}  {'running' if alive else 'NOT RUNNING'}")
    print(f"server {state['server']}  KUBECONFIG={state['kubeconfig']}  up={state.get('up')}")
    if state.get("node"):
        print(f"real node {state['node']['name']} at {state['node']['ip']} (network namespace "
              f"{state['node']['netns']}); S3 store {(state.get('s3') or {}).get('endpoint')}")
    for name, ref in (state.get("images") or {}).items():
        print(f"image {name:20s} {ref}")
    return 0 if ok and state.get("up") else 1


def refresh_images() -> dict[str, Any]:
    """Rebuild the images whose content changed (the serving image after a code change) and import them into
    the running node; the state then names the new references."""
    state = load_state()
    if state is None or not state.get("up"):
        raise ClusterError("the cluster is not up (make cluster-up)")
    refs = build_images(Path(state["bin"]))
    try:
        images.load(images_cache(), node.containerd_socket(Path(state["dir"])), refs, Path(state["bin"]) / "pause")
    except images.ImageError as exc:
        raise ClusterError(f"loading images into the node's containerd failed: {exc}") from exc
    state["images"] = refs
    _save_state(state)
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("build", "up", "down", "status", "kubeconfig", "add-nodes", "versions",
                                            "images", "serving-image"))
    parser.add_argument("count", nargs="?", type=int, default=0)
    parser.add_argument("--no-kserve", action="store_true", help="up: do not start KServe's controller")
    parser.add_argument("--force", action="store_true", help="build: rebuild even when cached")
    parser.add_argument("--keep-logs", action="store_true", help="down: keep the logs folder")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            build(force=args.force)
        elif args.command == "up":
            up(kserve=not args.no_kserve)
        elif args.command == "down":
            down(keep_logs=args.keep_logs)
        elif args.command == "status":
            return status()
        elif args.command == "kubeconfig":
            print(state_dir() / "kubeconfig")
        elif args.command == "images":
            refresh_images()
        elif args.command == "serving-image":
            state = load_state()
            if state is None or not state.get("images"):
                raise ClusterError("the cluster is not up (make cluster-up)")
            print(state["images"]["serving"])
        elif args.command == "versions":
            print(json.dumps({**versions(), "cache": str(bin_dir())}, indent=1))
        elif args.command == "add-nodes":
            state = load_state()
            if state is None:
                raise ClusterError("the cluster is not up")
            names = [(f"gpu-scale-{i:03d}", 8) for i in range(args.count)]
            add_nodes(state, names)
            wait_nodes_ready(state, [n for n, _ in names], timeout=120)
    except ClusterError as exc:
        print(f"[cluster] ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
