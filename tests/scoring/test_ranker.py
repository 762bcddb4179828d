"""The serving code path: catalogue look-up + the feature transform + a scorer."""

import json
import sys

import numpy as np
import pytest

from shoprank.features.transform import INPUTS, Catalogue, FeatureTransform
from shoprank.scoring.ranker import Ranker, split_ranked


def _golden(tiny_bundle):
    return json.loads((tiny_bundle["features_dir"] / "golden_requests.json").read_text())


def _full_transform(bundle_dir):
    """The reference: every field of every row through the pipeline's transform (FeatureTransform.transform on the
    catalogue's fields), and the unknown mask (not in the catalogue, or not in the item vocabulary)."""
    transform = FeatureTransform.load(bundle_dir / "transform")
    catalogue = Catalogue.load(bundle_dir / "transform" / "catalogue.parquet")

    def full(queries, histories, candidates):
        batch, unknown = catalogue.batch(queries, histories, candidates)
        vocab = transform.vocabs["item"]
        unknown = unknown | ~np.fromiter((vocab.known(v) for v in batch.item_id), bool, len(batch.item_id))
        return transform.transform(batch), unknown

    return full, catalogue


def test_item_tables_equal_the_full_transform(tiny_bundle):
    ranker = Ranker.load(tiny_bundle["bundle_dir"], "tflite")
    full, _ = _full_transform(tiny_bundle["bundle_dir"])
    golden = _golden(tiny_bundle)
    args = ([g["query"] for g in golden], [g["history"] for g in golden], [g["candidates"] for g in golden])
    fast, fast_unknown = ranker.features(*args)
    ref, ref_unknown = full(*args)
    for k in INPUTS:
        np.testing.assert_array_equal(fast[k], ref[k], err_msg=k)
    np.testing.assert_array_equal(fast_unknown, ref_unknown)


def test_ranking_matches_the_evaluator_and_reports_unknown_items(tiny_bundle):
    ranker = Ranker.load(tiny_bundle["bundle_dir"], "tflite")
    expected = np.load(tiny_bundle["optimized_dir"] / "scores_int8_tflite.npy")
    g = _golden(tiny_bundle)[0]
    ranked = ranker.rank([g["query"]], [g["history"]], [g["candidates"]])[0]
    known = ~np.isin(g["candidates"], ranked.unknown_items)
    np.testing.assert_allclose(ranked.scores[known], expected[g["test_rows"][0]: g["test_rows"][1]][known], atol=1e-6)
    assert ranked.ranking[0] == g["candidates"][int(np.argmax(ranked.scores))]
    mixed = ranker.rank([g["query"]], [g["history"]], [g["candidates"][:3] + ["no-such-item"]])[0]
    assert mixed.unknown_items == [c for c in g["candidates"][:3] if c in ranked.unknown_items] + ["no-such-item"]
    np.testing.assert_allclose(mixed.scores[:3][known[:3]], ranked.scores[:3][known[:3]], atol=1e-6)


def test_unknown_candidates_rank_last_by_default_and_by_score_when_asked(tiny_bundle):
    """Issue 11: ["i0000381", "i0000259", "nope"] scored 0.039, 0.168, 0.285, so the unknown id ranked first. By
    default unknown candidates now rank after every known one (score 0.0); unknown_candidates="score" is the
    model's order. Both report them."""
    bundle = tiny_bundle["bundle_dir"]
    last, by_score = Ranker.load(bundle, "tflite"), Ranker.load(bundle, "tflite", unknown_candidates="score")
    g = _golden(tiny_bundle)[0]
    ids = [c for c in g["candidates"] if c not in last.rank([g["query"]], [[]], [g["candidates"]])[0].unknown_items]
    candidates = ["nope", ids[0], "", ids[1], "also-unknown", ids[2]]
    args = ([g["query"]], [g["history"]], [candidates])
    ranked = last.rank(*args)[0]
    assert ranked.ranking[:3] == sorted(ids[:3], key=lambda c: -ranked.scores[candidates.index(c)])
    assert ranked.ranking[3:] == ["nope", "", "also-unknown"]  # after every known one, in request order
    assert ranked.unknown_items == ["nope", "", "also-unknown"]
    assert (ranked.scores[[0, 2, 4]] == 0).all() and (ranked.scores[[1, 3, 5]] > 0).all()
    model = by_score.rank(*args)[0]
    assert model.unknown_items == ranked.unknown_items
    np.testing.assert_array_equal(model.scores[[1, 3, 5]], ranked.scores[[1, 3, 5]])
    assert (model.scores[[0, 2, 4]] > 0).all()
    assert model.ranking == [candidates[i] for i in np.argsort(-model.scores, kind="stable")]
    with pytest.raises(ValueError, match="unknown_candidates"):
        Ranker.load(bundle, "tflite", unknown_candidates="first")


def test_served_composition_equals_the_evaluator_on_the_whole_test_split(tiny_bundle):
    """The gate's check, on the tiny shop: every test row through the served path (request tower once per request,
    item vectors from the bundle's tables by id, the head) against the evaluator's scores (item tower on the test
    split's own tensors). Also for the whole graph (SavedModel) with the tables' input tensors."""
    from shoprank.evaluation.gate import test_split_check

    features = tiny_bundle["features_dir"]
    diffs = test_split_check(features, tiny_bundle["bundle_dir"] / "transform", tiny_bundle["optimized_dir"])
    assert set(diffs) == {"tflite", "savedmodel"}
    assert max(diffs.values()) <= 1e-5, diffs


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
    """The table path (history and candidates through item-table rows) against every field through the transform:
    histories empty, shorter and longer than history_len, with ids the catalogue does not know or empty ids;
    candidates likewise; queries empty, repeated, with punctuation and case; requests of equal and of different
    sizes."""
    ranker = Ranker.load(tiny_bundle["bundle_dir"], "tflite")
    full, catalogue = _full_transform(tiny_bundle["bundle_dir"])
    ids = list(catalogue.item_id)
    length = ranker.transform.config.history_len
    rng = np.random.default_rng(7)
    odd = ["no-such-item", "", "x1", ids[0] + " "]
    for trial in range(60):
        n_req = int(rng.integers(1, 6))
        queries = [str(rng.choice(["", "Red  SHOE!", "red shoe", "zzz unknownword", catalogue.title[0]]))
                   for _ in range(n_req)]
        histories = []
        for _ in range(n_req):
            h = [ids[j] for j in rng.integers(len(ids), size=int(rng.choice([0, 1, length - 1, length, 3 * length])))]
            histories.append([str(rng.choice(odd)) if rng.random() < 0.2 else v for v in h])
        size = 7 if trial % 2 else None
        candidates = [[ids[j] for j in rng.integers(len(ids), size=size or int(rng.integers(1, 20)))]
                      for _ in range(n_req)]
        candidates = [[str(rng.choice(odd)) if rng.random() < 0.1 else v for v in c] for c in candidates]
        fast, fast_unknown = ranker.features(queries, histories, candidates)
        ref, ref_unknown = full(queries, histories, candidates)
        for k in INPUTS:
            assert fast[k].dtype == ref[k].dtype and fast[k].tobytes() == ref[k].tobytes(), (k, trial)
        np.testing.assert_array_equal(fast_unknown, ref_unknown)
        # The composed scores of a ranking request equal the composition on those whole tensors.
        scores, _ = ranker.score(queries, histories, candidates)
        np.testing.assert_allclose(scores, ranker.scorer.score(fast), atol=1e-6)


def test_folded_affinity_scores_equal_the_ids_path_bit_for_bit(tiny_bundle):
    """The composed backend folds a query's affinity into the head (per target id, its columns' rows summed, cached
    per query) and gathers per candidate; the evaluator's path gathers every column's row per candidate. The same
    sums in the same order: equal scores bit for bit, on odd requests (no query words, unknown words and ids)."""
    ranker = Ranker.load(tiny_bundle["bundle_dir"], "tflite")
    assert ranker.folds_affinity
    _, catalogue = _full_transform(tiny_bundle["bundle_dir"])
    ids = list(catalogue.item_id)
    rng = np.random.default_rng(3)
    queries = ["", "red shoe", "zzz unknownword", catalogue.title[0], catalogue.title[1], "red shoe"]
    for query in queries:
        candidates = [ids[j] for j in rng.integers(len(ids), size=int(rng.integers(1, 40)))] + ["no-such-item"]
        history = [ids[j] for j in rng.integers(len(ids), size=5)]
        ranker.folds_affinity = True
        folded, _ = ranker.score([query], [history], [candidates])
        ranker.folds_affinity = False
        plain, _ = ranker.score([query], [history], [candidates])
        assert folded.tobytes() == plain.tobytes(), query
    assert len(ranker._folded) == len(set(queries))  # one entry per distinct query: repeats are hits
    # A micro-batch of requests (the server's at concurrency): each request's block from its own query's tables.
    candidates = [[ids[j] for j in rng.integers(len(ids), size=int(rng.integers(1, 30)))] for _ in queries]
    histories = [[ids[j] for j in rng.integers(len(ids), size=3)] for _ in queries]
    ranker.folds_affinity = True
    folded, _ = ranker.score(queries, histories, candidates)
    ranker.folds_affinity = False
    plain, _ = ranker.score(queries, histories, candidates)
    assert folded.tobytes() == plain.tobytes()


def test_split_ranked_sorts_a_batch_like_one_request_at_a_time():
    rng = np.random.default_rng(3)
    for sizes in ([5, 5, 5], [3, 7, 1], [4]):
        candidates = [[f"r{r}c{i}" for i in range(n)] for r, n in enumerate(sizes)]
        scores = rng.choice([0.1, 0.2, 0.3], size=sum(sizes)).astype(np.float32)  # ties: stable order
        unknown = rng.random(sum(sizes)) < 0.3
        for policy in ("score", "last"):
            batch = split_ranked(scores, unknown, candidates, policy)
            lo = 0
            for cands, got in zip(candidates, batch):
                hi = lo + len(cands)
                s, u = scores[lo:hi], unknown[lo:hi]
                if policy == "score":
                    order = np.argsort(-s, kind="stable")
                    np.testing.assert_array_equal(got.scores, s)
                else:  # known by score (ties in request order), then unknown in request order, scored 0
                    order = [*(i for i in np.argsort(-s, kind="stable") if not u[i]), *np.flatnonzero(u)]
                    np.testing.assert_array_equal(got.scores, np.where(u, 0, s))
                assert got.ranking == [cands[i] for i in order]
                assert got.unknown_items == [c for c, x in zip(cands, u) if x]
                lo = hi
