"""The member table of :mod:`treedrive.core.swim`: rows by peer id, indexed by status (alive or
suspect members to sample from, suspects and dead with the time they became so), and the
shuffled round-robin orders in which members are probed. Pure; bounded by
``Config.max_members``."""

from __future__ import annotations

import random

from treedrive.core.spread import IndexedSet
from treedrive.core.swimtypes import Config, Member, Status


class MemberTable:
    def __init__(self, rng: random.Random, config: Config) -> None:
        self.rng = rng
        self.config = config
        self.members: dict[str, Member] = {}
        self._alive = IndexedSet()
        """Members alive or suspect: probe, push and ask-to-probe targets."""
        self._suspects: dict[str, float] = {}
        self._dead: dict[str, float] = {}
        self._order: list[str] = []
        self._dead_order: list[str] = []
        self.journal: list[Member] | None = None
        """When a list: every row stored is appended (the running node's peer table follows
        them, and empties it)."""

    def alive(self) -> list[str]:
        return list(self._alive.items)

    def counts(self) -> tuple[int, int, int]:
        """Members alive, suspect and dead."""
        return len(self._alive) - len(self._suspects), len(self._suspects), len(self._dead)

    def start(self, members: dict[str, Member]) -> None:
        """Start from a known table (rows may be shared with other tables: they are immutable)."""
        self.members = members
        for peer, m in members.items():
            self._index(peer, m)

    def _index(self, peer: str, m: Member) -> None:
        if m.status <= Status.SUSPECT:
            self._alive.add(peer)
        else:
            self._alive.discard(peer)
        if m.status == Status.SUSPECT:
            self._suspects[peer] = m.since
        else:
            self._suspects.pop(peer, None)
        if m.status == Status.DEAD:
            self._dead[peer] = m.since
        else:
            self._dead.pop(peer, None)

    def _put(self, m: Member) -> bool:
        """Store a row (False: the table is full and ``m`` is a newcomer)."""
        if m.peer_id not in self.members and len(self.members) >= self.config.max_members:
            return False
        self.members[m.peer_id] = m
        self._index(m.peer_id, m)
        if self.journal is not None:
            self.journal.append(m)
        return True

    def _next_target(self, order: list[str], want: tuple[Status, ...]) -> str | None:
        for _ in range(2):
            while order:
                peer = order.pop()
                m = self.members.get(peer)
                if m is not None and m.status in want:
                    return peer
            order.extend(self._alive.items if order is self._order else self._dead)
            self.rng.shuffle(order)
        return None

    def _sample(self, k: int, exclude: str | None = None) -> list[str]:
        items = self._alive.items
        picked = self.rng.sample(items, min(k + 1, len(items)))
        return [p for p in picked if p != exclude][:k]

    def _overdue_suspects(self, now: float) -> list[Member]:
        """The members suspected for ``suspect_rounds`` or longer (they are dead now)."""
        rounds = self.config.suspect_rounds
        return [self.members[p] for p, since in self._suspects.items() if now - since >= rounds]

    def _forget_dead(self, now: float) -> list[str]:
        """Forget the members dead for ``dead_rounds`` or longer; their peer ids."""
        gone = [p for p, since in self._dead.items() if now - since >= self.config.dead_rounds]
        for peer in gone:
            del self.members[peer]
            del self._dead[peer]
        return gone
