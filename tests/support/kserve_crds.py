"""KServe's own CRDs, fetched once from the KServe Go module and cached outside the repository.

The CRD YAML is read from `config/crd/full/` of `github.com/kserve/kserve` at `KSERVE_VERSION`, which is
downloaded with `go mod download` (the Go module proxy is the one source reachable from every machine of
this project). The files are cached under `~/.cache/shoprank/kserve-crds/<version>/` (or
`$SHOPRANK_CACHE_DIR/kserve-crds/<version>/`) as YAML plus a JSON copy that loads in milliseconds.

Used by the manifest tests and reusable by cluster tests (`crd_path()` gives a file for `kubectl apply`).
Missing `go` is an error, not a skip: the manifests are only checked if the schemas can be obtained.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

# The one pin. v0.20.0 is the newest KServe release the Go module proxy serves here (v0.18.x, v0.21.x
# and the patch releases answer 403). It has the v0.16+ deployment mode names (Standard/Knative) and the
# `autoScaling` block. Bump it here only.
KSERVE_VERSION = "v0.20.0"
KSERVE_MODULE = "github.com/kserve/kserve"
CRD_DIR_IN_MODULE = "config/crd/full"

CRD_FILES = {
    "InferenceService": "serving.kserve.io_inferenceservices.yaml",
    "ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
    "ClusterServingRuntime": "serving.kserve.io_clusterservingruntimes.yaml",
}


class CRDFetchError(RuntimeError):
    """The KServe CRDs could not be obtained (no `go`, proxy refused, file missing)."""


def cache_dir(version: str = KSERVE_VERSION) -> Path:
    root = os.environ.get("SHOPRANK_CACHE_DIR") or os.path.join(Path.home(), ".cache", "shoprank")
    return Path(root) / "kserve-crds" / version


def _download_module(version: str) -> Path:
    go = shutil.which("go")
    if go is None:
        raise CRDFetchError(
            "the Go toolchain (`go`) is not on PATH: it is needed once to fetch KServe's CRDs "
            f"({KSERVE_MODULE}@{version}) into {cache_dir(version)}. Install Go, or copy "
            f"{CRD_DIR_IN_MODULE}/*.yaml of that KServe release into that folder."
        )
    env = dict(os.environ, GOFLAGS="-mod=mod", GO111MODULE="on")
    # Run outside any module so no go.mod/go.sum is touched.
    with tempfile.TemporaryDirectory(prefix="shoprank-gomod-") as tmp:
        proc = subprocess.run(
            [go, "mod", "download", "-json", f"{KSERVE_MODULE}@{version}"],
            cwd=tmp, env=env, capture_output=True, text=True, timeout=600, check=False,
        )
    try:
        info = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        info = {}
    if proc.returncode != 0 or info.get("Error") or not info.get("Dir"):
        detail = info.get("Error") or proc.stderr.strip() or proc.stdout.strip()
        raise CRDFetchError(f"`go mod download {KSERVE_MODULE}@{version}` failed: {detail}")
    return Path(info["Dir"])


def fetch_crds(version: str = KSERVE_VERSION) -> Path:
    """Make sure the CRD files of `version` are in the cache; return the cache folder."""
    target = cache_dir(version)
    if all((target / name).is_file() for name in CRD_FILES.values()):
        return target
    module_dir = _download_module(version)
    target.mkdir(parents=True, exist_ok=True)
    for name in CRD_FILES.values():
        source = module_dir / CRD_DIR_IN_MODULE / name
        if not source.is_file():
            raise CRDFetchError(f"{KSERVE_MODULE}@{version} has no {CRD_DIR_IN_MODULE}/{name}")
        tmp = target / (name + ".part")
        shutil.copyfile(source, tmp)  # the module cache is read-only; copy, then rename atomically
        os.chmod(tmp, 0o644)
        tmp.replace(target / name)
    return target


def runtime_manifest(name: str, version: str = KSERVE_VERSION) -> Path:
    """KServe's own (Cluster)ServingRuntime `name` (config/runtimes/<name>.yaml of the release), cached beside
    the CRDs: e.g. the `kserve-tritonserver` runtime that the gpu-triton overlay selects."""
    target = cache_dir(version) / "runtimes" / f"{name}.yaml"
    if target.is_file():
        return target
    source = _download_module(version) / "config" / "runtimes" / f"{name}.yaml"
    if not source.is_file():
        raise CRDFetchError(f"{KSERVE_MODULE}@{version} has no config/runtimes/{name}.yaml")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    shutil.copyfile(source, tmp)
    os.chmod(tmp, 0o644)
    tmp.replace(target)
    return target


def crd_path(kind: str, version: str = KSERVE_VERSION) -> Path:
    """Path of the cached CRD YAML for `kind` (e.g. for `kubectl apply -f` in a cluster test)."""
    return fetch_crds(version) / CRD_FILES[kind]


@functools.cache
def load_crd(kind: str, version: str = KSERVE_VERSION) -> dict[str, Any]:
    """The CRD object for `kind`, parsed (from the JSON copy when there is one)."""
    yaml_path = crd_path(kind, version)
    json_path = yaml_path.with_suffix(".json")
    if json_path.is_file() and json_path.stat().st_mtime >= yaml_path.stat().st_mtime:
        return json.loads(json_path.read_text())
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(yaml_path.read_text(), Loader=loader)  # noqa: S506 - a safe loader
    tmp = json_path.with_suffix(".json.part")
    tmp.write_text(json.dumps(crd))
    tmp.replace(json_path)
    return crd


def served_versions(kind: str, version: str = KSERVE_VERSION) -> list[str]:
    return [v["name"] for v in load_crd(kind, version)["spec"]["versions"] if v.get("served")]


def _strict(schema: Any) -> Any:
    """Reject unknown fields like the API server's strict field validation (kubectl's default) does.

    Structural schemas prune unknown fields silently; with `--validate=strict` they are an error. An object
    schema with `properties` and no `additionalProperties` / `x-kubernetes-preserve-unknown-fields` gets
    `additionalProperties: false`.
    """
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items() if key != "properties"}
    if "properties" in schema:
        out["properties"] = {name: _strict(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


@functools.cache
def openapi_schema(kind: str, api_version: str = "", *, strict: bool = True,
                   version: str = KSERVE_VERSION) -> dict[str, Any]:
    """`openAPIV3Schema` of `kind` at `api_version` (e.g. "v1beta1"; default: the storage version)."""
    versions = load_crd(kind, version)["spec"]["versions"]
    for entry in versions:
        if (api_version and entry["name"] == api_version) or (not api_version and entry.get("storage")):
            schema = copy.deepcopy(entry["schema"]["openAPIV3Schema"])
            return _strict(schema) if strict else schema
    names = [entry["name"] for entry in versions]
    raise KeyError(f"KServe {version} CRD {kind} serves {names}, not {api_version!r}")


def validation_errors(obj: dict[str, Any], version: str = KSERVE_VERSION) -> list[str]:
    """Messages for everything in `obj` (a KServe object) that its CRD schema rejects; [] when valid.

    Checks the openAPIV3Schema (types, enums, required, patterns, unknown fields). CEL rules
    (`x-kubernetes-validations`) and KServe's admission webhook are not evaluated.
    """
    import jsonschema

    kind = obj.get("kind", "")
    if kind not in CRD_FILES:
        return [f"no KServe CRD for kind {kind!r}"]
    group, _, api_version = str(obj.get("apiVersion", "")).rpartition("/")
    if group != "serving.kserve.io":
        return [f"apiVersion {obj.get('apiVersion')!r} is not in group serving.kserve.io"]
    if api_version not in served_versions(kind, version):
        served = served_versions(kind, version)
        return [f"{kind} {api_version!r} is not served by KServe {version} (serves {served})"]
    validator = jsonschema.Draft4Validator(openapi_schema(kind, api_version, version=version))
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]
