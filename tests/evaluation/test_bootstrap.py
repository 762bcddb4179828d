"""The paired bootstrap over requests: its count-weighted shortcut gives what copying the drawn requests' rows
and recomputing the metrics from scratch gives."""

import numpy as np
import pytest

from shoprank.evaluation.bootstrap import draws, paired_bootstrap, weighted_auc
from shoprank.evaluation.listwise import list_metrics
from shoprank.evaluation.metrics import roc_auc


def _toy(seed=3, lists=30):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 9, lists)
    groups = np.repeat(rng.permutation(1000)[:lists], sizes)  # ids in any order, rows of a list contiguous
    labels = (rng.random(groups.size) < 0.3).astype(np.int8)
    gains = labels * rng.integers(1, 3, groups.size)
    a = labels * 0.5 + rng.random(groups.size)
    b = np.round(labels * 0.3 + rng.random(groups.size), 1)  # coarse: ties, as int8 scores have
    return groups, labels, gains, a, b


def _direct(groups, labels, gains, a, b, k, resamples, seed, level):
    """The bootstrap done naively: rows of the drawn requests copied (a request drawn twice is two lists)."""
    starts = np.concatenate([[0], np.flatnonzero(groups[1:] != groups[:-1]) + 1, [groups.size]])
    ndcg, auc = [], []
    for idx in draws(starts.size - 1, resamples, seed):
        rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in idx])
        new_groups = np.repeat(np.arange(idx.size), np.diff(starts)[idx])
        ma = list_metrics(new_groups, gains[rows], a[rows], k).ndcg
        mb = list_metrics(new_groups, gains[rows], b[rows], k).ndcg
        ndcg.append(ma.mean() - mb.mean())
        auc.append(roc_auc(labels[rows], a[rows]) - roc_auc(labels[rows], b[rows]))
    tail = (1 - level) / 2 * 100
    return np.percentile(ndcg, [tail, 100 - tail]), np.percentile(auc, [tail, 100 - tail])


def test_interval_equals_a_direct_computation():
    groups, labels, gains, a, b = _toy()
    out = paired_bootstrap(groups, labels, gains, a, b, k=5, resamples=200, seed=11, level=0.9)
    ndcg, auc = _direct(groups, labels, gains, a, b, 5, 200, 11, 0.9)
    assert [out["ndcg_at_5"]["low"], out["ndcg_at_5"]["high"]] == pytest.approx(ndcg.tolist())
    assert [out["auc"]["low"], out["auc"]["high"]] == pytest.approx(auc.tolist())
    assert out["ndcg_at_5"]["diff"] == pytest.approx(out["ndcg_at_5"]["a"] - out["ndcg_at_5"]["b"])
    assert out["auc"]["a"] == pytest.approx(roc_auc(labels, a))
    assert out["resamples"] == 200 and out["unit"] == "request" and out["lists"] == 30


def test_seeded_and_paired():
    groups, labels, gains, a, b = _toy(seed=5)
    one = paired_bootstrap(groups, labels, gains, a, b, resamples=300, seed=1)
    assert one == paired_bootstrap(groups, labels, gains, a, b, resamples=300, seed=1)
    # A model against itself: every resample's difference is exactly zero (pairing, not two independent draws).
    same = paired_bootstrap(groups, labels, gains, a, a, resamples=300, seed=1)
    for m in ("ndcg_at_10", "auc"):
        assert same[m]["low"] == same[m]["high"] == same[m]["diff"] == 0.0


def test_a_clearly_better_model_has_an_interval_above_zero():
    groups, labels, gains, _, b = _toy(seed=8, lists=200)
    perfect = gains + 0.0
    out = paired_bootstrap(groups, labels, gains, perfect, b, resamples=300, seed=2)
    assert out["ndcg_at_10"]["low"] > 0 and out["auc"]["low"] > 0
    assert out["ndcg_at_10"]["share_below_zero"] == 0.0


def test_weighted_auc_equals_auc_of_repeated_rows():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(50), 1)
    labels = (rng.random(50) < 0.4).astype(float)
    weights = rng.integers(0, 4, 50).astype(float)
    order = np.argsort(scores, kind="mergesort")
    ss = scores[order]
    block = np.concatenate([[0], np.cumsum(ss[1:] != ss[:-1])])
    got = weighted_auc(block, int(block[-1] + 1), labels[order], weights[order])
    rep = np.repeat(np.arange(50), weights.astype(int))
    assert got == pytest.approx(roc_auc(labels[rep], scores[rep]))
