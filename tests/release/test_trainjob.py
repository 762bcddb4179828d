"""The TFJob of a multi-worker train step: the object, the status readers, waiting, and the step's whole flow with
a recording API (the object against the real CRD, webhook and controller: tests/cluster/test_training.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoprank.errors import ShoprankError
from shoprank.release import trainjob
from shoprank.release.trainjob import JobSettings, TrainJobFailed

GPU_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def settings(**changes) -> JobSettings:
    base = dict(name="shoprank-train-0123456789", namespace="shoprank", image="reg/shoprank-components:1",
                workers=3, preset="small", overrides='{"train": {"epochs": 2}}', claim="shoprank-train",
                mount_path="/mnt/shoprank-train", job_dir="shoprank-train-0123456789")
    return JobSettings(**(base | changes))


def test_the_job_runs_n_workers_of_the_component_image_with_the_shared_claim():
    job = trainjob.build_tfjob(settings())
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "TFJob"
    assert job["metadata"] == {"name": "shoprank-train-0123456789", "namespace": "shoprank",
                               "labels": {"app.kubernetes.io/part-of": "shoprank",
                                          "app.kubernetes.io/component": "training",
                                          "app.kubernetes.io/managed-by": "shoprank-train"}}
    replicas = job["spec"]["tfReplicaSpecs"]
    assert list(replicas) == ["Worker"], "workers only: worker 0 is the chief, every replica saves"
    worker = replicas["Worker"]
    assert worker["replicas"] == 3 and worker["restartPolicy"] == "Never"
    pod = worker["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "tensorflow" and container["image"] == "reg/shoprank-components:1"
    assert container["ports"] == [{"name": "tfjob-port", "containerPort": 2222, "protocol": "TCP"}]
    assert container["command"][:4] == ["python3", "-m", "shoprank.modeling.distributed", "worker"]
    args = dict(zip(container["command"][4::2], container["command"][5::2]))
    root = "/mnt/shoprank-train/shoprank-train-0123456789"
    assert args == {"--features": f"{root}/features", "--transform": f"{root}/transform", "--model-dir":
                    f"{root}/model", "--preset": "small", "--overrides": '{"train": {"epochs": 2}}',
                    "--progress-file": f"{root}/progress.log"}
    assert container["volumeMounts"] == [{"name": "shoprank-train", "mountPath": "/mnt/shoprank-train"}]
    assert pod["volumes"] == [{"name": "shoprank-train", "persistentVolumeClaim": {"claimName": "shoprank-train"}}]
    assert pod["automountServiceAccountToken"] is False
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "8G"}, "limits": {"cpu": "2", "memory": "8G"}}
    assert job["spec"]["runPolicy"]["backoffLimit"] == 0
    json.dumps(job)  # plain JSON, what server-side apply sends


def test_gpu_settings_apply_to_every_worker():
    job = trainjob.build_tfjob(settings(gpu_count=2, node_selector=GPU_SELECTOR, tolerations=[GPU_TOLERATION]))
    pod = job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]  # one template for all replicas
    assert pod["nodeSelector"] == GPU_SELECTOR and pod["tolerations"] == [GPU_TOLERATION]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["requests"]


def test_the_builder_refuses_one_worker_and_bad_names():
    with pytest.raises(ShoprankError, match="at least 2 workers"):
        trainjob.build_tfjob(settings(workers=1))
    with pytest.raises(ShoprankError, match="DNS-1035"):
        trainjob.build_tfjob(settings(name="Shoprank_Train"))


def test_job_names_are_stable_per_seed_and_valid():
    a, b = trainjob.job_name("pod-a"), trainjob.job_name("pod-b")
    assert a == trainjob.job_name("pod-a") and a != b
    assert a.startswith("shoprank-train-") and len(a) <= 30
    trainjob.build_tfjob(settings(name=a))


def cond(kind: str, status: str = "True", message: str = "") -> dict:
    return {"type": kind, "status": status, "message": message}


@pytest.mark.parametrize(("status", "state"), [
    (None, "Pending"),
    ({"conditions": [cond("Created")]}, "Created"),
    ({"conditions": [cond("Created"), cond("Running")]}, "Running"),
    ({"conditions": [cond("Created"), cond("Running", "False"), cond("Succeeded", message="done")]}, "Succeeded"),
    ({"conditions": [cond("Created"), cond("Running", "False"), cond("Failed", message="oom")]}, "Failed"),
])
def test_job_state_is_the_terminal_or_latest_true_condition(status, state):
    job = {"status": status} if status else {}
    assert trainjob.job_state(job)[0] == state
    assert trainjob.job_state(None) == ("Missing", "the job does not exist")


def test_replica_summary_counts_each_kind():
    job = {"status": {"replicaStatuses": {"Worker": {"active": 2, "failed": 1}}}}
    assert trainjob.replica_summary(job) == "Worker: 2 active, 0 succeeded, 1 failed"
    assert trainjob.replica_summary({}) == "no replicas yet"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_waiting_prints_state_changes_and_the_chiefs_progress_lines(tmp_path):
    progress_file = tmp_path / "progress.log"
    states = iter([{}, {"status": {"conditions": [cond("Created")]}},
                   {"status": {"conditions": [cond("Running")], "replicaStatuses": {"Worker": {"active": 2}}}},
                   {"status": {"conditions": [cond("Running")], "replicaStatuses": {"Worker": {"active": 2}}}},
                   {"status": {"conditions": [cond("Succeeded")], "replicaStatuses": {"Worker": {"succeeded": 2}}}}])
    writes = iter(["[train] epoch 1 done\n", "[train] epoch 2 do", "ne\n", "", ""])

    def read():
        with open(progress_file, "a") as fh:
            fh.write(next(writes))
        return next(states)

    clock, lines = FakeClock(), []
    job = trainjob.wait_for_job(read, progress=lines.append, timeout_s=100, poll_s=5, progress_file=progress_file,
                                clock=clock, sleep=clock.sleep)
    assert trainjob.job_state(job)[0] == "Succeeded"
    assert lines == ["[train-job] Pending: no replicas yet (no status from the training operator yet)",
                     "[worker-0] [train] epoch 1 done",
                     "[train-job] Created: no replicas yet",
                     "[train-job] Running: Worker: 2 active, 0 succeeded, 0 failed",
                     "[worker-0] [train] epoch 2 done",
                     "[train-job] Succeeded: Worker: 0 active, 2 succeeded, 0 failed"]


def test_waiting_fails_on_a_failed_job_a_deleted_job_and_the_timeout():
    clock = FakeClock()
    failed = {"status": {"conditions": [cond("Failed", message="worker 1 OOMKilled")]}}
    with pytest.raises(TrainJobFailed, match="failed: worker 1 OOMKilled"):
        trainjob.wait_for_job(lambda: failed, progress=lambda _: None, timeout_s=10, clock=clock, sleep=clock.sleep)
    with pytest.raises(TrainJobFailed, match="missing"):
        trainjob.wait_for_job(lambda: None, progress=lambda _: None, timeout_s=10, clock=clock, sleep=clock.sleep)
    running = {"status": {"conditions": [cond("Running")]}}
    with pytest.raises(TrainJobFailed, match="not finished after 10s"):
        trainjob.wait_for_job(lambda: running, progress=lambda _: None, timeout_s=10, poll_s=3, clock=clock,
                              sleep=clock.sleep)


class RecordingApi:
    """Applies are recorded; the 'job' succeeds at once, its chief writing a model where the command says."""

    def __init__(self, fail: bool = False) -> None:
        self.applied: list[tuple[dict, str]] = []
        self.fail = fail

    def apply(self, body, *, field_manager):
        self.applied.append((body, field_manager))
        args = body["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"]
        opts = dict(zip(args[4::2], args[5::2]))
        assert (Path(opts["--features"]) / "train.npy").is_file(), "inputs are staged before the job is applied"
        if not self.fail:
            model = Path(opts["--model-dir"])
            (model / "saved_model").mkdir(parents=True)
            (model / "training.json").write_text(json.dumps({"epochs": [{"val_auc": 0.7}], "workers": 2}))
            Path(opts["--progress-file"]).write_text("[train] epoch 1 done\n")
        return body

    def get(self, namespace, name):
        kind = "Failed" if self.fail else "Succeeded"
        return {"status": {"conditions": [cond(kind, message="exit 1" if self.fail else "")]}}


def test_the_step_stages_inputs_applies_waits_and_returns_the_chiefs_model(tmp_path):
    features, transform = tmp_path / "in" / "features", tmp_path / "in" / "transform"
    features.mkdir(parents=True)
    transform.mkdir()
    (features / "train.npy").write_bytes(b"x")
    (transform / "vocab.json").write_text("{}")
    mount = tmp_path / "volume"
    mount.mkdir()
    s = settings(workers=2, mount_path=str(mount))
    api, lines = RecordingApi(), []
    out = trainjob.run_training_job(s, features, transform, tmp_path / "model", api, progress=lines.append,
                                    sleep=lambda _: None)
    ((body, manager),) = api.applied
    assert manager == "shoprank-train" and body == trainjob.build_tfjob(s)
    assert (tmp_path / "model" / "saved_model").is_dir()
    assert out["launcher"] == {"kind": "tfjob", "job": s.name, "namespace": "shoprank", "workers": 2,
                               "seconds": out["launcher"]["seconds"]}
    assert json.loads((tmp_path / "model" / "training.json").read_text())["launcher"]["kind"] == "tfjob"
    assert "[worker-0] [train] epoch 1 done" in lines
    assert not (mount / s.job_dir).exists(), "the job folder is removed after the model is copied"


def test_the_step_fails_with_the_jobs_reason_or_without_the_volume(tmp_path):
    features = tmp_path / "features"
    features.mkdir()
    (features / "train.npy").write_bytes(b"x")
    mount = tmp_path / "volume"
    mount.mkdir()
    with pytest.raises(TrainJobFailed, match="failed: exit 1"):
        trainjob.run_training_job(settings(workers=2, mount_path=str(mount)), features, features,
                                  tmp_path / "model", RecordingApi(fail=True), progress=lambda _: None,
                                  sleep=lambda _: None)
    with pytest.raises(TrainJobFailed, match="not mounted at .*SHOPRANK_TRAIN_PVC"):
        trainjob.run_training_job(settings(workers=2, mount_path=str(tmp_path / "absent")), features, features,
                                  tmp_path / "model", RecordingApi(), progress=lambda _: None)
