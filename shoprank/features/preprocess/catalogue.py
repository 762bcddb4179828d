"""Stage 1a, the catalogue: read whole (it is the smallest table and every later check needs its ids),
checked row by row, duplicate item ids quarantined; the clean items keep their catalogue order, and their
row numbers are the item codes every later stage uses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shoprank.data.validation import DUPLICATE, TableReport, TableValidator, duplicate_mask, key_codes
from shoprank.errors import DataValidationError
from shoprank.features.preprocess.context import RunContext, absent_columns, strings
from shoprank.schema import CATALOGUE

__all__ = ["CatalogueData", "CheckedCatalogue", "read_catalogue"]


@dataclass(frozen=True)
class CatalogueData:
    """The clean catalogue, one entry per item code (row)."""

    ids: pa.Array  # clean item ids, catalogue order
    title: np.ndarray
    category: np.ndarray
    brand: np.ndarray
    price: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def id_strings(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.ids.take(pa.array(np.asarray(rows, np.int64))).to_numpy(zero_copy_only=False),
                          dtype=object)


@dataclass(frozen=True)
class CheckedCatalogue:
    """The clean items and the catalogue's validation report (final: no later stage adds to it)."""

    items: CatalogueData
    report: TableReport


def read_catalogue(ctx: RunContext) -> CheckedCatalogue:
    """Check the catalogue; rejected rows go to the quarantine. Raises when it has no rows or too many bad."""
    table = pq.read_table(ctx.raw / "catalogue.parquet")
    if table.num_rows == 0:
        raise DataValidationError("catalogue: the table has no rows; items need at least an item_id")
    v = TableValidator(CATALOGUE, ctx.config.validation, absent=absent_columns(ctx.info, "catalogue"))
    checked = v.check(table)
    codes = checked.codes
    dup = duplicate_mask([key_codes(checked.table["item_id"].combine_chunks())]) & (codes == 0)
    codes[dup] = v.reasons.code(DUPLICATE)
    ctx.quarantine.write_table(v.quarantine(table, codes, 0))
    report = v.finish()
    clean = checked.table.filter(pa.array(codes == 0))
    items = CatalogueData(clean["item_id"].combine_chunks(), strings(clean["title"]), strings(clean["category"]),
                          strings(clean["brand"]), clean["price"].to_numpy(zero_copy_only=False).astype(np.float64))
    return CheckedCatalogue(items, report)
