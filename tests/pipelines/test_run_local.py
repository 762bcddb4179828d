"""The whole pipeline through kfp.local on the tiny shop, exactly as `make run` runs it; a run on broken data
fails once with its message; a run on an OpenSearch UBI export."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from pipelines.run_local import main, run, summary_table
from shoprank.scoring.ranker import Ranker
from shoprank.telemetry import NATIVE_NOISE, gpu_present
from tests.support.samples import write_ubi

pytestmark = pytest.mark.integration


def test_local_pipeline_run_produces_summary_and_promoted_bundle(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("VERBOSE", raising=False)
    summary = run("tiny", "{}", "synthetic", tmp_path, run_id="it")
    out = capfd.readouterr()
    lines = (out.out + out.err).splitlines()
    # Quiet and honest: none of TensorFlow's native start-up notices (four TensorFlow tasks ran), and one
    # plain line saying whether a GPU was found.
    if not gpu_present():
        assert [line for line in lines if NATIVE_NOISE.search(line.strip())] == []  # kfp.local indents task logs
        assert not any(word in line for line in lines for word in ("cuInit", "oneDNN", "absl::InitializeLog",
                                                                   "XNNPACK", "cpu_feature_guard"))
    gpu_lines = [line for line in lines if "[train] GPU:" in line]  # kfp.local indents task logs
    assert len(gpu_lines) == 1 and ("none found" in gpu_lines[0]) != gpu_present()
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
    assert isinstance(summary["blessing_warnings"], list)  # the tiny preset's reference check warns, never blocks
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


def test_a_run_on_broken_data_fails_once_with_its_message(tmp_path, capfd):
    """Validation refusals are deterministic: the step is not retried, and its message is shown."""
    src = tmp_path / "src"
    src.mkdir()
    n = 200
    users = [None if i % 3 == 0 else f"u{i % 17}" for i in range(n)]  # a third without a user: over budget
    pacsv.write_csv(pa.table({"timestamp": [f"2026-01-{1 + i % 28:02d}T10:00:{i % 60:02d}.250Z" for i in range(n)],
                              "user_id": pa.array(users, pa.string()),
                              "event": ["view", "click", "cart", "purchase"] * (n // 4),
                              "item_id": [f"i{i % 23}" for i in range(n)]}), src / "events.csv")
    code = main(["--preset", "tiny", "--data", f"events:{src}", "--runs-dir", str(tmp_path / "runs")])
    out = capfd.readouterr()
    text = out.out + out.err
    assert code == 1
    assert text.count("[preprocess] started") == 1  # once: no retry
    assert "failed (attempt" not in text
    assert text.count("[ingest] started") == 1 and "[train] started" not in text
    # The reason, at the end of the output (the task's traceback is far above it).
    last = text[text.index("shoprank pipeline failed"):]
    assert "preprocess: DataValidationError: events: 67 of 200 rows are bad (33.5%)" in last
    assert "missing user_id: 67" in last


def test_local_pipeline_run_on_an_opensearch_ubi_export(tmp_path):
    src = tmp_path / "ubi"
    write_ubi(src, 600)
    summary = run("tiny", "{}", f"ubi:{src}", tmp_path / "runs", run_id="ubi")
    assert summary["data"]["task"] == "search" and "oracle" not in summary
    assert 0.0 < summary["baseline"]["auc"] <= 1.0 and isinstance(summary["blessed"], bool)
    assert summary["blessing_reasons"] and "blessed:" in summary_table(summary)


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
