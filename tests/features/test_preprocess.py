import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from shoprank.features.dataset import SPLITS, load_split
from shoprank.features.preprocess import build_histories
from shoprank.features.transform import INPUTS, FeatureTransform


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
    features, transform_dir, report = tiny_features
    t = FeatureTransform.load(transform_dir)
    t1 = report["split_times"][0]
    imps = pq.read_table(tiny_raw / "impressions.parquet").to_pandas()
    events = pq.read_table(tiny_raw / "events.parquet").to_pandas()
    cat = pq.read_table(tiny_raw / "catalogue.parquet").to_pandas().drop_duplicates("item_id")
    past = imps[imps["timestamp"] < t1]
    past_items = set(past["item_id"]) | set(events.loc[events["timestamp"] < t1, "item_id"])
    allowed = {tok for q in past["query"].dropna() for tok in q.split()}
    allowed |= {tok for title in cat.loc[cat["item_id"].isin(past_items), "title"] for tok in title.split()}
    assert set(t.vocabs["token"].values) <= allowed
    assert set(t.vocabs["item"].values) <= past_items
    later_only = set(imps.loc[imps["timestamp"] >= report["split_times"][1], "item_id"]) - past_items
    assert not any(t.vocabs["item"].known(i) for i in later_only)


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
