"""Real-data sources: ESCI and event logs (documented layout, Retailrocket, Taobao) in parquet and CSV,
the messages for bad inputs, and preprocess + train end to end on each task. Fixtures are written here."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from shoprank.config import resolve_config
from shoprank.data.ingest import ingest
from shoprank.data.sources import parse_source
from shoprank.errors import DataValidationError, SourceError
from shoprank.features.dataset import SPLITS, load_split
from shoprank.features.preprocess import preprocess
from tests.conftest import NOW, quiet
from tests.support.samples import write_esci, write_event_log

TINY = resolve_config("tiny")


def _land(source, tmp_path, config=TINY, name="raw"):
    out = tmp_path / name
    ingest(source, out, config)
    return out


def _pre(raw, tmp_path, config=TINY, name="pre"):
    base = tmp_path / name
    return base, preprocess(raw, base / "features", base / "transform", config, progress=quiet, now=NOW)


def _table(raw, name):
    return pq.read_table(raw / f"{name}.parquet").to_pandas()


def _events_csv(path, rows, header=("timestamp", "user_id", "event", "item_id")):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)] + [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


# --- syntax ------------------------------------------------------------------------------------------
def test_source_syntax():
    assert parse_source("synthetic").format == "synthetic"
    assert parse_source("/data/shop").format == "tables"
    assert parse_source("s3://bucket/shop").location == "s3://bucket/shop"
    spec = parse_source("events:gs://b/logs?preset=taobao&encoding=latin-1")
    assert (spec.format, spec.location, spec.options) == ("events", "gs://b/logs", {"preset": "taobao",
                                                                                    "encoding": "latin-1"})
    assert parse_source("esci:/d?locale=us").options == {"locale": "us"}
    with pytest.raises(SourceError, match="unknown format 'foo'"):
        parse_source("foo:/x")
    with pytest.raises(SourceError, match="no option"):
        ingest("events:/tmp?bogus=1", "/tmp/never", TINY)
    with pytest.raises(SourceError, match="mount the claim"):
        ingest("esci:pvc://claim/dir", "/tmp/never", TINY)


# --- ESCI ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def esci_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("esci")
    write_esci(base / "pq", 160, file_format="parquet")
    write_esci(base / "csv", 160, file_format="csv")
    return base


def test_esci_parquet_and_csv_give_the_same_tables(esci_dirs, tmp_path):
    a = _land(f"esci:{esci_dirs / 'pq'}", tmp_path, name="a")
    b = _land(f"esci:file://{esci_dirs / 'csv'}", tmp_path, name="b")  # a URI, read through pyarrow.fs
    for name in ("catalogue", "impressions"):
        pd.testing.assert_frame_equal(_table(a, name), _table(b, name), check_dtype=True)
    imp = _table(a, "impressions")
    src = pq.read_table(esci_dirs / "pq" / "shopping_queries_dataset_examples.parquet").to_pandas()
    assert imp["relevance"].tolist() == src["esci_label"].map({"E": 3, "S": 2, "C": 1, "I": 0}).tolist()
    assert imp["clicked"].tolist() == (src["esci_label"] == "E").astype(int).tolist()
    assert imp["split"].tolist() == src["split"].tolist() and imp["timestamp"].isna().all()
    info = json.loads((a / "source.json").read_text())
    assert "timestamp" in info["absent"]["impressions"] and info["item_ids"] == "product_id"
    cat = _table(a, "catalogue")
    assert cat["price"].isna().all() and cat["category"].isna().all() and cat["title"].notna().all()


def test_esci_label_setting_and_locales(tmp_path):
    write_esci(tmp_path / "multi", 20, locales=("us", "es"))
    raw = _land(f"esci:{tmp_path / 'multi'}", tmp_path, resolve_config("tiny", {"sources": {
        "esci_positive_labels": "ES"}}))
    imp = _table(raw, "impressions")
    assert set(imp.loc[imp["clicked"] == 1, "relevance"]) == {2, 3}
    assert imp["item_id"].str.match(r"^(us|es):B").all()  # ids repeat across locales: prefixed
    one = _land(f"esci:{tmp_path / 'multi'}?locale=es", tmp_path, name="es")
    imp_es = _table(one, "impressions")
    assert len(imp_es) == (imp["item_id"].str.startswith("es:")).sum() and imp_es["item_id"].str.match("^B").all()


def test_esci_preprocess_and_training_without_users_or_timestamps(esci_dirs, tmp_path):
    from shoprank.evaluation.evaluate import evaluate_model
    from shoprank.modeling.train import train

    raw = _land(f"esci:{esci_dirs / 'pq'}", tmp_path)
    base, report = _pre(raw, tmp_path)
    assert report["task"] == "search" and report["split_mode"] == "column" and report["split_times"] is None
    src = pq.read_table(esci_dirs / "pq" / "shopping_queries_dataset_examples.parquet").to_pandas()
    test_rows = pd.read_parquet(base / "features" / "test" / "rows.parquet")
    assert set(test_rows["request_id"]) == set(src.loc[src["split"] == "test", "query_id"].astype(str))
    for split in SPLITS:
        meta = load_split(base / "features", split).meta
        assert meta["rows"] > 0 and meta["empty_history_share"] == 1.0
    test = load_split(base / "features", "test")
    assert set(np.unique(test.column("gain"))) <= {0, 1, 2, 3} and not np.isfinite(test.column("oracle")).any()
    assert (np.asarray(test.column("history_items")) == 0).all()
    config = resolve_config("tiny", {"train": {"epochs": 1}})
    train(base / "features", base / "transform", tmp_path / "model", config, progress=quiet)
    result = evaluate_model(tmp_path / "model" / "saved_model", base / "features", tmp_path / "eval", config,
                            progress=quiet)
    m = result["metrics"]
    assert "oracle" not in m and 0 <= m["ndcg_at_10"] <= 1 and np.isfinite(m["auc"])
    assert "<td>-</td>" in (tmp_path / "eval" / "report.html").read_text()  # the oracle column shows '-'


def test_esci_unknown_labels_are_quarantined_with_their_reason(tmp_path):
    write_esci(tmp_path / "d", 60, file_format="csv")
    path = tmp_path / "d" / "shopping_queries_dataset_examples.csv"
    df = pd.read_csv(path)
    df.loc[3, "esci_label"] = "X"
    df.to_csv(path, index=False)
    raw = _land(f"esci:{tmp_path / 'd'}", tmp_path, resolve_config("tiny", {"validation": {"max_bad_share": 0.05}}))
    base, report = _pre(raw, tmp_path, resolve_config("tiny", {"validation": {"max_bad_share": 0.05}}))
    q = pd.read_parquet(base / "features" / "quarantine.parquet")
    assert q[["table", "row", "reason"]].values.tolist() == [["impressions", 3, "unknown esci_label"]]
    assert '"esci_label": "X"' in q["record"].iloc[0]
    assert report["validation"]["impressions"]["reasons"] == {"unknown esci_label": 1}


# --- event logs ----------------------------------------------------------------------------------------
def test_retailrocket_preset_maps_columns_events_and_milliseconds(tmp_path):
    d = tmp_path / "rr"
    _events_csv(d / "events.csv", [(1433221332117, 257597, "view", 355908, ""),
                                   (1433224214164, 992329, "addtocart", 248676, ""),
                                   (1433221999827, 111016, "transaction", 318965, 4000)],
                header=("timestamp", "visitorid", "event", "itemid", "transactionid"))
    raw = _land(f"events:{d}?preset=retailrocket", tmp_path)
    ev = _table(raw, "events")
    assert ev["timestamp"].tolist() == [1433221332, 1433224214, 1433221999]
    assert ev["event"].tolist() == ["view", "cart", "purchase"] and ev["user_id"].tolist()[0] == "257597"
    cat = _table(raw, "catalogue")  # no catalogue file: derived from the events' item ids
    assert sorted(cat["item_id"]) == ["248676", "318965", "355908"] and cat["title"].isna().all()
    assert json.loads((raw / "source.json").read_text())["task"] == "recommend"


def test_taobao_preset_reads_headerless_csv_and_derives_categories(tmp_path):
    d = tmp_path / "tb"
    d.mkdir()
    (d / "UserBehavior.csv").write_text("1,2268318,2520377,pv,1511544070\n1,2333346,2520771,buy,1511561733\n"
                                        "2,2268318,2520377,fav,1511572885\n3,9,7,cart,1511572900\n")
    raw = _land(f"events:{d}?preset=taobao", tmp_path)
    ev = _table(raw, "events")
    assert ev["event"].tolist() == ["view", "purchase", "click", "cart"]
    assert ev["item_id"].tolist()[:2] == ["2268318", "2333346"] and ev["timestamp"].iloc[0] == 1511544070
    cat = _table(raw, "catalogue").set_index("item_id")
    assert cat.loc["2268318", "category"] == "2520377" and len(cat) == 3


def test_events_parquet_and_csv_give_the_same_tables(tmp_path):
    write_event_log(tmp_path / "pq", 3000, n_items=120)
    write_event_log(tmp_path / "csv", 3000, n_items=120, file_format="csv")
    sliced = resolve_config("tiny", {"sources": {"chunk_rows": 700}})  # batches that slice the row groups
    a = _land(f"events:{tmp_path / 'pq'}", tmp_path, sliced, name="a")
    b = _land(f"events:{tmp_path / 'csv'}", tmp_path, name="b")
    for name in ("events", "catalogue"):
        pd.testing.assert_frame_equal(_table(a, name), _table(b, name))


def test_event_log_recommendation_end_to_end(tmp_path):
    from shoprank.modeling.train import train

    write_event_log(tmp_path / "tb", 24_000, layout="taobao", file_format="csv", n_items=200)
    raw = _land(f"events:{tmp_path / 'tb'}?preset=taobao", tmp_path)
    ev = _table(raw, "events")
    with open(tmp_path / "tb" / "UserBehavior.csv", "a") as fh:  # an unmapped behaviour: quarantined, reported
        fh.write("999,1,1,share,1767300000\n")
    raw = _land(f"events:{tmp_path / 'tb'}?preset=taobao", tmp_path, name="raw2")
    base, report = _pre(raw, tmp_path)
    assert report["task"] == "recommend" and report["split_mode"] == "time"
    assert report["validation"]["events"]["reasons"] == {"unknown event type": 1}
    neg = TINY.recommend.negatives
    interest = ev["event"].isin(TINY.recommend.target_events).sum()
    assert sum(s["requests"] for s in report["splits"].values()) == interest
    for split in SPLITS:
        data = load_split(base / "features", split)
        clicked = np.asarray(data.column("clicked")).reshape(-1, neg + 1)
        items = np.asarray(data.column("item_id")).reshape(-1, neg + 1)
        assert (clicked.sum(axis=1) == 1).all()  # one positive per list, at varying slots
        assert len(set(clicked.argmax(axis=1).tolist())) > 1
        assert all(len(set(r)) == neg + 1 for r in items[:200].tolist())
        assert np.asarray(data.column("gain")).max() <= 3
    golden = json.loads((base / "features" / "golden_requests.json").read_text())
    evs = ev.assign(row=np.arange(len(ev)))
    for g in golden:  # histories only hold events strictly before the target event
        target = evs.iloc[int(g["request_id"][1:])]
        before = evs[(evs["user_id"] == target["user_id"]) & (evs["timestamp"] < target["timestamp"])]
        assert g["history"] == before["item_id"].tolist()[-TINY.features.history_len:]
        assert target["item_id"] in g["candidates"]
    config = resolve_config("tiny", {"train": {"epochs": 2}})
    result = train(base / "features", base / "transform", tmp_path / "model", config, progress=quiet)
    assert result["epochs"][-1]["val_auc"] > 0.6


# --- bad inputs ------------------------------------------------------------------------------------------
def test_empty_files_are_named(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "events.csv").write_text("")
    with pytest.raises(SourceError, match=r"events.csv: the file is empty"):
        ingest(f"events:{tmp_path / 'a'}", tmp_path / "o1", TINY)
    _events_csv(tmp_path / "b" / "events.csv", [])
    with pytest.raises(SourceError, match=r"no rows \(only a header\)"):
        ingest(f"events:{tmp_path / 'b'}", tmp_path / "o2", TINY)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "events.parquet").write_bytes(b"")
    with pytest.raises(SourceError, match=r"events.parquet: the file is empty \(0 bytes\)"):
        ingest(f"events:{tmp_path / 'c'}", tmp_path / "o3", TINY)
    with pytest.raises(SourceError, match="no 'shopping_queries_dataset_examples.parquet"):
        ingest(f"esci:{tmp_path / 'c'}", tmp_path / "o4", TINY)


def test_missing_columns_suggest_a_preset(tmp_path):
    _events_csv(tmp_path / "e" / "events.csv", [(1433221332117, 1, "view", 2, "")],
                header=("timestamp", "visitorid", "event", "itemid", "transactionid"))
    with pytest.raises(SourceError, match=r"\['user_id', 'item_id'\] missing .*preset=retailrocket"):
        ingest(f"events:{tmp_path / 'e'}", tmp_path / "o", TINY)


def test_mixed_type_column_fails_with_the_column_named_or_quarantines_a_few(tmp_path):
    rows = [(1767300000 + i, f"u{i % 5}", "click", f"i{i % 7}") for i in range(200)]
    bad = [(("yesterday" if i % 2 else r[0]), *r[1:]) for i, r in enumerate(rows)]
    _events_csv(tmp_path / "many" / "events.csv", bad)
    with pytest.raises(DataValidationError, match=r"column 'timestamp' mixes types: 100 of 200 .*'yesterday'"):
        ingest(f"events:{tmp_path / 'many'}", tmp_path / "o1", TINY)
    few = [(("soon" if i == 7 else r[0]), *r[1:]) for i, r in enumerate(rows)]
    _events_csv(tmp_path / "few" / "events.csv", few)
    raw = _land(f"events:{tmp_path / 'few'}", tmp_path, name="few")
    base, report = _pre(raw, tmp_path)
    q = pd.read_parquet(base / "features" / "quarantine.parquet")
    assert q[["row", "reason"]].values.tolist() == [[7, "wrong type in timestamp"]] and "soon" in q["record"][0]


def test_non_utf8_text_fails_with_an_encoding_hint_or_is_read_with_the_option(tmp_path):
    d = tmp_path / "latin"
    d.mkdir()
    body = "timestamp,user_id,event,item_id,query\n" + "".join(
        f"{1767300000 + i},u{i % 3},click,i{i % 4},caf\xe9 cr\xe8me\n" for i in range(50))
    (d / "events.csv").write_bytes(body.encode("latin-1"))
    with pytest.raises(DataValidationError, match=r"column 'query' is not UTF-8 text in 50 of 50 rows.*encoding="):
        ingest(f"events:{d}", tmp_path / "o1", TINY)
    raw = _land(f"events:{d}?encoding=latin-1", tmp_path)
    assert _table(raw, "events")["query"].iloc[0] == "café crème"
    # A single stray byte: the row is quarantined with the reason, the rest is read.
    good = body.encode("latin-1").decode("latin-1").replace("\xe9", "e").replace("\xe8", "e").encode()
    lines = good.split(b"\n")
    lines[5] = lines[5].replace(b"creme", b"cr\xffme")
    (d / "events.csv").write_bytes(b"\n".join(lines))
    raw = _land(f"events:{d}", tmp_path, name="raw2")
    base, _ = _pre(raw, tmp_path)
    q = pd.read_parquet(base / "features" / "quarantine.parquet")
    assert q[["row", "reason"]].values.tolist() == [[4, "invalid UTF-8 in query"]] and "\\xff" in q["record"][0]


def test_duplicated_catalogue_ids_fail_clearly_or_are_quarantined(tmp_path):
    d = tmp_path / "dup"
    _events_csv(d / "events.csv", [(1767300000, "u1", "click", "a"), (1767300001, "u1", "click", "b")])
    pacsv.write_csv(pa.table({"item_id": ["a", "b", "a", "b"], "title": ["x"] * 4}), d / "catalogue.csv")
    with pytest.raises(DataValidationError, match=r"2 of 4 rows repeat an earlier item_id \(e.g. 'a' x2"):
        ingest(f"events:{d}", tmp_path / "o", TINY)
    pacsv.write_csv(pa.table({"item_id": [f"i{k}" for k in range(99)] + ["a", "b", "a"],
                              "title": ["x"] * 102}), d / "catalogue.csv")
    raw = _land(f"events:{d}", tmp_path)
    with pytest.raises(DataValidationError, match="nothing to train on"):  # 2 events are too few, but:
        _pre(raw, tmp_path, resolve_config("tiny", {"recommend": {"target_events": ["purchase"]}}))
    q = pd.read_parquet(tmp_path / "pre" / "features" / "quarantine.parquet")
    assert q[["table", "row", "reason"]].values.tolist() == [["catalogue", 101, "duplicate of an earlier row"]]


def test_summary_table_without_an_oracle_prints_dashes():
    from pipelines.run_local import summary_table

    q = {"auc": 0.61, "ndcg_at_10": 0.7, "log_loss": 0.6, "mrr": 0.5}
    summary = {"data_source": "esci:/d", "data": {"task": "search", "split_mode": "column"}, "baseline": q,
               "optimized": q, "sizes": {"int8_tflite": {"bytes": 10, "gzip_bytes": 5}},
               "latency_ms": {"int8_tflite": {"1": 0.1, "256": 0.3}},
               "ratios": {"int8_gzip_smaller_x": 10.0, "int8_b256_faster_x": 3.0, "int8_auc_drop": 0.0},
               "blessed": False, "blessing_reasons": ["x"]}
    table = summary_table(summary)
    assert table.splitlines()[0] == "data source: esci:/d (search, column split)"
    auc = next(line for line in table.splitlines() if line.startswith("AUC"))
    assert auc.split()[-1] == "-" and "no oracle" in table
