"""Event logs (+ an optional catalogue) -> shoprank tables, for next-interaction recommendation.

The documented events table (`preset=shoprank`, the default): `timestamp` (epoch seconds or
milliseconds, ISO 8601 text, or a parquet timestamp; see shoprank.data.timestamps), `user_id`, `event`
(view/click/cart/purchase), `item_id`, optional `query`, `session_id`, `event_id`, as
`events.parquet|.csv` (or a directory of parts). The catalogue, optional, is `catalogue.parquet|.csv`
(`item_id`, `title`, `category`, `brand`, `price`; `itemid`/`product_id`/`categoryid`/`category_id` are
accepted as names too). Without a catalogue file, one is derived from the events: every item id, with its
category when the events carry one (Taobao).

Presets map common public layouts:

* shoprank (default): events.* with timestamp (numbers by their size, or ISO 8601), user_id, event
  (view/click/cart/purchase), item_id [, query, session_id, event_id];
* retailrocket: events.* with timestamp (ms), visitorid, event (view, addtocart -> cart,
  transaction -> purchase), itemid [, transactionid];
* taobao: UserBehavior.* without a header: user, item, category, behavior (pv -> view, fav -> click,
  cart, buy -> purchase), timestamp (s).

Options: `preset=`, `encoding=` (CSV text encoding, e.g. latin-1), `columns=src:dst,...` (extra renames
onto the shoprank names), `timestamp_unit=auto|s|ms|us|ns` (what numbers count in; auto tells it by the
size of each value, the default except for the presets that name their unit). Event names outside the
preset's map are kept and quarantined by validation as "unknown event type" (so the report shows them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from shoprank.config import ShoprankConfig
from shoprank.data.sources import (
    Converter,
    SourceSpec,
    check_options,
    columns_of,
    duplicate_ids_check,
    empty_table,
    find_table,
    open_location,
    read_chunks,
    table_file,
    text_of,
    write_source_info,
)
from shoprank.data.timestamps import UNITS
from shoprank.errors import SourceError
from shoprank.schema import CATALOGUE, EVENTS, IMPRESSIONS

__all__ = ["CATALOGUE_ALIASES", "OPTIONS", "PRESETS", "UNITS", "Preset", "load_events"]

OPTIONS = ("preset", "encoding", "columns", "timestamp_unit")
CATALOGUE_ALIASES = {"itemid": "item_id", "item": "item_id", "product_id": "item_id", "categoryid": "category",
                     "category_id": "category", "product_title": "title", "name": "title",
                     "product_brand": "brand"}


@dataclass(frozen=True)
class Preset:
    files: tuple[str, ...]
    columns: dict[str, str]  # source column -> shoprank column
    events: dict[str, str] = field(default_factory=dict)  # source event value -> shoprank event type
    names: tuple[str, ...] = ()  # headerless CSV: the column names
    unit: str = "auto"  # numbers in the timestamp column: s, ms, us, ns, or auto (by their size)


PRESETS = {
    "shoprank": Preset(("events",), {}),
    "retailrocket": Preset(("events",), {"visitorid": "user_id", "itemid": "item_id"},
                           {"view": "view", "addtocart": "cart", "transaction": "purchase"}, unit="ms"),
    "taobao": Preset(("UserBehavior", "userbehavior", "events"),
                     {"user": "user_id", "item": "item_id", "category": "category", "behavior": "event"},
                     {"pv": "view", "fav": "click", "cart": "cart", "buy": "purchase"},
                     names=("user", "item", "category", "behavior", "timestamp"), unit="s"),
}


def _renames(spec: SourceSpec, preset: Preset) -> dict[str, str]:
    renames = dict(preset.columns)
    extra = spec.options.get("columns", "")
    for pair in filter(None, (p.strip() for p in extra.split(","))):
        src, sep, dst = pair.partition(":")
        if not sep or dst not in EVENTS.names + ["category"]:
            raise SourceError(f"events option columns={extra!r}: use src:dst pairs with dst one of "
                              f"{EVENTS.names + ['category']}")
        renames[src] = dst
    return renames


def load_events(spec: SourceSpec, out_dir: str | Path, config: ShoprankConfig) -> dict:
    """Convert an event log (and catalogue) to the shoprank tables under `out_dir`; returns the report."""
    check_options(spec, OPTIONS)
    name = spec.options.get("preset", "shoprank")
    if name not in PRESETS:
        raise SourceError(f"events preset '{name}': choose one of {sorted(PRESETS)}")
    preset = PRESETS[name]
    unit = spec.options.get("timestamp_unit", preset.unit)
    if unit not in UNITS:
        raise SourceError(f"events option timestamp_unit={unit!r}: use one of {list(UNITS)} (auto: seconds, "
                          "milliseconds, ... told by the size of each value)")
    enc = spec.options.get("encoding", "utf-8")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fs, base = open_location(spec.location)
    info_base = fs.get_file_info(base)
    if info_base.type.name == "File":  # the location is the events file itself
        events_tf = table_file(fs, base)
        base = base.rsplit("/", 1)[0]
    else:
        events_tf = find_table(fs, base, preset.files, f"events (preset {name})")
    catalogue_tf = find_table(fs, base, ("catalogue", "catalog", "items"), "catalogue", required=False)
    renames = _renames(spec, preset)
    names = preset.names if events_tf.kind == "csv" else None
    src_cols = columns_of(events_tf, names=names, encoding=enc)
    mapped = {renames.get(c, c): c for c in src_cols}  # shoprank name -> source column
    missing = [c for c in ("timestamp", "user_id", "event", "item_id") if c not in mapped]
    if missing:
        hint = "" if spec.options.get("preset") else " (a known layout? add ?preset=retailrocket or ?preset=taobao)"
        raise SourceError(f"events ({events_tf.path}): column(s) {missing} missing after the '{name}' mapping; "
                          f"found {src_cols}{hint}")
    used = [mapped[c] for c in EVENTS.names + ["category"] if c in mapped]
    event_map = pa.array(list(preset.events)), pa.array(list(preset.events.values()))
    derive = catalogue_tf is None
    pairs: list[pa.Table] = []
    conv = Converter(EVENTS, out / "events.parquet", events_tf.name, config.validation,
                     {k: v for k, v in mapped.items()}, timestamp_unit=unit)
    for raw in read_chunks(events_tf, config.sources.chunk_rows, columns=used, names=names, encoding=enc):
        cols = {c: raw[mapped[c]] for c in EVENTS.names if c in mapped}
        if preset.events:
            ev = pc.utf8_trim_whitespace(text_of(cols["event"]))
            idx = pc.index_in(ev, value_set=event_map[0])
            cols["event"] = pc.if_else(pc.is_null(idx), ev, pc.take(event_map[1], idx))
        conv.write(cols, raw)
        if derive:
            item = text_of(cols["item_id"])
            cat = text_of(raw[mapped["category"]]) if "category" in mapped else pa.nulls(len(item), pa.string())
            t = pa.table({"item_id": item, "category": cat}).filter(pc.is_valid(item))
            pairs.append(_first_category([t]))
            if sum(p.num_rows for p in pairs) > 4 * config.sources.chunk_rows:
                pairs = [_first_category(pairs)]
        del raw, cols  # before the next read: one chunk in memory, not two
    ev_report = conv.close()

    cat_conv = Converter(CATALOGUE, out / "catalogue.parquet",
                         catalogue_tf.name if catalogue_tf else "catalogue (derived from the events)",
                         config.validation)
    if derive:
        items = _first_category(pairs)
        cat_conv.write({"item_id": items["item_id"], "category": items["category"]}, items)
        dup = 0
        absent_cat = ["title", "brand", "price"] + ([] if "category" in mapped else ["category"])
    else:
        ccols = columns_of(catalogue_tf, encoding=enc)
        cmap = {CATALOGUE_ALIASES.get(c, c): c for c in ccols}
        if "item_id" not in cmap:
            raise SourceError(f"catalogue ({catalogue_tf.path}): no item_id column; found {ccols}")
        parts = list(read_chunks(catalogue_tf, config.sources.chunk_rows,
                                 columns=[cmap[c] for c in CATALOGUE.names if c in cmap], encoding=enc))
        whole = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        dup = duplicate_ids_check(text_of(whole[cmap["item_id"]]), f"catalogue ({catalogue_tf.path})",
                                  cmap["item_id"], config.validation)
        for raw in parts:
            cat_conv.write({c: raw[cmap[c]] for c in CATALOGUE.names if c in cmap}, raw)
        absent_cat = [c for c in ("title", "category", "brand", "price") if c not in cmap]
    cat_report = cat_conv.close()
    empty_table(IMPRESSIONS, out / "impressions.parquet")
    info = {"format": "events", "task": "recommend", "preset": name, "location": spec.location,
            "options": spec.options, "timestamp_unit": unit,
            "files": {"events": list(events_tf.files),
                      "catalogue": list(catalogue_tf.files) if catalogue_tf else "derived from the events"},
            "columns": {k: v for k, v in mapped.items() if k in EVENTS.names + ["category"]},
            "absent": {"events": [c for c in ("event_id", "session_id", "query") if c not in mapped],
                       "catalogue": absent_cat, "impressions": []},
            "duplicate_catalogue_ids": dup,
            "conversion": {"events": ev_report, "catalogue": cat_report}}
    write_source_info(out, info)
    return info


def _first_category(pairs: list[pa.Table]) -> pa.Table:
    """One row per item id (in order of first appearance) with the first category seen for it."""
    t = pa.concat_tables(pairs) if len(pairs) > 1 else pairs[0]
    agg = t.group_by("item_id", use_threads=False).aggregate([("category", "first")])
    return pa.table({"item_id": agg["item_id"], "category": agg["category_first"]})
