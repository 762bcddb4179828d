"""The feature transform: raw request fields -> model tensors.

One function, `FeatureTransform.transform`, is used by preprocessing (a million rows at once), by the
evaluator, by the blessing gate and by the model server (one request of a hundred candidates), so
training and serving cannot drift. It uses numpy and dict look-ups only, no pandas.

Index layout of every vocabulary: 0 = padding/missing, 1..oov_buckets = hashed out-of-vocabulary
buckets, then the known values in order.
"""

from __future__ import annotations

import json
import re
import sys
import zlib
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shoprank.config import FeatureConfig
from shoprank.features.affinity import (
    AFFINITY_INPUT,
    AFFINITY_TARGETS,
    AFFINITY_WIDTH,
    QUERY_AFFINITY_WIDTH,
    QueryAffinity,
    history_columns,
)
from shoprank.features.cache import ByteBoundedCache, arrays_cost
from shoprank.features.history_match import category_tops, history_match

__all__ = [
    "INPUTS",
    "ITEM_INPUTS",
    "PAIR_INPUTS",
    "TOKEN_CACHE_BYTES",
    "TOKEN_CACHE_ENTRY_OVERHEAD",
    "REQUEST_INPUTS",
    "TOKEN_RE",
    "Catalogue",
    "FeatureTransform",
    "RawBatch",
    "UnindexedVocabulary",
    "Vocabulary",
    "input_shapes",
    "tokenize",
]

TOKEN_RE = re.compile(r"[a-z0-9]+")
# Model input names, in signature order. The serving signature takes exactly these.
INPUTS = ("query_tokens", "title_tokens", "history_items", "history_categories", "history_brands",
          "item_id", "category", "brand", "price_bucket", "item_popularity", "category_price", AFFINITY_INPUT)
# Inputs that depend only on the candidate item, those that depend on the (request, candidate) pair (the query's
# affinity to the candidate's category and brand: shoprank.features.affinity), and those of the request only.
ITEM_INPUTS = ("title_tokens", "item_id", "category", "brand", "price_bucket", "item_popularity", "category_price")
PAIR_INPUTS = (AFFINITY_INPUT,)
REQUEST_INPUTS = tuple(name for name in INPUTS if name not in ITEM_INPUTS and name not in PAIR_INPUTS)
# The token cache is bounded in bytes, not entries: a serving worker caches client-chosen text, and an entry
# bound (500,000 entries of queries up to 1,024 characters was ~650 MB) says nothing about memory. An entry costs
# sys.getsizeof(text) + the ids' nbytes + TOKEN_CACHE_ENTRY_OVERHEAD: the key tuple (56 B), the ndarray object
# (112 B) and the OrderedDict's hash slot and link (~100 B), measured with tracemalloc over 100,000 entries in
# tests/serving/test_token_cache.py, which checks that the accounted bytes stay within 10% of the measured ones.
TOKEN_CACHE_BYTES = 32 << 20
TOKEN_CACHE_ENTRY_OVERHEAD = 270
# The query affinity per query (every target id's columns, `QueryAffinity.per_target`), cached in bytes like the
# tokens: at serving a request's affinity is then two gathers (~10 us) instead of ~40 numpy calls over its rows
# (~280 us per 100 candidates, measured on the default bundle). Used for up to AFFINITY_CACHE_MAX_REQUESTS requests per
# call and when no target vocabulary is larger than AFFINITY_CACHE_MAX_TARGETS (a query's entry grows with them);
# otherwise the vectorised path (preprocessing's, and the same numbers: tests/features/test_affinity.py).
AFFINITY_CACHE_BYTES = 16 << 20
AFFINITY_CACHE_MAX_TARGETS = 4096
AFFINITY_CACHE_MAX_REQUESTS = 256


def _entry_cost(text: str, ids: np.ndarray) -> int:
    """Accounted bytes of one token-cache entry (see TOKEN_CACHE_ENTRY_OVERHEAD)."""
    return sys.getsizeof(text) + ids.nbytes + TOKEN_CACHE_ENTRY_OVERHEAD


def tokenize(text: str | None) -> list[str]:
    return TOKEN_RE.findall(text.lower()) if text else []


def input_shapes(features: FeatureConfig) -> dict[str, tuple[int, ...]]:
    """Per-row shape of every model input (INPUTS order): the serving signature and the v2 codec use it."""
    return {
        "query_tokens": (features.query_len,),
        "title_tokens": (features.title_len,),
        "history_items": (features.history_len,),
        "history_categories": (features.history_len,),
        "history_brands": (features.history_len,),
        "item_id": (),
        "category": (),
        "brand": (),
        "price_bucket": (),
        "item_popularity": (),
        "category_price": (),
        AFFINITY_INPUT: (AFFINITY_WIDTH,),
    }


class Vocabulary:
    """String -> index with hashed OOV buckets."""

    def __init__(self, values: Sequence[str], oov_buckets: int):
        self.values = list(values)
        self.oov_buckets = oov_buckets
        self._index = {v: i + 1 + oov_buckets for i, v in enumerate(self.values)}

    @classmethod
    def fit(cls, values: Iterable[str], oov_buckets: int, min_count: int = 1, max_size: int | None = None
            ) -> Vocabulary:
        counts = Counter(v for v in values if v)
        kept = sorted((v for v, c in counts.items() if c >= min_count), key=lambda v: (-counts[v], v))
        return cls(kept[:max_size] if max_size else kept, oov_buckets)

    @property
    def size(self) -> int:
        return 1 + self.oov_buckets + len(self.values)

    def lookup(self, value: str | None) -> int:
        if not value:
            return 0
        idx = self._index.get(value)
        if idx is not None:
            return idx
        return 1 + zlib.crc32(value.encode("utf-8")) % self.oov_buckets

    def known(self, value: str | None) -> bool:
        return bool(value) and value in self._index


class UnindexedVocabulary:
    """A vocabulary's size without its values (`FeatureTransform.load(..., unindexed=...)`): for the model server,
    which looks item ids up in memory-mapped tables made when the bundle is made (shoprank.scoring.item_tables)
    instead of holding a dict of millions of ids per worker. Looking a value up here is a bug, and says so."""

    def __init__(self, name: str, size: int, oov_buckets: int):
        self.name, self.size, self.oov_buckets = name, size, oov_buckets

    def _refuse(self, *_):
        raise RuntimeError(f"the '{self.name}' vocabulary was loaded without its values (unindexed); look its ids "
                           "up in the bundle's item tables")

    lookup = known = _refuse
    values = property(_refuse)


@dataclass
class RawBatch:
    """Raw fields of R ranking requests with N candidate rows in all (row_request maps row -> request)."""

    queries: Sequence[str]
    histories: Sequence[Sequence[str]]  # item ids, oldest first
    history_categories: Sequence[Sequence[str]]
    history_brands: Sequence[Sequence[str]]
    row_request: np.ndarray
    item_id: Sequence[str]
    title: Sequence[str]
    category: Sequence[str]
    brand: Sequence[str]
    price: np.ndarray


class FeatureTransform:
    """Vocabularies, price buckets, two item statistics of the training period and the query affinity tables.

    The item statistics (label-free, issue 14): `popularity`, per item index, the quantile bucket of the item's
    log occurrences in the training period (0: none, or unknown); `category_price_edges`, per category index, the
    price quantiles of its training-period items (an item's `category_price` is its bucket among them: cheap or
    dear for its category, which the price bucket alone cannot say). The affinity tables are None until
    preprocessing has counted the training clicks: `query_affinity` is then bucket 0, "nothing to go on", in
    every column."""

    def __init__(self, vocabs: dict[str, Vocabulary], price_edges: np.ndarray, config: FeatureConfig,
                 token_cache_bytes: int = TOKEN_CACHE_BYTES, affinity: QueryAffinity | None = None,
                 popularity: np.ndarray | None = None, category_price_edges: np.ndarray | None = None):
        self.vocabs = vocabs
        self.price_edges = np.asarray(price_edges, dtype=np.float64)
        self.config = config
        self.affinity = affinity
        n_items, n_cats = vocabs["item"].size, vocabs["category"].size
        self.popularity = (np.zeros(n_items, np.int32) if popularity is None
                           else np.asarray(popularity, np.int32))
        self.category_price_edges = (np.full((n_cats, config.category_price_buckets - 1), np.inf)
                                     if category_price_edges is None
                                     else np.asarray(category_price_edges, np.float64).reshape(n_cats, -1))
        # Derived from the category vocabulary (not stored): each category id's top category, for the history match.
        self.category_top = category_tops(vocabs["category"].values, 1 + vocabs["category"].oov_buckets, n_cats)
        self._token_cache: ByteBoundedCache[np.ndarray] = ByteBoundedCache(
            token_cache_bytes, lambda key, ids: _entry_cost(key[0], ids))
        self._affinity_cache: ByteBoundedCache[tuple[np.ndarray, ...]] = ByteBoundedCache(
            AFFINITY_CACHE_BYTES, lambda key, arrays: arrays_cost(key, arrays, TOKEN_CACHE_ENTRY_OVERHEAD))

    # --- fitting and persistence -------------------------------------------------------------
    @classmethod
    def fit(cls, queries: Iterable[str], titles: Iterable[str], item_ids: Iterable[str],
            categories: Iterable[str], brands: Iterable[str], prices: np.ndarray, config: FeatureConfig,
            item_counts: np.ndarray | None = None) -> FeatureTransform:
        """Vocabularies, price buckets and item statistics from training data only (no look into the future).
        `item_counts`: each item's occurrences in the training period (events and impressions), for the
        popularity buckets; None leaves every item at 0 ("no count")."""
        item_ids, categories = list(item_ids), list(categories)
        tokens = (t for text in [*queries, *titles] for t in tokenize(text))
        oov = config.oov_buckets
        vocabs = {
            "token": Vocabulary.fit(tokens, oov, config.min_token_count),
            "item": Vocabulary.fit(item_ids, oov, 1, config.max_items),
            "category": Vocabulary.fit(categories, oov),
            "brand": Vocabulary.fit(brands, oov),
        }
        raw_prices = np.asarray(prices, dtype=np.float64)
        p = raw_prices[np.isfinite(raw_prices)]
        qs = np.linspace(0, 1, config.price_buckets + 1)[1:-1]
        edges = np.unique(np.quantile(p, qs)) if p.size else np.array([])
        popularity = None
        if item_counts is not None:
            counts = np.asarray(item_counts, np.float64)
            index = np.fromiter((vocabs["item"].lookup(v) if vocabs["item"].known(v) else 0 for v in item_ids),
                                np.int64, len(item_ids))
            seen = (counts > 0) & (index > 0)
            log_n = np.log1p(counts[seen])
            pq_ = np.linspace(0, 1, config.popularity_buckets + 1)[1:-1]
            pop_edges = np.unique(np.quantile(log_n, pq_)) if log_n.size else np.array([])
            popularity = np.zeros(vocabs["item"].size, np.int32)
            popularity[index[seen]] = np.searchsorted(pop_edges, log_n, side="right") + 1
        cat_index = np.fromiter((vocabs["category"].lookup(v) for v in categories), np.int64, len(categories))
        return cls(vocabs, edges, config, popularity=popularity,
                   category_price_edges=_category_price_edges(cat_index, raw_prices, vocabs["category"].size,
                                                              config.category_price_buckets))

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        payload = {
            "config": self.config.model_dump(),
            "price_edges": self.price_edges.tolist(),
            "oov_buckets": {k: v.oov_buckets for k, v in self.vocabs.items()},
            "vocabularies": {k: v.values for k, v in self.vocabs.items()},
            "affinity": self.affinity.to_json() if self.affinity is not None else None,
            "popularity": self.popularity.tolist(),
            # +inf pads a category with fewer distinct prices than buckets (json writes it as Infinity)
            "category_price_edges": self.category_price_edges.tolist(),
        }
        (d / "transform.json").write_text(json.dumps(payload))

    @classmethod
    def load(cls, directory: str | Path, token_cache_bytes: int = TOKEN_CACHE_BYTES,
             unindexed: Collection[str] = ()) -> FeatureTransform:
        """The saved transform. Vocabularies named in `unindexed` keep only their size (UnindexedVocabulary): what
        a server with item tables needs of the item vocabulary (its size bounds tensor requests' ids)."""
        payload = json.loads((Path(directory) / "transform.json").read_text())
        oov = payload["oov_buckets"]
        vocabs = {k: UnindexedVocabulary(k, 1 + oov[k] + len(v), oov[k]) if k in unindexed else Vocabulary(v, oov[k])
                  for k, v in payload["vocabularies"].items()}
        affinity = payload.get("affinity")
        return cls(vocabs, np.array(payload["price_edges"]), FeatureConfig(**payload["config"]),
                   token_cache_bytes=token_cache_bytes,
                   affinity=QueryAffinity.from_json(affinity) if affinity else None,
                   popularity=payload.get("popularity"), category_price_edges=payload.get("category_price_edges"))

    @property
    def sizes(self) -> dict[str, int]:
        """Embedding sizes: vocabularies, price buckets, and the affinity input's one table (fitted or not)."""
        return {k: v.size for k, v in self.vocabs.items()} | {
            "price": len(self.price_edges) + 2, "affinity": QueryAffinity.size_for(self.config.affinity_buckets),
            "popularity": self.config.popularity_buckets + 1, "category_price": self.config.category_price_buckets + 1}

    # --- the transform ------------------------------------------------------------------------
    def tokens(self, text: str, length: int) -> np.ndarray:
        """Token ids of `text`, cut or 0-padded to `length` (cached: queries repeat; see token_cache_bytes).

        Callers must not modify the returned array: it is the cached one."""
        return self._token_cache.get((text, length), lambda: self._token_ids(text, length))

    def _token_ids(self, text: str, length: int) -> np.ndarray:
        ids = [self.vocabs["token"].lookup(t) for t in tokenize(text)][:length]
        out = np.zeros(length, dtype=np.int32)
        out[: len(ids)] = ids
        return out

    @property
    def token_cache_bytes(self) -> int:
        """The token cache's bound in accounted bytes; 0 turns the cache off (the server's --token_cache_bytes)."""
        return self._token_cache.limit

    @token_cache_bytes.setter
    def token_cache_bytes(self, limit: int) -> None:
        self._token_cache.limit = limit

    @property
    def token_cache_info(self) -> dict[str, int]:
        """Entries held, their accounted bytes and the bound (for /metrics-style reporting and tests)."""
        return {"entries": len(self._token_cache), "bytes": self._token_cache.used, "limit": self.token_cache_bytes}

    def _sequence(self, values: Sequence[Sequence[str]], vocab: Vocabulary) -> np.ndarray:
        length = self.config.history_len
        out = np.zeros((len(values), length), dtype=np.int32)
        for r, seq in enumerate(values):
            recent = list(seq)[-length:]
            if recent:
                out[r, length - len(recent):] = [vocab.lookup(v) for v in recent]
        return out

    def price_bucket(self, price: np.ndarray) -> np.ndarray:
        p = np.asarray(price, dtype=np.float64)
        bucket = np.searchsorted(self.price_edges, np.nan_to_num(p, nan=0.0), side="right") + 1
        return np.where(np.isfinite(p) & (p >= 0), bucket, 0).astype(np.int32)

    def category_price(self, category: np.ndarray, price: np.ndarray) -> np.ndarray:
        """An item's price bucket among its category's training-period items (1 = cheapest; 0: no price or no
        category), from category indices and prices."""
        c = np.asarray(category, np.int64)
        p = np.asarray(price, np.float64)
        ok = np.isfinite(p) & (p >= 0) & (c > 0) & (c < len(self.category_price_edges))
        e = self.category_price_edges[np.where(ok, c, 0)]
        bucket = (np.nan_to_num(p, nan=0.0)[:, None] >= e).sum(axis=1) + 1
        return np.where(ok, bucket, 0).astype(np.int32)

    def pair_input(self, query_tokens: np.ndarray, history_categories: np.ndarray, history_brands: np.ndarray,
                   targets: dict[str, np.ndarray], row_request: np.ndarray | None = None) -> np.ndarray:
        """The pair input `query_affinity` [N, AFFINITY_WIDTH]: the query's affinity columns, then the history-match
        columns. Query token ids and histories [N, ...] (or [R, ...] with `row_request`), each target's ids [N]
        (AFFINITY_TARGETS: the candidates' category and brand indices). What `transform`, preprocessing and the
        model server's id path (shoprank.scoring.ranker) all call."""
        return np.concatenate([self.query_affinity(query_tokens, targets, row_request),
                               self.history_columns(history_categories, history_brands, targets, row_request)], axis=1)

    def history_columns(self, history_categories: np.ndarray, history_brands: np.ndarray,
                        targets: dict[str, np.ndarray], row_request: np.ndarray | None = None) -> np.ndarray:
        """The pair input's history-match columns [N, 3] (shoprank.features.history_match), ids with offsets."""
        counts = history_match(history_categories, history_brands, targets["category"], targets["brand"],
                               self.category_top, row_request)
        return history_columns(counts, self.config.affinity_buckets + 1)

    def query_affinity(self, query_tokens: np.ndarray, targets: dict[str, np.ndarray],
                       row_request: np.ndarray | None = None) -> np.ndarray:
        """The pair input's query columns [N, QUERY_AFFINITY_WIDTH] from ids: query token ids [N, Q] (or [R, Q] with
        `row_request`) and each target's ids [N] (AFFINITY_TARGETS: the candidates' category and brand indices)."""
        if self.affinity is None:
            n = len(next(iter(targets.values())))
            return QueryAffinity.empty(n, self.config.affinity_buckets + 1)
        q = np.asarray(query_tokens)
        cacheable = (row_request is not None and len(q) <= AFFINITY_CACHE_MAX_REQUESTS
                     and max(t.n_targets for t in self.affinity.tables.values()) <= AFFINITY_CACHE_MAX_TARGETS)
        if not cacheable:
            return self.affinity.inputs(q, targets, row_request)
        rr = np.asarray(row_request, np.intp)
        cols = [np.asarray(targets[name], np.intp) for name in AFFINITY_TARGETS]
        if len(q) == 1:
            dense = self.affinity_of_query(q[0])
            return np.concatenate([_take_target_rows(d, c) for d, c in zip(dense, cols)], axis=1)
        out = np.empty((len(rr), QUERY_AFFINITY_WIDTH), np.int32)
        order = np.argsort(rr, kind="stable")
        bounds = np.searchsorted(rr[order], np.arange(len(q) + 1))
        for r in range(len(q)):
            rows = order[bounds[r]: bounds[r + 1]]
            if rows.size:
                dense = self.affinity_of_query(q[r])
                out[rows] = np.concatenate([_take_target_rows(d, c[rows]) for d, c in zip(dense, cols)], axis=1)
        return out

    def affinity_of_query(self, tokens: np.ndarray) -> tuple[np.ndarray, ...]:
        """`QueryAffinity.per_target` of one query's token ids [Q] (per target, its columns of the input for every
        target id), through the byte-bounded cache. Needs a fitted affinity."""
        key = np.ascontiguousarray(tokens, np.int32).tobytes()
        return self._affinity_cache.get(key, lambda: self.affinity.per_target(tokens))

    def transform(self, batch: RawBatch) -> dict[str, np.ndarray]:
        """Model tensors for every candidate row of `batch` (the one function, see module doc)."""
        rr = np.asarray(batch.row_request, dtype=np.int64)
        q = np.stack([self.tokens(s, self.config.query_len) for s in batch.queries]) if len(batch.queries) \
            else np.zeros((0, self.config.query_len), np.int32)
        hist = self._sequence(batch.histories, self.vocabs["item"])
        hist_cat = self._sequence(batch.history_categories, self.vocabs["category"])
        hist_brand = self._sequence(batch.history_brands, self.vocabs["brand"])
        titles = [self.tokens(s, self.config.title_len) for s in batch.title]
        items, cats, brands = self.vocabs["item"], self.vocabs["category"], self.vocabs["brand"]
        category = np.fromiter((cats.lookup(v) for v in batch.category), np.int32, len(rr))
        brand = np.fromiter((brands.lookup(v) for v in batch.brand), np.int32, len(rr))
        item_index = np.fromiter((items.lookup(v) for v in batch.item_id), np.int32, len(rr))
        return {
            "query_tokens": q[rr],
            "title_tokens": np.stack(titles) if titles else np.zeros((0, self.config.title_len), np.int32),
            "history_items": hist[rr],
            "history_categories": hist_cat[rr],
            "history_brands": hist_brand[rr],
            "item_id": item_index,
            "category": category,
            "brand": brand,
            "price_bucket": self.price_bucket(batch.price),
            "item_popularity": self.popularity[item_index],
            "category_price": self.category_price(category, batch.price),
            AFFINITY_INPUT: self.pair_input(q, hist_cat, hist_brand, {"category": category, "brand": brand}, rr),
        }


def _take_target_rows(dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows of a per-query table by target id; ids outside it (a tensor request's) get its row 0 (no target)."""
    safe = np.where((ids >= 0) & (ids < len(dense)), ids, 0)
    return np.take(dense, safe, axis=0)


def _category_price_edges(category: np.ndarray, price: np.ndarray, n_categories: int, buckets: int) -> np.ndarray:
    """[n_categories, buckets - 1] price quantiles of each category's items, +inf padded (unique edges only)."""
    out = np.full((n_categories, buckets - 1), np.inf)
    ok = np.isfinite(price) & (price >= 0) & (category > 0)
    qs = np.linspace(0, 1, buckets + 1)[1:-1]
    order = np.argsort(category[ok], kind="stable")
    cats, prices = category[ok][order], price[ok][order]
    bounds = np.flatnonzero(np.diff(cats)) + 1
    for lo, hi in zip([0, *bounds.tolist()], [*bounds.tolist(), len(cats)]):
        if hi > lo:
            e = np.unique(np.quantile(prices[lo:hi], qs))
            out[cats[lo], : len(e)] = e
    return out


class Catalogue:
    """Item fields by id: what serving and preprocessing look candidates and history items up in."""

    def __init__(self, item_id: Sequence[str], title: Sequence[str], category: Sequence[str],
                 brand: Sequence[str], price: np.ndarray):
        self.item_id = np.asarray(item_id, dtype=object)
        self.title = np.asarray(title, dtype=object)
        self.category = np.asarray(category, dtype=object)
        self.brand = np.asarray(brand, dtype=object)
        self.price = np.asarray(price, dtype=np.float64)
        self.index = {v: i for i, v in enumerate(self.item_id)}

    @classmethod
    def from_table(cls, table: pa.Table) -> Catalogue:
        cols = table.to_pydict()
        return cls(cols["item_id"], cols["title"], cols["category"], cols["brand"],
                   np.array(cols["price"], dtype=np.float64))

    @classmethod
    def load(cls, path: str | Path) -> Catalogue:
        return cls.from_table(pq.read_table(path))

    def save(self, path: str | Path) -> None:
        pq.write_table(pa.table({"item_id": list(self.item_id), "title": list(self.title),
                                 "category": list(self.category), "brand": list(self.brand),
                                 "price": self.price}), path)

    def __len__(self) -> int:
        return len(self.item_id)

    def rows(self, item_ids: Iterable[str]) -> np.ndarray:
        """Row index per id, -1 for ids the catalogue does not know (one C-level pass: the serving hot path)."""
        return np.fromiter(map(self.index.get, item_ids, repeat(-1)), np.int64)

    def field_of(self, field: str, item_ids: Sequence[str]) -> list[str]:
        """`field` ("category" or "brand") of each id, "" for unknown ids."""
        get = self.index.get
        col = getattr(self, field)
        return [col[i] if (i := get(v)) is not None else "" for v in item_ids]

    def batch(self, queries: Sequence[str], histories: Sequence[Sequence[str]],
              candidates: Sequence[Sequence[str]]) -> tuple[RawBatch, np.ndarray]:
        """A RawBatch for requests given by id; also returns which candidate rows were unknown."""
        flat = [c for cands in candidates for c in cands]
        rr = np.repeat(np.arange(len(candidates)), [len(c) for c in candidates])
        rows = self.rows(flat)
        unknown = rows < 0
        safe = np.where(unknown, 0, rows)

        def pick(col: np.ndarray, missing):
            vals = col[safe] if len(col) else np.full(len(flat), missing, dtype=object)
            return np.where(unknown, missing, vals)

        batch = RawBatch(
            queries=list(queries), histories=histories,
            history_categories=[self.field_of("category", h) for h in histories],
            history_brands=[self.field_of("brand", h) for h in histories],
            row_request=rr, item_id=flat, title=pick(self.title, ""), category=pick(self.category, ""),
            brand=pick(self.brand, ""), price=np.where(unknown, np.nan, self.price[safe] if len(self) else np.nan),
        )
        return batch, unknown
