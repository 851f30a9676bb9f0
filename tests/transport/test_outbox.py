"""The bounded outbox and the encoding cache on their own."""

from __future__ import annotations

import asyncio

import pytest

from treedrive.transport.outbox import EncodeCache, Outbox


async def test_outbox_drops_the_oldest_when_full() -> None:
    box: Outbox[int] = Outbox(3)
    assert [box.put(i) for i in range(5)] == [None, None, None, 0, 1]
    assert box.dropped == 2
    assert len(box) == 3
    assert [await box.get() for _ in range(3)] == [2, 3, 4]


async def test_outbox_get_waits_for_a_put() -> None:
    box: Outbox[str] = Outbox(1)
    getter = asyncio.ensure_future(box.get())
    await asyncio.sleep(0)
    assert not getter.done()
    box.put("x")
    assert await asyncio.wait_for(getter, 1) == "x"


def test_outbox_needs_room() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Outbox[int](0)


def test_encode_cache_encodes_one_object_once() -> None:
    calls: list[object] = []

    def encode(obj: object) -> bytes:
        calls.append(obj)
        return repr(obj).encode()

    cache: EncodeCache[object] = EncodeCache(encode, size=2)
    a, b, c = ["a"], ["b"], ["a"]  # c equals a, but is another object
    assert cache.get(a) == cache.get(a) == b"['a']"
    assert len(calls) == 1
    cache.get(c)
    assert len(calls) == 2  # by identity, not equality
    cache.get(a)
    assert len(calls) == 2
    cache.get(b)  # evicts c, the least recently used
    cache.get(a)
    assert len(calls) == 3
    cache.get(c)
    assert len(calls) == 4
    assert cache.encoded == 4
