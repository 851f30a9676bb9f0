"""The decisions of a ranged download (extension ``raw-range``), without I/O.

Which chunk goes to which holder next, how long a failing holder waits, when an idle fast holder
takes over the rest of a slow holder's range, when a download with no holder left gives up,
which holders sent which chunks (to find the one that sent bad bytes), and which size to believe.
Nothing here reads a clock, a socket or a file: time comes in as ``now`` (seconds, monotonic),
and the async driver (:mod:`treedrive.core.download`) does what is decided and reports back.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from treedrive.core.errors import TransferError
from treedrive.core.sizes import record_agrees

MIB = 1024 * 1024
MIN_CHUNK = 4 * MIB
MAX_CHUNK = 32 * MIB
CHUNKS_PER_FILE = 16
"""With the chunk size chosen by the file's size, a file has about this many chunks (more when
it is over 512 MiB): enough to spread over several holders, few enough that each ranged request
moves many MiB."""
TAKE_OVER_AFTER = 0.5
"""Seconds a range must have run before its rate says it is slow (see ``take_over``)."""
TAKE_OVER_GAIN = 2.0
"""An idle holder takes over the rest of a range when it would finish it this many times sooner."""
TAKE_OVER_POLL = 0.25
"""Seconds between looks at the slow ranges while a holder is idle and nothing is left to ask."""
STALL_POLL = 0.2
"""Seconds between looks for a holder while none is usable."""
TAIL = 4 * MIB
"""A range with this little left no longer counts against its holder's one range at a time: the
next one is asked for meanwhile, so that the holder's stream does not stop between ranges (a
ranged request costs a couple of milliseconds before its first byte)."""
PER_HOLDER = 1
"""Ranges in flight from one holder. One stream per holder keeps the in-order hasher right behind
the bytes; more split a holder's bandwidth over chunks that all finish together, and the hasher
waits for the first of them while the others pile up. Measured at 1 GiB on loopback (2 cores):
one range at a time 0.94-1.03 GB/s with 10-50 ms of hashing left at the end, two 0.89-0.96 GB/s
with 0.1-0.3 s left, four 0.82-0.93 GB/s."""
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 30.0
"""A holder whose range failed ``n`` times in a row waits ``BACKOFF_FIRST * 2**n`` seconds, at
most ``BACKOFF_MAX``, before it is asked again."""

Outcome = Literal["ok", "cut", "failed"]
"""How a range ended: whole on disk, cut by a take-over, or failed (it goes back to the queue)."""


def chunk_size_for(size: int) -> int:
    """The chunk size for a file of ``size`` bytes: a whole number of MiB, 4 to 32 MiB."""
    chunk = size // CHUNKS_PER_FILE // MIB * MIB
    return max(MIN_CHUNK, min(MAX_CHUNK, chunk))


class HolderGone(Exception):
    """The holder answered that it does not have the file."""


class LyingHolder(TransferError):
    """The holder's answer contradicts what this node knows of the file (its verified size): it
    is not used for this download, and distrusted for a while."""


class Disagrees(TransferError):
    """The holder's size contradicts the record's claimed ``file_size`` (only a claim: the
    record may be the forgery): the holder is not used for this download, and that is all."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


# -- sizes -----------------------------------------------------------------------------------------
def check_size(size: int, known: int | None, claim: float, free: Callable[[], int]) -> None:
    """Raise LyingHolder unless ``size`` (a holder's word for the file's size) is ``known`` (the
    size this node verified), when it did. Else raise Disagrees unless it agrees with the
    record's claimed ``file_size`` (see :func:`record_agrees`). When the record does not say, a
    size larger than ``free()`` (the disk's free bytes) is not believed either."""
    if known:
        if size != known:
            raise LyingHolder(f"says the file has {size} bytes; it has {known}")
        return
    agrees = record_agrees(claim, size)
    if agrees is False:
        raise Disagrees(
            f"says the file has {size} bytes; its record claims {claim!r} (MB or bytes)", size
        )
    if agrees is None and size > (room := free()):
        raise LyingHolder(
            f"says the file has {size} bytes, more than this disk's {room} free, and its "
            "record does not say its size: not usable"
        )


def adopt_size(told: Mapping[str, int], free: Callable[[], int], bound: int) -> int | None:
    """The size to take when every holder that answered contradicts the record's claimed size
    (``told``: holder -> size): the one a majority of them say, if at least two do; else one no
    larger than ``bound`` (what the record claims). Never more than ``free()``."""
    if not told:
        return None
    room = free()
    counts = Counter(s for s in told.values() if s <= room)
    for size, n in counts.most_common():
        if (n >= 2 and 2 * n > len(told)) or size <= bound:
            return size
    return None


# -- holders ---------------------------------------------------------------------------------------
class HolderBook:
    """The holders of one download, in the order they were given: which are left out of it
    (``excluded``), and which wait out a back-off after failures (until ``backoff[peer]``)."""

    def __init__(self, peer_ids: Iterable[str] = ()) -> None:
        self.order: dict[str, None] = dict.fromkeys(peer_ids)
        self.excluded: set[str] = set()
        self.failures: Counter[str] = Counter()
        self.backoff: dict[str, float] = {}

    def add(self, peer_id: str) -> None:
        """A holder that turned up meanwhile (one already known keeps its place)."""
        self.order.setdefault(peer_id, None)

    def usable(self, now: float) -> list[str]:
        return [p for p in self.order if p not in self.excluded and self.backoff.get(p, 0) <= now]

    def exclude(self, peer_id: str) -> None:
        self.excluded.add(peer_id)

    def include(self, peer_id: str) -> None:
        self.excluded.discard(peer_id)

    def back_off(self, peer_id: str, now: float) -> float:
        """``peer_id`` failed once more: the seconds it now waits."""
        self.failures[peer_id] += 1
        wait: float = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** self.failures[peer_id])
        self.backoff[peer_id] = now + wait
        return wait


class Blame:
    """Which holders sent bytes of which chunk in this run: when the file does not verify, the
    chunks of each holder in turn (the one that sent the most first) are fetched again from the
    others, until it does."""

    def __init__(self) -> None:
        self.sources: dict[int, set[str]] = {}

    def sent(self, chunk: int, peer_id: str) -> None:
        self.sources.setdefault(chunk, set()).add(peer_id)

    def given(self) -> Counter[str]:
        """Chunks each holder sent bytes of."""
        return Counter(p for ps in self.sources.values() for p in ps)

    def peers(self) -> set[str]:
        return {p for ps in self.sources.values() for p in ps}

    def suspects(self) -> list[str]:
        """The holders, the one that sent bytes of the most chunks first."""
        return [p for p, _ in self.given().most_common()]

    def chunks_of(self, peer_id: str) -> list[int]:
        return sorted(c for c, ps in self.sources.items() if peer_id in ps)

    def forget(self, chunks: Iterable[int]) -> None:
        """``chunks`` are fetched again whole: who sent them before no longer counts."""
        for c in chunks:
            self.sources[c] = set()


# -- chunks ----------------------------------------------------------------------------------------
class ChunkMap(Protocol):
    """How much of each chunk is on disk (a :class:`~treedrive.core.frontier.Frontier`)."""

    have: list[int]

    def span(self, chunk: int) -> tuple[int, int]: ...

    def complete(self, chunk: int) -> bool: ...


@dataclass(slots=True)
class Range:
    """One range asked of a holder: the rest of ``chunk`` from ``start`` bytes into it."""

    ticket: int
    chunk: int
    peer: str
    start: int
    left: int
    started: float
    done: int = 0
    """Bytes of the range on disk so far."""
    ending: bool = False
    """In its last ``TAIL`` bytes: no longer counts against its holder's one at a time."""


@dataclass(frozen=True, slots=True)
class TakeOver:
    """Cut the range ``ticket`` (``slow`` sends ``rate`` bytes/s): ``helper`` fetches the
    ``left`` bytes that remain of ``chunk``."""

    ticket: int
    chunk: int
    slow: str
    rate: float
    helper: str
    left: int


class Scheduler:
    """What one download knows across its passes: its holders, who sent what, each holder's
    speed over its last whole range, and which chunk was taken from which slow holder."""

    def __init__(self, book: HolderBook, max_inflight: int, stall_timeout: float) -> None:
        self.book = book
        self.blame = Blame()
        self.max_inflight = max_inflight
        self.stall_timeout = stall_timeout
        self.speed: dict[str, float] = {}
        self.not_from: dict[int, str] = {}

    def observe(self, peer_id: str, nbytes: int, elapsed: float) -> None:
        """``peer_id`` sent a whole range of ``nbytes`` in ``elapsed`` seconds."""
        if elapsed > 0 and nbytes > 0:
            self.speed[peer_id] = nbytes / elapsed

    def begin(self, wanted: Iterable[int], chunks: ChunkMap, avoid: str | None = None) -> Pass:
        """A pass over ``wanted`` chunks (never from ``avoid``)."""
        return Pass(self, chunks, wanted, avoid)


class Pass:
    """Fetching a set of chunks: the driver calls :meth:`assign` with the usable holders, starts
    the ranges it returns, reports their :meth:`progress`, and once some have ended, asks for a
    :meth:`take_over` and :meth:`settle`-s them; until nothing is ``busy``."""

    def __init__(
        self, sched: Scheduler, chunks: ChunkMap, wanted: Iterable[int], avoid: str | None
    ) -> None:
        self.sched = sched
        self.chunks = chunks
        self.avoid = avoid
        self.pending = deque(wanted)
        self.inflight: dict[int, Range] = {}
        self.given = sched.blame.given()
        self.usable: list[str] = []
        self._stalled_since: float | None = None
        self._tickets = itertools.count()

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.inflight)

    def assign(self, usable: Iterable[str], now: float) -> list[Range]:
        """The ranges to ask for now, in order: the least busy holder first (among equals, the
        one given the fewest chunks), one range at a time each (a range in its last ``TAIL``
        bytes does not count), the lowest chunk first, never a chunk to the holder it was taken
        from unless that holder is the only one, at most ``max_inflight`` in all."""
        self.usable = [p for p in usable if p != self.avoid]
        started: list[Range] = []
        load = Counter(r.peer for r in self.inflight.values() if not r.ending)
        for peer in sorted(self.usable, key=lambda p: (load[p], self.given[p])):
            while load[peer] < self._per_holder() and (chunk := self._next_for(peer)) is not None:
                started.append(self._start(chunk, peer, now))
                load[peer] += 1
        if self.inflight:
            self._stalled_since = None
        return started

    def _per_holder(self) -> int:
        spread = -(-self.sched.max_inflight // max(1, len(self.usable)))
        return min(PER_HOLDER, max(1, spread))

    def _next_for(self, peer: str) -> int | None:
        if len(self.inflight) >= self.sched.max_inflight:
            return None
        alone = all(p == peer for p in self.usable)
        not_from = self.sched.not_from
        return next((c for c in self.pending if alone or not_from.get(c) != peer), None)

    def _start(self, chunk: int, peer: str, now: float) -> Range:
        self.pending.remove(chunk)
        start = self.chunks.have[chunk]
        left = self.chunks.span(chunk)[1] - start
        r = Range(next(self._tickets), chunk, peer, start, left, now)
        self.inflight[r.ticket] = r
        self.given[peer] += 1
        self.sched.blame.sent(chunk, peer)
        return r

    def progress(self, ticket: int, done: int) -> bool:
        """``done`` bytes of range ``ticket`` are on disk; True when it just entered its last
        ``TAIL`` bytes (its holder may be asked for the next range now)."""
        r = self.inflight.get(ticket)
        if r is None:
            return False
        r.done = done
        if r.left - done <= TAIL and not r.ending:
            r.ending = True
            return True
        return False

    def _idle(self) -> list[str]:
        busy = {r.peer for r in self.inflight.values()}
        return [p for p in self.usable if p not in busy]

    def wait_timeout(self) -> float | None:
        """How long the driver may wait for a range to end: with nothing left to hand out and a
        holder idle, not long (see :meth:`take_over`)."""
        return TAKE_OVER_POLL if self._idle() and not self.pending else None

    def take_over(self, now: float, ended: Collection[int]) -> TakeOver | None:
        """Once nothing else is left to hand out: the range of a slow holder (not among
        ``ended``, run for ``TAKE_OVER_AFTER`` s at least) that the fastest idle holder would
        finish at least ``TAKE_OVER_GAIN`` times sooner, cut (its bytes on disk are kept) so
        that the rest of its chunk goes to that holder. One at a time; never twice a chunk."""
        if self.pending:
            return None
        speed = self.sched.speed
        fast = [(speed[p], p) for p in self._idle() if p in speed]
        if not fast:
            return None
        best, helper = max(fast, key=lambda f: f[0])
        for r in self.inflight.values():
            if r.ticket in ended or r.peer == helper or self.sched.not_from.get(r.chunk) == r.peer:
                continue
            ran = now - r.started
            left = self.chunks.span(r.chunk)[1] - self.chunks.have[r.chunk]
            if ran < TAKE_OVER_AFTER or left <= 0:
                continue
            rate = r.done / ran
            if left / max(rate, 1.0) >= TAKE_OVER_GAIN * left / best:
                self.sched.not_from[r.chunk] = r.peer
                return TakeOver(r.ticket, r.chunk, r.peer, rate, helper, left)
        return None

    def settle(self, ended: Mapping[int, Outcome]) -> None:
        """Ranges that ended: a failed one goes back to the front of the queue (it goes on from
        where its bytes stop), so does a cut one unless its chunk is whole after all."""
        for ticket in sorted(ended, key=lambda t: self.inflight[t].chunk, reverse=True):
            r = self.inflight.pop(ticket)
            outcome = ended[ticket]
            if outcome == "failed" or (outcome == "cut" and not self.chunks.complete(r.chunk)):
                self.pending.appendleft(r.chunk)

    def stalled(self, now: float) -> bool:
        """Nothing is in flight (no holder usable): whether that has lasted over
        ``stall_timeout`` seconds."""
        if self._stalled_since is None:
            self._stalled_since = now
        return now - self._stalled_since > self.sched.stall_timeout
