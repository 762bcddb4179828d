import json

import pytest

from shoprank.config import PRESETS, config_from_json, resolve_config


def test_every_preset_resolves_and_round_trips():
    for name in PRESETS:
        c = resolve_config(name)
        assert c.preset == name
        assert config_from_json(c.to_json()) == c


def test_overrides_apply_on_top_of_preset():
    c = resolve_config("tiny", json.dumps({"optimize": {"target_sparsity": 0.5}, "train": {"epochs": 7}}))
    assert c.optimize.target_sparsity == 0.5 and c.train.epochs == 7
    assert c.data.n_impressions == PRESETS["tiny"]["data"]["n_impressions"]


@pytest.mark.parametrize("bad", [{"nope": 1}, {"train": {"nope": 1}}, {"train": 3}])
def test_unknown_or_malformed_override_is_rejected(bad):
    with pytest.raises(ValueError):
        resolve_config("tiny", bad)


def test_invalid_values_are_rejected():
    with pytest.raises(ValueError, match="label"):
        resolve_config("tiny", {"train": {"label": "bought"}})
    with pytest.raises(ValueError, match="sparsity"):
        resolve_config("tiny", {"optimize": {"target_sparsity": 1.0}})
    with pytest.raises(ValueError, match="preset"):
        resolve_config("huge")


def test_default_scale_is_about_a_million_impressions():
    assert 900_000 <= resolve_config("default").data.n_impressions <= 1_100_000
