"""The per-item tables (shoprank.scoring.item_tables): every id a request can carry has the row the transform
would give it, whatever the catalogue lacks; the tables are memory-mapped, not copied."""

import shutil

import numpy as np
import pyarrow.parquet as pq

from shoprank.features.transform import INPUTS, Catalogue, FeatureTransform
from shoprank.scoring.item_tables import IN_CATALOGUE, IN_VOCABULARY, ItemTables, build_item_tables
from shoprank.scoring.ranker import Ranker


def test_vocabulary_ids_missing_from_the_catalogue_get_their_own_rows(tiny_bundle, tmp_path):
    """A catalogue that lost items the model was trained on (a newer catalogue, same model): those ids are still
    in the item vocabulary, so the transform gives them their own index with no catalogue fields, and the tables
    hold a row for each; tensors equal the transform's for candidates and histories mixing every kind of id."""
    bundle = tiny_bundle["bundle_dir"]
    transform_dir = tmp_path / "transform"
    shutil.copytree(bundle / "transform", transform_dir)
    table = pq.read_table(transform_dir / "catalogue.parquet")
    dropped = table.column("item_id").to_pylist()[:25]
    pq.write_table(table.slice(25), transform_dir / "catalogue.parquet")
    meta = build_item_tables(transform_dir, tmp_path / "items", tiny_bundle["optimized_dir"] / "towers")
    transform = FeatureTransform.load(transform_dir)
    extra = [v for v in dropped if transform.vocabs["item"].known(v)]
    assert extra and meta["extra_vocabulary_rows"] == len(extra)

    tables = ItemTables(tmp_path / "items")
    rows = tables.rows(extra)
    assert (rows > tables.padding_row + tables.oov_buckets).all()
    assert (np.asarray(tables.flags)[rows] == IN_VOCABULARY).all() and not tables.known(rows).any()
    kept = table.column("item_id").to_pylist()[25:30]
    assert (np.asarray(tables.flags)[tables.rows(kept)] & IN_CATALOGUE).all()

    ranker = Ranker(FeatureTransform.load(transform_dir, unindexed=("item",)), tables, None)
    catalogue = Catalogue.load(transform_dir / "catalogue.parquet")
    candidates = [[*extra[:3], *kept, "nope", "", "ünïcode-id"], [kept[0], extra[-1]]]
    histories = [[extra[0], kept[1], "nope", "ünïcode-id"], []]
    got, unknown = ranker.features(["red shoe", ""], histories, candidates)
    batch, missing = catalogue.batch(["red shoe", ""], histories, candidates)
    expected = transform.transform(batch)
    for k in INPUTS:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    vocab = transform.vocabs["item"]
    np.testing.assert_array_equal(unknown, missing | ~np.array([vocab.known(v) for v in batch.item_id]))


def test_tables_are_memory_mapped_and_small_ones_also_in_memory_with_the_same_results(tiny_bundle):
    """in_memory_bytes=0: everything stays on the mapping (a large catalogue) and ids are found by binary search;
    the default gives this small catalogue float32 vectors and a dict index in memory: the same rows and bits."""
    mapped = ItemTables(tiny_bundle["bundle_dir"] / "items", in_memory_bytes=0)
    small = ItemTables(tiny_bundle["bundle_dir"] / "items")
    assert mapped.vectors is not None and mapped.vectors.dtype == np.float16 and mapped._index is None
    for array in (mapped.vectors, mapped.inputs["title_tokens"], mapped.flags):
        assert not array.flags.owndata and not array.flags.writeable  # a view of the read-only mapping
    assert small.vectors.dtype == np.float32 and small._index is not None
    catalogue = Catalogue.load(tiny_bundle["bundle_dir"] / "transform" / "catalogue.parquet")
    ids = list(catalogue.item_id)
    longer = ids[0] + "-and-more"  # longer than every stored id: cut to the width for the search, never found
    odd = [longer, "", "nope", "ünïcode-id", ids[3]]
    for tables in (mapped, small):
        np.testing.assert_array_equal(tables.rows(ids), np.arange(len(ids)))
        assert len(tables) == len(ids) and set(tables.some_ids(3)) <= set(ids) and len(tables.some_ids(3)) == 3
        assert tables.rows([longer])[0] > tables.padding_row
        assert tables.rows([""])[0] == tables.padding_row and tables.rows([]).size == 0
    np.testing.assert_array_equal(mapped.rows(odd), small.rows(odd))
    rows = mapped.rows([*ids[:50], *odd])
    assert mapped.item_vectors(rows).tobytes() == small.item_vectors(rows).tobytes()


def test_transform_without_the_item_vocabulary_keeps_its_size_and_refuses_look_ups(tiny_bundle):
    import pytest

    d = tiny_bundle["bundle_dir"] / "transform"
    full, light = FeatureTransform.load(d), FeatureTransform.load(d, unindexed=("item",))
    assert light.sizes == full.sizes
    np.testing.assert_array_equal(light.tokens("red running shoe", 6), full.tokens("red running shoe", 6))
    with pytest.raises(RuntimeError, match="item tables"):
        light.vocabs["item"].lookup("i0000001")
