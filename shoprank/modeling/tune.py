"""Tuning: trials over the search space of the settings (`tune.space`), successive halving, the winner.

The pipeline runs it as a fixed number of rungs (`RUNGS`), each a `dsl.ParallelFor` of one task per trial (a
cluster runs a rung's trials in parallel, kfp.local in turn), with a light step between rungs:

    plan(N)           -> rung 0: N trials, settings drawn by Optuna's sampler (N = 0: one placeholder per rung,
                         whose task returns at once: kfp.local cannot run a ParallelFor over an empty list)
    run_trial(spec)   -> one trial: the model with the trial's settings, trained on the rung's sample of the
                         training rows, scored by validation AUC on a fixed validation sample
    next_rung(...)    -> the better half (ceil(n/2)) by validation AUC, with twice the training rows; the last
                         rung also trains the preset's own settings on the same sample
    choose(...)       -> the best trial of the last rung if it beats the preset there by more than
                         `tune.min_gain` (0.003), else the preset; its settings as overrides for the final training

Why Optuna (pinned in pyproject): its ask/tell interface proposes trials without running them, which is what a
DAG needs (the trials run in other tasks, on other pods); its distributions check the space, and its quasi-random
(Sobol) sampler covers a small budget of trials evenly, seeded, so a rerun proposes the same trials. KerasTuner's
Hyperband drives its trials in its own loop in one process and keeps state in a directory, which does not fit one
pod per trial. The halving schedule itself is synchronous (a rung waits for all of its trials) and is the few lines
of `next_rung`; Optuna's SuccessiveHalvingPruner is the asynchronous variant, which needs one shared study
storage that every trial pod reaches.

Budget: trials train from scratch at every rung (no weights move between tasks). Rung r of R trains `tune.epochs`
epochs on `tune.sample_share / 2**(R-1-r)` of the training rows; the samples nest (each rung's sample contains the
previous one's). No early stopping inside a trial.

Not tested here: that the tuned settings generalise to the full training run; the pipeline only uses them when
they beat the preset on validation at the last rung's budget (measured results in the README).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shoprank.config import SearchDim, ShoprankConfig, TuneConfig, merge_overrides, validate_config
from shoprank.errors import ShoprankError

__all__ = [
    "RUNGS",
    "choose",
    "next_rung",
    "normalize",
    "off_spec",
    "params_to_overrides",
    "plan",
    "rung_share",
    "run_trial",
    "trial_config",
]

RUNGS = 3  # the pipeline's rung stages (a static DAG): N -> ceil(N/2) -> ceil(N/4) + the preset
Progress = Callable[[str], None]
Spec = dict[str, Any]


def rung_share(tune: TuneConfig, rung: int, rungs: int = RUNGS) -> float:
    """Share of the training rows rung `rung` (0-based) trains on: halved for each rung before the last."""
    return tune.sample_share / 2 ** (rungs - 1 - rung)


def _distributions(space: Mapping[str, SearchDim]) -> dict[str, Any]:
    import optuna

    out: dict[str, Any] = {}
    for key, dim in space.items():
        if dim.choices is not None:
            out[key] = optuna.distributions.CategoricalDistribution(list(dim.choices))
        elif dim.integer:
            out[key] = optuna.distributions.IntDistribution(int(dim.low), int(dim.high), log=dim.log)
        else:
            out[key] = optuna.distributions.FloatDistribution(float(dim.low), float(dim.high), log=dim.log)
    return out


def _sampler(tune: TuneConfig) -> Any:
    import optuna

    if tune.sampler == "qmc":
        return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=tune.seed)
    if tune.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=tune.seed)
    return optuna.samplers.RandomSampler(seed=tune.seed)


def off_spec(rung: int, rungs: int = RUNGS) -> Spec:
    """The one spec of a rung when tuning is off: its task returns at once. (kfp.local fails on a ParallelFor over
    an empty list, so "no trials" is one placeholder trial per rung rather than an empty loop.)"""
    return {"trial": -1, "rung": rung, "rungs": rungs, "share": 0.0, "preset": False, "params": {}, "off": True}


def normalize(config: ShoprankConfig, spec: Mapping[str, Any]) -> Spec:
    """A spec or result as it comes back from the pipeline (KFP passes dicts as JSON structs, so every number is a
    float): counters as ints, flags as bools, each setting as the type its search dimension gives."""
    out = dict(spec)
    for key in ("trial", "rung", "rungs"):
        if key in out:
            out[key] = int(out[key])
    for key in ("preset", "off"):
        out[key] = bool(out.get(key, False))
    params = {}
    for key, value in (out.get("params") or {}).items():
        dim = config.tune.space.get(key)
        if dim is not None and dim.choices is not None:
            value = next((c for c in dim.choices if c == value), value)
        elif dim is not None and dim.integer:
            value = int(round(value))
        params[key] = value
    out["params"] = params
    return out


def plan(config: ShoprankConfig, trials: int, rungs: int = RUNGS) -> list[Spec]:
    """Rung 0's trial specs: `trials` settings drawn from `tune.space` by Optuna's sampler ([off_spec] for 0)."""
    if trials < 0:
        raise ShoprankError(f"tune_trials must be >= 0, got {trials}")
    if trials == 0:
        return [off_spec(0, rungs)]
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tune = config.tune
    dists = _distributions(tune.space)
    specs = []
    with warnings.catch_warnings():
        # QMCSampler is marked experimental, and samples categorical settings with its independent sampler and
        # says so each time: both expected.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)
        study = optuna.create_study(direction="maximize", sampler=_sampler(tune))
        for i in range(trials):
            trial = study.ask(dists)
            params = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in trial.params.items()}
            specs.append({"trial": i, "rung": 0, "rungs": rungs, "share": rung_share(tune, 0, rungs),
                          "preset": False, "off": False, "params": params})
    return specs


def params_to_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """{"train.learning_rate": 0.01, "model.token_dim": 16} -> {"train": {...}, "model": {...}}."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = value
    return out


def trial_config(config: ShoprankConfig, params: Mapping[str, Any]) -> ShoprankConfig:
    """`config` with a trial's settings on top (checked like any override)."""
    values = merge_overrides(config.to_dict(), params_to_overrides(params))
    return validate_config(values)


class _Rows:
    """A column restricted to some rows (sorted indices), read lazily from the memory map."""

    def __init__(self, column: Any, rows: np.ndarray) -> None:
        self.column, self.rows = column, rows

    def __getitem__(self, idx: Any) -> np.ndarray:
        return self.column[self.rows[idx]]

    def __len__(self) -> int:
        return len(self.rows)


class _Sample:
    """A split seen through a row sample: what `train.make_dataset` reads (`rows`, `column`)."""

    def __init__(self, split: Any, rows: np.ndarray) -> None:
        self.split, self.index = split, np.sort(rows)
        self.rows = len(self.index)

    def column(self, name: str) -> _Rows:
        return _Rows(self.split.column(name), self.index)


def _sample(n: int, share_or_rows: float, seed: int) -> np.ndarray:
    """The first rows of one fixed permutation: samples of different sizes nest."""
    order = np.random.default_rng(seed).permutation(n)
    take = int(share_or_rows) if share_or_rows > 1 else max(1, int(round(n * share_or_rows)))
    return order[:min(n, take)]


def run_trial(features_dir: str | Path, transform_dir: str | Path, config: ShoprankConfig, spec: Spec,
              progress: Progress = print) -> dict[str, Any]:
    """Train one trial on its rung's sample; return the spec with its validation AUC and loss, rows, seconds.
    A placeholder (tuning off) returns at once, without importing TensorFlow."""
    spec = normalize(config, spec)
    if spec["off"]:
        return spec
    from shoprank.features.dataset import load_split
    from shoprank.features.transform import FeatureTransform
    from shoprank.modeling._tf import keras
    from shoprank.modeling.model import build_model
    from shoprank.modeling.train import compile_model, make_dataset

    t0 = time.perf_counter()
    cfg = trial_config(config, spec.get("params") or {})
    tc, fc, tune = cfg.train, cfg.features, cfg.tune
    keras.utils.set_random_seed(tc.seed)
    sizes = FeatureTransform.load(transform_dir).sizes
    train_split = load_split(features_dir, "train")
    val_split = load_split(features_dir, "validation")
    train_rows = _sample(train_split.rows, float(spec["share"]), tune.seed)
    val_rows = _sample(val_split.rows, float(tune.validation_rows), tune.seed + 1)
    train_sample, val_sample = _Sample(train_split, train_rows), _Sample(val_split, val_rows)
    model = build_model(sizes, cfg.model, fc)
    compile_model(model, tc.learning_rate)
    name = "preset" if spec.get("preset") else f"trial {spec['trial']}"
    shown = ", ".join(f"{k.split('.')[1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[1]}={v}"
                      for k, v in (spec.get("params") or {}).items())
    progress(f"[tune] rung {spec['rung']} {name}: {train_sample.rows:,} rows x {tune.epochs} epoch(s), "
             f"{val_sample.rows:,} validation rows; {shown or 'the preset settings'}")
    fit_t0 = time.perf_counter()
    history = model.fit(make_dataset(train_sample, tc.label, tc.batch_size, True, tc.seed, fc),
                        validation_data=make_dataset(val_sample, tc.label, tc.batch_size, False, tc.seed, fc),
                        epochs=tune.epochs, verbose=0).history
    fit_seconds = time.perf_counter() - fit_t0
    val_auc, val_loss = float(history["val_auc"][-1]), float(history["val_loss"][-1])
    if not math.isfinite(val_auc):
        val_auc = 0.0
    result = {**spec, "val_auc": round(val_auc, 6), "val_loss": round(val_loss, 6), "rows": int(train_sample.rows),
              "parameters": int(model.count_params()), "seconds": round(time.perf_counter() - t0, 2),
              "samples_per_second": round(train_sample.rows * tune.epochs / max(fit_seconds, 1e-9), 1)}
    progress(f"[tune] rung {spec['rung']} {name}: validation AUC {val_auc:.4f}, loss {val_loss:.4f} "
             f"({result['seconds']:.1f}s)")
    return result


def _ranked(results: Sequence[Spec]) -> list[Spec]:
    return sorted((r for r in results if not r.get("preset") and not r.get("off")),
                  key=lambda r: (-r["val_auc"], r["trial"]))


def next_rung(config: ShoprankConfig, results: Sequence[Spec]) -> list[Spec]:
    """The specs of the rung after `results`' rung: the better half (at least one) with the next rung's share;
    the last rung also gets the preset. Tuning off: the next rung's off_spec. [] after the last rung."""
    results = [normalize(config, r) for r in results]
    if not results:
        return []
    rung, rungs = results[0]["rung"], results[0]["rungs"]
    if rung + 1 >= rungs:
        return []
    trials = _ranked(results)
    if not trials:
        return [off_spec(rung + 1, rungs)]
    keep = trials[:max(1, math.ceil(len(trials) / 2))]
    share = rung_share(config.tune, rung + 1, rungs)
    specs = [{k: r[k] for k in ("trial", "rungs", "preset", "off", "params")} | {"rung": rung + 1, "share": share}
             for r in keep]
    if rung + 2 == rungs:
        specs.append({"trial": -1, "rung": rung + 1, "rungs": rungs, "share": share, "preset": True, "off": False,
                      "params": {}})
    return specs


def choose(config: ShoprankConfig, history: Sequence[Spec]) -> dict[str, Any]:
    """The outcome of tuning from every trial result: `overrides` for the final training ({} keeps the preset),
    `used` ("winner", "preset" or "off"), the winner and the preset at the last rung, and every trial."""
    trials = [r for r in (normalize(config, r) for r in history) if not r["off"]]
    if not trials:
        return {"used": "off", "overrides": {}, "trials": []}
    last = max(int(r["rung"]) for r in trials)
    final = [r for r in trials if int(r["rung"]) == last]
    ranked = _ranked(final)
    preset = next((r for r in final if r.get("preset")), None)
    winner = ranked[0] if ranked else None
    use = winner is not None and (preset is None or winner["val_auc"] > preset["val_auc"] + config.tune.min_gain)
    return {"used": "winner" if use else "preset",
            "overrides": params_to_overrides(winner["params"]) if use and winner else {},
            "winner": winner, "preset": preset, "min_gain": config.tune.min_gain,
            "trials": sorted(trials, key=lambda r: (int(r["rung"]), bool(r.get("preset")), int(r["trial"])))}
