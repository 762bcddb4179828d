"""The serving code path: catalogue look-up + the feature transform + a scorer."""

import json
import sys

import numpy as np

from shoprank.ranker import Ranker
from shoprank.transform import INPUTS


def _golden(tiny_bundle):
    return json.loads((tiny_bundle["features_dir"] / "golden_requests.json").read_text())


def test_precomputed_catalogue_rows_equal_the_full_transform(tiny_bundle):
    ranker = Ranker.load(tiny_bundle["bundle_dir"], "tflite")
    golden = _golden(tiny_bundle)
    args = ([g["query"] for g in golden], [g["history"] for g in golden], [g["candidates"] for g in golden])
    fast, fast_unknown = ranker.features(*args)
    full, full_unknown = ranker._features_full(*args)
    for k in INPUTS:
        np.testing.assert_array_equal(fast[k], full[k], err_msg=k)
    np.testing.assert_array_equal(fast_unknown, full_unknown)


def test_ranking_matches_the_evaluator_and_reports_unknown_items(tiny_bundle):
    ranker = Ranker.load(tiny_bundle["bundle_dir"], "tflite")
    expected = np.load(tiny_bundle["optimized_dir"] / "scores_int8_tflite.npy")
    g = _golden(tiny_bundle)[0]
    ranked = ranker.rank([g["query"]], [g["history"]], [g["candidates"]])[0]
    np.testing.assert_allclose(ranked.scores, expected[g["test_rows"][0]: g["test_rows"][1]], atol=1e-6)
    assert ranked.ranking[0] == g["candidates"][int(np.argmax(ranked.scores))]
    mixed = ranker.rank([g["query"]], [g["history"]], [g["candidates"][:3] + ["no-such-item"]])[0]
    assert mixed.unknown_items == ["no-such-item"]
    np.testing.assert_allclose(mixed.scores[:3], ranked.scores[:3], atol=1e-6)


def test_int8_ranker_does_not_import_tensorflow():
    import subprocess

    code = "import sys, shoprank.ranker, shoprank.inference; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
