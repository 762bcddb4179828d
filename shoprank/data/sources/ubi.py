"""OpenSearch User Behavior Insights (UBI) -> shoprank tables: search ranking from real search logs.

Input, under one directory (`DATA=ubi:/dir`): the two UBI indices as exported, each as a file or a directory
of parts named after the index: `ubi_queries.*` and `ubi_events.*`, as NDJSON (`.ndjson`, `.jsonl`, `.json`,
also `.gz`) or parquet. NDJSON may be plain documents, one per line, or what OpenSearch's bulk API takes
and export tools write: an action line (`{"index": {"_index": "ubi_events", "_id": ...}}`) before each
document, or search hits (`{"_index": ..., "_id": ..., "_source": {...}}`). A file that is not named after
an index (one bulk file holding both) is routed document by document by its `_index`. Parquet may hold
the nested fields as structs or as flat columns named by their path (`event_attributes.object.object_id`).

Fields read (UBI schema 1.x, https://github.com/o19s/ubi):

* ubi_queries: `query_id`, `user_query` (the text), `client_id`, `user_id`, `session_id`, `timestamp`,
  `query_response_hit_ids` (the ids the search returned, in order, when the server logged them);
* ubi_events: `action_name`, `query_id`, `client_id`, `user_id`, `session_id`, `timestamp`,
  `event_attributes.object` (`object_id`, `name`, `description`, `object_detail` such as price, brand,
  category) and `event_attributes.position` (`ordinal`, or `{"index": n}`).

Mapping:

* impressions: one request per `query_id` that has a shown list: its `impression` events (position from
  `position.ordinal`, 1-based unless the export holds a 0, see `position_base`, else the object's index in
  the query's hit ids) or, without impression events, the query's `query_response_hit_ids`. Objects the
  user acted on under that query join by (query id, object id): `clicked` = click/click_through (or a cart
  or purchase of it), `carted` = add_to_cart (or purchase), `purchased` = purchase; an acted-on object that
  is not in the shown list is a candidate too. The request's time, user and text are the query's
  (its events' when the query document is missing); the user is `user_id`, else `client_id`.
* events (behaviour histories): every click, click_through, add_to_cart, purchase, view and watch event,
  with or without a query (`impression` events are what was shown, not what the user did).
* catalogue: every object id seen, with `name` (else `description`) as title and `object_detail`'s
  price, brand and category where given (the first value seen per item).

Other action names (on_search, product_hover, ...) are counted by name in the report and kept out, not
errors (map them with `actions=`). Duplicated documents collapse in the impressions (one row per query
and object) and are quarantined by validation in the events ("duplicate of an earlier row"). Timestamps
are ISO 8601 or epoch milliseconds as OpenSearch stores them (shoprank.data.timestamps); microseconds
are kept, so events of one second keep their order.

Options: `user=user_id|client_id` (who a history belongs to; default user_id, else client_id),
`position_base=auto|0|1` (what the top position's ordinal is; auto: 0 when any impression has ordinal 0),
`actions=name:type,...` (more action names: type one of impression, click, cart, purchase, view, ignore),
`timestamp_unit=auto|s|ms|us|ns` (for numeric timestamps).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from shoprank.config import ShoprankConfig
from shoprank.data.sources import Converter, SourceSpec, check_options, open_location, write_source_info
from shoprank.data.streaming import Partitions, clear_directory, iter_parquet, partition_of
from shoprank.data.timestamps import UNITS, read_timestamps
from shoprank.errors import SourceError
from shoprank.schema import CATALOGUE, EVENTS, IMPRESSIONS

__all__ = ["ACTIONS", "INDICES", "JSON_EXTENSIONS", "OPTIONS", "UbiReport", "load_ubi"]

OPTIONS = ("user", "position_base", "actions", "timestamp_unit")
INDICES = ("ubi_queries", "ubi_events")
JSON_EXTENSIONS = (".ndjson", ".jsonl", ".json", ".ndjson.gz", ".jsonl.gz", ".json.gz")
_PARQUET = (".parquet", ".pq")
# UBI action names -> what shoprank makes of them ("impression": a shown item; the rest are event types).
ACTIONS = {"impression": "impression", "click": "click", "click_through": "click", "add_to_cart": "cart",
           "purchase": "purchase", "view": "view", "watch": "view"}
_KINDS = ("impression", "click", "cart", "purchase", "view", "ignore")
_LEVEL = {"impression": 0, "click": 1, "cart": 2, "purchase": 3}  # interactions imply the lower levels
_BULK_ACTIONS = ("index", "create", "update", "delete")

# Work files (hash partitions by query id): queries and the events that carry a query id.
_QPART = pa.schema([("_row", pa.int64()), ("query_id", pa.string()), ("user_query", pa.string()),
                    ("user", pa.string()), ("session_id", pa.string()), ("ts", pa.int64()), ("sub", pa.int32()),
                    ("ts_state", pa.int8()), ("ts_text", pa.string()), ("hits", pa.list_(pa.string()))])
_EPART = pa.schema([("_row", pa.int64()), ("query_id", pa.string()), ("object_id", pa.string()),
                    ("level", pa.int8()), ("position", pa.int64()), ("user", pa.string()),
                    ("session_id", pa.string()), ("ts", pa.int64()), ("sub", pa.int32()), ("ts_state", pa.int8())])
_TS_ABSENT, _TS_OK, _TS_WRONG = 0, 1, 2


@dataclass
class UbiReport:
    """What the loader read and made of it (source.json "ubi"; ingest prints it)."""

    documents: dict[str, int] = field(default_factory=lambda: {"ubi_queries": 0, "ubi_events": 0})
    bulk_action_lines: int = 0
    unreadable_lines: int = 0
    other_index_documents: dict[str, int] = field(default_factory=dict)
    actions: dict[str, int] = field(default_factory=dict)  # known action names, as logged
    unknown_actions: dict[str, int] = field(default_factory=dict)  # counted and kept out
    events_without_query: int = 0  # behaviour events only (histories)
    impressions_without_query: int = 0  # cannot form a request: kept out
    impressions_without_object: int = 0  # kept out
    unreadable_positions: int = 0
    duplicate_queries: int = 0  # a repeated query_id: the first document counts
    queries_without_a_list: int = 0  # no impression events and no hit ids: no request
    lists_from_hit_ids: int = 0  # requests whose shown list is the query's hit ids (no impression events)
    requests_without_query_document: int = 0  # built from their events
    interactions_without_a_list: int = 0  # acted-on objects of a query with nothing shown: histories only
    requests: int = 0
    impression_rows: int = 0
    position_base: int = 1

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        for k in ("actions", "unknown_actions", "other_index_documents"):
            out[k] = dict(sorted(out[k].items(), key=lambda kv: -kv[1]))
        return out


# --- finding and reading the exported files ----------------------------------------------------------
def _suffix(name: str) -> str | None:
    low = name.lower()
    if low.endswith(_PARQUET):
        return "parquet"
    if low.endswith(JSON_EXTENSIONS):
        return "json"
    return None


def _index_of_name(path: str) -> str | None:
    """The index a file belongs to by its name or its directory's (ubi_events-000.ndjson, ubi_queries/x)."""
    for part in reversed(path.replace("\\", "/").split("/")[-2:]):
        for index in INDICES:
            if part.lower().startswith(index):
                return index
    return None


def _find_files(fs: pafs.FileSystem, base: str) -> list[tuple[str, str, str | None]]:
    """(path, kind, index or None = route by `_index`) of every NDJSON/parquet file under `base`."""
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise SourceError(f"UBI: '{base}' does not exist")
    if info.type == pafs.FileType.File:
        infos = [info]
    else:
        infos = [i for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))
                 if i.type == pafs.FileType.File and not i.base_name.startswith((".", "_"))]
    files = []
    for i in sorted(infos, key=lambda i: i.path):
        kind = _suffix(i.base_name)
        if kind is None:
            continue
        index = _index_of_name(i.path)
        if kind == "parquet" and index is None:
            raise SourceError(f"UBI: {i.path}: a parquet file must be named after its index ({list(INDICES)})")
        files.append((i.path, kind, index))
    if not files:
        listing = sorted(i.base_name for i in infos)[:20]
        raise SourceError(f"UBI: no ubi_queries/ubi_events NDJSON or parquet files in '{base}' (it holds "
                          f"{listing}); export the indices as NDJSON (bulk or plain lines) or parquet")
    return files


def _json_lines(fs: pafs.FileSystem, path: str, block: int = 16 << 20) -> Iterator[bytes]:
    """The lines of an NDJSON file (gzip and the like by its extension), read in blocks; a file that is one
    JSON array of documents gives one line per document."""
    with fs.open_input_stream(path, compression="detect") as stream:
        head = stream.read(block)
        if head.startswith(b"\xef\xbb\xbf"):
            head = head[3:]
        if head.lstrip().startswith(b"["):  # a JSON array of documents: read whole
            data = head + stream.read()
            try:
                docs = json.loads(data)
            except ValueError as e:
                raise SourceError(f"UBI: {path}: not NDJSON and not a JSON array ({e})") from e
            for d in docs:
                yield json.dumps(d).encode()
            return
        rest = b""
        while head:
            lines = (rest + head).split(b"\n")
            rest = lines.pop()
            yield from lines
            head = stream.read(block)
        if rest:
            yield rest


def _json_documents(fs: pafs.FileSystem, path: str, default: str | None, report: UbiReport | None
                    ) -> Iterator[tuple[str | None, dict]]:
    """(index, document) of an NDJSON file: bulk action lines name the next document's index, search hits
    are unwrapped, plain documents take the file's index. Lines are counted in `report` when given (a file
    holding both indices is read once per index, and counted once)."""
    pending: str | None = None
    expect_doc = False
    bad = total = 0
    for line in _json_lines(fs, path):
        if not line.strip():
            continue
        total += 1
        try:
            d = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if not isinstance(d, dict):
            bad += 1
            continue
        if len(d) == 1 and next(iter(d)) in _BULK_ACTIONS and isinstance(next(iter(d.values())), dict):
            action, meta = next(iter(d.items()))
            if report is not None:
                report.bulk_action_lines += 1
            pending, expect_doc = meta.get("_index") or default, action != "delete"
            continue
        if expect_doc:
            index, expect_doc = pending, False
            if "doc" in d and len(d) <= 2 and isinstance(d["doc"], dict):  # an update action's body
                d = d["doc"]
        elif isinstance(d.get("_source"), dict):
            index, d = d.get("_index") or default, d["_source"]
        else:
            index = default
        yield index, d
    if report is not None:
        report.unreadable_lines += bad
    if total and bad > total // 2:
        raise SourceError(f"UBI: {path}: {bad:,} of {total:,} lines are not JSON documents; export the index as "
                          "NDJSON (one document, or one bulk action and its document, per line)")


def _index_name(index: str | None) -> str | None:
    if index is None:
        return None
    low = index.lower()
    return next((i for i in INDICES if low.startswith(i)), None)


def _get(d: dict, path: str) -> object:
    """A nested field by its dotted path; flat keys named by the path work too."""
    if path in d:
        return d[path]
    cur = d
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
        if cur is None:
            return None
    return cur


def _text(v: object) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, int | float):
        return str(v)
    return json.dumps(v, sort_keys=True)


# Fields per index: output name -> the paths that may hold it (first found wins).
_QUERY_FIELDS = {
    "query_id": ("query_id",), "user_query": ("user_query",), "user_id": ("user_id", "query_attributes.user_id"),
    "client_id": ("client_id",), "session_id": ("session_id", "query_attributes.session_id"),
    "timestamp": ("timestamp",), "hits": ("query_response_hit_ids", "query_response_object_ids"),
}
_EVENT_FIELDS = {
    "action": ("action_name",), "query_id": ("query_id",),
    "user_id": ("user_id", "event_attributes.user_id"), "client_id": ("client_id",),
    "session_id": ("session_id", "event_attributes.session_id"), "timestamp": ("timestamp",),
    "object_id": ("event_attributes.object.object_id",), "name": ("event_attributes.object.name",),
    "description": ("event_attributes.object.description",),
    "detail": ("event_attributes.object.object_detail",),
    "position": ("event_attributes.position.ordinal", "event_attributes.position.index"),
}
_DETAILS = {"price": ("price", "sale_price"), "brand": ("brand", "manufacturer"),
            "category": ("category", "categories", "category_path"), "title": ("title", "name")}


def _docs_to_columns(docs: list[dict], fields: dict[str, tuple[str, ...]]) -> dict[str, list]:
    out: dict[str, list] = {k: [] for k in fields}
    for d in docs:
        for k, paths in fields.items():
            v = None
            for p in paths:
                v = _get(d, p)
                if v is not None:
                    break
            out[k].append(v)
    return out


def _flat(table: pa.Table) -> pa.Table:
    while any(pa.types.is_struct(f.type) for f in table.schema):
        table = table.flatten()
    return table


def _parquet_columns(table: pa.Table, fields: dict[str, tuple[str, ...]]) -> dict[str, list]:
    """A parquet chunk as the same per-field lists as JSON documents give (nested or flat names)."""
    table = _flat(table)
    names = set(table.column_names)
    out: dict[str, list] = {}
    for k, paths in fields.items():
        if k == "detail":  # a JSON string, a map, or flattened struct fields under the path
            col = next((p for p in paths if p in names), None)
            if col is not None:
                out[k] = table[col].to_pylist()
            else:
                prefix = paths[0] + "."
                sub = [n for n in table.column_names if n.startswith(prefix)]
                rows = table.select(sub).to_pylist() if sub else [{}] * table.num_rows
                out[k] = [{n[len(prefix):]: v for n, v in r.items() if v is not None} for r in rows]
            continue
        col = next((p for p in paths if p in names), None)
        if col is None and k == "position":
            col = next((p + ".index" for p in paths if p + ".index" in names), None)
        if col is None:
            out[k] = [None] * table.num_rows
        elif k == "timestamp":
            out[k] = table[col]  # kept as arrow: parquet timestamps read as such
        else:
            out[k] = table[col].to_pylist()
    return out


def _read_index(files: list[tuple[str, str, str | None]], fs: pafs.FileSystem, want: str, chunk_rows: int,
                fields: dict[str, tuple[str, ...]], report: UbiReport) -> Iterator[dict[str, list]]:
    """The documents of index `want` in chunks, as per-field lists."""
    for path, kind, index in files:
        if kind == "parquet":
            if index != want:
                continue
            try:
                pf = pq.ParquetFile(fs.open_input_file(path))
            except (pa.ArrowInvalid, OSError) as e:
                raise SourceError(f"UBI: {path}: not a readable parquet file ({e})") from e
            for table in iter_parquet(pf, chunk_rows):
                report.documents[want] += table.num_rows
                yield _parquet_columns(table, fields)
            continue
        if index is not None and index != want:
            continue
        docs: list[dict] = []
        first_pass = index == want or want == INDICES[0]
        for doc_index, doc in _json_documents(fs, path, index, report if first_pass else None):
            name = _index_name(doc_index)
            if name != want:
                if name is None and want == INDICES[0]:  # count strangers once (on the first pass)
                    key = doc_index or "(no _index)"
                    report.other_index_documents[key] = report.other_index_documents.get(key, 0) + 1
                continue
            docs.append(doc)
            if len(docs) >= chunk_rows:
                report.documents[want] += len(docs)
                yield _docs_to_columns(docs, fields)
                docs = []
        if docs:
            report.documents[want] += len(docs)
            yield _docs_to_columns(docs, fields)


# --- value helpers -------------------------------------------------------------------------------------
def _texts(values: list) -> pa.Array:
    """Ids and words as text, without surrounding blanks; "" is missing."""
    arr = pc.utf8_trim_whitespace(pa.array([_text(v) for v in values], pa.string()))
    return pc.if_else(pc.equal(arr, ""), pa.nulls(len(arr), pa.string()), arr)


def _users(cols: dict[str, list], user: str) -> pa.Array:
    client = _texts(cols["client_id"])
    if user == "client_id":
        return client
    return pc.coalesce(_texts(cols["user_id"]), client)


def _times(values: list | pa.Array | pa.ChunkedArray, unit: str
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, pa.Array, pa.Array]:
    """(seconds, micros, state, text, logged) of a timestamp field: state 0 absent, 1 read, 2 unreadable;
    `logged` is the field as read (text from JSON, any arrow type from parquet), `text` that as text."""
    arr = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(
        [_text(v) for v in values], pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = read_timestamps(arr, unit)
    state = np.where(t.present, _TS_OK, np.where(t.wrong, _TS_WRONG, _TS_ABSENT)).astype(np.int8)
    text = arr if pa.types.is_string(arr.type) else arr.cast(pa.string())
    return t.seconds, t.micros, state, text, arr


def _position(v: object) -> tuple[int | None, bool]:
    """An ordinal as logged (an int, numeric text, or {"index": n}) -> (int or None, unreadable)."""
    if isinstance(v, dict):
        v = v.get("index", v.get("ordinal"))
    if v is None:
        return None, False
    if isinstance(v, bool):
        return None, True
    if isinstance(v, int):
        return v, False
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None, True
    return (int(f), False) if math.isfinite(f) and f.is_integer() else (None, True)


def _detail(v: object) -> dict:
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return {}
    if isinstance(v, list) and v and all(isinstance(x, tuple | list) and len(x) == 2 for x in v):  # a map
        v = dict(v)
    return v if isinstance(v, dict) else {}


def _detail_value(d: dict, key: str) -> object:
    for k in _DETAILS[key]:
        v = d.get(k)
        if isinstance(v, list):
            v = v[0] if v else None
        if v is not None and v != "":
            return v
    return None


def _price(v: object) -> float | None:
    if v is None:
        return None
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    try:
        return float(str(v).replace(",", "").strip().lstrip("$€£"))
    except ValueError:
        return None


class _Catalogue:
    """Every object id seen, with the first title/category/brand/price seen for it (in memory: a catalogue
    has to fit anyway)."""

    def __init__(self) -> None:
        self.items: dict[str, list] = {}

    def add(self, object_id: str, title: str | None = None, category: str | None = None, brand: str | None = None,
            price: float | None = None) -> None:
        row = self.items.get(object_id)
        if row is None:
            self.items[object_id] = [title, category, brand, price]
            return
        for i, v in enumerate((title, category, brand, price)):
            if row[i] is None and v is not None:
                row[i] = v

    def table(self) -> pa.Table:
        ids = list(self.items)
        cols = list(zip(*self.items.values())) if ids else [(), (), (), ()]
        return pa.table({"item_id": pa.array(ids, pa.string()), "title": pa.array(cols[0], pa.string()),
                         "category": pa.array(cols[1], pa.string()), "brand": pa.array(cols[2], pa.string()),
                         "price": pa.array(cols[3], pa.float64())})


def _action_map(spec: SourceSpec) -> dict[str, str]:
    actions = dict(ACTIONS)
    extra = spec.options.get("actions", "")
    for pair in filter(None, (p.strip() for p in extra.split(","))):
        name, sep, kind = pair.partition(":")
        if not sep or kind not in _KINDS:
            raise SourceError(f"ubi option actions={extra!r}: use name:type pairs with type one of {list(_KINDS)}")
        actions[name.strip().lower()] = kind
    return actions


# --- the loader ----------------------------------------------------------------------------------------
def load_ubi(spec: SourceSpec, out_dir: str | Path, config: ShoprankConfig) -> dict:
    """Convert a UBI export to catalogue/events/impressions parquet under `out_dir`; returns the report."""
    check_options(spec, OPTIONS)
    user = spec.options.get("user", "user_id")
    if user not in ("user_id", "client_id"):
        raise SourceError(f"ubi option user={user!r}: use user_id (else client_id) or client_id")
    base_opt = spec.options.get("position_base", "auto")
    if base_opt not in ("auto", "0", "1"):
        raise SourceError(f"ubi option position_base={base_opt!r}: use auto, 0 or 1")
    unit = spec.options.get("timestamp_unit", "auto")
    if unit not in UNITS:
        raise SourceError(f"ubi option timestamp_unit={unit!r}: use one of {list(UNITS)}")
    actions = _action_map(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fs, base = open_location(spec.location)
    files = _find_files(fs, base)
    chunk = config.sources.chunk_rows
    report = UbiReport()
    work = out / "_ubi_work"
    clear_directory(work)
    size = sum(fs.get_file_info(p).size or 0 for p, _, _ in files)
    parts = max(1, math.ceil(size / 300 / config.preprocess.partition_rows))  # ~300 bytes a document
    try:
        qparts = Partitions(work, "queries", parts, _QPART)
        eparts = Partitions(work, "events", parts, _EPART)
        catalogue = _Catalogue()
        seen_queries = _read_queries(files, fs, chunk, user, unit, qparts, catalogue, report)
        min_ordinal, ev_report = _read_events(files, fs, chunk, user, unit, actions, eparts, catalogue, out, config,
                                              report)
        qparts.close()
        eparts.close()
        if report.documents["ubi_events"] == 0 and seen_queries == 0:
            raise SourceError(f"UBI: no ubi_queries or ubi_events documents in '{spec.location}'")
        report.position_base = int(base_opt) if base_opt != "auto" else (0 if min_ordinal == 0 else 1)
        imp_conv = Converter(IMPRESSIONS, out / "impressions.parquet", "ubi_queries + ubi_events",
                             config.validation, {"timestamp": "timestamp_logged", "request_id": "query_id",
                                                 "item_id": "object_id"}, timestamp_unit="s")
        for p in range(parts):
            _impressions_of_partition(qparts.read(p), eparts.read(p), report, imp_conv, catalogue)
        imp_report = imp_conv.close()
    finally:
        clear_directory(work)
    cat_conv = Converter(CATALOGUE, out / "catalogue.parquet", "catalogue (derived from the UBI objects)",
                         config.validation)
    items = catalogue.table()
    for lo in range(0, max(items.num_rows, 1), chunk):
        sub = items.slice(lo, chunk)
        cat_conv.write({c: sub[c] for c in CATALOGUE.names}, sub)
    cat_report = cat_conv.close()
    info = {"format": "ubi", "task": "search", "location": spec.location, "options": spec.options,
            "files": [p for p, _, _ in files], "user": user, "timestamp_unit": unit,
            "absent": {"events": ["event_id", "query"], "impressions": ["oracle", "relevance", "split"],
                       "catalogue": []},
            "ubi": report.to_dict(),
            "conversion": {"events": ev_report, "catalogue": cat_report,
                           "impressions": imp_report}}
    write_source_info(out, info)
    return info


def _read_queries(files: list[tuple[str, str, str | None]], fs: pafs.FileSystem, chunk: int, user: str, unit: str,
                  qparts: Partitions, catalogue: _Catalogue, report: UbiReport) -> int:
    """Stream ubi_queries into the query-id partitions (hit ids to the catalogue); returns the documents read."""
    row0 = 0
    for cols in _read_index(files, fs, "ubi_queries", chunk, _QUERY_FIELDS, report):
        n = len(cols["query_id"])
        secs, micros, state, text, _ = _times(cols["timestamp"], unit)
        hits = []
        for h in cols["hits"]:
            if isinstance(h, str):  # one id, or a JSON/comma list as text
                h = json.loads(h) if h.strip().startswith("[") else [x for x in h.split(",") if x.strip()]
            ids = [_text(x).strip() for x in h if x is not None and _text(x).strip()] if isinstance(h, list) else []
            hits.append(ids or None)
            for x in ids:
                catalogue.add(x)
        qid = _texts(cols["query_id"])
        table = pa.table({"_row": pa.array(np.arange(row0, row0 + n, dtype=np.int64)), "query_id": qid,
                          "user_query": _texts(cols["user_query"]), "user": _users(cols, user),
                          "session_id": _texts(cols["session_id"]), "ts": pa.array(secs), "sub": pa.array(micros),
                          "ts_state": pa.array(state), "ts_text": text,
                          "hits": pa.array(hits, pa.list_(pa.string()))})
        table = table.filter(pc.is_valid(qid))
        qparts.write(table, partition_of(table["query_id"], qparts.parts))
        row0 += n
    return row0


def _read_events(files: list[tuple[str, str, str | None]], fs: pafs.FileSystem, chunk: int, user: str, unit: str,
                 actions: dict[str, str], eparts: Partitions, catalogue: _Catalogue, out: Path, config: ShoprankConfig,
                 report: UbiReport) -> tuple[int | None, dict]:
    """Stream ubi_events: behaviour events to events.parquet, query-bound impressions and interactions to
    the partitions, objects to the catalogue. Returns the smallest impression ordinal seen (or None) and the
    events table's conversion report."""
    conv = Converter(EVENTS, out / "events.parquet", "ubi_events", config.validation,
                     {"event": "action_name", "item_id": "event_attributes.object.object_id",
                      "user_id": "user_id|client_id"}, timestamp_unit=unit)
    known_actions: Counter = Counter()
    unknown: Counter = Counter()
    min_ordinal: int | None = None
    row0 = 0
    for cols in _read_index(files, fs, "ubi_events", chunk, _EVENT_FIELDS, report):
        n = len(cols["action"])
        names = [(_text(a) or "").strip() for a in cols["action"]]
        kind = np.array([actions.get(a.lower(), "unknown") for a in names], dtype=object)
        for a, k in zip(names, kind):
            (unknown if k == "unknown" else known_actions)[a or "(no action_name)"] += 1
        secs, micros, state, text, logged = _times(cols["timestamp"], unit)
        qid, oid, users = _texts(cols["query_id"]), _texts(cols["object_id"]), _users(cols, user)
        session = _texts(cols["session_id"])
        positions = np.full(n, -1, np.int64)
        has_pos = np.zeros(n, bool)
        for i, v in enumerate(cols["position"]):
            pos, bad = _position(v)
            if pos is not None:
                positions[i], has_pos[i] = pos, True
            report.unreadable_positions += int(bad and kind[i] == "impression")
        details = [_detail(d) for d in cols["detail"]]
        oid_list = oid.to_pylist()
        for i, o in enumerate(oid_list):
            if o is None or kind[i] in ("unknown", "ignore"):
                continue
            d = details[i]
            title = _text(cols["name"][i]) or _text(cols["description"][i]) or _text(_detail_value(d, "title"))
            catalogue.add(o, title, _text(_detail_value(d, "category")), _text(_detail_value(d, "brand")),
                          _price(_detail_value(d, "price")))
        has_q = pc.is_valid(qid).to_numpy(zero_copy_only=False)
        has_o = pc.is_valid(oid).to_numpy(zero_copy_only=False)
        # Behaviour: every click/cart/purchase/view event, with or without a query.
        behaviour = np.isin(kind, ["click", "cart", "purchase", "view"])
        report.events_without_query += int((behaviour & ~has_q).sum())
        if behaviour.any():
            idx = pa.array(np.flatnonzero(behaviour))
            raw = pa.table({"action_name": pa.array(names, pa.string()), "query_id": qid, "user_id|client_id": users,
                            "session_id": session, "timestamp": text,
                            "event_attributes.object.object_id": oid}).take(idx)
            conv.write({"timestamp": logged.take(idx), "user_id": users.take(idx), "session_id": session.take(idx),
                        "event": pa.array(kind.astype(str), pa.string()).take(idx), "item_id": oid.take(idx)}, raw)
        # Query-bound impressions and interactions go to the join by query id.
        level = np.array([_LEVEL.get(k, -1) for k in kind], np.int8)
        shown = level == 0
        report.impressions_without_query += int((shown & ~has_q).sum())
        report.impressions_without_object += int((shown & has_q & ~has_o).sum())
        if (shown & has_pos).any():
            m = int(positions[shown & has_pos].min())
            min_ordinal = m if min_ordinal is None else min(min_ordinal, m)
        keep = (level >= 0) & has_q & has_o
        if keep.any():
            idx = pa.array(np.flatnonzero(keep))
            table = pa.table({"_row": pa.array(np.arange(row0, row0 + n, dtype=np.int64)), "query_id": qid,
                              "object_id": oid, "level": pa.array(level),
                              "position": pa.array(positions, mask=~has_pos), "user": users,
                              "session_id": session, "ts": pa.array(secs), "sub": pa.array(micros),
                              "ts_state": pa.array(state)}).take(idx)
            eparts.write(table, partition_of(table["query_id"], eparts.parts))
        row0 += n
    report.actions = dict(known_actions)
    report.unknown_actions = dict(unknown)
    return min_ordinal, conv.close()


def _impressions_of_partition(q: pa.Table, e: pa.Table, report: UbiReport, conv: Converter,
                              catalogue: _Catalogue) -> None:
    """One query-id partition: each query's shown list joined with what the user did, as impression rows."""
    # Queries: the first document of each query id.
    q = q.sort_by("_row")
    qid = q["query_id"].to_pylist()
    first: dict[str, int] = {}
    for i, x in enumerate(qid):
        if x in first:
            report.duplicate_queries += 1
        else:
            first[x] = i
    queries = {x: i for x, i in first.items()}
    qcol = {c: q[c].to_pylist() for c in ("user_query", "user", "session_id", "ts", "sub", "ts_state", "ts_text",
                                          "hits")}
    # Events of the partition, grouped by query id (in source order).
    e = e.sort_by("_row")
    by_query: dict[str, list[int]] = {}
    for i, x in enumerate(e["query_id"].to_pylist()):
        by_query.setdefault(x, []).append(i)
    ecol = {c: e[c].to_pylist() for c in ("object_id", "level", "position", "user", "session_id", "ts", "sub",
                                          "ts_state")}
    base = report.position_base
    rows: dict[str, list] = {k: [] for k in ("query_id", "timestamp", "subsecond_us", "timestamp_logged", "defect",
                                             "user_id", "session_id", "query", "object_id", "position", "clicked",
                                             "carted", "purchased")}
    for query_id in sorted(set(queries) | set(by_query), key=lambda x: (x not in queries, queries.get(x, 0), x)):
        ev = by_query.get(query_id, [])
        qi = queries.get(query_id)
        hits = (qcol["hits"][qi] or []) if qi is not None else []
        hit_pos = {h: k for k, h in reversed(list(enumerate(hits)))}
        shown: dict[str, int | None] = {}  # object -> position (None: unknown), in first-seen order
        acted: dict[str, int] = {}  # object -> highest interaction level
        for i in ev:
            o, lvl, pos = ecol["object_id"][i], ecol["level"][i], ecol["position"][i]
            if lvl == 0:
                p = pos - base if pos is not None else hit_pos.get(o)
                if o not in shown or (p is not None and (shown[o] is None or p < shown[o])):
                    shown[o] = p
            else:
                acted[o] = max(acted.get(o, 0), lvl)
        if not shown and hits:
            shown = {h: hit_pos[h] for h in hit_pos}
            report.lists_from_hit_ids += 1
        if not shown:
            report.queries_without_a_list += int(qi is not None and not acted)
            report.interactions_without_a_list += len(acted)
            continue
        for o in acted:
            if o not in shown:
                shown[o] = hit_pos.get(o)
        # The request: the query document's time, user and text; else its events'.
        if qi is not None and qcol["ts_state"][qi] != _TS_ABSENT:
            ts, sub, state, logged = qcol["ts"][qi], qcol["sub"][qi], qcol["ts_state"][qi], qcol["ts_text"][qi]
        else:
            good = [i for i in ev if ecol["ts_state"][i] == _TS_OK]
            t0 = min(good, key=lambda i: (ecol["ts"][i], ecol["sub"][i])) if good else None
            ts, sub = (ecol["ts"][t0], ecol["sub"][t0]) if t0 is not None else (None, None)
            state = _TS_OK if t0 is not None else (_TS_WRONG if ev and any(
                ecol["ts_state"][i] == _TS_WRONG for i in ev) else _TS_ABSENT)
            logged = None
        if qi is None:
            report.requests_without_query_document += 1
        user = qcol["user"][qi] if qi is not None and qcol["user"][qi] else next(
            (ecol["user"][i] for i in ev if ecol["user"][i]), None)
        session = qcol["session_id"][qi] if qi is not None and qcol["session_id"][qi] else next(
            (ecol["session_id"][i] for i in ev if ecol["session_id"][i]), None)
        text = qcol["user_query"][qi] if qi is not None else None
        report.requests += 1
        for o, p in shown.items():
            lvl = acted.get(o, 0)
            catalogue.add(o)
            rows["query_id"].append(query_id)
            rows["timestamp"].append(ts if state == _TS_OK else None)
            rows["subsecond_us"].append(sub if state == _TS_OK else None)
            rows["timestamp_logged"].append(logged if logged is not None else (
                None if ts is None else f"{ts}.{sub:06d}"))
            rows["defect"].append("wrong type in timestamp" if state == _TS_WRONG else None)
            rows["user_id"].append(user)
            rows["session_id"].append(session)
            rows["query"].append(text)
            rows["object_id"].append(o)
            rows["position"].append(p)
            rows["clicked"].append(int(lvl >= 1))
            rows["carted"].append(int(lvl >= 2))
            rows["purchased"].append(int(lvl >= 3))
    n = len(rows["query_id"])
    if n == 0:
        return
    report.impression_rows += n
    raw = pa.table({k: pa.array(v) for k, v in rows.items() if k != "defect"})
    defect = np.array(rows["defect"], dtype=object)
    wrong = defect != None  # noqa: E711 (elementwise)
    if wrong.any():
        conv.note("timestamp", "type", wrong, raw)
    conv.write({"request_id": raw["query_id"], "timestamp": raw["timestamp"], "subsecond_us": raw["subsecond_us"],
                "user_id": raw["user_id"], "session_id": raw["session_id"], "query": raw["query"],
                "item_id": raw["object_id"], "position": raw["position"], "clicked": raw["clicked"],
                "carted": raw["carted"], "purchased": raw["purchased"]}, raw, defect)
