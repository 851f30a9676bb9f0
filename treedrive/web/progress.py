"""Progress of a transfer as one line of text, for a terminal (the control commands, the shell).

``progress_line("get notes.bin", 312 << 20, 600 << 20, 48.2 * 2**20, 6)`` gives
``"get notes.bin  312.0 MiB / 600.0 MiB  48.2 MiB/s  ETA 6 s"``. The formatter is pure;
:class:`LiveLine` redraws such a line in place on a terminal stream, and never before ``delay``
seconds have passed, so an error or a file already here shows no line at all.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import TextIO

from treedrive.core.text import human_size, printable


def human_duration(seconds: float) -> str:
    """``6.2`` → ``"6 s"``, ``125`` → ``"2 min 5 s"``, ``3900`` → ``"1 h 5 min"``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def eta_of(done: int, total: int | None, rate: float | None) -> float | None:
    """Seconds left at ``rate`` bytes per second, when the total and a rate are known."""
    if total is None or not rate or rate <= 0:
        return None
    return max(0.0, (total - done) / rate)


def progress_line(
    label: str,
    done: int,
    total: int | None,
    rate: float | None,
    eta: float | None,
    width: int | None = None,
) -> str:
    """``label  done / total  rate  ETA eta``; the parts not known are left out. ``label`` may
    come from a stranger: it is escaped, and shortened (``…``) so the line fits in ``width``."""
    amount = human_size(done) if not total else f"{human_size(done)} / {human_size(total)}"
    parts = [amount]
    if rate is not None:
        parts.append(f"{human_size(rate)}/s")
    if eta is not None:
        parts.append(f"ETA {human_duration(eta)}")
    tail = "  ".join(parts)
    name = printable(label)
    if width is not None:
        room = width - len(tail) - 3  # two spaces, and the cursor's cell at the end
        if room < len(name):
            name = name[: max(0, room - 1)] + "…" if room > 1 else ""
    return f"{name}  {tail}" if name else tail


class LiveLine:
    """One progress line redrawn in place on ``stream`` (carriage return, clear to the end).

    Nothing is drawn while ``hidden``, nor until ``delay`` seconds after it was made: a quick
    transfer, an error and a file already here show no line. :meth:`clear` removes the line
    (call it before printing anything else)."""

    def __init__(
        self,
        stream: TextIO,
        label: str,
        *,
        hidden: bool = False,
        delay: float = 0.5,
        every: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.label = label
        self.hidden = hidden
        self.delay = delay
        self.every = every
        self.clock = clock
        self.started = clock()
        self.drawn = False
        self._last_draw = float("-inf")

    def show(
        self,
        done: int,
        total: int | None,
        rate: float | None = None,
        eta: float | None = None,
        *,
        force: bool = False,
    ) -> None:
        """Redraw with these figures (at most every ``every`` seconds unless ``force``)."""
        now = self.clock()
        if self.hidden or now - self.started < self.delay:
            return
        if not force and now - self._last_draw < self.every:
            return
        self._last_draw = now
        line = progress_line(self.label, done, total, rate, eta, self._width())
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()
        self.drawn = True

    def _width(self) -> int:
        """The columns of the terminal the line is drawn on (80 when it does not say)."""
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
        return columns or shutil.get_terminal_size((80, 24)).columns

    def clear(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False


class Meter:
    """The rate of bytes counted here (a push, a save), from when it was made."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.done = 0

    def add(self, n: int) -> None:
        self.done += n

    @property
    def rate(self) -> float | None:
        elapsed = self.clock() - self.started
        return self.done / elapsed if elapsed > 0 else None
