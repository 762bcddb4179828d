"""Counterfactual estimators on a simulated position-based click model with known truth: IPS is unbiased and its
interval covers the truth; DR equals IPS without clipping; clipping lowers the estimate; the gate's check passes,
fails and skips; the previous model is found through LATEST pointers; data without positions are reported as such.

What is not tested here: coverage at the default scale over 10 generator seeds with propensities estimated from
the logs (`make bench-debias` measures that)."""

import json
import math

import numpy as np
import pytest

from shoprank.config import CounterfactualConfig
from shoprank.data.clicks import examination, expected_clicks
from shoprank.evaluation.counterfactual import (
    PREVIOUS_MODEL_ENV,
    LoggedLists,
    click_check,
    counterfactual_report,
    counterfactual_table,
    estimate,
    interval_figure,
    kfp_metrics,
    logged_lists,
    paired_change,
    previous_bundle,
)
from shoprank.features.dataset import load_split
from shoprank.layout import LATEST, MANIFEST, TOWERS_DIR
from shoprank.modeling.propensity import Propensities

WIDTH = 10
THETA = Propensities(tuple(examination(np.arange(WIDTH))), "known")


def _world(n_req: int = 2000, seed: int = 0):
    """Fixed lists (a noisy-relevance logging order) and relevance; clicks are drawn per call of `_log`."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-0.3, 1.5, (n_req, WIDTH))
    relevance = (1 / (1 + np.exp(-logit))).reshape(-1)
    positions = np.argsort(np.argsort(-(logit + rng.normal(0, 1, logit.shape)), axis=1), axis=1).reshape(-1)
    groups = np.repeat(np.arange(n_req), WIDTH)
    candidate = (logit + rng.normal(0, 0.5, logit.shape)).reshape(-1)  # a better ranker than the logging one
    return groups, positions, relevance, candidate


def _log(groups, positions, relevance, seed) -> LoggedLists:
    rng = np.random.default_rng(seed)
    clicks = (rng.random(relevance.size) < np.asarray(THETA.theta)[positions] * relevance).astype(float)
    return LoggedLists(np.ones(relevance.size, bool), groups, positions, clicks, relevance)


def test_ips_is_unbiased_and_its_interval_covers_the_truth():
    groups, positions, relevance, candidate = _world()
    truth = expected_clicks(groups, relevance, candidate, np.asarray(THETA.theta)).mean()
    config = CounterfactualConfig(bootstrap=200)
    estimates, covered = [], 0
    for seed in range(12):
        e = estimate(_log(groups, positions, relevance, seed), candidate, THETA, config)
        assert e["truth"] == pytest.approx(truth)
        estimates.append(e["estimate"])
        covered += e["covered"]
        assert e["low"] < e["estimate"] < e["high"]
    se = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - truth) < 4 * se  # unbiased
    assert covered >= 9  # a 95% interval: 12 draws with fewer than 10 covered would be very unlikely
    # The estimate moves with the ranking: the logging order's own estimate is its observed clicks.
    log = _log(groups, positions, relevance, 99)
    own = estimate(log, -positions.astype(float), THETA, config)["estimate"]
    assert own == pytest.approx(log.clicks.sum() / 2000)


def test_dr_equals_ips_without_clipping_and_clipping_lowers_ips():
    groups, positions, relevance, candidate = _world(500)
    log = _log(groups, positions, relevance, 3)
    wide = CounterfactualConfig(clip=1e9, bootstrap=20)
    ips = estimate(log, candidate, THETA, wide, "ips")["estimate"]
    assert estimate(log, candidate, THETA, wide, "dr")["estimate"] == pytest.approx(ips)
    tight = CounterfactualConfig(clip=1.5, bootstrap=20)
    assert estimate(log, candidate, THETA, tight, "clipped_ips")["estimate"] < ips
    with pytest.raises(ValueError):
        estimate(log, candidate, THETA, wide, "snips")


def test_paired_change_and_the_gate_check():
    groups, positions, relevance, candidate = _world(1500, seed=4)
    log = _log(groups, positions, relevance, 5)
    worse = -candidate  # the reverse order
    config = CounterfactualConfig(bootstrap=100, max_click_drop=0.01)
    scores = {"optimized": candidate, "previous": worse}
    report = counterfactual_report(log, scores, THETA, config)
    up = paired_change(log, candidate, worse, THETA, config)
    assert up["change"] > 0.1 and up["low"] < up["change"] < up["high"] and up["true_change"] > 0.1
    assert click_check(report, "optimized", "previous", "", config, up).passed
    down = paired_change(log, worse, candidate, THETA, config)
    report = counterfactual_report(log, {"optimized": worse, "previous": candidate}, THETA, config)
    failed = click_check(report, "optimized", "previous", "", config, down)
    assert not failed.passed and "VIOLATES" in failed.message
    skipped = click_check(report, "optimized", None, "no previous model: none promoted", config, None)
    assert skipped.passed and skipped.message.startswith("skipped: no previous model")
    none = counterfactual_report(None, scores, None, config)
    assert "skipped" in none and click_check(none, "optimized", None, "", config, None).passed


def test_report_table_figure_and_metrics():
    groups, positions, relevance, candidate = _world(300)
    log = _log(groups, positions, relevance, 6)
    report = counterfactual_report(log, {"baseline": candidate}, THETA, CounterfactualConfig(bootstrap=30))
    e = report["models"]["baseline"]
    assert set(e["estimators"]) == {"clipped_ips", "dr"} and "truth" in e
    assert report["logging_policy_truth"] > 0 and report["logged_clicks_per_request"] > 0
    assert "baseline" in counterfactual_table(report, {"baseline": 0.9}) and len(interval_figure(report)) > 1000
    m = kfp_metrics(report, {"baseline": 0.9, "previous": None})
    assert {"cf_baseline_estimate", "cf_baseline_low", "cf_baseline_high", "cf_baseline_truth",
            "true_ndcg_baseline"} <= set(m) and all(math.isfinite(v) for v in m.values())
    json.dumps(report)  # it goes into evaluation.json and summary.json


def test_logged_lists_of_the_tiny_shop(tiny_features):
    features, _, _ = tiny_features
    log = logged_lists(load_split(features, "test"))
    assert log is not None and log.oracle is not None and log.requests > 0
    assert log.positions.min() == 0


def test_split_without_positions_is_skipped(tmp_path, tiny_features):
    import shutil

    features, _, _ = tiny_features
    shutil.copytree(features / "test", tmp_path / "test")
    (tmp_path / "test" / "position.npy").unlink()
    assert logged_lists(load_split(tmp_path, "test")) is None
    np.save(tmp_path / "test" / "position.npy", np.full(load_split(tmp_path, "test").rows, -1, np.int16))
    assert logged_lists(load_split(tmp_path, "test")) is None


def _bundle(root, name, version):
    b = root / name / version
    b.mkdir(parents=True)
    (b / MANIFEST).write_text("{}")
    (b / TOWERS_DIR).mkdir()
    (root / name / LATEST).write_text(version)
    return b


def test_previous_bundle_is_found_through_latest(tmp_path, monkeypatch):
    monkeypatch.delenv(PREVIOUS_MODEL_ENV, raising=False)
    bundle, why = previous_bundle(CounterfactualConfig())
    assert bundle is None and why.startswith("no previous model")
    b = _bundle(tmp_path, "shoprank-ranker", "v1")
    for where in (tmp_path, tmp_path / "shoprank-ranker", b):  # model root, model folder, the bundle itself
        assert previous_bundle(CounterfactualConfig(previous_model=str(where)))[0] == b
    monkeypatch.setenv(PREVIOUS_MODEL_ENV, str(tmp_path))
    assert previous_bundle(CounterfactualConfig())[0] == b
    missing, why = previous_bundle(CounterfactualConfig(previous_model=str(tmp_path / "nowhere")))
    assert missing is None and "not a published bundle" in why
    remote, why = previous_bundle(CounterfactualConfig(previous_model="s3://bucket/models"))
    assert remote is None and "mount" in why
