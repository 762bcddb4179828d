"""The serving code path: catalogue look-up + the feature transform + a scorer."""

import json
import sys

import numpy as np
import pytest

from shoprank.features.transform import INPUTS
from shoprank.scoring.ranker import Ranker, split_ranked


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


def test_onnx_backend_serves_the_triton_repositorys_model(tiny_bundle, tmp_path):
    ranker = Ranker.load(tiny_bundle["bundle_dir"], "onnx")
    expected = np.load(tiny_bundle["optimized_dir"] / "scores_onnx.npy")
    for g in _golden(tiny_bundle):
        ranked = ranker.rank([g["query"]], [g["history"]], [g["candidates"]])[0]
        np.testing.assert_allclose(ranked.scores, expected[g["test_rows"][0]: g["test_rows"][1]], atol=1e-6)
    (tmp_path / "transform").mkdir()
    with pytest.raises(FileNotFoundError, match="ONNX export"):
        Ranker.load(tmp_path, "onnx")


def test_int8_ranker_does_not_import_tensorflow():
    import subprocess

    code = "import sys, shoprank.scoring.ranker, shoprank.scoring.backends; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_request_side_gathers_equal_the_full_transform_on_odd_requests(tiny_bundle):
    """The fast path (history and candidates through catalogue rows) against every field through the transform:
    histories empty, shorter and longer than history_len, with ids the catalogue does not know or empty ids;
    queries empty, repeated, with punctuation and case; requests of equal and of different sizes."""
    ranker = Ranker.load(tiny_bundle["bundle_dir"], "tflite")
    ids = list(ranker.catalogue.item_id)
    length = ranker.transform.config.history_len
    rng = np.random.default_rng(7)
    odd = ["no-such-item", "", "x1", ids[0] + " "]
    for trial in range(60):
        n_req = int(rng.integers(1, 6))
        queries = [str(rng.choice(["", "Red  SHOE!", "red shoe", "zzz unknownword", ranker.catalogue.title[0]]))
                   for _ in range(n_req)]
        histories = []
        for _ in range(n_req):
            h = [ids[j] for j in rng.integers(len(ids), size=int(rng.choice([0, 1, length - 1, length, 3 * length])))]
            histories.append([str(rng.choice(odd)) if rng.random() < 0.2 else v for v in h])
        size = 7 if trial % 2 else None
        candidates = [[ids[j] for j in rng.integers(len(ids), size=size or int(rng.integers(1, 20)))]
                      for _ in range(n_req)]
        fast, fast_unknown = ranker.features(queries, histories, candidates)
        full, full_unknown = ranker._features_full(queries, histories, candidates)
        for k in INPUTS:
            assert fast[k].dtype == full[k].dtype and fast[k].tobytes() == full[k].tobytes(), (k, trial)
        np.testing.assert_array_equal(fast_unknown, full_unknown)


def test_split_ranked_sorts_a_batch_like_one_request_at_a_time():
    rng = np.random.default_rng(3)
    for sizes in ([5, 5, 5], [3, 7, 1], [4]):
        candidates = [[f"r{r}c{i}" for i in range(n)] for r, n in enumerate(sizes)]
        scores = rng.choice([0.1, 0.2, 0.3], size=sum(sizes)).astype(np.float32)  # ties: stable order
        unknown = rng.random(sum(sizes)) < 0.3
        batch = split_ranked(scores, unknown, candidates)
        lo = 0
        for cands, got in zip(candidates, batch):
            hi = lo + len(cands)
            order = np.argsort(-scores[lo:hi], kind="stable")
            assert got.ranking == [cands[i] for i in order]
            assert got.unknown_items == [c for c, u in zip(cands, unknown[lo:hi]) if u]
            np.testing.assert_array_equal(got.scores, scores[lo:hi])
            lo = hi
