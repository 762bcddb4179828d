import numpy as np
import pandas as pd
import pytest

from shoprank.config import ValidationConfig
from shoprank.data.validation import validate_table
from shoprank.errors import DataValidationError
from shoprank.schema import CATALOGUE, EVENTS, IMPRESSIONS

CFG = ValidationConfig(max_bad_share=0.9)
WINDOW = (1_000_000_000, 2_000_000_000)


def _events():
    return pd.DataFrame({
        "event_id": [1, 2, 3, 4, 5, 6, 7, 8],
        "timestamp": [1_500_000_000, 1_500_000_001, "yesterday", 1_500_000_003, 5, 1_500_000_005,
                      1_500_000_001, 1_500_000_007],
        "user_id": ["u1", "u1", "u1", None, "u2", "u2", "u1", "u3"],
        "session_id": ["s"] * 8,
        "event": ["click", "view", "click", "click", "click", "teleport", "view", "cart"],
        "item_id": ["a", "b", "a", "a", "a", "a", "b", "zzz"],
        "query": ["x", None, "", "", "", "", None, ""],
    })


def test_each_defect_is_quarantined_with_its_reason():
    clean, bad, report = validate_table(_events(), EVENTS, CFG, known_items={"a", "b"}, timestamp_range=WINDOW)
    reasons = dict(zip(bad["row"], bad["reason"]))
    assert reasons == {
        2: "wrong type in timestamp",
        3: "missing user_id",
        4: "timestamp out of range",
        5: "unknown event type",
        6: "duplicate of an earlier row",
        7: "unknown item_id",
    }
    assert list(clean["event_id"]) == [1, 2]
    # Nothing is dropped silently: every input row is either clean or quarantined with its record.
    assert len(clean) + len(bad) == report.rows_in == 8
    assert report.reasons["unknown item_id"] == 1
    assert '"zzz"' in bad.loc[bad["row"] == 7, "record"].iloc[0]
    assert clean["timestamp"].dtype == np.int64 and clean["query"].tolist() == ["x", ""]


def test_catalogue_rejects_negative_price_and_duplicate_ids():
    df = pd.DataFrame({"item_id": ["a", "b", "a", "c"], "title": ["t", "t", "t", "t"],
                       "category": ["x/y"] * 4, "brand": ["b"] * 4, "price": [1.0, -2.0, 3.0, float("nan")]})
    clean, bad, _ = validate_table(df, CATALOGUE, CFG)
    # Only item_id is required: an item without a price is kept (price bucket 0), not quarantined.
    assert list(clean["item_id"]) == ["a", "c"] and np.isnan(clean["price"].iloc[1])
    assert sorted(bad["reason"]) == ["duplicate of an earlier row", "negative price"]


def test_labels_and_positions_are_checked():
    df = pd.DataFrame({"request_id": ["r", "r", "r"], "timestamp": [1_500_000_000] * 3, "user_id": ["u"] * 3,
                       "session_id": ["s"] * 3, "query": ["q"] * 3, "item_id": ["a", "b", "c"],
                       "position": [0, -1, 2], "clicked": [1, 0, 2], "carted": [0, 0, 0], "purchased": [0, 0, 0],
                       "oracle": [0.1, 0.2, 0.3]})
    _, bad, _ = validate_table(df, IMPRESSIONS, CFG, known_items={"a", "b", "c"}, timestamp_range=WINDOW)
    assert sorted(bad["reason"]) == ["clicked not 0/1", "negative position"]


def test_too_many_bad_rows_fails_with_a_clear_message():
    with pytest.raises(DataValidationError, match=r"events: 6 of 8 rows are bad .*max_bad_share"):
        validate_table(_events(), EVENTS, ValidationConfig(max_bad_share=0.1), known_items={"a", "b"},
                       timestamp_range=WINDOW)


def test_missing_required_column_is_named():
    with pytest.raises(DataValidationError, match=r"\['item_id'\]"):
        validate_table(_events().drop(columns=["item_id"]), EVENTS, CFG)
