"""Readiness (shoprank.release.kserve.wait): KServe's status, the predictor Deployment's rollout, pod problems,
and waiting with a fake clock.
"""

from __future__ import annotations

from typing import Any

import pytest

from shoprank.release.kserve.names import SOURCE_URI_ANNOTATION
from shoprank.release.kserve.wait import (
    DeploymentUnreadable,
    deployment_rolled_out,
    has_failed,
    is_ready,
    pod_problems,
    wait_until_ready,
)
from tests.release.kserve.support import NEW, OLD, FakeClock, not_ready, reader, ready, ready_status


def test_is_ready():
    assert is_ready(ready_status()) == (True, "Ready: True")


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (None, "no status yet"),
        ({}, "no status yet"),
        ({"conditions": []}, "no Ready condition yet"),
        ({"conditions": [
            {"type": "PredictorReady", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": "deployment exceeded its progress deadline"},
            {"type": "Ready", "status": "False"},
        ]}, "PredictorReady: False: ProgressDeadlineExceeded: deployment exceeded its progress deadline"),
        ({"conditions": [{"type": "Ready", "status": "Unknown", "reason": "Creating"}]},
         "Ready: Unknown: Creating"),
        ({"conditions": [{"type": "Ready", "status": "True"}],
          "modelStatus": {"transitionStatus": "InProgress"}}, "model transition InProgress"),
        ({"conditions": [{"type": "Ready", "status": "True"},
                         {"type": "LatestDeploymentReady", "status": "Unknown"}]},
         "LatestDeploymentReady: Unknown"),
        ({"conditions": [{"type": "Ready", "status": "True"}],
          "components": {"predictor": {"latestCreatedRevision": "r-2", "latestReadyRevision": "r-1"}}},
         "predictor revision r-2 not ready yet (serving r-1)"),
        ({"conditions": [{"type": "Ready", "status": "True"}, {"type": "Stopped", "status": "True"}]},
         "stopped"),
    ],
)
def test_is_not_ready(status, reason):
    ready, why = is_ready(status)
    assert not ready
    assert why.startswith(reason)


def test_failed_model_load_is_terminal():
    status = {
        "conditions": [{"type": "Ready", "status": "True"}],  # the old pods still serve
        "modelStatus": {"transitionStatus": "BlockedByFailedLoad",
                        "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "bad tflite file"}},
    }
    assert has_failed(status) == (True, "model BlockedByFailedLoad (ModelLoadFailed: bad tflite file)")
    assert is_ready(status) == (False, "model BlockedByFailedLoad (ModelLoadFailed: bad tflite file)")
    assert has_failed(ready_status()) == (False, "")


def test_wait_returns_when_ready():
    clock = FakeClock()
    read = reader({"status": not_ready()}, {"status": not_ready()}, {"status": ready()})
    result = wait_until_ready(read, timeout_s=60, poll_s=5, clock=clock, sleep=clock.sleep)
    assert result.ready and not result.timed_out and clock.now == 10


def test_wait_times_out():
    clock = FakeClock()
    result = wait_until_ready(reader({"status": not_ready("Pending")}), timeout_s=30, poll_s=7,
                                      clock=clock, sleep=clock.sleep)
    assert not result.ready and result.timed_out and clock.now == 30 and "Pending" in result.detail


def test_wait_stops_at_a_failed_model_load():
    failed = not_ready()
    failed["modelStatus"] = {"transitionStatus": "BlockedByFailedLoad",
                             "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "no such bucket"}}
    clock = FakeClock()
    result = wait_until_ready(reader({"status": failed}), timeout_s=600, clock=clock, sleep=clock.sleep)
    assert not result.ready and not result.timed_out and "no such bucket" in result.detail and clock.now == 0


def test_wait_does_not_trust_a_stale_knative_revision():
    clock = FakeClock()
    read = reader({"status": ready("Knative", "r1")}, {"status": ready("Knative", "r2")})
    result = wait_until_ready(read, timeout_s=60, poll_s=5, previous_revision="r1",
                                      expects_new_revision=True, clock=clock, sleep=clock.sleep)
    assert result.ready and clock.now == 5


def deployment(source: str, *, replicas=2, updated=2, total=2, available=2, generation=4, observed=4):
    return {"metadata": {"generation": generation},
            "spec": {"replicas": replicas, "template": {"metadata": {"annotations": {
                SOURCE_URI_ANNOTATION: source}}}},
            "status": {"observedGeneration": observed, "updatedReplicas": updated, "replicas": total,
                       "availableReplicas": available}}


@pytest.mark.parametrize("dep, ok, reason", [
    (deployment(NEW), True, "rolled out"),
    (deployment(OLD), False, "still runs"),
    (deployment(NEW, observed=3), False, "not observed"),
    (deployment(NEW, updated=1, total=3), False, "1 of 2 replicas updated"),
    (deployment(NEW, total=3), False, "old replicas"),
    (deployment(NEW, available=1), False, "1 of 2 updated replicas available"),
])
def test_deployment_rolled_out(dep, ok, reason):
    got, why = deployment_rolled_out(dep, NEW)
    assert got == ok and reason in why


def test_standard_mode_waits_for_the_deployment_when_it_can_read_it():
    clock = FakeClock()
    deployments = iter([deployment(OLD), deployment(NEW, total=3), deployment(NEW)])
    result = wait_until_ready(reader({"status": ready()}), timeout_s=60, poll_s=5,
                                      read_deployment=lambda: next(deployments), storage_uri=NEW,
                                      clock=clock, sleep=clock.sleep)
    assert result.ready and clock.now == 10


def test_standard_mode_without_deployment_access_notes_it():
    def forbidden() -> dict[str, Any]:
        raise DeploymentUnreadable("HTTP 403 Forbidden")

    clock = FakeClock()
    result = wait_until_ready(reader({"status": ready()}), timeout_s=60, read_deployment=forbidden,
                                      storage_uri=NEW, clock=clock, sleep=clock.sleep)
    assert result.ready and "403" in result.notes[0] and "smoke" in result.notes[0]


def test_pod_problems_say_why_pods_are_not_ready():
    unschedulable = {"metadata": {"name": "p1"}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/4 nodes are available: 2 Insufficient nvidia.com/gpu."}]}}
    crashing = {"metadata": {"name": "p3"}, "status": {"conditions": [{"type": "PodScheduled", "status": "True"}],
                                                       "containerStatuses": [{"name": "kserve-container", "state": {
                                                           "waiting": {"reason": "CrashLoopBackOff"}}}]}}
    leaving = {"metadata": {"name": "p4", "deletionTimestamp": "x"}, "status": unschedulable["status"]}
    problems = pod_problems([unschedulable, dict(unschedulable, metadata={"name": "p2"}), crashing, leaving])
    assert problems == ["2 predictor pods Pending, Unschedulable: 0/4 nodes are available: 2 Insufficient "
                        "nvidia.com/gpu.", "1 predictor pod container kserve-container CrashLoopBackOff:"]


def test_a_failure_of_the_pods_being_replaced_is_not_the_new_versions():
    from shoprank.release.kserve.wait import failure_of_another_version

    placeholder = ("model BlockedByFailedLoad (ModelLoadFailed: ... Initializing, args: src_uri "
                   "[s3://shoprank-models/shoprank-ranker/latest] dest_path [/mnt/models] ... No model found)")
    new = "s3://shoprank-models/shoprank-ranker/v0123456789ab"
    assert failure_of_another_version(placeholder, new)
    own = placeholder.replace("shoprank-ranker/latest", "shoprank-ranker/v0123456789ab")
    assert not failure_of_another_version(own, new)
    assert not failure_of_another_version("model BlockedByFailedLoad (ModelLoadFailed)", new)  # cannot tell: fail
    assert not failure_of_another_version(placeholder, None)
