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


def test_local_run_with_two_training_workers_and_a_tune_step(tmp_path):
    """`make run SCALE=tiny TRAIN_WORKERS=2 TUNE=2`: two worker processes train the final model; the tune step
    runs 2 trials at rung 0, the better one at rungs 1 and 2, and the preset at rung 2."""
    summary = run("tiny", "{}", "synthetic", tmp_path, run_id="mw", train_workers=2, tune_trials=2)
    training = summary["training"]
    assert training["workers"] == 2 and training["launcher"]["kind"] == "local"
    assert training["strategy"] == "CollectiveAllReduceStrategy" and training["samples_per_second"] > 0
    tuning = summary["tuning"]
    trials = [(t["rung"], t["trial"]) for t in tuning["trials"]]
    assert [r for r, _ in trials] == [0, 0, 1, 2, 2] and trials[-1] == (2, -1)  # the preset, last rung
    assert tuning["used"] in ("winner", "preset") and tuning["preset"]["preset"]
    assert (tuning["overrides"] != {}) == (tuning["used"] == "winner")
    table = summary_table(summary)
    assert "training: 2 worker(s)" in table and "final training uses the" in table
    assert summary["blessed"], summary["blessing_reasons"]
