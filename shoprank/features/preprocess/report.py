"""Stage 8, the report: golden_requests.json and report.json (validation counts, split sizes, vocabulary
sizes, partition and bucket counts, seconds and peak RSS per stage); the report is also returned."""

from __future__ import annotations

import json
import time

from shoprank.features.preprocess.affinity import AffinitySummary
from shoprank.features.preprocess.catalogue import CheckedCatalogue
from shoprank.features.preprocess.context import RunContext
from shoprank.features.preprocess.fit import FittedTransform
from shoprank.features.preprocess.requests import CleanPartitions
from shoprank.features.preprocess.rows import PartitionedRows
from shoprank.features.preprocess.splits import OrderedRequests
from shoprank.features.preprocess.tensors import WrittenSplits

__all__ = ["write_report"]


def write_report(ctx: RunContext, catalogue: CheckedCatalogue, rows: PartitionedRows, clean: CleanPartitions,
                 requests: OrderedRequests, fitted: FittedTransform, written: WrittenSplits,
                 affinity: AffinitySummary) -> dict:
    """Write golden_requests.json and report.json; returns the report."""
    (ctx.out / "golden_requests.json").write_text(json.dumps(list(written.golden), indent=1))
    timer = ctx.timer
    marks = timer.marks
    total = round(time.perf_counter() - timer.t0, 2)
    rows_in = rows.n_events + rows.n_impressions
    report = {"source": {k: ctx.info[k] for k in ("format", "task", "location", "preset") if k in ctx.info},
              "task": rows.task, "split_mode": requests.mode, "validation": clean.validation,
              "quarantined_rows": int(clean.quarantined), "splits": written.splits,
              "split_times": requests.split_times, "vocabulary_sizes": fitted.transform.sizes,
              "query_affinity_pairs": affinity.pairs,
              "rows_in": {"events": rows.n_events, "impressions": rows.n_impressions,
                          "catalogue": catalogue.report.rows_in},
              "partitions": {"events": rows.events.parts,
                             "impressions": rows.impressions.parts if rows.impressions else 0,
                             "buckets": requests.n_buckets},
              "timings": marks, "peak_rss_mib": timer.peak_mib, "seconds": total,
              "validate_split_rows_per_second": round(
                  rows_in / max(marks["validate_rows"] + marks["dedup_requests"], 1e-9))}
    (ctx.out / "report.json").write_text(json.dumps(report, indent=2))
    ctx.progress(f"[preprocess] done in {total}s")
    return report
