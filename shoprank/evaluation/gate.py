"""The validate step: golden requests through the serving path, the blessing gate, the run summary and
the comparison report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from shoprank.config import ShoprankConfig
from shoprank.evaluation.blessing import Blessing, bless
from shoprank.evaluation.counterfactual import counterfactual_table, gate_counterfactual, interval_figure
from shoprank.evaluation.evaluate import curves
from shoprank.evaluation.report import bar_figure, calibration_figure, pr_figure, render, roc_figure, table_html
from shoprank.features.dataset import load_split
from shoprank.scoring.ranker import BACKENDS, Ranker

__all__ = ["GOLDEN_ARTEFACT", "golden_check", "summarize", "validate"]

# Serving backend -> the artefact whose evaluator scores it must reproduce.
GOLDEN_ARTEFACT = {"tflite": "int8_tflite", "savedmodel": "optimized_savedmodel"}


def golden_check(features_dir: str | Path, transform_dir: str | Path, optimized_dir: str | Path
                 ) -> dict[str, float]:
    """Score the golden requests (raw ids and text) through Ranker, the model server's code path, and
    return per backend the largest difference from the evaluator's scores for the same test rows."""
    golden = json.loads((Path(features_dir) / "golden_requests.json").read_text())
    if not golden:
        return {}
    out = {}
    for backend, artefact in GOLDEN_ARTEFACT.items():
        ranker = Ranker.from_paths(transform_dir, Path(optimized_dir) / BACKENDS[backend])
        expected = np.load(Path(optimized_dir) / f"scores_{artefact}.npy")
        ranked = ranker.rank([g["query"] for g in golden], [g["history"] for g in golden],
                             [g["candidates"] for g in golden])
        diffs = [np.abs(r.scores - expected[g["test_rows"][0]: g["test_rows"][1]]).max()
                 for g, r in zip(golden, ranked)]
        out[backend] = float(max(diffs))
    return out


def summarize(config: ShoprankConfig, baseline_eval: dict, artefacts: dict[str, dict], blessing: Blessing,
              golden: dict[str, float], preprocess_report: dict | None = None) -> dict:
    k = f"ndcg_at_{config.evaluation.top_k}"

    def quality(a: dict) -> dict:
        return {"auc": a["auc"], k: a[k], "log_loss": a["log_loss"], "mrr": a["mrr"]}

    summary = {
        "preset": config.preset,
        "baseline": {m: baseline_eval[m] for m in ("auc", k, "log_loss", "mrr", f"recall_at_{config.evaluation.top_k}",
                                                   "accuracy", "precision", "recall", "f1")},
        "optimized": quality(artefacts["int8_tflite"]),
        "optimized_savedmodel": quality(artefacts["optimized_savedmodel"]),
        "sizes": {n: {"bytes": a["bytes"], "gzip_bytes": a["gzip_bytes"]} for n, a in artefacts.items()},
        "latency_ms": {n: a["latency_ms"] for n, a in artefacts.items()},
        "blessed": blessing.blessed,
        "blessing_reasons": blessing.reasons,
        "golden_max_abs_diff": golden,
        "model_dir": None,
        "tflite_path": None,
    }
    if "onnx" in artefacts:
        summary["onnx"] = {**quality(artefacts["onnx"]), "max_abs_diff_vs_optimized_savedmodel":
                           artefacts["onnx"]["max_abs_diff_vs_optimized_savedmodel"]}
    if "oracle" in baseline_eval:
        o = baseline_eval["oracle"]
        summary["oracle"] = {"auc": o["auc"], k: o[k]}
        summary["oracle_auc_share"] = {
            n: (summary[n]["auc"] - 0.5) / (o["auc"] - 0.5) for n in ("baseline", "optimized")}
    base = artefacts["baseline_savedmodel"]
    summary["ratios"] = {
        "int8_gzip_smaller_x": base["gzip_bytes"] / artefacts["int8_tflite"]["gzip_bytes"],
        "int8_b256_faster_x": base["latency_ms"]["256"] / artefacts["int8_tflite"]["latency_ms"]["256"],
        "int8_auc_drop": summary["baseline"]["auc"] - summary["optimized"]["auc"],
    }
    if preprocess_report:
        summary["data"] = {"quarantined_rows": preprocess_report.get("quarantined_rows"),
                           "splits": {s: v["rows"] for s, v in preprocess_report.get("splits", {}).items()},
                           "source": preprocess_report.get("source", {}), "task": preprocess_report.get("task"),
                           "split_mode": preprocess_report.get("split_mode")}
    return summary


def validate(features_dir: str | Path, transform_dir: str | Path, optimized_dir: str | Path,
             baseline_eval: dict, artefacts: dict[str, dict], config: ShoprankConfig, out_dir: str | Path,
             progress=print) -> dict:
    """Run the gate; write blessing.json, summary.json and report.html to out_dir; return the summary."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    golden = golden_check(features_dir, transform_dir, optimized_dir)
    blessing = bless(artefacts, golden, config.blessing, f"ndcg_at_{config.evaluation.top_k}")
    # Estimated clicks of the new model vs the one it would replace (shoprank.evaluation.counterfactual).
    cf = gate_counterfactual(features_dir, optimized_dir, baseline_eval, config, progress, out)
    blessing = Blessing(blessing.blessed and cf["check"].passed, [*blessing.checks, cf["check"]])
    report_path = Path(features_dir) / "report.json"
    pre = json.loads(report_path.read_text()) if report_path.exists() else None
    summary = summarize(config, baseline_eval, artefacts, blessing, golden, pre)
    summary["counterfactual"] = cf["report"] | {"previous_model": cf["previous"]}
    summary[f"true_ndcg_at_{config.evaluation.top_k}"] = cf["true_ndcg"]
    (out / "blessing.json").write_text(json.dumps(blessing.to_dict(), indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    test = load_split(features_dir, "test")
    curve = {n: curves(test, np.load(Path(optimized_dir) / f"scores_{n}.npy"), config) for n in artefacts}
    oracle = np.asarray(test.column("oracle"))
    if np.isfinite(oracle).all():
        curve["oracle"] = curves(test, oracle, config)
    k = f"ndcg_at_{config.evaluation.top_k}"
    rows = [(n, f"{a['auc']:.4f}", f"{a[k]:.4f}", f"{a['bytes']:,}", f"{a['gzip_bytes']:,}",
             a["latency_ms"]["1"], a["latency_ms"]["256"]) for n, a in artefacts.items()]
    checks = [(c.name, "pass" if c.passed else "FAIL", c.message) for c in blessing.checks]
    verdict = "BLESSED" if blessing.blessed else "NOT BLESSED"
    page = render(
        f"shoprank validation: {verdict}",
        [("Artefacts", table_html(rows, ["artefact", "AUC", k, "bytes", "gzip bytes", "ms @1", "ms @256"])),
         ("Blessing checks", table_html(checks, ["check", "result", "detail"])),
         ("Counterfactual expected clicks per request", counterfactual_table(cf["report"], cf["true_ndcg"]))],
        [*([interval_figure(cf["report"])] if cf["report"].get("models") else []),
         roc_figure(curve), pr_figure(curve), calibration_figure(curve),
         bar_figure({n: {"bytes": a["bytes"], "gzip bytes": a["gzip_bytes"]} for n, a in artefacts.items()},
                    "Size", "bytes", log=True),
         bar_figure({n: {"batch 1": a["latency_ms"]["1"], "batch 256": a["latency_ms"]["256"]}
                     for n, a in artefacts.items()}, "CPU latency (median)", "ms", log=True)],
        summary)
    (out / "report.html").write_text(page)
    progress(f"[validate] {verdict}: " + "; ".join(blessing.reasons if not blessing.blessed else
                                                   [f"{len(blessing.checks)} checks passed"])
             + f" ({time.perf_counter() - t0:.1f}s)")
    return summary
