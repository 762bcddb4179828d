"""Documented table schemas: the contract between data sources, validation and preprocessing.

Three tables, stored as parquet (or CSV for imports):

* catalogue   one row per item: `item_id`, `title`, `category` ("top/leaf" path), `brand`, `price` (>= 0).
* events      user behaviour log: `event_id`, `timestamp` (epoch seconds), `user_id`, `session_id`,
              `event` (view/click/cart/purchase), `item_id`, `query` (empty when not from a search).
* impressions one row per item shown for a search request: `request_id`, `timestamp`, `user_id`,
              `session_id`, `query`, `item_id`, `position` (0 = top), the labels `clicked`, `carted`,
              `purchased` (0/1), and `oracle` (the generator's true relevance; absent in real data).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

EVENT_TYPES = ("view", "click", "cart", "purchase")
# Events that say the user wanted the item: these build the behaviour sequence.
INTEREST_EVENTS = ("click", "cart", "purchase")
LABELS = ("clicked", "carted", "purchased")


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
        Column("title", pa.string(), doc="product title, whitespace-tokenised"),
        Column("category", pa.string(), doc="category path 'top/leaf'"),
        Column("brand", pa.string()),
        Column("price", pa.float64(), doc="non-negative price"),
    ),
    key=("item_id",),
)

EVENTS = TableSchema(
    "events",
    (
        Column("event_id", pa.int64()),
        Column("timestamp", pa.int64(), doc="epoch seconds"),
        Column("user_id", pa.string()),
        Column("session_id", pa.string()),
        Column("event", pa.string(), doc="one of " + ", ".join(EVENT_TYPES)),
        Column("item_id", pa.string()),
        Column("query", pa.string(), required=False, doc="search text when the event came from a search"),
    ),
    key=("user_id", "timestamp", "event", "item_id"),
)

IMPRESSIONS = TableSchema(
    "impressions",
    (
        Column("request_id", pa.string()),
        Column("timestamp", pa.int64(), doc="epoch seconds of the search request"),
        Column("user_id", pa.string()),
        Column("session_id", pa.string()),
        Column("query", pa.string(), required=False, doc="search text; empty for recommendations"),
        Column("item_id", pa.string()),
        Column("position", pa.int32(), doc="0-based rank in the shown list"),
        Column("clicked", pa.int8()),
        Column("carted", pa.int8()),
        Column("purchased", pa.int8()),
        Column("oracle", pa.float32(), required=False, doc="true relevance (synthetic data only)"),
    ),
    key=("request_id", "item_id"),
)

TABLES = {t.name: t for t in (CATALOGUE, EVENTS, IMPRESSIONS)}


def top_category(category: str) -> str:
    """The top level of a 'top/leaf' category path."""
    return category.split("/", 1)[0]
