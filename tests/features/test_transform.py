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
