"""Retrying with back-off (a bootstrap host that does not answer): pure, no clock of its own."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Backoff:
    """Delays that double from ``first`` to at most ``cap`` after each failure, and start
    over after a success."""

    first: float = 1.0
    cap: float = 60.0
    failures: int = 0

    def failed(self) -> float:
        """Record a failure; the seconds to wait before the next try."""
        self.failures += 1
        return self.delay()

    def delay(self) -> float:
        if self.failures == 0:
            return 0.0
        return float(min(self.cap, self.first * 2.0 ** min(self.failures - 1, 30)))

    def succeeded(self) -> None:
        self.failures = 0
