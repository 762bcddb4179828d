"""Seeded synthetic shop with ground truth.

The generator draws a catalogue (category tree, brands, prices, titles built from category and brand
vocabularies), users with latent tastes (favourite top categories and brands, price sensitivity),
sessions with searches, the ranking a logging policy showed, and clicks / carts / purchases drawn from
the latent relevance under position bias. Because relevance is known, every impression carries the
**oracle** score, so the best achievable AUC and NDCG are computable.

Users are generated in chunks and every chunk is written as a parquet row group, so memory stays
bounded from a few thousand to tens of millions of impressions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shoprank.config import DataConfig
from shoprank.schema import CATALOGUE, EVENTS, IMPRESSIONS

__all__ = [
    "FAVOURITE_BRANDS",
    "FAVOURITE_TOPS",
    "GENERIC_WORDS",
    "LEAF_WORDS",
    "LOGGING_POLICY_NOISE",
    "POSITION_BIAS_POWER",
    "TOP_WORDS",
    "W_BIAS",
    "W_FAV_BRAND",
    "W_FAV_TOP",
    "W_LEAF",
    "W_PRICE",
    "W_QUALITY",
    "W_QUERY_BRAND",
    "W_TOP",
    "GeneratedPaths",
    "Progress",
    "Shop",
    "generate",
]

# Relevance model (logit) weights. Position bias is applied on top when clicks are drawn.
W_BIAS = -2.2
W_LEAF = 2.2
W_TOP = 0.9
W_QUERY_BRAND = 1.2
W_FAV_TOP = 1.0
W_FAV_BRAND = 0.9
W_PRICE = 0.6
W_QUALITY = 0.5
POSITION_BIAS_POWER = 0.7
LOGGING_POLICY_NOISE = 1.0

LEAF_WORDS = 8
TOP_WORDS = 4
GENERIC_WORDS = 48
FAVOURITE_TOPS = 2
FAVOURITE_BRANDS = 3

Progress = Callable[[str], None]


@dataclass(frozen=True)
class GeneratedPaths:
    catalogue: Path
    events: Path
    impressions: Path
    metadata: Path


def _pseudo_words(rng: np.random.Generator, n: int) -> list[str]:
    """`n` distinct pronounceable tokens (so titles and queries look like text)."""
    consonants = list("bdfgklmnprstvz")
    vowels = list("aeiou")
    words: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        syllables = rng.integers(2, 4)
        w = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables))
        if w not in words:
            words.add(w)
            out.append(w)
    return out


class Shop:
    """The latent world: catalogue and vocabularies (users are drawn per chunk)."""

    def __init__(self, config: DataConfig):
        self.config = config
        rng = np.random.default_rng(config.seed)
        n_top, n_leaf_per = config.n_top_categories, config.n_leaves_per_top
        self.n_leaves = n_top * n_leaf_per
        words = _pseudo_words(
            rng, n_top * (1 + TOP_WORDS) + self.n_leaves * (1 + LEAF_WORDS) + GENERIC_WORDS + config.n_brands
        )
        it = iter(words)
        self.top_names = [next(it) for _ in range(n_top)]
        self.leaf_names = [next(it) for _ in range(self.n_leaves)]
        self.top_words = np.array([[next(it) for _ in range(TOP_WORDS)] for _ in range(n_top)])
        self.leaf_words = np.array([[next(it) for _ in range(LEAF_WORDS)] for _ in range(self.n_leaves)])
        self.generic_words = np.array([next(it) for _ in range(GENERIC_WORDS)])
        self.brand_names = np.array([next(it) for _ in range(config.n_brands)])

        # Brands live in one top category; every top gets at least one brand.
        self.brand_top = np.arange(config.n_brands) % n_top
        rng.shuffle(self.brand_top)
        self.brand_top[:n_top] = np.arange(n_top)
        self.brand_premium = rng.normal(0.0, 0.3, config.n_brands)

        leaf_popularity = rng.dirichlet(np.full(self.n_leaves, 2.0))
        self.leaf_log_price = rng.uniform(np.log(5), np.log(400), self.n_leaves)

        n = config.n_items
        self.item_leaf = rng.choice(self.n_leaves, size=n, p=leaf_popularity)
        self.item_top = self.item_leaf // n_leaf_per
        brands_by_top = [np.flatnonzero(self.brand_top == t) for t in range(n_top)]
        self.item_brand = np.array([rng.choice(brands_by_top[t]) for t in self.item_top])
        log_price = self.leaf_log_price[self.item_leaf] + self.brand_premium[self.item_brand]
        log_price = log_price + rng.normal(0.0, 0.4, n)
        self.item_price = np.round(np.exp(log_price), 2)
        # Price relative to the leaf: what a price-sensitive user reacts to.
        self.item_price_z = (log_price - self.leaf_log_price[self.item_leaf]) / 0.5
        self.item_quality = rng.normal(0.0, 0.5, n)
        self.item_popularity = np.exp(self.item_quality) / np.exp(self.item_quality).sum()
        self.item_ids = np.array([f"i{i:07d}" for i in range(n)])
        leaf_pick = rng.integers(0, LEAF_WORDS, size=(n, 2))
        titles = []
        for i in range(n):
            leaf, top = self.item_leaf[i], self.item_top[i]
            parts = [
                self.brand_names[self.item_brand[i]],
                self.leaf_words[leaf, leaf_pick[i, 0]],
                self.leaf_words[leaf, leaf_pick[i, 1]],
                self.top_words[top, rng.integers(TOP_WORDS)],
                self.generic_words[rng.integers(GENERIC_WORDS)],
            ]
            titles.append(" ".join(parts))
        self.item_titles = np.array(titles)
        self.item_category = np.array(
            [f"{self.top_names[t]}/{self.leaf_names[lf]}" for t, lf in zip(self.item_top, self.item_leaf)]
        )
        # Items grouped by leaf and by top, for candidate sampling.
        self.items_by_leaf = np.argsort(self.item_leaf, kind="stable")
        self.leaf_start = np.searchsorted(self.item_leaf[self.items_by_leaf], np.arange(self.n_leaves))
        self.leaf_count = np.bincount(self.item_leaf, minlength=self.n_leaves)
        self.items_by_top = np.argsort(self.item_top, kind="stable")
        self.top_start = np.searchsorted(self.item_top[self.items_by_top], np.arange(n_top))
        self.top_count = np.bincount(self.item_top, minlength=n_top)

    def catalogue_table(self) -> pa.Table:
        return pa.table(
            {
                "item_id": self.item_ids,
                "title": self.item_titles,
                "category": self.item_category,
                "brand": self.brand_names[self.item_brand],
                "price": self.item_price.astype(np.float64),
            },
            schema=CATALOGUE.arrow,
        )

    def _sample_in(self, rng: np.random.Generator, groups: np.ndarray, order, start, count) -> np.ndarray:
        """One item per entry of `groups` (leaf or top ids); empty groups fall back to any item."""
        cnt = count[groups]
        pick = (rng.random(groups.shape) * np.maximum(cnt, 1)).astype(np.int64)
        items = order[np.minimum(start[groups] + pick, len(order) - 1)]
        fallback = rng.integers(0, self.config.n_items, groups.shape)
        return np.where(cnt > 0, items, fallback)

    def relevance_logit(
        self, items: np.ndarray, intent_leaf: np.ndarray, has_query: np.ndarray, query_brand: np.ndarray,
        fav_top: np.ndarray, fav_brand: np.ndarray, price_sensitivity: np.ndarray,
    ) -> np.ndarray:
        """True relevance logit of `items` [R, L] for requests described by the other [R] / [R, .] arrays."""
        leaf_match = self.item_leaf[items] == intent_leaf[:, None]
        top_match = self.item_top[items] == (intent_leaf // self.config.n_leaves_per_top)[:, None]
        brand_match = self.item_brand[items] == query_brand[:, None]
        user_top = np.take_along_axis(fav_top, self.item_top[items], axis=1)
        user_brand = (self.item_brand[items][:, :, None] == fav_brand[:, None, :]).any(axis=2)
        q = has_query[:, None]
        return (
            W_BIAS
            + W_LEAF * (leaf_match & q)
            + W_TOP * (top_match & q)
            + W_QUERY_BRAND * brand_match
            + W_FAV_TOP * user_top
            + W_FAV_BRAND * user_brand
            - W_PRICE * price_sensitivity[:, None] * self.item_price_z[items]
            + W_QUALITY * self.item_quality[items]
        )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _dedupe_rows(rng: np.random.Generator, items: np.ndarray, n_items: int) -> np.ndarray:
    """Replace repeated items within a row by random other items (a list shows an item once)."""
    for _ in range(50):
        srt = np.sort(items, axis=1)
        bad_rows = np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1))
        if bad_rows.size == 0:
            return items
        for r in bad_rows:
            _, first = np.unique(items[r], return_index=True)
            dup = np.setdiff1d(np.arange(items.shape[1]), first)
            items[r, dup] = rng.integers(0, n_items, dup.size)
    raise RuntimeError("could not draw distinct candidates; the catalogue is too small for list_size")


def _generate_users(shop: Shop, rng: np.random.Generator, user_lo: int, user_hi: int, event_id0: int):
    """Impressions and events of users [user_lo, user_hi)."""
    cfg = shop.config
    n_users = user_hi - user_lo
    n_top = cfg.n_top_categories
    user_ids = np.array([f"u{u:07d}" for u in range(user_lo, user_hi)])

    # Latent tastes.
    fav_top_idx = np.stack([rng.choice(n_top, FAVOURITE_TOPS, replace=False) for _ in range(n_users)])
    fav_top = np.zeros((n_users, n_top))
    np.put_along_axis(fav_top, fav_top_idx, 1.0, axis=1)
    brands_of = [np.flatnonzero(shop.brand_top == t) for t in range(n_top)]
    fav_brand = np.stack([
        rng.choice(np.concatenate([brands_of[t] for t in fav_top_idx[u]]), FAVOURITE_BRANDS)
        for u in range(n_users)
    ])
    price_sensitivity = rng.uniform(0.3, 0.7, n_users)

    # Sessions and requests.
    n_sessions = 1 + rng.poisson(max(cfg.sessions_per_user - 1, 0), n_users)
    sess_user = np.repeat(np.arange(n_users), n_sessions)
    sess_start = rng.integers(cfg.start_timestamp, cfg.end_timestamp - 3_600, sess_user.size)
    order = np.lexsort((sess_start, sess_user))
    sess_user, sess_start = sess_user[order], sess_start[order]
    sess_index = np.arange(sess_user.size)
    sess_ids = np.array([f"s{user_lo:07d}_{i:06d}" for i in sess_index])

    n_q = 1 + rng.poisson(max(cfg.queries_per_session - 1, 0), sess_user.size)
    req_sess = np.repeat(sess_index, n_q)
    req_rank = np.arange(req_sess.size) - np.repeat(np.cumsum(n_q) - n_q, n_q)
    req_ts = sess_start[req_sess] + 120 + req_rank * rng.integers(60, 240, req_sess.size)
    req_user = sess_user[req_sess]
    R, L = req_sess.size, cfg.list_size

    # Intent: mostly a favourite top category, a leaf inside it.
    fav_pick = fav_top_idx[req_user, rng.integers(0, FAVOURITE_TOPS, R)]
    intent_top = np.where(rng.random(R) < 0.75, fav_pick, rng.integers(0, n_top, R))
    intent_leaf = intent_top * cfg.n_leaves_per_top + rng.integers(0, cfg.n_leaves_per_top, R)
    has_query = rng.random(R) >= 0.05  # 5% are recommendation requests with no search text
    # Query brand: one of the user's favourites when it sells in this top, else any brand of the top.
    fav_b = fav_brand[req_user, rng.integers(0, FAVOURITE_BRANDS, R)]
    any_b = np.array([rng.choice(brands_of[t]) for t in intent_top])
    query_brand = np.where(shop.brand_top[fav_b] == intent_top, fav_b, any_b)
    query_brand = np.where(has_query & (rng.random(R) < 0.25), query_brand, -1)
    queries = []
    for r in range(R):
        if not has_query[r]:
            queries.append("")
            continue
        k = 1 if rng.random() < 0.6 else 2
        parts = list(rng.choice(shop.leaf_words[intent_leaf[r]], k, replace=False))
        if rng.random() < 0.3:
            parts.append(shop.top_words[intent_top[r], rng.integers(TOP_WORDS)])
        if query_brand[r] >= 0:
            parts.append(shop.brand_names[query_brand[r]])
        if rng.random() < 0.2:
            parts.append(shop.generic_words[rng.integers(GENERIC_WORDS)])
        rng.shuffle(parts)
        queries.append(" ".join(parts))
    queries = np.array(queries, dtype=object)

    # Candidates: the leaf, the top, and popular items anywhere.
    n_leaf_c, n_top_c = int(L * 0.4), int(L * 0.3)
    n_pop_c = L - n_leaf_c - n_top_c
    cand = np.concatenate([
        shop._sample_in(rng, np.repeat(intent_leaf[:, None], n_leaf_c, 1), shop.items_by_leaf,
                        shop.leaf_start, shop.leaf_count),
        shop._sample_in(rng, np.repeat(intent_top[:, None], n_top_c, 1), shop.items_by_top,
                        shop.top_start, shop.top_count),
        rng.choice(cfg.n_items, size=(R, n_pop_c), p=shop.item_popularity),
    ], axis=1)
    cand = _dedupe_rows(rng, cand, cfg.n_items)

    logit = shop.relevance_logit(cand, intent_leaf, has_query, query_brand, fav_top[req_user],
                                 fav_brand[req_user], price_sensitivity[req_user])
    relevance = _sigmoid(logit)
    # The logging policy ranks by a noisy relevance; users see position-biased lists.
    shown = np.argsort(-(logit + rng.normal(0, LOGGING_POLICY_NOISE, logit.shape)), axis=1)
    cand = np.take_along_axis(cand, shown, 1)
    relevance = np.take_along_axis(relevance, shown, 1)
    position = np.broadcast_to(np.arange(L), (R, L))
    bias = (1.0 / (1.0 + position)) ** POSITION_BIAS_POWER
    clicked = rng.random((R, L)) < bias * relevance
    carted = clicked & (rng.random((R, L)) < 0.35 * relevance)
    purchased = carted & (rng.random((R, L)) < 0.5)

    req_ids = np.array([f"r{user_lo:07d}_{i:07d}" for i in range(R)])
    imp = {
        "request_id": np.repeat(req_ids, L),
        "timestamp": np.repeat(req_ts, L).astype(np.int64),
        "user_id": np.repeat(user_ids[req_user], L),
        "session_id": np.repeat(sess_ids[req_sess], L),
        "query": np.repeat(queries, L),
        "item_id": shop.item_ids[cand.ravel()],
        "position": position.ravel().astype(np.int32),
        "clicked": clicked.ravel().astype(np.int8),
        "carted": carted.ravel().astype(np.int8),
        "purchased": purchased.ravel().astype(np.int8),
        "oracle": relevance.ravel().astype(np.float32),
    }

    # Events: search interactions after each request, and browsing before the searches of a session.
    ev_ts, ev_user, ev_sess, ev_type, ev_item, ev_query = [], [], [], [], [], []
    flat_req = np.repeat(np.arange(R), L)
    for kind, mask, delay in (("click", clicked, 5), ("cart", carted, 60), ("purchase", purchased, 300)):
        m = mask.ravel()
        rows = flat_req[m]
        ev_ts.append(req_ts[rows] + delay + 3 * position.ravel()[m])
        ev_user.append(req_user[rows])
        ev_sess.append(req_sess[rows])
        ev_type.append(np.full(rows.size, kind, dtype=object))
        ev_item.append(cand.ravel()[m])
        ev_query.append(queries[rows])
    n_browse = rng.poisson(cfg.browse_events_per_session, sess_user.size)
    b_sess = np.repeat(sess_index, n_browse)
    b_user = sess_user[b_sess]
    b_top = fav_top_idx[b_user, rng.integers(0, FAVOURITE_TOPS, b_sess.size)]
    b_leaf = b_top * cfg.n_leaves_per_top + rng.integers(0, cfg.n_leaves_per_top, b_sess.size)
    b_item = shop._sample_in(rng, b_leaf, shop.items_by_leaf, shop.leaf_start, shop.leaf_count)
    b_ts = sess_start[b_sess] + rng.integers(0, 110, b_sess.size)
    for kind, offset in (("view", 0), ("click", 2)):
        ev_ts.append(b_ts + offset)
        ev_user.append(b_user)
        ev_sess.append(b_sess)
        ev_type.append(np.full(b_sess.size, kind, dtype=object))
        ev_item.append(b_item)
        ev_query.append(np.full(b_sess.size, "", dtype=object))
    ts = np.concatenate(ev_ts)
    users = np.concatenate(ev_user)
    order = np.lexsort((ts, users))
    n_ev = ts.size
    events = {
        "event_id": np.arange(event_id0, event_id0 + n_ev, dtype=np.int64),
        "timestamp": ts[order].astype(np.int64),
        "user_id": user_ids[users[order]],
        "session_id": sess_ids[np.concatenate(ev_sess)[order]],
        "event": np.concatenate(ev_type)[order],
        "item_id": shop.item_ids[np.concatenate(ev_item)[order]],
        "query": np.concatenate(ev_query)[order],
    }
    return imp, events


def _corrupt(rng: np.random.Generator, columns: dict[str, np.ndarray], share: float, table: str, cfg: DataConfig):
    """Inject a few realistic defects so that quarantine is exercised on every run."""
    n = len(columns["timestamp"])
    k = int(n * share)
    if k == 0:
        return columns
    cols = {c: np.asarray(v, dtype=object).copy() if v.dtype == object or v.dtype.kind in "US" else v.copy()
            for c, v in columns.items()}
    cols = {c: v.astype(object) for c, v in cols.items()}
    rows = rng.choice(n, size=k, replace=False)
    kinds = rng.integers(0, 5, k)
    for r, kind in zip(rows, kinds):
        if kind == 0:
            cols["item_id"][r] = "i_unknown"
        elif kind == 1:
            cols["user_id"][r] = None
        elif kind == 2:
            cols["timestamp"][r] = cfg.end_timestamp + 50 * 365 * 86_400
        elif kind == 3 and table == "impressions":
            cols["position"][r] = -1
        else:
            cols["timestamp"][r] = 0
    # Exact duplicates of a few rows (logged twice by a retrying client).
    dup = rng.choice(n, size=max(1, k // 5), replace=False)
    return {c: np.concatenate([v, v[dup]]) for c, v in cols.items()}


def generate(config: DataConfig, out_dir: str | Path, progress: Progress = print) -> GeneratedPaths:
    """Write catalogue.parquet, events.parquet and impressions.parquet under `out_dir`."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shop = Shop(config)
    catalogue = shop.catalogue_table()
    if config.bad_row_share > 0:
        # A negative price and a duplicated item id: both must be quarantined, not dropped silently.
        bad = catalogue.slice(0, 2).to_pydict()
        bad["price"][0] = -1.0
        bad["item_id"][0] = "i_negative_price"
        catalogue = pa.concat_tables([catalogue, pa.table(bad, schema=CATALOGUE.arrow)])
    paths = GeneratedPaths(out / "catalogue.parquet", out / "events.parquet", out / "impressions.parquet",
                           out / "generator.json")
    pq.write_table(catalogue, paths.catalogue)

    per_user = config.sessions_per_user * config.queries_per_session * config.list_size
    users_per_chunk = max(1, int(config.chunk_impressions / per_user))
    n_chunks = (config.n_users + users_per_chunk - 1) // users_per_chunk
    counts = {"impressions": 0, "events": 0, "requests": 0}
    event_id = 0
    with pq.ParquetWriter(paths.impressions, IMPRESSIONS.arrow) as imp_w, \
            pq.ParquetWriter(paths.events, EVENTS.arrow) as ev_w:
        for c in range(n_chunks):
            tc = time.perf_counter()
            lo, hi = c * users_per_chunk, min(config.n_users, (c + 1) * users_per_chunk)
            chunk_rng = np.random.default_rng([config.seed, c])
            imp, ev = _generate_users(shop, chunk_rng, lo, hi, event_id)
            event_id += len(ev["event_id"])
            counts["requests"] += len(np.unique(imp["request_id"]))
            if config.bad_row_share > 0:
                imp = _corrupt(chunk_rng, imp, config.bad_row_share, "impressions", config)
                ev = _corrupt(chunk_rng, ev, config.bad_row_share, "events", config)
            imp_w.write_table(_to_table(imp, IMPRESSIONS.arrow))
            ev_w.write_table(_to_table(ev, EVENTS.arrow))
            counts["impressions"] += len(imp["request_id"])
            counts["events"] += len(ev["event_id"])
            progress(f"[data] chunk {c + 1}/{n_chunks}: users {lo}-{hi}, "
                     f"{counts['impressions']:,} impressions, {counts['events']:,} events "
                     f"({time.perf_counter() - tc:.1f}s)")
    meta = {"config": config.model_dump(), "counts": counts, "items": config.n_items, "users": config.n_users,
            "seconds": round(time.perf_counter() - t0, 2)}
    paths.metadata.write_text(json.dumps(meta, indent=2, default=str))
    progress(f"[data] wrote {counts['impressions']:,} impressions for {config.n_users:,} users and "
             f"{config.n_items:,} items in {meta['seconds']}s -> {out}")
    return paths


def _to_table(columns: dict[str, np.ndarray], schema: pa.Schema) -> pa.Table:
    arrays = []
    n = len(next(iter(columns.values())))
    for f in schema:
        values = columns.get(f.name)
        if values is None:  # an optional column the generator does not fill (relevance, split)
            arrays.append(pa.nulls(n, f.type))
        elif values.dtype == object:
            arrays.append(pa.array(list(values), type=f.type, from_pandas=True))
        else:
            arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema.with_metadata(None))
