"""The LambdaMART reference: LightGBM `lambdarank` on engineered features, trained in every run.

Why: the pipeline's other yardsticks are the network's own float baseline and the synthetic oracle. Neither
says whether the network is any good as a ranker; the model a ranking practitioner would try first,
gradient-boosted LambdaMART on hand-made features, does (issue 14). It is a reference, never served: it reads
the preprocessed arrays of the features directory (the same rows, labels and time split as the network),
trains on the training split, stops early on the validation split and scores the test split.

No leakage, by construction:
- every statistic is computed from the training split (the earliest period) only; validation and test rows
  are looked up in statistics of the whole training split;
- statistics that use labels (click, cart rates) are out-of-fold on training rows: the training requests are
  split into `folds` folds (by request, so a request's rows share a fold), and a row's value comes from the
  other folds only. Without this a training row's own click is inside its item's click rate, and LambdaMART
  learns to trust rates far more than they deserve on unseen data;
- position is not a feature (the network does not get it either).

Features (FEATURES lists them in column order): popularity and click rates of the item, category, brand and
top category (and the item's click rate against its category's); price bucket and price relative to the
category's items; query/title token overlap; query -> category / top category / brand affinity from the
catalogue titles of the training period (label-free: how often a query word appears in titles of that
category); query token x category / top category / brand / item click rates and their lift over the token's
own click rate; the share of the token's clicks that went to the category; history-match counts (history
items, categories, top categories, brands equal to the candidate's, over the whole history and its 4 most
recent entries); a few of these relative to the request (candidate minus the request's mean or max), the list
size, and category and top category as categorical features.

Cost is bounded by `ReferenceConfig`: LambdaMART trains on at most `max_train_requests` training requests
(those without a relevant row carry no gradient and are left out), for at most `max_rounds` rounds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shoprank.config import ShoprankConfig
from shoprank.evaluation.bootstrap import paired_bootstrap
from shoprank.evaluation.listwise import list_index, table_metrics
from shoprank.features.affinity import request_folds
from shoprank.features.dataset import SplitData, load_split
from shoprank.telemetry import peak_rss_mib

__all__ = [
    "CATEGORICAL",
    "FEATURES",
    "REFERENCE_DIR",
    "SCORES_FILE",
    "ReferenceFeatures",
    "compare_to_reference",
    "evaluation_section",
    "gate_section",
    "kfp_metrics",
    "reference_table",
    "report_parts",
    "run_reference",
]

REFERENCE_DIR = "reference"  # inside the evaluate step's output: scores, model, features
SCORES_FILE = "scores.npy"  # the reference's test scores (the gate's bootstrap reads them)
RECENT = 4  # history entries counted as "recent" (the history is right-aligned, most recent last)

FEATURES = (
    # popularity and click rates (training period; out-of-fold on training rows)
    "item_log_imps", "item_ctr", "item_cart_rate", "cat_log_imps", "cat_ctr", "brand_log_imps", "brand_ctr",
    "top_ctr", "item_ctr_minus_cat", "cat_price_ctr",
    # price
    "price_bucket", "price_minus_cat_mean", "price_z_in_cat",
    # query and title text
    "query_len", "title_len", "overlap", "overlap_share_query", "overlap_share_title",
    # query -> category, top category, brand from catalogue titles (label-free)
    "title_cat_aff_mean", "title_cat_aff_max", "title_cat_aff_min", "title_top_aff_mean", "title_top_aff_max",
    "title_brand_aff_mean", "title_brand_aff_max",
    # query token x candidate click statistics (out-of-fold on training rows)
    "tok_cat_ctr_mean", "tok_cat_ctr_max", "tok_cat_ctr_min", "tok_cat_lift_mean", "tok_cat_log_imps_mean",
    "tok_cat_click_share_mean", "tok_cat_click_share_max", "tok_top_ctr_mean", "tok_brand_ctr_mean",
    "tok_brand_ctr_max", "tok_item_ctr_max", "tok_item_log_imps_max", "tok_ctr_mean",
    # behaviour history
    "hist_len", "hist_item_match", "hist_cat_match", "hist_top_match", "hist_brand_match", "hist_cat_share",
    "hist_recent_item_match", "hist_recent_cat_match", "hist_recent_brand_match",
    # relative to the request
    "item_ctr_minus_list_mean", "title_cat_aff_minus_list_max", "tok_cat_ctr_minus_list_mean",
    "hist_cat_match_minus_list_max", "list_size",
    # categorical
    "category", "top_category",
)
CATEGORICAL = ("category", "top_category")

Progress = Callable[[str], None]


# --- statistics over keys ------------------------------------------------------------------------------

class _Sums:
    """Sums of weights per int64 key (keys < 0 are missing), looked up by key; optionally per fold, so that a
    training row can get the sums over the other folds only."""

    def __init__(self, keys: np.ndarray, weights: dict[str, np.ndarray], fold: np.ndarray | None = None,
                 folds: int = 0):
        k = np.asarray(keys).reshape(len(keys), -1)
        valid = k >= 0
        rows = np.nonzero(valid)[0]
        flat = k[valid]
        self.keys, inv = np.unique(flat, return_inverse=True)
        n = self.keys.size
        self.total = {"n": np.bincount(inv, minlength=n).astype(np.float64)}
        for name, w in weights.items():
            self.total[name] = np.bincount(inv, np.asarray(w, np.float64)[rows], minlength=n)
        self.folds = folds
        self.per_fold: dict[str, np.ndarray] = {}
        if fold is not None and folds > 1:
            cell = inv * folds + np.asarray(fold)[rows]
            self.per_fold["n"] = np.bincount(cell, minlength=n * folds).reshape(n, folds).astype(np.float64)
            for name, w in weights.items():
                self.per_fold[name] = np.bincount(cell, np.asarray(w, np.float64)[rows],
                                                  minlength=n * folds).reshape(n, folds)

    def lookup(self, keys: np.ndarray, fold: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Every sum per key (0 where unseen), keyed by weight name ("n": the count). With `fold` (one per row of
        `keys`): over the other folds only, scaled by folds/(folds-1) so that out-of-fold sums and sums over the
        whole split are on one scale."""
        keys = np.asarray(keys)
        if self.keys.size == 0:
            return {name: np.zeros(keys.shape) for name in self.total}
        pos = np.clip(np.searchsorted(self.keys, keys), 0, self.keys.size - 1)
        found = (keys >= 0) & (self.keys[pos] == keys)
        if fold is None or not self.per_fold:
            return {name: np.where(found, t[pos], 0.0) for name, t in self.total.items()}
        f = np.broadcast_to(np.asarray(fold).reshape(-1, *([1] * (keys.ndim - 1))), keys.shape)
        scale = self.folds / (self.folds - 1)
        return {name: np.where(found, (t[pos] - self.per_fold[name][pos, f]) * scale, 0.0)
                for name, t in self.total.items()}


def _rate(clicks: np.ndarray, n: np.ndarray, prior: float | np.ndarray, smoothing: float) -> np.ndarray:
    """Click rate shrunk towards `prior` by `smoothing` pseudo-impressions (rare keys stay near the prior)."""
    return (clicks + smoothing * prior) / (n + smoothing)


def _pair(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One int64 key per (a, b) pair; -1 where either is missing (< 0)."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    return np.where((a >= 0) & (b >= 0), (a << 24) | b, -1)


def _masked(values: np.ndarray, mask: np.ndarray, how: str) -> np.ndarray:
    """Mean, max or min over axis 1 of `values` where `mask`; NaN for rows with nothing (LightGBM: missing)."""
    any_ = mask.any(axis=1)
    if how == "mean":
        out = np.where(mask, values, 0.0).sum(axis=1) / np.maximum(mask.sum(axis=1), 1)
    elif how == "max":
        out = np.where(mask, values, -np.inf).max(axis=1)
    else:
        out = np.where(mask, values, np.inf).min(axis=1)
    return np.where(any_, out, np.nan)


def _per_list(values: np.ndarray, row_list: np.ndarray, n_lists: int, how: str) -> np.ndarray:
    """The request's mean or max of `values`, per row (NaN values ignored)."""
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    if how == "mean":
        s = np.bincount(row_list, np.where(ok, v, 0.0), n_lists)
        c = np.bincount(row_list, ok.astype(np.float64), n_lists)
        agg = s / np.maximum(c, 1)
        agg[c == 0] = np.nan
    else:
        agg = np.full(n_lists, -np.inf)
        np.maximum.at(agg, row_list[ok], v[ok])
        agg[~np.isfinite(agg)] = np.nan
    return agg[row_list]


# --- features ------------------------------------------------------------------------------------------

@dataclass
class _Split:
    """The columns of one split the features need (loaded into memory for the chosen rows)."""

    query: np.ndarray
    title: np.ndarray
    hist_items: np.ndarray
    hist_cats: np.ndarray
    hist_brands: np.ndarray
    item: np.ndarray
    cat: np.ndarray
    brand: np.ndarray
    price: np.ndarray
    top: np.ndarray
    request: np.ndarray

    @classmethod
    def load(cls, split: SplitData, rows: np.ndarray | slice | None = None) -> _Split:
        """The columns at `rows` (int32 as stored: a default-scale training split is 200 MB in memory)."""
        def col(name: str) -> np.ndarray:
            c = split.column(name)
            return np.asarray(c if rows is None else c[rows])

        return cls(col("query_tokens"), col("title_tokens"), col("history_items"), col("history_categories"),
                   col("history_brands"), col("item_id"), col("category"), col("brand"), col("price_bucket"),
                   col("top_category"), col("request"))

    def __len__(self) -> int:
        return int(self.item.size)


@dataclass
class ReferenceFeatures:
    """Statistics of the training split, and the feature matrix of any rows from them.

    `fit` reads the training split once; `matrix(split, rows)` builds features for rows of any split, with
    out-of-fold values when the rows are training rows (`fold` given)."""

    config: ShoprankConfig
    # Global click and cart rates (the smoothing prior): over the whole training split, and per fold over the
    # other folds (a training row's prior must not hold its own label either).
    prior: dict[str, float] = field(default_factory=dict)
    fold_prior: dict[str, np.ndarray] = field(default_factory=dict)
    stats: dict[str, _Sums] = field(default_factory=dict)
    cat_top: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cat_price: dict[str, np.ndarray] = field(default_factory=dict)
    title_aff: dict[str, tuple[_Sums, _Sums, np.ndarray]] = field(default_factory=dict)

    @property
    def _oov(self) -> int:
        return self.config.features.oov_buckets

    @classmethod
    def fit(cls, train: SplitData, fold: np.ndarray, config: ShoprankConfig) -> ReferenceFeatures:
        rc = config.reference
        self = cls(config)
        cols = ("query_tokens", "item_id", "category", "brand", "price_bucket", "top_category")
        query, item, cat, brand, price_b, top = (np.asarray(train.column(c)) for c in cols)
        y = np.asarray(train.column(config.train.label)).astype(np.float64)
        cart = np.asarray(train.column("carted")).astype(np.float64)
        w = {"click": y, "cart": cart}
        k = rc.folds
        n_fold = np.bincount(fold, minlength=k).astype(np.float64)
        for name, v in w.items():
            self.prior[name] = float(v.mean()) if v.size else 0.0
            in_fold = np.bincount(fold, v, minlength=k)
            rest = np.maximum(n_fold.sum() - n_fold, 1.0)
            self.fold_prior[name] = (in_fold.sum() - in_fold) / rest
        q = np.where(query > 0, query, -1)
        # Label statistics: per key, impressions and clicks overall and per fold.
        self.stats = {
            "item": _Sums(item, w, fold, k), "cat": _Sums(cat, w, fold, k), "brand": _Sums(brand, w, fold, k),
            "top": _Sums(top, w, fold, k), "cat_price": _Sums(_pair(cat, price_b), w, fold, k),
            "tok": _Sums(q, w, fold, k),
            "tok_cat": _Sums(_pair(q, cat[:, None]), w, fold, k),
            "tok_top": _Sums(_pair(q, top[:, None]), w, fold, k),
            "tok_brand": _Sums(_pair(q, brand[:, None]), w, fold, k),
            "tok_item": _Sums(_pair(q, item[:, None]), w, fold, k),
        }
        # Catalogue facts of the items seen in training (label-free): leaf -> top category, price per category,
        # and how often a word of the titles occurs in a category / top category / brand.
        del q
        n_cat = int(max(cat.max(initial=0), np.asarray(train.column("history_categories")).max(initial=0))) + 1
        self.cat_top = np.full(n_cat, -1, np.int64)
        self.cat_top[cat] = top
        _, first = np.unique(item, return_index=True)
        titles = np.asarray(train.column("title_tokens")[first]).astype(np.int64)
        cats, tops, brands = cat[first].astype(np.int64), top[first].astype(np.int64), brand[first].astype(np.int64)
        price = price_b[first].astype(np.float64)
        has_price = price > 0
        cnt = np.bincount(cats[has_price], minlength=n_cat).astype(np.float64)
        mean = np.bincount(cats[has_price], price[has_price], n_cat) / np.maximum(cnt, 1)
        sq = np.bincount(cats[has_price], price[has_price] ** 2, n_cat) / np.maximum(cnt, 1)
        self.cat_price = {"mean": np.where(cnt > 0, mean, np.nan),
                          "std": np.where(cnt > 1, np.sqrt(np.maximum(sq - mean**2, 0.0)), np.nan)}
        # A title word counts once per item, however often it occurs in the title.
        n_it, width = titles.shape
        item_word = np.unique(_pair(np.repeat(np.arange(n_it), width).reshape(n_it, width),
                                    np.where(titles > 0, titles, -1)).ravel())
        item_word = item_word[item_word >= 0]
        it, word = item_word >> 24, item_word & ((1 << 24) - 1)
        words = _Sums(word, {})
        for name, target in (("cat", cats), ("top", tops), ("brand", brands)):
            share = np.bincount(target, minlength=int(target.max(initial=0)) + 1) / max(n_it, 1)
            self.title_aff[name] = (_Sums(_pair(word, target[it]), {}), words, share)
        return self

    def _title_affinity(self, name: str, q: np.ndarray, target: np.ndarray) -> np.ndarray:
        """P(target | query word) over training-period titles, smoothed towards the target's share of items."""
        pairs, words, share = self.title_aff[name]
        n_pair = pairs.lookup(_pair(q, target[:, None]))["n"]
        n_word = words.lookup(q)["n"]
        base = share[np.clip(target, 0, share.size - 1)][:, None] * (target < share.size)[:, None]
        alpha = self.config.reference.title_smoothing
        return (n_pair + alpha * base) / (n_word + alpha)

    def matrix(self, split: SplitData, rows: np.ndarray | None = None, fold: np.ndarray | None = None,
               chunk_rows: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
        """Feature matrix (float32, FEATURES order) of `rows` (whole request lists; default all) of `split`,
        and the request-list index of each row. `fold`: the rows' folds when they are training rows
        (out-of-fold statistics). Built `chunk_rows` rows at a time, cut at list boundaries, so that the
        intermediate arrays stay small whatever the split's size."""
        rows = np.arange(split.rows) if rows is None else np.asarray(rows)
        row_list, _ = list_index(np.asarray(split.column("request"))[rows])
        starts = np.concatenate([[0], np.flatnonzero(np.diff(row_list)) + 1, [rows.size]])
        cuts = np.unique(starts[np.searchsorted(starts, np.arange(0, rows.size, chunk_rows))])
        cuts = np.concatenate([cuts[cuts < rows.size], [rows.size]]) if rows.size else np.array([0])
        x = np.empty((rows.size, len(FEATURES)), np.float32)
        for a, b in zip(cuts[:-1], cuts[1:]):
            x[a:b] = self._chunk(_Split.load(split, rows[a:b]), None if fold is None else np.asarray(fold)[a:b])
        return x, row_list

    def _chunk(self, s: _Split, fold: np.ndarray | None) -> np.ndarray:
        rc = self.config.reference
        m = rc.smoothing
        if fold is None:
            prior, cprior = self.prior["click"], self.prior["cart"]
        else:
            prior, cprior = self.fold_prior["click"][fold], self.fold_prior["cart"][fold]
        st = self.stats
        f: dict[str, np.ndarray] = {}

        got: dict[str, dict[str, np.ndarray]] = {}

        def sums(name: str, keys: np.ndarray, what: str) -> np.ndarray:
            if name not in got:  # one look-up per statistic (its keys are always the same in this chunk)
                got[name] = st[name].lookup(keys, fold)
            return got[name][what]

        def log_n(name: str, keys: np.ndarray) -> np.ndarray:
            return np.log1p(sums(name, keys, "n"))

        def ctr(name: str, keys: np.ndarray, what: str = "click", p: float | np.ndarray = prior) -> np.ndarray:
            if isinstance(p, np.ndarray):  # one prior per row (its fold's): broadcast over the key's slots
                p = p.reshape(-1, *([1] * (keys.ndim - 1)))
            return _rate(sums(name, keys, what), sums(name, keys, "n"), p, m)

        f["item_log_imps"] = log_n("item", s.item)
        f["item_ctr"] = ctr("item", s.item)
        f["item_cart_rate"] = ctr("item", s.item, "cart", cprior)
        f["cat_log_imps"] = log_n("cat", s.cat)
        f["cat_ctr"] = ctr("cat", s.cat)
        f["brand_log_imps"] = log_n("brand", s.brand)
        f["brand_ctr"] = ctr("brand", s.brand)
        f["top_ctr"] = ctr("top", s.top)
        f["item_ctr_minus_cat"] = f["item_ctr"] - f["cat_ctr"]
        f["cat_price_ctr"] = ctr("cat_price", _pair(s.cat, s.price))

        price = np.where(s.price > 0, s.price, np.nan).astype(np.float64)
        cat_ok = (s.cat >= 0) & (s.cat < self.cat_top.size)
        cat_i = np.where(cat_ok, s.cat, 0)
        mean = np.where(cat_ok, self.cat_price["mean"][cat_i], np.nan)
        std = np.where(cat_ok, self.cat_price["std"][cat_i], np.nan)
        f["price_bucket"] = price
        f["price_minus_cat_mean"] = price - mean
        f["price_z_in_cat"] = (price - mean) / np.where(std > 0, std, np.nan)

        qmask = s.query > 0
        tmask = s.title > 0
        q = np.where(qmask, s.query, -1)
        f["query_len"] = qmask.sum(axis=1).astype(np.float64)
        f["title_len"] = tmask.sum(axis=1).astype(np.float64)
        in_title = ((s.query[:, :, None] == s.title[:, None, :]) & tmask[:, None, :]).any(axis=2) & qmask
        # distinct query words found in the title
        first_occ = np.ones_like(qmask)
        for j in range(1, s.query.shape[1]):
            first_occ[:, j] = ~(s.query[:, :j] == s.query[:, j: j + 1]).any(axis=1)
        overlap = (in_title & first_occ).sum(axis=1).astype(np.float64)
        distinct_q = (qmask & first_occ).sum(axis=1)
        f["overlap"] = overlap
        f["overlap_share_query"] = np.where(distinct_q > 0, overlap / np.maximum(distinct_q, 1), np.nan)
        f["overlap_share_title"] = np.where(f["title_len"] > 0, overlap / np.maximum(f["title_len"], 1), np.nan)

        cat_aff = self._title_affinity("cat", q, s.cat)
        top_aff = self._title_affinity("top", q, s.top)
        brand_aff = self._title_affinity("brand", q, s.brand)
        f["title_cat_aff_mean"] = _masked(cat_aff, qmask, "mean")
        f["title_cat_aff_max"] = _masked(cat_aff, qmask, "max")
        f["title_cat_aff_min"] = _masked(cat_aff, qmask, "min")
        f["title_top_aff_mean"] = _masked(top_aff, qmask, "mean")
        f["title_top_aff_max"] = _masked(top_aff, qmask, "max")
        f["title_brand_aff_mean"] = _masked(brand_aff, qmask, "mean")
        f["title_brand_aff_max"] = _masked(brand_aff, qmask, "max")

        tc = _pair(q, s.cat[:, None])
        tok_ctr = ctr("tok", q)
        tok_cat_ctr = ctr("tok_cat", tc)
        tok_clicks = sums("tok", q, "click")
        share = np.where(tok_clicks > 0, sums("tok_cat", tc, "click") / np.maximum(tok_clicks, 1.0), np.nan)
        f["tok_cat_ctr_mean"] = _masked(tok_cat_ctr, qmask, "mean")
        f["tok_cat_ctr_max"] = _masked(tok_cat_ctr, qmask, "max")
        f["tok_cat_ctr_min"] = _masked(tok_cat_ctr, qmask, "min")
        f["tok_cat_lift_mean"] = _masked(tok_cat_ctr / np.maximum(tok_ctr, 1e-6), qmask, "mean")
        f["tok_cat_log_imps_mean"] = _masked(np.log1p(sums("tok_cat", tc, "n")), qmask, "mean")
        f["tok_cat_click_share_mean"] = _masked(np.nan_to_num(share), qmask & np.isfinite(share), "mean")
        f["tok_cat_click_share_max"] = _masked(np.nan_to_num(share), qmask & np.isfinite(share), "max")
        f["tok_top_ctr_mean"] = _masked(ctr("tok_top", _pair(q, s.top[:, None])), qmask, "mean")
        tok_brand = ctr("tok_brand", _pair(q, s.brand[:, None]))
        f["tok_brand_ctr_mean"] = _masked(tok_brand, qmask, "mean")
        f["tok_brand_ctr_max"] = _masked(tok_brand, qmask, "max")
        ti = _pair(q, s.item[:, None])
        f["tok_item_ctr_max"] = _masked(ctr("tok_item", ti), qmask, "max")
        f["tok_item_log_imps_max"] = _masked(np.log1p(sums("tok_item", ti, "n")), qmask, "max")
        f["tok_ctr_mean"] = _masked(tok_ctr, qmask, "mean")

        hmask = s.hist_items > 0
        known_item = s.item > self._oov
        hist_top = np.where((s.hist_cats > 0) & (s.hist_cats < self.cat_top.size),
                            self.cat_top[np.clip(s.hist_cats, 0, self.cat_top.size - 1)], -1)
        item_m = (s.hist_items == s.item[:, None]) & hmask & known_item[:, None]
        cat_m = (s.hist_cats == s.cat[:, None]) & (s.hist_cats > 0)
        top_m = (hist_top == s.top[:, None]) & (hist_top >= 0)
        brand_m = (s.hist_brands == s.brand[:, None]) & (s.hist_brands > 0)
        f["hist_len"] = hmask.sum(axis=1).astype(np.float64)
        f["hist_item_match"] = item_m.sum(axis=1).astype(np.float64)
        f["hist_cat_match"] = cat_m.sum(axis=1).astype(np.float64)
        f["hist_top_match"] = top_m.sum(axis=1).astype(np.float64)
        f["hist_brand_match"] = brand_m.sum(axis=1).astype(np.float64)
        f["hist_cat_share"] = np.where(f["hist_len"] > 0, f["hist_cat_match"] / np.maximum(f["hist_len"], 1), np.nan)
        f["hist_recent_item_match"] = item_m[:, -RECENT:].sum(axis=1).astype(np.float64)
        f["hist_recent_cat_match"] = cat_m[:, -RECENT:].sum(axis=1).astype(np.float64)
        f["hist_recent_brand_match"] = brand_m[:, -RECENT:].sum(axis=1).astype(np.float64)

        row_list, n_lists = list_index(s.request)
        f["item_ctr_minus_list_mean"] = f["item_ctr"] - _per_list(f["item_ctr"], row_list, n_lists, "mean")
        f["title_cat_aff_minus_list_max"] = (f["title_cat_aff_mean"]
                                             - _per_list(f["title_cat_aff_mean"], row_list, n_lists, "max"))
        f["tok_cat_ctr_minus_list_mean"] = (f["tok_cat_ctr_mean"]
                                            - _per_list(f["tok_cat_ctr_mean"], row_list, n_lists, "mean"))
        f["hist_cat_match_minus_list_max"] = (f["hist_cat_match"]
                                              - _per_list(f["hist_cat_match"], row_list, n_lists, "max"))
        f["list_size"] = np.bincount(row_list, minlength=n_lists)[row_list].astype(np.float64)
        f["category"] = s.cat.astype(np.float64)
        f["top_category"] = s.top.astype(np.float64)
        return np.stack([f[name] for name in FEATURES], axis=1).astype(np.float32)


# --- training and scoring ------------------------------------------------------------------------------

def _lists_with_gain(split: SplitData) -> tuple[np.ndarray, np.ndarray]:
    """Row index of every list with a relevant row, and the list (index) of each row."""
    row_list, n_lists = list_index(np.asarray(split.column("request")))
    gain = np.asarray(split.column("gain"))
    has = np.bincount(row_list, (gain > 0).astype(np.float64), n_lists) > 0
    return has, row_list


def _choose_rows(split: SplitData, max_requests: int, seed: int) -> np.ndarray:
    """Rows of the lists LambdaMART can learn from (a relevant row), at most `max_requests` of them (seeded)."""
    has, row_list = _lists_with_gain(split)
    lists = np.flatnonzero(has)
    if max_requests and lists.size > max_requests:
        lists = np.sort(np.random.default_rng(seed).choice(lists, max_requests, replace=False))
    keep = np.zeros(has.size, bool)
    keep[lists] = True
    return np.flatnonzero(keep[row_list])


def _group_sizes(row_list: np.ndarray) -> np.ndarray:
    return np.bincount(row_list).astype(np.int64)


def _shuffled_within_lists(rows: np.ndarray, row_list: np.ndarray, seed: int) -> np.ndarray:
    """`rows` in a seeded random order inside each list (lists stay contiguous and in order).

    Why: LightGBM sorts a list by score with a stable sort, so tied scores (every row at the first rounds) keep
    the stored row order, which is the order the shop showed them in and so carries position bias: without
    the shuffle, validation NDCG of the first round looks best and early stopping keeps one tree."""
    return rows[np.lexsort((np.random.default_rng(seed).random(rows.size), row_list))]


def run_reference(features_dir: str | Path, config: ShoprankConfig, out_dir: str | Path | None = None,
                  progress: Progress = print) -> dict:
    """Train the reference on the training split (early stopping on validation) and score the test split.

    Returns {"scores": test scores (float64, test row order), "info": rounds, rows, timings, peak RSS,
    feature importance}. With `out_dir`: writes scores.npy, model.txt and reference.json there."""
    import lightgbm as lgb

    rc = config.reference
    t0 = time.perf_counter()
    rss0 = peak_rss_mib()
    train, val, test = (load_split(features_dir, s) for s in ("train", "validation", "test"))
    fold_all = request_folds(np.asarray(train.column("request")), rc.folds, rc.seed)  # the affinity's folds
    stats = ReferenceFeatures.fit(train, fold_all, config)
    rows = _choose_rows(train, rc.max_train_requests, rc.seed)
    rows = _shuffled_within_lists(rows, list_index(np.asarray(train.column("request"))[rows])[0], rc.seed)
    x_tr, l_tr = stats.matrix(train, rows, fold_all[rows])
    y_tr = np.clip(np.asarray(train.column("gain"))[rows], 0, None).astype(np.int32)
    params = {"objective": "lambdarank", "metric": "ndcg", "eval_at": [config.evaluation.top_k],
              "learning_rate": rc.learning_rate, "num_leaves": rc.num_leaves, "min_data_in_leaf": rc.min_data_in_leaf,
              "feature_fraction": rc.feature_fraction, "lambda_l2": rc.lambda_l2, "num_threads": rc.threads,
              "seed": rc.seed, "deterministic": True, "force_col_wise": True, "verbose": -1}
    cats = [FEATURES.index(c) for c in CATEGORICAL]
    dtrain = lgb.Dataset(x_tr, y_tr, group=_group_sizes(l_tr), feature_name=list(FEATURES),
                         categorical_feature=cats, free_raw_data=True)
    valid_sets, callbacks, curve = [], [], {}
    val_rows = _choose_rows(val, rc.max_validation_requests, rc.seed + 1) if val.rows else np.zeros(0, np.int64)
    if val_rows.size:
        val_rows = _shuffled_within_lists(val_rows, list_index(np.asarray(val.column("request"))[val_rows])[0],
                                          rc.seed + 1)
        x_va, l_va = stats.matrix(val, val_rows)
        y_va = np.clip(np.asarray(val.column("gain"))[val_rows], 0, None).astype(np.int32)
        valid_sets = [lgb.Dataset(x_va, y_va, group=_group_sizes(l_va), reference=dtrain)]
        callbacks = [lgb.early_stopping(rc.early_stopping_rounds, first_metric_only=True, verbose=False),
                     lgb.record_evaluation(curve)]
    t1 = time.perf_counter()
    t_features = t1 - t0  # statistics, and the training and validation matrices
    booster = lgb.train(params, dtrain, num_boost_round=rc.max_rounds, valid_sets=valid_sets, callbacks=callbacks)
    t_train = time.perf_counter() - t1
    best = int(booster.best_iteration) if booster.best_iteration > 0 else booster.current_iteration()
    t2 = time.perf_counter()
    x_te, _ = stats.matrix(test)
    scores = booster.predict(x_te, num_iteration=best).astype(np.float64) if len(x_te) else np.zeros(0)
    t_score = time.perf_counter() - t2
    importance = booster.feature_importance("gain")
    top = sorted(zip(FEATURES, importance.tolist()), key=lambda p: -p[1])
    info = {
        "model": "LightGBM lambdarank", "lightgbm": lgb.__version__, "features": len(FEATURES),
        "train_rows": int(rows.size), "train_requests": int(_group_sizes(l_tr).size),
        "train_split_rows": int(train.rows), "validation_rows": int(val_rows.size), "test_rows": int(test.rows),
        "rounds": best, "rounds_trained": len(next(iter(curve.get("valid_0", {}).values()), [])) or best,
        "max_rounds": rc.max_rounds,
        "validation_ndcg": round(float(booster.best_score["valid_0"][f"ndcg@{config.evaluation.top_k}"]), 4)
        if valid_sets else None,
        "seconds": round(time.perf_counter() - t0, 2),
        "seconds_by_part": {"features": round(t_features, 2), "train": round(t_train, 2),
                            "score": round(t_score, 2)},
        "peak_rss_mib": round(peak_rss_mib(), 1), "peak_rss_mib_at_start": round(rss0, 1),
        "importance_gain": {n: round(float(v), 2) for n, v in top},
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / SCORES_FILE, scores)
        booster.save_model(str(out / "model.txt"), num_iteration=best)
        (out / "reference.json").write_text(json.dumps(info, indent=2))
    progress(f"[reference] LightGBM lambdarank: {best} rounds on {rows.size:,} training rows, "
             f"{info['seconds']:.1f}s, peak RSS {info['peak_rss_mib']:.0f} MiB")
    return {"scores": scores, "info": info}


# --- comparison ----------------------------------------------------------------------------------------

def reference_table(split: SplitData, scored: dict[str, np.ndarray], config: ShoprankConfig) -> dict[str, dict]:
    """AUC and tie-aware NDCG@k / MRR / Recall@k of each model's test scores, plus the oracle's row and every
    model's share of the oracle (metric / oracle's metric; AUC: (AUC - 0.5) / (oracle AUC - 0.5)) when the data
    carry an oracle."""
    k = config.evaluation.top_k
    labels = np.asarray(split.column(config.train.label))
    gains = np.asarray(split.column("gain"))
    groups = np.asarray(split.column("request"))
    rows = {name: table_metrics(groups, labels, gains, s, k) for name, s in scored.items()}
    oracle = np.asarray(split.column("oracle"))
    if oracle.size and np.isfinite(oracle).all():
        rows["oracle"] = table_metrics(groups, labels, gains, oracle, k)
        o = rows["oracle"]
        for r in rows.values():
            r["oracle_share"] = {
                m: ((r[m] - 0.5) / (o[m] - 0.5) if m == "auc" else r[m] / o[m]) if o[m] and o[m] != 0.5
                else float("nan") for m in ("auc", f"ndcg_at_{k}", "mrr", f"recall_at_{k}")}
    return rows


def compare_to_reference(split: SplitData, network: np.ndarray, reference: np.ndarray, config: ShoprankConfig
                         ) -> dict:
    """Paired bootstrap over requests of network - reference on tie-aware NDCG@k and AUC."""
    rc = config.reference
    return paired_bootstrap(np.asarray(split.column("request")), np.asarray(split.column(config.train.label)),
                            np.asarray(split.column("gain")), network, reference, config.evaluation.top_k,
                            rc.bootstrap_resamples, rc.bootstrap_seed, rc.bootstrap_level, auc=True)


def evaluation_section(split: SplitData, network: np.ndarray, reference: dict, config: ShoprankConfig,
                       name: str = "baseline") -> dict:
    """What the evaluate step records about the reference (evaluation.json "reference"): its cost, the
    tie-aware table of the network, the reference and the oracle, and the paired bootstrap network - reference.
    The time this comparison takes is part of the reference's cost (info["comparison_seconds"])."""
    t0 = time.perf_counter()
    table = reference_table(split, {name: network, "reference": reference["scores"]}, config)
    boot = {"a": name, "b": "reference"} | compare_to_reference(split, network, reference["scores"], config)
    info = reference["info"] | {"comparison_seconds": round(time.perf_counter() - t0, 2)}
    return {"info": info, "table": table, "bootstrap": boot}


def gate_section(split: SplitData, optimized_dir: str | Path, evaluation_dir: str | Path | None,
                 baseline_eval: dict, config: ShoprankConfig) -> dict | None:
    """What the gate records about the reference (summary.json "reference"): the tie-aware table of the
    float baseline, the optimised int8 network, the reference and the oracle, and the paired bootstrap
    int8 - reference that the blessing check reads. None when the reference is disabled; {"error": ...} when
    it should be there and is not (the check then reports it)."""
    if not config.reference.enabled:
        return None
    path = Path(evaluation_dir) / REFERENCE_DIR / SCORES_FILE if evaluation_dir is not None else None
    if path is None or not path.is_file():
        return {"error": f"no reference scores ({path or 'no evaluation directory given'})"}
    t0 = time.perf_counter()
    ref = np.load(path)
    opt = Path(optimized_dir)
    network = np.load(opt / "scores_int8_tflite.npy")
    scored = {"baseline": np.load(opt / "scores_baseline_savedmodel.npy"), "optimized": network, "reference": ref}
    table = reference_table(split, scored, config)
    boot = {"a": "optimized", "b": "reference"} | compare_to_reference(split, network, ref, config)
    section = baseline_eval.get("reference", {})
    cost = {k: v for k, v in section.get("info", {}).items() if k != "importance_gain"}
    cost["gate_comparison_seconds"] = round(time.perf_counter() - t0, 2)
    # Everything the reference adds to a run: training and scoring it, and comparing it in evaluate and gate.
    cost["total_seconds"] = round(sum(cost.get(k, 0.0) for k in ("seconds", "comparison_seconds",
                                                                   "gate_comparison_seconds")), 2)
    return {"model": "LightGBM lambdarank (reference, not served)",
            "metrics": "AUC; NDCG@k, MRR and Recall@k tie-aware (tied scores share their positions)",
            "table": table, "bootstrap": boot, "bootstrap_baseline": section.get("bootstrap"), "cost": cost,
            "check": config.blessing.reference_check}


def kfp_metrics(section: dict, k: int) -> dict[str, float]:
    """Flat, finite numbers of an evaluation section for KFP Metrics (`log_metric`)."""
    import math

    out: dict[str, float] = {}
    table = section.get("table", {})
    for name in (n for n in table if n != "oracle"):
        for m in ("auc", f"ndcg_at_{k}", "mrr", f"recall_at_{k}"):
            out[f"{name}_{m}{'_tie_aware' if m != 'auc' else ''}"] = table[name][m]
        if "oracle_share" in table[name]:
            out[f"{name}_oracle_auc_share"] = table[name]["oracle_share"]["auc"]
            out[f"{name}_oracle_ndcg_share"] = table[name]["oracle_share"][f"ndcg_at_{k}"]
    boot = section.get("bootstrap", {})
    for m in (f"ndcg_at_{k}", "auc"):
        if m in boot:
            for part in ("diff", "low", "high"):
                out[f"{boot['a']}_minus_reference_{m}_{part}"] = boot[m][part]
    info = section.get("info") or section.get("cost") or {}
    for key in ("seconds", "total_seconds", "peak_rss_mib", "rounds", "train_rows", "share_of_run_wall_time"):
        if key in info:
            out[f"reference_{key}"] = info[key]
    return {key: round(float(v), 5) for key, v in out.items() if v is not None and math.isfinite(float(v))}


def report_parts(section: dict, k: int) -> tuple[list[tuple[str, str]], list[str]]:
    """HTML sections (the tie-aware table, the bootstrap intervals, the cost) and figures (metrics per model,
    the intervals of the differences) of an evaluation or gate section."""
    from shoprank.evaluation.report import bar_figure, interval_figure, table_html

    if "error" in section:
        return [("LambdaMART reference", table_html([(section["error"],)], ["reference missing"]))], []
    ndcg = f"ndcg_at_{k}"
    cols = ("auc", ndcg, "mrr", f"recall_at_{k}")
    table = section["table"]
    rows = [(name, *(f"{r[c]:.4f}" for c in cols),
             *((f"{r['oracle_share']['auc']:.3f}", f"{r['oracle_share'][ndcg]:.3f}") if "oracle_share" in r
               else ("-", "-"))) for name, r in table.items()]
    header = ["model", "AUC", f"NDCG@{k}", "MRR", f"Recall@{k}", "AUC share of oracle", f"NDCG@{k} / oracle's"]
    boots = [b for b in (section.get("bootstrap"), section.get("bootstrap_baseline")) if b]
    brows, intervals = [], {}
    for b in boots:
        for m in (ndcg, "auc"):
            if m in b:
                v = b[m]
                brows.append((f"{b['a']} - {b['b']}", m, f"{v['diff']:+.4f}", f"[{v['low']:+.4f}, {v['high']:+.4f}]",
                              f"{v['share_below_zero']:.3f}"))
                intervals[f"{b['a']} - {b['b']}: {m}"] = (v["diff"], v["low"], v["high"])
    level = boots[0]["level"] if boots else 0.95
    info = section.get("cost") or section.get("info") or {}
    cost = [(key, info[key]) for key in ("seconds", "comparison_seconds", "gate_comparison_seconds", "total_seconds",
                                         "peak_rss_mib", "rounds", "train_rows", "train_requests", "train_split_rows",
                                         "features", "share_of_run_wall_time") if key in info]
    parts = [("LambdaMART reference (LightGBM; tie-aware ranking metrics)", table_html(rows, header)),
             (f"Paired bootstrap over requests ({boots[0]['resamples'] if boots else 0} resamples, "
              f"{level:.0%} interval)",
              table_html(brows, ["difference", "metric", "estimate", f"{level:.0%} interval",
                                 "share of resamples < 0"])),
             ("Reference cost", table_html(cost, ["", "value"]))]
    series = {n: {"AUC": r["auc"], f"NDCG@{k}": r[ndcg], "MRR": r["mrr"], f"Recall@{k}": r[f"recall_at_{k}"]}
              for n, r in table.items()}
    values = [v for row in series.values() for v in row.values() if np.isfinite(v)]
    low = max(0.0, min(values, default=0.0) - 0.05)
    figs = [bar_figure(series, "Test metrics (tie-aware)", "", ylim=(np.floor(low * 20) / 20, 1.0))]
    if intervals:
        figs.append(interval_figure(intervals, f"Network - reference ({level:.0%} bootstrap interval)", "difference"))
    return parts, figs
