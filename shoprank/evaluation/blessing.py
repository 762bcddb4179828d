"""The blessing gate: is the optimised model as good as the baseline, small and fast enough, does the
serving code path reproduce the evaluator's scores, and is it not significantly worse than the LambdaMART
reference?"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from shoprank.config import BlessingConfig

__all__ = ["OPTIMISED", "Blessing", "Check", "bless", "reference_checks"]

OPTIMISED = ("optimized_savedmodel", "int8_tflite")


@dataclass
class Check:
    name: str
    passed: bool
    value: float
    limit: float
    message: str
    warning: bool = False  # failed, but configured to warn: reported, does not block the blessing


@dataclass
class Blessing:
    blessed: bool
    checks: list[Check] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        """Why not blessed (failed checks), or, when blessed, every check that passed."""
        failed = [c.message for c in self.checks if not c.passed]
        return failed if failed else [c.message for c in self.checks]

    @property
    def warnings(self) -> list[str]:
        """Checks that failed but only warn (e.g. the reference check in "warn" mode)."""
        return [c.message for c in self.checks if c.warning]

    def to_dict(self) -> dict:
        return {"blessed": self.blessed, "reasons": self.reasons, "warnings": self.warnings,
                "checks": [asdict(c) for c in self.checks]}


def _check(name: str, value: float, limit: float, ok: bool, what: str) -> Check:
    verdict = "within" if ok else "VIOLATES"
    return Check(name, bool(ok), float(value), float(limit), f"{what} = {value:.4g} {verdict} limit {limit:.4g}")


def reference_checks(reference: dict | None, mode: str, ndcg_key: str = "ndcg_at_10") -> list[Check]:
    """The optimised network vs the LambdaMART reference, one check per metric (NDCG@k, AUC).

    `reference` is the gate's reference section: its "bootstrap" holds, per metric, the paired bootstrap
    interval [low, high] of int8 - reference. The network passes unless it is significantly worse: the
    interval's upper end must be above zero. `mode` "fail" blocks the blessing, "warn" reports a failure as a
    warning that does not block, "off" (or no reference: disabled) checks nothing. A reference that should
    be there but is missing ({"error": ...}) fails (or warns) too: a silently skipped check is no check."""
    if mode == "off" or reference is None:
        return []
    warn = mode == "warn"
    if "error" in reference:
        return [Check("reference_present", warn, float("nan"), 0.0,
                      f"LambdaMART reference missing: {reference['error']}" + (" (warning only)" if warn else ""),
                      warning=warn)]
    boot = reference["bootstrap"]
    checks = []
    for metric in (ndcg_key, "auc"):
        if metric not in boot:
            continue
        b = boot[metric]
        ok = bool(b["high"] > 0)
        verdict = "not significantly worse than" if ok else "significantly WORSE than"
        message = (f"int8 {metric} - LambdaMART reference = {b['diff']:+.4f}, {boot['level']:.0%} interval "
                   f"[{b['low']:+.4f}, {b['high']:+.4f}]: {verdict} the reference")
        if not ok and warn:
            message += " (warning only: blessing.reference_check is 'warn')"
        checks.append(Check(f"int8_vs_reference_{metric}", ok or warn, float(b["high"]), 0.0, message,
                            warning=not ok and warn))
    return checks


def bless(artefacts: dict[str, dict], golden_max_diff: dict[str, float], config: BlessingConfig,
          ndcg_key: str = "ndcg_at_10", reference: dict | None = None,
          test_split_max_diff: dict[str, float] | None = None) -> Blessing:
    """Apply every check. `artefacts` maps baseline_savedmodel / optimized_savedmodel / int8_tflite (and onnx,
    when exported) to their metrics (auc, ndcg, gzip_bytes, latency_ms); `golden_max_diff` maps a serving backend to the
    largest |serving score - evaluator score| over the golden requests; `reference` is the gate's LambdaMART
    reference section (see `reference_checks`; None: no reference check); `test_split_max_diff` (when given) the
    largest |served - evaluator| difference over the whole test split scored through the served composition
    (shoprank.evaluation.gate.test_split_check), with the golden tolerance."""
    base = artefacts["baseline_savedmodel"]
    checks = [_check("baseline_quality_floor", base["auc"], config.min_auc, base["auc"] >= config.min_auc,
                     "baseline AUC (floor)")]
    for name in OPTIMISED:
        a = artefacts[name]
        auc_drop = base["auc"] - a["auc"]
        ndcg_drop = base[ndcg_key] - a[ndcg_key]
        checks += [
            _check(f"{name}_auc_floor", a["auc"], config.min_auc, a["auc"] >= config.min_auc, f"{name} AUC (floor)"),
            _check(f"{name}_auc_drop", auc_drop, config.max_auc_drop, auc_drop <= config.max_auc_drop,
                   f"{name} AUC drop vs baseline"),
            _check(f"{name}_ndcg_drop", ndcg_drop, config.max_ndcg_drop, ndcg_drop <= config.max_ndcg_drop,
                   f"{name} NDCG@10 drop vs baseline"),
        ]
    tfl = artefacts["int8_tflite"]
    checks += [
        _check("int8_size", tfl["gzip_bytes"], config.max_tflite_gzip_bytes,
               tfl["gzip_bytes"] <= config.max_tflite_gzip_bytes, "int8 model gzip bytes"),
        _check("int8_latency_b256", tfl["latency_ms"]["256"], config.max_tflite_latency_ms_b256,
               tfl["latency_ms"]["256"] <= config.max_tflite_latency_ms_b256, "int8 latency at batch 256 (ms)"),
    ]
    if "onnx" in artefacts:  # exported for Triton: it must score as the SavedModel it was converted from
        diff = artefacts["onnx"]["max_abs_diff_vs_optimized_savedmodel"]
        checks.append(_check("onnx_matches_savedmodel", diff, config.onnx_tolerance, diff <= config.onnx_tolerance,
                             "ONNX export max |score - optimised SavedModel score| on the test set"))
    if not golden_max_diff:
        checks.append(Check("serving_path", False, float("nan"), config.golden_tolerance,
                            "no golden requests were scored through the serving path"))
    for backend, diff in sorted(golden_max_diff.items()):
        checks.append(_check(f"serving_path_{backend}", diff, config.golden_tolerance,
                             diff <= config.golden_tolerance,
                             f"{backend} serving path max |score - evaluator score| on golden requests"))
    for backend, diff in sorted((test_split_max_diff or {}).items()):
        checks.append(_check(f"served_test_split_{backend}", diff, config.golden_tolerance,
                             diff <= config.golden_tolerance,
                             f"{backend} served composition max |score - evaluator score| on the whole test split"))
    checks += reference_checks(reference, config.reference_check, ndcg_key)
    return Blessing(all(c.passed for c in checks), checks)
