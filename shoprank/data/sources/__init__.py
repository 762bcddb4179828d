"""Data sources: where the shop data come from and how other layouts become the shoprank tables.

A source is named by one string (the `data_source` pipeline parameter, `make run DATA=...`):

    synthetic                                  the seeded generator (shoprank.data.synthetic)
    /path/to/dir | file:///dir | tables:/dir   catalogue.parquet, events.parquet, impressions.parquet
    esci:/path/to/dir[?locale=us&version=small]
                                               Amazon Shopping Queries (ESCI) examples + products
    events:/path/to/dir[?preset=retailrocket|taobao|shoprank&encoding=latin-1&columns=src:dst,...]
                                               an event log (+ optional catalogue): recommendation
    ubi:/path/to/dir[?user=client_id&position_base=0&actions=name:type,...]
                                               OpenSearch User Behavior Insights: ubi_queries + ubi_events

The location may be a local path, `file://`, or a storage URI that pyarrow reads: `s3://bucket/prefix`
(credentials from the usual AWS variables / instance role), `gs://bucket/prefix` (Google default
credentials), `hdfs://`. `pvc://` is a volume: mount it on the ingest task and pass the mount path.

Loaders (`esci.py`, `events.py`, `ubi.py`) stream the source (parquet by row-group batches, CSV in blocks, .gz/.bz2/.zst
CSV too), rename and map columns, convert every value to its schema type, and write the shoprank tables
as parquet row groups. Nothing is dropped there: a value that cannot be converted (wrong type, invalid
UTF-8, an unknown ESCI label) nulls the field and marks the row with a `_defect` reason, and the
preprocess step quarantines it through the same validation code as everything else. Problems that make
a file unusable fail at once with a message naming the file and column: empty files, missing columns,
a column that is mostly of another type or another text encoding, a catalogue of duplicated ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from shoprank.config import ValidationConfig
from shoprank.data.streaming import iter_parquet
from shoprank.data.timestamps import check_unit, read_timestamps
from shoprank.data.validation import Coerced, coerce_arrow, null_where, plain_array, text_from_binary
from shoprank.errors import DataValidationError, SourceError
from shoprank.schema import DEFECT, RECORD, TableSchema

__all__ = [
    "FORMATS",
    "REMOTE_SCHEMES",
    "SOURCE_FILE",
    "TABLE_EXTENSIONS",
    "Converter",
    "SourceSpec",
    "TableFile",
    "check_options",
    "columns_of",
    "csv_header",
    "duplicate_ids_check",
    "empty_table",
    "find_table",
    "open_location",
    "parse_source",
    "read_chunks",
    "read_source_info",
    "table_file",
    "text_of",
    "write_source_info",
]

FORMATS = ("synthetic", "tables", "esci", "events", "ubi")
SOURCE_FILE = "source.json"
REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs")
TABLE_EXTENSIONS = (".parquet", ".pq", ".csv", ".csv.gz", ".csv.bz2", ".csv.zst", ".tsv", ".tsv.gz")


@dataclass(frozen=True)
class SourceSpec:
    format: str
    location: str = ""
    options: dict[str, str] = field(default_factory=dict)

    @property
    def remote(self) -> bool:
        return self.location.split("://", 1)[0] in REMOTE_SCHEMES if "://" in self.location else False


def parse_source(source: str) -> SourceSpec:
    """`format:location?options` (see the module doc); a bare path or URI means the three tables."""
    text = source.strip()
    if text in ("", "synthetic"):
        return SourceSpec("synthetic")
    fmt, location = "tables", text
    head, sep, rest = text.partition(":")
    if sep and not rest.startswith("//") and head in FORMATS:
        fmt, location = head, rest
    elif sep and not rest.startswith("//") and "/" not in head and len(head) > 1:
        raise SourceError(f"data source '{source}': unknown format '{head}', use one of {list(FORMATS)}")
    location, _, query = location.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    if not location:
        raise SourceError(f"data source '{source}': no path after '{fmt}:'")
    return SourceSpec(fmt, location, options)


def check_options(spec: SourceSpec, allowed: Sequence[str]) -> None:
    unknown = sorted(set(spec.options) - set(allowed))
    if unknown:
        raise SourceError(f"data source format '{spec.format}' has no option(s) {unknown}; it takes {list(allowed)}")


def open_location(location: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for a local path, file:// or a storage URI."""
    if location.startswith("pvc://"):
        raise SourceError(f"'{location}': a PVC is not readable by URI; mount the claim on the ingest task and "
                          "pass the mount path")
    if location.startswith(("http://", "https://")):
        raise SourceError(f"'{location}': http(s) is not supported; copy the files to a path, s3:// or gs://")
    if "://" in location and not location.startswith("file://"):
        scheme = location.split("://", 1)[0]
        if scheme not in REMOTE_SCHEMES:
            raise SourceError(f"'{location}': unsupported scheme '{scheme}' (local paths, file://, "
                              f"{', '.join(s + '://' for s in REMOTE_SCHEMES)})")
        try:
            return pafs.FileSystem.from_uri(location)
        except (pa.ArrowException, OSError) as e:
            raise SourceError(f"'{location}': cannot open ({e})") from e
    path = Path(location.removeprefix("file://")).expanduser().resolve()
    return pafs.LocalFileSystem(), str(path)


@dataclass(frozen=True)
class TableFile:
    """One source table: a file, or a directory of files of one kind (parquet parts, CSV parts)."""

    fs: pafs.FileSystem
    path: str
    kind: str  # "parquet" or "csv"
    files: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def _kind(path: str) -> str | None:
    p = path.lower()
    if p.endswith((".parquet", ".pq")):
        return "parquet"
    if any(p.endswith(e) for e in (".csv", ".csv.gz", ".csv.bz2", ".csv.zst", ".tsv", ".tsv.gz")):
        return "csv"
    return None


def table_file(fs: pafs.FileSystem, path: str) -> TableFile:
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise SourceError(f"'{path}' does not exist")
    if info.type == pafs.FileType.File:
        kind = _kind(path)
        if kind is None:
            raise SourceError(f"'{path}': not a parquet or CSV file (by its extension: {list(TABLE_EXTENSIONS)})")
        return TableFile(fs, path, kind, (path,))
    parts = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                   if i.type == pafs.FileType.File and _kind(i.path) and not i.base_name.startswith((".", "_")))
    kinds = {_kind(p) for p in parts}
    if not parts:
        raise SourceError(f"'{path}' is a directory without parquet or CSV files")
    if len(kinds) > 1:
        raise SourceError(f"'{path}' mixes parquet and CSV files; keep one kind per table")
    return TableFile(fs, path, kinds.pop(), tuple(parts))


def find_table(fs: pafs.FileSystem, base: str, stems: Sequence[str], what: str, required: bool = True
               ) -> TableFile | None:
    """The first of `stems` (with any supported extension, or as a directory) under `base`."""
    for stem in stems:
        for ext in ("",) + TABLE_EXTENSIONS:
            path = f"{base.rstrip('/')}/{stem}{ext}"
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.File and ext or info.type == pafs.FileType.Directory and not ext:
                return table_file(fs, path)
    if required:
        listing = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(base)))[:20]
        names = " or ".join(f"'{s}.parquet|.csv'" for s in stems)
        raise SourceError(f"{what}: no {names} in '{base}' (it holds {listing})")
    return None


# --- reading in chunks -------------------------------------------------------------------------------
def _csv_stream(tf: TableFile, path: str):
    return tf.fs.open_input_stream(path, compression="detect")


def csv_header(tf: TableFile, path: str, encoding: str, delimiter: str) -> list[str]:
    with _csv_stream(tf, path) as fh:
        head = fh.read(1 << 16)
    if not head.strip():
        raise SourceError(f"{path}: the file is empty (0 rows)")
    line = head.splitlines()[0]
    try:
        text = line.decode(encoding)
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: the header is not {encoding} text ({e}); add ?encoding=... to the source "
                          "(e.g. latin-1) or re-encode the file as UTF-8") from e
    return [c.strip().strip('"') for c in text.split(delimiter)]


def read_chunks(tf: TableFile, chunk_rows: int, *, columns: Sequence[str] | None = None,
                names: Sequence[str] | None = None, encoding: str = "utf-8") -> Iterator[pa.Table]:
    """Stream a table in chunks of about `chunk_rows` rows.

    Parquet is read by row-group batches (only `columns`, when given). CSV is read in blocks with every
    column as raw bytes, so a stray non-numeric value or a non-UTF-8 byte becomes a per-row defect
    instead of failing the file; `names` gives the columns of a headerless CSV.
    """
    rows = 0
    for path in tf.files:
        if tf.kind == "parquet":
            try:
                pf = pq.ParquetFile(tf.fs.open_input_file(path))
            except (pa.ArrowInvalid, OSError) as e:
                size = tf.fs.get_file_info(path).size
                if size == 0:
                    raise SourceError(f"{path}: the file is empty (0 bytes)") from e
                raise SourceError(f"{path}: not a readable parquet file ({e})") from e
            present = pf.schema_arrow.names
            cols = [c for c in columns if c in present] if columns is not None else None
            for table in iter_parquet(pf, chunk_rows, cols):
                rows += table.num_rows
                yield table
            continue
        delimiter = "\t" if ".tsv" in path.lower() else ","
        header = list(names) if names else csv_header(tf, path, encoding, delimiter)
        if columns is not None:
            include = [c for c in header if c in columns]
        else:
            include = header
        read = pacsv.ReadOptions(column_names=list(names) if names else None, encoding=encoding,
                                 block_size=max(1 << 20, min(64 << 20, chunk_rows * 48)))
        convert = pacsv.ConvertOptions(column_types={c: pa.binary() for c in header}, include_columns=include,
                                       strings_can_be_null=False, quoted_strings_can_be_null=False)
        parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
        try:
            with _csv_stream(tf, path) as fh:
                reader = pacsv.open_csv(fh, read_options=read, parse_options=parse, convert_options=convert)
                for batch in reader:
                    rows += batch.num_rows
                    yield pa.Table.from_batches([batch])
        except pa.ArrowInvalid as e:
            msg = str(e)
            if "Empty CSV file" in msg:
                raise SourceError(f"{path}: the file is empty (0 rows)") from e
            if "Expected" in msg and "columns" in msg:
                raise SourceError(f"{path}: rows do not have the same number of fields as the header ({msg.strip()})"
                                  ) from e
            raise SourceError(f"{path}: cannot parse the CSV ({msg.strip()})") from e
    if rows == 0:
        raise SourceError(f"{tf.path}: the table has no rows" + (" (only a header)" if tf.kind == "csv" else ""))


def columns_of(tf: TableFile, names: Sequence[str] | None = None, encoding: str = "utf-8") -> list[str]:
    """The column names of a source table (without reading its rows)."""
    path = tf.files[0]
    if tf.kind == "parquet":
        try:
            return pq.ParquetFile(tf.fs.open_input_file(path)).schema_arrow.names
        except (pa.ArrowInvalid, OSError) as e:
            if tf.fs.get_file_info(path).size == 0:
                raise SourceError(f"{path}: the file is empty (0 bytes)") from e
            raise SourceError(f"{path}: not a readable parquet file ({e})") from e
    if names:
        return list(names)
    return csv_header(tf, path, encoding, "\t" if ".tsv" in path.lower() else ",")


# --- conversion to the shoprank tables ---------------------------------------------------------------
class Converter:
    """Converts mapped chunks to a shoprank table's schema and writes them as parquet row groups.

    A value that does not convert nulls the field and marks the row's `_defect` (first problem in
    schema order) with the row as JSON in `_record`; `check_columns` fails early when one column is
    mostly wrong (another type, another text encoding) instead of quarantining most of the table.
    """

    def __init__(self, schema: TableSchema, path: str | Path, source_name: str, validation: ValidationConfig,
                 column_sources: dict[str, str] | None = None, timestamp_unit: str = "auto"):
        self.schema = schema
        self.timestamp_unit = check_unit(timestamp_unit)
        self.source_name = source_name
        self.validation = validation
        self.column_sources = column_sources or {}
        self.arrow = pa.schema(list(schema.arrow) + [pa.field(DEFECT, pa.string()), pa.field(RECORD, pa.string())])
        self.writer = pq.ParquetWriter(str(path), self.arrow)
        self.rows = 0
        self.defects: dict[str, int] = {}
        self.bad_values: dict[str, list[int]] = {}  # column -> [count, rows seen]
        self.examples: dict[str, list[str]] = {}

    def write(self, chunk: dict[str, pa.Array], raw: pa.Table, defect: np.ndarray | None = None) -> None:
        """`chunk`: schema column -> values of any type (missing columns are null); `raw`: the source rows
        (for `_record`); `defect`: optional per-row loader reasons (object array, None = fine)."""
        n = raw.num_rows
        reason = np.full(n, None, object) if defect is None else defect.copy()
        arrays = []
        times = None
        if chunk.get("timestamp") is not None and "timestamp" in self.schema.names:
            # Times as logged (epoch numbers in the unit, ISO 8601, arrow timestamps) -> seconds + microseconds.
            times = read_timestamps(chunk["timestamp"], self.timestamp_unit)
            if chunk.get("subsecond_us") is None:
                chunk = dict(chunk, subsecond_us=times.arrays()[1])
        for col in self.schema.columns:
            values = chunk.get(col.name)
            if values is None:
                arrays.append(pa.nulls(n, col.type))
                continue
            if col.name == "timestamp" and times is not None:
                c = Coerced(times.seconds, times.present, times.wrong)
            else:
                c = coerce_arrow(values, col.type)
            for mask, kind in ((c.utf8, "utf8"), (c.wrong, "type")):
                if mask is not None and mask.any():
                    reason[mask & (reason == None)] = _why(col.name, kind)  # noqa: E711 (elementwise)
                    self.note(col.name, kind, mask, raw)
            for key in self.bad_values:
                if key.startswith(col.name + "|"):
                    self.bad_values[key][1] = self.rows + n
            if isinstance(c.values, pa.Array):
                if pa.types.is_string(col.type):  # "" and null both mean missing: one spelling (CSV has no null)
                    empty = pc.equal(pc.binary_length(c.values), 0)
                    c.values = null_where(empty, c.values)
                arrays.append(c.values.cast(col.type))
            else:
                vals = np.where(c.present, c.values, 0) if pa.types.is_integer(col.type) else c.values
                arrays.append(pa.array(vals, mask=~c.present).cast(col.type, safe=False))
        bad = np.flatnonzero(reason != None)  # noqa: E711
        defects = pa.array(reason, pa.string())
        record = pa.nulls(n, pa.string())
        if bad.size:
            rows = raw.take(pa.array(bad)).to_pylist()
            recs = [json.dumps({k: v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else v
                                for k, v in r.items()}, default=str) for r in rows]
            full = np.full(n, None, object)
            full[bad] = recs
            record = pa.array(full, pa.string())
            for why in reason[bad]:
                self.defects[why] = self.defects.get(why, 0) + 1
        self.writer.write_table(pa.Table.from_arrays(arrays + [defects, record], schema=self.arrow))
        self.rows += n
        self.check_columns(min_rows=100_000)  # fail fast on a big file, judge small ones as a whole

    def note(self, column: str, kind: str, mask: np.ndarray, raw: pa.Table) -> None:
        """Count values of `column` that did not convert (`kind` "type" or "utf8"), keep a few examples.
        Loaders that convert a column themselves (timestamps) call it too, and mark the rows' `_defect`."""
        key = f"{column}|{kind}"
        stat = self.bad_values.setdefault(key, [0, self.rows + raw.num_rows])
        stat[0] += int(mask.sum())
        ex = self.examples.setdefault(key, [])
        if len(ex) < 3:
            src = self.column_sources.get(column, column)
            raw_col = raw.column(src) if src in raw.column_names else None
            for i in np.flatnonzero(mask)[: 3 - len(ex)]:
                v = raw_col[int(i)].as_py() if raw_col is not None else None
                ex.append(repr(v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else v))

    def check_columns(self, min_rows: int = 0) -> None:
        for key, (bad, seen) in self.bad_values.items():
            if not seen or seen < min_rows or bad / seen <= self.validation.max_bad_share:
                continue
            col, kind = key.split("|")
            src = self.column_sources.get(col, col)
            examples = ", ".join(self.examples.get(key, []))
            where = f"{self.source_name}: column '{src}'" + (f" (-> {col})" if src != col else "")
            if kind == "utf8":
                raise DataValidationError(
                    f"{where} is not UTF-8 text in {bad:,} of {seen:,} rows (e.g. {examples}). The file looks "
                    "like another encoding: add ?encoding=latin-1 (or the right one) to the data source, or "
                    "re-encode it (iconv -f latin1 -t utf-8)")
            col_type = next(c.type for c in self.schema.columns if c.name == col)
            what = "times (epoch s/ms or ISO 8601)" if col == "timestamp" else str(col_type)
            raise DataValidationError(
                f"{where} mixes types: {bad:,} of {seen:,} values are not {what} (e.g. {examples}); "
                f"over the {self.validation.max_bad_share:.1%} budget (validation.max_bad_share). Fix the column "
                "or map another one")

    def close(self) -> dict:
        self.writer.close()
        self.check_columns()
        return {"rows": self.rows, "defects": dict(sorted(self.defects.items(), key=lambda kv: -kv[1]))}


def text_of(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A column as UTF-8 strings (raw CSV bytes decoded; invalid UTF-8 becomes null; numbers as text)."""
    arr = plain_array(values)
    if pa.types.is_binary(arr.type):
        arr, _ = text_from_binary(arr)
    return arr if pa.types.is_string(arr.type) else arr.cast(pa.string())


def _why(column: str, kind: str) -> str:
    """The quarantine reason of a conversion defect (the same words as shoprank.data.validation's)."""
    return f"invalid UTF-8 in {column}" if kind == "utf8" else f"wrong type in {column}"


def empty_table(schema: TableSchema, path: str | Path) -> None:
    """Write a table with no rows (a format without events, or without impressions)."""
    pq.write_table(schema.arrow.empty_table(), str(path))


def write_source_info(out_dir: str | Path, info: dict) -> None:
    (Path(out_dir) / SOURCE_FILE).write_text(json.dumps(info, indent=2, default=str))


def read_source_info(raw_dir: str | Path) -> dict:
    """What ingest recorded about the source (format, absent columns, conversion report)."""
    p = Path(raw_dir) / SOURCE_FILE
    return json.loads(p.read_text()) if p.exists() else {"format": "tables", "absent": {}}


def duplicate_ids_check(ids: pa.Array, what: str, column: str, validation: ValidationConfig, hint: str = "") -> int:
    """Count repeated ids of a catalogue; fail with a clear message when over the bad-row budget."""
    n = len(ids)
    if n == 0:
        return 0
    unique = len(pc.unique(ids))
    dup = n - unique
    if dup / n > validation.max_bad_share:
        counts = pc.value_counts(ids)
        top = sorted(counts.to_pylist(), key=lambda d: -d["counts"])[:3]
        examples = ", ".join(f"{d['values']!r} x{d['counts']}" for d in top)
        raise DataValidationError(
            f"{what}: {dup:,} of {n:,} rows repeat an earlier {column} (e.g. {examples}); each item must appear "
            f"once, over the {validation.max_bad_share:.1%} budget (validation.max_bad_share)" + hint)
    return dup
