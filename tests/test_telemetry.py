"""Quiet, honest logs: TensorFlow's native start-up notices stay out of a task's output on a machine without
a GPU (unless VERBOSE=1), every other line passes, and nothing is lost when the task dies."""

import os
import subprocess
import sys

import pytest

from shoprank.telemetry import NATIVE_NOISE, gpu_present

NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796059202.884481    5446 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.",
    "I0000 00:00:1796059202.919488    5446 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU "
    "will not be used.",
    "I0000 00:00:1796059203.622690    5446 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
    "E0000 00:00:1796059241.931827    5446 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
]
KEPT = [
    "E0000 00:00:1796059241.931827    5446 saver.cc:52] Failed to write the checkpoint: disk full",
    "Traceback (most recent call last):",
    "shoprank.errors.DataValidationError: events: 12 of 20 rows are bad",
    "[train] epoch 1 done",
    "INFO: the model has 11,685 parameters",
]
NO_GPU = {"CUDA_VISIBLE_DEVICES": "-1"}  # what this machine is anyway; set so the test holds on a GPU host too


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k != "VERBOSE"} | env)


WRITE = ("import os, sys\n"
         "from shoprank.telemetry import quiet_native_logs\n"
         "print('filter on:', quiet_native_logs(), flush=True)\n"
         "for line in {lines!r}:\n"
         "    os.write(2, (line + '\\n').encode())\n")


def test_the_patterns():
    assert all(NATIVE_NOISE.search(line) for line in NOISE)
    assert not any(NATIVE_NOISE.search(line) for line in KEPT)


def test_noise_is_filtered_from_the_descriptor_and_the_rest_passes_in_order():
    out = _run(WRITE.format(lines=NOISE + KEPT) + "os._exit(3)\n", NO_GPU)  # dies at once: nothing is lost
    assert out.returncode == 3 and "filter on: True" in out.stdout
    assert out.stderr.splitlines() == KEPT


def test_verbose_keeps_every_line():
    out = _run(WRITE.format(lines=NOISE + KEPT), NO_GPU | {"VERBOSE": "1"})
    assert "filter on: False" in out.stdout and out.stderr.splitlines() == NOISE + KEPT


@pytest.mark.skipif(gpu_present(), reason="on a GPU machine TensorFlow's notices are not filtered")
def test_importing_tensorflow_prints_none_of_its_notices():
    """The real thing: TensorFlow's import on this CPU machine, with and without the filter."""
    code = ("from shoprank.telemetry import quiet_native_logs\n"
            "quiet_native_logs()\n"
            "import tensorflow as tf\n"
            "print('gpus', len(tf.config.list_physical_devices('GPU')))\n")
    quiet = _run(code, {})
    assert quiet.returncode == 0 and "gpus 0" in quiet.stdout
    assert "oneDNN" not in quiet.stderr and "cuInit" not in quiet.stderr and "absl::InitializeLog" not in quiet.stderr
    loud = _run(code, {"VERBOSE": "1"})
    assert "oneDNN" in loud.stderr  # what the filter keeps out
