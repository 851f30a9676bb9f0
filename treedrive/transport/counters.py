"""What a TCP node counts about its connections, and how little of it reaches the log.

Admission and outbound events (refused, evicted, dropped...) are counted and summed up in one
line a second at most; failed inbound connections get a few detail lines a second, then a
summary."""

from __future__ import annotations

import logging
import time
from typing import Any

from treedrive.transport.admission import Tally

log = logging.getLogger(__name__)


class Counters:
    """The two tallies of a :class:`treedrive.transport.net.TcpNetwork`, and their log lines."""

    def __init__(self) -> None:
        self.events = Tally(every=1.0, detail=0)
        """Admission and outbound events (refused, evicted, dropped...): one summary a second."""
        self.problems = Tally(every=1.0, detail=3)
        """Failed inbound connections: a few detail lines a second, then a summary."""

    def event(self, kind: str, n: int = 1) -> None:
        """Count an admission or outbound event; a summary line at most once a second."""
        self.events.note(kind, time.monotonic(), n)
        self.flush()

    def flush(self) -> None:
        now = time.monotonic()
        if (line := self.events.summary(now)) is not None:
            log.warning("connections and messages, last second or so: %s", line)
        if (line := self.problems.summary(now)) is not None:
            log.warning("inbound connections that failed, not logged one by one: %s", line)

    def problem(self, kind: str, level: int, msg: str, *args: Any, exc: bool = False) -> None:
        """A failed inbound connection: its own line if few came lately, else only counted."""
        if self.problems.note(kind, time.monotonic()):
            log.log(level, msg, *args, exc_info=exc)
        else:
            log.debug(msg, *args)
        self.flush()
