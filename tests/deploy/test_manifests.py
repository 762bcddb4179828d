"""Render every kustomize overlay and check it: GPU placement, pod security, RBAC, KServe CRD schemas.

Needs `kubectl` (kustomize) and, once, `go` to fetch KServe's CRDs into ~/.cache/shoprank (see
tests/support/kserve_crds.py). Both missing tools are failures, not skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoprank.release.kserve.plan import plan_promotion
from shoprank.release.kserve.spec import Resources, ServingSettings, build_inference_service
from shoprank.release.model_store import versioned_storage_uri
from tests.support import kserve_crds  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
OVERLAYS = ("cpu", "gpu", "gpu-triton", "kind")
GPU_OVERLAYS = ("gpu", "gpu-triton")
CPU_OVERLAYS = ("cpu", "kind")
NAMESPACE = "shoprank"
GPU = "nvidia.com/gpu"
RUNNER_VERBS = {"get", "list", "watch", "create", "patch", "update"}


def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("`kubectl` (with built-in kustomize) is needed to render manifests/; it is not on PATH")
    proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize {path} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(MANIFESTS / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="session")
def crds() -> Path:
    try:
        return kserve_crds.fetch_crds()
    except kserve_crds.CRDFetchError as exc:
        pytest.fail(f"cannot check manifests against KServe's CRDs: {exc}")


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc.get("kind") == kind]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def containers(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, pod-level spec, container) for every container a KServe object will run."""
    spec = obj.get("spec", {})
    if obj["kind"] in ("ServingRuntime", "ClusterServingRuntime"):
        for c in spec.get("containers", []):
            yield f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}", spec, c
    elif obj["kind"] == "InferenceService":
        for component in ("predictor", "transformer", "explainer"):
            comp = spec.get(component)
            if not comp:
                continue
            if "model" in comp:
                yield f"{component}.model", comp, comp["model"]
            for c in comp.get("containers", []):
                yield f"{component}.containers[{c.get('name')}]", comp, c


def kserve_objects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if str(d.get("apiVersion", "")).startswith("serving.kserve.io/")]


# --- rendering ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_everything_in_namespace(rendered, overlay):
    docs = rendered[overlay]
    kinds = sorted(d["kind"] for d in docs)
    hardening = {"cpu": ["NetworkPolicy", "PodDisruptionBudget"], "gpu": ["NetworkPolicy", "PodDisruptionBudget"],
                 "gpu-triton": ["NetworkPolicy"] * 2 + ["PodDisruptionBudget"] * 2, "kind": ["NetworkPolicy"]}
    assert kinds == sorted(
        ["ServiceAccount", "ServiceAccount", "Role", "RoleBinding", "ServingRuntime", "InferenceService",
         *hardening[overlay]]
    )
    for doc in docs:
        assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]["name"]
    isvc = only(docs, "InferenceService")
    assert isvc["metadata"]["name"] == "shoprank-ranker"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert isvc["spec"]["predictor"]["serviceAccountName"] == "shoprank-model-reader"


# --- GPU / CPU placement ----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_gpu_overlays_request_a_gpu_on_gpu_nodes(rendered, overlay):
    predictor = only(rendered[overlay], "InferenceService")["spec"]["predictor"]
    resources = predictor["model"]["resources"]
    assert str(resources["limits"][GPU]) == "1"
    assert str(resources.get("requests", {}).get(GPU, "1")) == "1"
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in predictor["tolerations"]
    assert predictor["minReplicas"] == 2 and predictor["maxReplicas"] == 4


def test_gpu_overlay_serves_the_savedmodel(rendered):
    model = only(rendered["gpu"], "InferenceService")["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "shoprank-savedmodel"
    assert model["runtime"] == "shoprank-ranker"
    assert model["args"] == ["--backend=savedmodel"]
    assert model["storageUri"] == "s3://shoprank-models/shoprank-ranker/latest"


def test_gpu_triton_overlay_puts_the_transformer_before_triton_onnx(rendered):
    spec = only(rendered["gpu-triton"], "InferenceService")["spec"]
    model = spec["predictor"]["model"]
    assert model["modelFormat"]["name"] == "onnx"
    assert model["runtime"] == "kserve-tritonserver"
    assert "args" not in model  # nothing --backend-like leaks into Triton's command line
    transformer = spec["transformer"]
    [container] = transformer["containers"]
    assert container["image"] == "shoprank-serving:latest"
    assert container["command"][:3] == ["python", "-m", "serving.transformer"]
    assert GPU not in yaml.safe_dump(transformer)
    assert "nodeSelector" not in transformer and "tolerations" not in transformer


def test_gpu_node_selector_is_a_setting_users_edit(tmp_path):
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    patch = copy / "overlays" / "gpu" / "gpu-node-selector.yaml"
    text = patch.read_text()
    assert 'nvidia.com/gpu.present: "true"' in text
    edited = text.replace('nvidia.com/gpu.present: "true"', "cloud.google.com/gke-accelerator: nvidia-l4")
    patch.write_text(edited)
    for overlay in GPU_OVERLAYS:
        predictor = only(kustomize(copy / "overlays" / overlay), "InferenceService")["spec"]["predictor"]
        assert predictor["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}


@pytest.mark.parametrize("overlay", CPU_OVERLAYS)
def test_cpu_overlays_ask_for_no_gpu(rendered, overlay):
    assert GPU not in yaml.safe_dump_all(rendered[overlay])
    predictor = only(rendered[overlay], "InferenceService")["spec"]["predictor"]
    assert "nodeSelector" not in predictor and "tolerations" not in predictor
    assert predictor["model"]["modelFormat"]["name"] == "shoprank-tflite"
    assert predictor["model"]["args"] == ["--backend=tflite"]


def test_cpu_overlay_autoscales_on_cpu(rendered):
    predictor = only(rendered["cpu"], "InferenceService")["spec"]["predictor"]
    assert predictor["minReplicas"] == 2 and predictor["maxReplicas"] == 8
    [metric] = predictor["autoScaling"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert 1 <= metric["resource"]["target"]["averageUtilization"] <= 100


def test_kind_overlay_is_one_small_replica(rendered):
    isvc = only(rendered["kind"], "InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert predictor["minReplicas"] == 1 and predictor["maxReplicas"] == 1
    assert "autoScaling" not in predictor
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "none"
    assert predictor["model"]["resources"]["limits"] == {"cpu": "500m", "memory": "512Mi",
                                                         "ephemeral-storage": "1Gi"}


# --- pod security, resources, probes ----------------------------------------------------------------


def _effective(pod: dict[str, Any], container: dict[str, Any], key: str) -> Any:
    """Container-level securityContext wins over the pod-level one (for the fields both have)."""
    c_ctx = container.get("securityContext") or {}
    if key in c_ctx:
        return c_ctx[key]
    return (pod.get("securityContext") or {}).get(key)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down_sized_and_probed(rendered, overlay):
    seen = 0
    for obj in kserve_objects(rendered[overlay]):
        for where, pod, container in containers(obj):
            seen += 1
            ctx = container.get("securityContext") or {}
            assert _effective(pod, container, "runAsNonRoot") is True, where
            assert (_effective(pod, container, "seccompProfile") or {}).get("type") == "RuntimeDefault", where
            assert ctx.get("readOnlyRootFilesystem") is True, where
            assert ctx.get("allowPrivilegeEscalation") is False, where
            assert ctx.get("privileged", False) is False, where
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not ctx.get("capabilities", {}).get("add"), where
            resources = container.get("resources") or {}
            for bound in ("requests", "limits"):
                assert {"cpu", "memory", "ephemeral-storage"} <= set(resources.get(bound, {})), f"{where}: {bound}"
            for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
                http = (container.get(probe) or {}).get("httpGet") or {}
                assert (http.get("path"), http.get("port")) == (path, 8080), f"{where}: {probe}"
    assert seen >= 2  # the runtime container and at least the predictor


# --- NetworkPolicy, PodDisruptionBudget -------------------------------------------------------------


def _selects(selector: dict[str, Any], component: str) -> bool:
    return selector.get("matchLabels") == {"serving.kserve.io/inferenceservice": "shoprank-ranker",
                                           "component": component}


def _ingress_ports(policy: dict[str, Any]) -> set[int]:
    return {port["port"] for rule in policy["spec"]["ingress"] for port in rule.get("ports") or []}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_serving_component_has_a_network_policy(rendered, overlay):
    """Ingress to the predictor (and the transformer) only from the listed sources and ports: every rule names
    its sources and ports (an empty `from` or no `ports` would allow everyone or every port)."""
    isvc = only(rendered[overlay], "InferenceService")
    components = ["predictor"] + (["transformer"] if "transformer" in isvc["spec"] else [])
    policies = of_kind(rendered[overlay], "NetworkPolicy")
    for component in components:
        [policy] = [p for p in policies if _selects(p["spec"]["podSelector"], component)]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        for rule in policy["spec"]["ingress"]:
            assert rule.get("from") and rule.get("ports"), (component, rule)
    predictor = next(p for p in policies if _selects(p["spec"]["podSelector"], "predictor"))
    if overlay == "gpu-triton":  # Triton: tensor requests from the transformer only, metrics for the scraper
        assert _ingress_ports(predictor) == {8080, 9000, 8002}
        sources = [src for rule in predictor["spec"]["ingress"] for src in rule["from"]]
        assert {"podSelector": {"matchLabels": {"serving.kserve.io/inferenceservice": "shoprank-ranker",
                                                "component": "transformer"}}} in sources
        assert {"podSelector": {}} not in sources
    else:
        assert _ingress_ports(predictor) == {8080, 8081}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_disruption_budget_wherever_two_replicas_run(rendered, overlay):
    isvc = only(rendered[overlay], "InferenceService")
    budgets = of_kind(rendered[overlay], "PodDisruptionBudget")
    for component in ("predictor", "transformer"):
        spec = isvc["spec"].get(component)
        if not spec:
            continue
        mine = [b for b in budgets if _selects(b["spec"]["selector"], component)]
        if spec["minReplicas"] >= 2:
            assert len(mine) == 1 and mine[0]["spec"]["maxUnavailable"] == 1, component
        else:
            assert not mine, f"{overlay}: a budget on a single replica blocks every drain"


def test_production_overlays_start_at_two_replicas(rendered):
    for overlay in ("cpu", "gpu", "gpu-triton"):
        spec = only(rendered[overlay], "InferenceService")["spec"]
        assert spec["predictor"]["minReplicas"] == 2, overlay
        if "transformer" in spec:
            assert spec["transformer"]["minReplicas"] == 2, overlay


def test_the_runtime_drains_before_it_stops(rendered):
    [container] = only(rendered["cpu"], "ServingRuntime")["spec"]["containers"]
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] >= 1


# --- ServingRuntime ------------------------------------------------------------------------------


def test_serving_runtime(rendered):
    runtime = only(rendered["cpu"], "ServingRuntime")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert runtime["metadata"]["name"] == "shoprank-ranker"
    spec = runtime["spec"]
    formats = {(f["name"], f["version"]): f.get("autoSelect", False) for f in spec["supportedModelFormats"]}
    assert formats[("shoprank-tflite", "1")] is True
    assert ("tensorflow", "2") in formats and ("shoprank-savedmodel", "2") in formats
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    [container] = spec["containers"]
    assert container["image"] == "shoprank-serving:latest"
    assert container["command"] == ["python", "-m", "serving"]
    assert container["args"] == [
        "--model_name={{.Name}}", "--model_dir=/mnt/models", "--http_port=8080", "--grpc_port=8081",
    ]
    assert {(p["name"], p["containerPort"]) for p in container["ports"]} == {("http1", 8080), ("h2c", 8081)}


def test_images_are_overridable_with_kustomize(tmp_path):
    overlay = tmp_path / "mine"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(MANIFESTS / "overlays" / "gpu-triton", overlay)],  # must be relative
        "images": [
            {"name": "shoprank-serving", "newName": "registry.example/shoprank-serving", "newTag": "1.2.3"},
        ],
    }))
    docs = kustomize(overlay)
    images = [c["image"] for obj in kserve_objects(docs) for _, _, c in containers(obj) if "image" in c]
    assert images and set(images) == {"registry.example/shoprank-serving:1.2.3"}


# --- RBAC and core objects ----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_namespaced_and_minimal(rendered, overlay):
    docs = rendered[overlay]
    assert not of_kind(docs, "ClusterRole") and not of_kind(docs, "ClusterRoleBinding")
    assert not of_kind(docs, "Secret"), "credentials must never be part of the manifests"
    role = only(docs, "Role")
    assert role["metadata"]["name"] == "shoprank-pipeline-runner"
    [rule] = role["rules"]
    assert set(rule) <= {"apiGroups", "resources", "verbs"}
    assert rule["apiGroups"] == ["serving.kserve.io"]
    assert rule["resources"] == ["inferenceservices"]
    assert sorted(rule["verbs"]) == sorted(RUNNER_VERBS)
    binding = only(docs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "shoprank-pipeline-runner",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "shoprank-pipeline-runner", "namespace": NAMESPACE},
    ]


def test_model_reader_references_the_storage_secret_by_name(rendered):
    accounts = {sa["metadata"]["name"]: sa for sa in of_kind(rendered["cpu"], "ServiceAccount")}
    reader = accounts["shoprank-model-reader"]
    assert reader["secrets"] == [{"name": "shoprank-storage"}]
    annotations = reader["metadata"]["annotations"]
    assert {"serving.kserve.io/s3-endpoint", "serving.kserve.io/s3-usehttps"} <= set(annotations)
    flat = yaml.safe_dump_all(rendered["cpu"]).lower()
    for marker in ("aws_secret_access_key", "aws_access_key_id", "stringdata", "password"):
        assert marker not in flat
    assert "shoprank-pipeline-runner" in accounts


# Expected shapes of the core objects: apiVersion plus the fields the API server requires.
CORE_SHAPES: dict[str, tuple[str, dict[str, type]]] = {
    "ServiceAccount": ("v1", {}),
    "Role": ("rbac.authorization.k8s.io/v1", {"rules": list}),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", {"roleRef": dict, "subjects": list}),
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_have_their_expected_shape(rendered, overlay):
    for doc in rendered[overlay]:
        if doc["kind"] not in CORE_SHAPES:
            continue
        api_version, fields = CORE_SHAPES[doc["kind"]]
        name = doc["metadata"]["name"]
        assert doc["apiVersion"] == api_version, name
        assert isinstance(name, str) and name, doc
        for field, typ in fields.items():
            assert isinstance(doc.get(field), typ), f"{doc['kind']}/{name}.{field}"
        for rule in doc.get("rules", []):
            assert rule["verbs"] and isinstance(rule["apiGroups"], list) and rule["resources"], rule
        if doc["kind"] == "RoleBinding":
            assert set(doc["roleRef"]) == {"apiGroup", "kind", "name"}
            for subject in doc["subjects"]:
                assert {"kind", "name"} <= set(subject)
        for secret in doc.get("secrets", []):
            assert set(secret) == {"name"}  # a reference by name, nothing inline


# --- KServe CRD schemas -------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kserve_objects_validate_against_kserve_crds(rendered, crds, overlay):
    objects = kserve_objects(rendered[overlay])
    assert {o["kind"] for o in objects} == {"InferenceService", "ServingRuntime"}
    for obj in objects:
        errors = kserve_crds.validation_errors(obj)
        what = f"{obj['kind']}/{obj['metadata']['name']} against KServe {kserve_crds.KSERVE_VERSION}"
        assert not errors, what + ":\n" + "\n".join(errors)


def test_crd_validation_is_not_vacuous(rendered, crds):
    isvc = only(rendered["cpu"], "InferenceService")
    bad = yaml.safe_load(yaml.safe_dump(isvc))
    bad["spec"]["predictor"]["autoscaling"] = {"metrics": []}  # misspelt field
    bad["spec"]["predictor"]["scaleMetric"] = "gpu"  # not in the enum
    bad["spec"]["predictor"]["model"]["resources"]["limits"]["cpu"] = "two"  # not a quantity
    del bad["spec"]["predictor"]["model"]["modelFormat"]["name"]  # required
    errors = "\n".join(kserve_crds.validation_errors(bad))
    assert "autoscaling" in errors
    assert "'gpu' is not one of" in errors
    assert "'two'" in errors
    assert "'name' is a required property" in errors
    wrong_version = dict(isvc, apiVersion="serving.kserve.io/v1alpha9")
    assert kserve_crds.validation_errors(wrong_version)


def test_missing_go_is_a_clear_failure(monkeypatch, tmp_path):
    monkeypatch.setenv("SHOPRANK_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(kserve_crds.shutil, "which", lambda name: None)
    with pytest.raises(kserve_crds.CRDFetchError, match=r"`go`\) is not on PATH"):
        kserve_crds.fetch_crds()


# --- the promote step writes what the overlays deploy -----------------------------------------------


def _gpu_settings(**extra):
    return ServingSettings(
        storage_uri="s3://shoprank-models/shoprank-ranker/latest", model_format="shoprank-savedmodel",
        backend="savedmodel", use_gpu=True, max_replicas=4, scale_target=60,
        resources=Resources("2", "4Gi", "4", "8Gi"), **extra,
    )


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_promotion_builds_the_overlay_inference_service(rendered, overlay):
    if overlay == "cpu":
        settings = ServingSettings(storage_uri="s3://shoprank-models/shoprank-ranker/latest")
    else:
        settings = _gpu_settings()
    built = build_inference_service(settings)
    deployed = only(rendered[overlay], "InferenceService")
    assert built["spec"] == deployed["spec"]
    assert built["metadata"]["annotations"] == deployed["metadata"]["annotations"]
    assert plan_promotion(deployed, built).action == "noop"


def test_promotion_output_validates_against_kserve_crds(crds):
    uri = versioned_storage_uri("s3://shoprank-models", "shoprank-ranker", "20260101-1")
    variants = [
        ServingSettings(storage_uri=uri),
        _gpu_settings(gpu_count=2),
        ServingSettings(storage_uri=uri, deployment_mode="Knative", scale_metric="concurrency",
                        scale_target=8, min_replicas=0, canary_traffic_percent=10),
        ServingSettings(storage_uri=uri, deployment_mode="Knative"),
    ]
    for settings in variants:
        isvc = build_inference_service(settings)
        assert not kserve_crds.validation_errors(isvc), (settings, kserve_crds.validation_errors(isvc))
