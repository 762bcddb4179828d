"""The serving path's byte-bounded cache (shoprank.features.cache)."""

import numpy as np

from shoprank.features.cache import ByteBoundedCache


def test_oldest_entries_leave_first_and_the_accounting_stays_within_the_limit():
    cache = ByteBoundedCache(100, lambda key, value: value.nbytes)
    calls = []

    def make(n):
        calls.append(n)
        return np.zeros(n, np.uint8)

    assert cache.get("a", lambda: make(40)).nbytes == 40
    cache.get("b", lambda: make(40))
    assert cache.get("a", lambda: make(99)).nbytes == 40 and calls == [40, 40]  # a hit computes nothing
    cache.get("c", lambda: make(40))  # 120 > 100: "a", the oldest inserted, goes
    assert len(cache) == 2 and cache.used == 80
    cache.get("a", lambda: make(40))
    assert calls == [40, 40, 40, 40]  # "a" was computed again
    big = cache.get("big", lambda: make(101))  # larger than the limit: returned, not kept
    assert big.nbytes == 101 and len(cache) == 2 and cache.used == 80
    off = ByteBoundedCache(0, lambda key, value: value.nbytes)  # limit 0: no caching
    off.get("a", lambda: make(1))
    off.get("a", lambda: make(1))
    assert len(off) == 0 and calls[-2:] == [1, 1]
