"""Counterfactual evaluation: a ranker's expected clicks per request, estimated from logged clicks and positions
before it serves -- and, on synthetic data, the truth it is checked against.

The click model is position-based (PBM): a row shown at position k is clicked with probability theta_k * r,
examination times relevance. A candidate ranker reorders each logged list; a row logged at position k moves
to rank j, where it would be examined with theta_j. Its expected clicks are therefore sum_rows theta_j r, and
since E[click / theta_k] = r, each logged click counts theta_j / theta_k times:

* "ips" (inverse propensity scoring; Joachims et al. 2017 for rankings, Li et al. 2018 for click models): the
  mean over requests of sum_rows click * theta_j / theta_k. Unbiased when theta is right.
* "clipped_ips": the ratios capped at `counterfactual.clip` (less variance; biased low when a ranker lifts
  rows from very deep positions).
* "dr" (doubly robust; Dudik et al. 2011): a direct-method term sum theta_j r_hat plus the clipped correction
  sum min(w, clip) (click - theta_k r_hat), with r_hat the ranker's own scores as the reward model. Without
  clipping it equals IPS exactly: positions are deterministic given a log, so the reward model cancels -- it
  only earns its keep where weights are clipped. (A self-normalised IPS has no role here for the same reason:
  the weights are fixed by the two rankings, their mean is not a random variable with a known expectation.)

Rows tied in a ranker's score share the mean examination of their tied ranks (`shoprank.data.clicks`), in the
estimate and in the truth alike. The interval is a percentile bootstrap over requests (the unit the clicks are
independent by), with the propensities held fixed: their own estimation error is not in it (README, "Position
bias": what is and is not covered). The propensities come from regression EM over the test log with the new
model's scores as the relevance regression (`shoprank.modeling.propensity.regression_em`), by default smoothed
into a power law fitted on the top positions (`power_law`; `counterfactual.propensity_curve`), one set for
every ranker compared.

Only requests whose every row has a known position are counted; data without positions get a report that
says so and nothing else.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shoprank.config import CounterfactualConfig
from shoprank.data.clicks import expected_clicks, group_bounds, rank_examination
from shoprank.evaluation.blessing import Check
from shoprank.features.dataset import SplitData
from shoprank.layout import LATEST, MANIFEST, TOWERS_DIR
from shoprank.modeling.propensity import Propensities, power_law, regression_em

__all__ = [
    "ESTIMATORS",
    "GATE_MODELS",
    "PREVIOUS_MODEL_ENV",
    "LoggedLists",
    "click_check",
    "counterfactual_report",
    "counterfactual_table",
    "estimate",
    "gate_counterfactual",
    "interval_figure",
    "kfp_metrics",
    "logged_lists",
    "paired_change",
    "previous_bundle",
    "propensities_for",
    "score_previous",
]

ESTIMATORS = ("ips", "clipped_ips", "dr")
# `make run` names the bundle runs/latest promoted here (a task's environment is its parent's).
PREVIOUS_MODEL_ENV = "SHOPRANK_PREVIOUS_MODEL"


@dataclass(frozen=True)
class LoggedLists:
    """The test log restricted to requests whose rows all have a known position."""

    keep: np.ndarray  # bool per row of the split
    groups: np.ndarray  # request code per kept row (contiguous)
    positions: np.ndarray  # logged 0-based position per kept row
    clicks: np.ndarray  # float per kept row
    oracle: np.ndarray | None  # true relevance per kept row (synthetic data), else None

    @property
    def requests(self) -> int:
        return int(group_bounds(self.groups)[0].size)


def logged_lists(split: SplitData) -> LoggedLists | None:
    """The split's log for counterfactual estimates, or None when it has no positions at all."""
    pos = split.positions()
    if pos is None:
        return None
    groups = np.asarray(split.column("request"))
    starts, lengths = group_bounds(groups)
    unknown = np.add.reduceat((pos < 0).astype(np.int64), starts) if starts.size else np.zeros(0, np.int64)
    keep = np.repeat(unknown == 0, lengths)
    if not keep.any():
        return None
    oracle = np.asarray(split.column("oracle"), dtype=np.float64)[keep]
    return LoggedLists(keep, groups[keep], pos[keep].astype(np.int64),
                       np.asarray(split.column("clicked"), dtype=np.float64)[keep],
                       oracle if np.isfinite(oracle).all() else None)


def _per_request(log: LoggedLists, scores: np.ndarray, theta: Propensities, estimator: str, clip: float
                 ) -> np.ndarray:
    """Each request's contribution to the estimate of expected clicks per request."""
    starts, _ = group_bounds(log.groups)
    th = np.asarray(theta.theta, dtype=np.float64)
    target = rank_examination(log.groups, scores, th)  # theta at the row's rank under the candidate
    logged = theta.at(log.positions)
    w = target / logged
    if estimator == "ips":
        per_row = log.clicks * w
    elif estimator == "clipped_ips":
        per_row = log.clicks * np.minimum(w, clip)
    elif estimator == "dr":
        r_hat = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
        per_row = target * r_hat + np.minimum(w, clip) * (log.clicks - logged * r_hat)
    else:
        raise ValueError(f"unknown estimator '{estimator}', choose one of {ESTIMATORS}")
    return np.add.reduceat(per_row, starts)


def _bootstrap_indices(n: int, config: CounterfactualConfig) -> np.ndarray:
    return np.random.default_rng(config.seed).integers(0, n, size=(config.bootstrap, n))


def _interval(values: np.ndarray, idx: np.ndarray, confidence: float) -> tuple[float, float]:
    means = values[idx].mean(axis=1)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(lo), float(hi)


def estimate(log: LoggedLists, scores: np.ndarray, theta: Propensities, config: CounterfactualConfig,
             estimator: str | None = None) -> dict:
    """The estimate of expected clicks per request of ranking by `scores` (per kept row), its bootstrap
    interval and, when the log has an oracle, the exact truth and the relative error."""
    est = estimator or config.estimator
    v = _per_request(log, np.asarray(scores), theta, est, config.clip)
    lo, hi = _interval(v, _bootstrap_indices(v.size, config), config.confidence)
    out = {"estimator": est, "estimate": float(v.mean()), "low": lo, "high": hi, "requests": int(v.size)}
    if log.oracle is not None:
        truth = float(expected_clicks(log.groups, log.oracle, scores).mean())
        out |= {"truth": truth, "relative_error": (out["estimate"] - truth) / truth if truth else float("nan"),
                "covered": bool(lo <= truth <= hi)}
    return out


def paired_change(log: LoggedLists, new_scores: np.ndarray, old_scores: np.ndarray, theta: Propensities,
                  config: CounterfactualConfig) -> dict:
    """Relative change of estimated clicks per request, new vs old ranker, with a paired bootstrap interval
    (the same resampled requests for both: most of the click noise cancels)."""
    new = _per_request(log, np.asarray(new_scores), theta, config.estimator, config.clip)
    old = _per_request(log, np.asarray(old_scores), theta, config.estimator, config.clip)
    idx = _bootstrap_indices(new.size, config)
    ratio = new[idx].mean(axis=1) / np.maximum(old[idx].mean(axis=1), 1e-12) - 1
    a = (1 - config.confidence) / 2
    lo, hi = np.quantile(ratio, [a, 1 - a])
    out = {"change": float(new.mean() / max(old.mean(), 1e-12) - 1), "low": float(lo), "high": float(hi)}
    if log.oracle is not None:
        t_new = expected_clicks(log.groups, log.oracle, new_scores).mean()
        t_old = expected_clicks(log.groups, log.oracle, old_scores).mean()
        out["true_change"] = float(t_new / t_old - 1)
    return out


def propensities_for(log: LoggedLists, scores: np.ndarray, n_positions: int,
                     config: CounterfactualConfig | None = None) -> Propensities:
    """The examination propensities the estimates use: regression EM over this log with `scores` (the new model's,
    per kept row) as the relevance regression, binned (`shoprank.modeling.propensity.regression_em`); with
    `propensity_curve=power` (the default), a power law fitted to the top positions' estimates
    (`power_law`). The same propensities then weigh every ranker, so their estimates compare. (The position
    tower of `debias.method=pal` measured worse for this: it soaks up more of the relevance the logging policy put
    on top -- README.)"""
    config = config or CounterfactualConfig()
    n = min(n_positions, int(log.positions.max()) + 1)
    theta, _ = regression_em(log.clicks, log.positions, scores, n)
    if config.propensity_curve == "power":
        curve, eta = power_law(theta, config.power_fit_positions, n)
        return Propensities.relative(curve, f"em-scores, power law eta={eta:.3f} fitted on positions "
                                            f"0-{config.power_fit_positions - 1}")
    return Propensities.relative(theta, "em-scores")


def counterfactual_report(log: LoggedLists | None, scores: Mapping[str, np.ndarray], theta: Propensities | None,
                          config: CounterfactualConfig, skipped: str = "") -> dict:
    """Estimates (all three estimators, the configured one first) for every ranker in `scores`, plus the
    logging policy's observed clicks. Without positions: {"skipped": why}."""
    if log is None or theta is None:
        return {"skipped": skipped or "the data carry no positions: no counterfactual estimate (the clicks of a "
                                      "reordered list cannot be weighed without knowing where rows were shown)"}
    logged_per_request = np.add.reduceat(log.clicks, group_bounds(log.groups)[0])
    report = {"estimator": config.estimator, "confidence": config.confidence, "bootstrap": config.bootstrap,
              "requests": log.requests, "propensities": {"source": theta.source, "theta": list(theta.theta)},
              "logged_clicks_per_request": float(logged_per_request.mean()), "models": {}}
    order = (config.estimator, *[e for e in ESTIMATORS if e != config.estimator])
    for name, s in scores.items():
        s = np.asarray(s)[log.keep] if np.asarray(s).size == log.keep.size else np.asarray(s)
        entry = estimate(log, s, theta, config)
        entry["estimators"] = {e: estimate(log, s, theta, config, e) for e in order[1:]}
        report["models"][name] = entry
    if log.oracle is not None:
        report["logging_policy_truth"] = float(expected_clicks(log.groups, log.oracle, -log.positions).mean())
    return report


# --- the model being replaced -------------------------------------------------------------------------------


def previous_bundle(config: CounterfactualConfig, model_name: str = "shoprank-ranker") -> tuple[Path | None, str]:
    """The bundle of the model the new one would replace, and how it was found (or why there is none).

    `counterfactual.previous_model`, else the `SHOPRANK_PREVIOUS_MODEL` environment variable (`make run` sets it to
    the bundle runs/latest promoted), may name a bundle, a model folder holding LATEST, or a model root holding
    <model_name>/LATEST. Only paths this step can read: on a cluster, a mounted volume (pvc://) -- object stores
    are read by the release stage, which the evaluation does not import."""
    where = config.previous_model or os.environ.get(PREVIOUS_MODEL_ENV, "")
    if not where:
        return None, ("no previous model: none is promoted yet here (set counterfactual.previous_model to a bundle "
                      "or model root this step can read to compare with one)")
    if "://" in where and not where.startswith("file://"):
        return None, (f"previous model {where} is not a path this step can read (mount it and name the mount "
                      "path in counterfactual.previous_model)")
    p = Path(where.removeprefix("file://"))
    for candidate in (p, p / model_name):
        if (candidate / LATEST).is_file():
            p = candidate / (candidate / LATEST).read_text().strip()
            break
    if not (p / MANIFEST).is_file() or not (p / TOWERS_DIR).is_dir():
        return None, (f"no previous model: {p} is not a published bundle of the served composition (no {MANIFEST} "
                      f"or {TOWERS_DIR}/)")
    return p, f"previous model: {p}"


def score_previous(bundle: Path, split_dir: Path, batch_size: int) -> np.ndarray:
    """The bundle's served composition (int8 request tower, its item tables, the head: what serves) scores every
    test row through the serving code path, from the raw test requests (ids and text) and its own transform: its
    vocabularies need not be this run's. `batch_size`: rows per call, whole requests at a time."""
    import pyarrow.parquet as pq

    from shoprank.scoring.ranker import Ranker

    ranker = Ranker.load(bundle, "tflite")
    requests = pq.read_table(split_dir / "requests.parquet").to_pydict()
    rows = pq.read_table(split_dir / "rows.parquet", columns=["request_id", "item_id"]).to_pydict()
    items = np.asarray(rows["item_id"], dtype=object)
    req = np.asarray(rows["request_id"], dtype=object)
    starts = np.concatenate([[0], np.flatnonzero(req[1:] != req[:-1]) + 1, [req.size]])
    if starts.size - 1 != len(requests["request_id"]):
        raise RuntimeError("test requests and rows disagree: the features directory is inconsistent")
    candidates = [items[starts[i]: starts[i + 1]].tolist() for i in range(starts.size - 1)]
    out = np.empty(req.size, np.float32)
    per_call = max(1, batch_size // max(1, int(np.diff(starts).mean()) if starts.size > 1 else 1))
    for r0 in range(0, len(candidates), per_call):
        r1 = min(len(candidates), r0 + per_call)
        scores, _ = ranker.score(requests["query"][r0:r1], requests["history"][r0:r1], candidates[r0:r1])
        out[starts[r0]: starts[r1]] = scores
    return out


def click_check(report: dict, new: str, previous: str | None, previous_why: str,
                config: CounterfactualConfig, change: dict | None) -> Check:
    """The gate's check: the new model's estimated clicks per request are not below the replaced model's by more
    than `max_click_drop` (relative). Skipped (passes, saying why) without positions or a previous model."""
    name = "counterfactual_clicks_vs_previous"
    if "skipped" in report:
        return Check(name, True, float("nan"), config.max_click_drop, f"skipped: {report['skipped']}")
    if previous is None or change is None:
        return Check(name, True, float("nan"), config.max_click_drop, f"skipped: {previous_why}")
    drop = -change["change"]
    ok = drop <= config.max_click_drop
    m = report["models"]
    what = (f"estimated clicks/request {new} {m[new]['estimate']:.4f} vs previous {m[previous]['estimate']:.4f}: "
            f"drop {drop:+.2%} (95% CI {-change['high']:+.2%} .. {-change['low']:+.2%})")
    return Check(name, bool(ok), float(drop), config.max_click_drop,
                 f"{what} {'within' if ok else 'VIOLATES'} limit {config.max_click_drop:.2%}")


def kfp_metrics(report: dict, true_ndcg: Mapping[str, float] | None = None, prefix: str = "cf") -> dict[str, float]:
    """Flat numbers for a KFP Metrics artefact: per model the estimate, its interval and (synthetic) the truth,
    and the true-relevance NDCG where known."""
    out: dict[str, float] = {}
    for name, e in report.get("models", {}).items():
        for key in ("estimate", "low", "high", "truth"):
            if key in e and math.isfinite(e[key]):
                out[f"{prefix}_{name}_{key}"] = round(float(e[key]), 5)
    for name, v in (true_ndcg or {}).items():
        if v is not None and math.isfinite(v):
            out[f"true_ndcg_{name}"] = round(float(v), 5)
    return out


def counterfactual_table(report: dict, true_ndcg: Mapping[str, float | None] | None = None) -> str:
    """HTML table: per model the estimate, its interval, the truth and error (synthetic), the other estimators
    and the true-relevance NDCG where given; or the reason there is none."""
    from shoprank.evaluation.report import table_html

    if "skipped" in report:
        return f"<p>{html.escape(report['skipped'])}</p>"

    def f(v, fmt="{:.4f}"):
        return fmt.format(v) if v is not None and math.isfinite(v) else "-"

    rows = []
    for name, e in report["models"].items():
        others = ", ".join(f"{k} {f(o['estimate'])}" for k, o in e.get("estimators", {}).items())
        rows.append((name, f(e["estimate"]), f"[{f(e['low'])}, {f(e['high'])}]", f(e.get("truth")),
                     f(e.get("relative_error"), "{:+.2%}"), others, f((true_ndcg or {}).get(name))))
    p = report["propensities"]
    head = (f"<p>{report['estimator']} over {report['requests']:,} test requests, {report['confidence']:.0%} "
            f"bootstrap interval ({report['bootstrap']} resamples); propensities from {p['source']}: "
            + ", ".join(f"{t:.3f}" for t in p["theta"][:8]) + (" ..." if len(p["theta"]) > 8 else "")
            + f"; logged clicks per request {report['logged_clicks_per_request']:.4f}"
            + (f", logging policy's truth {report['logging_policy_truth']:.4f}" if "logging_policy_truth" in report
               else "") + "</p>")
    return head + table_html(rows, ["model", "estimate", "interval", "truth", "error", "other estimators",
                                    "true-relevance NDCG"])


def interval_figure(report: dict) -> str:
    """A PNG (base64) of each model's estimate with its interval, and the truth where known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report.get("models", {})
    names = list(models)
    fig, ax = plt.subplots(figsize=(5.6, 4))
    y = np.arange(len(names))
    est = np.array([models[n]["estimate"] for n in names])
    err = np.array([[models[n]["estimate"] - models[n]["low"] for n in names],
                    [models[n]["high"] - models[n]["estimate"] for n in names]])
    ax.errorbar(est, y, xerr=err, fmt="o", capsize=4, label=f"estimate ({report.get('estimator')}, "
                f"{report.get('confidence', 0.95):.0%} interval)")
    truth = [models[n].get("truth") for n in names]
    if all(t is not None for t in truth) and names:
        ax.plot(truth, y, "kx", ms=8, label="truth (generator)")
    if "logged_clicks_per_request" in report:
        ax.axvline(report["logged_clicks_per_request"], color="grey", ls=":", lw=1, label="logged clicks")
    ax.set_yticks(y, names, fontsize=8)
    ax.set(xlabel="expected clicks per request", title="Counterfactual estimate")
    ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()



# --- the validate step ----------------------------------------------------------------------------------------

# Rankers the gate estimates: name in the summary -> the scores file compare_artefacts wrote beside the optimised model.
GATE_MODELS = {"baseline": "scores_baseline_savedmodel.npy", "optimized": "scores_int8_tflite.npy"}


def gate_counterfactual(features_dir: str | Path, optimized_dir: str | Path, baseline_eval: dict,
                        config, progress=print, out_dir: str | Path | None = None) -> dict:
    """What the validate step adds: estimates (and truth, true-relevance NDCG) for the baseline, the optimised int8
    model and the model it would replace, and the gate's check. Returns {"report", "check", "true_ndcg",
    "previous"}; `config` is the run's ShoprankConfig. The replaced model's test scores go to
    `out_dir`/scores_previous.npy (for `make bench-debias`)."""
    from shoprank.evaluation.evaluate import true_ndcg
    from shoprank.features.dataset import load_split

    cc = config.counterfactual
    test = load_split(features_dir, "test")
    scores = {name: np.load(Path(optimized_dir) / f) for name, f in GATE_MODELS.items()}
    bundle, why = previous_bundle(cc)
    if bundle is not None:
        try:
            scores["previous"] = score_previous(bundle, test.directory, config.evaluation.batch_size)
            if out_dir is not None:
                np.save(Path(out_dir) / "scores_previous.npy", scores["previous"])
        except (OSError, ValueError, KeyError) as e:  # an older bundle layout, a test split without raw requests
            bundle, why = None, f"previous model {bundle} could not score the test requests: {e}"
    progress(f"[validate] counterfactual: {why}")
    log = logged_lists(test)
    theta = None
    if log is not None:
        saved = baseline_eval.get("counterfactual", {}).get("propensities")
        theta = (Propensities(tuple(saved["theta"]), saved["source"]) if saved else
                 propensities_for(log, scores["baseline"][log.keep], config.debias.max_positions, cc))
    report = counterfactual_report(log, scores, theta, cc)
    change = None
    if "skipped" not in report and "previous" in scores:
        change = paired_change(log, scores["optimized"][log.keep], scores["previous"][log.keep], theta, cc)
        report["change_vs_previous"] = change
    check = click_check(report, "optimized", "previous" if "previous" in scores else None, why, cc, change)
    ndcg = {name: true_ndcg(test, s, config) for name, s in scores.items()}
    for name, e in report.get("models", {}).items():
        progress(f"[validate] counterfactual {name}: {e['estimate']:.4f} [{e['low']:.4f}, {e['high']:.4f}]"
                 + (f", truth {e['truth']:.4f} ({e['relative_error']:+.2%})" if "truth" in e else "")
                 + (f", true-relevance NDCG {ndcg[name]:.4f}" if ndcg.get(name) is not None else ""))
    return {"report": report, "check": check, "true_ndcg": ndcg,
            "previous": {"bundle": str(bundle) if bundle else None, "why": why}}
