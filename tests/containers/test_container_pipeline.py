"""`make run RUNNER=container`: every step in the component image (kfp.local's DockerRunner against podman's Docker
API or a Docker engine), compared at the tiny preset with the same pipeline run by the subprocess runner.

What "the same" means here, measured by running the subprocess runner twice: the same artefact files (paths under
the run's artefact tree), data and features byte-equal, every quality metric and blessing decision equal, the
same promoted bundle version (content-addressed over the int8 model and the transform) with byte-equal model and
transform files. Two things differ between any two runs, whatever the runner, and are compared by what they mean
instead: measured latencies (and ratios of them), and the serialisations that embed run-specific bytes
(SavedModel's fingerprint.pb, a few bytes of the SavedModel and ONNX sizes, tf2onnx's ONNX file): the ONNX files
are compared by their scores. Evidence that the steps ran in the image as its non-root user: every file they
wrote is owned by uid 1000, which no host process here is.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from shoprank.scoring.ranker import Ranker

IMAGE_UID = 1000
# Summary fields that differ between any two runs: wall-clock measurements and host paths.
VOLATILE = {"latency_ms", "stages", "wall_seconds", "run_id", "bundle_dir", "model_dir", "tflite_path", "seconds",
            "int8_b256_faster_x", "peak_rss_mib", "peak_rss_mib_at_start", "seconds_by_part", "comparison_seconds",
            "gate_comparison_seconds", "total_seconds", "share_of_run_wall_time", "samples_per_second"}
# Keys of the steps' JSON reports that hold measurements of the machine, not results.
MEASUREMENTS = {"timings", "peak_rss_mib"}
# Files of a bundle whose bytes differ between any two runs (see the module docstring).
RUN_SPECIFIC = {"summary.json", "manifest.json", "saved_model/fingerprint.pb", "triton/shoprank-ranker/1/model.onnx"}


def artefact_files(run_dir: Path) -> dict[str, Path]:
    """Files under artifacts/<pipeline run>/, keyed by their path below the (timestamped) pipeline-run folder."""
    roots = [p for p in (run_dir / "artifacts").iterdir() if p.is_dir()]
    assert len(roots) == 1, roots
    return {str(p.relative_to(roots[0])): p for p in roots[0].rglob("*") if p.is_file()}


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Equal summaries: exact for metrics and decisions; sizes and size ratios within 1% (serialisation bytes);
    latency figures in blessing reasons masked."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) - VOLATILE == set(b) - VOLATILE, path
        for k in set(a) - VOLATILE:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, str):
        mask = re.compile(r"(latency[^=]*= )[0-9.e+-]+")
        assert mask.sub(r"\1<ms>", a) == mask.sub(r"\1<ms>", b), path
    elif isinstance(a, bool) or a is None:
        assert a == b, path
    elif path.startswith(("/sizes/", "/ratios/")):
        assert math.isclose(a, b, rel_tol=0.01), (path, a, b)
    else:
        assert a == b or (math.isnan(a) and math.isnan(b)), (path, a, b)


def test_both_runners_bless_and_promote(runs, measured):
    for runner, run in runs.items():
        summary = run["summary"]
        measured[f"stage seconds, {runner} runner"] = {s["stage"]: s["seconds"] for s in summary["stages"]}
        assert summary["blessed"], (runner, summary["blessing_reasons"])
        assert summary["bundle_dir"] and Path(summary["bundle_dir"]).is_dir(), runner
        assert {s["stage"] for s in summary["stages"]} == {"ingest", "preprocess", "train", "evaluate", "optimize",
                                                           "validate", "promote"}, (runner, summary["stages"])


def test_steps_ran_in_the_image_as_its_non_root_user(runs):
    """Files written by the steps belong to the image's user (1000); the subprocess runner's to the host user."""
    host_uid = os.geteuid()
    assert host_uid != IMAGE_UID, "run the container tests as a user other than 1000, or this proves nothing"
    container = runs["container"]["dir"]
    written = list(artefact_files(container).values()) + [p for p in (container / "promoted").rglob("*")]
    written.append(container / "stages.jsonl")  # the telemetry the steps append to
    owners = {p.stat().st_uid for p in written}
    assert owners == {IMAGE_UID}, {str(p): p.stat().st_uid for p in written if p.stat().st_uid != IMAGE_UID}
    subprocess_owners = {p.stat().st_uid for p in artefact_files(runs["subprocess"]["dir"]).values()}
    assert subprocess_owners == {host_uid}


def without_measurements(value: Any) -> Any:
    """A JSON report without what the machine measured while writing it (timings, memory, throughput)."""
    if isinstance(value, dict):
        return {k: without_measurements(v) for k, v in value.items() if k not in MEASUREMENTS
                and not k.endswith(("_per_second", "seconds"))}
    if isinstance(value, list):
        return [without_measurements(v) for v in value]
    return value


def test_same_artefact_files(runs):
    sub, con = artefact_files(runs["subprocess"]["dir"]), artefact_files(runs["container"]["dir"])
    assert sorted(sub) == sorted(con)
    # Data and features are deterministic: byte-equal files, JSON reports equal but for their measurements.
    # (Model files are compared through the promoted bundle.)
    compared = 0
    for rel in sorted(sub):
        if not rel.startswith(("ingest/", "preprocess/")) or rel.endswith("executor_output.json"):
            continue
        if rel.endswith(".json"):
            a, b = (without_measurements(json.loads(p.read_text())) for p in (sub[rel], con[rel]))
            assert a == b, rel
        else:
            assert sub[rel].read_bytes() == con[rel].read_bytes(), rel
        compared += 1
    assert compared > 20


def test_same_model_files(runs):
    """Training, pruning, int8 conversion and the towers make the same bytes in the image as on the host (seeded;
    zip entries without clock times). Not compared: SavedModel's fingerprint (a random UUID by design), the JSON
    reports (timings), and the ONNX export: tf2onnx numbers its graph nodes in an order that differs between the
    two (same operators, a few reshape constants renamed and reordered; every run reports its largest score
    difference to the SavedModel's: 1.2e-07 in the tiny run)."""
    sub, con = artefact_files(runs["subprocess"]["dir"]), artefact_files(runs["container"]["dir"])
    models = [rel for rel in sorted(sub) if rel.startswith(("train/model/", "optimize/optimized_model/"))
              and not rel.endswith(("fingerprint.pb", ".json", ".onnx"))]
    assert any(r.endswith("head.npz") for r in models) and any(r.endswith(".tflite") for r in models), models
    assert [r for r in models if sub[r].read_bytes() != con[r].read_bytes()] == []


def test_same_summary(runs):
    assert_same(runs["subprocess"]["summary"], runs["container"]["summary"])


def test_same_promoted_bundle(runs, golden):
    sub, con = (Path(runs[r]["summary"]["bundle_dir"]) for r in ("subprocess", "container"))
    assert sub.name == con.name, "the content-addressed bundle versions differ: the models differ"
    files = {r: sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
             for r, b in (("subprocess", sub), ("container", con))}
    assert files["subprocess"] == files["container"]
    for rel in files["subprocess"]:
        if rel not in RUN_SPECIFIC:
            assert (sub / rel).read_bytes() == (con / rel).read_bytes(), rel
    manifests = [json.loads((b / "manifest.json").read_text()) for b in (sub, con)]
    for m in manifests:
        m.pop("created")
    # The total bytes include the ONNX file, whose size moves by tens of bytes between exports.
    assert math.isclose(manifests[0].pop("bytes"), manifests[1].pop("bytes"), rel_tol=1e-3)
    assert manifests[0] == manifests[1]
    for backend in ("onnx", "tflite"):  # the ONNX files differ in bytes, not in what they compute
        scores = [Ranker.load(b, backend).rank([g["query"] for g in golden], [g["history"] for g in golden],
                                               [g["candidates"] for g in golden]) for b in (sub, con)]
        for x, y in zip(*scores, strict=True):
            np.testing.assert_allclose(x.scores, y.scores, atol=1e-6)
            assert x.ranking == y.ranking


def test_same_report(runs):
    """The validation report: the same verdict, artefact quality columns, checks and results, and plots."""
    def content(html: str) -> tuple:
        rows = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", html)]
        artefacts = [r[:3] for r in rows if r and r[0] in ("baseline_savedmodel", "optimized_savedmodel",
                                                           "int8_tflite", "onnx")]
        mask = re.compile(r"(latency[^=]*= )[0-9.e+-]+")
        checks = [(r[0], r[1], mask.sub(r"\1<ms>", r[2])) for r in rows if len(r) == 3 and r[1] in ("pass", "fail")]
        return re.search(r"<title>(.*?)</title>", html).group(1), artefacts, checks, html.count("data:image/png")

    reports = {r: content((runs[r]["dir"] / "report.html").read_text()) for r in runs}
    assert reports["subprocess"][3] >= 4 and reports["subprocess"][1] and reports["subprocess"][2]
    assert reports["subprocess"] == reports["container"]


def test_a_failing_step_fails_the_run(tmp_path, tool, component_image):
    """A step that fails in its container fails the run, named (kfp.local alone reported it as SUCCESS with
    podman, which removes the container before its status is read: pipelines.run_local._run_container)."""
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "pipelines.run_local", "--preset", "tiny", "--data",
                           str(tmp_path / "empty"), "--runs-dir", str(tmp_path / "runs"), "--runner", "container",
                           "--component-image", component_image, "--container-tool", tool.name],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "lacks ['catalogue.parquet'" in out  # the step's own error, from inside the container
    assert re.search(r"Task \S*'ingest'\S* finished with status \S*FAILURE", out), out[-3000:]
    assert not re.search(r"Task \S*'ingest'\S* finished with status \S*SUCCESS", out)
    assert "shoprank pipeline failed" in out
