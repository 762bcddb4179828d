"""Tuning: the search space in the settings, Optuna's plan, successive halving, the choice against the preset,
and one real trial on the tiny shop. Whether tuned settings beat the preset on the test split is measured in the
README (small and default presets), not asserted here: it depends on the data, not on the mechanics."""

from __future__ import annotations

import math

import pytest

from shoprank.config import SearchDim, resolve_config
from shoprank.errors import ConfigError
from shoprank.modeling import tune


@pytest.fixture(scope="module")
def config():
    return resolve_config("small")


def test_the_default_space_covers_learning_rate_widths_l2_and_dropout(config):
    assert set(config.tune.space) == {"train.learning_rate", "model.token_dim", "model.item_dim",
                                      "model.conv_filters", "model.embedding_l2", "model.dropout"}


def test_space_overrides_are_checked_like_any_setting():
    narrowed = resolve_config("tiny", {"tune": {"space": {"model.dropout": {"choices": [0.1]},
                                                          "train.learning_rate": {"high": 0.05}}}})
    assert narrowed.tune.space["model.dropout"] == SearchDim(choices=(0.1,))
    assert narrowed.tune.space["train.learning_rate"].high == 0.05
    with pytest.raises(ConfigError, match="unknown config key 'tune.space.model.nope'"):
        resolve_config("tiny", {"tune": {"space": {"model.nope": {"low": 1, "high": 2}}}})
    with pytest.raises(ConfigError, match="low < high"):
        resolve_config("tiny", {"tune": {"space": {"model.dropout": {"low": 0.5, "high": 0.1}}}})
    with pytest.raises(ConfigError, match="log range needs low > 0"):
        resolve_config("tiny", {"tune": {"space": {"model.dropout": {"low": 0.0, "high": 0.1, "log": True}}}})
    with pytest.raises(ConfigError, match="sample_share"):
        resolve_config("tiny", {"tune": {"sample_share": 0}})


def test_plan_draws_seeded_trials_inside_the_space(config):
    specs = tune.plan(config, 8)
    assert [s["trial"] for s in specs] == list(range(8))
    assert all(s["rung"] == 0 and s["rungs"] == tune.RUNGS and not s["preset"] for s in specs)
    assert all(math.isclose(s["share"], config.tune.sample_share / 4) for s in specs)
    for s in specs:
        for key, value in s["params"].items():
            dim = config.tune.space[key]
            if dim.choices is not None:
                assert value in dim.choices, (key, value)
            else:
                assert dim.low <= value <= dim.high, (key, value)
    assert tune.plan(config, 8) == specs, "the same seed must propose the same trials"
    assert len({s["params"]["train.learning_rate"] for s in specs}) == 8
    assert tune.plan(config, 0) == [tune.off_spec(0)]  # off: one placeholder (no empty ParallelFor)
    for name in ("tpe", "random"):
        other = resolve_config("small", {"tune": {"sampler": name}})
        assert len(tune.plan(other, 3)) == 3


def result(trial: int, rung: int, auc: float, preset: bool = False) -> dict:
    return {"trial": trial, "rung": rung, "rungs": 3, "share": 0.1, "preset": preset,
            "params": {} if preset else {"train.learning_rate": 0.001 * (trial + 1)}, "val_auc": auc, "rows": 10}


def test_each_rung_keeps_the_better_half_and_the_last_adds_the_preset(config):
    rung0 = [result(i, 0, auc) for i, auc in enumerate([0.60, 0.70, 0.65, 0.61, 0.69, 0.62, 0.64, 0.66])]
    rung1 = tune.next_rung(config, rung0)
    assert [s["trial"] for s in rung1] == [1, 4, 7, 2]
    assert all(s["rung"] == 1 and math.isclose(s["share"], config.tune.sample_share / 2) for s in rung1)
    rung2 = tune.next_rung(config, [result(s["trial"], 1, auc) for s, auc in zip(rung1, [0.7, 0.8, 0.75, 0.6])])
    assert [(s["trial"], s["preset"]) for s in rung2] == [(4, False), (7, False), (-1, True)]
    assert all(s["rung"] == 2 and math.isclose(s["share"], config.tune.sample_share) for s in rung2)
    assert tune.next_rung(config, [result(1, 2, 0.8)]) == []  # after the last rung: nothing
    assert tune.next_rung(config, []) == []
    assert tune.next_rung(config, [tune.off_spec(0)]) == [tune.off_spec(1)]  # tuning off: placeholders go on
    assert tune.next_rung(config, [tune.off_spec(2)]) == []
    assert [s["trial"] for s in tune.next_rung(config, [result(0, 0, 0.5)])] == [0]  # ceil(1/2) = 1
    assert [s["trial"] for s in tune.next_rung(config, [result(i, 0, 0.5 + i / 10) for i in range(3)])] == [2, 1]


def test_the_winner_is_used_only_if_it_beats_the_preset_by_more_than_min_gain(config):
    history = [result(0, 1, 0.7), result(1, 1, 0.72)]
    wins = tune.choose(config, [*history, result(0, 2, 0.75), result(1, 2, 0.74), result(-1, 2, 0.745, True)])
    assert wins["used"] == "winner" and wins["winner"]["trial"] == 0
    assert wins["overrides"] == {"train": {"learning_rate": 0.001}}
    assert len(wins["trials"]) == 5
    loses = tune.choose(config, [result(0, 2, 0.74), result(-1, 2, 0.745, True)])
    assert loses["used"] == "preset" and loses["overrides"] == {}
    strict = resolve_config("small", {"tune": {"min_gain": 0.01}})
    assert tune.choose(strict, [result(0, 2, 0.75), result(-1, 2, 0.745, True)])["used"] == "preset"
    assert tune.choose(config, []) == {"used": "off", "overrides": {}, "trials": []}
    off = [tune.off_spec(r) for r in range(3)]
    assert tune.choose(config, off) == {"used": "off", "overrides": {}, "trials": []}


def test_specs_back_from_the_pipeline_get_their_types_back(config):
    """KFP passes dicts as JSON structs: every number comes back a float, which strict settings would refuse."""
    spec = tune.plan(config, 3)[2]
    floated = {**spec, "trial": 2.0, "rung": 0.0, "rungs": 3.0,
               "params": {k: float(v) for k, v in spec["params"].items()}}
    back = tune.normalize(config, floated)
    assert back == spec and isinstance(back["params"]["model.token_dim"], int)
    tune.trial_config(config, back["params"])


def test_trial_settings_go_on_top_of_the_config_and_are_checked(config):
    cfg = tune.trial_config(config, {"train.learning_rate": 0.01, "model.token_dim": 16})
    assert cfg.train.learning_rate == 0.01 and cfg.model.token_dim == 16
    assert cfg.model.item_dim == config.model.item_dim
    with pytest.raises(ConfigError, match="token_dim"):
        tune.trial_config(config, {"model.token_dim": 0})


def test_one_trial_trains_on_its_sample_and_reports_validation_auc(tiny_features, tiny_config):
    from shoprank.features.dataset import load_split

    features, transform, _ = tiny_features
    spec = {**tune.plan(tiny_config, 1)[0], "share": 0.5}
    lines: list[str] = []
    out = tune.run_trial(features, transform, tiny_config, spec, progress=lines.append)
    assert out["rows"] == round(load_split(features, "train").rows * 0.5)
    assert 0.5 < out["val_auc"] <= 1.0 and out["val_loss"] > 0 and out["samples_per_second"] > 0
    assert out["params"] == spec["params"] and out["trial"] == 0
    assert any("validation AUC" in line for line in lines)


def test_a_placeholder_trial_returns_at_once_without_tensorflow(tmp_path, config):
    import subprocess
    import sys

    code = ("import sys, json; from shoprank.config import resolve_config; from shoprank.modeling import tune; "
            "out = tune.run_trial('/nonexistent', '/nonexistent', resolve_config('small'), tune.off_spec(1)); "
            "print(json.dumps([out['off'], 'tensorflow' in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[true, false]"
