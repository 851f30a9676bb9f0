"""How much of each chunk of a ranged download is on disk, shared by the threads that receive
ranges, the hasher that follows them, and the checkpoints."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Stopped(Exception):
    """The download ended while the hasher was waiting for bytes."""


class Frontier:
    """How many of each chunk's first bytes are on disk. The threads that receive ranges move it
    forward (``advance``); the hasher thread waits on it; checkpoints copy it."""

    def __init__(self, size: int, chunk_size: int, have: dict[int, int]) -> None:
        self.size = size
        self.chunk_size = chunk_size
        self.count = max(1, -(-size // chunk_size))
        self.have = [min(have.get(c, 0), self.span(c)[1]) for c in range(self.count)]
        self.cond = threading.Condition()
        self.closed = False
        self.received = 0
        """Bytes written by ranges of this run (including ranges that later failed)."""

    def span(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_size
        return start, max(0, min(self.chunk_size, self.size - start))

    def complete(self, chunk: int) -> bool:
        return self.have[chunk] >= self.span(chunk)[1]

    def missing(self) -> list[int]:
        return [c for c in range(self.count) if not self.complete(c)]

    def on_disk(self) -> int:
        return sum(self.have)

    def snapshot(self) -> list[int]:
        with self.cond:
            return list(self.have)

    def writer(self, chunk: int, start: int) -> Callable[[int], None]:
        """The ``written`` callback of a range of ``chunk`` that begins ``start`` bytes in."""
        last = 0

        def advance(got: int) -> None:
            nonlocal last
            with self.cond:
                self.received += got - last
                last = got
                if start + got > self.have[chunk]:
                    self.have[chunk] = start + got
                    self.cond.notify_all()

        return advance

    def reset(self, chunks: list[int]) -> None:
        """Forget what is on disk of ``chunks`` (to fetch them again whole)."""
        with self.cond:
            for c in chunks:
                self.have[c] = 0

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def wait_contiguous(self, pos: int) -> int:
        """Block until bytes from ``pos`` on are on disk; returns how many follow it."""
        chunk = pos // self.chunk_size
        start = chunk * self.chunk_size
        with self.cond:
            while True:
                if self.closed:
                    raise Stopped
                ready = start + self.have[chunk] - pos
                if ready > 0:
                    return ready
                self.cond.wait(1.0)
