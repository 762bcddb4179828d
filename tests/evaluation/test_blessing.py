import copy

from shoprank.config import BlessingConfig
from shoprank.evaluation.blessing import bless

CFG = BlessingConfig(max_auc_drop=0.003, max_ndcg_drop=0.005, min_auc=0.6, max_tflite_gzip_bytes=1000,
                     max_tflite_latency_ms_b256=10.0, golden_tolerance=1e-4)


def _artefacts():
    base = {"auc": 0.78, "ndcg_at_10": 0.60, "gzip_bytes": 5000, "latency_ms": {"1": 1.0, "256": 5.0}}
    opt = {"auc": 0.779, "ndcg_at_10": 0.598, "gzip_bytes": 2000, "latency_ms": {"1": 1.0, "256": 4.0}}
    tfl = {"auc": 0.778, "ndcg_at_10": 0.597, "gzip_bytes": 500, "latency_ms": {"1": 0.1, "256": 1.0}}
    return {"baseline_savedmodel": base, "optimized_savedmodel": opt, "int8_tflite": tfl}


def test_good_optimised_model_is_blessed_with_reasons():
    b = bless(_artefacts(), {"tflite": 0.0, "savedmodel": 1e-6}, CFG)
    assert b.blessed
    assert len(b.reasons) == len(b.checks) and all("within" in r for r in b.reasons)


def test_each_budget_can_block_the_blessing():
    cases = {
        "int8_tflite_auc_drop": lambda a: a["int8_tflite"].update(auc=0.77),
        "optimized_savedmodel_ndcg_drop": lambda a: a["optimized_savedmodel"].update(ndcg_at_10=0.59),
        "int8_size": lambda a: a["int8_tflite"].update(gzip_bytes=5000),
        "int8_latency_b256": lambda a: a["int8_tflite"]["latency_ms"].update({"256": 50.0}),
        "baseline_quality_floor": lambda a: [v.update(auc=0.52) for v in a.values()],
    }
    for check, mutate in cases.items():
        arts = copy.deepcopy(_artefacts())
        mutate(arts)
        b = bless(arts, {"tflite": 0.0}, CFG)
        assert not b.blessed, check
        assert check in [c.name for c in b.checks if not c.passed], check
        assert all("VIOLATES" in r for r in b.reasons)


def test_serving_path_mismatch_or_absence_blocks_the_blessing():
    assert not bless(_artefacts(), {"tflite": 0.01}, CFG).blessed
    assert not bless(_artefacts(), {}, CFG).blessed


def _reference(low, high):
    diff = (low + high) / 2
    return {"bootstrap": {"level": 0.95, "ndcg_at_10": {"diff": diff, "low": low, "high": high},
                          "auc": {"diff": 0.001, "low": -0.002, "high": 0.004}}}


def _with_mode(mode):
    return CFG.model_copy(update={"reference_check": mode})


def test_reference_check_fails_only_when_significantly_worse():
    worse = _reference(-0.04, -0.02)
    b = bless(_artefacts(), {"tflite": 0.0}, _with_mode("fail"), reference=worse)
    assert not b.blessed
    failed = [c for c in b.checks if not c.passed]
    assert [c.name for c in failed] == ["int8_vs_reference_ndcg_at_10"]
    assert "[-0.0400, -0.0200]" in failed[0].message and "WORSE" in failed[0].message
    tied = bless(_artefacts(), {"tflite": 0.0}, _with_mode("fail"), reference=_reference(-0.01, 0.005))
    assert tied.blessed and not tied.warnings
    assert any("not significantly worse" in r and "int8 ndcg_at_10" in r for r in tied.reasons)


def test_reference_check_warn_reports_without_blocking_and_off_skips():
    worse = _reference(-0.04, -0.02)
    warned = bless(_artefacts(), {"tflite": 0.0}, _with_mode("warn"), reference=worse)
    assert warned.blessed
    assert len(warned.warnings) == 1 and "warning only" in warned.warnings[0]
    assert warned.to_dict()["warnings"] == warned.warnings
    off = bless(_artefacts(), {"tflite": 0.0}, _with_mode("off"), reference=worse)
    assert off.blessed and not any("reference" in c.name for c in off.checks)
    # No reference section (the reference is disabled): no check either.
    assert not any("reference" in c.name for c in bless(_artefacts(), {"tflite": 0.0}, _with_mode("fail")).checks)


def test_a_missing_reference_is_not_silently_skipped():
    missing = {"error": "no reference scores (x)"}
    assert not bless(_artefacts(), {"tflite": 0.0}, _with_mode("fail"), reference=missing).blessed
    warned = bless(_artefacts(), {"tflite": 0.0}, _with_mode("warn"), reference=missing)
    assert warned.blessed and "missing" in warned.warnings[0]
