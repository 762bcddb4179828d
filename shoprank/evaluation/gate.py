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
from shoprank.evaluation.reference import gate_section, report_parts
from shoprank.evaluation.report import bar_figure, calibration_figure, pr_figure, render, roc_figure, table_html
from shoprank.features.dataset import load_split
from shoprank.features.transform import REQUEST_INPUTS
from shoprank.layout import ITEMS_DIR
from shoprank.scoring.ranker import BACKENDS, Ranker

__all__ = ["GOLDEN_ARTEFACT", "golden_check", "summarize", "test_split_check", "validate"]

# Serving backend -> the artefact whose evaluator scores it must reproduce.
GOLDEN_ARTEFACT = {"tflite": "int8_tflite", "savedmodel": "optimized_savedmodel"}


def _ranker(transform_dir: str | Path, optimized_dir: str | Path, backend: str) -> Ranker:
    """The serving path over the optimised model's artefacts, as a bundle lays them out (shoprank.layout), with the
    model's own scores for unknown candidates (the unknown policy is the server's, not the model's)."""
    opt = Path(optimized_dir)
    return Ranker.from_paths(transform_dir, opt / ITEMS_DIR, opt / BACKENDS[backend], unknown_candidates="score")


def golden_check(features_dir: str | Path, transform_dir: str | Path, optimized_dir: str | Path
                 ) -> dict[str, float]:
    """Score the golden requests (raw ids and text) through Ranker, the model server's code path, and
    return per backend the largest difference from the evaluator's scores for the same test rows."""
    golden = json.loads((Path(features_dir) / "golden_requests.json").read_text())
    if not golden:
        return {}
    out = {}
    for backend, artefact in GOLDEN_ARTEFACT.items():
        ranker = _ranker(transform_dir, optimized_dir, backend)
        expected = np.load(Path(optimized_dir) / f"scores_{artefact}.npy")
        ranked = ranker.rank([g["query"] for g in golden], [g["history"] for g in golden],
                             [g["candidates"] for g in golden])
        diffs = [np.abs(r.scores - expected[g["test_rows"][0]: g["test_rows"][1]]).max()
                 for g, r in zip(golden, ranked)]
        out[backend] = float(max(diffs))
    return out


def test_split_check(features_dir: str | Path, transform_dir: str | Path, optimized_dir: str | Path,
                     requests_per_call: int = 256) -> dict[str, float]:
    """Score the whole test split through the served path and return per backend the largest difference from the
    evaluator's scores. Each request's query and history tensors go through the request side once (for the
    composition: the int8 request tower, R rows), each row's item is looked up by id in the item tables (its
    vectors for the composition, its input tensors for the whole graph), then the head: what a ranking request
    runs after the text transform (the golden requests cover that). The evaluator scored every row with the item
    tower on the test split's own item tensors, so this also checks the tables against the transform."""
    import pyarrow.parquet as pq

    test = load_split(features_dir, "test")
    groups = np.asarray(test.column("request"))
    starts = np.concatenate([[0], np.flatnonzero(groups[1:] != groups[:-1]) + 1, [groups.size]])
    item_ids = pq.read_table(test.directory / "rows.parquet", columns=["item_id"]).column(0).to_pylist()
    request_cols = {k: test.column(k) for k in REQUEST_INPUTS}
    out = {}
    for backend, artefact in GOLDEN_ARTEFACT.items():
        ranker = _ranker(transform_dir, optimized_dir, backend)
        expected = np.load(Path(optimized_dir) / f"scores_{artefact}.npy")
        served = np.empty_like(expected)
        for r0 in range(0, starts.size - 1, requests_per_call):
            r1 = min(starts.size - 1, r0 + requests_per_call)
            lo, hi = int(starts[r0]), int(starts[r1])
            first = starts[r0:r1]
            req = {k: np.asarray(v[first]) for k, v in request_cols.items()}
            rr = np.repeat(np.arange(r1 - r0), np.diff(starts[r0: r1 + 1]))
            served[lo:hi] = ranker.score_rows(req, rr, item_ids[lo:hi])
        out[backend] = float(np.abs(served - expected).max()) if expected.size else 0.0
    return out


def summarize(config: ShoprankConfig, baseline_eval: dict, artefacts: dict[str, dict], blessing: Blessing,
              golden: dict[str, float], preprocess_report: dict | None = None, reference: dict | None = None
              ) -> dict:
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
        "blessing_warnings": blessing.warnings,
        "golden_max_abs_diff": golden,
        "model_dir": None,
        "tflite_path": None,
    }
    summary["ties"] = {n: a["ties"] for n, a in artefacts.items() if "ties" in a}
    if "item_vectors_precision" in artefacts["int8_tflite"]:
        summary["item_vectors_precision"] = artefacts["int8_tflite"]["item_vectors_precision"]
    if "onnx" in artefacts:
        summary["onnx"] = {**quality(artefacts["onnx"]), "max_abs_diff_vs_optimized_savedmodel":
                           artefacts["onnx"]["max_abs_diff_vs_optimized_savedmodel"]}
    if "oracle" in baseline_eval:
        o = baseline_eval["oracle"]
        summary["oracle"] = {"auc": o["auc"], k: o[k]}
        summary["oracle_auc_share"] = {
            n: (summary[n]["auc"] - 0.5) / (o["auc"] - 0.5) for n in ("baseline", "optimized")}
    if reference is not None:
        summary["reference"] = reference
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
             progress=print, evaluation_dir: str | Path | None = None) -> dict:
    """Run the gate; write blessing.json, summary.json and report.html to out_dir; return the summary.

    `evaluation_dir`: the evaluate step's output, where the LambdaMART reference's test scores are (the
    reference check and the summary's "reference" section need them)."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    test = load_split(features_dir, "test")
    golden = golden_check(features_dir, transform_dir, optimized_dir)
    served = test_split_check(features_dir, transform_dir, optimized_dir)
    progress(f"[validate] served path vs evaluator, max |score diff|: golden requests {golden}, whole test split "
             f"{served}")
    reference = gate_section(test, optimized_dir, evaluation_dir, baseline_eval, config)
    blessing = bless(artefacts, golden, config.blessing, f"ndcg_at_{config.evaluation.top_k}", reference,
                     test_split_max_diff=served)
    # Estimated clicks of the new model vs the one it would replace (shoprank.evaluation.counterfactual).
    cf = gate_counterfactual(features_dir, optimized_dir, baseline_eval, config, progress, out)
    blessing = Blessing(blessing.blessed and cf["check"].passed, [*blessing.checks, cf["check"]])
    report_path = Path(features_dir) / "report.json"
    pre = json.loads(report_path.read_text()) if report_path.exists() else None
    summary = summarize(config, baseline_eval, artefacts, blessing, golden, pre, reference)
    summary["test_split_max_abs_diff"] = served
    summary["counterfactual"] = cf["report"] | {"previous_model": cf["previous"]}
    summary[f"true_ndcg_at_{config.evaluation.top_k}"] = cf["true_ndcg"]
    (out / "blessing.json").write_text(json.dumps(blessing.to_dict(), indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    curve = {n: curves(test, np.load(Path(optimized_dir) / f"scores_{n}.npy"), config) for n in artefacts}
    oracle = np.asarray(test.column("oracle"))
    if np.isfinite(oracle).all():
        curve["oracle"] = curves(test, oracle, config)
    k = f"ndcg_at_{config.evaluation.top_k}"
    rows = [(n, f"{a['auc']:.4f}", f"{a[k]:.4f}", f"{a['bytes']:,}", f"{a['gzip_bytes']:,}",
             a["latency_ms"]["1"], a["latency_ms"]["256"]) for n, a in artefacts.items()]
    checks = [(c.name, "warn" if c.warning else "pass" if c.passed else "FAIL", c.message) for c in blessing.checks]
    verdict = "BLESSED" if blessing.blessed else "NOT BLESSED"
    ref_sections, ref_figures = report_parts(reference, config.evaluation.top_k) if reference else ([], [])
    page = render(
        f"shoprank validation: {verdict}",
        [("Artefacts", table_html(rows, ["artefact", "AUC", k, "bytes", "gzip bytes", "ms @1", "ms @256"])),
         ("Blessing checks", table_html(checks, ["check", "result", "detail"])),
         ("Counterfactual expected clicks per request", counterfactual_table(cf["report"], cf["true_ndcg"])),
         *ref_sections],
        [*([interval_figure(cf["report"])] if cf["report"].get("models") else []),
         roc_figure(curve), pr_figure(curve), calibration_figure(curve),
         bar_figure({n: {"bytes": a["bytes"], "gzip bytes": a["gzip_bytes"]} for n, a in artefacts.items()},
                    "Size", "bytes", log=True),
         bar_figure({n: {"batch 1": a["latency_ms"]["1"], "batch 256": a["latency_ms"]["256"]}
                     for n, a in artefacts.items()}, "CPU latency (median)", "ms", log=True), *ref_figures],
        summary)
    (out / "report.html").write_text(page)
    progress(f"[validate] {verdict}: " + "; ".join(blessing.reasons if not blessing.blessed else
                                                   [f"{len(blessing.checks)} checks passed"])
             + f" ({time.perf_counter() - t0:.1f}s)")
    return summary
