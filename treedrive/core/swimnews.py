"""Membership news of :mod:`treedrive.core.swim`: what a node knows of each member, SWIM's
precedence rules for claims about members (:meth:`MemberNews.learn`), and the messages that
carry the news. Pure: no I/O, no clock of its own.

News (membership :class:`~treedrive.core.swimtypes.News` and catalogue
:class:`~treedrive.core.deltas.Change`) rides on every message, each item at most ``retransmit``
times (``mult · log10(N + 1)``), least sent first; membership news older than ``news_rounds`` is
dropped unsent (it is stale). A member that hears it is suspected or dead refutes with a higher
incarnation.
"""

from __future__ import annotations

import math
import random
from typing import Any

from treedrive.core.deltas import Change
from treedrive.core.deltasync import Catalogue
from treedrive.core.spread import SpreadQueue
from treedrive.core.swimchanges import ChangeNews
from treedrive.core.swimtable import MemberTable
from treedrive.core.swimtypes import MAX_MEMBERS, Address, Config, Member, Message, News, Status

LISTS_PER_HOST = 4
"""Member lists sent to one host per round at most."""


class MemberNews(MemberTable):
    """One node's member table with the news it spreads (``catalogue``: its catalogue sync)."""

    def __init__(
        self,
        me: str,
        address: Address,
        catalogue: Catalogue,
        rng: random.Random,
        now: float,
        config: Config,
    ) -> None:
        self.me, self.address, self.catalogue = me, address, catalogue
        super().__init__(rng, config)
        self.incarnation = 0
        self.heard: dict[str, float] = {}
        self._news: SpreadQueue[News] = SpreadQueue()
        self._changes = ChangeNews(me, catalogue, rng, config)
        self._noticed: dict[str, float] = {}
        self._now = now
        self._listed: dict[str, list[float]] = {}
        """When each host was last sent this node's member list."""
        self._claims: dict[str, News] = {}
        """Claims of failure put off until this node's own probe (:meth:`checked_first`): taken
        if that probe fails too, dropped when the member is heard from."""
        self._to_check: dict[str, None] = {}
        """The members of those claims, not probed yet (before ``_recheck``'s)."""
        self._recheck: dict[str, None] = {}
        """Members to probe first, a few a round (bounded by ``max_news``): held alive, but a
        random member's table left them out, or (while a partition heals) another claims they
        failed."""

    def left_out(self, listed: tuple[News, ...]) -> None:
        """Members held alive or suspect that a random member's whole table (``listed``) left
        out: to be probed by this node itself. Which of them, when there are more than the
        queue takes, is drawn at random: the first in table order were the same members on
        every node, and after churn at N = 1,000 each of those was probed ~20 times a round."""
        room = self.config.max_news - len(self._recheck)
        if len(listed) >= MAX_MEMBERS or room <= 0:
            return  # cut short: absence says nothing
        names = {n.peer_id for n in listed}
        left = [p for p in self._alive.items if p not in names and p not in self._recheck]
        for peer in self.rng.sample(left, min(room, len(left))):
            self._recheck[peer] = None

    def checked_first(self, news: News, healing: bool) -> bool:
        """Whether a claim that a member failed is to be checked by a probe of this node's own
        instead of being taken (True: it is queued for one). Only while a partition heals
        (``healing``), and only a claim about a member held alive at that incarnation or later:
        across a healed cut each side's view of the other (and of its own side, taken from the
        other) is stale, and taken at its word it went round again, so that nearly every member
        had to refute it and every node had to hear each refutation. A member that is really
        down fails the probe, and then the claim is taken; when the queue is full it is taken
        at once."""
        if not healing or news.status not in (Status.SUSPECT, Status.DEAD):
            return False
        known = self.members.get(news.peer_id)
        if known is None or known.status != Status.ALIVE or news.incarnation > known.incarnation:
            return False
        if news.peer_id not in self._to_check:
            if len(self._to_check) >= self.config.max_news:
                return False
            self._to_check[news.peer_id] = None
        if news.peer_id not in self._claims and len(self._claims) >= self.config.max_news:
            del self._claims[next(iter(self._claims))]
        self._claims[news.peer_id] = news
        return True

    def _may_list(self, host: str) -> bool:
        """Whether a join ping from ``host`` gets this node's member list now: at most
        :data:`LISTS_PER_HOST` a round per host (a list is up to 8,191 members, for a ping of a
        few hundred bytes; nodes on one machine join together)."""
        recent = [t for t in self._listed.get(host, ()) if self._now - t < 1.0]
        if len(recent) >= LISTS_PER_HOST:
            return False
        if len(self._listed) >= self.config.max_members:
            self._listed.clear()
        self._listed[host] = [*recent, self._now]
        return True

    def retransmit(self) -> int:
        return max(1, math.ceil(self.config.retransmit_mult * math.log10(len(self.members) + 2)))

    def _set(self, m: Member, spread: bool = True) -> bool:
        """Store a row and spread news of it (False: not stored, the table is full)."""
        if not self._put(m):
            return False
        if not spread:  # what this node was spreading about it is out of date
            self._news.discard(m.peer_id)
        else:
            news = self._news_of(m)
            self._news.put(m.peer_id, news, self._now)
        return True

    def _news_of(self, m: Member) -> News:
        return News(m.peer_id, m.address, m.incarnation, m.status, self._changes.head_of(m.peer_id))

    def _refute(self, incarnation: int) -> None:
        self.incarnation = max(self.incarnation, incarnation) + 1
        self._news.put(self.me, self._self_news(), self._now)

    def _self_news(self) -> News:
        return News(self.me, self.address, self.incarnation, Status.ALIVE, self.catalogue.head())

    def learn(self, news: News, now: float, spread: bool = True, vouched: bool = False) -> None:
        """Take a claim about a member (SWIM's precedence: a higher incarnation wins; at one
        incarnation, dead over suspect over alive). ``vouched``: the claim comes from the table
        of a member back from the dead (or the first met by a node that knew nobody alive) and
        holds it alive at the incarnation this node holds it suspect or dead at: across a healed
        partition that is the truth (the other side never lost it), and if not, probes find it
        dead again."""
        if news.peer_id == self.me:
            if (
                news.status in (Status.SUSPECT, Status.DEAD)
                and news.incarnation >= self.incarnation
            ):
                self._refute(news.incarnation)
            return
        if news.head >= 0:
            self.catalogue.heard(news.peer_id, news.head)
        known = self.members.get(news.peer_id)
        if (
            known is not None
            and news.incarnation <= known.incarnation
            and (news.incarnation < known.incarnation or news.status <= known.status)
            and not (
                vouched
                and news.status == Status.ALIVE
                and known.status in (Status.SUSPECT, Status.DEAD)
                and news.incarnation == known.incarnation
            )
        ):
            return
        if known is None:
            row = Member(news.peer_id, news.address, news.incarnation, news.status, now)
            # a newcomer the full table refused is not probed either (the order stays bounded)
            if news.status <= Status.SUSPECT and self._set(row, spread):
                self._order.insert(self.rng.randrange(len(self._order) + 1), news.peer_id)
            return
        if news.status == Status.ALIVE and known.status >= Status.DEAD:
            self._order.insert(self.rng.randrange(len(self._order) + 1), news.peer_id)
        self._set(Member(news.peer_id, news.address, news.incarnation, news.status, now), spread)

    def _message(
        self, kind: type[Message], news: tuple[News, ...] | None = None, **kw: Any
    ) -> Message:
        limit = self.retransmit()
        oldest = self._now - self.config.news_rounds
        if news is None:
            news = tuple(self._news.take(self.config.max_news, limit, oldest))
        changes = self._changes.take(limit)
        return kind(
            sender=self.me,
            address=self.address,
            incarnation=self.incarnation,
            head=self.catalogue.head(),
            news=news,
            changes=changes,
            heads=self._changes.heads(self._now),
            **kw,
        )

    def spread(self, changes: list[Change]) -> None:
        """Catalogue changes to spread (this node's own, or news that was new here)."""
        self._changes.spread(changes, self._now)
