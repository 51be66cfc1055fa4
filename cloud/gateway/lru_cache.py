"""A small cache that holds at most a given number of entries and drops the least recently used one."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable


class LruCache[K: Hashable, V]:
    """Up to ``capacity`` values by key; a hit makes its entry the most recently used."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: must be at least 1, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._building: dict[K, asyncio.Future[V]] = {}

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

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    async def get_or_build(self, key: K, build: Callable[[], Awaitable[V]]) -> V:
        """The cached value, else what ``build`` makes (then cached); a build that raises caches nothing. Callers
        that ask for a key while it is being built wait for that build (four edges offered one version at once
        read and cut it once, not four times)."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        building = self._building.get(key)
        if building is None:
            building = asyncio.ensure_future(build())
            self._building[key] = building
            building.add_done_callback(lambda done: self._built(key, done))
        return await asyncio.shield(building)  # one waiter cancelled does not cancel the build the others wait for

    def _built(self, key: K, done: asyncio.Future[V]) -> None:
        self._building.pop(key, None)
        if not done.cancelled() and done.exception() is None:
            self.put(key, done.result())
