import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from shoprank.features.dataset import SPLITS, load_split
from shoprank.features.preprocess import preprocess
from shoprank.features.transform import INPUTS, FeatureTransform
from tests.conftest import NOW, quiet
from tests.support.reference_preprocess import build_histories

VOCABULARIES = ("token", "item", "category", "brand")


def test_histories_use_only_strictly_earlier_interest_events():
    events = pd.DataFrame({
        "user_id": ["u", "u", "u", "u", "v"],
        "timestamp": [10, 20, 30, 40, 5],
        "event": ["click", "view", "cart", "click", "click"],
        "item_id": ["a", "b", "c", "d", "e"],
    })
    items, used = build_histories(events, np.array(["u", "u", "v", "w"], dtype=object),
                                  np.array([30, 41, 5, 100]), length=2)
    assert items.tolist() == [["", "a"], ["c", "d"], ["", ""], ["", ""]]  # t=30 excludes the cart at 30
    assert used.tolist() == [1, 2, 0, 0]


def test_split_is_by_time_without_leakage(tiny_features, tiny_raw):
    features, _, report = tiny_features
    t1, t2 = report["split_times"]
    imps = pq.read_table(tiny_raw / "impressions.parquet").to_pandas()
    ts_by_request = imps.groupby("request_id")["timestamp"].median()  # robust to the injected bad rows
    for split, lo, hi in (("train", None, t1), ("validation", t1, t2), ("test", t2, None)):
        rows = pd.read_parquet(features / split / "rows.parquet")
        ts = ts_by_request.loc[rows["request_id"].unique()]
        assert lo is None or (ts >= lo).all(), split
        assert hi is None or (ts < hi).all(), split


def test_vocabularies_come_from_the_training_period_only(tiny_features, tiny_raw):
    _, transform_dir, report = tiny_features
    t = FeatureTransform.load(transform_dir)
    t1 = report["split_times"][0]
    imps = pq.read_table(tiny_raw / "impressions.parquet").to_pandas()
    events = pq.read_table(tiny_raw / "events.parquet").to_pandas()
    cat = pq.read_table(tiny_raw / "catalogue.parquet").to_pandas().drop_duplicates("item_id")
    past = imps[imps["timestamp"] < t1]
    past_items = set(past["item_id"]) | set(events.loc[events["timestamp"] < t1, "item_id"])
    past_cat = cat[cat["item_id"].isin(past_items)]
    allowed = {tok for q in past["query"].dropna() for tok in q.split()}
    allowed |= {tok for title in past_cat["title"] for tok in title.split()}
    tokens, items = set(t.vocabs["token"].values), set(t.vocabs["item"].values)
    # Sizes first: each subset check below would hold for an empty vocabulary. The tiny preset keeps every
    # token (min_token_count 1) and every item (max_items is far above its 600).
    assert report["vocabulary_sizes"] == t.sizes
    assert len(tokens) >= 0.9 * len(allowed) > 100
    assert len(items) >= 0.9 * len(past_cat) > 100
    assert len(t.vocabs["category"].values) >= 0.9 * past_cat["category"].nunique() > 10
    assert len(t.vocabs["brand"].values) >= 0.9 * past_cat["brand"].nunique() > 10
    assert tokens <= allowed
    assert items <= past_items
    assert set(t.vocabs["category"].values) <= set(past_cat["category"])
    assert set(t.vocabs["brand"].values) <= set(past_cat["brand"])


def test_items_seen_only_after_training_change_no_vocabulary(tmp_path, tiny_features, tiny_raw, tiny_config):
    """New items (new title words, category and brand) shown only in test-period requests: the tiny shop
    shows every item before t1, so this is where "later items are unknown" is checked on items that exist."""
    features, transform_dir, report = tiny_features
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(tiny_raw / "events.parquet", raw)
    cat = pq.read_table(tiny_raw / "catalogue.parquet")
    imps = pq.read_table(tiny_raw / "impressions.parquet")
    late = [f"late{i}" for i in range(5)]
    late_cat = pa.table({"item_id": late, "title": [f"zzword{i} zzcommon" for i in range(5)],
                         "category": ["zztop/zzleaf"] * 5, "brand": ["zzbrand"] * 5, "price": [10.0] * 5},
                        schema=cat.schema)
    pq.write_table(pa.concat_tables([cat, late_cat]), raw / "catalogue.parquet")
    df = imps.to_pandas()
    clean_test = pd.read_parquet(features / "test" / "rows.parquet").drop_duplicates("request_id").head(len(late))
    rows = df.merge(clean_test, on=["request_id", "item_id"]).drop_duplicates("request_id")  # clean test rows
    rows["item_id"] = late
    rows["position"] = df.groupby("request_id")["position"].max().loc[rows["request_id"]].to_numpy() + 1
    added = pa.Table.from_pandas(rows, schema=imps.schema, preserve_index=False)
    pq.write_table(pa.concat_tables([imps, added]), raw / "impressions.parquet")

    got = preprocess(raw, tmp_path / "f", tmp_path / "t", tiny_config, progress=quiet, now=NOW)
    assert got["split_times"] == report["split_times"]  # same requests, same times: same split
    test_rows = pd.read_parquet(tmp_path / "f" / "test" / "rows.parquet")
    assert set(late) <= set(test_rows["item_id"])  # the late rows were kept, in the test split
    before, after = FeatureTransform.load(transform_dir), FeatureTransform.load(tmp_path / "t")
    for name in VOCABULARIES:
        assert len(after.vocabs[name].values) > 10, name  # an empty vocabulary would know nothing either
        assert after.vocabs[name].values == before.vocabs[name].values, name
    assert not any(after.vocabs["item"].known(i) for i in late)
    assert not any(after.vocabs["token"].known(w) for w in ("zzcommon", "zzword0"))
    assert not after.vocabs["category"].known("zztop/zzleaf") and not after.vocabs["brand"].known("zzbrand")
    item_codes = np.load(tmp_path / "f" / "test" / "item_id.npy")[test_rows["item_id"].isin(late).to_numpy()]
    assert len(item_codes) == len(late) and (item_codes >= 1).all()
    assert (item_codes <= after.vocabs["item"].oov_buckets).all()  # hashed out-of-vocabulary buckets


def test_every_split_is_written_with_contiguous_requests(tiny_features):
    features, _, report = tiny_features
    for split in SPLITS:
        data = load_split(features, split)
        assert data.rows == report["splits"][split]["rows"] > 0
        req = np.asarray(data.column("request"))
        assert (np.diff(req) >= 0).all()  # rows of one request are contiguous
        f = data.features(slice(0, 5))
        assert set(f) == set(INPUTS) and all(v.shape[0] == 5 for v in f.values())
    assert report["quarantined_rows"] > 0
    q = pd.read_parquet(features / "quarantine.parquet")
    assert len(q) == report["quarantined_rows"] and q["reason"].notna().all()
    golden = json.loads((features / "golden_requests.json").read_text())
    assert golden and all(g["candidates"] for g in golden)
