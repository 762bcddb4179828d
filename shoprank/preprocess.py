"""Preprocess: validate, split by time, fit the transform on the past, build behaviour sequences, and
write model tensors per split.

Layout of the features directory (one folder per split):
    <split>/<input>.npy    model inputs (int32), one row per impression, rows of a request contiguous
    <split>/<column>.npy   clicked, carted, purchased, gain, oracle, request, top_category
    <split>/meta.json      row count, top-category names
    quarantine.parquet     every rejected row with its reason
    golden_requests.json   raw test requests (ids and text) for the serving path checks
    report.json            validation counts, split sizes, vocabulary sizes, timings
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from shoprank.config import ShoprankConfig
from shoprank.schema import CATALOGUE, EVENTS, IMPRESSIONS, INTEREST_EVENTS, top_category
from shoprank.transform import INPUTS, Catalogue, FeatureTransform, RawBatch
from shoprank.validation import timestamp_window, validate_table

SPLITS = ("train", "validation", "test")
LABEL_COLUMNS = ("clicked", "carted", "purchased")
Progress = Callable[[str], None]


@dataclass
class SplitData:
    """Memory-mapped access to one split of the features directory."""

    directory: Path

    @property
    def meta(self) -> dict:
        return json.loads((self.directory / "meta.json").read_text())

    @property
    def rows(self) -> int:
        return int(self.meta["rows"])

    def column(self, name: str) -> np.ndarray:
        return np.load(self.directory / f"{name}.npy", mmap_mode="r")

    def features(self, rows: slice | np.ndarray | None = None) -> dict[str, np.ndarray]:
        cols = {name: self.column(name) for name in INPUTS}
        return {k: np.asarray(v if rows is None else v[rows]) for k, v in cols.items()}


def load_split(features_dir: str | Path, split: str) -> SplitData:
    return SplitData(Path(features_dir) / split)


def build_histories(events: pd.DataFrame, req_user: np.ndarray, req_ts: np.ndarray, length: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The last `length` interest events of each request's user strictly before the request time.

    Returns (item ids [R, length] as objects, "" for padding, oldest first) and the count used.
    """
    ev = events[events["event"].isin(INTEREST_EVENTS)]
    users = pd.Index(pd.unique(np.concatenate([ev["user_id"].to_numpy(), req_user])))
    ev_code = users.get_indexer(ev["user_id"].to_numpy()).astype(np.int64)
    big = np.int64(1) << np.int64(34)  # > any epoch-second timestamp
    ev_key = ev_code * big + ev["timestamp"].to_numpy(np.int64)
    order = np.argsort(ev_key, kind="stable")
    ev_key, ev_items = ev_key[order], ev["item_id"].to_numpy(object)[order]
    req_code = users.get_indexer(req_user).astype(np.int64)
    start = np.searchsorted(ev_key, req_code * big, side="left")
    end = np.searchsorted(ev_key, req_code * big + req_ts.astype(np.int64), side="left")  # strictly before
    idx = end[:, None] - length + np.arange(length)[None, :]
    valid = idx >= start[:, None]
    items = np.where(valid, ev_items[np.clip(idx, 0, max(len(ev_items) - 1, 0))] if len(ev_items) else "", "")
    return items, valid.sum(axis=1)


def read_raw(raw_dir: str | Path) -> dict[str, pd.DataFrame]:
    d = Path(raw_dir)
    return {name: pq.read_table(d / f"{name}.parquet").to_pandas()
            for name in ("catalogue", "events", "impressions")}


def preprocess(raw_dir: str | Path, features_dir: str | Path, transform_dir: str | Path,
               config: ShoprankConfig, progress: Progress = print, now: int | None = None) -> dict:
    """Run the whole preprocessing step; returns the report (also written to report.json)."""
    t0 = time.perf_counter()
    fc = config.features
    out, tdir = Path(features_dir), Path(transform_dir)
    out.mkdir(parents=True, exist_ok=True)
    tdir.mkdir(parents=True, exist_ok=True)
    raw = read_raw(raw_dir)
    progress(f"[preprocess] read {', '.join(f'{k}: {len(v):,}' for k, v in raw.items())} rows "
             f"({time.perf_counter() - t0:.1f}s)")

    # 1. Validation and quarantine.
    window = timestamp_window(config.validation, now)
    catalogue, q_cat, r_cat = validate_table(raw["catalogue"], CATALOGUE, config.validation)
    known = pd.Index(catalogue["item_id"])
    events, q_ev, r_ev = validate_table(raw["events"], EVENTS, config.validation, known_items=known,
                                        timestamp_range=window)
    imps, q_imp, r_imp = validate_table(raw["impressions"], IMPRESSIONS, config.validation,
                                        known_items=known, timestamp_range=window)
    quarantine = pd.concat([q_cat, q_ev, q_imp], ignore_index=True)
    quarantine.to_parquet(out / "quarantine.parquet", index=False)
    validation = {r.table: r.to_dict() for r in (r_cat, r_ev, r_imp)}
    per_table = "; ".join(f"{t}: {v['quarantined']}" for t, v in validation.items())
    progress(f"[preprocess] validated: quarantined {len(quarantine):,} rows ({per_table}) "
             f"({time.perf_counter() - t0:.1f}s)")
    del raw

    # 2. Time-based split on request time: train < t1 <= validation < t2 <= test.
    requests = imps.groupby("request_id", sort=False).agg(
        timestamp=("timestamp", "min"), user_id=("user_id", "first"), query=("query", "first"))
    shares = np.cumsum([fc.train_share, fc.validation_share])
    t1, t2 = np.quantile(requests["timestamp"].to_numpy(), shares)
    requests["split"] = np.select([requests["timestamp"] < t1, requests["timestamp"] < t2], [0, 1], 2)
    requests = requests.sort_values(["split", "timestamp"], kind="stable")
    requests["order"] = np.arange(len(requests))
    imps["order"] = requests["order"].reindex(imps["request_id"]).to_numpy()
    imps = imps.sort_values(["order", "position"], kind="stable").reset_index(drop=True)

    # 3. Fit the transform on the past only.
    past_items = pd.unique(np.concatenate([
        imps.loc[imps["timestamp"] < t1, "item_id"].to_numpy(),
        events.loc[events["timestamp"] < t1, "item_id"].to_numpy()]))
    past_cat = catalogue.set_index("item_id").loc[past_items].reset_index()
    train_queries = requests.loc[requests["split"] == 0, "query"].to_numpy()
    transform = FeatureTransform.fit(train_queries, past_cat["title"], past_cat["item_id"],
                                     past_cat["category"], past_cat["brand"], past_cat["price"].to_numpy(), fc)
    transform.save(tdir)
    cat_obj = Catalogue(catalogue["item_id"], catalogue["title"], catalogue["category"], catalogue["brand"],
                        catalogue["price"].to_numpy())
    cat_obj.save(tdir / "catalogue.parquet")
    progress(f"[preprocess] vocabularies {transform.sizes} ({time.perf_counter() - t0:.1f}s)")

    # 4. Behaviour sequences from events strictly before each request.
    hist_items, hist_len = build_histories(events, requests["user_id"].to_numpy(object),
                                           requests["timestamp"].to_numpy(np.int64), fc.history_len)
    hist_lists = [[v for v in row if v] for row in hist_items]
    hist_cats = [cat_obj.field_of("category", h) for h in hist_lists]
    hist_brands = [cat_obj.field_of("brand", h) for h in hist_lists]

    # 5. Transform and write each split.
    cat_rows = cat_obj.rows(imps["item_id"].to_numpy(object))
    top_names = sorted({top_category(c) for c in catalogue["category"]})
    top_code = pd.Index(top_names).get_indexer([top_category(c) for c in cat_obj.category])
    split_of_row = requests["split"].to_numpy()[imps["order"].to_numpy()]
    splits = {}
    for s, name in enumerate(SPLITS):
        ts = time.perf_counter()
        req_idx = np.flatnonzero(requests["split"].to_numpy() == s)
        rows = np.flatnonzero(split_of_row == s)
        sub = imps.iloc[rows]
        crow = cat_rows[rows]
        batch = RawBatch(
            queries=list(requests["query"].to_numpy(object)[req_idx]),
            histories=[hist_lists[i] for i in req_idx],
            history_categories=[hist_cats[i] for i in req_idx],
            history_brands=[hist_brands[i] for i in req_idx],
            row_request=sub["order"].to_numpy() - (req_idx[0] if req_idx.size else 0),
            item_id=sub["item_id"].to_numpy(object), title=cat_obj.title[crow],
            category=cat_obj.category[crow], brand=cat_obj.brand[crow], price=cat_obj.price[crow])
        tensors = transform.transform(batch)
        d = out / name
        d.mkdir(exist_ok=True)
        for k, v in tensors.items():
            np.save(d / f"{k}.npy", v)
        for label in LABEL_COLUMNS:
            np.save(d / f"{label}.npy", sub[label].to_numpy(np.int8))
        np.save(d / "gain.npy", sub[list(LABEL_COLUMNS)].sum(axis=1).to_numpy(np.int8))
        np.save(d / "oracle.npy", sub["oracle"].to_numpy(np.float32))
        np.save(d / "request.npy", batch.row_request.astype(np.int32))
        np.save(d / "top_category.npy", top_code[crow].astype(np.int16))
        pd.DataFrame({"request_id": sub["request_id"].to_numpy(), "item_id": sub["item_id"].to_numpy()}
                     ).to_parquet(d / "rows.parquet", index=False)
        meta = {"rows": int(len(rows)), "requests": int(req_idx.size), "top_categories": top_names,
                "click_rate": float(sub["clicked"].mean()) if len(sub) else 0.0,
                "empty_history_share": float(np.mean(hist_len[req_idx] == 0)) if req_idx.size else 0.0}
        (d / "meta.json").write_text(json.dumps(meta))
        splits[name] = meta | {"seconds": round(time.perf_counter() - ts, 2)}
        progress(f"[preprocess] {name}: {meta['rows']:,} rows, {meta['requests']:,} requests, "
                 f"click rate {meta['click_rate']:.3f} ({time.perf_counter() - ts:.1f}s)")

    # 6. Golden requests: raw test requests (ids and text) for checks of the serving path.
    golden = []
    test_req = np.flatnonzero(requests["split"].to_numpy() == 2)
    test_rows = np.flatnonzero(split_of_row == 2)
    test_order = imps["order"].to_numpy()[test_rows]
    for i in test_req[: fc.golden_requests]:
        rows = np.flatnonzero(test_order == i)
        golden.append({
            "request_id": requests.index[i], "query": requests["query"].iloc[i],
            "user_id": requests["user_id"].iloc[i], "history": hist_lists[i],
            "candidates": imps["item_id"].to_numpy(object)[test_rows[rows]].tolist(),
            "test_rows": [int(rows[0]), int(rows[-1]) + 1],
        })
    (out / "golden_requests.json").write_text(json.dumps(golden, indent=1))
    report = {"validation": validation, "quarantined_rows": int(len(quarantine)), "splits": splits,
              "split_times": [int(t1), int(t2)], "vocabulary_sizes": transform.sizes,
              "seconds": round(time.perf_counter() - t0, 2)}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    progress(f"[preprocess] done in {report['seconds']}s")
    return report
