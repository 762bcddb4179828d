"""`make serve`'s bundle (serving.latest): the latest run's bundle, or a message that says why there is none,
instead of the KeyError an unblessed run's summary used to cause. Real run folders as `make run` writes them
(summary.json, the `latest` symlink); `make serve` itself runs `python -m serving.latest`, run here too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serving.latest import NoBundle, latest_bundle

ROOT = Path(__file__).resolve().parents[2]


def make_run(runs: Path, run_id: str, summary: dict, latest: bool = True) -> Path:
    run = runs / run_id
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"run_id": run_id, **summary}))
    if latest:
        link = runs / "latest"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(run_id)
    return run


def test_the_latest_blessed_runs_bundle(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    make_run(tmp_path / "runs", "20260101-000000", {"blessed": True, "bundle_dir": str(bundle)})
    assert latest_bundle(tmp_path / "runs") == bundle


def test_an_unblessed_run_says_why_and_names_an_earlier_bundle(tmp_path):
    runs, bundle = tmp_path / "runs", tmp_path / "bundle"
    bundle.mkdir()
    make_run(runs, "20260101-000000", {"blessed": True, "bundle_dir": str(bundle)})
    make_run(runs, "20260102-000000", {"blessed": False, "blessing_reasons": [
        "int8_tflite AUC drop vs baseline = 0.01338 VIOLATES limit 0.003"]})  # no bundle_dir key at all
    with pytest.raises(NoBundle) as err:
        latest_bundle(runs)
    message = str(err.value)
    assert "20260102-000000" in message and "did not bless" in message and "VIOLATES limit 0.003" in message
    assert f"make serve SERVE_BUNDLE={bundle}" in message


def test_no_run_and_the_command_make_serve_runs(tmp_path):
    with pytest.raises(NoBundle, match="run 'make run' first"):
        latest_bundle(tmp_path / "nothing")
    make_run(tmp_path / "runs", "20260102-000000", {"blessed": False})
    out = subprocess.run([sys.executable, "-m", "serving.latest", str(tmp_path / "runs")], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stdout == ""
    assert "make serve: the latest run (20260102-000000) has nothing to serve" in out.stderr
    assert "Traceback" not in out.stderr and "KeyError" not in out.stderr
