"""Data benchmark: streaming ingest + preprocess of event logs of 1M, 10M and 50M events.

For each scale it generates a browsing log in the documented events layout (parquet, kept under
<runs-dir>/events-<n>/source for reruns), then runs `ingest` (events:<dir>) and `preprocess` each in its
own process (as the pipeline tasks run) and records wall time, rows/s and peak RSS. Prints a table,
checks the targets (time linear in the events, flat peak memory, >= 1M events/s for validation and
split) and writes <runs-dir>/bench_data.json. Features are deleted after each scale unless --keep.

    python -m benchmarks.bench_data [--scales 1000000,10000000,50000000] [--runs-dir runs/bench-data]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SCALES = (1_000_000, 10_000_000, 50_000_000)
PRESET = "default"
OVERRIDES = "{}"

STEP = r"""
import json, sys, time
from shoprank.config import resolve_config
step, a, b, preset, overrides = sys.argv[1:6]
config = resolve_config(preset, overrides)
t0 = time.perf_counter()
if step == "ingest":
    from shoprank.data.ingest import ingest
    result = ingest(a, b, config)
else:
    from shoprank.features.preprocess import preprocess
    result = preprocess(a, b + "/features", b + "/transform", config, progress=lambda s: print(s, flush=True))
print("RESULT " + json.dumps({"seconds": time.perf_counter() - t0, "result": result}, default=str), flush=True)
"""


def _run_step(args: list[str]) -> dict:
    """Run one step in a child process; its wall time, peak RSS (from wait4) and result."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", STEP, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if not line.startswith("RESULT "):
            print("    " + line.rstrip(), flush=True)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"step {args[0]} failed ({proc.returncode}):\n" + "".join(lines[-20:]))
    result = json.loads(next(x for x in lines if x.startswith("RESULT "))[7:])
    return {"wall_seconds": round(wall, 1), "step_seconds": round(result["seconds"], 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 0), "result": result["result"]}


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bench_scale(n: int, runs: Path, keep: bool) -> dict:
    from tests.support.samples import write_event_log

    base = runs / f"events-{n}"
    src = base / "source"
    if not (src / "events.parquet").exists():
        print(f"  generating {n:,} events ...", flush=True)
        shutil.rmtree(src, ignore_errors=True)
        gen = write_event_log(src, n, n_items=20_000, seed=11)
        print(f"  generated {gen['events']:,} events in {gen['seconds']}s", flush=True)
    for d in ("raw", "out"):
        shutil.rmtree(base / d, ignore_errors=True)
    print(f"  ingest events:{src}", flush=True)
    ing = _run_step(["ingest", f"events:{src}", str(base / "raw"), PRESET, OVERRIDES])
    print("  preprocess", flush=True)
    pre = _run_step(["preprocess", str(base / "raw"), str(base / "out"), PRESET, OVERRIDES])
    rep = pre["result"]
    events = rep["rows_in"]["events"]
    vs = rep["timings"]["validate_rows"] + rep["timings"]["dedup_requests"]
    row = {"events": events, "ingest_seconds": ing["step_seconds"], "ingest_peak_mib": ing["peak_rss_mib"],
           "preprocess_seconds": pre["step_seconds"], "preprocess_peak_mib": pre["peak_rss_mib"],
           "validate_split_seconds": round(vs, 1), "validate_split_events_per_s": round(events / max(vs, 1e-9)),
           "preprocess_events_per_s": round(events / max(pre["step_seconds"], 1e-9)),
           "total_seconds": round(ing["step_seconds"] + pre["step_seconds"], 1),
           "output_rows": sum(s["rows"] for s in rep["splits"].values()),
           "requests": sum(s["requests"] for s in rep["splits"].values()),
           "features_bytes": _du(base / "out"), "timings": rep["timings"], "peak_rss_mib_by_stage": rep["peak_rss_mib"],
           "partitions": rep["partitions"]}
    if not keep:
        for d in ("raw", "out"):
            shutil.rmtree(base / d, ignore_errors=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", default=",".join(str(s) for s in SCALES))
    p.add_argument("--runs-dir", type=Path, default=Path("runs/bench-data"))
    p.add_argument("--keep", action="store_true", help="keep the ingested tables and features of each scale")
    a = p.parse_args(argv)
    a.runs_dir.mkdir(parents=True, exist_ok=True)
    rows = {}
    for n in (int(s) for s in a.scales.split(",")):
        print(f"\n=== {n:,} events ===", flush=True)
        rows[n] = bench_scale(n, a.runs_dir, a.keep)
    print("\n=== data benchmark (events layout -> ingest -> streaming preprocess) ===")
    print(f"{'events':>12}{'ingest s':>10}{'prep s':>9}{'total s':>9}{'events/s':>11}{'val+split s':>13}"
          f"{'val+split ev/s':>16}{'peak MiB':>10}{'out rows':>12}")
    for r in rows.values():
        peak = max(r["ingest_peak_mib"], r["preprocess_peak_mib"])
        print(f"{r['events']:>12,}{r['ingest_seconds']:>10.1f}{r['preprocess_seconds']:>9.1f}{r['total_seconds']:>9.1f}"
              f"{r['events'] / max(r['total_seconds'], 1e-9):>11,.0f}{r['validate_split_seconds']:>13.1f}"
              f"{r['validate_split_events_per_s']:>16,}{peak:>10,.0f}{r['output_rows']:>12,}")
    print("\npreprocess stages, seconds / peak RSS so far (MiB):")
    for r in rows.values():
        print(f"  {r['events']:>11,}  " + "  ".join(f"{k} {v:.1f}s/{r['peak_rss_mib_by_stage'][k]:.0f}"
                                              for k, v in r["timings"].items()))
    verdicts = {}
    ns = sorted(rows)
    if len(ns) > 1:
        lo, hi = rows[ns[0]], rows[ns[-1]]
        scale = hi["events"] / lo["events"]
        t_ratio = hi["total_seconds"] / max(lo["total_seconds"], 1e-9)
        verdicts[f"time grows linearly: {scale:.0f}x events -> {t_ratio:.1f}x time (<= {1.25 * scale:.0f}x)"] = \
            t_ratio <= 1.25 * scale
        peaks = [max(r["ingest_peak_mib"], r["preprocess_peak_mib"]) for r in rows.values()]
        verdicts[f"peak memory flat: {min(peaks):.0f}-{max(peaks):.0f} MiB (max <= 1.5x min + 256 MiB)"] = \
            max(peaks) <= 1.5 * min(peaks) + 256
    worst = min(r["validate_split_events_per_s"] for r in rows.values())
    verdicts[f">= 1M events/s for validation and split (slowest {worst:,}/s)"] = worst >= 1_000_000
    print("\ntargets:")
    for name, ok in verdicts.items():
        print(f"  [{'ok' if ok else 'MISSED'}] {name}")
    out = a.runs_dir / "bench_data.json"
    out.write_text(json.dumps({"results": {str(k): v for k, v in rows.items()}, "targets": verdicts}, indent=2))
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
