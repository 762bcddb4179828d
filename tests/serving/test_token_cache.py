"""The transform's token cache is bounded in bytes (shoprank.features.transform.FeatureTransform.tokens).

A serving worker caches client-chosen text: the bound must hold in bytes whatever the text, and the accounted
cost of an entry must be what an entry really costs (measured here with tracemalloc), or the bound is fiction.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc

import numpy as np

from shoprank.config import FeatureConfig
from shoprank.features.transform import TOKEN_CACHE_BYTES, FeatureTransform, Vocabulary


def transform(limit: int = TOKEN_CACHE_BYTES) -> FeatureTransform:
    vocabs = {"token": Vocabulary([f"w{i}" for i in range(100)], 10), "item": Vocabulary([], 10),
              "category": Vocabulary([], 2), "brand": Vocabulary([], 2)}
    return FeatureTransform(vocabs, np.array([1.0, 2.0]), FeatureConfig(), token_cache_bytes=limit)


def test_the_accounted_bytes_are_the_measured_bytes():
    t = transform(1 << 30)  # no eviction while measuring
    texts = [f"w{i % 100} query number {i} w{(i * 7) % 100}" for i in range(100_000)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for text in texts:
        t.tokens(text, 16)
    gc.collect()
    measured = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    accounted = t.token_cache_info["bytes"]
    # The texts themselves are allocated before tracing starts, so the accounted getsizeof(text) is added back.
    measured += sum(map(sys.getsizeof, texts))
    assert t.token_cache_info["entries"] == 100_000
    print(f"accounted {accounted} B, measured {measured} B for 100,000 entries")
    assert abs(accounted - measured) / measured < 0.10, (accounted, measured)


def test_the_cache_stays_within_its_bound_and_answers_the_same():
    limit = 200_000
    t, uncached = transform(limit), transform(0)
    rng = np.random.default_rng(0)
    for i in range(20_000):
        text = f"w{rng.integers(100)} " * int(rng.integers(1, 60)) + str(i % 3000)  # long and short texts
        np.testing.assert_array_equal(t.tokens(text, 12), uncached.tokens(text, 12))
        assert t.token_cache_info["bytes"] <= limit
    info = t.token_cache_info
    assert 0 < info["entries"] < 3000 and info["bytes"] > limit * 0.9  # full, and evicting the oldest
    assert uncached.token_cache_info == {"entries": 0, "bytes": 0, "limit": 0}  # 0 turns the cache off
    huge = "w1 " * 100_000
    assert t.tokens(huge, 4).tolist() == uncached.tokens(huge, 4).tolist()  # larger than the bound: not cached
    assert t.token_cache_info["bytes"] <= limit


def test_the_servers_setting_changes_the_bound():
    # serving/model.py sets --token_cache_bytes on the loaded transform: 0 turns the cache off.
    t = transform()
    t.token_cache_bytes = 0
    t.tokens("w1 w2", 16)
    assert t.token_cache_info == {"entries": 0, "bytes": 0, "limit": 0}
    t.token_cache_bytes = 1 << 20
    t.tokens("w1 w2", 16)
    assert t.token_cache_info["entries"] == 1 and t.token_cache_info["limit"] == 1 << 20
