"""Debiased training: every method trains on tiny data, the exported model stays position-blind (same serving
signature, no position input), propensities are saved where a method learns them, and data without positions
or an oracle fall back or are refused with the reason.

What is not tested here: that a method removes the bias (measured at the default scale by `make bench-debias`:
true-relevance NDCG against the unbiased-label bound)."""

import json
import shutil

import numpy as np
import pytest

from shoprank.config import resolve_config
from shoprank.errors import DataValidationError
from shoprank.features.dataset import load_split
from shoprank.features.transform import INPUTS, FeatureTransform
from shoprank.layout import SAVED_MODEL_DIR, SCORE, SIGNATURE
from shoprank.modeling.debias import POSITION_INPUT, TOWER_LAYER, plan_training, with_position_tower
from shoprank.modeling.model import build_model
from shoprank.modeling.propensity import Propensities
from shoprank.modeling.train import compile_model, train
from tests.conftest import quiet


def _config(method: str, **train):
    return resolve_config("tiny", {"debias": {"method": method}, "train": {"epochs": 1} | train})


def _signature(model_dir):
    from shoprank.modeling._tf import tf

    sig = tf.saved_model.load(str(model_dir / SAVED_MODEL_DIR)).signatures[SIGNATURE]
    return sorted(sig.structured_input_signature[1]), sorted(sig.structured_outputs)


@pytest.mark.parametrize("method", ["pal", "ipw", "unbiased_labels"])
def test_debiased_training_runs_and_serves_position_blind(tmp_path, tiny_features, method):
    features, transform, _ = tiny_features
    result = train(features, transform, tmp_path / "m", _config(method), progress=quiet)
    assert result["debias"]["method"] == method
    assert _signature(tmp_path / "m") == (sorted(INPUTS), [SCORE])  # no position: serving does not change
    saved = json.loads((tmp_path / "m" / "training.json").read_text())["debias"]
    if method in ("pal", "ipw"):
        p = Propensities.load(tmp_path / "m")
        assert p is not None and p.theta[0] == 1.0 and len(p.theta) == 20
        assert all(0 < t <= 1 for t in p.theta) and saved["propensities"]["source"] == p.source
    else:
        assert Propensities.load(tmp_path / "m") is None


def test_position_tower_wraps_without_changing_the_model(tiny_features, tiny_config):
    features, transform, _ = tiny_features
    model = build_model(FeatureTransform.load(transform).sizes, tiny_config.model, tiny_config.features)
    wrapped = with_position_tower(model, 5, np.array([0.2, 0.5, 0.4, 0.3, 0.2]))
    assert set(wrapped.input) == set(INPUTS) | {POSITION_INPUT} and set(model.input) == set(INPUTS)
    split = load_split(features, "test")
    x = split.features(slice(0, 8))
    served = np.asarray(model(x)).reshape(-1)
    for pos, theta in ((0, 1.0), (3, 0.3)):  # the top slot is pinned at "examined"
        clicks = np.asarray(wrapped(x | {POSITION_INPUT: np.full(8, pos, np.int32)})).reshape(-1)
        np.testing.assert_allclose(clicks, served * theta, rtol=1e-3)
    # The tower shares no weight with the model: the served model's weights are all the model's.
    assert TOWER_LAYER not in {layer.name for layer in model.layers}


def test_logit_tower_and_position_dropout(tiny_features, tiny_config):
    """The shallow-tower variant starts as the model itself (every position logit 0) and keeps no propensities;
    position dropout only acts in training."""
    features, transform, _ = tiny_features
    model = build_model(FeatureTransform.load(transform).sizes, tiny_config.model, tiny_config.features)
    wrapped = with_position_tower(model, 5, dropout=0.5, additive=True)
    x = load_split(features, "test").features(slice(0, 8))
    served = np.asarray(model(x)).reshape(-1)
    pos = {POSITION_INPUT: np.full(8, 3, np.int32)}
    np.testing.assert_allclose(np.asarray(wrapped(x | pos, training=False)).reshape(-1), served, rtol=1e-4)
    plan = plan_training(model, load_split(features, "train"), load_split(features, "validation"),
                         resolve_config("tiny", {"debias": {"method": "pal", "tower": "logit",
                                                            "position_dropout": 0.1}}), 64, compile_model, quiet)
    assert plan.method == "pal" and plan.propensities() is None


def test_without_positions_training_is_position_blind_and_says_so(tmp_path, tiny_features, tiny_config):
    features, transform, _ = tiny_features
    copy = tmp_path / "features"
    for split in ("train", "validation"):
        shutil.copytree(features / split, copy / split)
        (copy / split / "position.npy").unlink()
    model = build_model(FeatureTransform.load(transform).sizes, tiny_config.model, tiny_config.features)
    plan = plan_training(model, load_split(copy, "train"), load_split(copy, "validation"), _config("pal"), 64,
                         compile_model, quiet)
    assert plan.method == "none" and "no" in plan.note and plan.fit_model is model
    assert plan.summary()["propensities"] is None


def test_unbiased_labels_need_an_oracle(tmp_path, tiny_features, tiny_config):
    features, transform, _ = tiny_features
    copy = tmp_path / "features"
    for split in ("train", "validation"):
        shutil.copytree(features / split, copy / split)
        np.save(copy / split / "oracle.npy", np.full(load_split(copy, split).rows, np.nan, np.float32))
    model = build_model(FeatureTransform.load(transform).sizes, tiny_config.model, tiny_config.features)
    with pytest.raises(DataValidationError, match="oracle"):
        plan_training(model, load_split(copy, "train"), load_split(copy, "validation"), _config("unbiased_labels"),
                      64, compile_model, quiet)


def test_other_labels_than_clicks_are_trained_as_they_are(tiny_features, tiny_config):
    features, transform, _ = tiny_features
    model = build_model(FeatureTransform.load(transform).sizes, tiny_config.model, tiny_config.features)
    plan = plan_training(model, load_split(features, "train"), load_split(features, "validation"),
                         _config("pal", label="purchased"), 64, compile_model, quiet)
    assert plan.method == "none" and "purchased" in plan.note


def test_pal_fine_tuning_under_pruning_exports_position_blind_towers(tmp_path, tiny_features):
    """The optimise step fine-tunes through the position tower too (pruning on raw clicks would learn the bias
    back), and what it exports -- the whole graph and the served composition's towers -- has no position."""
    from shoprank.features.transform import ITEM_INPUTS, REQUEST_INPUTS
    from shoprank.layout import TOWERS_DIR, TOWERS_META
    from shoprank.modeling.optimize import optimize

    features, transform, _ = tiny_features
    config = resolve_config("tiny", {"debias": {"method": "pal"}, "train": {"epochs": 1},
                                     "optimize": {"export_onnx": False}})
    train(features, transform, tmp_path / "m", config, progress=quiet)
    optimize(tmp_path / "m", features, tmp_path / "opt", config, progress=quiet)
    assert _signature(tmp_path / "opt") == (sorted(INPUTS), [SCORE])
    meta = json.loads((tmp_path / "opt" / TOWERS_DIR / TOWERS_META).read_text())
    assert meta["request_inputs"] == list(REQUEST_INPUTS) and meta["item_inputs"] == list(ITEM_INPUTS)
    assert POSITION_INPUT not in {*meta["request_inputs"], *meta["item_inputs"]}
