"""A small cache that holds at most a given number of entries and drops the least recently used one."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable


class LruCache[K: Hashable, V]:
    """Up to ``capacity`` values by key; a hit makes its entry the most recently used."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: must be at least 1, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def get(self, key: K) -> V | None:
        if key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    async def get_or_build(self, key: K, build: Callable[[], Awaitable[V]]) -> V:
        """The cached value, else what ``build`` makes (then cached); a build that raises caches nothing."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = await build()
        self.put(key, value)
        return value
