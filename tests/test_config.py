"""Settings: presets, overrides, and what is refused (type, range, unknown keys) with the key named."""

import json
import typing

import pytest

from shoprank.config import PRESETS, RecommendConfig, ShoprankConfig, resolve_config, validate_config
from shoprank.errors import ConfigError, ShoprankError
from shoprank.schema import EVENT_TYPES


def test_every_preset_resolves_and_round_trips_through_json():
    for name in PRESETS:
        c = resolve_config(name)
        assert c.preset == name
        assert validate_config(json.loads(c.to_json())) == c


def test_overrides_apply_on_top_of_preset():
    c = resolve_config("tiny", json.dumps({"optimize": {"target_sparsity": 0.5}, "train": {"epochs": 7}}))
    assert c.optimize.target_sparsity == 0.5 and c.train.epochs == 7
    assert c.data.n_impressions == PRESETS["tiny"]["data"]["n_impressions"]


def test_an_int_is_a_float_and_lists_become_tuples():
    c = resolve_config("tiny", {"train": {"learning_rate": 1}, "recommend": {"target_events": ["click"]}})
    assert c.train.learning_rate == 1.0 and isinstance(c.train.learning_rate, float)
    assert c.recommend.target_events == ("click",)


@pytest.mark.parametrize("bad, where", [({"nope": 1}, "nope"), ({"train": {"nope": 1}}, "train.nope"),
                                        ({"train": 3}, "train")])
def test_unknown_or_malformed_override_is_refused_with_the_valid_names(bad, where):
    with pytest.raises(ConfigError, match=where) as e:
        resolve_config("tiny", bad)
    if "nope" in where:
        assert "valid keys" in str(e.value) and ("epochs" in str(e.value) or "train" in str(e.value))


@pytest.mark.parametrize("override, key", [
    ({"train": {"epochs": "7"}}, "train.epochs"),  # a string is not an int
    ({"train": {"epochs": 7.0}}, "train.epochs"),  # nor is a float
    ({"train": {"epochs": True}}, "train.epochs"),  # nor a bool
    ({"features": {"history_len": -3}}, "features.history_len"),
    ({"features": {"oov_buckets": 0}}, "features.oov_buckets"),  # divided by later
    ({"blessing": {"min_auc": None}}, "blessing.min_auc"),
    ({"blessing": {"min_auc": 1.5}}, "blessing.min_auc"),
    ({"train": {"label": "bought"}}, "train.label"),
    ({"optimize": {"target_sparsity": 1.0}}, "optimize.target_sparsity"),
    ({"optimize": {"export_onnx": "yes"}}, "optimize.export_onnx"),
    ({"features": {"train_share": 0.9, "validation_share": 0.1}}, "features"),
    ({"recommend": {"target_events": []}}, "recommend.target_events"),
    ({"recommend": {"history_events": ["view", "stare"]}}, "recommend.history_events"),
    ({"recommend": {"negative_sampling": "random"}}, "recommend.negative_sampling"),
    ({"triton": {"precision": "INT8"}}, "triton.precision"),
    ({"sources": {"esci_positive_labels": "ESC"}}, "sources.esci_positive_labels"),
    ({"preprocess": {"bucket_rows": 0}}, "preprocess.bucket_rows"),
    ({"blessing": {"reference_check": "maybe"}}, "blessing.reference_check"),
    ({"reference": {"folds": 1}}, "reference.folds"),
    ({"reference": {"bootstrap_resamples": 10}}, "reference.bootstrap_resamples"),
    ({"reference": {"bootstrap_level": 1.0}}, "reference.bootstrap_level"),
])
def test_wrong_type_or_range_is_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve_config("tiny", override)


def test_refusals_are_shoprank_errors_and_value_errors():
    with pytest.raises(ShoprankError):
        resolve_config("huge")
    with pytest.raises(ValueError, match="preset"):
        resolve_config("huge")
    with pytest.raises(ConfigError, match="JSON"):
        resolve_config("tiny", "{not json")


def test_settings_are_immutable():
    c = resolve_config("tiny")
    with pytest.raises(Exception):  # noqa: B017 (pydantic's ValidationError for a frozen instance)
        c.train.epochs = 3


def test_the_event_type_literal_lists_the_schema_event_types():
    (events,) = typing.get_args(RecommendConfig.model_fields["target_events"].annotation)[:1]
    assert set(typing.get_args(events)) == set(EVENT_TYPES)


def test_default_scale_is_about_a_million_impressions():
    assert 900_000 <= resolve_config("default").data.n_impressions <= 1_100_000
    assert ShoprankConfig().preset == "default"
