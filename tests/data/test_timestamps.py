"""Timestamps as shops log them: the reader, the loaders and validation on it, and sub-second order."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from shoprank.config import resolve_config
from shoprank.data.ingest import ingest
from shoprank.data.timestamps import read_timestamps
from shoprank.data.validation import validate_table
from shoprank.errors import DataValidationError, SourceError
from shoprank.features.preprocess import history_rows, preprocess
from shoprank.schema import EVENTS
from tests.conftest import NOW, quiet
from tests.support.samples import catalogue_table, write_event_log

T = 1_733_788_889  # 2024-12-10T00:01:29Z


@pytest.mark.parametrize("text, seconds, micros", [
    ("1733788889", T, 0),  # epoch seconds
    ("1733788889378", T, 378_000),  # milliseconds, told by their size
    ("1733788889378123", T, 378_123),  # microseconds
    ("1733788889378123456", T, 378_123),  # nanoseconds
    ("1733788889.378", T, 378_000),  # seconds with a fraction
    (" 1733788889 ", T, 0),
    ("2024-12-10T00:01:29Z", T, 0),
    ("2024-12-10T00:01:29.378Z", T, 378_000),  # the issue's value
    ("2024-12-10T02:01:29.378+02:00", T, 378_000),
    ("2024-12-09T19:01:29.378-05:00", T, 378_000),
    ("2024-12-10 00:01:29", T, 0),  # no zone: UTC
    ("2024-12-10T00:01:29.378123", T, 378_123),
    ("2024-12-10", T - 89, 0),
])
def test_one_value_of_each_form(text, seconds, micros):
    t = read_timestamps(pa.array([text]))
    assert (t.seconds[0], t.micros[0], t.present[0], t.wrong[0]) == (seconds, micros, True, False)


def test_a_mixed_column_is_read_value_by_value():
    values = ["1733788889", "1733788889378", "2024-12-10T00:01:29.378Z", "2024-12-10T02:01:29+02:00",
              "2024-12-10 00:01:29", "yesterday", "2024-13-45T00:00:00Z", "", "null", None]
    t = read_timestamps(pa.array(values))
    assert t.seconds[:5].tolist() == [T] * 5
    assert t.micros[:5].tolist() == [0, 378_000, 378_000, 0, 0]
    assert t.present.tolist() == [True] * 5 + [False] * 5
    assert t.wrong.tolist() == [False] * 5 + [True, True] + [False] * 3  # blanks are missing, not wrong
    binary = read_timestamps(pa.array([b"1733788889", b"\xff\xfe", None]))
    assert binary.present.tolist() == [True, False, False] and binary.wrong.tolist() == [False, True, False]


def test_units_numbers_and_arrow_types():
    ints = pa.array([1_733_788_889_378, 1_733_788_889], pa.int64())
    assert read_timestamps(ints).seconds.tolist() == [T, T]  # auto: each by its size
    assert read_timestamps(ints, "ms").seconds.tolist() == [T, T // 1000]  # told: every number in ms
    floats = read_timestamps(pa.array([1_733_788_889.378, np.nan, np.inf]))
    assert floats.micros[0] == 378_000 and floats.present.tolist() == [True, False, False]
    assert floats.wrong.tolist() == [False, False, True]
    for unit, raw in (("s", T), ("ms", T * 1000 + 378), ("us", T * 1_000_000 + 378_000),
                      ("ns", T * 1_000_000_000 + 378_000_000)):
        for tz in (None, "UTC", "Europe/Berlin"):  # zoned timestamps are stored as UTC
            t = read_timestamps(pa.array([raw], pa.timestamp(unit, tz)))
            assert (t.seconds[0], t.micros[0]) == (T, 0 if unit == "s" else 378_000), (unit, tz)
    assert read_timestamps(pa.array([20_067], pa.date32())).seconds[0] == 20_067 * 86_400
    with pytest.raises(SourceError, match="timestamp_unit"):
        read_timestamps(ints, "minutes")


def _events_csv(path: Path, stamps: list[str], users: list[str] | None = None) -> None:
    n = len(stamps)
    pacsv.write_csv(pa.table({
        "timestamp": pa.array(stamps, pa.string()),
        "user_id": pa.array(users or [f"u{i % 7}" for i in range(n)]),
        "event": pa.array(["view", "click", "cart", "purchase"] * (n // 4) + ["view"] * (n % 4)),
        "item_id": pa.array([f"i{i % 11}" for i in range(n)])}), path)


def test_the_issue_events_csv_of_iso_times_is_read(tmp_path):
    """An all-ISO timestamp column in an events CSV (refused before as 'not int64') lands as epoch seconds
    plus the milliseconds as microseconds."""
    src = tmp_path / "src"
    src.mkdir()
    stamps = [f"2024-12-10T00:{m:02d}:{s:02d}.{ms:03d}Z" for m in range(10) for s in range(0, 60, 5)
              for ms in (378, 912)]
    _events_csv(src / "events.csv", stamps)
    ingest(f"events:{src}", tmp_path / "raw", resolve_config("tiny"))
    ev = pq.read_table(tmp_path / "raw" / "events.parquet")
    assert ev.num_rows == len(stamps) and ev["_defect"].null_count == len(stamps)
    assert ev["timestamp"][0].as_py() == T - 89 and ev["subsecond_us"][0].as_py() == 378_000
    assert ev["subsecond_us"][1].as_py() == 912_000


def test_mixed_timestamps_are_read_value_by_value_and_the_unreadable_quarantined(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    forms = ["1733788889", "1733788889378", "2024-12-10T00:01:29.378Z", "2024-12-10T02:01:29+02:00"]
    stamps = [forms[i % 4] for i in range(400)]
    stamps[5] = "yesterday"
    _events_csv(src / "events.csv", stamps, [f"u{i}" for i in range(400)])
    ingest(f"events:{src}", tmp_path / "raw", resolve_config("tiny"))
    ev = pq.read_table(tmp_path / "raw" / "events.parquet")
    ts = ev["timestamp"].to_pylist()
    assert ts[5] is None and ev["_defect"][5].as_py() == "wrong type in timestamp"
    assert {t for i, t in enumerate(ts) if i != 5} == {T}
    # Mostly unreadable: the file is refused with the column named, not quarantined row by row.
    bad = tmp_path / "bad"
    bad.mkdir()
    _events_csv(bad / "events.csv", ["yesterday"] * 200)
    with pytest.raises(DataValidationError, match=r"column 'timestamp' mixes types: 200 of 200 values are not "
                                                  r"times \(epoch s/ms or ISO 8601\) \(e.g. 'yesterday'"):
        ingest(f"events:{bad}", tmp_path / "raw2", resolve_config("tiny"))


def test_a_timestamp_unit_can_be_set(tmp_path):
    src = tmp_path / "src"
    write_event_log(src, 2_000, n_items=60, file_format="csv", layout="retailrocket")  # milliseconds
    ingest(f"events:{src}?preset=retailrocket&timestamp_unit=auto", tmp_path / "auto", resolve_config("tiny"))
    ingest(f"events:{src}?preset=retailrocket", tmp_path / "ms", resolve_config("tiny"))
    a, b = (pq.read_table(tmp_path / d / "events.parquet") for d in ("auto", "ms"))
    assert a["timestamp"].equals(b["timestamp"]) and a["subsecond_us"].equals(b["subsecond_us"])
    assert pa.compute.max(a["subsecond_us"]).as_py() > 0  # the milliseconds are kept
    with pytest.raises(SourceError, match="timestamp_unit='minutes'"):
        ingest(f"events:{src}?timestamp_unit=minutes", tmp_path / "x", resolve_config("tiny"))


def test_tables_with_iso_text_parquet_timestamps_and_csv(tmp_path, tiny_raw):
    """A directory of the shoprank tables: parquet copied as it is with its timestamps as text, a parquet
    timestamp type, or milliseconds; CSV tables converted. The features equal those of epoch seconds."""
    config = resolve_config("tiny")
    cat = pq.read_table(tiny_raw / "catalogue.parquet")
    ev = pq.read_table(tiny_raw / "events.parquet").drop_columns(["subsecond_us"])
    imp = pq.read_table(tiny_raw / "impressions.parquet").drop_columns(["subsecond_us"])
    # The generator plants timestamps outside the window (0 and 50 years on): drop them, as ISO text and
    # parquet types would spell them differently, then compare the features of the remaining rows.
    window = (config.validation.min_timestamp, NOW)

    def keep(t: pa.Table) -> pa.Table:
        ts = t["timestamp"].fill_null(0).to_numpy()
        return t.filter(pa.array((ts >= window[0]) & (ts <= window[1])))

    ev, imp = keep(ev), keep(imp)
    secs = tmp_path / "secs"
    secs.mkdir()
    for name, t in (("catalogue", cat), ("events", ev), ("impressions", imp)):
        pq.write_table(t, secs / f"{name}.parquet")
    iso = tmp_path / "iso"
    iso.mkdir()
    pq.write_table(cat, iso / "catalogue.parquet")
    as_text = pa.compute.strftime(ev["timestamp"].cast(pa.timestamp("s", "UTC")), "%Y-%m-%dT%H:%M:%SZ")
    pq.write_table(ev.set_column(ev.schema.get_field_index("timestamp"), "timestamp", as_text),
                   iso / "events.parquet")
    as_ms = imp["timestamp"].cast(pa.timestamp("s")).cast(pa.timestamp("ms"))
    pq.write_table(imp.set_column(imp.schema.get_field_index("timestamp"), "timestamp", as_ms),
                   iso / "impressions.parquet")
    csv = tmp_path / "csv"
    csv.mkdir()
    pacsv.write_csv(cat, csv / "catalogue.csv")
    ms = pa.compute.multiply(ev["timestamp"], 1000)
    pacsv.write_csv(ev.set_column(ev.schema.get_field_index("timestamp"), "timestamp", ms), csv / "events.csv")
    pacsv.write_csv(imp.set_column(imp.schema.get_field_index("timestamp"), "timestamp", as_text_of(imp)),
                    csv / "impressions.csv")
    outputs = {}
    for name in ("secs", "iso", "csv"):
        raw = tmp_path / f"raw-{name}"
        ingest(str(tmp_path / name), raw, config)
        preprocess(raw, tmp_path / f"f-{name}", tmp_path / f"t-{name}", config, progress=quiet, now=NOW)
        outputs[name] = {p.relative_to(tmp_path / f"f-{name}"): p.read_bytes()
                         for p in sorted((tmp_path / f"f-{name}").rglob("*.npy"))}
    assert json.loads((tmp_path / "raw-csv" / "source.json").read_text())["timestamp_unit"] == "s"
    assert outputs["secs"] and outputs["iso"] == outputs["secs"] and outputs["csv"] == outputs["secs"]


def as_text_of(t: pa.Table) -> pa.Array:
    return pa.compute.strftime(t["timestamp"].cast(pa.timestamp("s", "UTC")), "%Y-%m-%d %H:%M:%S+00:00")


def _events(rows: list[tuple]) -> "pa.Table":
    return pa.table({"timestamp": pa.array([r[0] for r in rows], pa.string()),
                     "user_id": [r[1] for r in rows], "event": [r[2] for r in rows],
                     "item_id": [r[3] for r in rows]})


def test_events_of_one_second_are_duplicates_only_when_their_logged_times_agree():
    config = resolve_config("tiny").validation
    df = _events([("2024-12-10T00:01:29.100Z", "u1", "click", "i1"),
                  ("2024-12-10T00:01:29.900Z", "u1", "click", "i1"),  # same second, another click
                  ("2024-12-10T00:01:29.900Z", "u1", "click", "i1"),  # sent twice
                  ("1733788889", "u1", "click", "i1"),  # whole seconds: .000
                  ("1733788889", "u1", "click", "i1")]).to_pandas()
    clean, quarantine, report = validate_table(df, EVENTS, config.model_copy(update={"max_bad_share": 0.5}))
    assert len(clean) == 3 and quarantine["row"].tolist() == [2, 4]
    assert set(quarantine["reason"]) == {"duplicate of an earlier row"}
    assert clean["subsecond_us"].tolist() == [100_000, 900_000, 0]


def test_histories_keep_sub_second_order():
    """Events of one second logged out of order are ordered by their milliseconds, and a request at .500
    sees the events of its own second that came before it (strictly before, to the microsecond)."""
    ev_user = np.array([0, 0, 0, 0])
    ev_ts = np.array([T, T, T, T - 10])
    ev_sub = np.array([900_000, 100_000, 400_000, 0])
    ev_item = np.array([9, 1, 4, 7])
    rows, used = history_rows(ev_user, ev_ts, ev_item, np.array([0, 0]), np.array([T, T + 1]), 4, ev_sub,
                              np.array([500_000, 0]))
    assert rows.tolist() == [[-1, 7, 1, 4], [7, 1, 4, 9]] and used.tolist() == [3, 4]
    # Whole seconds (no sub-second part): the same as before, ties in time keep the logged order.
    rows, _ = history_rows(ev_user, ev_ts, ev_item, np.array([0]), np.array([T + 1]), 4)
    assert rows.tolist() == [[7, 9, 1, 4]]


def test_preprocess_orders_same_second_events_by_their_milliseconds(tmp_path):
    """An event log whose clicks in one second are written out of order: the next-interaction histories
    follow the logged times, and no event of that second is taken for a duplicate."""
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(catalogue_table_small(), src / "catalogue.parquet")
    rows = []
    for u in range(40):
        base = 1_767_300_000 + u * 1000
        for k, ms in enumerate((700, 200, 500)):  # logged out of order within the second
            rows.append((f"{base + 5}.{ms:03d}", f"u{u}", "click", f"i{(u + k) % 30:07d}"))
        rows.append((f"{base + 9}", f"u{u}", "purchase", f"i{(u + 5) % 30:07d}"))
    pq.write_table(_events(rows), src / "events.parquet")
    config = resolve_config("tiny")
    ingest(f"events:{src}", tmp_path / "raw", config)
    report = preprocess(tmp_path / "raw", tmp_path / "f", tmp_path / "t", config, progress=quiet, now=NOW)
    assert report["validation"]["events"]["quarantined"] == 0
    golden = json.loads((tmp_path / "f" / "golden_requests.json").read_text())
    purchases = [g for g in golden if len(g["history"]) == 3]
    assert purchases
    for g in purchases:  # the history of a purchase: the clicks at .200, .500, .700
        u = int(g["user_id"][1:])
        assert g["history"] == [f"i{(u + k) % 30:07d}" for k in (1, 2, 0)]


def catalogue_table_small() -> pa.Table:
    from tests.support.samples import _shop

    return catalogue_table(_shop(30, 5))
