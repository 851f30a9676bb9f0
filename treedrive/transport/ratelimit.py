"""A byte-rate limiter shared by every transfer in one direction, from the event loop and from
worker threads alike."""

from __future__ import annotations

import asyncio
import threading
import time


class RateLimiter:
    """Virtual scheduling: each ``n`` bytes take ``n / rate`` seconds of the shared timeline;
    a caller waits until its bytes' slot comes. ``rate`` None (or 0) means no limit."""

    BURST = 0.05  # seconds of credit a caller may run ahead, so small writes don't stall

    def __init__(self, rate: float | None = None) -> None:
        self._lock = threading.Lock()
        self._next = time.monotonic()
        self.rate = rate or None

    def set_rate(self, rate: float | None) -> None:
        with self._lock:
            self.rate = rate or None
            self._next = time.monotonic()

    def reserve(self, n: int) -> float:
        """Take ``n`` bytes of the budget; returns how long to wait before using them."""
        with self._lock:
            if self.rate is None:
                return 0.0
            now = time.monotonic()
            start = max(self._next, now - self.BURST)
            self._next = start + n / self.rate
            return max(0.0, self._next - now - self.BURST)

    async def acquire(self, n: int) -> None:
        delay = self.reserve(n)
        if delay > 0:
            await asyncio.sleep(delay)

    def acquire_blocking(self, n: int) -> None:
        delay = self.reserve(n)
        if delay > 0:
            time.sleep(delay)
