"""Position-bias benchmark: debiased training against today's model and the unbiased-label bound, and the
counterfactual estimate of clicks against the generator's truth over several click-draw seeds.

Part 1 (debiasing): one synthetic shop at `--preset` (default: the default scale, seed 7), preprocessed once;
the same model trained with each `debias.method` (none = today's model, pal, ipw, and unbiased_labels = the
bound); per method the test split's true-relevance NDCG@10 (the oracle as gain), click AUC and training time.
Targets: the best debiasing method closes >= 50% of the NDCG gap between `none` and the bound, with click AUC
no more than 0.005 below `none`.

Part 2 (counterfactual): the rankers of a pipeline run (`--run DIR`, a `make run` run directory: the baseline,
the optimised int8 model and, when that run had one, the promoted model it would replace) or, without one, the
models of part 1. The test lists, positions and relevance stay those of the run; the clicks are drawn again
from the generator's click model (examination x relevance) with each of `--seeds` seeds, and each draw goes
through what the evaluation does: propensities by regression EM with the new model's scores, then every
ranker's estimate with its 95% interval. Targets: estimate within 10% of the exact
expected clicks, truth inside the interval for >= 9 of 10 seeds. The same with the generator's own examination
probabilities is printed beside it (it separates the estimator's coverage from the propensities' error).

    python -m benchmarks.bench_debias [--runs-dir runs/bench-debias] [--preset default] [--run runs/latest]

Models and data are cached under --runs-dir (delete it, or pass --fresh, to retrain). Writes bench_debias.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

TRUE_NDCG = "true_ndcg_at_10"
METHODS = ("none", "pal", "ipw", "unbiased_labels")


def _quiet(_: str) -> None:
    pass


def prepare_data(out: Path, preset: str, seed: int) -> Path:
    """Generate and preprocess the shop once (cached)."""
    from shoprank.config import resolve_config
    from shoprank.data.synthetic import generate
    from shoprank.features.preprocess import preprocess

    if (out / "features" / "test" / "position.npy").exists():
        return out
    config = resolve_config(preset, {"data": {"seed": seed}})
    generate(config.data, out / "raw", progress=_quiet)
    preprocess(out / "raw", out / "features", out / "transform", config, progress=print)
    return out


def test_scores(model_dir: Path, features: Path) -> np.ndarray:
    from shoprank.features.dataset import load_split
    from shoprank.features.transform import INPUTS
    from shoprank.scoring.backends import load_scorer, score_in_batches

    test = load_split(features, "test")
    return score_in_batches(load_scorer(model_dir / "saved_model"), {k: test.column(k) for k in INPUTS}, 8192)


def part1(data: Path, preset: str, methods: list[str], fresh: bool) -> dict:
    from shoprank.config import resolve_config
    from shoprank.evaluation.evaluate import true_ndcg
    from shoprank.evaluation.metrics import roc_auc
    from shoprank.features.dataset import load_split
    from shoprank.modeling.train import train

    test = load_split(data / "features", "test")
    clicks = np.asarray(test.column("clicked"))
    out = {}
    for method in methods:
        config = resolve_config(preset, {"debias": {"method": method}})
        model = data / f"model-{method}"
        if fresh or not (model / "training.json").exists():
            print(f"\n=== training debias.method={method} ===", flush=True)
            train(data / "features", data / "transform", model, config, progress=print)
        result = json.loads((model / "training.json").read_text())
        scores = test_scores(model, data / "features")
        np.save(model / "test_scores.npy", scores)
        out[method] = {TRUE_NDCG: true_ndcg(test, scores, config), "click_auc": roc_auc(clicks, scores),
                       "train_seconds": result["seconds"], "epochs": len(result["epochs"]),
                       "propensities": (result.get("debias") or {}).get("propensities")}
        print(f"{method:<16} true-relevance NDCG@10 {out[method][TRUE_NDCG]:.4f}  click AUC "
              f"{out[method]['click_auc']:.4f}  ({result['seconds']:.0f}s, {len(result['epochs'])} epochs)", flush=True)
    oracle = np.asarray(test.column("oracle"))
    out["logging_policy"] = {TRUE_NDCG: true_ndcg(test, -np.asarray(test.positions(), float), config),
                             "click_auc": roc_auc(clicks, -np.asarray(test.positions(), float))}
    out["oracle"] = {TRUE_NDCG: 1.0, "click_auc": roc_auc(clicks, oracle)}
    return out


def _find(run: Path, pattern: str) -> Path | None:
    found = sorted(run.glob(f"artifacts/**/{pattern}"))
    return found[0] if found else None


def rankers_of_run(run: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The features directory and the rankers' test scores of a `make run` run directory."""
    features = _find(run, "features/test/position.npy")
    optimized = _find(run, "optimized_model/scores_int8_tflite.npy")
    if features is None or optimized is None:
        raise SystemExit(f"{run} is not a pipeline run with positions (features, optimised scores)")
    scores = {"baseline": np.load(optimized.parent / "scores_baseline_savedmodel.npy"), "optimized": np.load(optimized)}
    previous = _find(run, "blessing/scores_previous.npy")
    if previous is not None:
        scores["previous"] = np.load(previous)
    return features.parent.parent, scores


def part2(features: Path, scores: dict[str, np.ndarray], reference: str, seeds: int, preset: str) -> dict:
    """Per seed: clicks drawn again, propensities by regression EM with the `reference` ranker's scores (as the
    evaluate step estimates them), every ranker's estimate and interval against the exact truth; beside it, the
    same estimates with the generator's examination curve."""
    from shoprank.config import resolve_config
    from shoprank.data.clicks import examination
    from shoprank.evaluation.counterfactual import LoggedLists, estimate, logged_lists, propensities_for
    from shoprank.features.dataset import load_split
    from shoprank.modeling.propensity import Propensities

    config = resolve_config(preset)
    cc = config.counterfactual
    log = logged_lists(load_split(features, "test"))
    if log is None or log.oracle is None:
        raise SystemExit("part 2 needs synthetic data with positions")
    true = Propensities(tuple(examination(np.arange(int(log.positions.max()) + 1))), "generator")
    p_click = true.at(log.positions) * log.oracle
    kept = {name: np.asarray(s)[log.keep] for name, s in scores.items()}
    rows: dict[str, dict[str, list]] = {name: {"estimated": [], "generator": []} for name in kept}
    thetas = []
    for seed in range(seeds):
        clicks = (np.random.default_rng([seed, 1]).random(p_click.size) < p_click).astype(float)
        redrawn = LoggedLists(log.keep, log.groups, log.positions, clicks, log.oracle)
        estimated = propensities_for(redrawn, kept[reference], config.debias.max_positions, cc)
        thetas.append(estimated.theta)
        for name, s in kept.items():
            for which, theta in (("estimated", estimated), ("generator", true)):
                rows[name][which].append(estimate(redrawn, s, theta, cc))
    mean_theta = np.mean(np.asarray(thetas), axis=0)
    out: dict = {"reference": reference, "propensities": {"estimated_mean": mean_theta.tolist(),
                                                          "generator": list(true.theta)}, "models": {}}
    print("propensities (mean over seeds) vs the generator's: "
          + ", ".join(f"{k}: {mean_theta[k]:.3f}/{true.theta[k]:.3f}" for k in (1, 3, 6, 10, 15, len(true.theta) - 1)
                      if k < len(true.theta)))
    for name in kept:
        truth = rows[name]["estimated"][0]["truth"]
        entry = {"truth": truth}
        for which, es in rows[name].items():
            errors = [e["relative_error"] for e in es]
            entry[which] = {"mean_estimate": float(np.mean([e["estimate"] for e in es])),
                            "bias": float(np.mean(errors)), "max_abs_error": float(np.max(np.abs(errors))),
                            "within_10pct": int(sum(abs(x) <= 0.10 for x in errors)),
                            "covered": int(sum(e["covered"] for e in es)),
                            "mean_halfwidth": float(np.mean([(e["high"] - e["low"]) / 2 / truth for e in es]))}
            e = entry[which]
            print(f"{name:<16} {which:<10} truth {truth:.4f}  mean estimate {e['mean_estimate']:.4f}  bias "
                  f"{e['bias']:+.2%}  max |error| {e['max_abs_error']:.2%}  within 10%: {e['within_10pct']}/{seeds}  "
                  f"covered: {e['covered']}/{seeds}  half-width {e['mean_halfwidth']:.2%}", flush=True)
        out["models"][name] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", type=Path, default=Path("runs/bench-debias"))
    p.add_argument("--preset", default="default")
    p.add_argument("--seed", type=int, default=7, help="the shop's generator seed (part 1)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", type=int, default=10, help="click-draw seeds of part 2")
    p.add_argument("--run", type=Path, default=None, help="a `make run` run directory for part 2")
    p.add_argument("--skip-training", action="store_true", help="part 2 only (needs --run)")
    p.add_argument("--fresh", action="store_true", help="retrain even when a cached model exists")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    data = a.runs_dir / f"{a.preset}-seed{a.seed}"
    result: dict = {"preset": a.preset, "seed": a.seed}
    if not a.skip_training:
        print(f"=== part 1: debiased training ({a.preset}, seed {a.seed}) ===", flush=True)
        prepare_data(data, a.preset, a.seed)
        methods = a.methods.split(",")
        r = result["debias"] = part1(data, a.preset, methods, a.fresh)
        if {"none", "unbiased_labels"} <= set(r):
            gap = r["unbiased_labels"][TRUE_NDCG] - r["none"][TRUE_NDCG]
            print(f"\n{'method':<16}{'true NDCG@10':>14}{'click AUC':>11}{'gap closed':>12}{'AUC change':>12}")
            for m, v in r.items():
                closed = (v[TRUE_NDCG] - r["none"][TRUE_NDCG]) / gap if gap > 0 else float("nan")
                v["gap_closed"] = closed
                v["auc_change"] = v["click_auc"] - r["none"]["click_auc"]
                print(f"{m:<16}{v[TRUE_NDCG]:>14.4f}{v['click_auc']:>11.4f}{closed:>12.1%}{v['auc_change']:>+12.4f}")
            debiased = [m for m in r if m in ("pal", "ipw")]
            if debiased:
                best = max(debiased, key=lambda m: r[m][TRUE_NDCG])
                ok = r[best]["gap_closed"] >= 0.5 and r[best]["auc_change"] >= -0.005
                print(f"best debiasing method: {best}; target (>= 50% of the gap, AUC drop <= 0.005): "
                      f"{'met' if ok else 'MISSED'}")
                result["best_method"], result["debias_target_met"] = best, ok
    print(f"\n=== part 2: counterfactual estimates over {a.seeds} click-draw seeds ===", flush=True)
    if a.run is not None:
        features, scores = rankers_of_run(a.run.resolve())
        reference = "baseline"
        print(f"rankers of the pipeline run {a.run}: {', '.join(scores)}")
    else:
        from shoprank.config import resolve_config

        features = data / "features"
        scores = {m: np.load(data / f"model-{m}" / "test_scores.npy") for m in METHODS
                  if (data / f"model-{m}" / "test_scores.npy").exists()}
        reference = resolve_config(a.preset).debias.method  # the default method's model is the new model
        if reference not in scores:
            raise SystemExit(f"no scores of the default method's model ({reference}): run part 1 first")
    result["counterfactual"] = part2(features, scores, reference, a.seeds, a.preset)
    cf = result["counterfactual"]["models"]
    ok = all(v["estimated"]["within_10pct"] == a.seeds and v["estimated"]["covered"] >= 0.9 * a.seeds
             for v in cf.values())
    result["counterfactual_target_met"] = ok
    print(f"counterfactual target (within 10%, truth covered >= 9/10) with the estimated propensities: "
          f"{'met' if ok else 'MISSED'}")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    a.runs_dir.mkdir(parents=True, exist_ok=True)
    (a.runs_dir / "bench_debias.json").write_text(json.dumps(result, indent=2, default=float))
    print(f"\nwrote {a.runs_dir / 'bench_debias.json'} ({result['seconds']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
