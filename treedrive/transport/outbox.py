"""Outbound work that cannot grow: a bounded queue that drops its oldest entry when full, and a
small cache so that one message object sent to many addresses is encoded once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Outbox(Generic[T]):
    """A FIFO of at most ``size`` entries. :meth:`put` never waits: when full, the oldest entry
    is dropped (and returned, and counted in ``dropped``)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("an outbox holds at least one entry")
        self.size = size
        self.dropped = 0
        self._queue: asyncio.Queue[T] = asyncio.Queue()

    def put(self, item: T) -> T | None:
        dropped: T | None = None
        if self._queue.qsize() >= self.size:
            dropped = self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(item)
        return dropped

    async def get(self) -> T:
        return await self._queue.get()

    def __len__(self) -> int:
        return self._queue.qsize()


class EncodeCache(Generic[T]):
    """The encodings of the last ``size`` objects, found by identity (the cache holds a reference
    to each, so an id is never reused while it is cached)."""

    def __init__(self, encode: Callable[[T], bytes], size: int = 8) -> None:
        self._encode = encode
        self.size = size
        self._entries: list[tuple[T, bytes]] = []
        self.encoded = 0
        """How many encodings were made (not found in the cache)."""

    def get(self, obj: T) -> bytes:
        for i, (cached, data) in enumerate(self._entries):
            if cached is obj:
                if i:
                    self._entries.insert(0, self._entries.pop(i))
                return data
        data = self._encode(obj)
        self.encoded += 1
        self._entries.insert(0, (obj, data))
        del self._entries[self.size :]
        return data
