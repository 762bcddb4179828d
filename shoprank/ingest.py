"""Land raw data for the pipeline: the synthetic shop, or a directory that already holds the tables."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq

from shoprank.config import ShoprankConfig
from shoprank.data import generate

TABLE_FILES = ("catalogue.parquet", "events.parquet", "impressions.parquet")


def ingest(source: str, out_dir: str | Path, config: ShoprankConfig) -> dict:
    """`source` is 'synthetic' or a local directory (optionally file://) with the three parquet tables."""
    out = Path(out_dir)
    if source == "synthetic":
        generate(config.data, out)
    else:
        src = Path(source.removeprefix("file://"))
        missing = [f for f in TABLE_FILES if not (src / f).exists()]
        if "://" in source and not source.startswith("file://"):
            raise ValueError(f"data source '{source}': only 'synthetic' and local directories are supported")
        if missing:
            raise FileNotFoundError(f"data source '{source}' lacks {missing}; expected {list(TABLE_FILES)}")
        out.mkdir(parents=True, exist_ok=True)
        for f in TABLE_FILES:
            shutil.copy(src / f, out / f)
    rows = {f.removesuffix(".parquet"): pq.ParquetFile(out / f).metadata.num_rows for f in TABLE_FILES}
    print(f"[ingest] {source}: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()), flush=True)
    return {"source": source, "rows": rows}
