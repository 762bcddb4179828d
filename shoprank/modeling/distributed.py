"""Multi-worker training: `TF_CONFIG`, who is the chief, where each worker writes, and a local launcher.

Why on its own: `shoprank.modeling.train` trains under whatever strategy the environment implies; this module is
what sets that environment. Two launchers produce the same worker processes: `launch_local` starts N processes on
loopback (what `make run TRAIN_WORKERS=N` and the tests run), and a cluster job (a Kubeflow TFJob, built by
`shoprank.release.trainjob`) starts N pods whose controller writes the same `TF_CONFIG` shape. Both run
`python -m shoprank.modeling.distributed worker ...`, which calls `train()`.

Rules from TensorFlow's multi-worker guide, applied here:
- The chief is the task of type `chief`, or worker 0 when the cluster has no chief (a TFJob with workers only,
  and the local launcher, which names worker 0 the chief).
- Every worker calls save (saving may run collectives); only the chief writes to the real model directory, the
  others to a throw-away directory that is deleted after (`write_dir` / `discard`).

Data: every worker reads the same memory-mapped split in the same seeded order, and the `tf.data` auto-shard policy
`DATA` hands each worker every N-th element of each global batch (`train.make_dataset`). Reading everything on each
worker costs input-pipeline CPU, but the step count is the same on every worker by construction (uneven shards
would leave one worker waiting in a collective) and no file needs splitting. Shards by file would need one file
per worker; the split files are one memory map per column. The global batch stays `train.batch_size` (each worker
takes 1/N of it) unless `train.scale_batch_with_workers`, so N workers take the same steps as one process.

Not tested here: workers on separate machines (the launcher's processes share one host; the TFJob test in
tests/cluster checks the pods' TF_CONFIG and placement, not TensorFlow across nodes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoprank.errors import ShoprankError

__all__ = [
    "ENV",
    "TaskInfo",
    "TrainingFailed",
    "discard",
    "free_ports",
    "is_chief",
    "launch_local",
    "task_info",
    "tf_config",
    "write_dir",
]

ENV = "TF_CONFIG"
Progress = Callable[[str], None]


class TrainingFailed(ShoprankError):
    """A worker of a multi-worker run failed; the message carries its exit status and the end of its log."""


@dataclass(frozen=True)
class TaskInfo:
    """This process's place in the cluster `TF_CONFIG` describes (one worker and chief when there is none)."""

    task_type: str = "worker"
    index: int = 0
    workers: int = 1
    has_chief: bool = False

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief" or (self.task_type == "worker" and self.index == 0 and not self.has_chief)

    @property
    def name(self) -> str:
        return f"{self.task_type}-{self.index}"


def tf_config(hosts: list[str], index: int, task_type: str = "worker") -> dict[str, Any]:
    """`TF_CONFIG` for task `index` of a cluster of workers at `hosts` ("host:port")."""
    if not 0 <= index < len(hosts):
        raise ValueError(f"task index {index} outside a cluster of {len(hosts)}")
    return {"cluster": {"worker": list(hosts)}, "task": {"type": task_type, "index": index}}


def task_info(env: Mapping[str, str] | None = None) -> TaskInfo:
    """This process's task from `TF_CONFIG` (absent: a single worker, the chief)."""
    raw = (os.environ if env is None else env).get(ENV, "")
    if not raw.strip():
        return TaskInfo()
    try:
        conf = json.loads(raw)
        cluster, task = conf.get("cluster") or {}, conf.get("task") or {}
        workers = sum(len(cluster.get(kind) or []) for kind in ("chief", "worker"))
        return TaskInfo(task_type=str(task.get("type", "worker")), index=int(task.get("index", 0)),
                        workers=max(1, workers), has_chief=bool(cluster.get("chief")))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ShoprankError(f"{ENV} is not a TensorFlow cluster description ({exc}): {raw[:200]!r}") from None


def is_chief(env: Mapping[str, str] | None = None) -> bool:
    return task_info(env).is_chief


def write_dir(model_dir: str | Path, task: TaskInfo | None = None) -> Path:
    """Where this task saves: the model directory for the chief, a fresh throw-away directory otherwise."""
    task = task or task_info()
    if task.is_chief:
        return Path(model_dir)
    return Path(tempfile.mkdtemp(prefix=f"shoprank-{task.name}-"))


def discard(path: str | Path, task: TaskInfo | None = None) -> None:
    """Delete a non-chief's throw-away save (the chief's model directory is never touched)."""
    task = task or task_info()
    if not task.is_chief:
        shutil.rmtree(path, ignore_errors=True)


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (held together while picked, so they differ)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def _pump(proc: subprocess.Popen[str], label: str, progress: Progress, tail: list[str], chatty: bool) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail.append(line)
        del tail[:-40]
        if chatty or line.startswith(("[train]", "Traceback")) or "Error" in line:
            progress(f"[{label}] {line}")


def launch_local(workers: int, features_dir: str | Path, transform_dir: str | Path, model_dir: str | Path,
                 preset: str, overrides: str, *, progress: Progress = print, timeout_s: float = 6 * 3600,
                 python: str = sys.executable) -> dict[str, Any]:
    """Train with `workers` processes on loopback under MultiWorkerMirroredStrategy; return the chief's result.

    Each process gets its own TF_CONFIG (worker i of `workers`, ports picked free on 127.0.0.1). The chief's log
    lines are passed to `progress` prefixed with its name; the others' only when they report an error. When any
    worker exits non-zero the others are stopped (they would wait for it in a collective) and TrainingFailed
    names the worker, its exit status and the end of its log.
    """
    if workers < 1:
        raise ShoprankError(f"train workers must be >= 1, got {workers}")
    hosts = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    procs: list[subprocess.Popen[str]] = []
    tails: list[list[str]] = []
    pumps: list[threading.Thread] = []
    progress(f"[train] {workers} local workers on {', '.join(hosts)} (MultiWorkerMirroredStrategy)")
    t0 = time.perf_counter()
    try:
        for i in range(workers):
            env = dict(os.environ, **{ENV: json.dumps(tf_config(hosts, i))})
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            cmd = [python, "-u", "-m", "shoprank.modeling.distributed", "worker", "--features", str(features_dir),
                   "--transform", str(transform_dir), "--model-dir", str(model_dir), "--preset", preset,
                   "--overrides", overrides]
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    stdin=subprocess.DEVNULL)
            procs.append(proc)
            tails.append([])
            pump = threading.Thread(target=_pump, args=(proc, f"worker-{i}", progress, tails[i], i == 0), daemon=True)
            pump.start()
            pumps.append(pump)
        deadline = time.monotonic() + timeout_s
        while any(p.poll() is None for p in procs):
            failed = [i for i, p in enumerate(procs) if p.returncode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        failed = [i for i, p in enumerate(procs) if p.returncode not in (None, 0)]
        if failed or any(p.poll() is None for p in procs):
            for p in procs:
                if p.poll() is None:
                    p.kill()
            for pump in pumps:
                pump.join(timeout=5)
            if not failed:
                raise TrainingFailed(f"{workers}-worker training timed out after {timeout_s:.0f}s")
            i = failed[0]
            raise TrainingFailed(f"worker {i} of {workers} exited with status {procs[i].returncode}; its log ends:\n"
                                 + "\n".join(tails[i][-20:]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for pump in pumps:
        pump.join(timeout=5)
    result = json.loads((Path(model_dir) / "training.json").read_text())
    result["launcher"] = {"kind": "local", "workers": workers, "seconds": round(time.perf_counter() - t0, 2)}
    (Path(model_dir) / "training.json").write_text(json.dumps(result, indent=2))
    return result


@contextlib.contextmanager
def progress_file(path: str | Path | None) -> Iterator[Progress]:
    """A progress function that prints and, when `path` is given, appends each line to it (a cluster job's chief
    writes its progress on the shared volume, where the waiting pipeline step reads it)."""
    if path is None:
        yield print
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as fh:
        def both(line: str) -> None:
            print(line, flush=True)
            fh.write(line + "\n")
        yield both


def main(argv: list[str] | None = None) -> int:
    """`worker`: train as the task TF_CONFIG names (what each local process and each TFJob pod runs)."""
    parser = argparse.ArgumentParser(prog="python -m shoprank.modeling.distributed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("worker",))
    parser.add_argument("--features", required=True)
    parser.add_argument("--transform", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--overrides", default="{}")
    parser.add_argument("--progress-file", default=None, help="the chief also appends its progress lines here")
    args = parser.parse_args(argv)
    from shoprank.config import resolve_config
    from shoprank.modeling.train import train

    task = task_info()
    with progress_file(args.progress_file if task.is_chief else None) as progress:
        try:
            train(args.features, args.transform, args.model_dir, resolve_config(args.preset, args.overrides),
                  progress=progress)
        except ShoprankError as exc:  # a refusal (bad settings, unreadable data): the message, no traceback
            progress(f"[train] {task.name} failed: {exc}")
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
