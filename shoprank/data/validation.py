"""Row-level validation: every bad row is quarantined with a reason and counted, none is dropped silently.

One implementation serves two callers:

* `validate_table` checks a whole pandas DataFrame at once (tests, small tables, the catalogue);
* `TableValidator` checks a table chunk by chunk (a parquet row group, a CSV block) for the streaming
  preprocessing, which finds duplicates later on disk partitions (`duplicate_mask`) and then `finish`es
  the report. Both use `check_chunk`, so a row gets the same reason either way.

Checks, first failing one wins: a loader's conversion defect (`_defect`), then per column in schema order
a wrongly typed value (or invalid UTF-8 text; a `timestamp` that `shoprank.data.timestamps` cannot read) and
a missing required value, then out-of-domain values
(negative price or position, unknown event type, labels not 0/1, relevance out of range, unknown split),
timestamps outside the accepted window, item ids the catalogue does not know, and last duplicates of an
earlier row on the table's key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from shoprank.config import ValidationConfig
from shoprank.data.timestamps import MICROS, Timestamps, read_timestamps
from shoprank.errors import DataValidationError
from shoprank.schema import DEFECT, EVENT_TYPES, LABELS, RECORD, SPLIT_VALUES, TableSchema

__all__ = [
    "DUPLICATE",
    "NULL_TOKENS",
    "QUARANTINE_SCHEMA",
    "CheckedChunk",
    "Coerced",
    "Reasons",
    "TableReport",
    "TableValidator",
    "check_chunk",
    "coerce_arrow",
    "coerce_series",
    "duplicate_mask",
    "key_codes",
    "null_where",
    "plain_array",
    "quarantine_table",
    "read_time_column",
    "records",
    "text_from_binary",
    "timestamp_window",
    "validate_table",
]

DUPLICATE = "duplicate of an earlier row"
_INT_RANGE = {pa.int8(): (-2**7, 2**7 - 1), pa.int16(): (-2**15, 2**15 - 1), pa.int32(): (-2**31, 2**31 - 1),
              pa.int64(): (-2**63, 2**63 - 1)}
_SECONDS_PER = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# Text that means "no value" in a numeric column of a CSV file.
NULL_TOKENS = ("", "na", "n/a", "nan", "null", "none", "-")


@dataclass
class TableReport:
    table: str
    rows_in: int
    rows_ok: int
    reasons: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> one offending record (for messages)

    @property
    def quarantined(self) -> int:
        return self.rows_in - self.rows_ok

    @property
    def bad_share(self) -> float:
        return self.quarantined / self.rows_in if self.rows_in else 0.0

    def to_dict(self) -> dict:
        return {"table": self.table, "rows_in": self.rows_in, "rows_ok": self.rows_ok,
                "quarantined": self.quarantined, "bad_share": round(self.bad_share, 6),
                "reasons": dict(sorted(self.reasons.items(), key=lambda kv: -kv[1]))}

    def check_budget(self, config: ValidationConfig, key: Sequence[str] = ()) -> None:
        """Raise DataValidationError naming the commonest problems when the bad share is over budget."""
        if self.bad_share <= config.max_bad_share:
            return
        parts = []
        for reason, count in list(self.to_dict()["reasons"].items())[:3]:
            hint = f" (rows repeating the key {list(key)})" if reason == DUPLICATE and key else ""
            example = self.examples.get(reason)
            parts.append(f"{reason}{hint}: {count:,}" + (f", e.g. {example}" if example else ""))
        raise DataValidationError(
            f"{self.table}: {self.quarantined:,} of {self.rows_in:,} rows are bad ({self.bad_share:.1%}), over the "
            f"{config.max_bad_share:.1%} budget (validation.max_bad_share); most common: " + "; ".join(parts))


# --- coercion of one column to its schema type --------------------------------------------------------
@dataclass
class Coerced:
    """One column converted to its schema type.

    `values`: numpy int64/float64 for numeric columns (undefined where not `present`), a pyarrow string
    array for text. `present`: a value is there. `wrong`: a value was there but is not of the type (or
    not valid UTF-8 when `utf8` is set), so it counts as absent too."""

    values: np.ndarray | pa.Array
    present: np.ndarray
    wrong: np.ndarray
    utf8: np.ndarray | None = None


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def plain_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous, non-dictionary array (large strings/binary made regular)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_large_string(values.type):
        values = values.cast(pa.string())
    if pa.types.is_large_binary(values.type):
        values = values.cast(pa.binary())
    return values


def null_where(mask: pa.Array | np.ndarray, values: pa.Array) -> pa.Array:
    """`values` with nulls where `mask` is true. (pyarrow 18's if_else with a null *scalar* corrupts the
    offsets of a sliced string array, as parquet batches are: a null array avoids that.)"""
    m = mask if isinstance(mask, pa.Array) else pa.array(np.asarray(mask, dtype=bool))
    return pc.if_else(m, pa.nulls(len(values), values.type), values)


def _valid(arr: pa.Array) -> np.ndarray:
    return np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


def text_from_binary(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Binary -> UTF-8 strings; values that are not valid UTF-8 become null (returned as a mask)."""
    try:
        return values.cast(pa.string()), np.zeros(len(values), bool)
    except (pa.ArrowInvalid, UnicodeDecodeError):
        pass
    out, bad = [], np.zeros(len(values), bool)
    for i, v in enumerate(values.to_pylist()):
        if v is None:
            out.append(None)
            continue
        try:
            out.append(v.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(None)
            bad[i] = True
    return pa.array(out, pa.string()), bad


def _numeric_from_text(text: pa.Array, target: pa.DataType) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    stripped = pc.utf8_trim_whitespace(text)
    present = _valid(text) & (pc.binary_length(stripped).fill_null(0).to_numpy(zero_copy_only=False) > 0)
    blank_to_null = null_where(~present, stripped)
    wide = pa.int64() if pa.types.is_integer(target) else pa.float64()
    try:
        parsed = blank_to_null.cast(wide)
        values = parsed.fill_null(0).to_numpy(zero_copy_only=False)
        return values, present, np.zeros(len(text), bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # Slow path, only for chunks with unparseable values: pandas' tolerant parse, as for object columns.
    present &= ~pc.is_in(pc.utf8_lower(stripped), pa.array(NULL_TOKENS)).to_numpy(zero_copy_only=False)
    num = pd.to_numeric(pd.Series(blank_to_null.to_numpy(zero_copy_only=False), dtype=object), errors="coerce")
    return _numeric_from_float(num.to_numpy(np.float64), present, target)


def _numeric_from_float(x: np.ndarray, present: np.ndarray, target: pa.DataType
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float values to the target: integers must be integral and in range. NaN where `present` says a
    value was there means it was not a number (wrong type)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(x) | (np.isinf(x) & pa.types.is_floating(target))
        if pa.types.is_integer(target):
            lo, hi = _INT_RANGE.get(target, _INT_RANGE[pa.int64()])
            ok &= (x == np.floor(np.nan_to_num(x))) & (x >= lo) & (x <= hi)
    nan = np.isnan(x)
    wrong = present & ~nan & ~ok
    wrong |= present & nan  # present in the source, but not a number
    values = np.where(ok, x, 0).astype(np.int64) if pa.types.is_integer(target) else np.where(nan, np.nan, x)
    return values, present & ~wrong, wrong


def coerce_arrow(values: pa.Array | pa.ChunkedArray, target: pa.DataType) -> Coerced:
    """Convert an arrow column of any type to `target`; what cannot be converted is flagged, not dropped.

    Text columns accept strings, valid UTF-8 binary, and integers (ids read as numbers). Numeric columns
    accept numbers, numeric text (" 12", "1e3") and, for integers, timestamps and dates (as epoch seconds).
    """
    arr = plain_array(values)
    n = len(arr)
    t = arr.type
    no = np.zeros(n, bool)
    if pa.types.is_null(t):
        if _is_numeric(target):
            return Coerced(np.zeros(n, np.int64 if pa.types.is_integer(target) else np.float64), no, no.copy())
        return Coerced(pa.nulls(n, pa.string()), no, no.copy())
    if not _is_numeric(target):  # text
        utf8 = None
        if pa.types.is_binary(t) or pa.types.is_fixed_size_binary(t):
            arr, utf8 = text_from_binary(arr.cast(pa.binary()))
            present = _valid(arr)
            return Coerced(arr, present, no, utf8)
        if pa.types.is_string(t):
            return Coerced(arr, _valid(arr), no)
        present = _valid(arr)
        if pa.types.is_integer(t) or pa.types.is_boolean(t):
            return Coerced(arr.cast(pa.string()), present, no)
        if pa.types.is_floating(t):  # ids that went through a float column: 12.0 -> "12"
            x = arr.to_numpy(zero_copy_only=False).astype(np.float64)
            integral = present & np.isfinite(x) & (x == np.floor(np.nan_to_num(x)))
            text = pa.array(np.where(integral, x, 0).astype(np.int64)).cast(pa.string())
            text = null_where(~integral, text)
            return Coerced(text, integral, present & ~integral)
        return Coerced(pa.nulls(n, pa.string()), no, present)  # lists, structs, ...: wrong type
    # numeric
    if pa.types.is_binary(t) or pa.types.is_string(t):
        utf8 = None
        if pa.types.is_binary(t):
            arr, utf8 = text_from_binary(arr)
        values, present, wrong = _numeric_from_text(arr, target)
        if pa.types.is_floating(target):
            present &= ~np.isnan(values)
        return Coerced(values, present, wrong, utf8)
    present = _valid(arr)
    if pa.types.is_timestamp(t) and pa.types.is_integer(target):
        raw = arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        return Coerced(np.floor_divide(raw, _SECONDS_PER[t.unit]), present, no)
    if pa.types.is_date(t) and pa.types.is_integer(target):
        days = arr.cast(pa.date32()).cast(pa.int32()).fill_null(0).to_numpy(zero_copy_only=False)
        return Coerced(days.astype(np.int64) * 86_400, present, no)
    if pa.types.is_boolean(t):
        arr = arr.cast(pa.int8())
        t = arr.type
    if pa.types.is_integer(t) and pa.types.is_integer(target):
        x = arr.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        lo, hi = _INT_RANGE.get(target, _INT_RANGE[pa.int64()])
        wrong = present & ((x < lo) | (x > hi))
        return Coerced(x, present & ~wrong, wrong)
    if _is_numeric(t):
        x = arr.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        values, ok, wrong = _numeric_from_float(x, present & ~np.isnan(x), target)
        return Coerced(values, ok, wrong)
    return Coerced(np.zeros(n, np.int64 if pa.types.is_integer(target) else np.float64), no, present)


def coerce_series(raw: pd.Series, target: pa.DataType) -> Coerced:
    """A pandas column to `target`; object columns are checked value by value (mixed types are flagged)."""
    if raw.dtype != object:
        return coerce_arrow(pa.array(raw, from_pandas=True), target)
    values = raw.to_numpy(dtype=object)
    present = pd.notna(raw).to_numpy()
    if _is_numeric(target):
        x = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64, na_value=np.nan)
        vals, ok, wrong = _numeric_from_float(x, present, target)
        return Coerced(vals, ok, wrong)
    is_str = np.fromiter((isinstance(v, str) for v in values), bool, len(values))
    wrong = present & ~is_str
    text = pa.array(np.where(is_str, values, None), pa.string(), from_pandas=True)
    return Coerced(text, present & is_str, wrong)


# --- checking a chunk ---------------------------------------------------------------------------------
class Reasons:
    """Reason strings <-> small integer codes (0 = the row is fine)."""

    def __init__(self) -> None:
        self.names: list[str] = [""]
        self._code: dict[str, int] = {}

    def code(self, name: str) -> int:
        c = self._code.get(name)
        if c is None:
            c = self._code[name] = len(self.names)
            self.names.append(name)
        return c

    def name(self, code: int) -> str:
        return self.names[int(code)]


@dataclass
class CheckedChunk:
    """A chunk after the row-level checks: columns in schema types (pyarrow, null where absent or bad) and
    a reason code per row (0 = fine so far; duplicates are found later)."""

    table: pa.Table
    codes: np.ndarray
    item_rows: np.ndarray | None = None  # row of each item_id in `known_items` (-1: unknown or absent)


def _to_arrow(c: Coerced, target: pa.DataType) -> pa.Array:
    if isinstance(c.values, pa.Array):
        return c.values if c.values.type == target else c.values.cast(target)
    vals = c.values
    if pa.types.is_integer(target):
        vals = np.where(c.present, vals, 0)
    return pa.array(vals, mask=~c.present).cast(target, safe=False)


def read_time_column(values: pa.Array | pa.ChunkedArray | pd.Series, unit: str = "auto") -> Timestamps:
    """A timestamp column of a chunk (arrow, or a pandas column of any dtype) read value by value."""
    if isinstance(values, pd.Series):
        if values.dtype == object:  # mixed Python values: each as text (numbers, ISO strings, datetimes)
            values = pa.array([None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                               for v in values.to_numpy(dtype=object)], pa.string())
        else:
            values = pa.array(values, from_pandas=True)
    return read_timestamps(values, unit)


def _subsecond(given: pa.Array | pa.ChunkedArray | pd.Series | None, times: Timestamps, pandas: bool
               ) -> tuple[Coerced, np.ndarray]:
    """`subsecond_us` of a chunk: the given column where it has a value, else the timestamp's own
    microseconds; absent where the timestamp is. Returns it and the mask of given values out of 0..999999."""
    micros = times.micros.astype(np.int64)
    no = np.zeros(len(micros), bool)
    if given is None:
        return Coerced(micros, times.present.copy(), no.copy()), no
    c = coerce_series(given, pa.int64()) if pandas else coerce_arrow(given, pa.int64())
    out_of_range = c.present & ((c.values < 0) | (c.values >= MICROS))
    values = np.where(c.present & ~out_of_range, c.values, micros)
    return Coerced(values, times.present & ~c.wrong & ~out_of_range, c.wrong & times.present), out_of_range


def check_chunk(chunk: pa.Table | pd.DataFrame, schema: TableSchema, reasons: Reasons, *,
                known_items: pa.Array | None = None, timestamp_range: tuple[int, int] | None = None,
                absent: Collection[str] = (), timestamp_unit: str = "auto") -> CheckedChunk:
    """Row-level checks of one chunk (everything but duplicates); see the module doc for the order.

    `absent` names columns the source does not have at all: they are not required. A required column
    that is neither in the chunk nor declared absent raises DataValidationError naming it. `timestamp` is
    read by `shoprank.data.timestamps` (numbers in `timestamp_unit`, ISO 8601 text, arrow timestamps);
    `subsecond_us`, when the chunk has no such column or a null in it, comes from that reading.
    """
    names = list(chunk.columns) if isinstance(chunk, pd.DataFrame) else chunk.column_names
    missing_cols = [c.name for c in schema.columns if c.required and c.name not in names and c.name not in absent]
    if missing_cols:
        raise DataValidationError(f"{schema.name}: required column(s) {missing_cols} missing; found {names}")
    n = len(chunk)
    codes = np.zeros(n, np.uint16)

    def flag(mask: np.ndarray, why: str) -> None:
        m = np.asarray(mask, dtype=bool) & (codes == 0)
        if m.any():
            codes[m] = reasons.code(why)

    if DEFECT in names:
        defects = plain_array(chunk[DEFECT] if isinstance(chunk, pa.Table) else pa.array(chunk[DEFECT], pa.string()))
        if defects.null_count < n:
            enc = pc.dictionary_encode(defects)
            idx = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False)
            for k, why in enumerate(enc.dictionary.to_pylist()):
                flag(idx == k, why)

    out: dict[str, pa.Array] = {}
    num: dict[str, Coerced] = {}
    times: Timestamps | None = None
    for col in schema.columns:
        if col.name == "subsecond_us" and times is not None:
            given = chunk[col.name] if col.name in names else None
            c, out_of_range = _subsecond(given, times, isinstance(chunk, pd.DataFrame))
            flag(c.wrong, f"wrong type in {col.name}")
            flag(out_of_range, f"{col.name} out of range")
            out[col.name], num[col.name] = _to_arrow(c, col.type), c
            continue
        if col.name not in names:
            out[col.name] = pa.nulls(n, col.type)
            num[col.name] = Coerced(np.zeros(n), np.zeros(n, bool), np.zeros(n, bool))
            continue
        raw = chunk[col.name]
        if col.name == "timestamp":
            times = read_time_column(raw, timestamp_unit)
            c = Coerced(times.seconds, times.present, times.wrong)
        else:
            c = coerce_series(raw, col.type) if isinstance(chunk, pd.DataFrame) else coerce_arrow(raw, col.type)
        if c.utf8 is not None:
            flag(c.utf8, f"invalid UTF-8 in {col.name}")
        flag(c.wrong, f"wrong type in {col.name}")
        absent_value = ~c.present
        if not _is_numeric(col.type):
            empty = pc.equal(pc.binary_length(c.values), 0).fill_null(True).to_numpy(zero_copy_only=False)
            if col.required:
                absent_value = absent_value | empty
        if col.required and col.name not in absent:
            flag(absent_value, f"missing {col.name}")
        out[col.name] = _to_arrow(c, col.type)
        num[col.name] = c

    def values(name: str) -> np.ndarray:
        return np.asarray(num[name].values)

    def present(name: str) -> np.ndarray:
        return num[name].present

    if "price" in out:
        p = values("price").astype(np.float64)
        with np.errstate(invalid="ignore"):
            flag(present("price") & (p < 0), "negative price")
            flag(present("price") & np.isinf(p), "infinite price")
    if "position" in out:
        flag(present("position") & (values("position") < 0), "negative position")
    if "event" in out and schema.name == "events":
        flag(present("event") & ~pc.is_in(out["event"], pa.array(EVENT_TYPES)).to_numpy(zero_copy_only=False),
             "unknown event type")
    for label in LABELS:
        if label in out and label in names:
            v = values(label)
            flag(present(label) & (v != 0) & (v != 1), f"{label} not 0/1")
    if "relevance" in out:
        v = values("relevance")
        flag(present("relevance") & ((v < 0) | (v > 100)), "relevance out of range")
    if "split" in out and "split" in names:
        s = out["split"]
        known = pc.is_in(s, pa.array(("",) + SPLIT_VALUES)).to_numpy(zero_copy_only=False)
        flag(_valid(s) & ~known, "unknown split")
    if timestamp_range is not None and "timestamp" in out:
        ts = values("timestamp")
        flag(present("timestamp") & ((ts < timestamp_range[0]) | (ts > timestamp_range[1])), "timestamp out of range")
    item_rows = None
    if known_items is not None and "item_id" in out and schema.name != "catalogue":
        item_rows = pc.index_in(out["item_id"], value_set=known_items).fill_null(-1).to_numpy(zero_copy_only=False)
        item_rows = item_rows.astype(np.int32)
        flag(present("item_id") & (item_rows < 0), "unknown item_id")
    return CheckedChunk(pa.table(out), codes, item_rows)


def duplicate_mask(keys: Sequence[np.ndarray]) -> np.ndarray:
    """Rows whose key equals the key of an earlier row (rows in their original order; keys are integer
    codes of equal length, nulls coded as one value, e.g. -1)."""
    n = len(keys[0]) if keys else 0
    if n < 2:
        return np.zeros(n, bool)
    cols = [np.asarray(k, dtype=np.int64) for k in keys]
    # One int64 key when the value ranges allow it (one stable sort instead of a sort per column).
    combined, room = np.zeros(n, np.int64), 1
    for c in cols:
        lo, hi = int(c.min()), int(c.max())
        span = hi - lo + 1
        if room * span >= 2**62:
            combined = None
            break
        combined = combined * span + (c - lo)
        room *= span
    if combined is not None:
        order = np.argsort(combined, kind="stable")
        ks = combined[order]
        same = ks[1:] == ks[:-1]
    else:
        order = np.lexsort([np.arange(n)] + list(reversed(cols)))
        same = np.ones(n - 1, bool)
        for c in cols:
            ks = c[order]
            same &= ks[1:] == ks[:-1]
    dup = np.zeros(n, bool)
    dup[order[1:][same]] = True
    return dup


def key_codes(values: pa.Array | np.ndarray) -> np.ndarray:
    """Integer codes of a key column (strings dictionary-encoded; null -> -1)."""
    if isinstance(values, np.ndarray):
        return values
    arr = plain_array(values)
    if pa.types.is_string(arr.type) or pa.types.is_binary(arr.type):
        return pc.dictionary_encode(arr).indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return arr.fill_null(-1).to_numpy(zero_copy_only=False)


def records(chunk: pa.Table | pd.DataFrame, rows: np.ndarray) -> list[str]:
    """The source rows at `rows` as JSON (a loader's `_record` wins), for the quarantine file."""
    if len(rows) == 0:
        return []
    if isinstance(chunk, pd.DataFrame):
        sub = chunk.iloc[rows]
        return [json.dumps(r, default=str) for r in sub.to_dict(orient="records")]
    sub = chunk.take(pa.array(rows))
    given = sub[RECORD].to_pylist() if RECORD in sub.column_names else [None] * len(rows)
    plain = sub.drop_columns([c for c in (DEFECT, RECORD) if c in sub.column_names]).to_pylist()
    return [g if g is not None else json.dumps(r, default=str) for g, r in zip(given, plain)]


QUARANTINE_SCHEMA = pa.schema([("table", pa.string()), ("row", pa.int64()), ("reason", pa.string()),
                               ("record", pa.string())])


def quarantine_table(table: str, rows: np.ndarray, why: Iterable[str], recs: list[str]) -> pa.Table:
    rows = np.asarray(rows, np.int64)
    return pa.table({"table": pa.array([table] * len(rows), pa.string()), "row": pa.array(rows, pa.int64()),
                     "reason": pa.array(list(why), pa.string()), "record": pa.array(recs, pa.string())},
                    schema=QUARANTINE_SCHEMA)


class TableValidator:
    """Validate a table chunk by chunk; keeps counts, an example per reason, and the reason registry."""

    def __init__(self, schema: TableSchema, config: ValidationConfig, *, known_items: pa.Array | None = None,
                 timestamp_range: tuple[int, int] | None = None, absent: Collection[str] = (),
                 timestamp_unit: str = "auto"):
        self.schema, self.config = schema, config
        self.known_items, self.timestamp_range, self.absent = known_items, timestamp_range, tuple(absent)
        self.timestamp_unit = timestamp_unit
        self.reasons = Reasons()
        self.rows_in = 0
        self.counts: dict[str, int] = {}
        self.examples: dict[str, str] = {}

    def check(self, chunk: pa.Table | pd.DataFrame) -> CheckedChunk:
        checked = check_chunk(chunk, self.schema, self.reasons, known_items=self.known_items,
                              timestamp_range=self.timestamp_range, absent=self.absent,
                              timestamp_unit=self.timestamp_unit)
        self.rows_in += len(chunk)
        return checked

    def quarantine(self, chunk: pa.Table | pd.DataFrame, codes: np.ndarray, row0: int) -> pa.Table:
        """The quarantine rows of a checked chunk (rows numbered from `row0`), counted."""
        bad = np.flatnonzero(codes)
        why = [self.reasons.name(c) for c in codes[bad]]
        recs = records(chunk, bad)
        self.count(why, recs, row0 + bad)
        return quarantine_table(self.schema.name, row0 + bad, why, recs)

    def count(self, why: Sequence[str], recs: Sequence[str], rows: np.ndarray) -> None:
        for w, r, row in zip(why, recs, rows):
            self.counts[w] = self.counts.get(w, 0) + 1
            if w not in self.examples:
                self.examples[w] = f"row {int(row)}: {r[:160]}"

    @property
    def bad_rows(self) -> int:
        return sum(self.counts.values())

    def report(self) -> TableReport:
        return TableReport(self.schema.name, self.rows_in, self.rows_in - self.bad_rows, dict(self.counts),
                           dict(self.examples))

    def finish(self) -> TableReport:
        """The report; raises DataValidationError when the table is over the bad-row budget."""
        report = self.report()
        report.check_budget(self.config, self.schema.key)
        return report


def validate_table(
    df: pd.DataFrame,
    schema: TableSchema,
    config: ValidationConfig,
    *,
    known_items: set[str] | pd.Index | pa.Array | None = None,
    timestamp_range: tuple[int, int] | None = None,
    absent: Collection[str] = (),
    timestamp_unit: str = "auto",
) -> tuple[pd.DataFrame, pd.DataFrame, TableReport]:
    """Split `df` into (clean rows with schema dtypes, quarantined rows with reasons, report).

    All checks of the module doc, duplicates included. Raises DataValidationError when a required
    column is absent or the bad share exceeds the budget.
    """
    if known_items is not None and not isinstance(known_items, pa.Array):
        known_items = pa.array(list(known_items), pa.string())
    v = TableValidator(schema, config, known_items=known_items, timestamp_range=timestamp_range, absent=absent,
                       timestamp_unit=timestamp_unit)
    checked = v.check(df)
    codes = checked.codes
    keys = [key_codes(checked.table[k].combine_chunks()) for k in schema.key]
    flag = duplicate_mask(keys) & (codes == 0)
    codes[flag] = v.reasons.code(DUPLICATE)
    bad = codes != 0
    quarantine = v.quarantine(df, codes, 0).to_pandas()
    clean = checked.table.filter(pa.array(~bad)).to_pandas()
    for col in schema.columns:
        s = clean[col.name]
        if _is_numeric(col.type):
            if col.required or pa.types.is_floating(col.type) or not s.isna().any():
                clean[col.name] = s.astype(col.type.to_pandas_dtype())
            else:
                clean[col.name] = s.astype(np.float64)
        elif not col.required:
            clean[col.name] = s.fillna("")
    report = v.finish()
    return clean.reset_index(drop=True), quarantine, report


def timestamp_window(config: ValidationConfig, data_end: int | None = None) -> tuple[int, int]:
    """Accepted timestamps: from the configured floor to `data_end` (default: now) plus clock skew."""
    end = data_end if data_end is not None else int(time.time())
    return config.min_timestamp, end + config.max_clock_skew_seconds
