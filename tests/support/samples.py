"""Example datasets in the supported source layouts, drawn from the synthetic shop (so they carry signal).

Tests make their fixtures with these (no downloaded data in the repo), and `make bench-data` makes its
1M/10M/50M-event logs with `write_event_log`. Nothing here is needed to run shoprank on real data.
"""

from __future__ import annotations

import datetime
import json
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


UBI_FORMATS = ("bulk", "jsonl", "parquet", "combined")


def _iso(seconds: float, style: int) -> str | int:
    """A UBI timestamp as shops log them: ISO with milliseconds and Z (most), with a +02:00 offset, without a
    fraction, or epoch milliseconds (OpenSearch's epoch_millis)."""
    whole = int(seconds)
    ms = int(round((seconds - whole) * 1000)) % 1000
    if style == 1:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole + 7200)) + f".{ms:03d}+02:00"
    if style == 2:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(whole))
    if style == 3:
        return whole * 1000 + ms
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


def _as_datetime(value: str | int) -> datetime.datetime | None:
    if isinstance(value, int):
        return datetime.datetime.fromtimestamp(value / 1000, datetime.UTC)
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def ubi_documents(n_queries: int = 400, *, n_items: int = 300, n_users: int = 120, per_query: int = 10,
                  days: int = 20, seed: int = 11) -> tuple[list[dict], list[dict], dict]:
    """UBI `ubi_queries` and `ubi_events` documents (schema 1.x) drawn from the synthetic shop, with the edge
    cases real exports have; returns (queries, events, what was planted).

    Users search a leaf category (mostly of their two favourite top categories); the engine shows
    `per_query` items in a noisy relevance order; clicks follow relevance and position, some clicked items
    are carted and bought a few seconds later (a click and its cart often in the same second, milliseconds
    apart). Planted: events without a query (browsing), queries without events (some with the response's
    hit ids, some without), exact duplicate events, events of actions shoprank does not know, documents
    without user_id (client_id stands in) or without either, and two unreadable timestamps."""
    rng = np.random.default_rng(seed)
    shop = _shop(n_items, seed)
    n_top, per_top = shop.config.n_top_categories, shop.config.n_leaves_per_top
    fav = rng.integers(0, n_top, (n_users, 2))
    bias = 1.0 / (1.0 + np.arange(per_query)) ** 0.8
    queries: list[dict] = []
    events: list[dict] = []
    planted = {"queries_without_events_with_hits": 0, "queries_without_events": 0, "duplicate_events": 0,
               "events_without_query": 0, "unknown_action_events": 0, "missing_user_id": 0,
               "missing_user_and_client": 0, "unreadable_timestamps": 0}
    described: set[int] = set()

    def obj(item: int) -> dict:
        o: dict = {"object_id": shop.item_ids[item], "object_id_field": "product_id"}
        if item not in described:  # the first event of an item describes it (title, price, brand, category)
            described.add(item)
            o["description"] = shop.item_titles[item]
            o["object_detail"] = {"price": float(shop.item_price[item]),
                                  "brand": str(shop.brand_names[shop.item_brand[item]]),
                                  "category": str(shop.item_category[item])}
        return o

    t0 = START + 3600
    times = np.sort(rng.uniform(t0, t0 + days * 86_400, n_queries))
    for q in range(n_queries):
        u = int(rng.integers(0, n_users))
        top = int(fav[u, rng.integers(0, 2)]) if rng.random() < 0.8 else int(rng.integers(0, n_top))
        leaf = top * per_top + int(rng.integers(0, per_top))
        words = " ".join(rng.choice(shop.leaf_words[leaf], 2, replace=False))
        same = shop.items_by_leaf[shop.leaf_start[leaf]: shop.leaf_start[leaf] + shop.leaf_count[leaf]]
        cands = np.unique(np.concatenate([rng.choice(same, min(len(same), per_query // 2), replace=False),
                                          rng.integers(0, n_items, per_query)]))[:per_query]
        rel = np.where(shop.item_leaf[cands] == leaf, 1.0, np.where(shop.item_top[cands] == top, 0.35, 0.05))
        rel = rel * np.exp(shop.item_quality[cands])
        shown = cands[np.argsort(-(rel + rng.normal(0, 0.4, len(cands))))]
        qid = f"q-{seed}-{q:06d}"
        client = f"c-{u:05d}"
        user_doc: dict = {"client_id": client, "user_id": f"u{u:05d}"}
        r = rng.random()
        if r < 0.05:  # an anonymous visitor: no user_id, the client id stands in
            user_doc = {"client_id": client}
            planted["missing_user_id"] += 1
        elif r < 0.053:  # neither: the request cannot be attributed (quarantined as missing user_id)
            user_doc = {}
            planted["missing_user_and_client"] += 1
        ts = float(times[q])
        style = int(rng.choice(4, p=[0.7, 0.1, 0.1, 0.1]))
        qdoc = {"application": "shoprank-sample", "query_id": qid, "user_query": words,
                "timestamp": _iso(ts, style), "query_attributes": {}, "object_id_field": "product_id"} | user_doc
        if q in (7, 8):
            qdoc["timestamp"] = "not-a-date"
            planted["unreadable_timestamps"] += 1
        if rng.random() < 0.5:
            qdoc["query_response_hit_ids"] = [shop.item_ids[i] for i in shown]
        queries.append(qdoc)
        r = rng.random()
        if r < 0.06:  # a query without events: the client logged nothing
            if "query_response_hit_ids" in qdoc:
                planted["queries_without_events_with_hits"] += 1
            else:
                planted["queries_without_events"] += 1
            continue
        sess = f"s-{u:05d}-{int(ts) // 3600}"
        base = {"application": "shoprank-sample", "query_id": qid, "session_id": sess} | user_doc
        for pos, item in enumerate(shown):
            events.append(base | {"action_name": "impression", "timestamp": _iso(ts + 0.05 + pos * 0.001, 0),
                                  "event_attributes": {"object": obj(int(item)), "position": {"ordinal": pos + 1}}})
        rel_by_item = dict(zip(cands.tolist(), rel.tolist()))
        t = ts + 2.0
        for pos, item in enumerate(shown):
            p_click = min(0.9, 0.45 * bias[pos] * rel_by_item[int(item)])
            if rng.random() >= p_click:
                continue
            t += rng.uniform(1.0, 15.0)
            action = "click" if rng.random() < 0.85 else "click_through"
            events.append(base | {"action_name": action, "timestamp": _iso(t, 0),
                                  "event_attributes": {"object": obj(int(item)), "position": {"ordinal": pos + 1}}})
            if rng.random() < 0.35:  # carted in the same second, milliseconds later
                events.append(base | {"action_name": "add_to_cart", "timestamp": _iso(int(t) + 0.999, 0),
                                      "event_attributes": {"object": obj(int(item))}})
                if rng.random() < 0.5:
                    t += rng.uniform(20, 120)
                    events.append(base | {"action_name": "purchase", "timestamp": _iso(t, 0),
                                          "event_attributes": {"object": obj(int(item))}})
        if rng.random() < 0.3:  # actions shoprank does not map: counted and kept out
            events.append(base | {"action_name": str(rng.choice(["on_search", "product_hover", "brand_filter"])),
                                  "timestamp": _iso(ts + 0.01, 0), "message": words})
            planted["unknown_action_events"] += 1
        if rng.random() < 0.15:  # browsing outside a search (a recommendation widget): no query id
            item = int(rng.integers(0, n_items))
            doc = {k: v for k, v in base.items() if k != "query_id"}
            events.append(doc | {"action_name": "click", "timestamp": _iso(t + 300, 0),
                                 "event_attributes": {"object": obj(item)}})
            planted["events_without_query"] += 1
    for i in rng.choice(len(events), max(1, len(events) // 100), replace=False):  # sent twice
        events.append(dict(events[int(i)]))
        planted["duplicate_events"] += 1
    return queries, events, planted


def write_ubi(out_dir: str | Path, n_queries: int = 400, *, file_format: str = "bulk", n_items: int = 300,
              n_users: int = 120, per_query: int = 10, days: int = 20, seed: int = 11) -> dict:
    """A UBI export under `out_dir` (see `ubi_documents` for the data and its edge cases):

    bulk: ubi_queries.ndjson and ubi_events.ndjson as OpenSearch's bulk API takes them (an action line naming
    `_index` and `_id` before each document); jsonl: plain documents, one a line; parquet: ubi_queries.parquet
    and ubi_events.parquet with the nested fields as structs; combined: one bulk file holding both indices,
    routed by `_index`. Returns the planted counts and the file names."""
    if file_format not in UBI_FORMATS:
        raise ValueError(f"file_format {file_format!r}: one of {UBI_FORMATS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    queries, events, planted = ubi_documents(n_queries, n_items=n_items, n_users=n_users, per_query=per_query,
                                             days=days, seed=seed)

    def bulk(index: str, docs: list[dict]) -> list[str]:
        lines = []
        for k, d in enumerate(docs):
            lines.append(json.dumps({"index": {"_index": index, "_id": f"{index}-{k}"}}))
            lines.append(json.dumps(d))
        return lines

    files = []
    if file_format == "combined":
        path = out / "ubi_export.ndjson"
        path.write_text("\n".join(bulk("ubi_queries", queries) + bulk("ubi_events", events)) + "\n")
        files.append(path.name)
    for index, docs in (("ubi_queries", queries), ("ubi_events", events)):
        if file_format == "bulk":
            path = out / f"{index}.ndjson"
            path.write_text("\n".join(bulk(index, docs)) + "\n")
        elif file_format == "jsonl":
            path = out / f"{index}.jsonl"
            path.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
        elif file_format == "parquet":
            path = out / f"{index}.parquet"
            # A parquet export types the time: timestamp[ms, UTC] (an unreadable one is null there).
            rows = [{k: v for k, v in d.items() if v != {}} | {"timestamp": _as_datetime(d["timestamp"])}
                    for d in docs]
            table = pa.Table.from_struct_array(pa.array(rows))  # the union of every document's fields
            pq.write_table(table.set_column(table.schema.get_field_index("timestamp"), "timestamp",
                                            table["timestamp"].cast(pa.timestamp("ms", "UTC"))), path)
        else:
            continue
        files.append(path.name)
    return planted | {"queries": len(queries), "events": len(events), "files": files}
