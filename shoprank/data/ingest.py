"""Land raw data for the pipeline as the shoprank tables: the synthetic shop, a directory that already
holds the tables, or a real dataset converted by a loader (see `shoprank.data.sources` for the syntax)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from shoprank.config import ShoprankConfig
from shoprank.data.sources import open_location, parse_source, write_source_info
from shoprank.data.synthetic import generate
from shoprank.errors import SourceError

__all__ = ["TABLE_FILES", "ingest"]

TABLE_FILES = ("catalogue.parquet", "events.parquet", "impressions.parquet")


def ingest(source: str, out_dir: str | Path, config: ShoprankConfig) -> dict:
    """Write catalogue/events/impressions parquet (+ source.json) under `out_dir` from `source`:
    'synthetic', a directory (path, file:// or storage URI) with the three parquet tables,
    'esci:<location>[?options]' or 'events:<location>[?options]'. Returns what was landed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = parse_source(source)
    info: dict
    if spec.format == "synthetic":
        generate(config.data, out)
        info = {"format": "synthetic", "task": "search", "absent": {}}
        write_source_info(out, info)
    elif spec.format == "tables":
        fs, base = open_location(spec.location)
        missing = [f for f in TABLE_FILES if fs.get_file_info(f"{base}/{f}").type != pafs.FileType.File]
        if missing:
            raise FileNotFoundError(f"data source '{source}' lacks {missing}; expected {list(TABLE_FILES)} "
                                    "(other layouts: esci:<dir> or events:<dir>, see the README)")
        for f in TABLE_FILES:
            pafs.copy_files(f"{base}/{f}", str(out / f), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())
        info = {"format": "tables", "task": "search", "location": spec.location, "absent": {}}
        write_source_info(out, info)
    elif spec.format == "esci":
        from shoprank.data.sources.esci import load_esci

        info = load_esci(spec, out, config)
    elif spec.format == "events":
        from shoprank.data.sources.events import load_events

        info = load_events(spec, out, config)
    else:  # pragma: no cover - parse_source only returns known formats
        raise SourceError(f"unknown data source format '{spec.format}'")
    rows = {f.removesuffix(".parquet"): pq.ParquetFile(out / f).metadata.num_rows for f in TABLE_FILES}
    print(f"[ingest] {source} ({spec.format}): " + ", ".join(f"{k} {v:,}" for k, v in rows.items()), flush=True)
    for table, rep in info.get("conversion", {}).items():
        if rep.get("defects"):
            print(f"[ingest] {table}: rows with conversion defects (quarantined by preprocess): "
                  + ", ".join(f"{k}: {v:,}" for k, v in rep["defects"].items()), flush=True)
    return {"source": source, "format": spec.format, "rows": rows}
