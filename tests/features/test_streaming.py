"""The streaming preprocessing: identical to the in-memory reference, whatever the partitioning."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from shoprank.config import resolve_config
from shoprank.data.streaming import NpyWriter, string_hash
from shoprank.data.validation import duplicate_mask
from shoprank.features.dataset import SPLITS, load_split
from shoprank.features.preprocess import history_rows, preprocess, sample_negatives
from shoprank.features.transform import INPUTS
from tests.conftest import NOW, quiet
from tests.support.reference_preprocess import reference_preprocess

SMALL_PIECES = {"preprocess": {"partition_rows": 3_000, "bucket_rows": 1_500}, "sources": {"chunk_rows": 2_000}}


@pytest.fixture(scope="module")
def fresh_features(tmp_path_factory, tiny_raw, tiny_config):
    """The tiny shop preprocessed for this module alone: other tests write into the shared `tiny_features`
    (a shuffled-label training adds train/shuffled_label.npy), and these comparisons must see exactly what
    preprocess wrote."""
    base = tmp_path_factory.mktemp("fresh")
    report = preprocess(tiny_raw, base / "features", base / "transform", tiny_config, progress=quiet, now=NOW)
    return base / "features", report


def _arrays(features):
    out = {}
    for split in SPLITS:
        d = features / split
        out[split] = {f.stem: np.load(f) for f in d.glob("*.npy")}
    return out


def _assert_same_arrays(got, expected):
    """The same array names in every split, both ways, and every array equal."""
    for split in SPLITS:
        assert sorted(got[split]) == sorted(expected[split]), split
        for name, want in expected[split].items():
            np.testing.assert_array_equal(got[split][name], want, err_msg=f"{split}/{name}")


def test_streaming_preprocess_matches_the_in_memory_reference(fresh_features, tiny_raw, tiny_config):
    features, _ = fresh_features
    ref = reference_preprocess(tiny_raw, tiny_config, NOW)
    got = _arrays(features)
    # + labels, gain, oracle, position, request, top_category
    assert all(len(ref[split]) == len(INPUTS) + 8 for split in SPLITS)
    _assert_same_arrays(got, ref)


def test_partitioning_and_bucket_sizes_do_not_change_the_output(tmp_path, fresh_features, tiny_raw):
    features, report = fresh_features
    config = resolve_config("tiny", SMALL_PIECES)
    small = preprocess(tiny_raw, tmp_path / "f", tmp_path / "t", config, progress=quiet, now=NOW)
    assert small["partitions"]["impressions"] > 3 and small["partitions"]["buckets"] > 8
    assert report["partitions"]["impressions"] == 1 and report["partitions"]["buckets"] == 3
    _assert_same_arrays(_arrays(tmp_path / "f"), _arrays(features))
    assert json.loads((features / "golden_requests.json").read_text()) == \
        json.loads((tmp_path / "f" / "golden_requests.json").read_text())
    assert small["validation"] == report["validation"]
    q1, q2 = pd.read_parquet(features / "quarantine.parquet"), pd.read_parquet(tmp_path / "f" / "quarantine.parquet")
    key = ["table", "row", "reason"]
    assert q1[key].sort_values(key).reset_index(drop=True).equals(q2[key].sort_values(key).reset_index(drop=True))


def test_history_rows_are_strictly_earlier_and_right_aligned():
    rows, used = history_rows(np.array([0, 0, 0, 1]), np.array([10, 20, 30, 5]), np.array([7, 8, 9, 4]),
                              np.array([0, 0, 1, 2]), np.array([30, 31, 5, 9]), length=2)
    assert rows.tolist() == [[7, 8], [8, 9], [-1, -1], [-1, -1]] and used.tolist() == [2, 2, 0, 0]


def test_negatives_are_distinct_not_the_positive_and_reproducible():
    rows = np.arange(1000, 1200)
    pos = rows % 7
    cdf = np.cumsum(np.array([50, 1, 1, 1, 1, 1, 1, 0, 0, 1], float))
    a = sample_negatives(rows, pos, 4, cdf, 10, seed=3)
    assert a.shape == (200, 4) and (a >= 0).all() and (a < 10).all()
    assert not (a == pos[:, None]).any()
    assert all(len(set(r)) == 4 for r in a.tolist())
    np.testing.assert_array_equal(a[50:60], sample_negatives(rows[50:60], pos[50:60], 4, cdf, 10, seed=3))


def test_string_hash_is_stable_and_spreads():
    values = pa.array([f"user-{i}" for i in range(2000)] + [None, ""])
    h = string_hash(values)
    assert h[-1] == 0 and h[-2] == 0
    np.testing.assert_array_equal(h[:10], string_hash(values.slice(0, 10)))
    assert np.bincount((h[:2000] % np.uint64(8)).astype(int), minlength=8).min() > 150
    long = pa.array(["x" * 40 + "a" + "y" * 40, "x" * 40 + "b" + "y" * 40])
    assert len(set(string_hash(long).tolist())) == 1  # same ends: a documented collision, harmless


def test_duplicate_mask_flags_later_repeats_only():
    keys = [np.array([1, 2, 1, 1, 3, 2]), np.array([5, 5, 5, 6, 7, 5])]
    assert duplicate_mask(keys).tolist() == [False, False, True, False, False, True]
    wide = [np.array([0, 2**40, 0]), np.array([2**40, 1, 2**40]), np.array([1, 1, 1])]  # lexsort path
    assert duplicate_mask(wide).tolist() == [False, False, True]


def test_npy_writer_streams_a_loadable_array(tmp_path):
    w = NpyWriter(tmp_path / "x.npy", np.int32, 5, (2,))
    w.write(np.arange(6).reshape(3, 2))
    w.write(np.arange(4).reshape(2, 2))
    w.close()
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy", mmap_mode="r")[3:], np.arange(4).reshape(2, 2))
    with pytest.raises(RuntimeError, match="expected 3"):
        bad = NpyWriter(tmp_path / "y.npy", np.int8, 3)
        bad.write(np.zeros(2))
        bad.close()


def test_split_reader_sees_contiguous_requests_per_split(tiny_features):
    features, _, report = tiny_features
    for split in SPLITS:
        req = np.asarray(load_split(features, split).column("request"))
        assert req[0] == 0 and req[-1] == report["splits"][split]["requests"] - 1
    assert report["split_mode"] == "time" and report["task"] == "search"
