"""The features directory that preprocessing writes and every later stage reads: one folder per split.

    <split>/<input>.npy    model inputs (int32), one row per impression, rows of a request contiguous
    <split>/<column>.npy   clicked, carted, purchased, gain, oracle, position, request, top_category
                           (position: the 0-based slot the row was shown in, -1 where unknown; absent from
                           features directories written before positions were kept)
    <split>/rows.parquet   request_id and item_id of every row
    <split>/meta.json      row count, request count, top-category names

Readers (training, evaluation, the gate) import this small module, not the preprocessing writer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shoprank.features.transform import INPUTS

__all__ = ["LABEL_COLUMNS", "SPLITS", "SplitData", "load_split"]

SPLITS = ("train", "validation", "test")
LABEL_COLUMNS = ("clicked", "carted", "purchased")


@dataclass
class SplitData:
    """Memory-mapped access to one split of the features directory."""

    directory: Path

    @property
    def meta(self) -> dict:
        return json.loads((self.directory / "meta.json").read_text())

    @property
    def rows(self) -> int:
        return int(self.meta["rows"])

    def column(self, name: str) -> np.ndarray:
        return np.load(self.directory / f"{name}.npy", mmap_mode="r")

    def positions(self) -> np.ndarray | None:
        """Where each row was shown (0 = top, -1 where that row's position is unknown), or None when no row
        of the split has a known position (real data without positions, recommendation targets, or a features
        directory written before positions were kept): position-aware steps then say so and run
        position-blind."""
        path = self.directory / "position.npy"
        if not path.exists():
            return None
        pos = np.asarray(np.load(path, mmap_mode="r"))
        return pos if (pos >= 0).any() else None

    def features(self, rows: slice | np.ndarray | None = None) -> dict[str, np.ndarray]:
        cols = {name: self.column(name) for name in INPUTS}
        return {k: np.asarray(v if rows is None else v[rows]) for k, v in cols.items()}


def load_split(features_dir: str | Path, split: str) -> SplitData:
    """The split `split` ("train", "validation" or "test") of a features directory (memory-mapped)."""
    return SplitData(Path(features_dir) / split)
