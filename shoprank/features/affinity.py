"""Query -> category and brand affinity: how strongly a query's words point to a candidate's category (issue 14).

What it is: for a query token t and a category c, the share of the training period's clicks on rows whose query
held t that went to items of category c, smoothed towards c's share of all clicks,

    share(t, c) = (clicks(t, c) + smoothing * prior(c)) / (clicks(t) + smoothing),

and the click rate of the pair when shown, smoothed towards the overall click rate,

    rate(t, c) = (clicks(t, c) + rate_smoothing * click rate) / (impressions(t, c) + rate_smoothing).

For a (request, candidate) row: the max and the mean of share(t, candidate's category) and the mean of rate(t,
candidate's category) over the query's distinct tokens, each cut into `buckets` quantile buckets of the training
rows' values (0 = no query token or no category). The same for the candidate's brand, plus one label-free
column: how often the query's words occur in the titles of the brand's items (TitleWordTable). Together one int32
model input, `query_affinity` [N, 10] (see `QueryAffinity`): a pair input, computed per (request, candidate) row.
Its first 7 columns are the query's; the last 3 are the history-match counts (shoprank.features.history_match),
which ride in the same input and embedding table because they too depend on the pair and are summed into the
hidden layer the same way (the name is the input's first and larger part; it is kept for the bundles and tensor
requests that name it).

Why: LightGBM's lead over the network (issue 14) was 77% this one statistic (`tok_cat_click_share_max` and
`_mean` of the reference's gain; token x category/brand click rates were most of the rest). The network's
query . title dot product has to learn the same thing from 800k rows through a token embedding, and does it
poorly; a table counted from the training clicks does it exactly.

Why a table of ids: it is keyed by the transform's own token and category ids, so the one `FeatureTransform`
computes it from a raw request at serving time and from the stored arrays at preprocessing, and the model server
can compute it from a request's token ids and its candidates' category ids without strings. Stored sparse (only
pairs shown in the training period; unseen pairs get the priors alone): a real catalogue has 10^5 tokens x 10^3
categories. Not tested at that size: transform.json holds the pairs as JSON lists (tens of MB at 10^6 pairs).

No leakage: the table is counted on the training split only, and a training row's own value comes from the
other folds (`fit(..., folds=)`: by request, so a request's rows share a fold). Without that a row's own click is
inside its share, and the network learns to trust the share more than it deserves on unseen requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shoprank.features.history_match import HISTORY_MATCH_FIELDS

__all__ = ["AFFINITY_GROUPS", "AFFINITY_INPUT", "AFFINITY_TARGETS", "AFFINITY_WIDTH", "HISTORY_COLUMNS",
           "QUERY_AFFINITY_WIDTH", "TITLE_TARGETS", "QueryAffinity", "TitleWordTable", "TokenShareTable",
           "history_columns", "request_folds"]

AFFINITY_INPUT = "query_affinity"
AFFINITY_TARGETS = ("category", "brand")  # the candidate fields a query's words are matched to
TITLE_TARGETS = ("brand",)  # targets that also get a title-word table (TitleWordTable)
# Above this many token x target cells a table keeps no dense copy for the per-query path (8 bytes a cell, two
# matrices for a click table: 4M cells = 64 MB); the server then evaluates the sparse table per query (~0.1 ms per
# table instead of ~10 us).
DENSE_MAX_CELLS = 4_000_000
# Per target: buckets of [max share, mean share, mean click rate] over the query's tokens, then [title max] for
# the title targets.
COLUMNS_PER_TARGET = 3
QUERY_AFFINITY_WIDTH = COLUMNS_PER_TARGET * len(AFFINITY_TARGETS) + len(TITLE_TARGETS)
# The pair input's whole width: the query's affinity columns, then the history-match counts
# (shoprank.features.history_match), which share the input's one embedding table and its column offsets.
AFFINITY_WIDTH = QUERY_AFFINITY_WIDTH + len(HISTORY_MATCH_FIELDS)
# The input's columns of each target, in AFFINITY_TARGETS order: the model sums a row's columns, so the server can
# sum each target's columns once per query and target id (shoprank.scoring.composed.PairHead.fold).
AFFINITY_GROUPS = tuple(slice(sum(COLUMNS_PER_TARGET + (t in TITLE_TARGETS) for t in AFFINITY_TARGETS[:i]),
                              sum(COLUMNS_PER_TARGET + (t in TITLE_TARGETS) for t in AFFINITY_TARGETS[:i + 1]))
                        for i in range(len(AFFINITY_TARGETS)))
# The history-match columns: they depend on the request's history, not its query, so the server adds their rows
# per candidate after the folded query groups (in this order in the trained graph's sum too: PairHead).
HISTORY_COLUMNS = slice(QUERY_AFFINITY_WIDTH, AFFINITY_WIDTH)


def history_columns(counts: np.ndarray, column_size: int) -> np.ndarray:
    """The pair input's history-match columns from `history_match` counts [N, 3]: each count capped at the column's
    last id and offset as the columns after the query's (ids into the input's one embedding table)."""
    first = np.arange(QUERY_AFFINITY_WIDTH, AFFINITY_WIDTH, dtype=np.int32) * column_size
    return np.minimum(counts, column_size - 1).astype(np.int32) + first


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


def _lookup(keys: np.ndarray, n_targets: int, tokens: np.ndarray, target: np.ndarray,
            row_request: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row and query token: the token id (-1: none), the target id clipped into the table, whether the pair is
    valid (a token and a target inside the table), and the pair's position in the sorted `keys` (-1: not there).
    `tokens` is [N, Q], or [R, Q] with `row_request` mapping the N rows to their request."""
    t = _distinct(tokens)
    if row_request is not None:
        t = t[np.asarray(row_request, np.int64)]
    c = np.asarray(target, np.int64)
    cc = np.clip(c, 0, n_targets - 1)
    valid = (t >= 0) & (c[:, None] > 0) & (c[:, None] < n_targets)
    key = np.where(valid, t * n_targets + cc[:, None], -1)
    if not keys.size:
        return t, cc, valid, np.full(key.shape, -1)
    pos = np.clip(np.searchsorted(keys, key), 0, keys.size - 1)
    return t, cc, valid, np.where(valid & (keys[pos] == key), pos, -1)


@dataclass
class TokenShareTable:
    """One target's fitted table (sparse: sorted `keys` = token * n_targets + target id of every pair that was
    shown in the training period, with its `clicks` and `impressions`), the per-token click totals, the target
    prior, the overall click rate and the bucket edges. Serialised as plain lists (transform.json)."""

    n_targets: int
    keys: np.ndarray  # int64, sorted
    clicks: np.ndarray  # float64 per key
    impressions: np.ndarray  # float64 per key
    token_clicks: np.ndarray  # float64 per token id (length: the token vocabulary's size)
    prior: np.ndarray  # float64 per target id: its share of all clicks
    click_rate: float  # clicks per impression over every row with a target
    edges: np.ndarray  # float64 bucket edges of the share (len <= buckets - 1)
    rate_edges: np.ndarray  # float64 bucket edges of the click rate
    smoothing: float  # pseudo-clicks of the share
    rate_smoothing: float  # pseudo-impressions of the click rate

    # --- fitting ---------------------------------------------------------------------------------------
    @classmethod
    def _count(cls, tokens: np.ndarray, target: np.ndarray, clicked: np.ndarray, n_tokens: int, n_targets: int,
               smoothing: float, rate_smoothing: float) -> TokenShareTable:
        """The table of these rows (edges left empty)."""
        t = _distinct(np.asarray(tokens))
        c = np.asarray(target, np.int64)
        y = (np.asarray(clicked) > 0).astype(np.float64)
        valid = (t >= 0) & (c[:, None] > 0)
        flat = (t * n_targets + c[:, None])[valid]
        yy = np.broadcast_to(y[:, None], t.shape)[valid]
        keys, inverse = np.unique(flat, return_inverse=True)
        impressions = np.bincount(inverse, minlength=keys.size).astype(np.float64)
        clicks = np.bincount(inverse, yy, minlength=keys.size)
        per_token = np.bincount(t[valid], yy, minlength=n_tokens)[:n_tokens].astype(np.float64)
        has = c > 0
        per_target = np.bincount(c[has], y[has], minlength=n_targets)[:n_targets]
        rate = float(y[has].mean()) if has.any() else 0.0
        return cls(n_targets, keys, clicks, impressions, per_token, per_target / max(per_target.sum(), 1.0), rate,
                   np.zeros(0), np.zeros(0), float(smoothing), float(rate_smoothing))

    @classmethod
    def fit(cls, tokens: np.ndarray, target: np.ndarray, clicked: np.ndarray, request: np.ndarray,
            n_tokens: int, n_targets: int, buckets: int, smoothing: float, rate_smoothing: float, folds: int,
            seed: int) -> tuple[TokenShareTable, np.ndarray]:
        """The table over all training rows, and the training rows' own columns ([N, 3] int32) out of fold."""
        tokens, target, clicked = np.asarray(tokens), np.asarray(target), np.asarray(clicked)
        table = cls._count(tokens, target, clicked, n_tokens, n_targets, smoothing, rate_smoothing)
        fold = request_folds(request, folds, seed)
        raw = np.zeros((len(fold), 3), np.float64)
        for f in range(max(folds, 1)):
            rows = np.flatnonzero(fold == f)
            out = fold != f
            part = cls._count(tokens[out], target[out], clicked[out], n_tokens, n_targets, smoothing,
                              rate_smoothing) if folds > 1 else table
            raw[rows] = part.values(tokens[rows], target[rows])
        qs = np.linspace(0, 1, buckets + 1)[1:-1]

        def edges(v: np.ndarray) -> np.ndarray:
            v = v[np.isfinite(v)]
            return np.unique(np.quantile(v, qs)) if v.size else np.zeros(0)

        # The share's max and mean share one set of edges (the max's: one scale); the click rate has its own.
        table.edges, table.rate_edges = edges(raw[:, 0]), edges(raw[:, 2])
        return table, table.bucketise(raw)

    # --- applying ---------------------------------------------------------------------------------------
    def values(self, tokens: np.ndarray, target: np.ndarray, row_request: np.ndarray | None = None) -> np.ndarray:
        """[N, 3] float64 over each row's distinct tokens: max share, mean share, mean click rate (NaN: no token
        or no target). `tokens` is [N, Q], or [R, Q] with `row_request` mapping the N rows to their request."""
        t, cc, valid, pos = _lookup(self.keys, self.n_targets, tokens, target, row_request)
        n_tok = len(self.token_clicks)
        pair_clicks = np.where(pos >= 0, self.clicks[pos], 0.0) if self.keys.size else np.zeros(pos.shape)
        pair_imps = np.where(pos >= 0, self.impressions[pos], 0.0) if self.keys.size else np.zeros(pos.shape)
        tok = np.where(valid, self.token_clicks[np.clip(t, 0, n_tok - 1)] * (t < n_tok), 0.0)
        share = (pair_clicks + self.smoothing * self.prior[cc][:, None]) / (tok + self.smoothing)
        rate = (pair_clicks + self.rate_smoothing * self.click_rate) / (pair_imps + self.rate_smoothing)
        n = valid.sum(axis=1)
        some = n > 0
        with np.errstate(invalid="ignore"):
            mx = np.where(some, np.where(valid, share, -np.inf).max(axis=1, initial=-np.inf), np.nan)
            mean = np.where(some, np.where(valid, share, 0.0).sum(axis=1) / np.maximum(n, 1), np.nan)
            rate_mean = np.where(some, np.where(valid, rate, 0.0).sum(axis=1) / np.maximum(n, 1), np.nan)
        return np.stack([mx, mean, rate_mean], axis=1)

    def _dense(self) -> tuple[np.ndarray, np.ndarray] | None:
        """share(t, c) and rate(t, c) for every token and target id ([n_tokens, n_targets] float64, the same
        formula as `values`), built on first use; None above DENSE_MAX_CELLS (then `per_query` takes the sparse
        path)."""
        if not hasattr(self, "_dense_cache"):
            n_tok, n = len(self.token_clicks), self.n_targets
            self._dense_cache = None
            if 0 < n_tok * n <= DENSE_MAX_CELLS:
                clicks, imps = np.zeros(n_tok * n), np.zeros(n_tok * n)
                inside = self.keys < n_tok * n
                clicks[self.keys[inside]], imps[self.keys[inside]] = self.clicks[inside], self.impressions[inside]
                clicks, imps = clicks.reshape(n_tok, n), imps.reshape(n_tok, n)
                share = (clicks + self.smoothing * self.prior[None, :]) / (self.token_clicks[:, None] + self.smoothing)
                rate = (clicks + self.rate_smoothing * self.click_rate) / (imps + self.rate_smoothing)
                self._dense_cache = (share, rate)
        return self._dense_cache

    def per_query(self, tokens: np.ndarray) -> np.ndarray:
        """This table's columns ([n_targets, 3] int32 buckets, before the offsets) of one query's token ids [Q]
        against every target id: `inputs` on every id, from the dense matrices (a few numpy calls instead of
        ~30; the same numbers: the sums run over the same tokens in the same order)."""
        n = self.n_targets
        dense = self._dense()
        t = _distinct(np.asarray(tokens).reshape(1, -1))[0]
        t = t[t >= 0]
        if dense is None or (t >= len(self.token_clicks)).any():
            return self.inputs(np.asarray(tokens).reshape(1, -1), np.arange(n), np.zeros(n, np.intp))
        if t.size == 0:
            return np.zeros((n, 3), np.int32)
        share, rate = dense[0][t], dense[1][t]
        values = np.stack([share.max(axis=0), share.sum(axis=0) / t.size, rate.sum(axis=0) / t.size], axis=1)
        values[0] = np.nan  # target id 0: no target
        return self.bucketise(values)

    def bucketise(self, values: np.ndarray) -> np.ndarray:
        """[N, 3] int32 buckets: 0 for NaN (nothing to go on), else 1 + the quantile bucket."""
        v = np.asarray(values, np.float64)
        filled = np.nan_to_num(v, nan=0.0)
        b = np.stack([np.searchsorted(self.edges, filled[:, 0], side="right"),
                      np.searchsorted(self.edges, filled[:, 1], side="right"),
                      np.searchsorted(self.rate_edges, filled[:, 2], side="right")], axis=1) + 1
        return np.where(np.isfinite(v), b, 0).astype(np.int32)

    def inputs(self, tokens: np.ndarray, target: np.ndarray, row_request: np.ndarray | None = None
               ) -> np.ndarray:
        """This table's three columns ([N, 3] int32, before the offsets) of rows given by ids (see `values`)."""
        return self.bucketise(self.values(tokens, target, row_request))

    # --- persistence -----------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"n_targets": self.n_targets, "keys": self.keys.tolist(), "clicks": self.clicks.tolist(),
                "impressions": self.impressions.tolist(), "token_clicks": self.token_clicks.tolist(),
                "prior": self.prior.tolist(), "click_rate": self.click_rate, "edges": self.edges.tolist(),
                "rate_edges": self.rate_edges.tolist(), "smoothing": self.smoothing,
                "rate_smoothing": self.rate_smoothing}

    @classmethod
    def from_json(cls, d: dict) -> TokenShareTable:
        f = np.float64
        return cls(int(d["n_targets"]), np.asarray(d["keys"], np.int64), np.asarray(d["clicks"], f),
                   np.asarray(d["impressions"], f), np.asarray(d["token_clicks"], f), np.asarray(d["prior"], f),
                   float(d["click_rate"]), np.asarray(d["edges"], f), np.asarray(d["rate_edges"], f),
                   float(d["smoothing"]), float(d["rate_smoothing"]))


@dataclass
class TitleWordTable:
    """Label-free: how often a word of the training period's item titles goes with a target (the brand),

        title(t, b) = (items(t, b) + smoothing * prior(b)) / (items(t) + smoothing),

    items(t, b) counting the training-period items whose title holds t and whose brand is b, prior(b) b's share of
    those items; a row's value is the max over its query's distinct tokens. Why: a brand's name is in its titles,
    so a query naming a brand points to it even where few clicks do (the reference's third feature by gain; +0.005
    NDCG@10 for the network on the default run's features, issue 14)."""

    n_targets: int
    keys: np.ndarray  # int64 token * n_targets + target, sorted
    items: np.ndarray  # float64 items per key
    token_items: np.ndarray  # float64 items per token id
    prior: np.ndarray  # float64 per target id
    edges: np.ndarray
    smoothing: float

    @classmethod
    def fit(cls, title_tokens: np.ndarray, item_target: np.ndarray, tokens: np.ndarray, target: np.ndarray,
            n_tokens: int, n_targets: int, buckets: int, smoothing: float) -> tuple[TitleWordTable, np.ndarray]:
        """The table from the training period's items (title tokens and target, one row per item), and the training
        rows' column ([N, 1] int32; no folds: no label is counted); edges are quantiles of those rows' values."""
        t = _distinct(np.asarray(title_tokens))
        c = np.asarray(item_target, np.int64)
        valid = (t >= 0) & (c[:, None] > 0)
        keys, counts = np.unique((t * n_targets + c[:, None])[valid], return_counts=True)
        per_token = np.bincount(t[valid], minlength=n_tokens)[:n_tokens].astype(np.float64)
        per_target = np.bincount(c[c > 0], minlength=n_targets)[:n_targets].astype(np.float64)
        table = cls(n_targets, keys, counts.astype(np.float64), per_token, per_target / max(per_target.sum(), 1.0),
                    np.zeros(0), float(smoothing))
        raw = table.values(tokens, target)
        v = raw[np.isfinite(raw)]
        qs = np.linspace(0, 1, buckets + 1)[1:-1]
        table.edges = np.unique(np.quantile(v, qs)) if v.size else np.zeros(0)
        return table, table.bucketise(raw)

    def values(self, tokens: np.ndarray, target: np.ndarray, row_request: np.ndarray | None = None) -> np.ndarray:
        """[N, 1] float64: the max over each row's distinct query tokens (NaN: no token or no target)."""
        t, cc, valid, pos = _lookup(self.keys, self.n_targets, tokens, target, row_request)
        n_tok = len(self.token_items)
        pair = np.where(pos >= 0, self.items[pos], 0.0) if self.keys.size else np.zeros(pos.shape)
        tok = np.where(valid, self.token_items[np.clip(t, 0, n_tok - 1)] * (t < n_tok), 0.0)
        value = (pair + self.smoothing * self.prior[cc][:, None]) / (tok + self.smoothing)
        some = valid.any(axis=1)
        mx = np.where(some, np.where(valid, value, -np.inf).max(axis=1, initial=-np.inf), np.nan)
        return mx[:, None]

    def bucketise(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, np.float64)
        b = np.searchsorted(self.edges, np.nan_to_num(v, nan=0.0), side="right") + 1
        return np.where(np.isfinite(v), b, 0).astype(np.int32)

    def per_query(self, tokens: np.ndarray) -> np.ndarray:
        """[n_targets, 1] int32 buckets of one query against every target id (see TokenShareTable.per_query)."""
        n = self.n_targets
        n_tok = len(self.token_items)
        t = _distinct(np.asarray(tokens).reshape(1, -1))[0]
        t = t[t >= 0]
        if not 0 < n_tok * n <= DENSE_MAX_CELLS or (t >= n_tok).any():
            return self.inputs(np.asarray(tokens).reshape(1, -1), np.arange(n), np.zeros(n, np.intp))
        if t.size == 0:
            return np.zeros((n, 1), np.int32)
        if not hasattr(self, "_dense_cache"):
            items = np.zeros(n_tok * n)
            inside = self.keys < n_tok * n
            items[self.keys[inside]] = self.items[inside]
            self._dense_cache = ((items.reshape(n_tok, n) + self.smoothing * self.prior[None, :])
                                 / (self.token_items[:, None] + self.smoothing))
        values = self._dense_cache[t].max(axis=0)
        values[0] = np.nan
        return self.bucketise(values[:, None])

    def inputs(self, tokens: np.ndarray, target: np.ndarray, row_request: np.ndarray | None = None) -> np.ndarray:
        return self.bucketise(self.values(tokens, target, row_request))

    def to_json(self) -> dict:
        return {"n_targets": self.n_targets, "keys": self.keys.tolist(), "items": self.items.tolist(),
                "token_items": self.token_items.tolist(), "prior": self.prior.tolist(), "edges": self.edges.tolist(),
                "smoothing": self.smoothing}

    @classmethod
    def from_json(cls, d: dict) -> TitleWordTable:
        f = np.float64
        return cls(int(d["n_targets"]), np.asarray(d["keys"], np.int64), np.asarray(d["items"], f),
                   np.asarray(d["token_items"], f), np.asarray(d["prior"], f), np.asarray(d["edges"], f),
                   float(d["smoothing"]))


@dataclass
class QueryAffinity:
    """The tables and the query's columns of the pair input they make: [N, QUERY_AFFINITY_WIDTH] int32. Columns,
    grouped by the candidate field they read (AFFINITY_TARGETS): per target its click table's max share, mean share
    and mean click rate, then, for the targets in TITLE_TARGETS, the title table's max. Column k is offset by
    k * `column_size` so that the model looks every column up in one embedding table of `input_size` rows (one
    table, no slicing layers in the graph; the pair head averages the looked-up rows)."""

    tables: dict[str, TokenShareTable]
    titles: dict[str, TitleWordTable]
    column_size: int  # buckets + 1: values 0 (nothing to go on) .. buckets of one column

    @property
    def input_size(self) -> int:
        return AFFINITY_WIDTH * self.column_size

    @staticmethod
    def empty(n: int, column_size: int) -> np.ndarray:
        """The query's columns of N rows with nothing to go on (bucket 0 in every column): an unfitted transform's."""
        return np.broadcast_to(np.arange(QUERY_AFFINITY_WIDTH, dtype=np.int32) * column_size,
                               (n, QUERY_AFFINITY_WIDTH)).copy()

    @staticmethod
    def size_for(buckets: int) -> int:
        """The embedding size for `buckets` buckets per column (what an unfitted transform reports): every column of
        the pair input, the history-match columns included."""
        return AFFINITY_WIDTH * (buckets + 1)

    @classmethod
    def fit(cls, tokens: np.ndarray, targets: dict[str, np.ndarray], clicked: np.ndarray, request: np.ndarray,
            items: dict[str, np.ndarray], n_tokens: int, n_targets: dict[str, int], buckets: int, smoothing: float,
            rate_smoothing: float, title_smoothing: float, folds: int, seed: int) -> tuple[QueryAffinity, np.ndarray]:
        """Every table from the training rows (query tokens, targets, labels, requests) and the training period's
        items (`items`: "title_tokens" and each target, one row per item); returns the training rows' input,
        out of fold for the click tables."""
        tables, titles, parts = {}, {}, []
        for name in AFFINITY_TARGETS:
            tables[name], part = TokenShareTable.fit(tokens, targets[name], clicked, request, n_tokens,
                                                     n_targets[name], buckets, smoothing, rate_smoothing, folds,
                                                     seed)
            parts.append(part)
            if name in TITLE_TARGETS:
                titles[name], part = TitleWordTable.fit(items["title_tokens"], items[name], tokens, targets[name],
                                                        n_tokens, n_targets[name], buckets, title_smoothing)
                parts.append(part)
        self = cls(tables, titles, buckets + 1)
        return self, self._offset(parts, 0)

    def _offset(self, parts: list[np.ndarray], first: int) -> np.ndarray:
        out = np.concatenate(parts, axis=1).astype(np.int32)
        return out + np.arange(first, first + out.shape[1], dtype=np.int32) * self.column_size

    def _columns(self, name: str, tokens: np.ndarray, target: np.ndarray, row_request: np.ndarray | None
                 ) -> list[np.ndarray]:
        cols = [self.tables[name].inputs(tokens, target, row_request)]
        if name in self.titles:
            cols.append(self.titles[name].inputs(tokens, target, row_request))
        return cols

    def inputs(self, tokens: np.ndarray, targets: dict[str, np.ndarray], row_request: np.ndarray | None = None
               ) -> np.ndarray:
        """The model input of N rows: `tokens` [N, Q] (or [R, Q] with `row_request`), each target's ids [N]."""
        return self._offset([c for name in AFFINITY_TARGETS
                             for c in self._columns(name, tokens, targets[name], row_request)], 0)

    def per_target(self, tokens: np.ndarray) -> tuple[np.ndarray, ...]:
        """For one query's token ids [Q]: per target (AFFINITY_TARGETS order), its columns of the input for every
        target id ([n_targets, its columns] int32, offsets applied), i.e. `inputs` evaluated on every id at once. A
        request's rows are then gathers from these (the model server caches them per query:
        shoprank.features.transform)."""
        q = np.asarray(tokens).reshape(1, -1)
        out, first = [], 0
        for name in AFFINITY_TARGETS:
            cols = [self.tables[name].per_query(q)]
            if name in self.titles:
                cols.append(self.titles[name].per_query(q))
            cols = self._offset(cols, first)
            out.append(cols)
            first += cols.shape[1]
        return tuple(out)

    def to_json(self) -> dict:
        return {"column_size": self.column_size, "tables": {k: v.to_json() for k, v in self.tables.items()},
                "titles": {k: v.to_json() for k, v in self.titles.items()}}

    @classmethod
    def from_json(cls, d: dict) -> QueryAffinity:
        return cls({k: TokenShareTable.from_json(v) for k, v in d["tables"].items()},
                   {k: TitleWordTable.from_json(v) for k, v in d.get("titles", {}).items()}, int(d["column_size"]))
