"""Stage 3, splits, global order and buckets.

Splits: by request time (train < t1 <= validation < t2 <= test, the time quantiles of the shares) when
requests have timestamps; by the impressions' `split` column when it is filled (ESCI: "train"/"test";
validation is a hash-chosen share of train, validation_share / (train_share + validation_share)); by a
hash of the request id when there are neither.

Requests then get their global order (split, time to the microsecond, first row in the source): the order in which the
features directory holds them. The ordered requests are cut into buckets of about `bucket_rows` rows that
never straddle two splits; later stages write rows by bucket and turn one bucket at a time into tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from shoprank.config import ShoprankConfig
from shoprank.data.streaming import mix64, unit_interval
from shoprank.errors import DataValidationError
from shoprank.features.preprocess.context import RunContext, absent_columns
from shoprank.features.preprocess.requests import CleanPartitions
from shoprank.features.preprocess.rows import PartitionedRows

__all__ = ["OrderedRequests", "assign_splits", "bucket_of", "order_requests"]


@dataclass(frozen=True)
class OrderedRequests:
    """Per request (partition by partition, as CleanPartitions.request_files hold them): its split, its
    global order and its scalars; and the split and bucket boundaries in that order."""

    split: np.ndarray  # int8: 0 train, 1 validation, 2 test
    order: np.ndarray  # int64: position in the global order (split, time, first row)
    ts: np.ndarray  # int64: request time, epoch seconds (0 where the source has none)
    sub: np.ndarray  # int32: the microseconds within that second
    first_row: np.ndarray  # int64: the request's first source row (recommend: its target event)
    offsets: np.ndarray  # the requests of partition p are [offsets[p], offsets[p + 1])
    mode: str  # how splits were assigned: "time", "column" or "hash"
    split_times: list[int] | None  # [t1, t2] for time splits
    split_start: np.ndarray  # first order of each split, and the total (4 values)
    split_rows: list[int]  # rows per split
    edges: np.ndarray  # bucket b holds the orders [edges[b], edges[b + 1])
    bucket_split: np.ndarray  # the split of each bucket
    negatives: int  # recommend: sampled negatives per request (0 for search)

    @property
    def n_buckets(self) -> int:
        return len(self.edges) - 1

    def local(self, name: str, p: int) -> np.ndarray:
        """A per-request array ("split", "order", "ts", "sub" or "first_row") restricted to partition `p`."""
        values: np.ndarray = getattr(self, name)
        return values[self.offsets[p]: self.offsets[p + 1]]


def assign_splits(req: Mapping[str, np.ndarray], has_ts: bool, config: ShoprankConfig
                  ) -> tuple[np.ndarray, str, list | None]:
    """Split index per request (0 train, 1 validation, 2 test), the mode, and the split times."""
    fc = config.features
    n = len(req["ts"])
    u = unit_interval(mix64(req["hash"] ^ np.uint64(0x5EED)))
    col = req["split_col"]
    if (col >= 0).any():
        val_share = fc.validation_share / max(fc.train_share + fc.validation_share, 1e-9)
        by_hash = np.select([u < fc.train_share, u < fc.train_share + fc.validation_share], [0, 1], 2)
        split = np.where(col == 0, np.where(u < val_share, 1, 0), np.where(col > 0, col, by_hash))
        return split.astype(np.int8), "column", None
    if has_ts and n:
        shares = np.cumsum([fc.train_share, fc.validation_share])
        t1, t2 = np.quantile(req["ts"], shares)
        split = np.select([req["ts"] < t1, req["ts"] < t2], [0, 1], 2)
        return split.astype(np.int8), "time", [int(t1), int(t2)]
    split = np.select([u < fc.train_share, u < fc.train_share + fc.validation_share], [0, 1], 2)
    return split.astype(np.int8), "hash", None


def order_requests(ctx: RunContext, rows: PartitionedRows, clean: CleanPartitions, n_items: int
                   ) -> OrderedRequests:
    """Load the request scalars (consuming their pieces), assign splits, order requests and cut buckets;
    `n_items` (clean catalogue items) bounds the negatives of recommend."""
    req = clean.requests.load()
    n = len(req["ts"])
    has_ts = rows.task == "recommend" or "timestamp" not in absent_columns(ctx.info, "impressions")
    split, mode, split_times = assign_splits(req, has_ts, ctx.config)
    del req["hash"], req["split_col"]
    negatives = 0
    if rows.task == "recommend":
        negatives = min(ctx.config.recommend.negatives, n_items - 1)
        if negatives < 1:
            raise DataValidationError("recommend: the catalogue needs at least two items for negatives")
        req["n_rows"][:] = 1 + negatives
    order_idx = np.lexsort((req["first_row"], req["sub"], req["ts"], split))
    order = np.empty(n, np.int64)
    order[order_idx] = np.arange(n)
    split_sorted = split[order_idx]
    split_start = np.searchsorted(split_sorted, np.arange(4)).astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(req.pop("n_rows")[order_idx], dtype=np.int64)])
    del order_idx
    split_rows = [int(cum[split_start[s + 1]] - cum[split_start[s]]) for s in range(3)]
    # Buckets: consecutive requests of about bucket_rows rows, never straddling two splits.
    bucket_rows = ctx.config.preprocess.bucket_rows
    cuts = np.searchsorted(cum, np.arange(bucket_rows, cum[-1], bucket_rows), side="left")
    edges = np.unique(np.concatenate([[0, n], cuts, split_start])).astype(np.int64)
    bucket_split = split_sorted[edges[:-1].clip(0, max(n - 1, 0))]
    parts = max(rows.events.parts, len(clean.request_files))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(req.pop("part"), minlength=parts))])
    return OrderedRequests(split, order, req["ts"], req["sub"], req["first_row"], offsets, mode, split_times,
                           split_start, split_rows, edges, bucket_split, negatives)


def bucket_of(edges: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """The bucket of each request order."""
    return np.searchsorted(edges, orders, side="right") - 1
