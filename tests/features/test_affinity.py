"""The query -> category/brand affinity (shoprank.features.affinity): its counts against a hand computation, the
out-of-fold values of training rows, the raw-text path against the id path (what serving runs), persistence,
and the unfitted transform. The whole preprocessing output is compared with an independent dict-based count in
tests/features/test_streaming.py (tests/support/reference_preprocess.py)."""

import numpy as np
import pytest

from shoprank.config import FeatureConfig
from shoprank.features.affinity import (
    AFFINITY_INPUT,
    AFFINITY_WIDTH,
    QUERY_AFFINITY_WIDTH,
    QueryAffinity,
    TokenShareTable,
    history_columns,
)
from shoprank.features.dataset import load_split
from shoprank.features.history_match import category_tops, history_match
from shoprank.features.transform import Catalogue, FeatureTransform

# Rows: query tokens (0 = padding), target id, clicked, request.
TOKENS = np.array([[5, 6, 0], [5, 0, 0], [6, 6, 0], [5, 6, 0], [7, 0, 0], [0, 0, 0]])
TARGET = np.array([1, 2, 1, 1, 2, 1])
CLICKED = np.array([1, 1, 1, 0, 1, 1])
REQUEST = np.arange(6)


def _fit(folds=2, smoothing=1.0, rate_smoothing=2.0, buckets=4):
    return TokenShareTable.fit(TOKENS, TARGET, CLICKED, REQUEST, n_tokens=8, n_targets=3, buckets=buckets,
                               smoothing=smoothing, rate_smoothing=rate_smoothing, folds=folds, seed=0)


def test_shares_and_rates_match_a_hand_count():
    table, _ = _fit(smoothing=1.0, rate_smoothing=2.0)
    # Clicked rows with a target: targets 1, 2, 1, 2, 1 -> prior(1) = 3/5, prior(2) = 2/5; click rate 5/6. Token 5:
    # shown in rows 0 (target 1, clicked), 1 (2, clicked), 3 (1, not clicked); token 6: rows 0, 2 (once, although
    # row 2 repeats it), 3; token 7: row 4 (target 2).
    v = table.values(np.array([[5, 6, 0], [7, 0, 0], [0, 0, 0], [5, 0, 0]]), np.array([1, 1, 1, 0]))
    share_5, share_6, share_7 = (1 + 0.6) / (2 + 1), (2 + 0.6) / (2 + 1), (0 + 0.6) / (1 + 1)
    rate0 = 5 / 6
    rate_5, rate_6, rate_7 = (1 + 2 * rate0) / (2 + 2), (2 + 2 * rate0) / (3 + 2), (0 + 2 * rate0) / (0 + 2)
    np.testing.assert_allclose(v[0], [share_6, (share_5 + share_6) / 2, (rate_5 + rate_6) / 2])
    np.testing.assert_allclose(v[1], [share_7, share_7, rate_7])
    assert np.isnan(v[2]).all() and np.isnan(v[3]).all()  # no query token; no target


def test_training_rows_get_out_of_fold_values():
    """A row's own click is not inside its value: with one row per fold (6 folds over 6 requests), row 4's token 7
    occurs nowhere else, so its share is the prior alone; the table of all rows counts its click."""
    table, own = TokenShareTable.fit(TOKENS, TARGET, CLICKED, REQUEST, n_tokens=8, n_targets=3, buckets=4,
                                     smoothing=1.0, rate_smoothing=2.0, folds=6, seed=0)
    assert table.values(TOKENS[4:5], TARGET[4:5])[0, 0] == pytest.approx((1 + 0.4) / (1 + 1))
    from shoprank.features.affinity import request_folds

    fold = request_folds(REQUEST, 6, 0)
    if len(set(fold.tolist())) == 6:  # the hash spreads the six requests over six folds: exact expectation
        others = np.flatnonzero(fold != fold[4])
        part, _ = TokenShareTable.fit(TOKENS[others], TARGET[others], CLICKED[others], REQUEST[others], 8, 3, 4, 1.0,
                                      2.0, 1, 0)
        assert table.bucketise(part.values(TOKENS[4:5], TARGET[4:5]))[0].tolist() == own[4].tolist()
    assert own.shape == (6, 3) and own.dtype == np.int32
    assert own[5].tolist() == [0, 0, 0]  # no query token: nothing to go on


def test_buckets_are_quantiles_of_the_training_max_and_nan_is_zero():
    table, own = _fit(buckets=4)
    assert len(table.edges) <= 3 and np.all(np.diff(table.edges) > 0)
    b = table.bucketise(np.array([[np.nan] * 3, [-1.0] * 3, [2.0] * 3]))
    assert b[0].tolist() == [0, 0, 0] and b[1].tolist() == [1, 1, 1]
    assert b[2].tolist() == [len(table.edges) + 1] * 2 + [len(table.rate_edges) + 1]
    assert own.max() <= 4


def _catalogue():
    return Catalogue(["a", "b", "c", "d"], ["red shoe", "blue shoe", "green hat", "wool hat"],
                     ["wear/shoes", "wear/shoes", "wear/hats", "wear/hats"], ["nike", "puma", "kangol", "nike"],
                     np.array([10.0, 20.0, 30.0, 40.0]))


def _fitted_transform():
    fc = FeatureConfig(query_len=4, title_len=4, history_len=3, oov_buckets=2, min_token_count=1, price_buckets=2,
                       affinity_buckets=4, affinity_folds=2)
    cat = _catalogue()
    t = FeatureTransform.fit(["red shoe", "hat", "shoe"], cat.title, cat.item_id, cat.category, cat.brand,
                             cat.price, fc)
    batch, _ = cat.batch(["red shoe", "hat", "shoe", "wool hat"], [[], [], [], []],
                         [["a", "b", "c"], ["c", "d"], ["b", "a"], ["d", "c", "a"]])
    x = t.transform(batch)
    clicked = np.array([1, 0, 0, 1, 0, 1, 0, 0, 1, 0])
    sizes = t.sizes
    items = t.transform(cat.batch([""], [[]], [list(cat.item_id)])[0])
    t.affinity, _ = QueryAffinity.fit(x["query_tokens"], {"category": x["category"], "brand": x["brand"]}, clicked,
                                      batch.row_request, {k: items[k] for k in ("title_tokens", "category", "brand")},
                                      sizes["token"], {"category": sizes["category"], "brand": sizes["brand"]}, 4,
                                      1.0, 2.0, 1.0, 2, 0)
    return t, cat


def test_raw_text_path_equals_the_id_path_serving_runs():
    """The transform on raw fields and `pair_input` on ids (request tokens and histories once per request, the
    candidates' category and brand indices: what shoprank.scoring.ranker computes) give the same input."""
    t, cat = _fitted_transform()
    batch, _ = cat.batch(["red hat", "", "nike shoe"], [[], ["a"], []], [["a", "c", "zz"], ["b"], ["d", "a"]])
    x = t.transform(batch)
    q = np.stack([t.tokens(s, t.config.query_len) for s in batch.queries])
    first = np.unique(batch.row_request, return_index=True)[1]  # each request's first row: its history
    ids = t.pair_input(q, x["history_categories"][first], x["history_brands"][first],
                       {"category": x["category"], "brand": x["brand"]}, batch.row_request)
    np.testing.assert_array_equal(x[AFFINITY_INPUT], ids)
    assert x[AFFINITY_INPUT].shape == (6, AFFINITY_WIDTH)
    size = t.config.affinity_buckets + 1
    cols = x[AFFINITY_INPUT] - np.arange(AFFINITY_WIDTH) * size
    assert ((cols >= 0) & (cols < size)).all() and (x[AFFINITY_INPUT] < t.sizes["affinity"]).all()
    query, history = cols[:, :QUERY_AFFINITY_WIDTH], cols[:, QUERY_AFFINITY_WIDTH:]
    assert (query[2] == 0).all()  # unknown candidate: no category, no brand
    assert (query[3] == 0).all()  # empty query
    assert (query[0] > 0).all()
    # History match: only request 1 has a history ("a": wear/shoes, nike); its candidate "b" is wear/shoes, puma.
    np.testing.assert_array_equal(history[3], [1, 1, 0])
    assert (np.delete(history, 3, axis=0) == 0).all()
    assert t.affinity.titles["brand"].keys.size > 0


def test_history_match_counts_equal_a_loop_over_the_history():
    """Differential: `history_match` (vectorised, per-request histories gathered by row_request) against a plain loop
    over each row's history; the transform's columns cap counts at the column's last id and offset them."""
    rng = np.random.default_rng(3)
    categories = ["a/x", "a/y", "b/x", "b/z", "c/w"]
    first = 3  # padding 0 and two out-of-vocabulary buckets come first
    tops = category_tops(categories, first, first + len(categories))
    assert tops[:first].tolist() == [-1, -1, -1] and tops[first:].tolist() == [0, 0, 1, 1, 2]
    hist_c = rng.integers(0, first + len(categories), (4, 6))
    hist_b = rng.integers(0, 4, (4, 6))
    rr = rng.integers(0, 4, 40)
    cat, brand = rng.integers(0, first + len(categories), 40), rng.integers(0, 4, 40)
    got = history_match(hist_c, hist_b, cat, brand, tops, rr)
    for i in range(40):
        hc, hb = hist_c[rr[i]], hist_b[rr[i]]
        top = [tops[h] if h > 0 else -1 for h in hc]
        want = [sum(1 for t in top if t >= 0 and t == tops[cat[i]]), sum(1 for h in hc if h > 0 and h == cat[i]),
                sum(1 for h in hb if h > 0 and h == brand[i])]
        assert got[i].tolist() == want, i
    np.testing.assert_array_equal(history_match(hist_c[rr], hist_b[rr], cat, brand, tops), got)  # per-row histories
    one = history_match(hist_c[:1], hist_b[:1], cat, brand, tops)  # one request's history, broadcast
    np.testing.assert_array_equal(one, history_match(hist_c, hist_b, cat, brand, tops, np.zeros(40, np.intp)))
    ids = history_columns(got, column_size=3)
    np.testing.assert_array_equal(ids - np.arange(QUERY_AFFINITY_WIDTH, AFFINITY_WIDTH) * 3, np.minimum(got, 2))


def test_title_table_counts_items_not_clicks():
    """The title column: P(brand | a title word) over items, max over the query's words, smoothed to the prior."""
    from shoprank.features.affinity import TitleWordTable

    titles = np.array([[3, 4], [3, 0], [5, 5], [4, 0]])  # item titles (token ids)
    brand = np.array([1, 1, 2, 2])
    table, own = TitleWordTable.fit(titles, brand, np.array([[3, 0], [5, 4]]), np.array([1, 2]), n_tokens=6,
                                    n_targets=3, buckets=4, smoothing=1.0)
    v = table.values(np.array([[3, 0], [5, 4], [0, 0]]), np.array([1, 2, 1]))
    # word 3: 2 items, both brand 1; word 4: items of brands 1 and 2; word 5: one item (counted once), brand 2
    np.testing.assert_allclose(v[0, 0], (2 + 0.5) / (2 + 1))
    np.testing.assert_allclose(v[1, 0], max((1 + 0.5) / (1 + 1), (1 + 0.5) / (2 + 1)))
    assert np.isnan(v[2, 0]) and own.shape == (2, 1)


def test_tables_survive_save_and_load(tmp_path):
    t, cat = _fitted_transform()
    t.save(tmp_path)
    loaded = FeatureTransform.load(tmp_path)
    batch, _ = cat.batch(["red shoe hat"], [[]], [["a", "b", "c", "d"]])
    np.testing.assert_array_equal(loaded.transform(batch)[AFFINITY_INPUT], t.transform(batch)[AFFINITY_INPUT])


def test_unfitted_transform_says_nothing_to_go_on():
    fc = FeatureConfig(affinity_buckets=8)
    cat = _catalogue()
    t = FeatureTransform.fit(["shoe"], cat.title, cat.item_id, cat.category, cat.brand, cat.price, fc)
    batch, _ = cat.batch(["shoe"], [[]], [["a", "b"]])
    # Query columns: bucket 0; history-match columns: count 0 (no history).
    assert t.transform(batch)[AFFINITY_INPUT].tolist() == [[0, 9, 18, 27, 36, 45, 54, 63, 72, 81]] * 2
    assert t.sizes["affinity"] == 90


def test_preprocessed_affinity_tracks_clicks(tiny_features, tiny_config):
    """On the tiny shop: validation rows in higher category-share buckets are clicked more often (the signal the
    reference led by), and every value is inside the embedding table."""
    split = load_split(tiny_features[0], "validation")
    x = np.asarray(split.column(AFFINITY_INPUT))
    clicked = np.asarray(split.column("clicked")).astype(float)
    top = x[:, 0]  # the category max: column 0, no offset
    known = top > 0
    low, high = np.quantile(top[known], [0.25, 0.75])
    assert clicked[known & (top >= high)].mean() > 1.5 * clicked[known & (top <= low)].mean()
    assert x.max() < FeatureTransform.load(tiny_features[1]).sizes["affinity"]


def test_per_query_cache_gives_the_vectorised_numbers(tiny_features):
    """The server's path (every target id's columns per query, cached, then gathered) equals the vectorised path
    preprocessing runs, row for row, on test requests of the tiny shop, with odd target ids (out of range: none)."""
    transform = FeatureTransform.load(tiny_features[1])
    split = load_split(tiny_features[0], "test")
    n = min(split.rows, 3000)
    q = np.asarray(split.column("query_tokens")[:n])
    request = np.asarray(split.column("request")[:n])
    first = np.concatenate([[0], np.flatnonzero(np.diff(request)) + 1])
    rr = np.repeat(np.arange(first.size), np.diff(np.concatenate([first, [n]])))
    targets = {"category": np.asarray(split.column("category")[:n]).copy(),
               "brand": np.asarray(split.column("brand")[:n]).copy()}
    targets["category"][:3] = [-1, 10**6, 0]
    vectorised = transform.affinity.inputs(q[first], targets, rr)
    cached = transform.query_affinity(q[first], targets, rr)
    np.testing.assert_array_equal(cached, vectorised)
    np.testing.assert_array_equal(transform.query_affinity(q[first], targets, rr), vectorised)  # from the cache
    one = rr == 0
    np.testing.assert_array_equal(transform.query_affinity(q[:1], {k: v[one] for k, v in targets.items()},
                                                           np.zeros(one.sum(), np.intp)), vectorised[one])
    assert (cached[:3, 0] == 0).all()
    stored = np.asarray(split.column(AFFINITY_INPUT)[3:n])  # what preprocessing wrote, where the ids are real
    np.testing.assert_array_equal(cached[3:], stored[:, :QUERY_AFFINITY_WIDTH])
    # Its history-match columns: the same function of the stored histories and candidates.
    history = transform.history_columns(np.asarray(split.column("history_categories")[3:n]),
                                        np.asarray(split.column("history_brands")[3:n]),
                                        {k: np.asarray(split.column(k)[3:n]) for k in ("category", "brand")})
    np.testing.assert_array_equal(history, stored[:, QUERY_AFFINITY_WIDTH:])
    assert (stored[:, QUERY_AFFINITY_WIDTH:] - np.arange(QUERY_AFFINITY_WIDTH, AFFINITY_WIDTH)
            * (transform.config.affinity_buckets + 1)).max() > 0  # some candidates match their history
