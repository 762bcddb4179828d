"""Query -> category and brand affinity: how strongly a query's words point to a candidate's category (issue 14).

What it is: for a query token t and a category c, the share of the training period's clicks on rows whose query
held t that went to items of category c, smoothed towards c's share of all clicks,

    share(t, c) = (clicks(t, c) + smoothing * prior(c)) / (clicks(t) + smoothing),

and for a (request, candidate) row the max and the mean of share(t, candidate's category) over the query's
distinct tokens, each cut into `buckets` quantile buckets of the training rows' values (0 = no query token or no
category). The same for the candidate's brand. Together one int32 model input, `query_affinity` [N, 4] (see
`QueryAffinity`): a pair input, computed per (request, candidate) row.

Why: LightGBM's lead over the network (issue 14) was 77% this one statistic (`tok_cat_click_share_max` and
`_mean` of the reference's gain). The network's query . title dot product has to learn the same thing from 800k
rows through a token embedding, and does it poorly; a table counted from the training clicks does it exactly.

Why a table of ids: it is keyed by the transform's own token and category ids, so the one `FeatureTransform`
computes it from a raw request at serving time and from the stored arrays at preprocessing, and the model server
can compute it from a request's token ids and its candidates' category ids without strings. Stored sparse (only
pairs with a click; unseen pairs are the prior alone): a real catalogue has 10^5 tokens x 10^3 categories.

No leakage: the table is counted on the training split only, and a training row's own value comes from the
other folds (`fit(..., folds=)`: by request, so a request's rows share a fold). Without that a row's own click is
inside its share, and the network learns to trust the share more than it deserves on unseen requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AFFINITY_INPUT", "AFFINITY_TARGETS", "AFFINITY_WIDTH", "QueryAffinity", "TokenShareTable",
           "request_folds"]

AFFINITY_INPUT = "query_affinity"
AFFINITY_TARGETS = ("category", "brand")  # the candidate fields a query's words are matched to
# Per target: [bucket of the max over the query's tokens, bucket of the mean].
AFFINITY_WIDTH = 2 * len(AFFINITY_TARGETS)


def request_folds(request: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold per row, by request: the rows of one request share a fold (seeded hash of the request index)."""
    r = np.asarray(request, np.uint64)
    h = (r * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)) >> np.uint64(33)
    return (h % np.uint64(max(folds, 1))).astype(np.int64)


def _distinct(tokens: np.ndarray) -> np.ndarray:
    """Token ids with repeats within a row and padding (0) set to -1: a word counts once per query."""
    t = np.asarray(tokens, np.int64)
    if t.size == 0:
        return t
    s = np.sort(t, axis=1)
    repeat = np.zeros_like(s, dtype=bool)
    repeat[:, 1:] = s[:, 1:] == s[:, :-1]
    return np.where((s > 0) & ~repeat, s, -1)


@dataclass
class TokenShareTable:
    """One target's fitted table (sparse: sorted `keys` = token * n_targets + target id, their `clicks`), the
    per-token click totals, the target prior and the bucket edges. Serialised as plain lists (transform.json)."""

    n_targets: int
    keys: np.ndarray  # int64, sorted
    clicks: np.ndarray  # float64 per key
    token_clicks: np.ndarray  # float64 per token id (length: the token vocabulary's size)
    prior: np.ndarray  # float64 per target id: its share of all clicks
    edges: np.ndarray  # float64 bucket edges of the share (len = buckets - 1)
    smoothing: float

    # --- fitting ---------------------------------------------------------------------------------------
    @staticmethod
    def _counts(tokens: np.ndarray, target: np.ndarray, clicked: np.ndarray, n_tokens: int, n_targets: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(keys, clicks per key, clicks per token, clicks per target id) of the clicked rows."""
        hit = np.asarray(clicked) > 0
        t = _distinct(np.asarray(tokens)[hit])
        c = np.asarray(target, np.int64)[hit]
        valid = (t >= 0) & (c[:, None] > 0)
        flat = (t * n_targets + c[:, None])[valid]
        keys, counts = np.unique(flat, return_counts=True)
        per_token = np.bincount(t[valid], minlength=n_tokens)[:n_tokens].astype(np.float64)
        per_target = np.bincount(c[c > 0], minlength=n_targets)[:n_targets].astype(np.float64)
        return keys, counts.astype(np.float64), per_token, per_target

    @classmethod
    def fit(cls, tokens: np.ndarray, target: np.ndarray, clicked: np.ndarray, request: np.ndarray,
            n_tokens: int, n_targets: int, buckets: int, smoothing: float, folds: int, seed: int
            ) -> tuple[TokenShareTable, np.ndarray]:
        """The table over all training rows, and the training rows' own inputs ([N, 2] int32) out of fold."""
        keys, clicks, per_token, per_target = cls._counts(tokens, target, clicked, n_tokens, n_targets)
        prior = per_target / max(per_target.sum(), 1.0)
        table = cls(n_targets, keys, clicks, per_token, prior, np.zeros(0), float(smoothing))
        fold = request_folds(request, folds, seed)
        raw = np.zeros((len(fold), 2), np.float64)
        for f in range(max(folds, 1)):
            rows = np.flatnonzero(fold == f)
            if folds > 1:
                out = fold != f
                k, cl, pt, pc = cls._counts(np.asarray(tokens)[out], np.asarray(target)[out],
                                            np.asarray(clicked)[out], n_tokens, n_targets)
                part = cls(n_targets, k, cl, pt, pc / max(pc.sum(), 1.0), np.zeros(0), float(smoothing))
            else:
                part = table
            raw[rows] = part.shares(np.asarray(tokens)[rows], np.asarray(target)[rows])
        has = np.isfinite(raw[:, 0])
        qs = np.linspace(0, 1, buckets + 1)[1:-1]
        # Edges from the training rows' max share; the mean uses the same edges (same scale, and one set to keep).
        table.edges = np.unique(np.quantile(raw[has, 0], qs)) if has.any() else np.zeros(0)
        return table, table.bucketise(raw)

    # --- applying ---------------------------------------------------------------------------------------
    def shares(self, tokens: np.ndarray, target: np.ndarray, row_request: np.ndarray | None = None
               ) -> np.ndarray:
        """[N, 2] float64: max and mean share over each row's distinct tokens (NaN: no token or no target).
        `tokens` is [N, Q], or [R, Q] with `row_request` mapping the N rows to their request."""
        t = _distinct(tokens)
        if row_request is not None:
            t = t[np.asarray(row_request, np.int64)]
        c = np.asarray(target, np.int64)
        n_tok = len(self.token_clicks)
        cc = np.clip(c, 0, self.n_targets - 1)
        valid = (t >= 0) & (c[:, None] > 0) & (c[:, None] < self.n_targets)
        key = np.where(valid, t * self.n_targets + cc[:, None], -1)
        if self.keys.size:
            pos = np.clip(np.searchsorted(self.keys, key), 0, self.keys.size - 1)
            pair = np.where(valid & (self.keys[pos] == key), self.clicks[pos], 0.0)
        else:
            pair = np.zeros(key.shape)
        tok = np.where(valid, self.token_clicks[np.clip(t, 0, n_tok - 1)] * (t < n_tok), 0.0)
        prior = self.prior[cc][:, None]
        share = (pair + self.smoothing * prior) / (tok + self.smoothing)
        n = valid.sum(axis=1)
        with np.errstate(invalid="ignore"):
            mx = np.where(n > 0, np.where(valid, share, -np.inf).max(axis=1, initial=-np.inf), np.nan)
            mean = np.where(n > 0, np.where(valid, share, 0.0).sum(axis=1) / np.maximum(n, 1), np.nan)
        return np.stack([mx, mean], axis=1)

    def bucketise(self, shares: np.ndarray) -> np.ndarray:
        """[N, 2] int32 buckets: 0 for NaN (nothing to go on), else 1 + the quantile bucket."""
        s = np.asarray(shares, np.float64)
        b = np.searchsorted(self.edges, np.nan_to_num(s, nan=0.0), side="right") + 1
        return np.where(np.isfinite(s), b, 0).astype(np.int32)

    def inputs(self, tokens: np.ndarray, target: np.ndarray, row_request: np.ndarray | None = None
               ) -> np.ndarray:
        """This table's two columns ([N, 2] int32, before the offsets) of rows given by ids (see `shares`)."""
        return self.bucketise(self.shares(tokens, target, row_request))

    # --- persistence -----------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"n_targets": self.n_targets, "keys": self.keys.tolist(), "clicks": self.clicks.tolist(),
                "token_clicks": self.token_clicks.tolist(), "prior": self.prior.tolist(),
                "edges": self.edges.tolist(), "smoothing": self.smoothing}

    @classmethod
    def from_json(cls, d: dict) -> TokenShareTable:
        return cls(int(d["n_targets"]), np.asarray(d["keys"], np.int64), np.asarray(d["clicks"], np.float64),
                   np.asarray(d["token_clicks"], np.float64), np.asarray(d["prior"], np.float64),
                   np.asarray(d["edges"], np.float64), float(d["smoothing"]))


@dataclass
class QueryAffinity:
    """The tables of every target (AFFINITY_TARGETS) and the model input they make together: [N, AFFINITY_WIDTH]
    int32, column 2j / 2j+1 the max / mean bucket of target j, offset by j * 2 * `column_size` + (0 or
    `column_size`) so that the model looks every column up in one embedding table of `input_size` rows (one
    table, no slicing layers in the graph; the pair head averages the looked-up rows)."""

    tables: dict[str, TokenShareTable]
    column_size: int  # buckets + 1: values 0 (nothing to go on) .. buckets of one column

    @property
    def input_size(self) -> int:
        return AFFINITY_WIDTH * self.column_size

    @staticmethod
    def empty(n: int, column_size: int) -> np.ndarray:
        """The input of N rows with nothing to go on (bucket 0 in every column): an unfitted transform's."""
        return np.broadcast_to(np.arange(AFFINITY_WIDTH, dtype=np.int32) * column_size,
                               (n, AFFINITY_WIDTH)).copy()

    @staticmethod
    def size_for(buckets: int) -> int:
        """The embedding size for `buckets` buckets per column (what an unfitted transform reports)."""
        return AFFINITY_WIDTH * (buckets + 1)

    @classmethod
    def fit(cls, tokens: np.ndarray, targets: dict[str, np.ndarray], clicked: np.ndarray, request: np.ndarray,
            n_tokens: int, n_targets: dict[str, int], buckets: int, smoothing: float, folds: int, seed: int
            ) -> tuple[QueryAffinity, np.ndarray]:
        """Every target's table from the training rows, and the training rows' input out of fold."""
        tables, parts = {}, []
        for name in AFFINITY_TARGETS:
            tables[name], part = TokenShareTable.fit(tokens, targets[name], clicked, request, n_tokens,
                                                     n_targets[name], buckets, smoothing, folds, seed)
            parts.append(part)
        self = cls(tables, buckets + 1)
        return self, self._offset(parts)

    def _offset(self, parts: list[np.ndarray]) -> np.ndarray:
        out = np.concatenate(parts, axis=1) if parts else np.zeros((0, AFFINITY_WIDTH), np.int32)
        return (out + np.arange(AFFINITY_WIDTH, dtype=np.int32) * self.column_size).astype(np.int32)

    def inputs(self, tokens: np.ndarray, targets: dict[str, np.ndarray], row_request: np.ndarray | None = None
               ) -> np.ndarray:
        """The model input of N rows: `tokens` [N, Q] (or [R, Q] with `row_request`), each target's ids [N]."""
        return self._offset([self.tables[name].inputs(tokens, targets[name], row_request)
                             for name in AFFINITY_TARGETS])

    def to_json(self) -> dict:
        return {"column_size": self.column_size, "tables": {k: v.to_json() for k, v in self.tables.items()}}

    @classmethod
    def from_json(cls, d: dict) -> QueryAffinity:
        return cls({k: TokenShareTable.from_json(v) for k, v in d["tables"].items()}, int(d["column_size"]))
