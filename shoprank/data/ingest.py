"""Land raw data for the pipeline as the shoprank tables: the synthetic shop, a directory that already
holds the tables, or a real dataset converted by a loader (see `shoprank.data.sources` for the syntax)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from shoprank.config import ShoprankConfig
from shoprank.data.sources import (
    Converter,
    SourceSpec,
    check_options,
    columns_of,
    find_table,
    open_location,
    parse_source,
    read_chunks,
    write_source_info,
)
from shoprank.data.synthetic import generate
from shoprank.data.timestamps import UNITS
from shoprank.errors import SourceError
from shoprank.schema import TABLES

__all__ = ["TABLE_FILES", "TABLE_OPTIONS", "ingest"]

TABLE_FILES = ("catalogue.parquet", "events.parquet", "impressions.parquet")
TABLE_OPTIONS = ("timestamp_unit", "encoding")


def ingest(source: str, out_dir: str | Path, config: ShoprankConfig) -> dict:
    """Write catalogue/events/impressions parquet (+ source.json) under `out_dir` from `source`:
    'synthetic', a directory (path, file:// or storage URI) with the three parquet tables,
    'esci:<location>[?options]', 'events:<location>[?options]' or 'ubi:<location>[?options]'. Returns what was
    landed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = parse_source(source)
    info: dict
    if spec.format == "synthetic":
        generate(config.data, out)
        info = {"format": "synthetic", "task": "search", "absent": {}}
        write_source_info(out, info)
    elif spec.format == "tables":
        info = _land_tables(spec, out, config)
        write_source_info(out, info)
    elif spec.format == "esci":
        from shoprank.data.sources.esci import load_esci

        info = load_esci(spec, out, config)
    elif spec.format == "events":
        from shoprank.data.sources.events import load_events

        info = load_events(spec, out, config)
    elif spec.format == "ubi":
        from shoprank.data.sources.ubi import load_ubi

        info = load_ubi(spec, out, config)
    else:  # pragma: no cover - parse_source only returns known formats
        raise SourceError(f"unknown data source format '{spec.format}'")
    rows = {f.removesuffix(".parquet"): pq.ParquetFile(out / f).metadata.num_rows for f in TABLE_FILES}
    print(f"[ingest] {source} ({spec.format}): " + ", ".join(f"{k} {v:,}" for k, v in rows.items()), flush=True)
    if "ubi" in info:
        _print_ubi(info["ubi"])
    for table, rep in info.get("conversion", {}).items():
        if rep.get("defects"):
            print(f"[ingest] {table}: rows with conversion defects (quarantined by preprocess): "
                  + ", ".join(f"{k}: {v:,}" for k, v in rep["defects"].items()), flush=True)
    return {"source": source, "format": spec.format, "rows": rows}


def _land_tables(spec: SourceSpec, out: Path, config: ShoprankConfig) -> dict:
    """A directory of the three shoprank tables. Parquet files are copied as they are (preprocess reads their
    timestamps: numbers in `timestamp_unit`, ISO 8601 text, parquet timestamps); CSV files (or directories of
    parts) are converted to parquet, timestamps to epoch seconds plus microseconds."""
    check_options(spec, TABLE_OPTIONS)
    unit = spec.options.get("timestamp_unit", "auto")
    if unit not in UNITS:
        raise SourceError(f"tables option timestamp_unit={unit!r}: use one of {list(UNITS)} (auto: seconds, "
                          "milliseconds, ... told by the size of each value)")
    fs, base = open_location(spec.location)
    found = {f: find_table(fs, base, (f.removesuffix(".parquet"),), f, required=False) for f in TABLE_FILES}
    missing = [f for f, tf in found.items() if tf is None]
    if missing:
        raise SourceError(f"data source '{spec.location}' lacks {missing}; expected {list(TABLE_FILES)} (or .csv; "
                          "other layouts: esci:<dir>, events:<dir> or ubi:<dir>, see the README)")
    info = {"format": "tables", "task": "search", "location": spec.location, "absent": {}, "options": spec.options}
    if all(tf.kind == "parquet" and tf.files == (tf.path,) for tf in found.values()):
        for f, tf in found.items():
            pafs.copy_files(tf.path, str(out / f), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        return info | {"timestamp_unit": unit}
    enc = spec.options.get("encoding", "utf-8")
    conversion = {}
    for f, tf in found.items():
        schema = TABLES[f.removesuffix(".parquet")]
        present = [c for c in columns_of(tf, encoding=enc) if c in schema.names]
        conv = Converter(schema, out / f, tf.name, config.validation, timestamp_unit=unit)
        try:
            for raw in read_chunks(tf, config.sources.chunk_rows, columns=present, encoding=enc):
                conv.write({c: raw[c] for c in present}, raw)
        except SourceError as e:
            if "no rows" not in str(e) or schema.name == "catalogue":  # events or impressions may be empty
                raise
        conversion[schema.name] = conv.close()
    # The landed tables hold epoch seconds now; the source's unit is kept for the record.
    return info | {"timestamp_unit": "s", "source_timestamp_unit": unit, "conversion": conversion}


def _print_ubi(rep: dict) -> None:
    """What the UBI loader read, made and kept out (source.json "ubi")."""
    docs = rep["documents"]
    print(f"[ingest] UBI: read {docs['ubi_queries']:,} ubi_queries and {docs['ubi_events']:,} ubi_events documents; "
          f"actions " + ", ".join(f"{k} {v:,}" for k, v in rep["actions"].items()), flush=True)
    print(f"[ingest] UBI: {rep['requests']:,} requests ({rep['lists_from_hit_ids']:,} shown lists from hit ids) with "
          f"{rep['impression_rows']:,} impression rows; position ordinals {rep['position_base']}-based", flush=True)
    kept_out = {f"unknown action {k}": v for k, v in rep["unknown_actions"].items()} | {
        k.replace("_", " "): rep[k] for k in ("impressions_without_query", "impressions_without_object",
                                              "queries_without_a_list", "interactions_without_a_list",
                                              "duplicate_queries", "unreadable_lines", "unreadable_positions")
        if rep[k]} | {f"documents of index {k}": v for k, v in rep["other_index_documents"].items()}
    if kept_out:
        print("[ingest] UBI: kept out: " + ", ".join(f"{k}: {v:,}" for k, v in kept_out.items()), flush=True)
