"""The served composition: request tower once per request, item vectors per candidate, pair head per row.

The trained graph is cut at export (shoprank.modeling.towers) into a request tower (full int8, LiteRT), an item
tower (float) and a pair head (float weights). Scoring N candidates of R requests is then

    request_vectors = request tower(query tokens, history)            R rows, int8 body, dequantised outputs
    item_vectors    = tables[candidate rows]  (or the item tower)     N rows, stored at `item_dtype` (float16)
    affinity        = transform.query_affinity(query tokens, candidates' category and brand)   N rows
    scores          = PairHead(request_vectors[row_request], item_vectors, affinity)   N rows, float32

`ComposedScorer.score` takes the model's whole input tensors (INPUTS: a tensor request, or the evaluator's test
split) and runs the item tower on them, rounding its output through `item_dtype` as the tables store it, so the
evaluator's scores and the served scores (item vectors from the tables, shoprank.scoring.ranker) are the same
function: the gate checks that on the whole test set.

Why the head is float: per pair it is two dot products of F numbers, two scaled adds and a ReLU over H numbers and
one dot product of H, i.e. ~4H multiply-adds with H=96: int8 saves nothing there, while an int8 output layer is
what quantised the scores to 256 levels (issue 11). The scores keep float32 resolution: ties only where the
float model has them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shoprank.features.affinity import AFFINITY_GROUPS, AFFINITY_INPUT, HISTORY_COLUMNS
from shoprank.features.transform import INPUTS, ITEM_INPUTS, REQUEST_INPUTS
from shoprank.layout import HEAD_FILE, ITEM_TOWER_FILE, REQUEST_TOWER_FILE, TOWERS_META
from shoprank.scoring.backends import TFLiteTower

__all__ = ["ComposedScorer", "PairHead"]


class PairHead:
    """The pair head in numpy float32: relu(request_hidden + item_hidden + d @ W + sum_j A[a_j]) . w_score + b_score,
    where d holds each row's two dot products (query . title, history . candidate), W their projections [2, H], a
    the row's affinity input (ids into A, the affinity rows of the hidden layer over the input's width).

    Request vectors are [R, F], [R, F], [R, H] (query, history, request_hidden); item vectors one [N, 2F + H]
    matrix (title | candidate | item_hidden), the tables' layout."""

    def __init__(self, weights: dict[str, np.ndarray], f: int):
        self.f = f
        self.w_pair = np.ascontiguousarray(np.stack([weights["w_query_title"], weights["w_history_item"]]),
                                           dtype=np.float32)  # [2, H]
        self.w_score = np.ascontiguousarray(weights["w_score"], dtype=np.float32)  # [H]
        self.b_score = np.float32(weights["b_score"])
        self.affinity = np.ascontiguousarray(weights["affinity_hidden"], dtype=np.float32)  # [size, H]
        self.hidden = int(self.w_score.size)

    @classmethod
    def load(cls, path: str | Path, f: int) -> PairHead:
        with np.load(path) as z:
            return cls({k: z[k] for k in z.files}, f)

    def rows_sum(self, ids: np.ndarray) -> np.ndarray:
        """[N, H]: the sum of the rows `ids` [N, k] of the pair input's table, per row (added left to right)."""
        return np.take(self.affinity, ids, axis=0).sum(axis=1)

    def affinity_hidden(self, ids: np.ndarray) -> np.ndarray:
        """The pair input's contribution to the hidden layer [N, H]: per target (AFFINITY_GROUPS) its columns' rows
        summed, the targets' sums added in AFFINITY_TARGETS order, then the history-match columns' sum (the
        order the server's fold path adds them in: shoprank.scoring.ranker)."""
        parts = [self.rows_sum(ids[:, g]) for g in (*AFFINITY_GROUPS, HISTORY_COLUMNS)]
        out = parts[0]
        for part in parts[1:]:
            out += part
        return out

    def fold(self, per_target: Sequence[np.ndarray]) -> np.ndarray:
        """One query's affinity folded into the hidden layer: for every target id of every target (AFFINITY_TARGETS
        order, stacked: [sum of n_targets, H]) the sum of its columns' rows, from its columns' ids for every
        target id ([n_targets, columns], `FeatureTransform.affinity_of_query`). A row's contribution is then the
        sum of one row per target (`Ranker` gathers them): 2 rows of H per candidate instead of AFFINITY_WIDTH,
        bit for bit `affinity_hidden`'s sums (the same rows added in the same order: tests/scoring)."""
        return np.concatenate([self.rows_sum(ids) for ids in per_target])

    def logits(self, request: dict[str, np.ndarray], row_request: np.ndarray | None, items: np.ndarray,
               affinity: np.ndarray) -> np.ndarray:
        """row_request: each item row's request (index into the request vectors); None when there is one request
        (its vectors are broadcast, no gather). affinity: the rows' `query_affinity` input ([N, width] int ids), or
        its contribution to the hidden layer ([N, H] float, `affinity_hidden`; the server gathers it from `fold`)."""
        f = self.f
        n = items.shape[0]
        qh = np.concatenate([request["query"], request["history"]], axis=1)  # [R, 2F]
        if row_request is None:
            pair = items[:, : 2 * f] * qh
            x = items[:, 2 * f:] + request["request_hidden"]
        else:
            pair = np.take(qh, row_request, axis=0)
            pair *= items[:, : 2 * f]
            x = np.take(request["request_hidden"], row_request, axis=0)
            x += items[:, 2 * f:]
        d = pair.reshape(n, 2, f).sum(axis=2)  # [N, 2]: query . title, history . candidate
        x += d @ self.w_pair
        x += affinity if affinity.dtype.kind == "f" else self.affinity_hidden(affinity.astype(np.intp, copy=False))
        np.maximum(x, 0, out=x)
        return x @ self.w_score + self.b_score

    def scores(self, request: dict[str, np.ndarray], row_request: np.ndarray | None, items: np.ndarray,
               affinity: np.ndarray) -> np.ndarray:
        z = self.logits(request, row_request, items, affinity)
        with np.errstate(over="ignore"):  # exp of a large negative logit: inf, and the score 0
            return (1.0 / (1.0 + np.exp(-z))).astype(np.float32, copy=False)


class ComposedScorer:
    """The CPU backend ("tflite"): int8 request tower (LiteRT) + item vectors + float pair head, from a towers/
    directory. Not thread-safe (LiteRT); picklable (the interpreters are reloaded in a worker process)."""

    backend = "tflite"

    def __init__(self, towers_dir: str | Path, num_threads: int | None = None):
        self.towers_dir = Path(towers_dir)
        self.num_threads = num_threads
        self._load()

    def _load(self) -> None:
        self.meta = json.loads((self.towers_dir / TOWERS_META).read_text())
        self.f = int(self.meta["request_vectors"]["query"])
        self.item_dtype = np.dtype(self.meta.get("item_vectors_dtype", "float32"))
        self.request_tower = TFLiteTower(self.towers_dir / REQUEST_TOWER_FILE, self.num_threads)
        self.head = PairHead.load(self.towers_dir / HEAD_FILE, self.f)
        self._item_tower: TFLiteTower | None = None  # loaded on first use: a server needs it for tensor requests only

    def __getstate__(self) -> dict:
        return {"towers_dir": self.towers_dir, "num_threads": self.num_threads}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._load()

    @property
    def item_tower(self) -> TFLiteTower:
        if self._item_tower is None:
            self._item_tower = TFLiteTower(self.towers_dir / ITEM_TOWER_FILE, self.num_threads)
        return self._item_tower

    def request_vectors(self, request_tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """query, history, request_hidden for R requests (REQUEST_INPUTS, R rows each)."""
        return self.request_tower({k: request_tensors[k] for k in REQUEST_INPUTS})

    def item_vectors(self, item_tensors: dict[str, np.ndarray]) -> np.ndarray:
        """[N, 2F + H] item vectors as the tables hold them: the item tower's outputs, rounded to `item_dtype`."""
        out = self.item_tower({k: item_tensors[k] for k in ITEM_INPUTS})
        vectors = np.concatenate([out[k] for k in self.meta["item_vectors"]], axis=1)
        return vectors.astype(self.item_dtype).astype(np.float32, copy=False)

    def score_pairs(self, request: dict[str, np.ndarray], row_request: np.ndarray | None, items: np.ndarray,
                    affinity: np.ndarray) -> np.ndarray:
        """Scores of N item rows against R requests' vectors; row_request maps rows to requests (None: R is 1);
        affinity: the rows' pair input ([N, width] int ids, `FeatureTransform.query_affinity`) or its contribution
        to the hidden layer ([N, H] float: `PairHead.affinity_hidden`, what the server gathers from `PairHead.fold`)."""
        return self.head.scores(request, None if row_request is None else np.asarray(row_request, np.intp), items,
                                np.asarray(affinity))

    def score(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Scores of N rows of the model's whole input tensors (INPUTS): the request tower and the item tower on
        every row, then the head. What a tensor request and the evaluator get."""
        n = len(features[INPUTS[0]])
        if n == 0:
            return np.zeros(0, np.float32)
        return self.score_pairs(self.request_vectors(features), np.arange(n), self.item_vectors(features),
                                features[AFFINITY_INPUT])
