"""Healing: whom a node that has lost peers contacts again, and when (pure, no clock of its own).

A node that knows some peers gossips only to them; a partition longer than the peer timeout
makes each side forget the other, and nothing would bring them together again. So the node keeps
a short list of addresses to try again, each with its own back-off and jitter:

- its well-known (bootstrap) hosts, for good: tried while they are not among the tracked
  addresses (while the node knows nobody the bootstrap loop tries them already);
- the peers it dropped for silence, if they had answered its GOSSIP before (an address that a
  stranger merely named is never tried: the list cannot be filled with a victim's address), for
  :data:`FORGET_AFTER` seconds at most, :data:`KEEP` of them at most (the oldest go first).

An address is tried first one interval after it was dropped, then at most every
:data:`CAP_ROUNDS` intervals (times a jitter in [:data:`JITTER`, 1], so the nodes of one side do
not all try at once), and a node tries at most :data:`PER_ROUND` addresses per gossip round: a
hundred dropped peers never make a storm. An address counts as found again once it is tracked.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from treedrive.core.backoff import Backoff
from treedrive.core.bounded import Bounded

Address = tuple[str, int]

KEEP = 64
"""Dropped addresses kept to try again (the least recently dropped are forgotten first)."""
PER_ROUND = 3
"""Addresses tried again, at most, per gossip round (one GOSSIP each)."""
CAP_ROUNDS = 2.0
"""The longest wait, in gossip intervals, between two tries of one address: with it, a healed
partition is noticed within this many intervals (plus a round to spread the news)."""
JITTER = 0.5
"""Each wait is its back-off delay times a random factor in [JITTER, 1]."""
FORGET_AFTER = 3600.0
"""Seconds a dropped address is tried again before it is forgotten (bootstrap hosts never are)."""
ANSWERED_KEEP = 4096
"""Addresses remembered as having answered this node's GOSSIP (the only ones tried again)."""


@dataclass(slots=True)
class _Entry:
    backoff: Backoff
    due: float
    since: float
    permanent: bool = False


@dataclass(slots=True)
class Recontact:
    """The addresses to try again (see the module's docstring). ``interval`` is the gossip
    interval in seconds; every method takes ``now`` (monotonic seconds)."""

    interval: float
    rng: random.Random = field(default_factory=random.Random)
    keep: int = KEEP
    per_round: int = PER_ROUND
    _entries: OrderedDict[Address, _Entry] = field(default_factory=OrderedDict)
    _answered: Bounded[Address, bool] = field(default_factory=lambda: Bounded(ANSWERED_KEEP))

    def _backoff(self) -> Backoff:
        first = max(self.interval, 0.01)
        return Backoff(first, max(first, CAP_ROUNDS * self.interval))

    def _wait(self, delay: float) -> float:
        return delay * self.rng.uniform(JITTER, 1.0)

    def well_known(self, addresses: Iterable[Address], now: float) -> None:
        """The bootstrap hosts: tried again for good whenever they are not tracked."""
        for address in addresses:
            if address not in self._entries:
                backoff = self._backoff()
                self._entries[address] = _Entry(backoff, now, now, permanent=True)

    def answered(self, address: Address) -> None:
        """``address`` answered a GOSSIP of this node's (proof that it is a peer's)."""
        self._answered.put(address, True)

    def dropped(self, address: Address, now: float) -> bool:
        """A peer at ``address`` was dropped for silence: try it again later if it had ever
        answered this node. Returns whether it is on the list."""
        entry = self._entries.get(address)
        if entry is not None:
            if not entry.permanent:
                self._entries.move_to_end(address)
            return True
        if address not in self._answered:
            return False
        backoff = self._backoff()
        self._entries[address] = _Entry(backoff, now + self._wait(backoff.first), now)
        self._trim()
        return True

    def _trim(self) -> None:
        dropped = [a for a, e in self._entries.items() if not e.permanent]
        for address in dropped[: max(0, len(dropped) - self.keep)]:
            del self._entries[address]

    def found(self, tracked: Collection[Address]) -> list[Address]:
        """The dropped addresses that are tracked again (they leave the list)."""
        back = [a for a, e in self._entries.items() if a in tracked and not e.permanent]
        for address in back:
            del self._entries[address]
        return back

    def due(
        self, now: float, tracked: Collection[Address], *, well_known: bool = True
    ) -> list[Address]:
        """The addresses to send a GOSSIP to now (at most :attr:`per_round`), each scheduled
        again with back-off. ``tracked``: the addresses known now (found again: a dropped one
        leaves the list, a bootstrap host's back-off starts over). ``well_known``: False to
        leave the bootstrap hosts out (they are being tried anyway)."""
        self.found(tracked)
        for address in [a for a in self._entries if a in tracked]:  # well-known, tracked
            entry = self._entries[address]
            entry.backoff.succeeded()
            entry.due = now + self._wait(entry.backoff.first)
        for address in [
            a for a, e in self._entries.items()
            if not e.permanent and now - e.since > FORGET_AFTER
        ]:  # fmt: skip
            del self._entries[address]
        ready = sorted(
            (e.due, a)
            for a, e in self._entries.items()
            if e.due <= now and (well_known or not e.permanent)
        )
        chosen = [a for _, a in ready[: self.per_round]]
        for address in chosen:
            entry = self._entries[address]
            entry.due = now + self._wait(entry.backoff.failed())
        return chosen

    def pending(self) -> list[Address]:
        """The addresses on the list (bootstrap hosts included), oldest first."""
        return list(self._entries)
