"""A cache bounded in accounted bytes, oldest entry out first, for the serving path's per-text caches.

A serving worker caches values keyed by client-chosen text, so the bound is in bytes, never in entries: the
caller says what an entry costs (its arrays' nbytes plus an overhead). Not thread-safe (a worker scores on one
thread); tests/features/test_cache.py checks the eviction order and the accounting; the
token cache's accounting is checked against tracemalloc in tests/serving/test_token_cache.py.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import numpy as np

__all__ = ["ByteBoundedCache", "arrays_cost"]

V = TypeVar("V")


def arrays_cost(key: bytes, value: np.ndarray | tuple[np.ndarray, ...], overhead: int) -> int:
    """Accounted bytes of an entry keyed by bytes (a query's token ids) holding one array or a tuple of them."""
    arrays = value if isinstance(value, tuple) else (value,)
    return sum(a.nbytes for a in arrays) + len(key) + overhead


class ByteBoundedCache(Generic[V]):
    """get-or-compute, the oldest entries (insertion order) out first once `limit` accounted bytes are held:
    O(1) per eviction, no full clear, no per-hit bookkeeping. An entry larger than the whole limit is computed and
    returned but not kept (limit 0: no caching). Callers must not modify a returned value: it is the cached one."""

    def __init__(self, limit: int, cost: Callable[[Hashable, V], int]):
        self.limit, self.cost = limit, cost
        self._entries: OrderedDict[Hashable, V] = OrderedDict()
        self.used = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, compute: Callable[[], V]) -> V:
        hit = self._entries.get(key)
        if hit is not None:
            return hit
        value = compute()
        cost = self.cost(key, value)
        if cost <= self.limit:
            while self.used + cost > self.limit:
                old_key, old = self._entries.popitem(last=False)
                self.used -= self.cost(old_key, old)
            self._entries[key] = value
            self.used += cost
        return value
