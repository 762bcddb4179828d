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
from collections import Counter, OrderedDict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shoprank.config import FeatureConfig

__all__ = [
    "INPUTS",
    "ITEM_INPUTS",
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
          "item_id", "category", "brand", "price_bucket")
# Inputs that depend only on the candidate item, and those that depend only on the request.
ITEM_INPUTS = ("title_tokens", "item_id", "category", "brand", "price_bucket")
REQUEST_INPUTS = tuple(name for name in INPUTS if name not in ITEM_INPUTS)
# The token cache is bounded in bytes, not entries: a serving worker caches client-chosen text, and an entry
# bound (500,000 entries of queries up to 1,024 characters was ~650 MB) says nothing about memory. An entry costs
# sys.getsizeof(text) + the ids' nbytes + TOKEN_CACHE_ENTRY_OVERHEAD: the key tuple (56 B), the ndarray object
# (112 B) and the OrderedDict's hash slot and link (~100 B), measured with tracemalloc over 100,000 entries in
# tests/serving/test_token_cache.py, which checks that the accounted bytes stay within 10% of the measured ones.
TOKEN_CACHE_BYTES = 32 << 20
TOKEN_CACHE_ENTRY_OVERHEAD = 270


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
    def __init__(self, vocabs: dict[str, Vocabulary], price_edges: np.ndarray, config: FeatureConfig,
                 token_cache_bytes: int = TOKEN_CACHE_BYTES):
        self.vocabs = vocabs
        self.price_edges = np.asarray(price_edges, dtype=np.float64)
        self.config = config
        self.token_cache_bytes = token_cache_bytes  # 0 turns the cache off
        self._token_cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._token_cache_used = 0  # accounted bytes of the entries held (see TOKEN_CACHE_ENTRY_OVERHEAD)

    # --- fitting and persistence -------------------------------------------------------------
    @classmethod
    def fit(cls, queries: Iterable[str], titles: Iterable[str], item_ids: Iterable[str],
            categories: Iterable[str], brands: Iterable[str], prices: np.ndarray, config: FeatureConfig
            ) -> FeatureTransform:
        """Vocabularies and price buckets from training data only (no look into the future)."""
        tokens = (t for text in [*queries, *titles] for t in tokenize(text))
        oov = config.oov_buckets
        vocabs = {
            "token": Vocabulary.fit(tokens, oov, config.min_token_count),
            "item": Vocabulary.fit(item_ids, oov, 1, config.max_items),
            "category": Vocabulary.fit(categories, oov),
            "brand": Vocabulary.fit(brands, oov),
        }
        p = np.asarray(prices, dtype=np.float64)
        p = p[np.isfinite(p)]
        qs = np.linspace(0, 1, config.price_buckets + 1)[1:-1]
        edges = np.unique(np.quantile(p, qs)) if p.size else np.array([])
        return cls(vocabs, edges, config)

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        payload = {
            "config": self.config.model_dump(),
            "price_edges": self.price_edges.tolist(),
            "oov_buckets": {k: v.oov_buckets for k, v in self.vocabs.items()},
            "vocabularies": {k: v.values for k, v in self.vocabs.items()},
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
        return cls(vocabs, np.array(payload["price_edges"]), FeatureConfig(**payload["config"]),
                   token_cache_bytes=token_cache_bytes)

    @property
    def sizes(self) -> dict[str, int]:
        return {k: v.size for k, v in self.vocabs.items()} | {"price": len(self.price_edges) + 2}

    # --- the transform ------------------------------------------------------------------------
    def tokens(self, text: str, length: int) -> np.ndarray:
        """Token ids of `text`, cut or 0-padded to `length` (cached: queries repeat; see token_cache_bytes).

        Callers must not modify the returned array: it is the cached one."""
        key = (text, length)
        cache = self._token_cache
        hit = cache.get(key)
        if hit is None:
            ids = [self.vocabs["token"].lookup(t) for t in tokenize(text)][:length]
            hit = np.zeros(length, dtype=np.int32)
            hit[: len(ids)] = ids
            cost = _entry_cost(text, hit)
            if cost <= self.token_cache_bytes:
                # Oldest first out (insertion order): O(1) per eviction, no full clear, no per-hit bookkeeping.
                while self._token_cache_used + cost > self.token_cache_bytes:
                    (old_text, _), old = cache.popitem(last=False)
                    self._token_cache_used -= _entry_cost(old_text, old)
                cache[key] = hit
                self._token_cache_used += cost
        return hit

    @property
    def token_cache_info(self) -> dict[str, int]:
        """Entries held, their accounted bytes and the bound (for /metrics-style reporting and tests)."""
        return {"entries": len(self._token_cache), "bytes": self._token_cache_used, "limit": self.token_cache_bytes}

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
        return {
            "query_tokens": q[rr],
            "title_tokens": np.stack(titles) if titles else np.zeros((0, self.config.title_len), np.int32),
            "history_items": hist[rr],
            "history_categories": hist_cat[rr],
            "history_brands": hist_brand[rr],
            "item_id": np.fromiter((items.lookup(v) for v in batch.item_id), np.int32, len(rr)),
            "category": np.fromiter((cats.lookup(v) for v in batch.category), np.int32, len(rr)),
            "brand": np.fromiter((brands.lookup(v) for v in batch.brand), np.int32, len(rr)),
            "price_bucket": self.price_bucket(batch.price),
        }


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
