"""Multi-worker training: TF_CONFIG, the chief rule, throw-away saves, and two real workers on loopback.

The two-worker test runs MultiWorkerMirroredStrategy for real (two processes, gRPC collectives on 127.0.0.1) on the
tiny shop; what it does not show is TensorFlow across machines (tests/cluster checks the TFJob's pods instead).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoprank.errors import ShoprankError
from shoprank.modeling import distributed
from shoprank.modeling.distributed import TaskInfo, TrainingFailed


def conf(task_type: str, index: int, workers: int = 2, chief: bool = False) -> dict[str, str]:
    cluster = {"worker": [f"w{i}:2222" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["c:2222"]
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})}


def test_tf_config_names_every_worker_and_this_task():
    hosts = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    assert distributed.tf_config(hosts, 2) == {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": 2}}
    with pytest.raises(ValueError):
        distributed.tf_config(hosts, 3)


@pytest.mark.parametrize(("env", "chief", "workers"), [
    ({}, True, 1),                                  # no TF_CONFIG: one process, the chief
    ({"TF_CONFIG": " "}, True, 1),
    (conf("worker", 0), True, 2),                    # worker 0 leads a workers-only cluster (TFJob, launcher)
    (conf("worker", 1), False, 2),
    (conf("worker", 0, chief=True), False, 3),       # a chief exists: worker 0 is not it
    (conf("chief", 0, chief=True), True, 3),
    (conf("evaluator", 0), False, 2),
])
def test_the_chief_is_the_chief_task_or_worker_zero_without_one(env, chief, workers):
    task = distributed.task_info(env)
    assert task.is_chief is chief and distributed.is_chief(env) is chief
    assert task.workers == workers


def test_a_tf_config_that_is_not_json_is_refused_with_its_start():
    with pytest.raises(ShoprankError, match="TF_CONFIG is not a TensorFlow cluster description.*not json"):
        distributed.task_info({"TF_CONFIG": "not json"})


def test_only_the_chief_writes_to_the_model_dir_others_write_to_a_discarded_folder(tmp_path):
    chief, other = TaskInfo("worker", 0, 2), TaskInfo("worker", 1, 2)
    assert distributed.write_dir(tmp_path / "model", chief) == tmp_path / "model"
    scratch = distributed.write_dir(tmp_path / "model", other)
    assert scratch != tmp_path / "model" and scratch.is_dir() and "worker-1" in scratch.name
    (scratch / "weights").write_text("x")
    distributed.discard(scratch, other)
    assert not scratch.exists()
    (tmp_path / "model").mkdir()
    distributed.discard(tmp_path / "model", chief)  # never deletes the chief's save
    assert (tmp_path / "model").is_dir()


def test_free_ports_are_distinct():
    ports = distributed.free_ports(4)
    assert len(set(ports)) == 4 and all(p > 0 for p in ports)


@pytest.mark.integration
def test_two_workers_on_loopback_train_one_model_that_only_the_chief_saves(tmp_path, tiny_features, monkeypatch):
    """`make run TRAIN_WORKERS=2` at the tiny preset, without the pipeline: two processes, real collectives."""
    import tempfile

    features, transform, _ = tiny_features
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    tempfile.tempdir = None  # the workers inherit TMPDIR; their throw-away saves must be gone afterwards
    lines: list[str] = []
    model = tmp_path / "model"
    result = distributed.launch_local(2, features, transform, model, "tiny", "{}", progress=lines.append)
    # tf.distribute.MultiWorkerMirroredStrategy is CollectiveAllReduceStrategy by class name
    assert result["strategy"] == "CollectiveAllReduceStrategy" and result["workers"] == 2
    assert result["launcher"]["kind"] == "local" and result["launcher"]["workers"] == 2
    assert result["samples_per_second"] > 0 and 0.5 < result["epochs"][-1]["val_auc"] <= 1.0
    assert (model / "saved_model" / "saved_model.pb").is_file() and (model / "weights.h5").is_file()
    assert any("2 replica(s)" in line for line in lines), lines[:5]
    assert any(line.startswith("[worker-0] [train] epoch") for line in lines)
    assert not list((tmp_path / "tmp").glob("shoprank-worker-*")), "a non-chief save was left behind"

    from shoprank.modeling._tf import tf

    loaded = tf.saved_model.load(str(model / "saved_model"))
    assert "serving_default" in loaded.signatures


@pytest.mark.integration
def test_a_failing_worker_fails_the_run_with_its_log(tmp_path, tiny_features):
    features, transform, _ = tiny_features
    with pytest.raises(TrainingFailed, match=r"(?s)worker \d of 2 exited with status 2.*history_len"):
        distributed.launch_local(2, features, transform, tmp_path / "m", "tiny",
                                 '{"features": {"history_len": -3}}', progress=lambda _: None)
    assert not Path(tmp_path / "m" / "training.json").exists()
