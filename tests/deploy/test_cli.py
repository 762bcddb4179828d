"""`make deploy` / `make undeploy` without a cluster: arguments, prerequisite checks, rendering, the KFP package.

The checks are tested as plain functions over `Probes` (what kubectl and KFP answered), and end to end against
the two situations this machine really has: no kubeconfig, and a kubeconfig whose server does not answer.
Applying to a real API server (including `--dry-run=server`) is tested in tests/cluster (`make test-cluster`).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from deploy import cli, kfp_upload
from deploy.cli import Probes
from deploy.options import Options
from shoprank.release.kserve import names, profiles

REPO = Path(__file__).resolve().parents[2]
GOOD = dict(serving_image="registry.example/shoprank-serving:0.1.0",
            component_image="registry.example/shoprank-components:0.1.0", kfp_host="http://localhost:8080")
READY = Probes(kubectl="/usr/bin/kubectl", context="kind-shoprank", kserve_resources={"inferenceservices",
                                                                                      "servingruntimes"},
               kfp_error="")


def opts(command: str = "deploy", **kw) -> Options:
    return Options(command, **{**GOOD, **kw})


# --- arguments ---------------------------------------------------------------------------------------------


def test_parse_options_as_make_passes_them():
    o = cli.parse_options(["deploy", "--overlay", "cpu", "--kfp-upload", "0", "--create-run", "1",
                           "--run-params", '{"preset": "small"}', "--dry-run", "", "--namespace", "ranking"])
    assert (o.overlay, o.kfp_upload, o.create_run, o.dry_run, o.namespace) == ("cpu", False, True, False, "ranking")
    assert o.run_params == {"preset": "small"} and not o.uses_kfp


def test_defaults_match_the_makefile(monkeypatch):
    for var in ("OVERLAY", "NAMESPACE", "SERVING_IMAGE", "COMPONENT_IMAGE", "KFP_HOST", "MODEL_ROOT"):
        monkeypatch.delenv(var, raising=False)
    o = cli.parse_options(["deploy"])
    assert (o.overlay, o.namespace, o.kfp_upload, o.create_run) == ("gpu", "shoprank", True, False)
    mk = (REPO / "mk" / "deploy.mk").read_text()
    for line in ("OVERLAY ?= gpu", "KFP_UPLOAD ?= 1", "CREATE_RUN ?= 0", "NAMESPACE ?= shoprank"):
        assert line in mk


@pytest.mark.parametrize("argv", [["deploy", "--kfp-upload", "maybe"], ["deploy", "--run-params", "[1]"],
                                  ["deploy", "--run-params", "{oops"], ["redeploy"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        cli.parse_options(argv)


# --- prerequisites -----------------------------------------------------------------------------------------


def test_good_options_and_environment_have_no_problems():
    assert cli.check_options(opts()) == [] and cli.check_environment(opts(), READY) == []


@pytest.mark.parametrize("changes, expected", [
    ({"serving_image": ""}, "SERVING_IMAGE is not set"),
    ({"serving_image": "shoprank-serving:latest"}, "placeholder"),
    ({"component_image": ""}, "COMPONENT_IMAGE is not set"),
    ({"overlay": "tpu"}, "OVERLAY=tpu does not exist"),
    ({"kfp_runner": "pipeline-runner"}, "NAMESPACE/SERVICEACCOUNT"),
    ({"create_run": True, "kfp_upload": False, "model_root": "s3://b01", "kfp_namespace": "shoprank"},
     "needs KFP_UPLOAD=1"),
    ({"create_run": True, "kfp_runner": "kubeflow/pipeline-runner"}, "needs MODEL_ROOT"),
    ({"create_run": True, "model_root": "s3://b01"}, "KFP_RUNNER=kubeflow/pipeline-runner"),
    ({"run_params": {"preset": "tiny", "learning_rate": 1}}, "['learning_rate']"),
])
def test_option_problems(changes, expected):
    problems = cli.check_options(opts(**changes))
    assert len(problems) == 1 and expected in problems[0], problems


def test_a_gpu_triton_run_promotes_the_onnx_export_with_the_serving_image_as_transformer():
    o = opts(create_run=True, model_root="s3://b01", kfp_runner="kubeflow/pipeline-runner", overlay="gpu-triton")
    assert cli.check_options(o) == []
    params = cli.run_params(o)
    assert params["serving_profile"] == "gpu-triton"
    assert params["serving_transformer_image"] == o.serving_image
    assert "serving_transformer_image" not in cli.run_params(opts(create_run=True, overlay="gpu"))


@pytest.mark.parametrize("overlay", cli.available_overlays())
def test_runs_started_by_deploy_set_only_parameters_the_pipeline_has(overlay):
    params = cli.run_params(opts(create_run=True, overlay=overlay, model_root="s3://b01"))
    assert set(params) <= cli.pipeline_parameters(), set(params) - cli.pipeline_parameters()
    assert params["serving_profile"] == overlay


def test_every_overlay_has_the_promote_steps_profile_of_its_name():
    # What makes `serving_profile=<overlay>` right; test_profiles compares each profile with its overlay.
    assert set(cli.available_overlays()) == set(profiles.PROFILES)
    assert profiles.DEFAULT_PROFILE in profiles.PROFILES and profiles.TRITON_PROFILE in profiles.PROFILES


def test_component_image_is_not_needed_without_the_kfp_upload():
    assert cli.check_options(opts(component_image="", kfp_upload=False)) == []
    assert cli.check_options(opts("undeploy", serving_image="", component_image="")) == []


def test_a_run_in_a_multi_user_profile_needs_no_runner_binding():
    o = opts(create_run=True, model_root="gs://b01/models", kfp_namespace="shoprank")
    assert cli.check_options(o) == []
    assert cli.run_params(o) == {"deploy_target": "kserve", "serving_namespace": "shoprank",
                                 "serving_profile": "gpu", "model_root": "gs://b01/models"}
    o.run_params = {"serving_canary_percent": 10, "model_root": "s3://b02"}
    assert cli.run_params(o)["model_root"] == "s3://b02" and cli.run_params(o)["serving_canary_percent"] == 10


@pytest.mark.parametrize("probes, expected", [
    (Probes(kubectl=None), "kubectl is not on PATH"),
    (Probes(kubectl="k", context=None, context_error="current-context is not set"), "no current kubectl context"),
    (Probes(kubectl="k", context="c", server_error="connection refused", kfp_error=""), "does not answer"),
    (Probes(kubectl="k", context="c", kserve_resources={"servingruntimes"}, kfp_error=""),
     "KServe is not installed on context 'c': no inferenceservices"),
    (Probes(kubectl="k", context="c", kserve_error="forbidden", kfp_error=""), "could not list"),
    (Probes(kubectl="k", context="c", kserve_resources=set(READY.kserve_resources),
            kfp_error="ConnectionRefusedError"), "Kubeflow Pipelines at http://localhost:8080 does not answer"),
])
def test_environment_problems(probes, expected):
    problems = cli.check_environment(opts(), probes)
    assert len(problems) == 1 and expected in problems[0], problems


def test_kfp_host_missing_is_reported_with_the_cluster_problems():
    problems = cli.check_environment(opts(kfp_host=""), Probes(kubectl=None))
    assert len(problems) == 2 and "KFP_HOST is not set" in problems[1] and "KFP_UPLOAD=0" in problems[1]


def test_dry_run_needs_the_namespace_and_no_kfp():
    probes = Probes(**{**READY.__dict__, "namespace_exists": False, "kfp_error": None})
    problems = cli.check_environment(opts(dry_run=True, kfp_host=""), probes)
    assert len(problems) == 1 and "dry run cannot create it" in problems[0]


def test_gpu_triton_needs_tritons_runtime_and_the_storage_secret():
    triton = opts(overlay="gpu-triton")
    missing = Probes(**{**READY.__dict__, "triton_runtime": False, "storage_secret": False})
    problems = cli.check_environment(triton, missing)
    assert len(problems) == 2, problems
    assert "kserve-tritonserver ClusterServingRuntime" in problems[0]
    assert "secret shoprank-storage is missing" in problems[1] and "transformer" in problems[1]
    present = Probes(**{**READY.__dict__, "triton_runtime": True, "storage_secret": True})
    unreadable = Probes(**{**READY.__dict__, "triton_runtime": None, "storage_secret": None})  # Forbidden: not judged
    assert cli.check_environment(triton, present) == cli.check_environment(triton, unreadable) == []
    assert cli.check_environment(opts(overlay="gpu"), missing) == []  # other overlays do not use them


def test_undeploy_needs_no_kserve():
    probes = Probes(kubectl="k", context="c", kfp_error="")
    assert cli.check_environment(opts("undeploy"), probes) == []


def run_cli(tmp_path: Path, *args: str, kubeconfig: str) -> subprocess.CompletedProcess[str]:
    env = {"KUBECONFIG": kubeconfig, "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_without_any_kubeconfig_lists_everything_missing(tmp_path):
    proc = run_cli(tmp_path, "deploy", kubeconfig=str(tmp_path / "absent"))
    assert proc.returncode == 2
    for text in ("SERVING_IMAGE is not set", "COMPONENT_IMAGE is not set", "no current kubectl context",
                 "KFP_HOST is not set"):
        assert text in proc.stderr


def test_cli_with_a_cluster_that_does_not_answer(tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": "https://127.0.0.1:9"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    proc = run_cli(tmp_path, "check", "--overlay", "cpu", "--kfp-upload", "0", "--serving-image", "r.io/s:1",
                   kubeconfig=str(kubeconfig))
    assert proc.returncode == 2 and "the cluster of context 'gone' does not answer" in proc.stderr


class Healthz(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        code = 200 if self.path == "/apis/v2beta1/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


def test_kfp_healthz():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert cli.kfp_healthz(f"http://127.0.0.1:{server.server_address[1]}/") == ""
        assert "HTTP 404" in cli.kfp_healthz(f"http://127.0.0.1:{server.server_address[1]}/prefix")
    finally:
        server.shutdown()
        server.server_close()
    assert "Error" in cli.kfp_healthz("http://127.0.0.1:9", timeout=2)


# --- rendering -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image, parts", [
    ("shoprank-serving", ("shoprank-serving", None, None)),
    ("reg.io:5000/team/shoprank-serving:1.2-gpu", ("reg.io:5000/team/shoprank-serving", "1.2-gpu", None)),
    ("reg.io:5000/s", ("reg.io:5000/s", None, None)),
    ("ghcr.io/s@sha256:abc", ("ghcr.io/s", None, "sha256:abc")),
])
def test_split_image(image, parts):
    assert cli.split_image(image) == parts


def manifests_digest() -> str:
    h = hashlib.sha256()
    for path in sorted((REPO / "manifests").rglob("*")):
        if path.is_file():
            h.update(str(path).encode() + path.read_bytes())
    return h.hexdigest()


def test_render_sets_the_image_and_namespace_without_touching_the_repo():
    before = manifests_digest()
    docs = cli.render(opts(overlay="gpu-triton", namespace="ranking",
                           serving_image="reg.io:5000/team/shoprank-serving:1.2-gpu"))
    assert manifests_digest() == before
    assert {d["metadata"].get("namespace") for d in docs} == {"ranking"}
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert len(bindings) == 2 and all(b["subjects"][0]["namespace"] == "ranking" for b in bindings)
    runtime = next(d for d in docs if d["kind"] == "ServingRuntime")
    transformer = next(d for d in docs if d["kind"] == "InferenceService")["spec"]["transformer"]
    images = {c["image"] for c in runtime["spec"]["containers"] + transformer["containers"]}
    assert images == {"reg.io:5000/team/shoprank-serving:1.2-gpu"}


def test_render_keeps_the_base_namespace_by_default():
    docs = cli.render(opts(overlay="cpu"))
    assert {d["metadata"]["namespace"] for d in docs} == {"shoprank"}
    assert "patches" not in cli.wrapper_kustomization("../x", "shoprank", "r/s:1")


class RecordingKubectl:
    """kubectl that answers "not found" to reads and records every other command with the objects it sent."""

    binary = "kubectl"

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, ...], list[dict]]] = []

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True, echo: bool = False,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        if args[0] == "get":
            return subprocess.CompletedProcess(args, 1, "", "NotFound")
        self.calls.append((args, [d for d in yaml.safe_load_all(stdin) if d] if stdin else []))
        return subprocess.CompletedProcess(args, 0, "", "")


def test_a_standalone_kfp_runner_is_bound_to_the_runner_and_the_training_job_roles_and_unbound_again():
    kubectl = RecordingKubectl()
    o = opts(namespace="ranking", overlay="cpu", kfp_runner="kubeflow/pipeline-runner", kfp_upload=False)
    assert cli.deploy(o, kubectl) == 0
    applied = [d for args, docs in kubectl.calls if args[0] == "apply" for d in docs]
    bindings = {d["metadata"]["name"]: d for d in applied if d["kind"] == "RoleBinding"}
    # the overlay's own bindings (its ServiceAccount) and the runner's, one per Role
    assert {name: b["roleRef"]["name"] for name, b in bindings.items()} == {
        cli.RUNNER_ROLE: cli.RUNNER_ROLE, cli.TRAINING_ROLE: cli.TRAINING_ROLE,
        cli.KFP_RUNNER_BINDING: cli.RUNNER_ROLE, cli.KFP_TRAINING_BINDING: cli.TRAINING_ROLE}
    for name in (cli.KFP_RUNNER_BINDING, cli.KFP_TRAINING_BINDING):
        assert bindings[name]["metadata"]["namespace"] == "ranking"
        assert bindings[name]["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner",
                                               "namespace": "kubeflow"}]
    roles = {d["metadata"]["name"] for d in applied if d["kind"] == "Role"}
    assert {cli.RUNNER_ROLE, cli.TRAINING_ROLE} <= roles

    kubectl = RecordingKubectl()
    assert cli.undeploy(opts("undeploy", namespace="ranking", overlay="cpu", kfp_upload=False), kubectl) == 0
    deleted = [args for args, _ in kubectl.calls if args[:2] == ("delete", "rolebinding")]
    assert deleted and {cli.KFP_RUNNER_BINDING, cli.KFP_TRAINING_BINDING} <= set(deleted[0])


def test_inference_service_managed_by_promote_is_detected():
    assert (names.DEPLOY_FIELD_MANAGER, names.FIELD_MANAGER) == ("shoprank-deploy", "shoprank-promote")
    live = {"metadata": {"managedFields": [{"manager": "shoprank-deploy"}, {"manager": "shoprank-promote"}]}}
    assert cli.managed_by_promote(live)
    assert not cli.managed_by_promote({"metadata": {"managedFields": [{"manager": "shoprank-deploy"}]}})
    assert not cli.managed_by_promote(None)


def test_endpoint():
    isvc = {"status": {"url": "http://shoprank-ranker.shoprank.example.com",
                       "address": {"url": "http://shoprank-ranker-predictor.shoprank.svc.cluster.local"}}}
    assert cli.endpoint(isvc, "shoprank-ranker", "shoprank") == \
        "http://shoprank-ranker.shoprank.example.com/v2/models/shoprank-ranker/infer"
    pending = cli.endpoint({"status": {}}, "shoprank-ranker", "shoprank")
    assert pending.startswith("http://shoprank-ranker-predictor.shoprank.svc.cluster.local/v2/models/")
    assert "port-forward" in pending


# --- the KFP package ---------------------------------------------------------------------------------------


def test_pipeline_package_carries_the_component_image_and_the_model_pvc(tmp_path):
    package = kfp_upload.compile_package("registry.example/shoprank-components:9.9", "models-claim",
                                         tmp_path / "p.yaml")
    docs = list(yaml.safe_load_all(package.read_text()))
    images = {e["container"]["image"] for e in docs[0]["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/shoprank-components:9.9"}
    promote = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-promote"]
    assert promote["pvcMount"][0]["mountPath"] == "/mnt/shoprank-models"
    assert "models-claim" in json.dumps(promote["pvcMount"][0])
    # The committed golden file is not what deploy uploads: it keeps the default image and no mount.
    assert "registry.example" not in (REPO / "pipelines" / "compiled" / "shoprank_pipeline.yaml").read_text()


def test_version_names_carry_the_package_digest(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("x")
    digest = kfp_upload.package_digest(path)
    assert len(digest) == 10
    assert kfp_upload.version_name(digest, now=0) == f"19700101-000000-{digest}"


# --- imports ---------------------------------------------------------------------------------------------------


def test_deploy_imports_the_promote_steps_names_without_the_rollout():
    """deploy/cli.py takes field managers, runtimes and profiles from shoprank.release.kserve's light modules
    instead of copying them; loading it must not load the rollout, the Kubernetes or KFP clients, or numpy."""
    code = ("import sys, deploy.cli; "
            "heavy = ('kfp', 'kubernetes', 'kserve', 'boto3', 'numpy', 'tensorflow', 'pandas'); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy); "
            "bad += sorted(m for m in sys.modules if m.startswith('shoprank.') and m not in ("
            "'shoprank.release', 'shoprank.release.kserve', 'shoprank.release.kserve.names', "
            "'shoprank.release.kserve.profiles', 'shoprank.release.kserve.spec', 'shoprank.layout')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_cli_and_kfp_upload_do_not_import_each_other():
    code = "import sys, deploy.kfp_upload; assert 'deploy.cli' not in sys.modules, 'kfp_upload imports cli'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
