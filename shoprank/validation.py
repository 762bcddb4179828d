"""Row-level validation: every bad row is quarantined with a reason and counted, none is dropped silently."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from shoprank.config import ValidationConfig
from shoprank.schema import EVENT_TYPES, LABELS, TableSchema


class DataValidationError(ValueError):
    """The data are too broken to train on; the message names the table and the problem."""


@dataclass
class TableReport:
    table: str
    rows_in: int
    rows_ok: int
    reasons: dict[str, int] = field(default_factory=dict)

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


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def validate_table(
    df: pd.DataFrame,
    schema: TableSchema,
    config: ValidationConfig,
    *,
    known_items: set[str] | pd.Index | None = None,
    timestamp_range: tuple[int, int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, TableReport]:
    """Split `df` into (clean rows with schema dtypes, quarantined rows with reasons, report).

    Checks, first failing one wins: wrongly typed values, missing required values, out-of-domain
    values (negative price or position, unknown event type, labels not 0/1), timestamps outside
    `timestamp_range`, item ids not in `known_items`, and duplicates of an earlier row on the key.
    Raises DataValidationError when a required column is absent or the bad share exceeds the budget.
    """
    missing_cols = [c.name for c in schema.columns if c.required and c.name not in df.columns]
    if missing_cols:
        raise DataValidationError(
            f"{schema.name}: required column(s) {missing_cols} missing; found {list(df.columns)}")
    n = len(df)
    reason = np.full(n, None, dtype=object)
    out = {}

    def flag(mask: np.ndarray, why: str) -> None:
        mask = np.asarray(mask, dtype=bool) & (reason == None)  # noqa: E711 (elementwise)
        reason[mask] = why

    for col in schema.columns:
        if col.name not in df.columns:
            out[col.name] = pd.Series([None] * n, index=df.index, dtype=object)
            continue
        raw = df[col.name]
        if _is_numeric(col.type):
            coerced = pd.to_numeric(raw, errors="coerce")
            flag(raw.notna().to_numpy() & coerced.isna().to_numpy(), f"wrong type in {col.name}")
            if pa.types.is_integer(col.type):
                frac = coerced.notna() & (coerced != np.floor(coerced.fillna(0)))
                flag(frac.to_numpy(), f"wrong type in {col.name}")
            out[col.name] = coerced
            absent = coerced.isna().to_numpy()
        else:
            is_str = raw.map(lambda v: isinstance(v, str)).to_numpy() if raw.dtype == object else None
            if is_str is not None:
                bad_type = raw.notna().to_numpy() & ~is_str
                flag(bad_type, f"wrong type in {col.name}")
            values = raw.where(raw.notna(), None)
            out[col.name] = values
            absent = raw.isna().to_numpy()
            if col.required:
                absent = absent | (raw.astype(str).str.len().to_numpy() == 0)
        if col.required:
            flag(absent, f"missing {col.name}")

    if "price" in out:
        flag(~np.isfinite(out["price"].to_numpy(float)) | (out["price"].to_numpy(float) < 0), "negative price")
    if "position" in out:
        flag(out["position"].to_numpy(float) < 0, "negative position")
    if "event" in out:
        flag(~out["event"].isin(EVENT_TYPES).to_numpy(), "unknown event type")
    for label in LABELS:
        if label in out:
            flag(~out[label].isin([0, 1]).to_numpy(), f"{label} not 0/1")
    if timestamp_range is not None and "timestamp" in out:
        ts = out["timestamp"].to_numpy(float)
        flag((ts < timestamp_range[0]) | (ts > timestamp_range[1]), "timestamp out of range")
    if known_items is not None and "item_id" in out and schema.name != "catalogue":
        flag(~out["item_id"].isin(known_items).to_numpy(), "unknown item_id")
    key_frame = pd.DataFrame({k: out[k] for k in schema.key})
    flag(key_frame.duplicated(keep="first").to_numpy(), "duplicate of an earlier row")

    bad = reason != None  # noqa: E711
    clean = pd.DataFrame({c.name: out[c.name][~bad] for c in schema.columns})
    for col in schema.columns:
        if _is_numeric(col.type):
            target = col.type.to_pandas_dtype()
            if col.required:
                clean[col.name] = clean[col.name].astype(target)
            elif pa.types.is_floating(col.type):
                clean[col.name] = clean[col.name].astype(target)
        elif not col.required:
            clean[col.name] = clean[col.name].fillna("")
    clean = clean.reset_index(drop=True)
    bad_rows = df[bad]
    quarantine = pd.DataFrame({
        "table": schema.name,
        "row": np.flatnonzero(bad),
        "reason": reason[bad].astype(str),
        "record": [json.dumps(r, default=str) for r in bad_rows.to_dict(orient="records")],
    })
    counts = pd.Series(reason[bad]).value_counts().to_dict() if bad.any() else {}
    report = TableReport(schema.name, n, int(n - bad.sum()), {str(k): int(v) for k, v in counts.items()})
    if report.bad_share > config.max_bad_share:
        top = ", ".join(f"{k}: {v}" for k, v in list(report.to_dict()["reasons"].items())[:3])
        raise DataValidationError(
            f"{schema.name}: {report.quarantined:,} of {n:,} rows are bad ({report.bad_share:.1%}), over the "
            f"{config.max_bad_share:.1%} budget (validation.max_bad_share); most common: {top}")
    return clean, quarantine, report


def timestamp_window(config: ValidationConfig, data_end: int | None = None) -> tuple[int, int]:
    """Accepted timestamps: from the configured floor to `data_end` (default: now) plus clock skew."""
    end = data_end if data_end is not None else int(time.time())
    return config.min_timestamp, end + config.max_clock_skew_seconds
