"""The distributed training job on a cluster: a Kubeflow TFJob built by plain functions, applied, waited for.

Why a TFJob (Training Operator v1) and not a TrainJob (Trainer v2): README, "Training on several workers". In
short: the TFJob controller writes each worker's `TF_CONFIG` itself (cluster, task type and index), which is the
contract `shoprank.modeling.distributed` reads; Trainer v2 ships no TensorFlow runtime (its maintainers deprecated
distributed TensorFlow), so a TrainJob would need our own ClusterTrainingRuntime plus a start-up script that
derives `TF_CONFIG` from JobSet's indices and headless-Service names, and JobSet's controller next to Trainer's.

Why in `release`: it builds and applies Kubernetes objects like `release.kserve` (plain functions over dicts,
server-side apply through a small client), needs neither TensorFlow nor numpy, and imports only the base; the
worker command is a string (`python3 -m shoprank.modeling.distributed worker ...`), not an import of modeling.

The flow (`run_training_job`, called by the train component when `train_workers > 1` in a pod):
1. the step's inputs (features, transform) are copied to a job folder on a shared volume (a ReadWriteMany
   PersistentVolumeClaim mounted at the same path on the step and on every worker);
2. the TFJob is server-side applied as `shoprank-train`: N workers running the component image, each with the
   claim mounted, the GPU count, node selector and tolerations of the train step (every worker gets them);
3. the step polls the TFJob, printing its replica counts and the chief's progress lines (the chief appends them to
   `progress.log` in the job folder; reading the file needs no pod/log permission);
4. on success the chief's model (worker 0 saves to `model/`, the others to throw-away folders) is copied into
   the step's Model artefact and the job folder is removed.
RBAC: the pipeline runner needs only `tfjobs` in its namespace (manifests/base/training-job-role.yaml).

Tested: the builders and the status readers (tests/release/test_trainjob.py), waiting and the whole flow with a
recording API and a fake job (same file); the object against the TFJob CRD and the operator's validating webhook,
the operator's pods, their TF_CONFIG and placement on the GPU nodes, and the wait on a real job status
(tests/cluster/test_training.py, `make test-cluster`). Not tested: TensorFlow across pods (the simulated nodes
run no containers).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shoprank.errors import ShoprankError

__all__ = [
    "API_VERSION",
    "CONTAINER",
    "FIELD_MANAGER",
    "GROUP",
    "KIND",
    "PLURAL",
    "JobSettings",
    "TFJobApi",
    "TrainJobFailed",
    "TrainingJobApi",
    "build_tfjob",
    "job_name",
    "job_state",
    "replica_summary",
    "run_training_job",
    "wait_for_job",
    "worker_command",
]

GROUP, VERSION, KIND, PLURAL = "kubeflow.org", "v1", "TFJob", "tfjobs"
API_VERSION = f"{GROUP}/{VERSION}"
FIELD_MANAGER = "shoprank-train"
CONTAINER = "tensorflow"  # the TFJob controller finds the training container by this name (and its webhook checks)
PORT_NAME, PORT = "tfjob-port", 2222  # the controller builds TF_CONFIG's host:port from this named port
GPU_RESOURCE = "nvidia.com/gpu"
VOLUME = "shoprank-train"
PROGRESS_FILE = "progress.log"


class TrainJobFailed(ShoprankError):
    """The training job failed, timed out, or returned no model; the message says which and why."""


@dataclass(frozen=True)
class JobSettings:
    """Everything the TFJob depends on. `job_dir` is the job's folder on the claim, under `mount_path`."""

    name: str
    namespace: str
    image: str
    workers: int
    preset: str
    overrides: str
    claim: str
    mount_path: str
    job_dir: str
    gpu_count: int = 0
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[Mapping[str, Any]] = ()
    cpu: str = "2"
    memory: str = "8G"
    ttl_seconds: int = 24 * 3600
    active_deadline_seconds: int = 12 * 3600
    labels: Mapping[str, str] = field(default_factory=dict)

    def path(self, *parts: str) -> str:
        return "/".join([self.mount_path.rstrip("/"), self.job_dir, *parts])


def job_name(seed: str, prefix: str = "shoprank-train") -> str:
    """A DNS-1035 job name, stable for one seed (the step's pod name: a retried step gets a new pod, so a new
    job, while a repeated apply from the same pod is a no-op). Short enough for the controller's pod and Service
    names (`<job>-worker-<i>`)."""
    digest = hashlib.sha256(seed.encode()).hexdigest()[:10]
    return f"{prefix}-{digest}"


def worker_command(settings: JobSettings) -> list[str]:
    """What every worker runs: `train()` as the task its TF_CONFIG names (shoprank.modeling.distributed)."""
    return ["python3", "-m", "shoprank.modeling.distributed", "worker",
            "--features", settings.path("features"), "--transform", settings.path("transform"),
            "--model-dir", settings.path("model"), "--preset", settings.preset, "--overrides", settings.overrides,
            "--progress-file", settings.path(PROGRESS_FILE)]


def _resources(settings: JobSettings) -> dict[str, Any]:
    limits: dict[str, str] = {"cpu": settings.cpu, "memory": settings.memory}
    if settings.gpu_count > 0:
        limits[GPU_RESOURCE] = str(settings.gpu_count)
    return {"requests": {"cpu": settings.cpu, "memory": settings.memory}, "limits": limits}


def build_tfjob(settings: JobSettings) -> dict[str, Any]:
    """The TFJob: `workers` replicas of type Worker (worker 0 is the chief: no Chief replica, so every replica runs
    the same command and saves), one pod template, so GPU count, node selector and tolerations apply to each."""
    if settings.workers < 2:
        raise ShoprankError(f"a training job needs at least 2 workers, got {settings.workers} (1 trains in the step)")
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", settings.name):
        raise ShoprankError(f"job name {settings.name!r} is not a DNS-1035 label")
    labels = {"app.kubernetes.io/part-of": "shoprank", "app.kubernetes.io/component": "training",
              "app.kubernetes.io/managed-by": FIELD_MANAGER, **settings.labels}
    container = {
        "name": CONTAINER, "image": settings.image, "command": worker_command(settings),
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "env": [{"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"}, {"name": "PYTHONUNBUFFERED", "value": "1"}],
        "resources": _resources(settings),
        "volumeMounts": [{"name": VOLUME, "mountPath": settings.mount_path}],
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": VOLUME, "persistentVolumeClaim": {"claimName": settings.claim}}],
        "automountServiceAccountToken": False,  # workers talk to each other, never to the API server
        "restartPolicy": "Never",
    }
    if settings.node_selector:
        pod_spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in settings.tolerations]
    return {
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": {"name": settings.name, "namespace": settings.namespace, "labels": labels},
        "spec": {
            # A worker that dies fails the job: the others would wait for it in a collective, and the pipeline
            # step's retry starts a new job from the start (no checkpoint is kept between attempts).
            "runPolicy": {"cleanPodPolicy": "Running", "ttlSecondsAfterFinished": settings.ttl_seconds,
                          "activeDeadlineSeconds": settings.active_deadline_seconds, "backoffLimit": 0},
            "tfReplicaSpecs": {"Worker": {"replicas": settings.workers, "restartPolicy": "Never",
                                          "template": {"metadata": {"labels": labels}, "spec": pod_spec}}},
        },
    }


def job_state(job: Mapping[str, Any] | None) -> tuple[str, str]:
    """(state, message) from the TFJob's status: the latest condition that is True (Created, Running, Restarting,
    Succeeded, Failed), "Pending" before the controller has written one, "Missing" for no job."""
    if job is None:
        return "Missing", "the job does not exist"
    conditions = [c for c in ((job.get("status") or {}).get("conditions") or []) if c.get("status") == "True"]
    if not conditions:
        return "Pending", "no status from the training operator yet"
    for terminal in ("Failed", "Succeeded"):
        for c in conditions:
            if c.get("type") == terminal:
                return terminal, str(c.get("message") or c.get("reason") or "")
    last = conditions[-1]
    return str(last.get("type")), str(last.get("message") or last.get("reason") or "")


def replica_summary(job: Mapping[str, Any] | None) -> str:
    """"Worker: 2 active, 0 succeeded, 0 failed" from the TFJob's replica statuses."""
    statuses = ((job or {}).get("status") or {}).get("replicaStatuses") or {}
    parts = []
    for kind, counts in sorted(statuses.items()):
        parts.append(f"{kind}: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in ("active", "succeeded", "failed")))
    return "; ".join(parts) or "no replicas yet"


class TrainingJobApi(Protocol):
    """What the flow needs from the API server (TFJobApi; tests use a recording stand-in)."""

    def apply(self, body: Mapping[str, Any], *, field_manager: str) -> dict[str, Any]:
        ...

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        ...


class TFJobApi:
    """TFJob reads and server-side applies through the kubernetes client's ApiClient (imported in the methods).

    The generated CustomObjectsApi cannot send an apply patch in kubernetes 30.1 (it fixes the content type to
    merge patch), hence `call_api`, as in shoprank.release.kserve.client."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    @classmethod
    def from_environment(cls, context: str | None = None) -> TFJobApi:
        """In a pod: its ServiceAccount; elsewhere: the kubeconfig's (current or named) context."""
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config(context=context)
        return cls(client.ApiClient())

    @staticmethod
    def path(namespace: str, name: str) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"

    def apply(self, body: Mapping[str, Any], *, field_manager: str, dry_run: bool = False) -> dict[str, Any]:
        meta = body["metadata"]
        query = [("fieldManager", field_manager), ("force", "true")]
        if dry_run:
            query.append(("dryRun", "All"))
        return self.api_client.call_api(
            self.path(meta["namespace"], meta["name"]), "PATCH", query_params=query,
            header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
            body=dict(body), response_type="object", auth_settings=["BearerToken"], _return_http_data_only=True)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client import CustomObjectsApi
        from kubernetes.client.exceptions import ApiException

        try:
            return CustomObjectsApi(self.api_client).get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                                  PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise


def _new_lines(path: Path, offset: int) -> tuple[list[str], int]:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1  # whole lines only; a partial last line waits for its newline
    return data[:end].decode(errors="replace").splitlines(), offset + end


def wait_for_job(read: Callable[[], dict[str, Any] | None], *, progress: Callable[[str], None],
                 timeout_s: float, poll_s: float = 5.0, progress_file: Path | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll the job until Succeeded (returned) or Failed / gone / `timeout_s` (TrainJobFailed). Prints each change
    of state or replica counts, and every new line of `progress_file` (the chief's progress) as it appears."""
    deadline = clock() + timeout_s
    shown, offset = "", 0
    while True:
        job = read()
        state, message = job_state(job)
        line = f"[train-job] {state}: {replica_summary(job)}" + (f" ({message})" if message else "")
        if line != shown:
            progress(line)
            shown = line
        if progress_file is not None:
            lines, offset = _new_lines(progress_file, offset)
            for text in lines:
                progress(f"[worker-0] {text}")
        if state == "Succeeded":
            return job or {}
        if state in ("Failed", "Missing"):
            raise TrainJobFailed(f"training job {state.lower()}: {message}; {replica_summary(job)}")
        if clock() >= deadline:
            raise TrainJobFailed(f"training job not finished after {timeout_s:.0f}s (last state {state}: "
                                 f"{replica_summary(job)})")
        sleep(poll_s)


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def run_training_job(settings: JobSettings, features_dir: str | Path, transform_dir: str | Path,
                     model_dir: str | Path, api: TrainingJobApi, *, progress: Callable[[str], None] = print,
                     timeout_s: float = 12 * 3600, poll_s: float = 10.0,
                     sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Stage the inputs on the shared volume, apply the TFJob, wait, copy the chief's model to `model_dir`;
    returns the chief's training.json with the job's name and worker count added."""
    root = Path(settings.path())
    if not Path(settings.mount_path).is_dir():
        raise TrainJobFailed(f"the shared training volume is not mounted at {settings.mount_path} (claim "
                             f"{settings.claim!r}): compile the pipeline with SHOPRANK_TRAIN_PVC set")
    t0 = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    _copy(Path(features_dir), root / "features")
    _copy(Path(transform_dir), root / "transform")
    progress(f"[train-job] inputs staged in {root} ({time.monotonic() - t0:.1f}s)")
    body = build_tfjob(settings)
    api.apply(body, field_manager=FIELD_MANAGER)
    progress(f"[train-job] TFJob {settings.namespace}/{settings.name} applied: {settings.workers} workers, image "
             f"{settings.image}" + (f", {settings.gpu_count} GPU(s) each" if settings.gpu_count else ""))
    wait_for_job(lambda: api.get(settings.namespace, settings.name), progress=progress, timeout_s=timeout_s,
                 poll_s=poll_s, progress_file=root / PROGRESS_FILE, sleep=sleep)
    model = root / "model"
    if not (model / "training.json").is_file():
        raise TrainJobFailed(f"the job succeeded but its chief left no model in {model}")
    _copy(model, Path(model_dir))
    result = json.loads((model / "training.json").read_text())
    result["launcher"] = {"kind": "tfjob", "job": settings.name, "namespace": settings.namespace,
                          "workers": settings.workers, "seconds": round(time.monotonic() - t0, 2)}
    (Path(model_dir) / "training.json").write_text(json.dumps(result, indent=2))
    shutil.rmtree(root, ignore_errors=True)
    return result
