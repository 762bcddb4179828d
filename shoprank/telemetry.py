"""Stage timings and peak memory: printed, and appended as JSON lines to $SHOPRANK_TELEMETRY when set
(the local runner and `make bench` set it; every pipeline task is its own process, so the peak RSS of
the process is the stage's peak)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import Iterator

__all__ = ["ENV", "peak_rss_mib", "stage"]

ENV = "SHOPRANK_TELEMETRY"


def peak_rss_mib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


@contextlib.contextmanager
def stage(name: str) -> Iterator[dict]:
    """Time a pipeline stage; extra numbers put in the yielded dict are recorded with it."""
    record: dict = {"stage": name}
    print(f"[{name}] started", flush=True)
    t0 = time.perf_counter()
    try:
        yield record
    finally:
        record |= {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_mib": round(peak_rss_mib(), 1)}
        print(f"[{name}] finished in {record['seconds']}s, peak RSS {record['peak_rss_mib']} MiB", flush=True)
        path = os.environ.get(ENV)
        if path:
            with open(path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
