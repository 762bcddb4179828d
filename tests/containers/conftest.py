"""Fixtures of the container tests (`make test-containers`): the tool, the two images, and one tiny pipeline run per
kfp.local runner.

The images are built beforehand by `make images` (`.ci/run` does it): a missing image, a missing tool or a
container that cannot start is a failure that names the command to run, never a skip. Numbers measured along the
way (start-up to ready, run times) are printed at the end of the session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from deploy.images import LOCAL_COMPONENT_IMAGE, LOCAL_SERVING_IMAGE, ImageError, Tool, find_tool, image_exists

REPO = Path(__file__).resolve().parents[2]
COMPONENT_IMAGE = os.environ.get("SHOPRANK_COMPONENT_IMAGE") or LOCAL_COMPONENT_IMAGE
SERVING_IMAGE = os.environ.get("SHOPRANK_SERVING_IMAGE") or LOCAL_SERVING_IMAGE
MEASURED: dict[str, Any] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.container)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MEASURED:
        terminalreporter.section("container measurements")
        for key, value in MEASURED.items():
            terminalreporter.write_line(f"{key}: {value}")


@pytest.fixture(scope="session")
def measured() -> dict[str, Any]:
    return MEASURED


@pytest.fixture(scope="session")
def tool() -> Tool:
    try:
        found = find_tool(os.environ.get("CONTAINER_TOOL", ""))
    except ImageError as e:
        pytest.fail(str(e))
    if found.name == "buildah":
        pytest.fail("the container tests run containers: they need podman or Docker (CONTAINER_TOOL=podman)")
    return found


def _image(tool: Tool, ref: str) -> str:
    if not image_exists(tool, ref):
        pytest.fail(f"image {ref} not found in {tool.name}'s store: build it first with "
                    f"`make base-image && make images CONTAINER_TOOL={tool.name}`")
    return ref


@pytest.fixture(scope="session")
def component_image(tool: Tool) -> str:
    return _image(tool, COMPONENT_IMAGE)


@pytest.fixture(scope="session")
def serving_image(tool: Tool) -> str:
    return _image(tool, SERVING_IMAGE)


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory, tool: Tool, component_image: str) -> dict[str, dict[str, Any]]:
    """The tiny pipeline once per runner, each as `make run SCALE=tiny RUNNER=...` runs it: a fresh process (the
    component image is fixed when the components are defined), PYTHONHASHSEED=0 as the Makefile exports."""
    base = tmp_path_factory.mktemp("runs")
    out: dict[str, dict[str, Any]] = {}
    for runner in ("subprocess", "container"):
        cmd = [sys.executable, "-m", "pipelines.run_local", "--preset", "tiny", "--runs-dir", str(base / runner),
               "--run-id", "run", "--runner", runner, "--component-image", component_image,
               "--container-tool", tool.name]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True,
                              text=True, timeout=1800)
        seconds = time.monotonic() - t0
        if proc.returncode != 0:
            pytest.fail(f"tiny run with runner {runner} failed (exit {proc.returncode}):\n"
                        f"{(proc.stdout + proc.stderr)[-6000:]}")
        run_dir = base / runner / "run"
        MEASURED[f"tiny pipeline run, {runner} runner (s)"] = round(seconds, 1)
        out[runner] = {"dir": run_dir, "log": proc.stdout + proc.stderr, "seconds": seconds,
                       "summary": json.loads((run_dir / "summary.json").read_text())}
    return out


@pytest.fixture(scope="session")
def bundle(runs: dict[str, dict[str, Any]]) -> Path:
    """The bundle the containerised promote step published: what the serving image then serves."""
    summary = runs["container"]["summary"]
    if not summary.get("bundle_dir"):
        pytest.fail(f"the container run promoted no bundle: {summary.get('blessing_reasons')}")
    return Path(summary["bundle_dir"])


@pytest.fixture(scope="session")
def golden(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The golden ranking requests the preprocess step wrote (query, user, history, candidates)."""
    found = sorted((runs["container"]["dir"] / "artifacts").rglob("golden_requests.json"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text())
