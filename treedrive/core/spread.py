"""The bounded structures behind :mod:`treedrive.core.swim`: the queue of news to spread (each
item a bounded number of times, the least sent first, stale items dropped) and a set that can be
sampled at random in O(1). Pure: time is the caller's."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SpreadQueue(Generic[T]):
    """Items to spread, each sent at most ``limit`` times, the least sent first (buckets by the
    times sent; a newer item under the same key replaces the older one)."""

    def __init__(self) -> None:
        self._buckets: list[OrderedDict[Hashable, tuple[T, float]]] = []
        """Ordered dicts: a plain dict that is emptied from the front and filled at the back
        slows down its iteration (deleted slots are skipped one by one)."""
        self._count: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._count)

    def put(self, key: Hashable, item: T, now: float) -> None:
        old = self._count.pop(key, None)
        if old is not None:
            del self._buckets[old][key]
        if not self._buckets:
            self._buckets.append(OrderedDict())
        self._buckets[0][key] = (item, now)
        self._count[key] = 0

    def discard(self, key: Hashable) -> None:
        """Drop the item under ``key`` (it is no longer true)."""
        sent = self._count.pop(key, None)
        if sent is not None:
            del self._buckets[sent][key]

    def take(self, n: int, limit: int, oldest: float) -> list[T]:
        """Up to ``n`` items, counted as sent once more; items put before ``oldest`` are
        dropped instead (news that could not go out in time is stale)."""
        out: list[T] = []
        moved: list[tuple[int, Hashable, tuple[T, float]]] = []
        for sent, bucket in enumerate(self._buckets):
            for key, entry in bucket.items():
                if len(out) == n:
                    break
                if entry[1] >= oldest:
                    out.append(entry[0])
                moved.append((sent, key, entry))
            if len(out) == n:
                break
        for sent, key, entry in moved:
            del self._buckets[sent][key]
            if sent + 1 >= limit or entry[1] < oldest:
                del self._count[key]
                continue
            if len(self._buckets) <= sent + 1:
                self._buckets.append(OrderedDict())
            self._buckets[sent + 1][key] = entry
            self._count[key] = sent + 1
        return out


class IndexedSet:
    """A set with O(1) add, remove and random sampling (a list and positions)."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._pos: dict[str, int] = {}

    def add(self, key: str) -> None:
        if key not in self._pos:
            self._pos[key] = len(self.items)
            self.items.append(key)

    def discard(self, key: str) -> None:
        pos = self._pos.pop(key, None)
        if pos is None:
            return
        last = self.items.pop()
        if last != key:
            self.items[pos] = last
            self._pos[last] = pos

    def __contains__(self, key: object) -> bool:
        return key in self._pos

    def __len__(self) -> int:
        return len(self.items)
