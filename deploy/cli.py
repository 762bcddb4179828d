"""Deploy shoprank to the current kubectl context and upload the pipeline to Kubeflow Pipelines.

    python -m deploy.cli check    [options]   prerequisites only; exit 2 and a list of what is missing
    python -m deploy.cli deploy   [options]   check, apply manifests/overlays/OVERLAY, upload the pipeline
    python -m deploy.cli undeploy [options]   remove what deploy created

What `deploy` does, in order:
1. checks prerequisites against the kubectl context: kubectl, a reachable cluster, KServe's CRDs, the image
   names, and (unless --kfp-upload 0) KFP_HOST answering; it lists everything missing at once;
2. renders the overlay through a throw-away kustomization that sets the serving image and the namespace (the
   repository is not modified) and applies it with server-side apply as field manager `shoprank-deploy`. The
   InferenceService is created once with the overlay's placeholder storageUri; once the pipeline's promote
   step manages it (field manager `shoprank-promote`), deploy leaves it alone unless
   --reset-inference-service 1;
3. with --kfp-runner NS/SA, binds the pipeline runner Role in the namespace to KFP's run ServiceAccount
   (standalone KFP runs pods in its own namespace, e.g. kubeflow/pipeline-runner);
4. compiles the pipeline with the component image and uploads it as a new version of the `shoprank` pipeline
   (creating the pipeline if absent; an identical package is not uploaded twice), optionally starts a run, and
   prints the UI links and the inference endpoint.

--dry-run 1 sends the manifests with `kubectl apply --dry-run=server` (validation by the API server and
KServe's webhooks/CRD schemas) and changes nothing, KFP included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deploy import kfp_upload
from deploy.options import BASE_NAMESPACE, Options

# The promote step's own names, from its light modules (constants and profiles; no Kubernetes client loaded).
from shoprank.release.kserve.names import DEPLOY_FIELD_MANAGER, FIELD_MANAGER, GROUP, TRITON_RUNTIME
from shoprank.release.kserve.profiles import DEFAULT_PROFILE, PROFILES, TRITON_PROFILE

__all__ = [
    "Kubectl",
    "Options",
    "Probes",
    "available_overlays",
    "build_parser",
    "check_environment",
    "check_options",
    "deploy",
    "endpoint",
    "kfp_healthz",
    "main",
    "managed_by_promote",
    "parse_options",
    "pipeline_parameters",
    "probe",
    "render",
    "run_params",
    "split_image",
    "undeploy",
    "wrapper_kustomization",
]

REPO = Path(__file__).resolve().parents[1]
OVERLAYS_DIR = REPO / "manifests" / "overlays"
COMPILED = REPO / "pipelines" / "compiled" / "shoprank_pipeline.yaml"
SERVING_IMAGE_NAME = "shoprank-serving"  # the image name the manifests use, replaced by --serving-image
CREATED_BY_LABEL = "app.kubernetes.io/managed-by"
RUNNER_ROLE = "shoprank-pipeline-runner"
KFP_RUNNER_BINDING = "shoprank-pipeline-runner-kfp"
# The multi-worker train step's Role (TFJobs; manifests/base/training-job-role.yaml), bound like RUNNER_ROLE.
TRAINING_ROLE = "shoprank-training-jobs"
KFP_TRAINING_BINDING = "shoprank-training-jobs-kfp"
KSERVE_RESOURCES = ("inferenceservices", "servingruntimes")
STORAGE_SECRET = "shoprank-storage"  # named by manifests/base/model-reader-serviceaccount.yaml


def available_overlays() -> list[str]:
    return sorted(p.name for p in OVERLAYS_DIR.iterdir() if (p / "kustomization.yaml").is_file())


def pipeline_parameters(compiled: Path = COMPILED) -> set[str]:
    """The compiled pipeline's parameter names (what --run-params may set)."""
    spec = next(yaml.safe_load_all(compiled.read_text()))
    return set(spec["root"]["inputDefinitions"]["parameters"])


def _flag(value: str) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected 1 or 0, not {value!r}")


def _json_object(value: str) -> dict[str, Any]:
    try:
        data = json.loads(value or "{}")
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError("must be a JSON object of pipeline parameters")
    return data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("check", "deploy", "undeploy"))
    parser.add_argument("--overlay", default=os.environ.get("OVERLAY", DEFAULT_PROFILE),
                        help="manifests/overlays/<name> (gpu, gpu-triton, cpu, kind)")
    parser.add_argument("--namespace", default=os.environ.get("NAMESPACE", BASE_NAMESPACE))
    parser.add_argument("--context", default="", help="kubectl context (default: the current one)")
    parser.add_argument("--serving-image", default=os.environ.get("SERVING_IMAGE", ""),
                        help="the model server image, REGISTRY/shoprank-serving:TAG (GPU overlays: a CUDA build)")
    parser.add_argument("--component-image", default=os.environ.get("COMPONENT_IMAGE", ""),
                        help="the pipeline component image, REGISTRY/shoprank-components:TAG")
    parser.add_argument("--kfp-host", default=os.environ.get("KFP_HOST", ""),
                        help="Kubeflow Pipelines API/UI address, e.g. http://localhost:8080")
    parser.add_argument("--kfp-upload", type=_flag, default=True, help="1: upload the pipeline (default); 0: skip")
    parser.add_argument("--create-run", type=_flag, default=False, help="1: start a run of the uploaded version")
    parser.add_argument("--model-root", default=os.environ.get("MODEL_ROOT", ""),
                        help="the run's model_root: s3://BUCKET/PREFIX, gs://... or pvc://CLAIM/PATH")
    parser.add_argument("--run-params", type=_json_object, default={}, help="JSON of more pipeline parameters")
    parser.add_argument("--kfp-runner", default="",
                        help="NAMESPACE/SERVICEACCOUNT of KFP's run pods to grant the pipeline runner Role to")
    parser.add_argument("--kfp-namespace", default="",
                        help="multi-user Kubeflow: the profile namespace runs go to (empty: standalone KFP)")
    parser.add_argument("--dry-run", type=_flag, default=False, help="1: server-side dry run, change nothing")
    parser.add_argument("--reset-inference-service", type=_flag, default=False,
                        help="1: re-apply the overlay's InferenceService even if the pipeline manages it")
    parser.add_argument("--model-pvc", default="", help="compile the pipeline to mount this claim on promote")
    return parser


def parse_options(argv: Sequence[str] | None = None) -> Options:
    args = build_parser().parse_args(argv)
    return Options(**vars(args))


# --- prerequisites -----------------------------------------------------------------------------------------


@dataclass
class Probes:
    """What the environment answered (filled by `probe`, or by hand in tests)."""

    kubectl: str | None = None
    context: str | None = None
    context_error: str = ""
    server_error: str = ""
    kserve_resources: set[str] = field(default_factory=set)
    kserve_error: str = ""
    namespace_exists: bool = True
    kfp_error: str | None = None  # None: not probed
    # gpu-triton only (None: not probed, or not allowed to read it):
    triton_runtime: bool | None = None  # KServe's kserve-tritonserver ClusterServingRuntime is installed
    storage_secret: bool | None = None  # the secret the model reader's ServiceAccount names exists


def _image_problems(image: str, env: str, hint: str) -> list[str]:
    if not image.strip():
        return [f"{env} is not set: {hint}"]
    if image.strip() == SERVING_IMAGE_NAME or image.strip().startswith(f"{SERVING_IMAGE_NAME}:latest"):
        return [f"{env}={image} is the manifests' placeholder: name a pushed image ({hint})"]
    return []


def check_options(opts: Options) -> list[str]:
    """Problems in the options themselves (no environment needed)."""
    problems: list[str] = []
    overlays = available_overlays()
    if opts.overlay not in overlays:
        problems.append(f"OVERLAY={opts.overlay} does not exist: one of {', '.join(overlays)}")
    if opts.command == "deploy":
        problems += _image_problems(opts.serving_image, "SERVING_IMAGE",
                                    "build and push it with `make images SERVING_IMAGE=REGISTRY/shoprank-serving:TAG`"
                                    + (" (a CUDA build for GPU overlays)" if opts.overlay.startswith("gpu") else ""))
        if opts.uses_kfp:
            problems += _image_problems(opts.component_image, "COMPONENT_IMAGE",
                                        "the pipeline steps run in it: `make images COMPONENT_IMAGE=...`")
    if opts.kfp_runner and opts.kfp_runner.count("/") != 1:
        problems.append(f"KFP_RUNNER={opts.kfp_runner} must be NAMESPACE/SERVICEACCOUNT "
                        "(e.g. kubeflow/pipeline-runner)")
    if opts.create_run:
        if not opts.kfp_upload:
            problems.append("CREATE_RUN=1 needs KFP_UPLOAD=1 (a run starts from the uploaded version)")
        if opts.overlay not in PROFILES:
            problems.append(f"CREATE_RUN=1 with OVERLAY={opts.overlay}: the promote step serves the profiles "
                            f"{sorted(PROFILES)} only")
        if not opts.kfp_runner and opts.kfp_namespace != opts.namespace:
            problems.append(f"CREATE_RUN=1: the run's pods need the pipeline runner Role in {opts.namespace}: set "
                            "KFP_RUNNER=kubeflow/pipeline-runner (standalone KFP) or "
                            f"KFP_NAMESPACE={opts.namespace} (multi-user Kubeflow, runs in that profile)")
        root = opts.model_root or str(opts.run_params.get("model_root", ""))
        if not root.startswith(("s3://", "gs://", "pvc://")):
            problems.append("CREATE_RUN=1 needs MODEL_ROOT=s3://BUCKET/PREFIX, gs://... or pvc://CLAIM/PATH: "
                            "where the run publishes the model for KServe to read")
    if opts.run_params:
        unknown = sorted(set(opts.run_params) - pipeline_parameters())
        if unknown:
            problems.append(f"RUN_PARAMS names parameters the pipeline does not have: {unknown}")
    return problems


def check_environment(opts: Options, probes: Probes) -> list[str]:
    """Problems found by probing the kubectl context and Kubeflow Pipelines."""
    return _cluster_problems(opts, probes) + _kfp_problems(opts, probes)


def _cluster_problems(opts: Options, probes: Probes) -> list[str]:
    if probes.kubectl is None:
        return ["kubectl is not on PATH: install kubectl (v1.27+, it has kustomize built in)"]
    if probes.context is None:
        where = f"context {opts.context!r}" if opts.context else "no current kubectl context"
        return [f"{where}: {probes.context_error or 'not set'} (kubectl config use-context NAME, "
                "or `make kind-up` for a local cluster)"]
    if probes.server_error:
        return [f"the cluster of context {probes.context!r} does not answer: {probes.server_error}"]
    if opts.command == "undeploy":  # it deletes what is there: no KServe needed
        return []
    problems = []
    missing = [r for r in KSERVE_RESOURCES if r not in probes.kserve_resources]
    if probes.kserve_error:
        problems.append(f"could not list {GROUP} resources: {probes.kserve_error}")
    elif missing:
        problems.append(f"KServe is not installed on context {probes.context!r}: no {', '.join(missing)} in "
                        f"{GROUP} (install KServe v0.20 in Standard mode; `make kind-up` does on kind)")
    if opts.overlay == TRITON_PROFILE:
        if probes.triton_runtime is False:
            problems.append(f"the {TRITON_RUNTIME} ClusterServingRuntime that {TRITON_PROFILE} selects is not "
                            "installed: apply KServe's cluster resources (kserve-cluster-resources.yaml of the "
                            "release, or its config/runtimes)")
        if probes.storage_secret is False:
            problems.append(f"secret {STORAGE_SECRET} is missing in namespace {opts.namespace}: KServe's controller "
                            f"refuses to reconcile {TRITON_PROFILE}'s transformer (storageUris) without the secret "
                            f"its ServiceAccount names; create it first (manifests/base/"
                            "model-reader-serviceaccount.yaml says how)")
    if opts.dry_run and not probes.namespace_exists:
        problems.append(f"namespace {opts.namespace} does not exist: a dry run cannot create it "
                        f"(kubectl create namespace {opts.namespace}, or deploy without DRY_RUN)")
    return problems


def _kfp_problems(opts: Options, probes: Probes) -> list[str]:
    if not opts.uses_kfp:
        return []
    if not opts.kfp_host:
        return ["KFP_HOST is not set: the Kubeflow Pipelines address, e.g. `kubectl port-forward -n kubeflow "
                "svc/ml-pipeline-ui 8080:80` then KFP_HOST=http://localhost:8080 (or KFP_UPLOAD=0 to skip it)"]
    if probes.kfp_error:
        return [f"Kubeflow Pipelines at {opts.kfp_host} does not answer: {probes.kfp_error} "
                "(or KFP_UPLOAD=0 to skip the upload)"]
    return []


class Kubectl:
    """Runs kubectl against one context, echoing the commands that change something."""

    def __init__(self, binary: str, context: str = "") -> None:
        self.binary, self.context = binary, context

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True, echo: bool = False,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, *(["--context", self.context] if self.context else []), *args]
        if echo:
            print("+ " + " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{proc.stderr.strip() or proc.stdout.strip()}")
        return proc


def kfp_healthz(host: str, timeout: float = 5.0) -> str:
    """'' when the KFP API answers its health check, else why not."""
    url = host.rstrip("/") + "/apis/v2beta1/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (operator-given URL)
            response.read()
        return ""
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} from {url}"
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


def _exists(proc: subprocess.CompletedProcess[str]) -> bool | None:
    """True when kubectl found it, False when the API server says NotFound, None when it may not be read."""
    if proc.returncode == 0:
        return True
    return False if "NotFound" in proc.stderr or "not found" in proc.stderr else None


def probe(opts: Options) -> Probes:
    probes = Probes(kubectl=shutil.which("kubectl"))
    if probes.kubectl is None:
        return probes
    kubectl = Kubectl(probes.kubectl, opts.context)
    if opts.context:
        names = kubectl("config", "get-contexts", "-o", "name", check=False).stdout.split()
        if opts.context in names:
            probes.context = opts.context
        else:
            probes.context_error = "not in the kubeconfig"
    else:
        proc = kubectl("config", "current-context", check=False)
        if proc.returncode == 0 and proc.stdout.strip():
            probes.context = proc.stdout.strip()
        else:
            probes.context_error = proc.stderr.strip() or "not set"
    if probes.context is None:
        return probes
    proc = kubectl("get", "--raw", "/version", "--request-timeout=10s", check=False, timeout=30)
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()
        probes.server_error = lines[-1]
    else:
        # Discovery, not the CRD objects: every authenticated user may read it, no cluster-scope RBAC needed.
        proc = kubectl("api-resources", f"--api-group={GROUP}", "-o", "name", check=False, timeout=60)
        if proc.returncode != 0:
            probes.kserve_error = proc.stderr.strip()
        probes.kserve_resources = {line.split(".")[0] for line in proc.stdout.split()}
        probes.namespace_exists = kubectl("get", "namespace", opts.namespace, check=False).returncode == 0
        if opts.overlay == TRITON_PROFILE and opts.command == "deploy":
            probes.triton_runtime = _exists(kubectl("get", "clusterservingruntime", TRITON_RUNTIME, "-o", "name",
                                                    check=False))
            probes.storage_secret = False if not probes.namespace_exists else _exists(
                kubectl("get", "secret", STORAGE_SECRET, "-n", opts.namespace, "-o", "name", check=False))
    if opts.uses_kfp and opts.kfp_host:
        probes.kfp_error = kfp_healthz(opts.kfp_host)
    return probes


# --- rendering -----------------------------------------------------------------------------------------------


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference; a registry port is not a tag."""
    name, _, digest = image.partition("@")
    tag = None
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    return name, tag, digest or None


def wrapper_kustomization(overlay_path: str, namespace: str, serving_image: str) -> dict[str, Any]:
    """A kustomization over the overlay that only swaps the serving image and, if asked, the namespace.

    `overlay_path` is relative to the wrapper's folder (kustomize refuses absolute resource paths)."""
    kustomization: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                                     "resources": [overlay_path]}
    if serving_image:
        name, tag, digest = split_image(serving_image)
        image: dict[str, str] = {"name": SERVING_IMAGE_NAME, "newName": name}
        if digest:
            image["digest"] = digest
        elif tag:
            image["newTag"] = tag
        kustomization["images"] = [image]
    if namespace != BASE_NAMESPACE:
        kustomization["namespace"] = namespace
        # kustomize does not rewrite a RoleBinding subject's namespace: do it, or the binding names nobody.
        kustomization["patches"] = [{"target": {"kind": "RoleBinding", "name": role}, "patch": json.dumps(
            [{"op": "replace", "path": "/subjects/0/namespace", "value": namespace}])}
            for role in (RUNNER_ROLE, TRAINING_ROLE)]
    return kustomization


def render(opts: Options, kubectl_binary: str = "kubectl") -> list[dict[str, Any]]:
    """The overlay's objects with the image and namespace set, rendered in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="shoprank-deploy-") as tmp:
        overlay = os.path.relpath(OVERLAYS_DIR / opts.overlay, tmp)
        Path(tmp, "kustomization.yaml").write_text(
            yaml.safe_dump(wrapper_kustomization(overlay, opts.namespace, opts.serving_image), sort_keys=False))
        proc = subprocess.run([kubectl_binary, "kustomize", tmp], capture_output=True, text=True, timeout=120,
                              check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl kustomize of overlay {opts.overlay} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def managed_by_promote(obj: dict[str, Any] | None) -> bool:
    return any(entry.get("manager") == FIELD_MANAGER for entry in ((obj or {}).get("metadata") or {}).get(
        "managedFields") or [])


def endpoint(isvc: dict[str, Any] | None, name: str, namespace: str) -> str:
    """The v2 inference URL: from the status when KServe has set one, else the cluster-local service."""
    status = (isvc or {}).get("status") or {}
    base = status.get("url") or (status.get("address") or {}).get("url")
    if base:
        return f"{base.rstrip('/')}/v2/models/{name}/infer"
    return (f"http://{name}-predictor.{namespace}.svc.cluster.local/v2/models/{name}/infer (not Ready yet; from "
            f"outside: kubectl -n {namespace} port-forward svc/{name}-predictor 8080:80)")


def _dump(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def run_params(opts: Options) -> dict[str, Any]:
    """Pipeline parameters of a run started by deploy: promote to this cluster with the profile of the same name
    as the overlay (tests/release/kserve/test_profiles.py checks that each profile is its overlay), then
    RUN_PARAMS on top."""
    params: dict[str, Any] = {"deploy_target": "kserve", "serving_namespace": opts.namespace,
                              "serving_profile": opts.overlay if opts.overlay in PROFILES else DEFAULT_PROFILE}
    if params["serving_profile"] == TRITON_PROFILE and opts.serving_image:
        params["serving_transformer_image"] = opts.serving_image  # the transformer runs the serving image
    if opts.model_root:
        params["model_root"] = opts.model_root
    params.update(opts.run_params)
    return params


def deploy(opts: Options, kubectl: Kubectl) -> int:
    docs = render(opts, kubectl.binary)
    isvcs = [d for d in docs if d.get("kind") == "InferenceService"]
    name = isvcs[0]["metadata"]["name"] if isvcs else "shoprank-ranker"
    dry = ["--dry-run=server"] if opts.dry_run else []
    if not opts.dry_run and kubectl("get", "namespace", opts.namespace, check=False).returncode != 0:
        kubectl("create", "namespace", opts.namespace, echo=True)
        kubectl("label", "namespace", opts.namespace, f"{CREATED_BY_LABEL}={DEPLOY_FIELD_MANAGER}", echo=True)
    live = kubectl("get", "inferenceservice", name, "-n", opts.namespace, "-o", "json", "--show-managed-fields",
                   check=False)
    current = json.loads(live.stdout) if live.returncode == 0 else None
    rest = [d for d in docs if d.get("kind") != "InferenceService"]
    apply = ["apply", "--server-side", f"--field-manager={DEPLOY_FIELD_MANAGER}", *dry, "-f", "-"]
    kubectl(*apply, stdin=_dump(rest), echo=True)
    if isvcs:
        if current is not None and managed_by_promote(current) and not opts.reset_inference_service:
            print(f"InferenceService {opts.namespace}/{name} is managed by the pipeline's promote step "
                  f"(serving {current['spec']['predictor'].get('model', {}).get('storageUri')}): left as it is "
                  "(--reset-inference-service 1 re-applies the overlay's)", flush=True)
        else:
            # A reset takes the fields back from the promote step on purpose; a first apply has no one to
            # conflict with.
            force = ["--force-conflicts"] if opts.reset_inference_service else []
            kubectl(*apply, *force, stdin=_dump(isvcs), echo=True)
    if opts.kfp_runner and not opts.dry_run:
        sa_namespace, sa_name = opts.kfp_runner.split("/")
        bindings = [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                     "metadata": {"name": binding, "namespace": opts.namespace,
                                  "labels": {"app.kubernetes.io/part-of": "shoprank"}},
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                     "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": sa_namespace}]}
                    for binding, role in ((KFP_RUNNER_BINDING, RUNNER_ROLE), (KFP_TRAINING_BINDING, TRAINING_ROLE))]
        kubectl(*apply, stdin=_dump(bindings), echo=True)
    if opts.dry_run:
        print(f"dry run: the API server accepted all {len(docs)} objects of overlay {opts.overlay}; nothing changed")
        return 0
    got = kubectl("get", "inferenceservice", name, "-n", opts.namespace, "-o", "json", check=False)
    isvc = json.loads(got.stdout) if got.returncode == 0 else None
    print(f"\ninference endpoint: {endpoint(isvc, name, opts.namespace)}")
    if opts.uses_kfp:
        kfp_upload.upload_and_run(opts, run_params(opts))
    else:
        print("Kubeflow Pipelines upload skipped (KFP_UPLOAD=0)")
    return 0


def undeploy(opts: Options, kubectl: Kubectl, kserve_installed: bool = True) -> int:
    docs = render(opts, kubectl.binary)
    if not kserve_installed:  # kubectl cannot even map the kinds: those objects went with KServe's CRDs
        docs = [d for d in docs if not d.get("apiVersion", "").startswith(f"{GROUP}/")]
    kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", stdin=_dump(docs), echo=True)
    kubectl("delete", "rolebinding", KFP_RUNNER_BINDING, KFP_TRAINING_BINDING, "-n", opts.namespace,
            "--ignore-not-found", echo=True)
    ns = kubectl("get", "namespace", opts.namespace, "-o", "json", check=False)
    if ns.returncode == 0:
        labels = json.loads(ns.stdout).get("metadata", {}).get("labels") or {}
        if labels.get(CREATED_BY_LABEL) == DEPLOY_FIELD_MANAGER:
            kubectl("delete", "namespace", opts.namespace, "--wait=false", echo=True)
        else:
            print(f"namespace {opts.namespace} was not created by deploy: kept")
    if opts.kfp_upload:
        kfp_upload.delete_pipeline(opts)
    print("undeployed. Promoted model versions in storage and KFP runs/experiments are kept (they are history).")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(argv)
    problems = check_options(opts)
    probes = probe(opts)
    problems += check_environment(opts, probes)
    if problems:
        print(f"shoprank {opts.command}: cannot go on, fix these first:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    if opts.command == "check":
        print(f"prerequisites met on context {probes.context!r} for overlay {opts.overlay}")
        return 0
    kubectl = Kubectl(probes.kubectl or "kubectl", opts.context)
    print(f"shoprank {opts.command}: overlay {opts.overlay}, namespace {opts.namespace}, context {probes.context}",
          flush=True)
    try:
        if opts.command == "deploy":
            return deploy(opts, kubectl)
        return undeploy(opts, kubectl, all(r in probes.kserve_resources for r in KSERVE_RESOURCES))
    except RuntimeError as exc:
        print(f"shoprank {opts.command} failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
