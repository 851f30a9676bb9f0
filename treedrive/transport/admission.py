"""Who gets a connection, who gives way, how often an address is dialed, and how much is logged
about it. Pure policy: no sockets, no clock of its own (every call takes ``now``), so each rule is
tested on its own.

- :func:`choose_victim`: at the connection cap, the open connection that has made the least
  progress (bytes received per second of age) gives way to a new one; protected ones (fast
  bodies, messages already whole) never do, and young ones only when no older one may (then the
  oldest of them). Uploads we serve are protected up to a share of the cap (``max_uploads``):
  beyond it, the slowest of them (bytes sent per second, after a grace) gives way, so that a
  flood of readers that never read leaves room for control messages. A new connection is
  refused only when none may give way.
- :class:`DialBackoff`: an address that refuses is dialed at most a few times a minute.
- :class:`Tally`: refusals, evictions, drops and per-connection failures are counted; a few detail
  lines a second at most, and the rest summed up in one line (never one line per connection).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class ConnState:
    """What admission knows about one inbound connection (updated by the transport)."""

    started: float
    """When it was accepted (monotonic seconds)."""
    received: int = 0
    """Bytes received so far."""
    protected: bool = False
    """Never evicted: we are serving it (an upload), or its message is whole and being handled."""
    body_started: float | None = None
    """When a streamed file body began (None: no body yet)."""
    body_received: int = 0
    """Bytes received since then."""
    upload_started: float | None = None
    """When we began to answer it with a file (None: not an upload)."""
    sent: int = 0
    """Bytes of that answer the reader has taken so far (as far as the transport knows)."""

    def progress(self, now: float) -> float:
        """Bytes received per second of age."""
        return self.received / max(now - self.started, 1e-6)

    def body_rate(self, now: float) -> float | None:
        if self.body_started is None:
            return None
        return self.body_received / max(now - self.body_started, 1e-6)

    def upload_rate(self, now: float) -> float | None:
        """Bytes sent per second since the upload began (None: not an upload)."""
        if self.upload_started is None:
            return None
        return self.sent / max(now - self.upload_started, 1e-6)


def choose_victim(
    conns: Iterable[tuple[K, ConnState]],
    now: float,
    grace: float,
    good_rate: float,
    max_uploads: int | None = None,
    upload_grace: float = 0.0,
) -> K | None:
    """The connection that gives way to a new one, or None (the new one is refused).

    Candidates are the connections that are not protected and are not streaming a body at
    ``good_rate`` bytes/s or more. Among those older than ``grace``, the least bytes per second
    of age gives way (the oldest first on a tie).

    Otherwise, if more than ``max_uploads`` uploads are open (None: no such share), the upload
    that has sent the least bytes per second gives way (the oldest first on a tie), among those
    older than ``upload_grace`` (an upload just begun has not shown its rate yet). Uploads are
    protected, but only up to that share: readers that take nothing, or next to nothing, cannot
    hold every slot, and a control message always finds room.

    Otherwise, if every candidate is younger than ``grace``, the oldest of them gives way all
    the same: it has had the longest to send a whole message and has not (an honest one sends
    its small message at once, and is protected as soon as it is whole). The new connection is
    refused only when every open one is protected (an upload within its share or its grace) or
    fast."""
    best: K | None = None
    best_key: tuple[float, float] | None = None
    oldest_young: K | None = None
    young_started = float("inf")
    uploads = 0
    slowest: K | None = None
    slowest_key: tuple[float, float] | None = None
    for key, state in conns:
        upload_rate = state.upload_rate(now)
        if upload_rate is not None:
            uploads += 1
            assert state.upload_started is not None
            if now - state.upload_started >= upload_grace:
                rank = (upload_rate, state.upload_started)
                if slowest_key is None or rank < slowest_key:
                    slowest, slowest_key = key, rank
            continue
        if state.protected:
            continue
        rate = state.body_rate(now)
        if rate is not None and rate >= good_rate:
            continue
        if now - state.started < grace:
            if state.started < young_started:
                oldest_young, young_started = key, state.started
            continue
        rank = (state.progress(now), state.started)
        if best_key is None or rank < best_key:
            best, best_key = key, rank
    if best is not None:
        return best
    if max_uploads is not None and uploads > max_uploads and slowest is not None:
        return slowest
    return oldest_young


@dataclass(slots=True)
class _Failures:
    count: int
    next_try: float
    probing: bool = False


PROBE = "probe"
""":meth:`DialBackoff.take`: dial, and report the outcome; other dials to it wait for it."""
FREE = "free"
""":meth:`DialBackoff.take`: dial (the address answered lately)."""


class DialBackoff:
    """Per-address dial backoff.

    An address that has not answered lately (new, or failing) is dialed by one *probe* at a
    time; while the probe is out, other dials to it wait for its outcome or are dropped. After
    ``n`` failed probes in a row, the next one is allowed ``delays[n-1]`` seconds later (the
    last delay repeats): with the defaults, two quick retries (a peer that is restarting), then
    at most 3 dials in any minute to an address that keeps refusing, and one a minute after
    that. A success makes the address free (any number of dials at once) until it fails.
    At most ``max_entries`` addresses of each kind are remembered (the oldest forgotten)."""

    DELAYS = (1.0, 5.0, 54.0, 60.0)

    def __init__(self, delays: tuple[float, ...] = DELAYS, max_entries: int = 4096) -> None:
        if not delays:
            raise ValueError("at least one delay")
        self.delays = delays
        self.max_entries = max_entries
        self._failed: OrderedDict[tuple[str, int], _Failures] = OrderedDict()
        self._reachable: OrderedDict[tuple[str, int], None] = OrderedDict()

    def take(self, address: tuple[str, int], now: float) -> str | None:
        """May we dial ``address`` now? :data:`FREE`, :data:`PROBE`, or None (not now)."""
        entry = self._failed.get(address)
        if entry is None:
            if address in self._reachable:
                return FREE
            entry = self._failed[address] = _Failures(0, now)
            self._trim(self._failed)
        if entry.probing or now < entry.next_try:
            return None
        entry.probing = True
        return PROBE

    def probing(self, address: tuple[str, int]) -> bool:
        entry = self._failed.get(address)
        return entry is not None and entry.probing

    def allowed(self, address: tuple[str, int], now: float) -> bool:
        """Would :meth:`take` allow a dial (without taking it)?"""
        entry = self._failed.get(address)
        return entry is None or (not entry.probing and now >= entry.next_try)

    def failed(self, address: tuple[str, int], now: float) -> None:
        """A dial failed. Failures of dials made while the address was free (several at once)
        count as one."""
        entry = self._failed.get(address)
        self._reachable.pop(address, None)
        if entry is not None and not entry.probing and entry.count > 0:
            return  # already backing off: a dial made before the first failure
        count = 1 if entry is None else entry.count + 1
        delay = self.delays[min(count, len(self.delays)) - 1]
        self._failed.pop(address, None)
        self._failed[address] = _Failures(count, now + delay)
        self._trim(self._failed)

    def heard(self, address: tuple[str, int]) -> None:
        """A message came from ``address``'s own IP naming it: the path to it works again, so
        its failures are forgotten (the next dial is a probe, at once). A probe under way is
        left alone."""
        entry = self._failed.get(address)
        if entry is not None and not entry.probing:
            del self._failed[address]

    def succeeded(self, address: tuple[str, int]) -> None:
        self._failed.pop(address, None)
        self._reachable.pop(address, None)
        self._reachable[address] = None
        self._trim(self._reachable)

    def _trim(self, table: OrderedDict[tuple[str, int], Any]) -> None:
        while len(table) > self.max_entries:
            table.popitem(last=False)

    def __len__(self) -> int:
        return len(self._failed)


class Tally:
    """Counts events by kind, for logs that cannot flood. :meth:`note` says whether this event
    may have its own detail line (at most ``detail`` a window); the rest are summed up, and
    :meth:`summary` gives the sums once a window has passed (one line, or None). ``totals`` keeps
    every count since the start."""

    def __init__(self, every: float = 1.0, detail: int = 3) -> None:
        self.every = every
        self.detail = detail
        self.totals: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()
        self._window = float("-inf")
        self._details = 0

    def note(self, kind: str, now: float, n: int = 1) -> bool:
        """Count ``n`` events of ``kind``; True if the caller may log this one in detail."""
        self.totals[kind] += n
        if now - self._window >= self.every and not self._pending:
            self._window, self._details = now, 0
        if self._details < self.detail and now - self._window < self.every:
            self._details += 1
            return True
        self._pending[kind] += n
        return False

    def summary(self, now: float) -> str | None:
        """The events not logged in detail, once per window: e.g. ``"12 refused, 3 evicted"``."""
        if not self._pending or now - self._window < self.every:
            return None
        line = ", ".join(f"{n} {kind}" for kind, n in sorted(self._pending.items()))
        self._pending.clear()
        self._window, self._details = now, 0
        return line
