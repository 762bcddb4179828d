"""Amazon Shopping Queries (ESCI) -> shoprank tables.

Input (parquet or CSV, file or directory of parts, under one directory):

* examples: `shopping_queries_dataset_examples.*` or `examples.*` with `query_id`, `query`, `product_id`,
  `esci_label` (E/S/C/I, or Exact/Substitute/Complement/Irrelevant) and optionally `product_locale`, `split`
  (train/test), `small_version`, `large_version`;
* products: `shopping_queries_dataset_products.*` or `products.*` with `product_id`, `product_title`,
  `product_brand`, `product_locale` (description, bullet points and colour are not used).

Mapping: one search request per `query_id` (its `query` text), one impression row per example; the
graded relevance E=3, S=2, C=1, I=0 is the NDCG gain; the binary training label `clicked` is E (or E or
S: `sources.esci_positive_labels`); `carted`/`purchased` are 0. ESCI has no users, no behaviour and no
timestamps: the history is empty, and the split comes from the `split` column (validation carved out of
train by a hash of the query id, see shoprank.features.preprocess). Products become the catalogue: `title` and
`brand`; there is no price or category (missing: bucket 0). Product ids repeat across locales, so with
more than one locale kept, item ids are `<locale>:<product_id>` (and request ids `<locale>:<query_id>`).

Options: `locale=us|es|jp` keeps one locale (default `sources.esci_locale`, "" = all), `version=small|large`
keeps the rows of the task's small or large version, `encoding=` for CSV text in another encoding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shoprank.config import ShoprankConfig
from shoprank.data.sources import (
    Converter,
    SourceSpec,
    check_options,
    columns_of,
    duplicate_ids_check,
    empty_table,
    find_table,
    open_location,
    read_chunks,
    text_of,
    write_source_info,
)
from shoprank.errors import SourceError
from shoprank.schema import CATALOGUE, EVENTS, IMPRESSIONS

__all__ = ["ABSENT", "EXAMPLES", "GAINS", "LABEL_WORDS", "OPTIONS", "PRODUCTS", "load_esci"]

OPTIONS = ("locale", "version", "encoding")
EXAMPLES = ("shopping_queries_dataset_examples", "examples")
PRODUCTS = ("shopping_queries_dataset_products", "products")
GAINS = {"E": 3, "S": 2, "C": 1, "I": 0}
LABEL_WORDS = {"exact": "E", "substitute": "S", "complement": "C", "irrelevant": "I"}
# Impression columns ESCI does not have at all: validation does not require them.
ABSENT = {"impressions": ["timestamp", "user_id", "session_id", "position", "oracle"],
          "catalogue": ["category", "price"], "events": []}


def _require(columns: list[str], needed: tuple[str, ...], what: str) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise SourceError(f"ESCI {what}: column(s) {missing} missing; found {columns}")


def _prefixed(ids: pa.Array, locales: pa.Array | None) -> pa.Array:
    if locales is None:
        return ids
    return pc.binary_join_element_wise(locales, ids, ":")


def load_esci(spec: SourceSpec, out_dir: str | Path, config: ShoprankConfig) -> dict:
    """Convert an ESCI directory to catalogue/impressions/events parquet under `out_dir`; returns the report."""
    check_options(spec, OPTIONS)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fs, base = open_location(spec.location)
    enc = spec.options.get("encoding", "utf-8")
    locale = spec.options.get("locale", config.sources.esci_locale).strip()
    version = spec.options.get("version", "").strip()
    if version not in ("", "small", "large"):
        raise SourceError(f"esci option version={version!r}: use 'small' or 'large'")
    chunk = config.sources.chunk_rows
    positive = set(config.sources.esci_positive_labels)
    examples = find_table(fs, base, EXAMPLES, "ESCI examples")
    products = find_table(fs, base, PRODUCTS, "ESCI products")

    # Products -> catalogue. Read whole (only the columns used): a catalogue has to fit in memory anyway.
    pcols = columns_of(products, encoding=enc)
    _require(pcols, ("product_id",), f"products ({products.path})")
    wanted = [c for c in ("product_id", "product_title", "product_brand", "product_locale") if c in pcols]
    parts = list(read_chunks(products, chunk, columns=wanted, encoding=enc))
    prod = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    filtered = {"products": 0, "examples": 0}
    if locale and "product_locale" in prod.column_names:
        keep = pc.equal(text_of(prod["product_locale"]), locale).fill_null(False)
        filtered["products"] = prod.num_rows - int(pc.sum(keep).as_py() or 0)
        prod = prod.filter(keep)
        if prod.num_rows == 0:
            raise SourceError(f"ESCI products: no product has product_locale '{locale}'")
    locales = (pc.unique(text_of(prod["product_locale"])).to_pylist()
               if "product_locale" in prod.column_names else [])
    multi = not locale and len(locales) > 1
    item_ids = _prefixed(text_of(prod["product_id"]),
                         text_of(prod["product_locale"]) if multi else None)
    dup = duplicate_ids_check(
        item_ids, f"ESCI products ({products.path})", "product_id" + (" per locale" if multi else ""),
        config.validation, "" if multi or "product_locale" not in prod.column_names else
        "; product ids repeat across locales: keep one (?locale=us) or keep all (no locale option)")
    cat_conv = Converter(CATALOGUE, out / "catalogue.parquet", products.name, config.validation,
                         {"item_id": "product_id", "title": "product_title", "brand": "product_brand"})
    for lo in range(0, prod.num_rows, chunk):
        sub = prod.slice(lo, chunk)
        ids = item_ids.slice(lo, chunk)
        cat_conv.write({"item_id": ids,
                        "title": sub["product_title"] if "product_title" in sub.column_names else None,
                        "brand": sub["product_brand"] if "product_brand" in sub.column_names else None}, sub)
    cat_report = cat_conv.close()
    del prod, item_ids, parts

    # Examples -> impressions, streamed.
    ecols = columns_of(examples, encoding=enc)
    _require(ecols, ("product_id", "esci_label"), f"examples ({examples.path})")
    if "query_id" not in ecols and "query" not in ecols:
        raise SourceError(f"ESCI examples ({examples.path}): needs query_id or query; found {ecols}")
    version_col = f"{version}_version" if version else None
    if version_col and version_col not in ecols:
        raise SourceError(f"ESCI examples: option version={version} needs the column '{version_col}'")
    wanted = [c for c in ("query_id", "query", "product_id", "product_locale", "esci_label", "split", version_col)
              if c and c in ecols]
    imp_conv = Converter(IMPRESSIONS, out / "impressions.parquet", examples.name, config.validation,
                         {"request_id": "query_id", "item_id": "product_id", "relevance": "esci_label",
                          "clicked": "esci_label"})
    labels_seen: dict[str, int] = {}
    for raw in read_chunks(examples, chunk, columns=wanted, encoding=enc):
        if version_col:
            v = text_of(raw[version_col])
            keep = pc.equal(pc.utf8_trim_whitespace(v), "1").fill_null(False)
            filtered["examples"] += raw.num_rows - int(pc.sum(keep).as_py() or 0)
            raw = raw.filter(keep)
        if locale and "product_locale" in raw.column_names:
            keep = pc.equal(text_of(raw["product_locale"]), locale).fill_null(False)
            filtered["examples"] += raw.num_rows - int(pc.sum(keep).as_py() or 0)
            raw = raw.filter(keep)
        n = raw.num_rows
        if n == 0:
            continue
        loc = text_of(raw["product_locale"]) if multi and "product_locale" in raw.column_names else None
        qid = text_of(raw["query_id"] if "query_id" in raw.column_names else raw["query"])
        label_text = pc.utf8_upper(pc.utf8_trim_whitespace(text_of(raw["esci_label"])))
        letters = pc.utf8_slice_codeunits(label_text, 0, 1)
        word_ok = pc.is_in(label_text, pa.array([w.upper() for w in LABEL_WORDS]))
        single_ok = pc.is_in(label_text, pa.array(list(GAINS)))
        known = pc.or_(word_ok, single_ok).fill_null(False).to_numpy(zero_copy_only=False)
        letter = np.asarray(letters.fill_null("").to_numpy(zero_copy_only=False), dtype=object)
        gain = np.array([GAINS.get(x, -1) for x in letter], dtype=np.int64) if n else np.zeros(0, np.int64)
        for x, c in zip(*np.unique(letter[known], return_counts=True)):
            labels_seen[x] = labels_seen.get(x, 0) + int(c)
        defect = np.where(known, None, "unknown esci_label").astype(object)
        clicked = np.isin(letter, list(positive)).astype(np.int8)
        mask = ~known
        imp_conv.write({
            "request_id": _prefixed(qid, loc),
            "query": raw["query"] if "query" in raw.column_names else None,
            "item_id": _prefixed(text_of(raw["product_id"]), loc),
            "clicked": pa.array(clicked, mask=mask),
            "carted": pa.array(np.zeros(n, np.int8)),
            "purchased": pa.array(np.zeros(n, np.int8)),
            "relevance": pa.array(gain, mask=mask),
            "split": raw["split"] if "split" in raw.column_names else None,
        }, raw, defect)
        del raw  # before the next read: one chunk in memory, not two
    imp_report = imp_conv.close()
    if imp_report["rows"] == 0:
        raise SourceError(f"ESCI examples ({examples.path}): no rows left after the locale/version filters")
    empty_table(EVENTS, out / "events.parquet")
    info = {"format": "esci", "task": "search", "location": spec.location, "options": spec.options,
            "files": {"examples": list(examples.files), "products": list(products.files)},
            "absent": ABSENT, "item_ids": "locale:product_id" if multi else "product_id",
            "locales": locales, "positive_labels": "".join(sorted(positive)), "labels": labels_seen,
            "filtered": filtered, "duplicate_products": dup,
            "conversion": {"catalogue": cat_report, "impressions": imp_report}}
    write_source_info(out, info)
    return info
