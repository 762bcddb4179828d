"""Data: where rows come from and whether they are fit to use.

`synthetic` (the seeded shop with ground truth), `sources/` (ESCI, event logs, shoprank tables from any path or
storage URI), `ingest` (either of them -> the shoprank tables), `validation` (row checks, the quarantine) and
`streaming` (bounded-memory parquet, partitions and .npy writers). Imports only the base modules.
"""

__all__ = ["ingest", "sources", "streaming", "synthetic", "validation"]
