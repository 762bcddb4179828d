"""The in-memory preprocessing that shoprank used before it streamed: the reference the streaming
implementation must match array for array on data that fits in memory (see test_streaming.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from shoprank.config import ShoprankConfig
from shoprank.data.validation import timestamp_window, validate_table
from shoprank.features.affinity import (
    AFFINITY_INPUT,
    AFFINITY_TARGETS,
    QUERY_AFFINITY_WIDTH,
    TITLE_TARGETS,
    request_folds,
)
from shoprank.features.transform import Catalogue, FeatureTransform, RawBatch
from shoprank.schema import CATALOGUE, EVENTS, IMPRESSIONS, INTEREST_EVENTS, top_category

SPLITS = ("train", "validation", "test")
LABELS = ("clicked", "carted", "purchased")


def build_histories(events: pd.DataFrame, req_user: np.ndarray, req_ts: np.ndarray, length: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The last `length` interest events of each request's user strictly before the request time.

    Returns (item ids [R, length] as objects, "" for padding, oldest first) and the count used. Written
    independently of the library's `history_rows`, which the streaming preprocessing uses.
    """
    ev = events[events["event"].isin(INTEREST_EVENTS)]
    users = pd.Index(pd.unique(np.concatenate([ev["user_id"].to_numpy(), req_user])))
    ev_code = users.get_indexer(ev["user_id"].to_numpy()).astype(np.int64)
    big = np.int64(1) << np.int64(34)
    ev_key = ev_code * big + ev["timestamp"].to_numpy(np.int64)
    order = np.argsort(ev_key, kind="stable")
    ev_key, ev_items = ev_key[order], ev["item_id"].to_numpy(object)[order]
    req_code = users.get_indexer(req_user).astype(np.int64)
    start = np.searchsorted(ev_key, req_code * big, side="left")
    end = np.searchsorted(ev_key, req_code * big + req_ts.astype(np.int64), side="left")
    idx = end[:, None] - length + np.arange(length)[None, :]
    valid = idx >= start[:, None]
    items = np.where(valid, ev_items[np.clip(idx, 0, max(len(ev_items) - 1, 0))] if len(ev_items) else "", "")
    return items, valid.sum(axis=1)


def reference_preprocess(raw_dir: str | Path, config: ShoprankConfig, now: int) -> dict:
    """Per split: {array name: array}, plus 'golden' (the golden requests)."""
    fc = config.features
    d = Path(raw_dir)
    raw = {n: pq.read_table(d / f"{n}.parquet").to_pandas() for n in ("catalogue", "events", "impressions")}
    window = timestamp_window(config.validation, now)
    catalogue, _, _ = validate_table(raw["catalogue"], CATALOGUE, config.validation)
    known = pd.Index(catalogue["item_id"])
    events, _, _ = validate_table(raw["events"], EVENTS, config.validation, known_items=known, timestamp_range=window)
    imps, _, _ = validate_table(raw["impressions"], IMPRESSIONS, config.validation, known_items=known,
                                timestamp_range=window)
    requests = imps.groupby("request_id", sort=False).agg(
        timestamp=("timestamp", "min"), user_id=("user_id", "first"), query=("query", "first"))
    t1, t2 = np.quantile(requests["timestamp"].to_numpy(), np.cumsum([fc.train_share, fc.validation_share]))
    requests["split"] = np.select([requests["timestamp"] < t1, requests["timestamp"] < t2], [0, 1], 2)
    requests = requests.sort_values(["split", "timestamp"], kind="stable")
    requests["order"] = np.arange(len(requests))
    imps["order"] = requests["order"].reindex(imps["request_id"]).to_numpy()
    imps = imps.sort_values(["order", "position"], kind="stable").reset_index(drop=True)
    past_items = pd.unique(np.concatenate([imps.loc[imps["timestamp"] < t1, "item_id"].to_numpy(),
                                           events.loc[events["timestamp"] < t1, "item_id"].to_numpy()]))
    past_cat = catalogue.set_index("item_id").loc[past_items].reset_index()
    # Training-period occurrences per item (impressions and events before t1): the popularity buckets' counts.
    occurrences = pd.concat([imps.loc[imps["timestamp"] < t1, "item_id"],
                             events.loc[events["timestamp"] < t1, "item_id"]]).value_counts()
    transform = FeatureTransform.fit(requests.loc[requests["split"] == 0, "query"].to_numpy(), past_cat["title"],
                                     past_cat["item_id"], past_cat["category"], past_cat["brand"],
                                     past_cat["price"].to_numpy(), fc,
                                     item_counts=occurrences.reindex(past_cat["item_id"]).to_numpy())
    cat = Catalogue(catalogue["item_id"], catalogue["title"], catalogue["category"], catalogue["brand"],
                    catalogue["price"].to_numpy())
    hist_items, _ = build_histories(events, requests["user_id"].to_numpy(object),
                                    requests["timestamp"].to_numpy(np.int64), fc.history_len)
    hist_lists = [[v for v in row if v] for row in hist_items]
    cat_rows = cat.rows(imps["item_id"].to_numpy(object))
    top_names = sorted({top_category(c) for c in catalogue["category"]})
    top_code = pd.Index(top_names).get_indexer([top_category(c) for c in cat.category])
    split_of_row = requests["split"].to_numpy()[imps["order"].to_numpy()]
    out = {}
    for s, name in enumerate(SPLITS):
        req_idx = np.flatnonzero(requests["split"].to_numpy() == s)
        rows = np.flatnonzero(split_of_row == s)
        sub, crow = imps.iloc[rows], cat_rows[rows]
        batch = RawBatch(
            queries=list(requests["query"].to_numpy(object)[req_idx]), histories=[hist_lists[i] for i in req_idx],
            history_categories=[cat.field_of("category", hist_lists[i]) for i in req_idx],
            history_brands=[cat.field_of("brand", hist_lists[i]) for i in req_idx],
            row_request=sub["order"].to_numpy() - (req_idx[0] if req_idx.size else 0),
            item_id=sub["item_id"].to_numpy(object), title=cat.title[crow], category=cat.category[crow],
            brand=cat.brand[crow], price=cat.price[crow])
        arrays = dict(transform.transform(batch))
        arrays |= {c: sub[c].to_numpy(np.int8) for c in LABELS}
        arrays |= {"gain": sub[list(LABELS)].sum(axis=1).to_numpy(np.int8),
                   "oracle": sub["oracle"].to_numpy(np.float32), "request": batch.row_request.astype(np.int32),
                   "position": sub["position"].fillna(-1).to_numpy(np.int16),
                   "top_category": top_code[crow].astype(np.int16)}
        out[name] = arrays
    affinity = reference_affinity(out, config, transform.sizes)
    history = reference_history_match(out, transform)
    for name in SPLITS:
        out[name][AFFINITY_INPUT] = np.concatenate([affinity[name], history[name]], axis=1)
    return out


def _left_sum(values: list[float]) -> float:
    """Left-to-right float sum, numpy's order over a short axis: Python 3.12's `sum` compensates its rounding and
    differs in the last bit, which moves a value sitting on a bucket edge into the next bucket."""
    total = 0.0
    for v in values:
        total += v
    return total


def reference_history_match(out: dict, transform: FeatureTransform) -> dict[str, np.ndarray]:
    """The pair input's history-match columns of every split, counted row by row (shoprank.features.history_match's
    definition, written independently): history entries sharing the candidate's top category, category, brand."""
    vocab = transform.vocabs["category"]
    top_of = {vocab.lookup(c): top_category(c) for c in vocab.values}  # known categories only
    size = transform.config.affinity_buckets + 1
    result = {}
    for name in SPLITS:
        a = out[name]
        rows = []
        for hc, hb, c, b in zip(a["history_categories"], a["history_brands"], a["category"], a["brand"]):
            c, b = int(c), int(b)
            tops = [top_of.get(int(h)) for h in hc if h > 0]
            counts = [sum(1 for t in tops if t is not None and t == top_of.get(c)),
                      sum(1 for h in hc if h > 0 and int(h) == c), sum(1 for h in hb if h > 0 and int(h) == b)]
            rows.append([min(v, size - 1) + (len(AFFINITY_TARGETS) * 3 + len(TITLE_TARGETS) + j) * size
                         for j, v in enumerate(counts)])
        result[name] = np.asarray(rows, np.int32).reshape(-1, 3)
    return result


def reference_affinity(out: dict, config: ShoprankConfig, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """The query affinity input of every split, counted with dicts row by row (shoprank.features.affinity's
    definition, written independently): training rows out of fold, other splits from all training rows."""
    fc = config.features
    train = out[SPLITS[0]]
    label = train[config.train.label]
    fold = request_folds(train["request"], fc.affinity_folds, config.train.seed)
    alpha, beta = fc.affinity_smoothing, fc.affinity_rate_smoothing
    columns = {name: [] for name in SPLITS}

    def counts(rows, target):
        clicks, imps, tok, tgt = Counter(), Counter(), Counter(), Counter()
        shown = clicked = 0
        for r in rows:
            c, y = int(train[target][r]), int(label[r] > 0)
            if c <= 0:
                continue
            shown, clicked = shown + 1, clicked + y
            tgt[c] += y
            for t in {int(x) for x in train["query_tokens"][r]} - {0}:
                clicks[t, c] += y
                imps[t, c] += 1
                tok[t] += y
        total = sum(tgt.values()) or 1
        return clicks, imps, tok, {c: v / total for c, v in tgt.items()}, (clicked / shown if shown else 0.0)

    def values(tokens, targets, tables, n_targets):
        clicks, imps, tok, prior, rate0 = tables
        vals = np.full((len(targets), 3), np.nan)
        for i, (q, c) in enumerate(zip(tokens, targets)):
            toks = sorted({int(x) for x in q} - {0})
            c = int(c)
            if not toks or c <= 0 or c >= n_targets:
                continue
            share = [(clicks[t, c] + alpha * prior.get(c, 0.0)) / (tok[t] + alpha) for t in toks]
            rate = [(clicks[t, c] + beta * rate0) / (imps[t, c] + beta) for t in toks]
            vals[i] = max(share), _left_sum(share) / len(share), _left_sum(rate) / len(rate)
        return vals

    def edges(v):
        v = v[np.isfinite(v)]
        qs = np.linspace(0, 1, fc.affinity_buckets + 1)[1:-1]
        return np.unique(np.quantile(v, qs)) if v.size else np.zeros(0)

    def title_values(tokens, targets, target, n_targets):
        """Max over the query's words of P(target | title word) over the training split's distinct items."""
        pairs, words, per_target = Counter(), Counter(), Counter()
        seen = set()
        for r in range(len(train["item_id"])):
            item = int(train["item_id"][r])
            b = int(train[target][r])
            if item in seen:
                continue
            seen.add(item)
            if b <= 0:
                continue
            per_target[b] += 1
            for w in {int(x) for x in train["title_tokens"][r]} - {0}:
                pairs[w, b] += 1
                words[w] += 1
        total = sum(per_target.values()) or 1
        gamma = fc.affinity_title_smoothing
        vals = np.full(len(targets), np.nan)
        for i, (q, c) in enumerate(zip(tokens, targets)):
            toks, c = {int(x) for x in q} - {0}, int(c)
            if toks and 0 < c < n_targets:
                vals[i] = max((pairs[w, c] + gamma * per_target[c] / total) / (words[w] + gamma) for w in toks)
        return vals

    for target in AFFINITY_TARGETS:
        n = sizes[target]
        raw = {name: np.full((len(out[name][target]), 3), np.nan) for name in SPLITS}
        for f in range(fc.affinity_folds):
            rows = np.flatnonzero(fold == f)
            raw[SPLITS[0]][rows] = values(train["query_tokens"][rows], train[target][rows],
                                          counts(np.flatnonzero(fold != f), target), n)
        everything = counts(range(len(label)), target)
        for name in SPLITS[1:]:
            raw[name] = values(out[name]["query_tokens"], out[name][target], everything, n)
        share_edges, rate_edges = edges(raw[SPLITS[0]][:, 0]), edges(raw[SPLITS[0]][:, 2])
        for name in SPLITS:
            v = raw[name]
            for j, e in enumerate((share_edges, share_edges, rate_edges)):
                b = np.searchsorted(e, np.nan_to_num(v[:, j], nan=0.0), side="right") + 1
                columns[name].append(np.where(np.isfinite(v[:, j]), b, 0)[:, None])
        if target in TITLE_TARGETS:
            title = {name: title_values(out[name]["query_tokens"], out[name][target], target, n) for name in SPLITS}
            e = edges(title[SPLITS[0]])
            for name in SPLITS:
                b = np.searchsorted(e, np.nan_to_num(title[name], nan=0.0), side="right") + 1
                columns[name].append(np.where(np.isfinite(title[name]), b, 0)[:, None])
    size = fc.affinity_buckets + 1
    return {name: (np.concatenate(cols, axis=1) + np.arange(QUERY_AFFINITY_WIDTH) * size).astype(np.int32)
            for name, cols in columns.items()}
