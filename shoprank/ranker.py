"""Ranking requests end to end: catalogue look-up -> the feature transform -> a scorer.

This is the code path the model server runs; the blessing gate runs it too on golden requests, so a
model is only blessed if the serving path reproduces the evaluator's scores.

Bundle layout (what promotion publishes and serving loads):
    <bundle>/saved_model/            optimised SavedModel (GPU path)
    <bundle>/model.tflite            full-int8 model (CPU default)
    <bundle>/transform/transform.json, <bundle>/transform/catalogue.parquet
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shoprank.inference import Scorer, load_scorer
from shoprank.transform import ITEM_INPUTS, REQUEST_INPUTS, Catalogue, FeatureTransform, RawBatch

BACKENDS = {"tflite": "model.tflite", "savedmodel": "saved_model"}


@dataclass
class RankedList:
    scores: np.ndarray  # float32, one per candidate, in request order
    ranking: list[str]  # candidate ids, best first
    unknown_items: list[str]  # candidates the catalogue or vocabulary does not know (OOV buckets)


class Ranker:
    def __init__(self, transform: FeatureTransform, catalogue: Catalogue, scorer: Scorer):
        self.transform, self.catalogue, self.scorer = transform, catalogue, scorer
        # Candidate-side tensors of every catalogue item, computed once by the same transform: a request
        # then only transforms its query and history and gathers its candidates' rows.
        self._item_tensors = self._encode_catalogue()
        vocab = transform.vocabs["item"]
        self._item_known = np.fromiter((vocab.known(v) for v in catalogue.item_id), bool, len(catalogue))

    def _encode_catalogue(self) -> dict[str, np.ndarray]:
        c = self.catalogue
        batch = RawBatch(queries=[""], histories=[[]], history_categories=[[]], history_brands=[[]],
                         row_request=np.zeros(len(c), np.int64), item_id=list(c.item_id), title=c.title,
                         category=c.category, brand=c.brand, price=c.price)
        tensors = self.transform.transform(batch)
        return {k: tensors[k] for k in ITEM_INPUTS}

    @classmethod
    def from_paths(cls, transform_dir: str | Path, model_path: str | Path, num_threads: int | None = None
                   ) -> Ranker:
        t = Path(transform_dir)
        return cls(FeatureTransform.load(t), Catalogue.load(t / "catalogue.parquet"),
                   load_scorer(model_path, num_threads))

    @classmethod
    def load(cls, bundle_dir: str | Path, backend: str = "tflite", num_threads: int | None = None) -> Ranker:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend '{backend}', choose one of {sorted(BACKENDS)}")
        b = Path(bundle_dir)
        return cls.from_paths(b / "transform", b / BACKENDS[backend], num_threads)

    def features(self, queries: Sequence[str], histories: Sequence[Sequence[str]],
                 candidates: Sequence[Sequence[str]]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Model tensors for a batch of requests and a mask of candidates unknown to the model."""
        flat = [c for cands in candidates for c in cands]
        rows = self.catalogue.rows(flat)
        if (rows < 0).any():
            return self._features_full(queries, histories, candidates)
        # Request-side tensors: one placeholder row per request through the same transform.
        req_batch, _ = self.catalogue.batch(queries, histories, [[""] for _ in candidates])
        req = self.transform.transform(req_batch)
        rr = np.repeat(np.arange(len(candidates)), [len(c) for c in candidates])
        tensors = {k: req[k][rr] for k in REQUEST_INPUTS} | {k: v[rows] for k, v in self._item_tensors.items()}
        return tensors, ~self._item_known[rows]

    def _features_full(self, queries, histories, candidates) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Every field through the transform (some candidates are not in the catalogue)."""
        batch, unknown = self.catalogue.batch(queries, histories, candidates)
        tensors = self.transform.transform(batch)
        item_vocab = self.transform.vocabs["item"]
        unknown = unknown | ~np.fromiter((item_vocab.known(v) for v in batch.item_id), bool, len(batch.item_id))
        return tensors, unknown

    def rank(self, queries: Sequence[str], histories: Sequence[Sequence[str]],
             candidates: Sequence[Sequence[str]]) -> list[RankedList]:
        tensors, unknown = self.features(queries, histories, candidates)
        scores = self.scorer.score(tensors) if len(unknown) else np.zeros(0, np.float32)
        return split_ranked(scores, unknown, candidates)


def split_ranked(scores: np.ndarray, unknown: np.ndarray, candidates: Sequence[Sequence[str]]) -> list[RankedList]:
    """Cut flat per-row scores back into one ranked list per request."""
    out, lo = [], 0
    for cands in candidates:
        hi = lo + len(cands)
        s = scores[lo:hi]
        order = np.argsort(-s, kind="stable")
        out.append(RankedList(s, [cands[i] for i in order], [c for c, u in zip(cands, unknown[lo:hi]) if u]))
        lo = hi
    return out
