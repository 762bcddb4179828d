"""Pipeline benchmark: one run at `small` and one at `default` scale, side by side on this machine.

Prints quality (baseline, int8, oracle share), size and latency ratios, the wall time and peak memory
of every stage, and the scaling of wall time with 10x the data; checks them against the targets of
the pipeline issue and writes everything to <runs-dir>/bench_pipeline.json.

    python -m benchmarks.bench_pipeline [--runs-dir runs/bench] [--presets small,default]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from pipelines.run_local import run, summary_table

TARGETS = {
    "int8 AUC drop <= 0.003": lambda s: s["ratios"]["int8_auc_drop"] <= 0.003,
    "int8 gzip >= 10x smaller": lambda s: s["ratios"]["int8_gzip_smaller_x"] >= 10,
    "int8 batch-256 >= 3x faster": lambda s: s["ratios"]["int8_b256_faster_x"] >= 3,
    "(AUC-.5)/(oracle-.5) >= 0.9": lambda s: s["oracle_auc_share"]["optimized"] >= 0.9,
    "blessed": lambda s: s["blessed"],
    "wall time <= 10 min": lambda s: s["wall_seconds"] <= 600,
    "peak memory <= 4 GiB": lambda s: s["peak_rss_mib"] <= 4096,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", type=Path, default=Path("runs/bench"))
    p.add_argument("--presets", default="small,default")
    a = p.parse_args(argv)
    results = {}
    for preset in a.presets.split(","):
        print(f"\n=== pipeline at preset '{preset}' ===", flush=True)
        t0 = time.perf_counter()
        s = run(preset, "{}", "synthetic", a.runs_dir, run_id=f"bench-{preset}")
        s["wall_seconds"] = round(time.perf_counter() - t0, 1)
        # Tasks run one after another in their own processes: the run's peak is the largest stage peak
        # (or the orchestrating process, whichever is larger).
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        s["peak_rss_mib"] = round(max([st["peak_rss_mib"] for st in s["stages"]] + [own]), 1)
        results[preset] = s
        print(summary_table(s), flush=True)

    print("\n=== benchmark summary ===")
    print(f"{'preset':<10}{'wall s':>9}{'peak MiB':>10}{'AUC base':>10}{'AUC int8':>10}{'oracle':>9}"
          f"{'share':>7}{'gzip x':>8}{'b256 x':>8}")
    for preset, s in results.items():
        print(f"{preset:<10}{s['wall_seconds']:>9.1f}{s['peak_rss_mib']:>10.0f}{s['baseline']['auc']:>10.4f}"
              f"{s['optimized']['auc']:>10.4f}{s['oracle']['auc']:>9.4f}{s['oracle_auc_share']['optimized']:>7.3f}"
              f"{s['ratios']['int8_gzip_smaller_x']:>8.1f}{s['ratios']['int8_b256_faster_x']:>8.1f}")
    print("\nstage wall time (s) / peak RSS (MiB):")
    for preset, s in results.items():
        print(f"  {preset:<9}" + "  ".join(f"{st['stage']} {st['seconds']:.1f}s/{st['peak_rss_mib']:.0f}"
                                           for st in s["stages"]))
    verdicts = {}
    if "default" in results:
        d = results["default"]
        for name, ok in TARGETS.items():
            verdicts[name] = bool(ok(d))
    if "small" in results and "default" in results:
        ratio = results["default"]["wall_seconds"] / results["small"]["wall_seconds"]
        verdicts[f"10x data costs <= 12x time (measured {ratio:.1f}x)"] = ratio <= 12
    print("\ntargets (default scale):")
    for name, ok in verdicts.items():
        print(f"  [{'ok' if ok else 'MISSED'}] {name}")
    out = a.runs_dir / "bench_pipeline.json"
    out.write_text(json.dumps({"results": results, "targets": verdicts}, indent=2))
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
