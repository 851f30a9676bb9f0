"""Small bounded structures for work a stranger can cause: pure, no clock of their own (every
call takes ``now``)."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Bounded(Generic[K, T]):
    """A dict of at most ``size`` entries; the least recently touched goes first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, T] = OrderedDict()

    def get(self, key: K) -> T | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: T) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def pop(self, key: K) -> T | None:
        return self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def values(self) -> list[T]:
        return list(self._items.values())


class Window:
    """At most ``n`` events in any ``period`` seconds."""

    def __init__(self, n: int, period: float) -> None:
        self.n = n
        self.period = period
        self._times: deque[float] = deque()

    def take(self, now: float) -> bool:
        while self._times and now - self._times[0] >= self.period:
            self._times.popleft()
        if len(self._times) >= self.n:
            return False
        self._times.append(now)
        return True


class TokenBucket:
    """At most ``rate`` events a second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at: float | None = None

    def take(self, now: float, n: float = 1.0) -> bool:
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < n:
            return False
        self._tokens -= n
        return True


class Throttle:
    """For log lines: ``ready(now)`` at most once per ``every`` seconds; ``suppressed`` counts the
    calls in between (reset when ready)."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self._last: float | None = None
        self.suppressed = 0

    def ready(self, now: float) -> bool:
        if self._last is not None and now - self._last < self.every:
            self.suppressed += 1
            return False
        self._last = now
        return True

    def take_suppressed(self) -> int:
        n, self.suppressed = self.suppressed, 0
        return n


class Reused(Generic[T]):
    """One value, reused while its ``version`` holds and it is younger than ``max_age``."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._value: T | None = None
        self._version: int | None = None
        self._at = 0.0

    def get(self, version: int, now: float) -> T | None:
        if self._value is None or self._version != version or now - self._at >= self.max_age:
            return None
        return self._value

    def put(self, value: T, version: int, now: float) -> T:
        self._value, self._version, self._at = value, version, now
        return value
