"""The LambdaMART reference: no leakage (training-period statistics, out-of-fold on training rows), and it runs
on the tiny shop within the tiny-preset tests."""

import shutil

import numpy as np
import pytest

from shoprank.evaluation import reference as R
from shoprank.features.affinity import request_folds
from shoprank.features.dataset import load_split

pytest.importorskip("lightgbm")


def _copy(features, tmp_path):
    out = tmp_path / "features"
    shutil.copytree(features, out)
    return out


def _scramble_labels(features_dir, split, seed=0, rows=None):
    """Permute the label columns (clicked, carted, purchased, gain) of `rows` (default all) of a split."""
    rng = np.random.default_rng(seed)
    d = features_dir / split
    n = load_split(features_dir, split).rows
    rows = np.arange(n) if rows is None else rows
    perm = rng.permutation(rows.size)
    for name in ("clicked", "carted", "purchased", "gain"):
        col = np.load(d / f"{name}.npy")
        col[rows] = 1 - col[rows][perm] if name == "clicked" else col[rows][perm]
        np.save(d / f"{name}.npy", col)


def _train_features(features_dir, config):
    train = load_split(features_dir, "train")
    fold = request_folds(np.asarray(train.column("request")), config.reference.folds, config.reference.seed)
    stats = R.ReferenceFeatures.fit(train, fold, config)
    x, _ = stats.matrix(train, None, fold)
    return x, fold


@pytest.fixture(scope="module")
def tiny_reference(tiny_features, tiny_config, tmp_path_factory):
    features, _, _ = tiny_features
    out = tmp_path_factory.mktemp("evaluation") / R.REFERENCE_DIR  # as the evaluate step lays it out
    return R.run_reference(features, tiny_config, out, progress=lambda s: None), out


def test_runs_on_the_tiny_shop_and_reports_its_cost(tiny_reference, tiny_features, tiny_config):
    result, out = tiny_reference
    features, _, _ = tiny_features
    test = load_split(features, "test")
    scores = result["scores"]
    assert scores.shape == (test.rows,) and np.isfinite(scores).all()
    info = result["info"]
    assert 1 <= info["rounds"] <= tiny_config.reference.max_rounds
    assert info["seconds"] > 0 and info["peak_rss_mib"] > 0 and info["features"] == len(R.FEATURES)
    assert set(info["importance_gain"]) == set(R.FEATURES)
    assert np.array_equal(np.load(out / R.SCORES_FILE), scores)
    assert (out / "model.txt").is_file() and (out / "reference.json").is_file()
    table = R.reference_table(test, {"reference": scores}, tiny_config)
    assert table["reference"]["auc"] > 0.7  # it learns (the tiny shop's oracle reaches ~0.84)
    assert 0 < table["reference"]["oracle_share"]["ndcg_at_10"] <= 1.05


def test_test_labels_change_neither_training_features_nor_scores(tiny_reference, tiny_features, tiny_config,
                                                                 tmp_path):
    result, _ = tiny_reference
    features, _, _ = tiny_features
    changed = _copy(features, tmp_path)
    _scramble_labels(changed, "test")
    assert not np.array_equal(np.load(changed / "test" / "clicked.npy"), np.load(features / "test" / "clicked.npy"))
    x0, _ = _train_features(features, tiny_config)
    x1, _ = _train_features(changed, tiny_config)
    assert np.array_equal(x0, x1, equal_nan=True)
    again = R.run_reference(changed, tiny_config, progress=lambda s: None)
    assert np.array_equal(again["scores"], result["scores"])


def test_validation_labels_do_not_change_training_features(tiny_features, tiny_config, tmp_path):
    features, _, _ = tiny_features
    changed = _copy(features, tmp_path)
    _scramble_labels(changed, "validation")
    assert np.array_equal(_train_features(features, tiny_config)[0], _train_features(changed, tiny_config)[0],
                          equal_nan=True)


def test_training_rows_get_out_of_fold_statistics(tiny_features, tiny_config, tmp_path):
    """Changing the labels of the rows in one fold leaves those rows' features as they were (their statistics
    come from the other folds), and changes the other folds' features (theirs include this fold)."""
    features, _, _ = tiny_features
    x0, fold = _train_features(features, tiny_config)
    changed = _copy(features, tmp_path)
    in_fold = np.flatnonzero(fold == 0)
    _scramble_labels(changed, "train", rows=in_fold)
    x1, _ = _train_features(changed, tiny_config)
    assert np.array_equal(x0[in_fold], x1[in_fold], equal_nan=True)
    others = fold != 0
    label_based = [R.FEATURES.index(n) for n in ("item_ctr", "cat_ctr", "tok_cat_ctr_mean")]
    assert not np.array_equal(x0[others][:, label_based], x1[others][:, label_based], equal_nan=True)


def test_out_of_fold_sums_equal_a_direct_count():
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 6, 200)
    clicks = rng.integers(0, 2, 200).astype(float)
    fold = rng.integers(0, 4, 200)
    sums = R._Sums(keys, {"click": clicks}, fold, 4)
    got = sums.lookup(keys, fold)
    for i in range(0, 200, 17):
        other = (keys == keys[i]) & (fold != fold[i])
        assert got["n"][i] == pytest.approx(other.sum() * 4 / 3)
        assert got["click"][i] == pytest.approx(clicks[other].sum() * 4 / 3)
    whole = sums.lookup(np.array([keys[0], 99, -1]))
    assert whole["n"].tolist() == [float((keys == keys[0]).sum()), 0.0, 0.0]


def test_folds_keep_a_request_together_and_every_feature_is_built(tiny_features, tiny_config):
    features, _, _ = tiny_features
    train = load_split(features, "train")
    request = np.asarray(train.column("request"))
    fold = request_folds(request, 5, 0)
    assert set(np.unique(fold)) == set(range(5))
    per_request = {}
    for r, f in zip(request.tolist(), fold.tolist()):
        assert per_request.setdefault(r, f) == f
    x, row_list = R.ReferenceFeatures.fit(train, fold, tiny_config).matrix(train, None, fold, chunk_rows=1000)
    assert x.shape == (train.rows, len(R.FEATURES)) and row_list.size == train.rows
    data_dependent = {"title_len"}  # synthetic titles all have title_len words; real ones vary
    constant = [n for j, n in enumerate(R.FEATURES) if np.nanstd(x[:, j]) == 0 and n not in data_dependent]
    assert not constant, f"features that never vary on the tiny shop: {constant}"


def test_gate_section_reports_a_missing_reference_and_none_when_disabled(tiny_features, tiny_config, tmp_path):
    features, _, _ = tiny_features
    test = load_split(features, "test")
    missing = R.gate_section(test, tmp_path, tmp_path / "no-evaluation", {}, tiny_config)
    assert "error" in missing and "no reference scores" in missing["error"]
    off = tiny_config.model_copy(update={"reference": tiny_config.reference.model_copy(update={"enabled": False})})
    assert R.gate_section(test, tmp_path, None, {}, off) is None


def test_sections_render_and_flatten_for_kfp(tiny_reference, tiny_features, tiny_config, tmp_path):
    result, out = tiny_reference
    features, _, _ = tiny_features
    test = load_split(features, "test")
    rng = np.random.default_rng(0)
    network = rng.random(test.rows)
    section = R.evaluation_section(test, network, result, tiny_config)
    assert section["bootstrap"]["a"] == "baseline" and section["info"]["comparison_seconds"] >= 0
    flat = R.kfp_metrics(section, 10)
    assert {"reference_auc", "baseline_minus_reference_ndcg_at_10_low", "reference_seconds"} <= set(flat)
    assert all(isinstance(v, float) and np.isfinite(v) for v in flat.values())
    # The gate's section: the optimised network's scores come from the optimise step's files.
    opt = tmp_path / "optimized"
    opt.mkdir()
    np.save(opt / "scores_int8_tflite.npy", network)
    np.save(opt / "scores_baseline_savedmodel.npy", network)
    gate = R.gate_section(test, opt, out.parent, {"reference": section}, tiny_config)
    assert set(gate["table"]) == {"baseline", "optimized", "reference", "oracle"}
    assert gate["cost"]["total_seconds"] >= gate["cost"]["seconds"]
    sections, figures = R.report_parts(gate, 10)
    assert len(sections) == 3 and len(figures) == 2
    assert "optimized - reference" in sections[1][1] and "baseline - reference" in sections[1][1]
