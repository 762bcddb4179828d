"""Evaluation: classification, ranking and per-category slice metrics for a set of scores."""

from __future__ import annotations

import numpy as np

from shoprank.config import ShoprankConfig
from shoprank.evaluation.metrics import (
    calibration,
    log_loss,
    precision_recall_curve,
    ranking_metrics,
    roc_auc,
    roc_curve,
    threshold_metrics,
)
from shoprank.features.dataset import SplitData

__all__ = ["curves", "evaluate_model", "evaluate_scores", "true_ndcg"]


def _core(labels: np.ndarray, gains: np.ndarray, groups: np.ndarray, scores: np.ndarray,
          config: ShoprankConfig) -> dict:
    ec = config.evaluation
    ranking = ranking_metrics(groups, gains, scores, ec.top_k)
    out = {"auc": roc_auc(labels, scores), "log_loss": log_loss(labels, scores)}
    out |= threshold_metrics(labels, scores, ec.threshold)
    out |= {f"ndcg_at_{ec.top_k}": ranking["ndcg_at_k"], "mrr": ranking["mrr"],
            f"recall_at_{ec.top_k}": ranking["recall_at_k"], "lists": ranking["lists"],
            "rows": int(labels.size), "positive_rate": float(np.mean(labels))}
    return out


def true_ndcg(split: SplitData, scores: np.ndarray, config: ShoprankConfig) -> float | None:
    """NDCG@k with the generator's true relevance (the oracle) as the gain: None on data without an oracle."""
    oracle = np.asarray(split.column("oracle"), dtype=np.float64)
    if not np.isfinite(oracle).all():
        return None
    groups = np.asarray(split.column("request"))
    return ranking_metrics(groups, oracle, np.asarray(scores), config.evaluation.top_k)["ndcg_at_k"]


def evaluate_scores(split: SplitData, scores: np.ndarray, config: ShoprankConfig) -> dict:
    """Metrics of `scores` on `split`, the oracle's metrics when the data carry an oracle, and slices."""
    labels = np.asarray(split.column(config.train.label))
    gains = np.asarray(split.column("gain"))
    groups = np.asarray(split.column("request"))
    metrics = _core(labels, gains, groups, scores, config)
    oracle = np.asarray(split.column("oracle"))
    if np.isfinite(oracle).all():
        metrics["oracle"] = _core(labels, gains, groups, oracle, config)
        gap = metrics["oracle"]["auc"] - 0.5
        metrics["oracle_auc_share"] = (metrics["auc"] - 0.5) / gap if gap > 0 else float("nan")
        # The ranking judged by what users want, not by what they clicked under position bias.
        metrics[f"true_ndcg_at_{config.evaluation.top_k}"] = true_ndcg(split, scores, config)
    tops = np.asarray(split.column("top_category"))
    names = split.meta["top_categories"]
    slices = {}
    codes, sizes = np.unique(tops, return_counts=True)
    # Real catalogues can have thousands of top categories: report the largest `max_slices`.
    for code in np.sort(codes[np.argsort(-sizes, kind="stable")][: config.evaluation.max_slices]):
        m = tops == code
        slices[names[code]] = {"rows": int(m.sum()), "auc": roc_auc(labels[m], scores[m]),
                               "positive_rate": float(labels[m].mean()), "mean_score": float(scores[m].mean())}
    metrics["slices"] = slices
    return metrics


def curves(split: SplitData, scores: np.ndarray, config: ShoprankConfig) -> dict:
    """Curve points for plots and the KFP ClassificationMetrics (ROC, PR, calibration, histogram)."""
    labels = np.asarray(split.column(config.train.label))
    fpr, tpr, thr = roc_curve(labels, scores, config.evaluation.roc_points)
    recall, precision = precision_recall_curve(labels, scores, config.evaluation.roc_points)
    pred, obs, count = calibration(labels, scores)
    hist_pos, edges = np.histogram(scores[labels == 1], bins=40, range=(0, 1))
    hist_neg, _ = np.histogram(scores[labels == 0], bins=40, range=(0, 1))
    tm = threshold_metrics(labels, scores, config.evaluation.threshold)
    return {"roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "threshold": thr.tolist()},
            "pr": {"recall": recall.tolist(), "precision": precision.tolist()},
            "calibration": {"predicted": pred.tolist(), "observed": obs.tolist(), "count": count.tolist()},
            "histogram": {"edges": edges.tolist(), "positive": hist_pos.tolist(), "negative": hist_neg.tolist()},
            "confusion": {"labels": ["no click", "click"], "matrix": [[tm["tn"], tm["fp"]], [tm["fn"], tm["tp"]]]}}


def evaluate_model(model_path, features_dir, out_dir, config: ShoprankConfig, name: str = "baseline",
                   progress=print) -> dict:
    """Score the test split with a model artefact; write evaluation.json, curves.json, scores.npy and
    report.html to `out_dir`. Returns {"metrics", "curves"}.

    With `config.reference.enabled`, first trains the LambdaMART reference (shoprank.evaluation.reference)
    into `out_dir`/reference (before TensorFlow is loaded, so the peak RSS it reports is its own) and adds
    metrics["reference"]: its cost, the tie-aware table and the paired bootstrap `name` - reference."""
    import json
    import time
    from pathlib import Path

    from shoprank.evaluation import reference as lambdamart
    from shoprank.evaluation.counterfactual import counterfactual_table, interval_figure
    from shoprank.evaluation.report import (
        calibration_figure,
        histogram_figure,
        pr_figure,
        render,
        roc_figure,
        table_html,
    )
    from shoprank.features.dataset import load_split
    from shoprank.features.transform import INPUTS
    from shoprank.scoring.backends import load_scorer, score_in_batches

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reference = None
    if config.reference.enabled:
        reference = lambdamart.run_reference(features_dir, config, out / lambdamart.REFERENCE_DIR, progress)
    split = load_split(features_dir, "test")
    scorer = load_scorer(model_path)
    scores = score_in_batches(scorer, {k: split.column(k) for k in INPUTS}, config.evaluation.batch_size)
    metrics = evaluate_scores(split, scores, config)
    if reference is not None:
        metrics["reference"] = lambdamart.evaluation_section(split, scores, reference, config, name)
    metrics["counterfactual"] = _counterfactual(split, scores, Path(model_path).parent, name, config, progress)
    curve = {name: curves(split, scores, config)}
    oracle = np.asarray(split.column("oracle"))
    if np.isfinite(oracle).all():
        curve["oracle"] = curves(split, oracle, config)
    np.save(out / "scores.npy", scores)
    (out / "evaluation.json").write_text(json.dumps(metrics, indent=2))
    (out / "curves.json").write_text(json.dumps(curve))
    k = config.evaluation.top_k
    oracle_m = metrics.get("oracle", {})
    rows = [(m, f"{metrics[m]:.4f}", f"{oracle_m[m]:.4f}" if m in oracle_m else "-")
            for m in ("auc", "log_loss", f"ndcg_at_{k}", "mrr", f"recall_at_{k}", "accuracy", "precision",
                      "recall", "f1")]
    slices = [(s, v["rows"], f"{v['auc']:.4f}", f"{v['positive_rate']:.3f}") for s, v in metrics["slices"].items()]
    if metrics.get(f"true_ndcg_at_{k}") is not None:
        rows.append((f"true-relevance NDCG@{k}", f"{metrics[f'true_ndcg_at_{k}']:.4f}", "1.0000"))
    cf = metrics["counterfactual"]
    cf_section = [("Counterfactual expected clicks per request", counterfactual_table(cf))]
    cf_figures = [interval_figure(cf)] if cf.get("models") else []
    ref_sections, ref_figures = (lambdamart.report_parts(metrics["reference"], k) if reference is not None
                                 else ([], []))
    html_page = render(
        f"shoprank evaluation: {name}",
        [("Test metrics", table_html(rows, ["metric", name, "oracle"])), *cf_section,
         ("Slices by top-level category", table_html(slices, ["category", "rows", "AUC", "click rate"])),
         *ref_sections],
        [roc_figure(curve), pr_figure(curve), calibration_figure(curve), histogram_figure(curve[name], name),
         *cf_figures, *ref_figures],
        metrics)
    (out / "report.html").write_text(html_page)
    progress(f"[evaluate] {name}: AUC {metrics['auc']:.4f}, NDCG@{k} {metrics[f'ndcg_at_{k}']:.4f}"
             + (f", oracle AUC {metrics['oracle']['auc']:.4f}" if "oracle" in metrics else "")
             + f" on {split.rows:,} test rows ({time.perf_counter() - t0:.1f}s)")
    if reference is not None:
        b = metrics["reference"]["bootstrap"][f"ndcg_at_{k}"]
        progress(f"[evaluate] LambdaMART reference: AUC {metrics['reference']['table']['reference']['auc']:.4f}, "
                 f"NDCG@{k} (tie-aware) {b['b']:.4f}; {name} - reference {b['diff']:+.4f} "
                 f"[{b['low']:+.4f}, {b['high']:+.4f}]")
    return {"metrics": metrics, "curves": curve}


def _counterfactual(split: SplitData, scores: np.ndarray, model_dir, name: str, config: ShoprankConfig,
                    progress) -> dict:
    """The counterfactual estimate of the model's clicks (shoprank.evaluation.counterfactual), with the
    propensities it uses; on data without positions, a report that says so."""
    from shoprank.evaluation.counterfactual import counterfactual_report, logged_lists, propensities_for
    from shoprank.modeling.propensity import Propensities

    log = logged_lists(split)
    theta = None if log is None else propensities_for(log, scores[log.keep], config.debias.max_positions,
                                                      config.counterfactual)
    report = counterfactual_report(log, {name: scores}, theta, config.counterfactual)
    trained = Propensities.load(model_dir)
    if trained is not None and "skipped" not in report:  # what training learnt, beside what the estimate uses
        report["training_propensities"] = {"source": trained.source, "theta": list(trained.theta)}
    if "skipped" in report:
        progress(f"[evaluate] counterfactual: {report['skipped']}")
    else:
        e = report["models"][name]
        progress(f"[evaluate] counterfactual ({e['estimator']}, propensities: {theta.source}): {name} "
                 f"{e['estimate']:.4f} clicks/request [{e['low']:.4f}, {e['high']:.4f}]"
                 + (f", truth {e['truth']:.4f}" if "truth" in e else "")
                 + f"; logged {report['logged_clicks_per_request']:.4f}")
    return report
