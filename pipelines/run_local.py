"""Run the compiled-for-Kubeflow pipeline function on this machine with kfp.local.

    python -m pipelines.run_local --preset default [--data synthetic] [--runs-dir runs]

Writes runs/<run-id>/ (artefacts, promoted model, summary.json, report.html, stages.jsonl) and points
runs/latest at it. Exits non-zero when a step fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

SUMMARY_ROWS = (
    ("AUC", "auc"), ("NDCG@10", "ndcg_at_10"), ("log loss", "log_loss"), ("MRR", "mrr"),
)


def counterfactual_lines(summary: dict) -> list[str]:
    """True-relevance NDCG (synthetic data) and the estimated clicks per request with their intervals."""
    lines = []
    ndcg = summary.get("true_ndcg_at_10") or {}
    if ndcg.get("baseline") is not None:
        lines.append(f"{'true-relevance NDCG@10':<24}{ndcg['baseline']:>14.4f}{ndcg['optimized']:>16.4f}"
                     f"{'1.0000':>10}" + (f"   previous {ndcg['previous']:.4f}" if ndcg.get("previous") else ""))
    cf = summary.get("counterfactual") or {}
    if "skipped" in cf:
        lines.append(f"counterfactual: {cf['skipped']}")
    for name, e in cf.get("models", {}).items():
        truth = f", truth {e['truth']:.4f} ({e['relative_error']:+.2%})" if "truth" in e else ""
        lines.append(f"estimated clicks/request {name:<20}{e['estimate']:.4f} [{e['low']:.4f}, {e['high']:.4f}]{truth}")
    if "models" in cf:
        lines.append(f"  ({cf['estimator']}, propensities from {cf['propensities']['source']}; logged clicks/request "
                     f"{cf['logged_clicks_per_request']:.4f}; {cf.get('previous_model', {}).get('why', '')})")
    return lines


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:,.0f} {unit}"
        n /= 1024
    return f"{n:,.1f} TB"


def summary_table(summary: dict) -> str:
    """The human-readable end-of-run table."""
    data = summary.get("data", {})
    lines = [f"data source: {summary.get('data_source', '?')}"
             + (f" ({data['task']}, {data.get('split_mode')} split)" if data.get("task") else ""), ""]
    lines.append(f"{'':<24}{'baseline':>14}{'optimised int8':>16}{'oracle':>10}")
    for label, key in SUMMARY_ROWS:
        o = summary.get("oracle", {}).get(key)
        lines.append(f"{label:<24}{summary['baseline'][key]:>14.4f}{summary['optimized'][key]:>16.4f}"
                     f"{(f'{o:.4f}' if o is not None else '-'):>10}")
    if "oracle" not in summary:
        lines.append("(no oracle: real data carry no true relevance)")
    if "oracle_auc_share" in summary:
        s = summary["oracle_auc_share"]
        lines.append(f"{'(AUC-.5)/(oracle-.5)':<24}{s['baseline']:>14.3f}{s['optimized']:>16.3f}")
    lines += counterfactual_lines(summary)
    lines.append("")
    lines.append(f"{'artefact':<24}{'bytes':>14}{'gzip':>16}{'ms @1':>10}{'ms @256':>10}")
    for name, size in summary["sizes"].items():
        lat = summary["latency_ms"][name]
        lines.append(f"{name:<24}{_fmt_bytes(size['bytes']):>14}{_fmt_bytes(size['gzip_bytes']):>16}"
                     f"{lat['1']:>10.3f}{lat['256']:>10.3f}")
    r = summary["ratios"]
    lines.append(f"int8 vs baseline: {r['int8_gzip_smaller_x']:.1f}x smaller (gzip), "
                 f"{r['int8_b256_faster_x']:.1f}x faster at batch 256, AUC drop {r['int8_auc_drop']:+.4f}")
    lines.append("")
    lines.append(f"blessed: {summary['blessed']}")
    for reason in summary["blessing_reasons"]:
        lines.append(f"  - {reason}")
    if summary.get("model_dir"):
        lines.append(f"promoted SavedModel: {summary['model_dir']}")
        lines.append(f"promoted int8 model: {summary['tflite_path']}")
    for st in summary.get("stages", []):
        lines.append(f"  stage {st['stage']:<11} {st['seconds']:>7.1f}s  peak {st['peak_rss_mib']:>7.0f} MiB")
    return "\n".join(lines)


def promoted_bundle(runs_dir: Path, model_name: str = "shoprank-ranker") -> Path | None:
    """The bundle most recently promoted by a run under `runs_dir` (what `make serve` serves after it), or None."""
    pointers = [p for p in runs_dir.glob(f"*/promoted/{model_name}/LATEST") if p.is_file()]
    if not pointers:
        return None
    latest = max(pointers, key=lambda p: p.stat().st_mtime)
    bundle = (latest.parent / latest.read_text().strip()).resolve()
    return bundle if bundle.is_dir() else None


def run(preset: str, overrides: str, data: str, runs_dir: Path, run_id: str | None = None) -> dict:
    """Run the pipeline once through kfp.local; return the summary (also written to disk)."""
    from kfp import local

    from pipelines.shoprank_pipeline import shoprank_pipeline

    run_id = run_id or time.strftime("%Y%m%d-%H%M%S")
    run_dir = (runs_dir / run_id).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    telemetry = run_dir / "stages.jsonl"
    telemetry.unlink(missing_ok=True)
    os.environ["SHOPRANK_TELEMETRY"] = str(telemetry)  # inherited by every task subprocess
    # The model in service here: the validate step estimates its clicks beside the new model's (the gate's
    # counterfactual check; shoprank.evaluation.counterfactual.PREVIOUS_MODEL_ENV).
    previous = promoted_bundle(runs_dir)
    if previous is not None:
        os.environ["SHOPRANK_PREVIOUS_MODEL"] = str(previous)
    else:
        os.environ.pop("SHOPRANK_PREVIOUS_MODEL", None)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir / "artifacts"))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # Cluster-only task settings (resources, accelerator, node selector) are ignored locally with a
        # warning per task, and so is the component image: expected, not actionable here.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        task = shoprank_pipeline(preset=preset, overrides=overrides, data_source=data,
                                 model_root=str(run_dir / "promoted"))
    wall = time.perf_counter() - t0
    summary = json.loads(Path(task.output.path).read_text())
    promoted = run_dir / "promoted" / "shoprank-ranker"
    if summary["blessed"] and (promoted / "LATEST").exists():
        bundle = promoted / (promoted / "LATEST").read_text().strip()
        summary |= {"bundle_dir": str(bundle), "model_dir": str(bundle / "saved_model"),
                    "tflite_path": str(bundle / "model.tflite")}
    summary |= {"run_id": run_id, "data_source": data, "wall_seconds": round(wall, 1),
                "stages": [json.loads(line) for line in telemetry.read_text().splitlines()]
                if telemetry.exists() else []}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    reports = sorted((run_dir / "artifacts").rglob("report.html"), key=lambda p: "validate" not in str(p))
    if reports:
        shutil.copy(reports[0], run_dir / "report.html")
    latest = runs_dir / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run_id)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="default", help="tiny | small | default | large")
    p.add_argument("--overrides", default="{}", help="JSON overrides of the config")
    p.add_argument("--data", default="synthetic", help="'synthetic', a directory with the three tables, "
                   "'esci:<dir>[?locale=us]' or 'events:<dir>[?preset=retailrocket|taobao]' (see the README)")
    p.add_argument("--runs-dir", default="runs", type=Path)
    p.add_argument("--run-id", default=None)
    a = p.parse_args(argv)
    try:
        summary = run(a.preset, a.overrides, a.data, a.runs_dir, a.run_id)
    except RuntimeError as e:  # kfp.local raises when a task fails; its log is above
        print(f"\nshoprank pipeline failed: {e}", file=sys.stderr)
        return 1
    print("\n" + summary_table(summary))
    print(f"\nsummary: {a.runs_dir / 'latest' / 'summary.json'}   report: {a.runs_dir / 'latest' / 'report.html'}"
          f"   wall time {summary['wall_seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
