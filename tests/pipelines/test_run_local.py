"""The whole pipeline through kfp.local on the tiny shop, exactly as `make run` runs it."""

import json

import numpy as np
import pytest

from pipelines.run_local import run, summary_table
from shoprank.scoring.ranker import Ranker

pytestmark = pytest.mark.integration


def test_local_pipeline_run_produces_summary_and_promoted_bundle(tmp_path):
    summary = run("tiny", "{}", "synthetic", tmp_path, run_id="it")
    on_disk = json.loads((tmp_path / "latest" / "summary.json").read_text())
    assert on_disk == summary
    for key in ("baseline", "optimized", "oracle"):
        assert 0.5 < summary[key]["auc"] <= 1.0, key
        assert 0.0 < summary[key]["ndcg_at_10"] <= 1.0, key
    for artefact in ("baseline_savedmodel", "optimized_savedmodel", "int8_tflite"):
        assert summary["sizes"][artefact]["gzip_bytes"] > 0
        assert set(summary["latency_ms"][artefact]) == {"1", "256"}
    assert summary["sizes"]["int8_tflite"]["gzip_bytes"] < summary["sizes"]["baseline_savedmodel"]["gzip_bytes"]
    assert isinstance(summary["blessed"], bool) and summary["blessing_reasons"]
    assert {s["stage"] for s in summary["stages"]} >= {"ingest", "preprocess", "train", "evaluate", "optimize",
                                                       "validate"}
    assert (tmp_path / "latest" / "report.html").read_text().count("data:image/png") >= 4
    assert "blessed:" in summary_table(summary)
    # The LambdaMART reference (issue 14) ran inside the evaluate step and is in the summary beside the network.
    ref = summary["reference"]
    assert set(ref["table"]) == {"baseline", "optimized", "reference", "oracle"}
    assert 0.5 < ref["table"]["reference"]["auc"] <= 1.0
    assert ref["bootstrap"]["resamples"] >= 1000 and ref["bootstrap"]["ndcg_at_10"]["low"] <= ref["bootstrap"][
        "ndcg_at_10"]["high"]
    assert 0 < ref["cost"]["share_of_run_wall_time"] < 1 and ref["cost"]["peak_rss_mib"] > 0
    assert "optimized - reference" in summary_table(summary)
    assert isinstance(summary["blessing_warnings"], list)  # the check warns by default, never blocks
    if summary["blessed"]:
        ranker = Ranker.load(summary["bundle_dir"], "tflite")
        ranked = ranker.rank(["shoe"], [[]], [["i0000001", "i0000002", "not-an-item"]])[0]
        assert ranked.scores.dtype == np.float32 and len(ranked.ranking) == 3
        assert ranked.unknown_items == ["not-an-item"]
    else:
        pytest.fail(f"tiny run not blessed: {summary['blessing_reasons']}")
    # Position bias: true-relevance NDCG and counterfactual estimates; no model in service yet, so the gate's
    # comparison with it is skipped, saying so.
    assert set(summary["true_ndcg_at_10"]) == {"baseline", "optimized"}
    cf = summary["counterfactual"]
    assert set(cf["models"]) == {"baseline", "optimized"} and cf["propensities"]["theta"][0] == 1.0
    for e in cf["models"].values():
        assert e["low"] <= e["estimate"] <= e["high"] and e["truth"] > 0
    check = next(c for c in json.loads(next((tmp_path / "it").rglob("blessing.json")).read_text())["checks"]
                 if c["name"] == "counterfactual_clicks_vs_previous")
    assert check["passed"] and check["message"].startswith("skipped: no previous model")
    assert "estimated clicks/request" in summary_table(summary)


def test_second_run_is_compared_with_the_promoted_model(tmp_path):
    """The gate estimates the clicks of the model in service (the first run's promoted bundle, found by `make
    run` and scored from the raw test requests through its own transform) beside the new one's."""
    first = run("tiny", "{}", "synthetic", tmp_path, run_id="one")
    assert first["blessed"]
    second = run("tiny", "{}", "synthetic", tmp_path, run_id="two")
    cf = second["counterfactual"]
    assert cf["previous_model"]["bundle"] == str(first["bundle_dir"])
    assert set(cf["models"]) == {"baseline", "optimized", "previous"}
    assert "change" in cf["change_vs_previous"] and second["true_ndcg_at_10"]["previous"] is not None
    # Same data and seeds: the model in service and the new one rank alike.
    assert abs(cf["change_vs_previous"]["change"]) < 0.05
    check = next(c for c in json.loads(next((tmp_path / "two").rglob("blessing.json")).read_text())["checks"]
                 if c["name"] == "counterfactual_clicks_vs_previous")
    assert check["passed"] and not check["message"].startswith("skipped")
