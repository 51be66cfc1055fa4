"""The gateway's bounded cache: it never holds more than its capacity and drops the least recently used."""

from __future__ import annotations

import asyncio

import pytest

from cloud.gateway.lru_cache import LruCache


def test_holds_at_most_its_capacity_and_drops_the_least_recently_used() -> None:
    cache: LruCache[int, str] = LruCache(2)
    cache.put(1, "a")
    cache.put(2, "b")
    assert cache.get(1) == "a"  # 1 is now the most recently used
    cache.put(3, "c")
    assert len(cache) == 2 and 2 not in cache
    assert cache.get(1) == "a" and cache.get(3) == "c" and cache.get(2) is None


def test_get_or_build_builds_once_and_caches_nothing_when_the_build_fails() -> None:
    cache: LruCache[str, int] = LruCache(1)
    builds = []

    async def build() -> int:
        builds.append(1)
        return 7

    async def fail() -> int:
        raise FileNotFoundError("pruned")

    async def scenario() -> None:
        assert await cache.get_or_build("k", build) == 7
        assert await cache.get_or_build("k", build) == 7
        with pytest.raises(FileNotFoundError):
            await cache.get_or_build("other", fail)
        assert "other" not in cache and "k" in cache

    asyncio.run(scenario())
    assert len(builds) == 1


def test_callers_that_ask_while_a_key_is_built_share_that_build_and_its_failure() -> None:
    cache: LruCache[str, int] = LruCache(2)
    builds = []

    async def build() -> int:
        builds.append(1)
        await asyncio.sleep(0.05)
        return len(builds)

    async def fail() -> int:
        builds.append(1)
        await asyncio.sleep(0.05)
        raise FileNotFoundError("pruned")

    async def scenario() -> None:
        assert await asyncio.gather(*(cache.get_or_build("k", build) for _ in range(4))) == [1, 1, 1, 1]
        results = await asyncio.gather(*(cache.get_or_build("gone", fail) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, FileNotFoundError) for r in results) and "gone" not in cache
        first = asyncio.create_task(cache.get_or_build("late", build))
        await asyncio.sleep(0.01)
        first.cancel()  # one waiter gone: the build goes on for the others
        assert await cache.get_or_build("late", build) == 3

    asyncio.run(scenario())
    assert len(builds) == 3  # k once, gone once, late once


def test_a_capacity_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        LruCache(0)
