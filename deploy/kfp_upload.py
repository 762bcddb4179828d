"""The Kubeflow Pipelines part of `make deploy` / `make undeploy` (kfp.Client), kept out of shoprank/.

The pipeline is compiled afresh with the component image (and the model PVC, if any) in a subprocess, because
components read SHOPRANK_COMPONENT_IMAGE / SHOPRANK_MODEL_PVC when they are imported; the committed golden
YAML is not touched. Each upload is a new version of the `shoprank` pipeline named
`<UTC time>-<sha256 of the package, 10 hex>`; a package already uploaded under that hash is reused.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from deploy.options import Options

__all__ = ["compile_package", "delete_pipeline", "package_digest", "upload_and_run", "version_name"]

PIPELINE_NAME = "shoprank"
EXPERIMENT = "shoprank"
REPO = Path(__file__).resolve().parents[1]
RUNNER_SERVICE_ACCOUNT = "shoprank-pipeline-runner"


def compile_package(component_image: str, model_pvc: str, out: Path) -> Path:
    env = dict(os.environ, SHOPRANK_COMPONENT_IMAGE=component_image, SHOPRANK_MODEL_PVC=model_pvc)
    proc = subprocess.run([sys.executable, "-m", "pipelines.compile", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling the pipeline failed:\n{proc.stderr}")
    return out


def package_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:10]


def version_name(digest: str, now: float | None = None) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"-{digest}"


def _client(opts: Options) -> Any:
    import kfp

    return kfp.Client(host=opts.kfp_host)


def _versions(client: Any, pipeline_id: str) -> list[Any]:
    out, token = [], ""
    while True:
        page = client.list_pipeline_versions(pipeline_id, page_token=token, page_size=100)
        out.extend(page.pipeline_versions or [])
        token = page.next_page_token or ""
        if not token:
            return out


def upload_and_run(opts: Options, params: dict[str, Any]) -> dict[str, str]:
    """Upload the pipeline as a new version (create the pipeline if absent); start a run if asked. Prints
    and returns the links."""
    client = _client(opts)
    host = opts.kfp_host.rstrip("/")
    links: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="shoprank-kfp-") as tmp:
        package = compile_package(opts.component_image, opts.model_pvc, Path(tmp) / "shoprank_pipeline.yaml")
        digest = package_digest(package)
        pipeline_id = client.get_pipeline_id(PIPELINE_NAME)
        if pipeline_id is None:
            pipeline = client.upload_pipeline(str(package), pipeline_name=PIPELINE_NAME,
                                              description="shoprank: train, optimise, validate and promote")
            pipeline_id = pipeline.pipeline_id
            # The first upload creates a version too; rename nothing, just pick it up.
            version = _versions(client, pipeline_id)[0]
            print(f"created pipeline {PIPELINE_NAME}")
        else:
            existing = [v for v in _versions(client, pipeline_id) if str(v.display_name).endswith(f"-{digest}")]
            if existing:
                version = existing[0]
                print(f"pipeline package unchanged: reusing version {version.display_name}")
            else:
                version = client.upload_pipeline_version(str(package), version_name(digest), pipeline_id=pipeline_id)
                print(f"uploaded pipeline version {version.display_name}")
    links["pipeline"] = f"{host}/#/pipelines/details/{pipeline_id}/version/{version.pipeline_version_id}"
    print(f"Kubeflow Pipelines UI: {links['pipeline']}")
    if opts.create_run:
        experiment = client.create_experiment(EXPERIMENT, namespace=opts.kfp_namespace or None)
        # Multi-user Kubeflow running in our namespace: run as our ServiceAccount (it holds the Role). Standalone
        # KFP runs in its own namespace as its own account, which KFP_RUNNER bound to the Role.
        account = RUNNER_SERVICE_ACCOUNT if opts.kfp_namespace == opts.namespace else None
        run = client.run_pipeline(experiment.experiment_id, f"shoprank-{version.display_name}",
                                  pipeline_id=pipeline_id, version_id=version.pipeline_version_id, params=params,
                                  service_account=account)
        links["run"] = f"{host}/#/runs/details/{run.run_id}"
        print(f"run started: {links['run']}  (parameters {params})")
    return links


def delete_pipeline(opts: Options) -> None:
    """Delete the `shoprank` pipeline and all its versions (KFP refuses to delete a pipeline with versions)."""
    client = _client(opts)
    pipeline_id = client.get_pipeline_id(PIPELINE_NAME)
    if pipeline_id is None:
        print(f"no pipeline {PIPELINE_NAME} on Kubeflow Pipelines: nothing to delete")
        return
    for version in _versions(client, pipeline_id):
        client.delete_pipeline_version(pipeline_id, version.pipeline_version_id)
    client.delete_pipeline(pipeline_id)
    print(f"deleted pipeline {PIPELINE_NAME} and its versions from Kubeflow Pipelines")
