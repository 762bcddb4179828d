"""Example datasets in the supported source layouts, drawn from the synthetic shop (so they carry signal).

Tests make their fixtures with these (no downloaded data in the repo), and `make bench-data` makes its
1M/10M/50M-event logs with `write_event_log`. Nothing here is needed to run shoprank on real data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from shoprank.config import DataConfig
from shoprank.data.synthetic import Shop

Progress = Callable[[str], None]
START = 1_767_225_600  # 2026-01-01
RETAILROCKET_EVENTS = {"view": "view", "click": "view", "cart": "addtocart", "purchase": "transaction"}
TAOBAO_EVENTS = {"view": "pv", "click": "fav", "cart": "cart", "purchase": "buy"}


def _quiet(_: str) -> None:
    pass


def _write(table: pa.Table, path: Path, header: bool = True) -> None:
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path, pacsv.WriteOptions(include_header=header))


def _shop(n_items: int, seed: int) -> Shop:
    return Shop(DataConfig(n_items=n_items, n_brands=max(8, min(96, n_items // 20)), seed=seed))


def catalogue_table(shop: Shop) -> pa.Table:
    return shop.catalogue_table()


def _user_events(shop: Shop, rng: np.random.Generator, user_lo: int, user_hi: int, days: int,
                 sessions_per_user: float, views_per_session: float) -> dict[str, np.ndarray]:
    """Browsing sessions of users [user_lo, user_hi): views in an intent leaf (mostly of a favourite top
    category), some clicked, carted, purchased. Sorted by user and time."""
    n_users = user_hi - user_lo
    n_top, per_top = shop.config.n_top_categories, shop.config.n_leaves_per_top
    fav = rng.integers(0, n_top, (n_users, 2))
    n_sess = 1 + rng.poisson(max(sessions_per_user - 1, 0), n_users)
    s_user = np.repeat(np.arange(n_users), n_sess)
    s_start = rng.integers(START, START + days * 86_400 - 7_200, s_user.size)
    s_top = np.where(rng.random(s_user.size) < 0.8, fav[s_user, rng.integers(0, 2, s_user.size)],
                     rng.integers(0, n_top, s_user.size))
    s_leaf = s_top * per_top + rng.integers(0, per_top, s_user.size)
    n_views = 1 + rng.poisson(max(views_per_session - 1, 0), s_user.size)
    v_sess = np.repeat(np.arange(s_user.size), n_views)
    v_item = shop._sample_in(rng, s_leaf[v_sess], shop.items_by_leaf, shop.leaf_start, shop.leaf_count)
    v_rank = np.arange(v_sess.size) - np.repeat(np.cumsum(n_views) - n_views, n_views)
    v_ts = s_start[v_sess] + v_rank * 40 + rng.integers(0, 30, v_sess.size)
    clicked = rng.random(v_sess.size) < 0.09 * np.exp(shop.item_quality[v_item])
    carted = clicked & (rng.random(v_sess.size) < 0.35)
    bought = carted & (rng.random(v_sess.size) < 0.5)
    kinds = [(np.ones(v_sess.size, bool), 0, 0), (clicked, 1, 5), (carted, 2, 12), (bought, 3, 25)]
    sess = np.concatenate([v_sess[m] for m, _, _ in kinds])
    ts = np.concatenate([v_ts[m] + d for m, _, d in kinds])
    event = np.concatenate([np.full(int(m.sum()), k, np.int8) for m, k, _ in kinds])
    item = np.concatenate([v_item[m] for m, _, _ in kinds])
    user = s_user[sess]
    order = np.lexsort((event, ts, user))
    return {"user": user[order] + user_lo, "session": sess[order], "ts": ts[order], "event": event[order],
            "item": item[order]}


EVENT_NAMES = np.array(["view", "click", "cart", "purchase"], dtype=object)


def _event_table(ev: dict[str, np.ndarray], shop: Shop, layout: str, sess0: int) -> pa.Table:
    n = ev["ts"].size
    names = pa.array(EVENT_NAMES[ev["event"]].tolist(), pa.string()) if n else pa.array([], pa.string())
    if layout == "retailrocket":
        mapped = pc.take(pa.array([RETAILROCKET_EVENTS[e] for e in EVENT_NAMES]), pa.array(ev["event"]))
        return pa.table({"timestamp": pa.array(ev["ts"] * 1000 + (ev["item"] % 1000), pa.int64()),
                         "visitorid": pa.array(ev["user"], pa.int64()), "event": mapped,
                         "itemid": pa.array(ev["item"], pa.int64()),
                         "transactionid": pa.nulls(n, pa.int64())})
    if layout == "taobao":
        mapped = pc.take(pa.array([TAOBAO_EVENTS[e] for e in EVENT_NAMES]), pa.array(ev["event"]))
        return pa.table({"user": pa.array(ev["user"], pa.int64()), "item": pa.array(ev["item"], pa.int64()),
                         "category": pa.array(shop.item_leaf[ev["item"]], pa.int64()), "behavior": mapped,
                         "timestamp": pa.array(ev["ts"], pa.int64())})
    users = pa.DictionaryArray.from_arrays(
        pa.array(ev["user"] - (ev["user"].min() if n else 0), pa.int32()),
        pa.array([f"u{u:08d}" for u in range(int(ev["user"].min()) if n else 0,
                                            int(ev["user"].max()) + 1 if n else 0)]))
    items = pa.DictionaryArray.from_arrays(pa.array(ev["item"], pa.int32()), pa.array(shop.item_ids))
    sessions = pc.binary_join_element_wise("s", pa.array(ev["session"] + sess0, pa.int64()).cast(pa.string()), "")
    return pa.table({"timestamp": pa.array(ev["ts"], pa.int64()), "user_id": users, "session_id": sessions,
                     "event": names, "item_id": items})


def write_event_log(out_dir: str | Path, n_events: int, *, layout: str = "shoprank", file_format: str = "parquet",
                    n_items: int = 2_000, catalogue: bool = True, seed: int = 5, days: int = 30,
                    events_per_user: float = 40.0, chunk_events: int = 1_000_000,
                    progress: Progress = _quiet) -> dict:
    """About `n_events` browsing events in `layout` (shoprank, retailrocket, taobao) under `out_dir`.

    shoprank: events.parquet|csv (+ catalogue.*); retailrocket: events.* with ms timestamps and integer
    ids (no catalogue, as the public dump's events file); taobao: headerless UserBehavior.csv (or
    .parquet) with a category column. Written in chunks of users (bounded memory)."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shop = _shop(n_items, seed)
    sessions_per_user, views_per_session = 4.0, events_per_user / 4.0 / 1.15
    n_users = max(1, int(n_events / events_per_user))
    users_per_chunk = max(1, int(chunk_events / events_per_user))
    stem = "UserBehavior" if layout == "taobao" else "events"
    path = out / f"{stem}.{'parquet' if file_format == 'parquet' else 'csv'}"
    writer = None
    written, sess0 = 0, 0
    for c, lo in enumerate(range(0, n_users, users_per_chunk)):
        hi = min(n_users, lo + users_per_chunk)
        ev = _user_events(shop, np.random.default_rng([seed, c]), lo, hi, days, sessions_per_user, views_per_session)
        table = _event_table(ev, shop, layout, sess0)
        sess0 += int(ev["session"].max()) + 1 if ev["ts"].size else 0
        if writer is None:
            if file_format == "parquet":
                writer = pq.ParquetWriter(path, table.schema)
            else:
                plain = table.schema if layout != "shoprank" else pa.schema(
                    [pa.field(f.name, pa.string() if pa.types.is_dictionary(f.type) else f.type)
                     for f in table.schema])
                writer = pacsv.CSVWriter(path, plain, write_options=pacsv.WriteOptions(
                    include_header=layout != "taobao"))
        if file_format != "parquet":
            table = pa.table({n: table[n].cast(pa.string()) if pa.types.is_dictionary(table[n].type) else table[n]
                              for n in table.column_names})
        writer.write_table(table)
        written += table.num_rows
        progress(f"[bench-data] {written:,} events ({time.perf_counter() - t0:.0f}s)")
    if writer is not None:
        writer.close()
    if catalogue and layout == "shoprank":
        _write(catalogue_table(shop), out / f"catalogue.{'parquet' if file_format == 'parquet' else 'csv'}")
    return {"events": written, "users": n_users, "items": n_items, "path": str(path),
            "seconds": round(time.perf_counter() - t0, 1)}


def write_esci(out_dir: str | Path, n_queries: int = 200, *, file_format: str = "parquet",
               locales: tuple[str, ...] = ("us",),
               n_items: int = 400, per_query: int = 12, seed: int = 3) -> dict:
    """An ESCI-layout directory: shopping_queries_dataset_examples.* and _products.* .

    Queries name a leaf category (and sometimes a brand); a product in that leaf is Exact (or Substitute
    when the brand differs from the asked one), in the same top category a Substitute or Complement,
    elsewhere Irrelevant, with some label noise. About 70% of queries are in the train split."""
    rng = np.random.default_rng(seed)
    shop = _shop(n_items, seed)
    ext = "parquet" if file_format == "parquet" else "csv"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_top = shop.config.n_leaves_per_top
    prods, examples = [], []
    for loc in locales:
        pid = np.array([f"B{loc.upper()}{i:06d}" for i in range(n_items)]) if len(locales) == 1 else \
            np.array([f"B{i:07d}" for i in range(n_items)])  # several locales: ids repeat across them
        prods.append(pa.table({
            "product_id": pid, "product_title": shop.item_titles,
            "product_description": [f"{t} description" for t in shop.item_titles],
            "product_bullet_point": ["" for _ in range(n_items)],
            "product_brand": [b if i % 17 else None for i, b in enumerate(shop.brand_names[shop.item_brand])],
            "product_color": ["black"] * n_items, "product_locale": [loc] * n_items}))
        for q in range(n_queries):
            leaf = int(rng.integers(0, shop.n_leaves))
            words = list(rng.choice(shop.leaf_words[leaf], 2, replace=False))
            brand = int(rng.choice(np.flatnonzero(shop.brand_top == leaf // per_top))) if rng.random() < 0.3 else -1
            if brand >= 0:
                words.append(shop.brand_names[brand])
            same_leaf = shop.items_by_leaf[shop.leaf_start[leaf]: shop.leaf_start[leaf] + shop.leaf_count[leaf]]
            cands = np.unique(np.concatenate([rng.choice(same_leaf, min(len(same_leaf), per_query // 2), False),
                                              rng.integers(0, n_items, per_query - per_query // 2)]))
            label = np.where(shop.item_leaf[cands] == leaf,
                             np.where((brand < 0) | (shop.item_brand[cands] == brand), "E", "S"),
                             np.where(shop.item_top[cands] == leaf // per_top, "C", "I"))
            noise = rng.random(cands.size) < 0.1
            label = np.where(noise, rng.choice(["E", "S", "C", "I"], cands.size), label)
            qid = q + 1000 * locales.index(loc)
            examples.append(pa.table({
                "example_id": np.arange(cands.size) + 100 * qid, "query": [" ".join(words)] * cands.size,
                "query_id": np.full(cands.size, qid), "product_id": pid[cands],
                "product_locale": [loc] * cands.size, "esci_label": label,
                "small_version": np.full(cands.size, int(q % 2 == 0)), "large_version": np.ones(cands.size, int),
                "split": ["train" if rng.random() < 0.7 else "test"] * cands.size}))
    ex, pr = pa.concat_tables(examples), pa.concat_tables(prods)
    _write(ex, out / f"shopping_queries_dataset_examples.{ext}")
    _write(pr, out / f"shopping_queries_dataset_products.{ext}")
    return {"examples": ex.num_rows, "products": pr.num_rows, "queries": n_queries * len(locales)}
