"""Stage timings and peak memory: printed, and appended as JSON lines to $SHOPRANK_TELEMETRY when set
(the local runner and `make bench` set it; every pipeline task is its own process, so the peak RSS of
the process is the stage's peak).

Quiet logs: `quiet_native_logs()`, called first thing by the pipeline's components, keeps TensorFlow's C++
start-up notices (oneDNN, CPU instruction sets, the failed CUDA probe `failed call to cuInit: ... (303)`,
absl's "before absl::InitializeLog()" banner) out of the task's output on machines without a GPU, unless
VERBOSE=1. They are written by native code to file descriptor 2 before any setting of TensorFlow's can hide
them (TF_CPP_MIN_LOG_LEVEL does not), so the filter sits on the descriptor: a small child process reads the
task's stderr through a pipe and passes on every other line, to the end (nothing is lost if the task
crashes). The train step then says once, plainly, whether TensorFlow found a GPU."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Iterator

__all__ = ["ENV", "NATIVE_NOISE", "VERBOSE", "gpu_present", "peak_rss_mib", "quiet_native_logs", "stage",
           "verbose"]

ENV = "SHOPRANK_TELEMETRY"
VERBOSE = "VERBOSE"  # VERBOSE=1: every log line, TensorFlow's own included
# TensorFlow's native start-up lines on a machine without a GPU: absl's pre-init banner, glog-style info and
# warning lines (`I0000 00:00:1796059202.884481    5446 port.cc:153] oneDNN custom operations are on...`),
# the CPU instruction-set notice's second line, the errors of probing CUDA where there is none, and LiteRT's
# "XNNPACK delegate for CPU" notice.
NATIVE_NOISE = re.compile(
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|^[IW]\d{4} \S+\s+\d+\s+[\w./+-]+:\d+\] "
    r"|^E\d{4} \S+\s+\d+\s+[\w./+-]+:\d+\] .*(cuInit|CUDA|cuda|cuDNN|cuFFT|cuBLAS|TensorRT|TF-TRT)"
    r"|^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags"
    r"|^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.")
_FILTER: subprocess.Popen | None = None
# The child that filters: reads the task's stderr lines, writes on every line that is not noise.
_FILTER_CODE = (
    "import re, sys\n"
    "noise = re.compile(sys.argv[1])\n"
    "out = sys.stdout.buffer\n"
    "for line in sys.stdin.buffer:\n"
    "    if not noise.search(line.decode('utf-8', 'replace')):\n"
    "        out.write(line)\n"
    "        out.flush()\n")


def verbose() -> bool:
    return os.environ.get(VERBOSE, "").strip().lower() not in ("", "0", "false", "no")


def gpu_present() -> bool:
    """Whether this machine offers an NVIDIA GPU to this process (device files; CUDA_VISIBLE_DEVICES honoured),
    told without loading TensorFlow or CUDA."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*")) or bool(glob.glob("/proc/driver/nvidia/gpus/*"))


def quiet_native_logs() -> bool:
    """Filter TensorFlow's native start-up notices out of this process's stderr (file descriptor 2): on a
    machine without a GPU, unless VERBOSE=1. Call it before TensorFlow is imported; calling it again does
    nothing. Returns whether the filter is on."""
    global _FILTER
    if _FILTER is not None:
        return True
    if verbose() or gpu_present():
        return False
    sys.stderr.flush()
    try:
        _FILTER = subprocess.Popen([sys.executable, "-S", "-c", _FILTER_CODE, NATIVE_NOISE.pattern],
                                   stdin=subprocess.PIPE, stdout=2, close_fds=True)
    except OSError:  # no way to start the filter: the notices stay, nothing else changes
        return False
    os.dup2(_FILTER.stdin.fileno(), 2)
    return True


def peak_rss_mib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


@contextlib.contextmanager
def stage(name: str) -> Iterator[dict]:
    """Time a pipeline stage; extra numbers put in the yielded dict are recorded with it, and so is the error
    that ends the stage (as "error": "DataValidationError: ...")."""
    record: dict = {"stage": name}
    print(f"[{name}] started", flush=True)
    t0 = time.perf_counter()
    try:
        yield record
    except Exception as exc:  # recorded for the runner's last words, then raised as it was
        record["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        record |= {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_mib": round(peak_rss_mib(), 1)}
        print(f"[{name}] finished in {record['seconds']}s, peak RSS {record['peak_rss_mib']} MiB", flush=True)
        path = os.environ.get(ENV)
        if path:
            with open(path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
