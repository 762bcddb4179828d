"""The Kubeflow Training Operator (v1, TFJob) in the local cluster: its CRD and its controller, built from the
operator's Go module, started beside the control plane of localcluster.py.

    python hack/cluster/training.py build     build (or find cached) the operator binary
    python hack/cluster/training.py up        on a running local cluster: TFJob CRD, controller, its webhook
    python hack/cluster/training.py down      stop the controller, remove its webhook (the CRD stays)

Why a file of its own: localcluster.py is the control plane's driver and changes for other reasons (the real
node); this file only adds the training job's pieces, and the cluster tests start them through `ensure()`
(tests/cluster/test_training.py), so `make cluster-up` is unchanged.

Recipe: hack/cluster/trainer/go.mod names `github.com/kubeflow/training-operator/cmd/training-operator.v1` as a
tool (v1.8.1, the release the v1 operator's maintained branch ships), with go.sum; its main.go is built patched, in
a copy of that module next to the output (the module cache stays untouched):
- the webhook server binds 127.0.0.1 (upstream binds every interface and has no flag for it);
- certificates come from the local cluster's CA instead of the operator's certificate rotator. The rotator waits for
  the kubelet to mount its Secret into the pod (no kubelet runs this process) and signs for the Service's DNS name
  `training-operator.kubeflow.svc`, which the API server here cannot reach (no kube-proxy); the local CA's
  webhook certificate is valid for 127.0.0.1, where the validating webhook is registered by URL.
Only the TFJob scheme is enabled (`--enable-scheme=tfjob`), no gang scheduler. The controller runs with a
`system:masters` certificate like KServe's (its own RBAC is not what is tested; the pipeline runner's is).
The binary is cached in `$SHOPRANK_CACHE_DIR/cluster/training-operator-<version>-<hash>/bin`, the hash over the
recipe (go.mod, go.sum, the patch, the Go version).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

try:  # imported as hack.cluster.training (tests) or run as a script (hack/cluster on sys.path)
    from hack.cluster import localcluster as lc
except ImportError:  # pragma: no cover - script use
    import localcluster as lc  # type: ignore[no-redef]

__all__ = ["MODULE", "PROCESS", "build", "crd_files", "ensure", "start", "stop", "version"]

HERE = Path(__file__).resolve().parent
GOMOD_DIR = HERE / "trainer"
MODULE = "github.com/kubeflow/training-operator"
PACKAGE = f"{MODULE}/cmd/training-operator.v1"
PROCESS = "training-operator"
RECIPE_VERSION = "1"
WEBHOOK_NAME = "validator.training-operator.kubeflow.org"
WEBHOOK_PATH = "/validate-kubeflow-org-v1-tfjob"
CRDS = ("kubeflow.org_tfjobs.yaml",)

# main.go edits, each (original, replacement); the build fails if an original is not found (upstream moved).
PATCHES: tuple[tuple[str, str], ...] = (
    ("Port: webhookServerPort,", 'Port: webhookServerPort, Host: "127.0.0.1",'),
    ("defer close(certsReady)", "// shoprank: certsReady is closed below (no certificate rotator)"),
    ("if err = cert.ManageCerts(mgr, certGenerationConfig, certsReady); err != nil {",
     "_ = certGenerationConfig // shoprank: certificates from the local cluster's CA (hack/cluster/training.py)\n"
     "\tclose(certsReady)\n"
     "\tif err = error(nil); err != nil {"),
)


def version() -> str:
    """The operator version hack/cluster/trainer/go.mod pins."""
    return lc._module_version(GOMOD_DIR / "go.mod", MODULE)


def _patched_main(source: str) -> str:
    for original, replacement in PATCHES:
        if original not in source:
            raise lc.ClusterError(f"{PACKAGE}/main.go: the line to patch is gone ({original!r}); update "
                                  "hack/cluster/training.py PATCHES")
        source = source.replace(original, replacement, 1)
    return source


def build_key() -> str:
    digest = hashlib.sha256(RECIPE_VERSION.encode())
    for part in ("go.mod", "go.sum"):
        digest.update(part.encode() + b"\0" + (GOMOD_DIR / part).read_bytes())
    digest.update(json.dumps(PATCHES).encode())
    go_version = subprocess.run([lc.go_binary(), "env", "GOVERSION"], capture_output=True, text=True,
                                check=False).stdout.strip()
    digest.update(go_version.encode())
    return f"training-operator-{version()}-{digest.hexdigest()[:12]}"


def bin_dir() -> Path:
    return lc.cache_root() / build_key() / "bin"


def module_dir() -> Path:
    return lc._module_dir(MODULE, version(), GOMOD_DIR)


def build(force: bool = False) -> Path:
    """Build the operator into the recipe-keyed cache (or find it there); return the binary's path."""
    target = bin_dir()
    binary = target / PROCESS
    if not force and binary.is_file() and (target / ".complete").is_file():
        lc.log(f"training operator cached in {target}")
        return binary
    go, env = lc.go_binary(), lc._go_env()
    start = time.monotonic()
    proc = subprocess.run([go, "mod", "download"], cwd=GOMOD_DIR, env=env, capture_output=True, text=True,
                          timeout=1800, check=False)
    if proc.returncode != 0:
        raise lc.ClusterError(f"`go mod download` in hack/cluster/trainer failed: {proc.stderr.strip()[-2000:]}")
    main_go = module_dir() / "cmd" / "training-operator.v1" / "main.go"
    work = target.with_name("bin.partial")
    work.mkdir(parents=True, exist_ok=True)
    # The patched main package is built in a copy of the recipe module (go.mod, go.sum: the same pins) next to the
    # output; it imports only the operator's pkg/ packages, which that module requires. (A build overlay cannot
    # replace files in the module cache.)
    src = work / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir()
    for part in ("go.mod", "go.sum"):
        shutil.copyfile(GOMOD_DIR / part, src / part)
    (src / "main.go").write_text(_patched_main(main_go.read_text()))
    lc._run_build("training-operator", [go, "build", "-v", "-trimpath", "-ldflags=-s -w", "-o", str(work / PROCESS),
                                        "."], src, env)
    shutil.rmtree(src, ignore_errors=True)
    (work / ".complete").write_text(json.dumps({"version": version(), "seconds": round(time.monotonic() - start)}))
    shutil.rmtree(target, ignore_errors=True)
    work.rename(target)
    lc.log(f"built the training operator {version()} in {time.monotonic() - start:.0f}s -> {target}")
    return target / PROCESS


def crd_files() -> list[Path]:
    """The TFJob CRD of the operator's module (manifests/base/crds)."""
    crds = module_dir() / "manifests" / "base" / "crds"
    files = [crds / name for name in CRDS]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise lc.ClusterError(f"the training operator's module has no {', '.join(missing)}")
    return files


def webhook_configuration(state: dict[str, Any]) -> dict[str, Any]:
    """The operator's TFJob validating webhook, served on 127.0.0.1 with the local CA's webhook certificate."""
    ca = base64.b64encode((Path(state["dir"]) / "pki" / "ca.crt").read_bytes()).decode()
    url = f"https://127.0.0.1:{state['ports']['training_webhook']}{WEBHOOK_PATH}"
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": WEBHOOK_NAME},
            "webhooks": [{"name": "validator.tfjob.training-operator.kubeflow.org",
                          "clientConfig": {"url": url, "caBundle": ca},
                          "rules": [{"apiGroups": ["kubeflow.org"], "apiVersions": ["v1"],
                                     "operations": ["CREATE", "UPDATE"], "resources": ["tfjobs"]}],
                          "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                          "timeoutSeconds": 10}]}


def start(state: dict[str, Any]) -> None:
    """On a running local cluster: apply the TFJob CRD, start the controller, register its webhook. The process is
    recorded in the cluster's state, so `localcluster.py down` stops it with the rest."""
    binary = build()
    files = [arg for crd in crd_files() for arg in ("-f", str(crd))]
    lc.kubectl(state, "apply", "--server-side", "--force-conflicts", "--field-manager=shoprank-cluster", *files)

    def established() -> bool:
        crd = json.loads(lc.kubectl(state, "get", "crd", "tfjobs.kubeflow.org", "-o", "json").stdout)
        return any(c["type"] == "Established" and c["status"] == "True"
                   for c in (crd.get("status") or {}).get("conditions") or [])

    lc._wait("the TFJob CRD Established", established, state, "kube-apiserver", 60)
    run = Path(state["dir"])
    for name in ("training_webhook", "training_metrics", "training_probe"):
        state["ports"].setdefault(name, lc.free_port())
    tmp = run / "training-tmp"
    certs = tmp / "k8s-webhook-server" / "serving-certs"
    certs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "pki" / "webhook.crt", certs / "tls.crt")
    shutil.copyfile(run / "pki" / "webhook.key", certs / "tls.key")
    logs = run / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ports = state["ports"]
    args = [str(binary), "--enable-scheme=tfjob", f"--metrics-bind-address=127.0.0.1:{ports['training_metrics']}",
            f"--health-probe-bind-address=127.0.0.1:{ports['training_probe']}",
            f"--webhook-server-port={ports['training_webhook']}", "--leader-elect=false"]
    env = {"KUBECONFIG": str(run / "kserve.kubeconfig"), "TMPDIR": str(tmp), "PATH": "/usr/bin:/bin"}
    with open(logs / f"{PROCESS}.log", "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    state["procs"][PROCESS] = {"pid": proc.pid, "binary": str(binary)}
    lc._save_state(state)
    lc._wait("the training operator's /readyz", lambda: lc._http_ok(f"http://127.0.0.1:{ports['training_probe']}"
                                                                  "/readyz"), state, PROCESS)
    lc.kubectl(state, "apply", "--server-side", "--force-conflicts", "--field-manager=shoprank-cluster", "-f", "-",
               stdin=json.dumps(webhook_configuration(state)))
    lc.log(f"training operator {version()} running (TFJob CRD, controller, validating webhook)")


def stop(state: dict[str, Any]) -> None:
    """Remove the webhook (admission would fail closed without the controller), then stop the controller."""
    lc.kubectl(state, "delete", "validatingwebhookconfiguration", WEBHOOK_NAME, "--ignore-not-found", check=False)
    lc.stop_process(state, PROCESS)


def running(state: dict[str, Any]) -> bool:
    info = state.get("procs", {}).get(PROCESS)
    return bool(info) and lc._alive(info["pid"], info["binary"])


def ensure(state: dict[str, Any]) -> None:
    """Start the operator on the cluster of `state` unless it already runs there."""
    if not running(state):
        start(state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("build", "up", "down", "version"))
    parser.add_argument("--force", action="store_true", help="build: rebuild even when cached")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            build(force=args.force)
        elif args.command == "version":
            print(json.dumps({"training-operator": version(), "cache": str(bin_dir())}))
        else:
            state = lc.load_state()
            if state is None or not state.get("up"):
                raise lc.ClusterError("the local cluster is not up (make cluster-up)")
            ensure(state) if args.command == "up" else stop(state)
    except lc.ClusterError as exc:
        print(f"[cluster] ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
