"""/metrics over every worker process: Prometheus multiprocess mode with a per-run directory.

Why: with `--workers N` each uvicorn worker is its own process with its own counters, so a scrape (which reaches
one worker) saw a 1/N sample of the traffic. prometheus_client's multiprocess mode keeps every process's values
in memory-mapped files in one directory and adds them up at scrape time; the directory must be fresh per run
(stale files of an earlier run would be added in), so the server makes one per run and removes it on exit.

The mode is chosen when prometheus_client is first imported (it reads PROMETHEUS_MULTIPROC_DIR then), which
KServe does on its own import: so `use_multiprocess_metrics()` is the first thing the entry points
(`python -m serving`, `python -m serving.transformer`) do, before importing anything else. Spawned workers
inherit the variable and write into the same directory. This module imports only the standard library at
the top for that reason.

What adds up how: counters and histograms (KServe's latency histograms, shoprank_batch_*, refusals) are
summed over all processes that ever ran, including replaced workers; gauges are per live process (label
`pid`, mode "liveall"), and a worker that dies is marked dead (`mark_dead`) so its gauges go away.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from typing import Any

__all__ = ["ENV", "OWNER_ENV", "mark_dead", "metrics_text", "multiprocess_dir", "use_multiprocess_metrics"]

ENV = "PROMETHEUS_MULTIPROC_DIR"
OWNER_ENV = "SHOPRANK_METRICS_OWNER"  # pid of the process that made the directory (it removes it on exit)


def use_multiprocess_metrics() -> str | None:
    """Make (or, in a spawned worker, reuse) this run's metrics directory and point PROMETHEUS_MULTIPROC_DIR
    at it. A PROMETHEUS_MULTIPROC_DIR set by the operator is the parent of the per-run directory. Returns the
    directory, or None when prometheus_client was imported already (then metrics stay per process)."""
    if os.environ.get(OWNER_ENV) and os.path.isdir(os.environ.get(ENV, "")):
        return os.environ[ENV]  # a worker of this run (or a process it started): same directory
    if "prometheus_client.values" in sys.modules:
        return None
    base = os.environ.get(ENV) or None
    if base:
        os.makedirs(base, exist_ok=True)
    directory = tempfile.mkdtemp(prefix="shoprank-metrics-", dir=base)
    os.environ[ENV] = directory
    os.environ[OWNER_ENV] = str(os.getpid())
    owner = os.getpid()

    def _remove() -> None:
        if os.getpid() == owner:
            shutil.rmtree(directory, ignore_errors=True)

    atexit.register(_remove)
    return directory


def multiprocess_dir() -> str | None:
    """The directory when this process runs in multiprocess mode, else None."""
    from prometheus_client import values

    directory = os.environ.get(ENV)
    return directory if directory and values.ValueClass is not values.MutexValue else None


def metrics_text(accept: str | None) -> tuple[bytes, str]:
    """The exposition of all processes (multiprocess mode) or of this one; and its content type."""
    from prometheus_client import REGISTRY, CollectorRegistry, exposition
    from prometheus_client.multiprocess import MultiProcessCollector

    encoder, content_type = exposition.choose_encoder(accept)
    directory = multiprocess_dir()
    if directory is None:
        return encoder(REGISTRY), content_type
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return encoder(registry), content_type


def mark_dead(pid: Any) -> None:
    """Drop a dead worker's live gauges (its counters stay in the sums)."""
    if pid is None or multiprocess_dir() is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(int(pid), os.environ[ENV])
