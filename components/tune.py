"""The tune steps: plan the trials, run one trial, keep the better half per rung, choose the settings.

The pipeline lays them out as `RUNGS` rungs, each a `dsl.ParallelFor` over one rung's trial specs (one
`tune-trial` task per trial, each with its own Metrics artefact in the KFP UI), with `tune-rung` between rungs
and `tune-select` at the end (shoprank.modeling.tune says how the trials are drawn and halved). With
`tune_trials` 0 each rung runs one placeholder trial that returns at once (kfp.local fails on a ParallelFor
over an empty list) and `tune-select` returns "{}" (the preset).
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components import COMPONENT_IMAGE

__all__ = ["RUNGS", "tune_plan", "tune_rung", "tune_select", "tune_trial"]

# shoprank.modeling.tune.RUNGS (tests/pipelines checks they agree): the DAG has this many rung loops, and tune_select
# one input per rung.
RUNGS = 3


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def tune_plan(preset: str, overrides: str, tune_trials: int, rungs: int) -> list:
    """The first rung's trials: `tune_trials` settings drawn from the settings' search space (tune.space).

    Args:
        preset: Size of the run's settings: tiny, small, default or large (shoprank.config.PRESETS).
        overrides: JSON of settings on top of the preset; the tune section sets the search space and budget.
        tune_trials: Trials of the first rung; 0 turns tuning off (an empty plan).
        rungs: Rungs of successive halving the pipeline runs (its rung loops).
    """
    from shoprank.config import resolve_config
    from shoprank.modeling.tune import plan

    specs = plan(resolve_config(preset, overrides), tune_trials, rungs)
    print(f"[tune] {tune_trials} trial(s) planned over {rungs} rungs" if tune_trials else "[tune] off (tune_trials 0)")
    return specs


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def tune_trial(preset: str, overrides: str, spec: dict, features: Input[Dataset], transform: Input[Artifact],
               trial_metrics: Output[Metrics]) -> str:
    """Train one trial on its rung's sample of the training rows and score it on the validation sample.

    Args:
        preset: Size of the run's settings: tiny, small, default or large (shoprank.config.PRESETS).
        overrides: JSON of settings on top of the preset; the trial's settings go on top of them.
        spec: The trial: its number, rung, share of the training rows and settings (from tune-plan/tune-rung).
        features: The model tensors of each split.
        transform: The fitted transform (sizes of the vocabularies the model embeds).
        trial_metrics: The trial's validation AUC and loss, rows, seconds and settings (shown in the KFP UI).
    """
    import json

    from shoprank.telemetry import quiet_native_logs

    quiet_native_logs()  # first: TensorFlow's C++ start-up notices stay out of the log (VERBOSE=1 keeps them)
    from shoprank.config import resolve_config
    from shoprank.modeling.tune import run_trial

    result = run_trial(features.path, transform.path, resolve_config(preset, overrides), dict(spec))
    if result["off"]:
        trial_metrics.log_metric("off", 1)
        return json.dumps(result)
    for key in ("trial", "rung", "val_auc", "val_loss", "rows", "seconds", "samples_per_second"):
        trial_metrics.log_metric(key, result[key])
    trial_metrics.log_metric("preset", int(bool(result["preset"])))
    for key, value in result["params"].items():
        trial_metrics.log_metric(key, value)
    return json.dumps(result)


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def tune_rung(preset: str, overrides: str, results: list) -> list:
    """Successive halving between rungs: the better half by validation AUC goes on with twice the rows.

    Returns the next rung's trial specs (one output, named Output: kfp.local loops only over such outputs).

    Args:
        preset: Size of the run's settings: tiny, small, default or large (shoprank.config.PRESETS).
        overrides: JSON of settings on top of the preset (the tune section's sample share).
        results: This rung's trial results (JSON strings, one per tune-trial task).
    """
    import json

    from shoprank.config import resolve_config
    from shoprank.modeling.tune import next_rung, normalize

    config = resolve_config(preset, overrides)
    done = [normalize(config, json.loads(r) if isinstance(r, str) else r) for r in results]
    specs = next_rung(config, done)
    if done and not done[0]["off"]:
        print(f"[tune] rung {done[0]['rung']}: " + ", ".join(
            f"{'preset' if r['preset'] else 'trial ' + str(r['trial'])} {r['val_auc']:.4f}" for r in done))
        print(f"[tune] next rung: {len(specs)} trial(s)")
    return specs


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def tune_select(preset: str, overrides: str, rung_0: list, rung_1: list, rung_2: list, tuning: Output[Artifact],
                tune_metrics: Output[Metrics]) -> NamedTuple("Tuned", [("overrides", str)]):
    """The settings for the final training: the last rung's best trial if it beats the preset there.

    One input per rung (RUNGS of them): the results of every trial, for the choice and the record.

    Args:
        preset: Size of the run's settings: tiny, small, default or large (shoprank.config.PRESETS).
        overrides: JSON of settings on top of the preset (tune.min_gain).
        rung_0: Results of rung 0 (JSON strings, one per tune-trial task).
        rung_1: Results of rung 1.
        rung_2: Results of rung 2, the last (the preset's among them).
        tuning: tuning.json: every trial, the winner, the preset, which one the final training uses.
        tune_metrics: The winner's and the preset's validation AUC, trials run, whether the winner is used.
    """
    import json
    import os
    from collections import namedtuple

    from shoprank.config import resolve_config
    from shoprank.modeling.tune import choose

    trials = [json.loads(r) if isinstance(r, str) else r for r in [*rung_0, *rung_1, *rung_2]]
    outcome = choose(resolve_config(preset, overrides), trials)
    os.makedirs(tuning.path, exist_ok=True)
    with open(os.path.join(tuning.path, "tuning.json"), "w") as fh:
        json.dump(outcome, fh, indent=2)
    tuning.metadata["used"] = outcome["used"]
    tune_metrics.log_metric("trials_run", len(trials))
    tune_metrics.log_metric("winner_used", int(outcome["used"] == "winner"))
    for who in ("winner", "preset"):
        if outcome.get(who):
            tune_metrics.log_metric(f"{who}_val_auc", outcome[who]["val_auc"])
    if outcome["used"] != "off":
        w, p = outcome.get("winner") or {}, outcome.get("preset") or {}
        print(f"[tune] winner trial {w.get('trial')} validation AUC {w.get('val_auc', float('nan')):.4f} vs preset "
              f"{p.get('val_auc', float('nan')):.4f}: the final training uses the {outcome['used']}"
              f" {json.dumps(outcome['overrides']) if outcome['used'] == 'winner' else ''}")
    return namedtuple("Tuned", ["overrides"])(json.dumps(outcome["overrides"]))
