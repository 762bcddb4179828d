"""Shared fixtures: one tiny synthetic shop, preprocessed and trained once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoprank.config import resolve_config

NOW = 1_800_000_000  # a fixed "now" so timestamp checks do not depend on the wall clock


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="session")
def tiny_config():
    return resolve_config("tiny")


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory, tiny_config) -> Path:
    from shoprank.data import generate

    out = tmp_path_factory.mktemp("raw")
    generate(tiny_config.data, out, progress=quiet)
    return out


@pytest.fixture(scope="session")
def tiny_features(tmp_path_factory, tiny_raw, tiny_config) -> tuple[Path, Path, dict]:
    from shoprank.preprocess import preprocess

    base = tmp_path_factory.mktemp("features")
    report = preprocess(tiny_raw, base / "features", base / "transform", tiny_config, progress=quiet, now=NOW)
    return base / "features", base / "transform", report


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_features, tiny_config) -> Path:
    from shoprank.train import train

    features, transform, _ = tiny_features
    out = tmp_path_factory.mktemp("model") / "model"
    train(features, transform, out, tiny_config, progress=quiet)
    return out
