"""Ranking requests end to end: item-table look-up + the feature transform -> a scorer -> ranked lists.

This is the code path the model server runs; the blessing gate runs it too, on the whole test split (request
tensors once per request, items by id through the tables: `score_rows`) and on golden requests (raw text and ids:
`rank`), so a model is only blessed if the serving path reproduces the evaluator's scores.

The bundle's layout is in shoprank.layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Literal

import numpy as np

from shoprank.features.affinity import AFFINITY_INPUT, AFFINITY_TARGETS
from shoprank.features.cache import ByteBoundedCache, arrays_cost
from shoprank.features.transform import (
    AFFINITY_CACHE_MAX_TARGETS,
    REQUEST_INPUTS,
    TOKEN_CACHE_ENTRY_OVERHEAD,
    FeatureTransform,
)
from shoprank.layout import (
    ITEMS_DIR,
    MODEL_FILE,
    SAVED_MODEL_DIR,
    TOWERS_DIR,
    TRANSFORM_DIR,
    TRITON_DIR,
    TRITON_VERSION,
)
from shoprank.scoring.backends import Scorer, load_scorer
from shoprank.scoring.item_tables import ItemTables

__all__ = ["BACKENDS", "UNKNOWN_POLICIES", "RankedList", "Ranker", "UnknownPolicy", "split_ranked"]

# Backend -> its model in a bundle. tflite: the served composition (int8 request tower, item vectors from the
# tables, float pair head); savedmodel: the optimised SavedModel (the whole graph: the GPU path); onnx: the ONNX
# export in the bundle's Triton model repository (triton/<model name>/1/model.onnx), through onnxruntime: the same
# file Triton serves.
BACKENDS = {"tflite": TOWERS_DIR, "savedmodel": SAVED_MODEL_DIR, "onnx": TRITON_DIR}

# What happens to candidates the model does not know (not in the catalogue, or not in the item vocabulary):
#   "last"  (default) they rank after every known candidate, in request order, and their score is 0.0, so that
#           the scores sort like the ranking (a model score is never 0.0: it is a sigmoid);
#   "score" they are ranked by the model's score like any other candidate (an unknown id gets its OOV bucket's
#           embedding and no title, category, brand or price: issue 11 saw one rank first).
# Either way they are listed in the response's `unknown_items` parameter. The server's --unknown_candidates.
UnknownPolicy = Literal["last", "score"]
UNKNOWN_POLICIES: tuple[str, ...] = ("last", "score")
# The composed backend's per-query affinity, folded into the pair head's hidden layer (`PairHead.fold`: per target
# and target id the sum of its columns' rows, [n_targets, H] floats; 62 KB a query at the default scale, 57
# categories and 105 brands), cached per worker. On a hit a request of 100 candidates gathers 2 x 100 rows instead
# of building 7 x 100 ids and gathering 700 rows (issue 14). Folded only while one query's entry stays under
# FOLD_MAX_ENTRY_BYTES (big vocabularies keep the ids path: one fold would cost more than the rows it saves).
FOLD_CACHE_BYTES = 16 << 20
FOLD_MAX_ENTRY_BYTES = 256 << 10


@dataclass
class RankedList:
    scores: np.ndarray  # float32, one per candidate, in request order
    ranking: list[str]  # candidate ids, best first
    unknown_items: list[str]  # candidates the catalogue or vocabulary does not know (OOV buckets)


class Ranker:
    """Ranking requests (query text, history ids, candidate ids) -> scores and rankings.

    Item look-ups go through the bundle's memory-mapped item tables (shoprank.scoring.item_tables), which hold
    what the transform gives every catalogue item and every unknown id; the request side (query tokens, history)
    is computed once per request. With the composed scorer (the "tflite" backend) the model runs the same way:
    the request tower once per request, the item vectors gathered from the tables, the pair head per candidate.
    The whole-graph backends (savedmodel, onnx; the Triton transformer's predictor) get the whole input tensors
    per candidate (`features`).
    """

    def __init__(self, transform: FeatureTransform, items: ItemTables, scorer: Scorer | None,
                 unknown_candidates: UnknownPolicy = "last"):
        if unknown_candidates not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown_candidates must be one of {UNKNOWN_POLICIES}, not {unknown_candidates!r}")
        self.transform, self.items, self.scorer = transform, items, scorer
        self.unknown_candidates = unknown_candidates
        self.composed = scorer is not None and hasattr(scorer, "score_pairs")
        if self.composed and items.vectors is None:
            raise FileNotFoundError(f"{items.directory} holds no item vectors: the composed backend needs them")
        self._folded: ByteBoundedCache[np.ndarray] = ByteBoundedCache(
            FOLD_CACHE_BYTES, lambda key, table: arrays_cost(key, table, TOKEN_CACHE_ENTRY_OVERHEAD))
        self._fold_offsets = self._fold_offsets_of_targets()
        self.folds_affinity = self._fold_offsets is not None

    def _fold_offsets_of_targets(self) -> tuple[int, ...] | None:
        """Where each target's rows start in a query's folded table (`PairHead.fold` stacks the targets); None
        where folding does not apply (no composed backend, no affinity, vocabularies too big, or an item-table id
        outside its vocabulary: the ids path maps those to row 0, and the fold must give the same)."""
        affinity = self.transform.affinity
        if not self.composed or affinity is None:
            return None
        sizes = [affinity.tables[t].n_targets for t in AFFINITY_TARGETS]
        if max(sizes) > AFFINITY_CACHE_MAX_TARGETS or sum(sizes) * self.scorer.head.hidden * 4 > FOLD_MAX_ENTRY_BYTES:
            return None
        for t, size in zip(AFFINITY_TARGETS, sizes):
            ids = self.items.inputs[t]
            if ids.size and (ids.min() < 0 or ids.max() >= size):
                return None
        return tuple(int(x) for x in np.cumsum([0, *sizes[:-1]]))

    @classmethod
    def from_paths(cls, transform_dir: str | Path, items_dir: str | Path, model_path: str | Path | None = None,
                   num_threads: int | None = None, unknown_candidates: UnknownPolicy = "last") -> Ranker:
        """A ranker over a transform directory, item tables and a model artefact (None: no scorer)."""
        scorer = load_scorer(model_path, num_threads) if model_path is not None else None
        # The item vocabulary's ids stay on disk (the tables hold every item's indices): its size only.
        transform = FeatureTransform.load(transform_dir, unindexed=("item",))
        return cls(transform, ItemTables(items_dir), scorer, unknown_candidates)

    @classmethod
    def load(cls, bundle_dir: str | Path, backend: str | None = "tflite", num_threads: int | None = None,
             unknown_candidates: UnknownPolicy = "last") -> Ranker:
        """The bundle's ranker. backend None: no scorer (a transformer: features only, scores come from elsewhere)."""
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"unknown backend '{backend}', choose one of {sorted(BACKENDS)}")
        b = Path(bundle_dir)
        model = None
        if backend is not None:
            model = b / BACKENDS[backend]
            if backend == "onnx":
                found = sorted(model.glob(f"*/{TRITON_VERSION}/{MODEL_FILE}"))
                if len(found) != 1:
                    raise FileNotFoundError(f"{model} should hold one Triton model with {TRITON_VERSION}/{MODEL_FILE}"
                                            f", found {[str(f.relative_to(b)) for f in found]} (bundles without the "
                                            "ONNX export have none)")
                model = found[0]
        return cls.from_paths(b / TRANSFORM_DIR, b / ITEMS_DIR, model, num_threads, unknown_candidates)

    def request_inputs(self, queries: Sequence[str], histories: Sequence[Sequence[str]],
                       history_rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """REQUEST_INPUTS of R requests (one row each): the transform's query tokens (its tokeniser and cache) and
        the history's last L ids, right-aligned and 0-padded as FeatureTransform._sequence does, with each id's item,
        category and brand indices from its table row (an id outside the catalogue: its own index, no category
        or brand, as the transform gives it). `history_rows`: the table rows of the histories' last L ids, when
        the caller looked them up already (one look-up for history and candidates)."""
        ql, length = self.transform.config.query_len, self.transform.config.history_len
        tokens = self.transform.tokens
        q = np.stack([tokens(s, ql) for s in queries]) if len(queries) else np.zeros((0, ql), np.int32)
        hist = np.zeros((3, len(histories), length), np.int32)
        lens = np.fromiter((min(len(h), length) for h in histories), np.int64, len(histories))
        m = int(lens.sum())
        if m:
            if history_rows is None:
                history_rows = self.items.rows(self._recent(histories))
            columns = [self.items.inputs[k] for k in ("item_id", "category", "brand")]
            if len(histories) == 1:  # one request: its ids fill the last m places
                for i, col in enumerate(columns):
                    hist[i, 0, length - m:] = np.take(col, history_rows)
            else:
                ends = np.cumsum(lens)
                req = np.repeat(np.arange(len(histories)), lens)
                place = np.arange(m) - np.repeat(ends, lens) + length
                for i, col in enumerate(columns):
                    hist[i, req, place] = np.take(col, history_rows)
        return {"query_tokens": q, "history_items": hist[0], "history_categories": hist[1], "history_brands": hist[2]}

    def affinity(self, request: dict[str, np.ndarray], rows: np.ndarray, row_request: np.ndarray | None
                 ) -> np.ndarray:
        """The pair input of candidate rows (table rows `rows`) against their requests' inputs (R rows: query tokens
        and history; row_request None: one request), from the candidates' category and brand indices in the
        tables: the same `FeatureTransform.pair_input` that preprocessing ran."""
        rr = np.zeros(len(rows), np.intp) if row_request is None else row_request
        return self.transform.pair_input(request["query_tokens"], request["history_categories"],
                                         request["history_brands"], self._targets(rows), rr)

    def _targets(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {t: np.take(self.items.inputs[t], rows) for t in AFFINITY_TARGETS}

    def _recent(self, histories: Sequence[Sequence[str]]) -> list[str]:
        length = self.transform.config.history_len
        return [x for h in histories for x in h[-length:]]

    def _lookup(self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]
                ) -> tuple[np.ndarray, np.ndarray]:
        """Table rows of the histories' last L ids and of the candidates, in one look-up."""
        recent = self._recent(histories)
        rows = self.items.rows([*recent, *chain.from_iterable(candidates)])
        return rows[: len(recent)], rows[len(recent):]

    def features(self, queries: Sequence[str], histories: Sequence[Sequence[str]],
                 candidates: Sequence[Sequence[str]]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The model's whole input tensors for every candidate row, and a mask of candidates the model does not know.

        The same tensors as `FeatureTransform.transform` (tests/scoring/test_ranker.py checks it on odd requests):
        the candidates' columns are rows of the item tables, the request columns are computed once per request and
        repeated over its candidates. What the whole-graph backends and the Triton transformer score."""
        history_rows, rows = self._lookup(histories, candidates)
        req = self.request_inputs(queries, histories, history_rows)
        rr = np.repeat(np.arange(len(candidates)), [len(c) for c in candidates])
        tensors = {k: np.take(req[k], rr, axis=0) for k in REQUEST_INPUTS} | self.items.item_inputs(rows)
        tensors[AFFINITY_INPUT] = self.affinity(req, rows, rr)
        return tensors, ~self.items.known(rows)

    def score(self, queries: Sequence[str], histories: Sequence[Sequence[str]],
              candidates: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """The model's scores of every candidate row (float32, request order, the unknown policy not applied) and
        the unknown-candidate mask. Composed backend: the request tower once per request, item vectors from the
        tables, the pair head per row; otherwise the whole graph on `features`."""
        if not self.composed:
            tensors, unknown = self.features(queries, histories, candidates)
            return (self.scorer.score(tensors) if len(unknown) else np.zeros(0, np.float32)), unknown
        history_rows, rows = self._lookup(histories, candidates)
        unknown = ~self.items.known(rows)
        if not len(rows):
            return np.zeros(0, np.float32), unknown
        rr = np.repeat(np.arange(len(candidates)), [len(c) for c in candidates]) if len(candidates) > 1 else None
        req = self.request_inputs(queries, histories, history_rows)
        vectors = self.scorer.request_vectors(req)
        if self.folds_affinity:  # each query's folded affinity (cached), gathered per candidate
            affinity = self._folded_affinity(req, rows, [len(c) for c in candidates])
        else:
            affinity = self.affinity(req, rows, rr)
        return self.scorer.score_pairs(vectors, rr, self.items.item_vectors(rows), affinity), unknown

    def _folded_affinity(self, request: dict[str, np.ndarray], rows: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
        """The pair input's contribution to the pair head's hidden layer for candidate rows ([N, H]; bit for bit
        `PairHead.affinity_hidden` of the rows' `affinity` ids): the query's columns from each query's folded table
        (cached per query), then the history-match columns' rows (they depend on the history: per row). `request`
        holds R requests' inputs; the rows are R consecutive blocks of `sizes` rows (request order), as `score`
        builds them."""
        targets = self._targets(rows)
        at = [targets[t] + offset for t, offset in zip(AFFINITY_TARGETS, self._fold_offsets)]
        query_tokens = request["query_tokens"]
        if len(sizes) == 1:
            out = _sum_rows(self._folded_of(query_tokens[0]), at)
            rr = None  # one request: its [1, L] history broadcasts over the candidates (no per-row copy)
        else:
            out = np.empty((len(rows), self.scorer.head.hidden), np.float32)
            start = 0
            for tokens, size in zip(query_tokens, sizes):
                end = start + size
                if size:
                    out[start:end] = _sum_rows(self._folded_of(tokens), [ids[start:end] for ids in at])
                start = end
            rr = np.repeat(np.arange(len(sizes)), sizes)
        history = self.transform.history_columns(request["history_categories"], request["history_brands"],
                                                 targets, rr)
        out += self.scorer.head.rows_sum(history)
        return out

    def _folded_of(self, tokens: np.ndarray) -> np.ndarray:
        key = np.ascontiguousarray(tokens, np.int32).tobytes()
        return self._folded.get(key, lambda: self.scorer.head.fold(self.transform.affinity_of_query(tokens)))

    def score_rows(self, request_tensors: dict[str, np.ndarray], row_request: np.ndarray,
                   item_ids: Sequence[str]) -> np.ndarray:
        """Scores of rows given as model request tensors (R rows, REQUEST_INPUTS), each row's request and its
        item id: the served composition below the text transform (the gate scores the whole test split with it)."""
        rows = self.items.rows(list(item_ids))
        affinity = self.affinity(request_tensors, rows, np.asarray(row_request, np.intp))
        if not self.composed:
            tensors = {k: np.take(request_tensors[k], row_request, axis=0) for k in REQUEST_INPUTS}
            return self.scorer.score(tensors | self.items.item_inputs(rows) | {AFFINITY_INPUT: affinity})
        vectors = self.scorer.request_vectors(request_tensors)
        return self.scorer.score_pairs(vectors, row_request, self.items.item_vectors(rows), affinity)

    def rank(self, queries: Sequence[str], histories: Sequence[Sequence[str]],
             candidates: Sequence[Sequence[str]]) -> list[RankedList]:
        scores, unknown = self.score(queries, histories, candidates)
        return split_ranked(scores, unknown, candidates, self.unknown_candidates)


def _sum_rows(table: np.ndarray, at: Sequence[np.ndarray]) -> np.ndarray:
    """table[at[0]] + table[at[1]] + ... (added in order, as `PairHead.affinity_hidden` adds the targets' sums);
    gathers and in-place adds: a sum over the middle axis of one [N, targets, H] gather costs twice as much."""
    out = np.take(table, at[0], axis=0)
    for ids in at[1:]:
        out += np.take(table, ids, axis=0)
    return out


def split_ranked(scores: np.ndarray, unknown: np.ndarray, candidates: Sequence[Sequence[str]],
                 unknown_candidates: UnknownPolicy = "last") -> list[RankedList]:
    """Cut flat per-row scores back into one ranked list per request (a stable sort on the negated scores:
    ties keep request order). Requests of one size, the usual batch, are sorted in one call.

    unknown_candidates "last" (the default, see UNKNOWN_POLICIES): unknown candidates' scores become 0.0 and they
    rank after every known candidate, in request order; "score": the model's scores rank them."""
    if unknown_candidates == "last" and unknown.any():
        scores = np.where(unknown, np.float32(0.0), scores).astype(np.float32, copy=False)
        keys = np.where(unknown, np.inf, -scores.astype(np.float64))  # after every known score, request order
    else:
        keys = -scores
    counts = [len(c) for c in candidates]
    same = bool(counts) and counts[0] > 0 and counts.count(counts[0]) == len(counts)
    orders = np.argsort(keys.reshape(len(counts), counts[0]), axis=1, kind="stable") if same else None
    any_unknown = bool(unknown.any())
    out, lo = [], 0
    for i, cands in enumerate(candidates):
        hi = lo + counts[i]
        s = scores[lo:hi]
        order = orders[i] if same else np.argsort(keys[lo:hi], kind="stable")
        unk = [c for c, u in zip(cands, unknown[lo:hi].tolist()) if u] if any_unknown else []
        out.append(RankedList(s, [cands[j] for j in order.tolist()], unk))
        lo = hi
    return out
