"""Shared fixtures: one tiny synthetic shop, preprocessed and trained once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shoprank.config import resolve_config

# tests/cluster/ needs a Kubernetes control plane: `make test-cluster` runs it (and sets this variable).
collect_ignore = [] if os.environ.get("SHOPRANK_CLUSTER_TESTS") == "1" else ["cluster"]
# tests/containers/ needs the built images and podman or Docker: `make test-containers` runs it (and sets this).
if os.environ.get("SHOPRANK_CONTAINER_TESTS") != "1":
    collect_ignore.append("containers")

NOW = 1_800_000_000  # a fixed "now" so timestamp checks do not depend on the wall clock


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="session")
def tiny_config():
    return resolve_config("tiny")


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory, tiny_config) -> Path:
    from shoprank.data.synthetic import generate

    out = tmp_path_factory.mktemp("raw")
    generate(tiny_config.data, out, progress=quiet)
    return out


@pytest.fixture(scope="session")
def tiny_features(tmp_path_factory, tiny_raw, tiny_config) -> tuple[Path, Path, dict]:
    from shoprank.features.preprocess import preprocess

    base = tmp_path_factory.mktemp("features")
    report = preprocess(tiny_raw, base / "features", base / "transform", tiny_config, progress=quiet, now=NOW)
    return base / "features", base / "transform", report


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_features, tiny_config) -> Path:
    from shoprank.modeling.train import train

    features, transform, _ = tiny_features
    out = tmp_path_factory.mktemp("model") / "model"
    train(features, transform, out, tiny_config, progress=quiet)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_model, tiny_features, tiny_config) -> dict:
    """A promoted serving bundle, as `make run` publishes it: optimize -> build_item_tables -> compare_artefacts
    (which writes the evaluator's test scores, scores_<artefact>.npy, next to the optimised model) -> publish_bundle.
    Returns bundle_dir, optimized_dir (with the scores), features_dir (golden_requests.json, test split)."""
    import json

    from shoprank.evaluation.compare import compare_artefacts
    from shoprank.modeling.optimize import optimize
    from shoprank.release.bundle import publish_bundle
    from shoprank.scoring.item_tables import build_item_tables

    features, transform, _ = tiny_features
    base = tmp_path_factory.mktemp("bundle")
    optimized = base / "optimized"
    optimize(tiny_model, features, optimized, tiny_config, progress=quiet)
    build_item_tables(transform, optimized / "items", optimized / "towers")
    artefacts = compare_artefacts(tiny_model, optimized, features, tiny_config, progress=quiet)
    summary = base / "summary.json"
    summary.write_text(json.dumps({"preset": tiny_config.preset, "artefacts": artefacts}))
    record = publish_bundle(optimized, transform, summary, str(base / "models"), "shoprank-ranker")
    return {"bundle_dir": Path(record["bundle_dir"]), "optimized_dir": optimized, "features_dir": features}
