"""Timestamps as shops log them -> epoch seconds plus the microseconds within the second.

One reader for every table and source (`read_timestamps`), value by value where a column mixes forms:

* numbers (integers, floats, or numeric text): epoch time in `unit`. With `unit="auto"` each value's unit is
  told by its size: below 1e11 seconds (up to the year 5138), below 1e14 milliseconds, below 1e17
  microseconds, else nanoseconds. Fractions of a float are kept (1733788889.378 s).
* ISO 8601 text: `2024-12-10T00:01:29Z`, `2024-12-10 00:01:29.378+02:00`, `2024-12-10T00:01:29.378123`,
  `2024-12-10`; a time without a zone is read as UTC.
* parquet/arrow timestamps of any unit (with or without a zone: stored as UTC) and dates.

What cannot be read (`yesterday`, `2024-13-45`) is flagged `wrong`, never guessed: validation quarantines
its row as "wrong type in timestamp". The shoprank tables store `timestamp` (int64 epoch seconds, as
before) and `subsecond_us` (int32, 0..999999): the split, the time window and the reports stay in seconds,
while the order of events within a second and the duplicate check use both.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shoprank.errors import SourceError

__all__ = ["AUTO_LIMITS", "MICROS", "NULL_WORDS", "UNITS", "Timestamps", "check_unit", "read_timestamps"]

UNITS = ("auto", "s", "ms", "us", "ns")
MICROS = 1_000_000
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# unit="auto": a number below the first limit is seconds, below the second milliseconds, below the third
# microseconds, else nanoseconds (seconds up to 1e11 reach the year 5138; milliseconds from 1e11 start in 1973).
AUTO_LIMITS = (1e11, 1e14, 1e17)
# Text that means "no value" (a CSV has no null).
NULL_WORDS = ("", "na", "n/a", "nan", "null", "none", "-")
_INT = r"^[+-]?\d+$"
_FLOAT = r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$"
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


@dataclass
class Timestamps:
    """A column read as time: `seconds` (int64 epoch seconds) and `micros` (int32, 0..999999) are 0 where
    not `present`; `wrong` marks values that were there but are not a time."""

    seconds: np.ndarray
    micros: np.ndarray
    present: np.ndarray
    wrong: np.ndarray

    def arrays(self) -> tuple[pa.Array, pa.Array]:
        """(timestamp int64, subsecond_us int32) as arrow arrays, null where not present."""
        return (pa.array(self.seconds, pa.int64(), mask=~self.present),
                pa.array(self.micros, pa.int32(), mask=~self.present))


def check_unit(unit: str) -> str:
    if unit not in UNITS:
        raise SourceError(f"timestamp_unit={unit!r}: use one of {list(UNITS)}")
    return unit


def _empty(n: int) -> Timestamps:
    return Timestamps(np.zeros(n, np.int64), np.zeros(n, np.int32), np.zeros(n, bool), np.zeros(n, bool))


def _plain(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type):
        values = values.cast(pa.string() if pa.types.is_large_string(values.type) else pa.binary())
    return values


def _valid(arr: pa.Array) -> np.ndarray:
    return np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


def _unit_of(magnitude: np.ndarray, unit: str) -> np.ndarray:
    """Per value: ticks per second of its unit (auto: by the size of the value)."""
    if unit != "auto":
        return np.full(magnitude.shape, _PER_SECOND[unit], np.int64)
    a = np.abs(magnitude)
    return np.select([a < AUTO_LIMITS[0], a < AUTO_LIMITS[1], a < AUTO_LIMITS[2]], [1, 1_000, 1_000_000],
                     1_000_000_000).astype(np.int64)


def _from_ints(v: np.ndarray, unit: str) -> tuple[np.ndarray, np.ndarray]:
    per = _unit_of(v.astype(np.float64), unit)
    seconds = np.floor_divide(v, per)
    rest = v - seconds * per  # 0 <= rest < per
    micros = np.where(per >= MICROS, rest // np.maximum(per // MICROS, 1), rest * (MICROS // np.minimum(per, MICROS)))
    return seconds.astype(np.int64), micros.astype(np.int32)


def _from_floats(x: np.ndarray, unit: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Floats in `unit` -> (seconds, micros, ok); NaN and infinities are not ok."""
    ok = np.isfinite(x)
    xs = np.where(ok, x, 0.0)
    per = _unit_of(xs, unit).astype(np.float64)
    secs_f = xs / per
    ok &= np.abs(secs_f) < 9e15
    secs_f = np.where(ok, secs_f, 0.0)
    seconds = np.floor(secs_f)
    micros = np.rint((secs_f - seconds) * MICROS)
    carry = micros >= MICROS
    seconds = seconds + carry
    micros = np.where(carry, micros - MICROS, micros)
    return seconds.astype(np.int64), micros.astype(np.int32), ok


def _from_timestamp(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    per = _PER_SECOND[arr.type.unit]
    raw = arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    seconds = np.floor_divide(raw, per)
    rest = raw - seconds * per
    micros = rest * (MICROS // per) if per <= MICROS else rest // (per // MICROS)
    return seconds, micros.astype(np.int32)


def _iso_one(text: str) -> tuple[int, int] | None:
    """One ISO 8601 date or date-time (Python's parser: zones, fractions, basic format) -> (s, us)."""
    t = text.strip()
    if len(t) > 10 and t[10] == " ":  # "2024-12-10 00:01:29": a space instead of the T
        t = t[:10] + "T" + t[11:]
    try:
        d = _dt.datetime.fromisoformat(t.replace("z", "Z"))
    except ValueError:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.UTC)
    delta = d - _EPOCH
    return delta.days * 86_400 + delta.seconds, delta.microseconds


def _from_iso(text: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ISO 8601 text -> (seconds, micros, ok). Arrow's parser first (all values with a zone, or all
    without); value by value (Python's parser) for a mix of the two or anything Arrow refuses."""
    n = len(text)
    for target in (pa.timestamp("us", "UTC"), pa.timestamp("us")):
        try:
            parsed = pc.cast(text, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        seconds, micros = _from_timestamp(parsed)
        return seconds, micros, _valid(parsed)
    seconds, micros, ok = np.zeros(n, np.int64), np.zeros(n, np.int32), np.zeros(n, bool)
    for i, v in enumerate(text.to_pylist()):
        got = _iso_one(v) if v is not None else None
        if got is not None:
            seconds[i], micros[i], ok[i] = got[0], got[1], True
    return seconds, micros, ok


def _from_text(text: pa.Array, unit: str) -> Timestamps:
    n = len(text)
    out = _empty(n)
    stripped = pc.utf8_trim_whitespace(text)
    lowered = pc.utf8_lower(stripped)
    out.present = _valid(text) & ~pc.is_in(lowered, pa.array(NULL_WORDS)).fill_null(True).to_numpy(
        zero_copy_only=False)
    if not out.present.any():
        return out
    is_int = pc.match_substring_regex(stripped, _INT).fill_null(False).to_numpy(zero_copy_only=False) & out.present
    is_float = (pc.match_substring_regex(stripped, _FLOAT).fill_null(False).to_numpy(zero_copy_only=False)
                & out.present & ~is_int)
    is_iso = out.present & ~is_int & ~is_float
    if is_int.any():
        idx = np.flatnonzero(is_int)
        sub = stripped.take(pa.array(idx))
        try:
            v = sub.cast(pa.int64()).to_numpy(zero_copy_only=False)
            out.seconds[idx], out.micros[idx] = _from_ints(v, unit)
        except (pa.ArrowInvalid, OverflowError):  # more than 19 digits: read as a float (then out of any range)
            is_float[idx] = True
    if is_float.any():
        idx = np.flatnonzero(is_float)
        x = stripped.take(pa.array(idx)).cast(pa.float64()).to_numpy(zero_copy_only=False)
        s, us, ok = _from_floats(x, unit)
        out.seconds[idx], out.micros[idx] = s, us
        out.wrong[idx[~ok]] = True
    if is_iso.any():
        idx = np.flatnonzero(is_iso)
        s, us, ok = _from_iso(stripped.take(pa.array(idx)))
        out.seconds[idx], out.micros[idx] = s, us
        out.wrong[idx[~ok]] = True
    out.present &= ~out.wrong
    out.seconds[~out.present] = 0
    out.micros[~out.present] = 0
    return out


def read_timestamps(values: pa.Array | pa.ChunkedArray, unit: str = "auto") -> Timestamps:
    """Read a column of times of any form (see the module doc) as epoch seconds + microseconds.

    `unit` says what numbers count in: "s", "ms", "us", "ns", or "auto" (by their size). Text that is not
    valid UTF-8 counts as wrong."""
    check_unit(unit)
    arr = _plain(values)
    n = len(arr)
    t = arr.type
    if pa.types.is_null(t) or n == 0:
        return _empty(n)
    present = _valid(arr)
    if pa.types.is_timestamp(t):
        seconds, micros = _from_timestamp(arr)
        return Timestamps(seconds, micros, present, np.zeros(n, bool))
    if pa.types.is_date(t):
        days = arr.cast(pa.date32()).cast(pa.int32()).fill_null(0).to_numpy(zero_copy_only=False)
        return Timestamps(days.astype(np.int64) * 86_400, np.zeros(n, np.int32), present, np.zeros(n, bool))
    if pa.types.is_boolean(t):
        arr, t = arr.cast(pa.int8()), pa.int8()
    if pa.types.is_integer(t):
        v = arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        seconds, micros = _from_ints(v, unit)
        return Timestamps(np.where(present, seconds, 0), np.where(present, micros, 0).astype(np.int32), present,
                          np.zeros(n, bool))
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        x = arr.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        present &= ~np.isnan(x)
        seconds, micros, ok = _from_floats(x, unit)
        wrong = present & ~ok
        keep = present & ok
        return Timestamps(np.where(keep, seconds, 0), np.where(keep, micros, 0).astype(np.int32), keep, wrong)
    if pa.types.is_binary(t) or pa.types.is_fixed_size_binary(t):
        raw = arr.cast(pa.binary())
        try:
            return _from_text(raw.cast(pa.string()), unit)
        except (pa.ArrowInvalid, UnicodeDecodeError):
            pass
        decoded, bad = [], np.zeros(n, bool)
        for i, v in enumerate(raw.to_pylist()):
            try:
                decoded.append(v.decode("utf-8") if v is not None else None)
            except UnicodeDecodeError:
                decoded.append(None)
                bad[i] = True
        out = _from_text(pa.array(decoded, pa.string()), unit)
        out.wrong |= bad
        return out
    if pa.types.is_string(t):
        return _from_text(arr, unit)
    return Timestamps(np.zeros(n, np.int64), np.zeros(n, np.int32), np.zeros(n, bool), present)  # lists, ...

