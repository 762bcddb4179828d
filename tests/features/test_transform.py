import numpy as np

from shoprank.config import FeatureConfig
from shoprank.features.transform import INPUTS, Catalogue, FeatureTransform, Vocabulary

FC = FeatureConfig(query_len=4, title_len=5, history_len=3, oov_buckets=4, min_token_count=1, price_buckets=4)


def _catalogue():
    return Catalogue(["a", "b", "c"], ["red shoe nike", "blue shoe", "green hat"], ["wear/shoes", "wear/shoes",
                     "wear/hats"], ["nike", "puma", "kangol"], np.array([10.0, 20.0, 30.0]))


def _transform():
    cat = _catalogue()
    return FeatureTransform.fit(["red shoe", "hat"], cat.title, cat.item_id, cat.category, cat.brand, cat.price, FC)


def test_vocabulary_layout_pad_oov_known():
    v = Vocabulary(["x", "y"], oov_buckets=3)
    assert v.lookup("") == 0 and v.lookup(None) == 0
    assert v.lookup("x") == 4 and v.lookup("y") == 5 and v.size == 6
    oov = v.lookup("never seen")
    assert 1 <= oov <= 3 and oov == v.lookup("never seen")  # stable across calls and processes (crc32)


def test_transform_shapes_and_request_fanout():
    t, cat = _transform(), _catalogue()
    batch, unknown = cat.batch(["red shoe", ""], [["a"], []], [["a", "b", "zz"], ["c"]])
    out = t.transform(batch)
    assert set(out) == set(INPUTS)
    assert out["query_tokens"].shape == (4, 4) and out["title_tokens"].shape == (4, 5)
    assert out["history_items"].shape == (4, 3) and all(v.dtype == np.int32 for v in out.values())
    assert (out["query_tokens"][:3] == out["query_tokens"][0]).all() and (out["query_tokens"][3] == 0).all()
    assert list(unknown) == [False, False, True, False]
    # History is right-aligned (most recent last) and padded with 0.
    assert out["history_items"][0, -1] == t.vocabs["item"].lookup("a") and out["history_items"][0, 0] == 0
    assert out["history_categories"][0, -1] == t.vocabs["category"].lookup("wear/shoes")
    # The unknown candidate gets OOV/missing codes, not a crash.
    assert out["title_tokens"][2].sum() == 0 and out["price_bucket"][2] == 0 and 1 <= out["item_id"][2] <= 4


def test_save_load_round_trip_gives_identical_tensors(tmp_path):
    t, cat = _transform(), _catalogue()
    t.save(tmp_path)
    cat.save(tmp_path / "catalogue.parquet")
    t2, cat2 = FeatureTransform.load(tmp_path), Catalogue.load(tmp_path / "catalogue.parquet")
    args = (["blue hat nike"], [["b", "c", "a", "b"]], [["a", "b", "c", "q"]])
    a, b = t.transform(cat.batch(*args)[0]), t2.transform(cat2.batch(*args)[0])
    for k in INPUTS:
        np.testing.assert_array_equal(a[k], b[k])


def test_price_buckets_are_monotone():
    t = _transform()
    b = t.price_bucket(np.array([0.0, 10.0, 15.0, 25.0, 1e6, np.nan, -1.0]))
    assert list(b[:5]) == sorted(b[:5]) and b[5] == 0 and b[6] == 0 and b[4] == len(t.price_edges) + 1


def _stats_transform():
    ids = [f"i{k}" for k in range(8)]
    cats = ["shoes"] * 4 + ["hats"] * 4
    prices = np.array([10.0, 20.0, 30.0, 40.0, 100.0, 200.0, 300.0, 400.0])
    fc = FeatureConfig(query_len=2, title_len=2, history_len=2, oov_buckets=2, min_token_count=1, price_buckets=4,
                       popularity_buckets=4, category_price_buckets=2)
    counts = np.array([1, 10, 100, 1000, 0, 1, 1, 1])
    return FeatureTransform.fit([], [""] * 8, ids, cats, ["b"] * 8, prices, fc, item_counts=counts), ids, cats


def test_item_popularity_follows_training_counts_and_unknown_items_get_none():
    t, ids, cats = _stats_transform()
    batch = Catalogue(ids, [""] * 8, cats, ["b"] * 8, np.arange(8.0)).batch([""], [[]], [[*ids, "new"]])[0]
    pop = t.transform(batch)["item_popularity"]
    assert list(pop[:4]) == sorted(pop[:4]) and pop[3] > pop[0] > 0
    assert pop[4] == 0  # never seen in the training period: not in the vocabulary either
    assert pop[8] == 0  # unknown id (an OOV bucket)
    assert pop.max() < t.sizes["popularity"]


def test_category_price_is_the_price_among_the_category_s_items():
    """A 40 pair of shoes is the dear end of shoes, a 100 hat the cheap end of hats, although the hat costs more:
    what the global price bucket cannot say."""
    t, _, _ = _stats_transform()
    cat = t.vocabs["category"]
    c = np.array([cat.lookup("shoes"), cat.lookup("hats"), cat.lookup("shoes"), cat.lookup("hats"), 0])
    b = t.category_price(c, np.array([40.0, 100.0, np.nan, 350.0, 10.0]))
    assert b.tolist() == [2, 1, 0, 2, 0]
    assert t.price_bucket(np.array([40.0]))[0] < t.price_bucket(np.array([100.0]))[0]
