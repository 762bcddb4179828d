"""Ranking requests end to end: catalogue look-up -> the feature transform -> a scorer.

This is the code path the model server runs; the blessing gate runs it too on golden requests, so a
model is only blessed if the serving path reproduces the evaluator's scores.

The bundle's layout is in shoprank.layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from shoprank.features.transform import ITEM_INPUTS, Catalogue, FeatureTransform, RawBatch
from shoprank.layout import (
    CATALOGUE_FILE,
    MODEL_FILE,
    SAVED_MODEL_DIR,
    TFLITE_FILE,
    TRANSFORM_DIR,
    TRITON_DIR,
    TRITON_VERSION,
)
from shoprank.scoring.backends import Scorer, load_scorer

__all__ = ["BACKENDS", "RankedList", "Ranker", "split_ranked"]

# Backend -> its model in a bundle. onnx: the ONNX export in the bundle's Triton model repository
# (triton/<model name>/1/model.onnx), through onnxruntime: the same file Triton serves.
BACKENDS = {"tflite": TFLITE_FILE, "savedmodel": SAVED_MODEL_DIR, "onnx": TRITON_DIR}


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
        self._item_unknown = ~np.fromiter((vocab.known(v) for v in catalogue.item_id), bool, len(catalogue))
        # What the transform gives a history item that is in the catalogue, by catalogue row: its item, category
        # and brand indices (the same look-ups as the candidate columns above), so a request's history is a gather.
        t = self._item_tensors
        self._history_of_row = np.ascontiguousarray(np.stack([t["item_id"], t["category"], t["brand"]], axis=1))

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
        return cls(FeatureTransform.load(t), Catalogue.load(t / CATALOGUE_FILE),
                   load_scorer(model_path, num_threads))

    @classmethod
    def load(cls, bundle_dir: str | Path, backend: str = "tflite", num_threads: int | None = None) -> Ranker:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend '{backend}', choose one of {sorted(BACKENDS)}")
        b = Path(bundle_dir)
        model = b / BACKENDS[backend]
        if backend == "onnx":
            found = sorted(model.glob(f"*/{TRITON_VERSION}/{MODEL_FILE}"))
            if len(found) != 1:
                raise FileNotFoundError(f"{model} should hold one Triton model with {TRITON_VERSION}/{MODEL_FILE}, "
                                        f"found {[str(f.relative_to(b)) for f in found]} (bundles without the "
                                        "ONNX export have none)")
            model = found[0]
        return cls.from_paths(b / TRANSFORM_DIR, model, num_threads)

    def _histories(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """history_items, history_categories, history_brands of R requests as one (3, R, L) array: the last L
        ids, right-aligned, 0-padded (FeatureTransform._sequence), looked up through the catalogue rows."""
        length = self.transform.config.history_len
        out = np.zeros((3, len(histories), length), np.int32)
        recent = [h[-length:] for h in histories]
        lens = np.fromiter(map(len, recent), np.int64, len(recent))
        m = int(lens.sum())
        if not m:
            return out
        flat = list(chain.from_iterable(recent))
        rows = self.catalogue.rows(flat)
        vals = self._history_of_row[rows] if len(self.catalogue) else np.zeros((m, 3), np.int32)
        missing = np.flatnonzero(rows < 0)
        if missing.size:  # not in the catalogue: the item's own look-up (OOV bucket), no category or brand
            lookup = self.transform.vocabs["item"].lookup
            vals[missing] = [(lookup(flat[j]), 0, 0) for j in missing.tolist()]
        ends = np.cumsum(lens)
        req = np.repeat(np.arange(len(recent)), lens)
        col = np.arange(m) - np.repeat(ends, lens) + length
        out[:, req, col] = vals.T
        return out

    def features(self, queries: Sequence[str], histories: Sequence[Sequence[str]],
                 candidates: Sequence[Sequence[str]]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Model tensors for a batch of requests and a mask of candidates unknown to the model.

        The same tensors as `FeatureTransform.transform` on the whole batch (tests/scoring/test_ranker.py checks it),
        computed per request and per catalogue row instead of per candidate: the candidates' columns are rows
        of the precomputed catalogue tensors, the query and history columns are computed once per request and
        repeated over its candidates."""
        counts = [len(c) for c in candidates]
        rows = self.catalogue.rows(chain.from_iterable(candidates))
        if rows.size and rows.min() < 0:
            return self._features_full(queries, histories, candidates)
        n = len(rows)
        ql = self.transform.config.query_len
        tokens = self.transform.tokens  # the transform's own tokeniser and its (bounded) cache
        q = np.stack([tokens(s, ql) for s in queries]) if len(queries) else np.zeros((0, ql), np.int32)
        hist = self._histories(histories)
        rr = np.repeat(np.arange(len(counts)), counts)  # row -> request
        tensors = {"query_tokens": np.take(q, rr, axis=0), "history_items": np.take(hist[0], rr, axis=0),
                   "history_categories": np.take(hist[1], rr, axis=0), "history_brands": np.take(hist[2], rr, axis=0)}
        for k, v in self._item_tensors.items():
            tensors[k] = np.take(v, rows, axis=0) if n else v[:0]
        return tensors, np.take(self._item_unknown, rows) if n else np.zeros(0, bool)

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
    """Cut flat per-row scores back into one ranked list per request (a stable sort on the negated scores:
    ties keep request order). Requests of one size, the usual batch, are sorted in one call."""
    counts = [len(c) for c in candidates]
    same = bool(counts) and counts[0] > 0 and counts.count(counts[0]) == len(counts)
    orders = np.argsort(-scores.reshape(len(counts), counts[0]), axis=1, kind="stable") if same else None
    any_unknown = bool(unknown.any())
    out, lo = [], 0
    for i, cands in enumerate(candidates):
        hi = lo + counts[i]
        s = scores[lo:hi]
        order = orders[i] if same else np.argsort(-s, kind="stable")
        unk = [c for c, u in zip(cands, unknown[lo:hi].tolist()) if u] if any_unknown else []
        out.append(RankedList(s, [cands[j] for j in order.tolist()], unk))
        lo = hi
    return out
