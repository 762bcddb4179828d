"""Preprocess: validate, split, fit the transform on the training period, build behaviour sequences, and
write model tensors per split -- streaming, with a bounded working set whatever the data size.

Two tasks share the pipeline:

* search (impressions present: the synthetic shop, ESCI, your own tables): one request per `request_id`,
  its impression rows the candidates;
* recommend (an event log without impressions): every event of a `recommend.target_events` type is a
  request whose positive is its item, with `recommend.negatives` sampled negatives (next-interaction
  ranking); histories hold the user's `recommend.history_events` strictly before it.

Splits: by request time (train < t1 <= validation < t2 <= test, the time quantiles of the shares) when
requests have timestamps; by the impressions' `split` column when it is filled (ESCI: "train"/"test";
validation is a hash-chosen share of train, validation_share / (train_share + validation_share)); by a
hash of the request id when there are neither. The vocabularies are fitted on the training period only.

How it streams (sizes from `config.preprocess`): the catalogue is validated in memory; events and impressions
are read by parquet row-group batches, checked row by row (shoprank.data.validation) and written to hash
partitions on disk (events by user, impressions by request); each partition is then loaded alone to find
duplicates and build requests. Only per-request scalars (time, first row, size, split) are global. Requests
get their global order (split, time, first row); histories are built per user partition, in time order to the
microsecond where the log has sub-second times (`subsecond_us`); rows and requests are written to files sorted
by that order in buckets of about `bucket_rows` rows, and the last pass turns one bucket at a time into model
tensors, appended to the split's .npy files. The tensors are assembled from `FeatureTransform.transform`
outputs per catalogue item and per request (the transform's outputs depend only on those), and the assembly is
checked against a direct `transform` call on raw fields for requests of every split.

The stages, one module each, pass frozen dataclasses to each other (`driver.preprocess` runs them):
    catalogue.read_catalogue          -> CheckedCatalogue  the clean items and the catalogue's report
    rows.partition_rows               -> PartitionedRows   row checks, hash partitions on disk
    requests.deduplicate              -> CleanPartitions   duplicates out, clean rows and requests
    splits.order_requests             -> OrderedRequests   splits, global order, buckets
    fit.fit_transform                 -> FittedTransform   vocabularies of the training period, item tensors
    histories.write_ordered_buckets   -> OrderedBuckets    histories; requests and rows in order, bucketed
    tensors.write_tensors             -> WrittenSplits     model tensors per split, golden requests
    affinity.write_affinity           -> AffinitySummary   query -> category/brand tables from the training
                                                           labels; the pair input of every split
    report.write_report               -> dict              golden_requests.json, report.json

Layout of the features directory (one folder per split):
    <split>/<input>.npy    model inputs (int32), one row per impression, rows of a request contiguous
    <split>/<column>.npy   clicked, carted, purchased, gain, oracle, position, request, top_category
    <split>/rows.parquet   request_id and item_id of every row
    <split>/meta.json      row count, top-category names
    quarantine.parquet     every rejected row with its reason
    golden_requests.json   raw test requests (ids and text) for the serving path checks
    report.json            validation counts, split sizes, vocabulary sizes, timings
"""

from shoprank.features.preprocess.catalogue import CatalogueData
from shoprank.features.preprocess.driver import preprocess
from shoprank.features.preprocess.fit import NO_CATEGORY, ROW_INPUTS, item_tensors
from shoprank.features.preprocess.histories import REQ_OUT, ROW_OUT, history_rows, sample_negatives
from shoprank.features.preprocess.rows import EV_PART, IMP_PART
from shoprank.features.preprocess.splits import assign_splits
from shoprank.features.preprocess.tensors import HISTORY_INPUTS, query_tensors

__all__ = ["EV_PART", "HISTORY_INPUTS", "IMP_PART", "NO_CATEGORY", "REQ_OUT", "ROW_INPUTS", "ROW_OUT",
           "CatalogueData", "assign_splits", "history_rows", "item_tensors", "preprocess", "query_tensors",
           "sample_negatives"]
