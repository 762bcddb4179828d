"""The preprocessing driver: sets up the run (features, transform and work directories, the quarantine
file, the stage clock), runs the stages in order, each on the frozen results of the earlier ones, and
removes the work directory whatever happens."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from shoprank.config import ShoprankConfig
from shoprank.data.sources import read_source_info
from shoprank.data.streaming import clear_directory
from shoprank.data.validation import QUARANTINE_SCHEMA, timestamp_window
from shoprank.features.preprocess.affinity import write_affinity
from shoprank.features.preprocess.catalogue import read_catalogue
from shoprank.features.preprocess.context import Progress, RunContext, StageTimer
from shoprank.features.preprocess.fit import fit_transform
from shoprank.features.preprocess.histories import write_ordered_buckets
from shoprank.features.preprocess.report import write_report
from shoprank.features.preprocess.requests import deduplicate
from shoprank.features.preprocess.rows import partition_rows
from shoprank.features.preprocess.splits import order_requests
from shoprank.features.preprocess.tensors import write_tensors

__all__ = ["preprocess"]


def preprocess(raw_dir: str | Path, features_dir: str | Path, transform_dir: str | Path,
               config: ShoprankConfig, progress: Progress = print, now: int | None = None) -> dict:
    """Run the whole preprocessing step; returns the report (also written to report.json).

    `now` (epoch seconds, default the clock) bounds the accepted timestamps (validation settings)."""
    out = Path(features_dir)
    out.mkdir(parents=True, exist_ok=True)
    Path(transform_dir).mkdir(parents=True, exist_ok=True)
    work = out / "_work"
    clear_directory(work)
    work.mkdir()
    quarantine = pq.ParquetWriter(str(out / "quarantine.parquet"), QUARANTINE_SCHEMA)
    try:
        window = timestamp_window(config.validation, now)
        ctx = RunContext(raw=Path(raw_dir), out=out, transform_dir=Path(transform_dir), work=work, config=config,
                         info=read_source_info(Path(raw_dir)), quarantine=quarantine, timer=StageTimer(),
                         progress=progress)
        # 1. The catalogue (in memory), then every row of events and impressions checked and partitioned.
        catalogue = read_catalogue(ctx)
        rows = partition_rows(ctx, catalogue.items, window)
        # 2. Per partition: duplicates out, clean rows kept, requests built.
        clean = deduplicate(ctx, catalogue, rows)
        # 3. Splits and the global order (split, request time, first row in the source); buckets of rows.
        requests = order_requests(ctx, rows, clean, len(catalogue.items))
        # 4. The transform, fitted on the training period only.
        fitted = fit_transform(ctx, catalogue.items, clean, requests)
        # 5. Histories per user partition; requests and rows written in order, one record batch per bucket.
        buckets = write_ordered_buckets(ctx, rows, clean, requests, len(catalogue.items), fitted.train_item_counts)
        # 6. One bucket at a time: model tensors appended to each split's files.
        written = write_tensors(ctx, catalogue.items, requests, fitted, buckets)
        # 7. The query affinity tables from the training split's labels; its input for every split.
        affinity = write_affinity(ctx, fitted)
        # 8. golden_requests.json and report.json.
        return write_report(ctx, catalogue, rows, clean, requests, fitted, written, affinity)
    finally:
        quarantine.close()
        clear_directory(work)
