"""Documented table schemas: the contract between data sources, validation and preprocessing.

Three tables, stored as parquet (`shoprank.data.sources` converts other layouts into them):

* catalogue   one row per item: `item_id`, and optionally `title`, `category` ("top/leaf" path), `brand`,
              `price` (>= 0). Real catalogues lack fields (ESCI has no price or category, event logs often
              only ids): a missing value is kept and maps to the padding index / bucket 0 of the transform.
* events      user behaviour log: `timestamp` (epoch seconds), `user_id`, `event` (view/click/cart/purchase),
              `item_id`, and optionally `event_id`, `session_id`, `query` (empty when not from a search) and
              `subsecond_us` (the microseconds within the second, for logs finer than seconds: events of one
              second keep their logged order, and two of them are not duplicates when their times differ).
* impressions one row per item shown for a search request: `request_id`, `timestamp`, `user_id`,
              `query`, `item_id`, the labels `clicked`, `carted`, `purchased` (0/1), and optionally
              `session_id`, `subsecond_us`, `position` (0 = top), `oracle` (the generator's true relevance;
              absent in real data), `relevance` (graded, >= 0: feeds NDCG instead of the label sum; ESCI
              E/S/C/I = 3/2/1/0) and `split` (train/validation/test: honoured by preprocess instead of the time
              split).

Timestamps are read as shops log them (`shoprank.data.timestamps`: epoch s/ms/us/ns, ISO 8601, parquet
timestamps); sources that log finer than seconds fill `subsecond_us` (read from the timestamp itself when
the column is absent).

A source may declare required columns it does not have at all ("absent", e.g. ESCI has no timestamps and
no users): validation then does not require them (see `shoprank.data.sources`). Loaders may add two meta
columns: `_defect` (why a row could not be converted, e.g. invalid UTF-8; such rows are quarantined with
that reason) and `_record` (the source row as JSON, for the quarantine file).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

__all__ = [
    "CATALOGUE",
    "DEFECT",
    "EVENTS",
    "EVENT_TYPES",
    "IMPRESSIONS",
    "INTEREST_EVENTS",
    "LABELS",
    "RECORD",
    "SPLIT_VALUES",
    "SUBSECOND_DOC",
    "TABLES",
    "Column",
    "TableSchema",
    "top_category",
]

EVENT_TYPES = ("view", "click", "cart", "purchase")
SPLIT_VALUES = ("train", "validation", "test")
DEFECT = "_defect"  # meta column: a loader's reason why the row could not be converted
RECORD = "_record"  # meta column: the source row as JSON (for quarantined rows)
# Events that say the user wanted the item: these build the behaviour sequence.
INTEREST_EVENTS = ("click", "cart", "purchase")
LABELS = ("clicked", "carted", "purchased")
SUBSECOND_DOC = "microseconds within the second of `timestamp` (0-999999), for logs finer than seconds"


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    required: bool = True
    doc: str = ""


@dataclass(frozen=True)
class TableSchema:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # rows sharing these values are duplicates

    @property
    def arrow(self) -> pa.Schema:
        # Storage is nullable throughout: missing required values are data defects that validation
        # quarantines with a reason, not write errors.
        return pa.schema([pa.field(c.name, c.type) for c in self.columns])

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


CATALOGUE = TableSchema(
    "catalogue",
    (
        Column("item_id", pa.string(), doc="stable item identifier"),
        Column("title", pa.string(), required=False, doc="product title, whitespace-tokenised"),
        Column("category", pa.string(), required=False, doc="category path 'top/leaf'"),
        Column("brand", pa.string(), required=False),
        Column("price", pa.float64(), required=False, doc="non-negative price"),
    ),
    key=("item_id",),
)

EVENTS = TableSchema(
    "events",
    (
        Column("event_id", pa.int64(), required=False),
        Column("timestamp", pa.int64(), doc="epoch seconds"),
        Column("subsecond_us", pa.int32(), required=False, doc=SUBSECOND_DOC),
        Column("user_id", pa.string()),
        Column("session_id", pa.string(), required=False),
        Column("event", pa.string(), doc="one of " + ", ".join(EVENT_TYPES)),
        Column("item_id", pa.string()),
        Column("query", pa.string(), required=False, doc="search text when the event came from a search"),
    ),
    key=("user_id", "timestamp", "subsecond_us", "event", "item_id"),
)

IMPRESSIONS = TableSchema(
    "impressions",
    (
        Column("request_id", pa.string()),
        Column("timestamp", pa.int64(), doc="epoch seconds of the search request"),
        Column("subsecond_us", pa.int32(), required=False, doc=SUBSECOND_DOC),
        Column("user_id", pa.string()),
        Column("session_id", pa.string(), required=False),
        Column("query", pa.string(), required=False, doc="search text; empty for recommendations"),
        Column("item_id", pa.string()),
        Column("position", pa.int32(), required=False, doc="0-based rank in the shown list"),
        Column("clicked", pa.int8()),
        Column("carted", pa.int8()),
        Column("purchased", pa.int8()),
        Column("oracle", pa.float32(), required=False, doc="true relevance (synthetic data only)"),
        Column("relevance", pa.int8(), required=False, doc="graded relevance >= 0 for NDCG (ESCI: E3 S2 C1 I0)"),
        Column("split", pa.string(), required=False, doc="train/validation/test, overrides the time split"),
    ),
    key=("request_id", "item_id"),
)

TABLES = {t.name: t for t in (CATALOGUE, EVENTS, IMPRESSIONS)}


def top_category(category: str) -> str:
    """The top level of a 'top/leaf' category path."""
    return category.split("/", 1)[0]
