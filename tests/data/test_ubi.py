"""OpenSearch User Behavior Insights exports as a source (`ubi:/dir`), on the sample writer's export."""

import gzip
import json
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from shoprank.config import resolve_config
from shoprank.data.ingest import ingest
from shoprank.data.sources import parse_source
from shoprank.errors import SourceError
from shoprank.features.preprocess import preprocess
from tests.conftest import NOW, quiet
from tests.support.samples import UBI_FORMATS, write_ubi

TABLES = ("catalogue", "events", "impressions")


@pytest.fixture(scope="module")
def ubi(tmp_path_factory) -> dict:
    """The sample in every export format, each ingested."""
    base = tmp_path_factory.mktemp("ubi")
    out = {}
    for fmt in UBI_FORMATS:
        planted = write_ubi(base / fmt, file_format=fmt)
        info = ingest(f"ubi:{base / fmt}", base / f"raw-{fmt}", resolve_config("tiny"))
        out[fmt] = {"dir": base / fmt, "raw": base / f"raw-{fmt}", "planted": planted, "info": info,
                    "source": json.loads((base / f"raw-{fmt}" / "source.json").read_text())}
    return out


def _read(raw, name: str) -> pa.Table:
    return pq.read_table(raw / f"{name}.parquet")


def test_source_syntax_and_options():
    spec = parse_source("ubi:/data/ubi?user=client_id&position_base=0")
    assert (spec.format, spec.location, spec.options) == ("ubi", "/data/ubi", {"user": "client_id",
                                                                               "position_base": "0"})


def test_bulk_plain_lines_and_one_combined_file_give_the_same_tables(ubi):
    for fmt in ("jsonl", "combined"):
        for name in TABLES:
            assert _read(ubi[fmt]["raw"], name).equals(_read(ubi["bulk"]["raw"], name)), (fmt, name)
    assert ubi["bulk"]["source"]["ubi"]["bulk_action_lines"] == ubi["bulk"]["planted"]["queries"] + \
        ubi["bulk"]["planted"]["events"]
    assert ubi["jsonl"]["source"]["ubi"]["bulk_action_lines"] == 0


def test_parquet_with_nested_structs_and_a_timestamp_type(ubi):
    """The parquet export holds the nested fields as structs and the time as timestamp[ms]; where the JSON
    had an unreadable timestamp the parquet column has a null, and the request takes its events' time."""
    for name in ("catalogue", "events"):
        assert _read(ubi["parquet"]["raw"], name).equals(_read(ubi["bulk"]["raw"], name)), name
    a, b = _read(ubi["parquet"]["raw"], "impressions"), _read(ubi["bulk"]["raw"], "impressions")
    assert a.num_rows == b.num_rows
    for col in ("request_id", "item_id", "position", "clicked", "carted", "purchased", "user_id", "query"):
        assert a[col].equals(b[col]), col
    assert b["_defect"].null_count == b.num_rows - 20 and a["_defect"].null_count == a.num_rows


def test_the_report_counts_what_was_read_and_kept_out(ubi):
    planted, rep = ubi["bulk"]["planted"], ubi["bulk"]["source"]["ubi"]
    assert rep["documents"] == {"ubi_queries": planted["queries"], "ubi_events": planted["events"]}
    assert sum(rep["unknown_actions"].values()) >= planted["unknown_action_events"]  # + their duplicates
    assert set(rep["unknown_actions"]) == {"on_search", "product_hover", "brand_filter"}
    assert set(rep["actions"]) == {"impression", "click", "click_through", "add_to_cart", "purchase"}
    assert rep["queries_without_a_list"] == planted["queries_without_events"]
    assert rep["lists_from_hit_ids"] == planted["queries_without_events_with_hits"]
    assert rep["events_without_query"] >= planted["events_without_query"]
    assert rep["requests"] == planted["queries"] - planted["queries_without_events"]
    assert rep["position_base"] == 1  # ordinals start at 1 in the sample
    assert rep["impression_rows"] == _read(ubi["bulk"]["raw"], "impressions").num_rows


def test_impressions_join_clicks_carts_and_purchases_by_query_and_object(ubi):
    events = [json.loads(line) for line in (ubi["jsonl"]["dir"] / "ubi_events.jsonl").read_text().splitlines()]
    imp = _read(ubi["jsonl"]["raw"], "impressions").to_pylist()
    rows = {(r["request_id"], r["item_id"]): r for r in imp}
    level = {"click": 1, "click_through": 1, "add_to_cart": 2, "purchase": 3}
    best: dict = {}
    for e in events:
        if e.get("query_id") and e["action_name"] in level:
            key = (e["query_id"], e["event_attributes"]["object"]["object_id"])
            best[key] = max(best.get(key, 0), level[e["action_name"]])
    assert best and all(rows[k]["clicked"] == 1 and rows[k]["carted"] == int(v >= 2)
                        and rows[k]["purchased"] == int(v >= 3) for k, v in best.items())
    assert sum(r["clicked"] for r in imp) == len(best)
    shown = [e for e in events if e["action_name"] == "impression"]
    one = shown[0]
    row = rows[(one["query_id"], one["event_attributes"]["object"]["object_id"])]
    assert row["position"] == one["event_attributes"]["position"]["ordinal"] - 1  # 0 = top
    # A query without events but with the response's hit ids: its hits, in order, all unclicked.
    queries = [json.loads(line) for line in (ubi["jsonl"]["dir"] / "ubi_queries.jsonl").read_text().splitlines()]
    with_events = {e.get("query_id") for e in events}
    q = next(q for q in queries if q["query_id"] not in with_events and q.get("query_response_hit_ids"))
    mine = sorted((r for r in imp if r["request_id"] == q["query_id"]), key=lambda r: r["position"])
    assert [r["item_id"] for r in mine] == q["query_response_hit_ids"]
    assert [r["position"] for r in mine] == list(range(len(mine))) and not any(r["clicked"] for r in mine)
    assert {r["query"] for r in mine} == {q["user_query"]}


def test_catalogue_and_histories(ubi):
    cat = _read(ubi["bulk"]["raw"], "catalogue")
    assert pc.count(cat["title"]).as_py() == cat.num_rows  # every item seen was described once
    assert pc.min(cat["price"]).as_py() > 0 and "/" in cat["category"][0].as_py()
    ev = _read(ubi["bulk"]["raw"], "events")
    assert set(ev["event"].to_pylist()) == {"click", "cart", "purchase"}  # impressions are not behaviour
    assert pc.max(ev["subsecond_us"]).as_py() > 0
    users = set(ev["user_id"].to_pylist())
    assert any(u.startswith("c-") for u in users if u)  # no user_id: the client id stands in
    assert None in users  # neither: quarantined by validation below


def test_sample_preprocesses_with_its_defects_quarantined_by_reason(ubi, tmp_path):
    config = resolve_config("tiny")
    report = preprocess(ubi["bulk"]["raw"], tmp_path / "f", tmp_path / "t", config, progress=quiet, now=NOW)
    v = report["validation"]
    planted = ubi["bulk"]["planted"]
    assert report["task"] == "search" and report["split_mode"] == "time"
    assert v["impressions"]["reasons"]["wrong type in timestamp"] == 2 * 10  # two queries, 10 items each
    assert v["impressions"]["reasons"]["missing user_id"] == 10 * planted["missing_user_and_client"]
    assert v["events"]["reasons"]["duplicate of an earlier row"] > 0
    assert v["events"]["reasons"]["missing user_id"] > 0
    used = sum(s["requests"] for s in report["splits"].values())
    assert used == ubi["bulk"]["source"]["ubi"]["requests"] - 2 - planted["missing_user_and_client"]
    # The numbers the README quotes for this sample.
    assert (planted["queries"], planted["events"]) == (400, 4517)
    assert v["impressions"]["reasons"] == {"wrong type in timestamp": 20, "missing user_id": 10}
    assert v["events"]["reasons"] == {"duplicate of an earlier row": 5, "missing user_id": 1}
    assert (v["impressions"]["rows_ok"], v["events"]["rows_ok"], v["catalogue"]["rows_ok"]) == (3790, 672, 282)
    assert used == 379


def test_options_change_positions_users_and_actions(ubi, tmp_path):
    src = ubi["jsonl"]["dir"]
    config = resolve_config("tiny")
    ingest(f"ubi:{src}?position_base=0&user=client_id&actions=product_hover:view,brand_filter:ignore",
           tmp_path / "raw", config)
    info = json.loads((tmp_path / "raw" / "source.json").read_text())
    assert info["ubi"]["position_base"] == 0 and "product_hover" not in info["ubi"]["unknown_actions"]
    assert set(info["ubi"]["unknown_actions"]) == {"on_search"}
    imp = _read(tmp_path / "raw", "impressions")
    assert pc.min(imp["position"]).as_py() == 0 and pc.max(imp["position"]).as_py() >= 1  # hit ids stay 0-based
    base = _read(ubi["jsonl"]["raw"], "impressions")
    shown = pc.is_valid(base["position"])
    assert pc.sum(pc.equal(imp["position"], base["position"])).as_py() < pc.sum(shown).as_py()
    assert all(u is None or u.startswith("c-") for u in imp["user_id"].to_pylist())
    for bad in ("user=email", "position_base=2", "actions=hover", "actions=hover:like", "colour=red"):
        with pytest.raises(SourceError):
            ingest(f"ubi:{src}?{bad}", tmp_path / "x", config)


def test_unreadable_or_missing_exports_are_refused_with_the_file_named(tmp_path):
    config = resolve_config("tiny")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("nothing here")
    with pytest.raises(SourceError, match="no ubi_queries/ubi_events NDJSON or parquet files"):
        ingest(f"ubi:{tmp_path / 'empty'}", tmp_path / "raw", config)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "ubi_events.ndjson").write_text("this is not json\n{also not\n")
    with pytest.raises(SourceError, match="ubi_events.ndjson: 2 of 2 lines are not JSON documents"):
        ingest(f"ubi:{tmp_path / 'broken'}", tmp_path / "raw", config)
    (tmp_path / "loose").mkdir()
    pq.write_table(pa.table({"a": [1]}), tmp_path / "loose" / "export.parquet")
    with pytest.raises(SourceError, match="must be named after its index"):
        ingest(f"ubi:{tmp_path / 'loose'}", tmp_path / "raw", config)
    with pytest.raises(SourceError, match="does not exist"):
        ingest(f"ubi:{tmp_path / 'nowhere'}", tmp_path / "raw", config)


def test_gzip_search_hits_and_a_directory_of_parts(ubi, tmp_path):
    """Export tools write search hits ({"_index", "_id", "_source"}), gzip them, and split them in parts."""
    src = tmp_path / "src"
    (src / "ubi_events").mkdir(parents=True)
    lines = (ubi["jsonl"]["dir"] / "ubi_events.jsonl").read_text().splitlines()
    half = len(lines) // 2
    for k, part in enumerate((lines[:half], lines[half:])):
        hits = [json.dumps({"_index": "ubi_events", "_id": str(i), "_source": json.loads(x)})
                for i, x in enumerate(part)]
        (src / "ubi_events" / f"part-{k}.ndjson.gz").write_bytes(gzip.compress("\n".join(hits).encode()))
    shutil.copy(ubi["jsonl"]["dir"] / "ubi_queries.jsonl", src / "ubi_queries.jsonl")
    ingest(f"ubi:{src}", tmp_path / "raw", resolve_config("tiny"))
    for name in TABLES:
        assert _read(tmp_path / "raw", name).equals(_read(ubi["jsonl"]["raw"], name)), name
