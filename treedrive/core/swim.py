"""Membership between TreeDrive nodes by fan-out, SWIM/memberlist style (issue 12, point 1).

A pure state machine: no I/O, no clock of its own (every call takes ``now``, in gossip intervals
or seconds: only ratios matter), randomness from the caller's ``random.Random``. The node (or the
simulator) hands it what arrives and sends what it returns.

Each round (one gossip interval) a node:
- probes one member, in shuffled round-robin order, with a :class:`Ping`; without an :class:`Ack`
  after ``probe_timeout`` it asks ``indirect`` others to probe it (:class:`PingReq`), and without
  any ack by ``suspect_after`` it suspects the member. A suspicion not refuted within
  ``suspect_rounds`` makes the member dead;
- pushes the news it has to spread (:class:`Push`) to ``fanout`` random members (nothing when
  there is nothing to spread);
- probes ``reprobe_dead`` dead members (round-robin, pings without news) and, every
  ``seed_rounds`` while it holds members dead, pulls a random member's table (anti-entropy for
  news dropped as stale; a well-known address is asked instead, every round, only while it knows
  nobody alive): a node that has lost peers keeps looking for them at a slow rate, so a
  partition heals once the network is whole again;
- probes up to ``recheck`` members it holds alive that such a table left out: a death whose
  news missed this node is found by its own probes, not after its round-robin (N rounds);
- pings up to ``syncs`` origins whose catalogue it is behind on.

News (membership :class:`News` and catalogue :class:`~treedrive.core.deltas.Change`) rides on
every message, each item at most ``retransmit`` times (``mult · log10(N + 1)``), least sent
first; membership news older than ``news_rounds`` is dropped unsent (it is stale). A member that
hears it is suspected or dead refutes with a higher incarnation, and tells whoever said so
first. A message from a member that this node holds suspect or dead (at an incarnation at least
that of the message) draws a :class:`Push` telling it so. The member table, its news and the
precedence of claims about members are :mod:`treedrive.core.swimnews`'.

Healing a partition: a dead member that answers is "back"; this node pulls its table (an
:class:`Ack` to a ``join`` ping lists the members it holds alive) for ``pull_rounds``, and takes
its word for members this node holds suspect or dead at the same incarnation (the other side
never lost them). Failures reported by a sender this node had lost are ignored (they are the
other side's view of this side), and a probe sent before its target came back suspects nothing.

Catalogue sync (:mod:`treedrive.core.deltas`) rides on probes: a :class:`Ping` says which of the
target's changes the sender has (``have``, ``asof``) and the :class:`Ack` carries the changes
since (or a snapshot). Every message also names up to ``heads`` origins that changed lately with
their last change number, so a node whose news missed a change learns that it is behind.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from treedrive.core.deltasync import Catalogue
from treedrive.core.swimnews import MemberNews
from treedrive.core.swimtypes import (
    DEFAULT,
    MAX_MEMBERS,
    Ack,
    Address,
    Config,
    Member,
    Message,
    News,
    Out,
    Ping,
    PingReq,
    Push,
    Status,
)

MAX_RELAYS = 64
"""Indirect probes made for others in one round (each dials an address a peer named)."""
MAX_SEED_JOINS = 8
"""Join pings to well-known hosts awaiting an answer (the oldest is forgotten first)."""


@dataclass(slots=True)
class _Probe:
    target: str
    sent: float
    indirect: bool = False
    acked: bool = False
    join: bool = False
    """A join ping: its target's answer may carry its member list."""
    vouch: bool = False
    """That list is the word of a member back from the dead (or of the first one met by a node
    that knows nobody alive): it may revive members held dead at the same incarnation."""


class Swim(MemberNews):
    """One node's membership. ``catalogue`` is its catalogue sync (its log and views); the
    member table and its news are :class:`~treedrive.core.swimnews.MemberNews`'."""

    def __init__(
        self,
        me: str,
        address: Address,
        catalogue: Catalogue,
        rng: random.Random,
        now: float,
        *,
        config: Config = DEFAULT,
        seeds: tuple[Address, ...] = (),
    ) -> None:
        super().__init__(me, address, catalogue, rng, now, config)
        self.seeds = tuple(s for s in seeds if s != address)
        self._seed_phase = rng.randrange(config.seed_rounds)
        self._probes: dict[int, _Probe] = {}
        self._relayed: list[float] = []
        """When the indirect probes made for others in the last round were made."""
        self._seed_joins: dict[int, float] = {}
        """Join pings sent to well-known hosts (by sequence number): their answers' lists."""
        self._relays: dict[int, tuple[Address, int, float]] = {}
        """Indirect probes made for others: my seq -> (requester, its seq)."""
        self._seq = 0
        self._round = 0
        self.next_round = now
        self._revived: list[str] = []
        """Members that were dead here and answered lately: asked for their tables."""
        self._pull_until = 0.0
        self._check_until = 0.0
        """Until when claims of failure are checked first (a partition is healing)."""
        self._pulled = -1.0

    def _direct(self, msg: Message, now: float) -> list[Out]:
        """A message from its sender: it is alive at ``msg.incarnation``. If this node holds it
        suspect or dead at that incarnation or later, tell it (once a round)."""
        if msg.sender in self.members:
            self.heard[msg.sender] = now
        self._claims.pop(msg.sender, None)  # a claim that it failed, checked: it did not
        self.catalogue.heard(msg.sender, msg.head, own=True)  # the gate let its name in
        out: list[Out] = []
        known = self.members.get(msg.sender)
        if known is not None and known.status == Status.DEAD:  # there may be more behind it
            self._revived = [*self._revived[-7:], msg.sender]
            self._pull_until = now + self.config.pull_rounds
            self._check_until = now + self.config.check_rounds
            if now - self._pulled >= 1.0:  # pull its table now (once a round at most)
                self._pulled = now
                out.append(self._ping(msg.sender, now, vouch=True, join=True))
        self.learn(News(msg.sender, msg.address, msg.incarnation, Status.ALIVE), now)
        if known is not None and known.status != Status.ALIVE:  # back: spread where it is now
            back = News(msg.sender, msg.address, msg.incarnation, Status.ALIVE, msg.head)
            self._news.put(msg.sender, back, now)
        if known is None or known.status == Status.ALIVE or msg.incarnation > known.incarnation:
            return out
        last = self._noticed.get(msg.sender)
        if last is not None and now - last < 1.0:
            return out
        if len(self._noticed) >= self.config.max_members:
            self._noticed.clear()
        self._noticed[msg.sender] = now
        about = News(known.peer_id, known.address, known.incarnation, known.status)
        return [*out, (msg.address, self._message(Push, news=(about,)))]

    # ------------------------------------------------------------------ sending

    def _ping(self, target: str, now: float, vouch: bool = False, **kw: Any) -> Out:
        self._seq += 1
        member = self.members[target]
        have, asof = self.catalogue.have(target), self.catalogue.asof(target)
        self._probes[self._seq] = _Probe(target, now, join=bool(kw.get("join")), vouch=vouch)
        return member.address, self._message(Ping, seq=self._seq, have=have, asof=asof, **kw)

    def join(self, peer: str, address: Address, now: float) -> list[Out]:
        """A member met outside this protocol (a classic message of a node that speaks it):
        alive; the first one met while this node knows no member is asked for its table."""
        self._now = now
        alone = not self._alive
        self.learn(News(peer, address, 0, Status.ALIVE), now)
        alive = peer in self._alive
        return [self._ping(peer, now, vouch=True, join=True)] if alone and alive else []

    def pull(self, now: float) -> list[Out]:
        """Ask a random member alive for its member list (a join ping): members that joined
        while this node's news of them went round elsewhere are learned at once."""
        self._now = now
        alive = self._alive.items
        return [self._ping(self.rng.choice(alive), now, join=True)] if alive else []

    def next_wake(self) -> float:
        """When :meth:`tick` has something to do next."""
        wake = self.next_round
        for probe in self._probes.values():
            if not probe.acked:
                at = probe.sent + (
                    self.config.suspect_after if probe.indirect else self.config.probe_timeout
                )
                wake = min(wake, at)
        return wake

    def tick(self, now: float) -> list[Out]:
        self._now = now
        out = self._timeouts(now)
        if now >= self.next_round:
            self.next_round += 1.0
            self._round += 1
            out += self._round_start(now)
        return out

    def _timeouts(self, now: float) -> list[Out]:
        out: list[Out] = []
        cfg = self.config
        for seq, probe in list(self._probes.items()):
            if probe.acked or now - probe.sent > cfg.suspect_after + 1.0:
                del self._probes[seq]
                continue
            m = self.members.get(probe.target)
            if m is None:
                del self._probes[seq]
            elif not probe.indirect and now >= probe.sent + cfg.probe_timeout:
                probe.indirect = True
                if m.status <= Status.SUSPECT:
                    for h in self._sample(cfg.indirect, probe.target):
                        msg = self._message(
                            PingReq, seq=seq, target=m.peer_id, target_address=m.address
                        )
                        out.append((self.members[h].address, msg))
            elif probe.indirect and now >= probe.sent + cfg.suspect_after:
                del self._probes[seq]
                if m.status == Status.ALIVE and m.since <= probe.sent:  # not revived meanwhile
                    self._set(Member(m.peer_id, m.address, m.incarnation, Status.SUSPECT, now))
                    claim = self._claims.pop(m.peer_id, None)  # checked, and confirmed
                    if claim is not None:
                        self.learn(claim, now)
        for m in self._overdue_suspects(now):
            self._set(Member(m.peer_id, m.address, m.incarnation, Status.DEAD, now))
        for peer in self._forget_dead(now):
            self.heard.pop(peer, None)
        return out

    def _round_start(self, now: float) -> list[Out]:
        out: list[Out] = []
        target = self._next_target(self._order, (Status.ALIVE, Status.SUSPECT))
        if target is not None:
            out.append(self._ping(target, now))
        out += self._rechecks(target, now)
        out += self._looking(now)
        syncs = 0
        for origin in self.catalogue.behind():
            if syncs >= self.config.syncs:
                break
            if origin != target and origin in self._alive:
                out.append(self._ping(origin, now))
                syncs += 1
        if self._news or self._changes:
            for peer in self._sample(self.config.fanout):
                out.append((self.members[peer].address, self._message(Push)))
        return out

    def _rechecks(self, target: str | None, now: float) -> list[Out]:
        """Probe up to ``recheck`` (``heal_checks`` while healing) members that a random member's
        table left out or that another claims failed (a death this node's news missed is found
        by its own probes, never taken on another's word: a member that is reachable answers,
        so this cannot undo a heal; one held dead since is probed too: it may be back)."""
        out: list[Out] = []
        busy = {target, *(p.target for p in self._probes.values())}
        cap = self.config.heal_checks if now < self._check_until else self.config.recheck
        for queue in (self._to_check, self._recheck):  # claims put off first
            while queue and len(out) < cap:
                peer = next(iter(queue))
                del queue[peer]
                if (peer in self._alive or peer in self._dead) and peer not in busy:
                    busy.add(peer)
                    out.append(self._ping(peer, now))
        return out

    def _looking(self, now: float) -> list[Out]:
        """Looking for lost members: dead ones re-probed, tables pulled from those back, and
        now and then while any is lost a random member's table (a well-known host's, each
        round, while none is alive)."""
        cfg = self.config
        out: list[Out] = []
        for _ in range(min(cfg.reprobe_dead, len(self._dead))):  # each at most once a round
            dead = self._next_target(self._dead_order, (Status.DEAD,))
            if dead is not None:  # no news: most of these pings go nowhere
                out.append(self._ping(dead, now, news=()))
        revived = [p for p in self._revived if p in self._alive]
        lost = self._dead or self._suspects
        if revived and lost and now < self._pull_until and now - self._pulled >= 1.0:
            self._pulled = now
            out.append(self._ping(self.rng.choice(revived), now, vouch=True, join=True))
        due = not self._alive or (self._round + self._seed_phase) % cfg.seed_rounds == 0
        if due and self._alive and self._dead:
            # Anti-entropy while any member is lost (memberlist's push-pull): the table of a
            # random member, so that what news dropped as stale still arrives, at a cost spread
            # over all members (from the well-known hosts alone, tables grew with N squared:
            # 1.2 MB an interval each at N = 1,000 after churn).
            out.append(self._ping(self._sample(1)[0], now, join=True))
        elif due and not self._alive and self.seeds:
            self._seq += 1
            seed = self.seeds[self.rng.randrange(len(self.seeds))]
            if len(self._seed_joins) >= MAX_SEED_JOINS:
                self._seed_joins.pop(next(iter(self._seed_joins)))
            self._seed_joins[self._seq] = now
            out.append((seed, self._message(Ping, seq=self._seq, have=-1, join=True)))
        return out

    # ------------------------------------------------------------------ receiving

    def receive(self, msg: Message, now: float) -> list[Out]:
        """Take a message from a peer; returns the messages to send."""
        if msg.sender == self.me:
            return []
        self._now = now
        sender = self.members.get(msg.sender)
        lost = sender is not None and sender.status != Status.ALIVE
        out = self._direct(msg, now)
        incarnation = self.incarnation
        healing = now < self._check_until
        for news in msg.news:
            if lost and news.status != Status.ALIVE and news.peer_id != self.me:
                continue  # a sender this node had lost: its failures are from the other side
            if not self.checked_first(news, healing):
                self.learn(news, now)
        if self.incarnation > incarnation:  # refuted: the sender is the one to tell first
            out.append((msg.address, self._message(Push, news=(self._self_news(),))))
        for change in msg.changes:
            self.spread(self.catalogue.news(change))
        for origin, head in msg.heads:
            self.catalogue.heard(origin, head)
        if isinstance(msg, Ping):
            out.append((msg.address, self._ack(msg)))
        elif isinstance(msg, Ack):
            out += self._acked(msg, now)
        elif isinstance(msg, PingReq) and msg.sender in self._alive:
            while self._relays and now - next(iter(self._relays.values()))[2] > 1.0:
                del self._relays[next(iter(self._relays))]
            # a stranger names addresses: a bounded rate (made in the last round, whether or
            # not they were answered: an ack frees a slot in _relays, not in this count)
            self._relayed = [t for t in self._relayed if now - t < 1.0]
            if len(self._relays) < MAX_RELAYS and len(self._relayed) < MAX_RELAYS:
                self._relayed.append(now)
                self._seq += 1
                self._relays[self._seq] = (msg.address, msg.seq, now)
                out.append((msg.target_address, self._message(Ping, seq=self._seq)))
        return out

    def _ack(self, ping: Ping) -> Ack:
        sync = None
        if ping.have is None or 0 <= ping.have < self.catalogue.head():
            sync = self.catalogue.answer(ping.have, ping.asof)
        members: tuple[News, ...] = ()
        if ping.join and self._may_list(ping.address[0]):
            # suspects too, as such: a member left out is one to check (``left_out``), and a
            # suspicion is not yet a failure (left out, each member that many suspected was
            # probed by every node that pulled a table: ~140 times a round at N = 5,000)
            listed = self._alive.items[: MAX_MEMBERS - 1]
            members = (*(self._news_of(self.members[p]) for p in listed), self._self_news())
        return self._message(  # type: ignore[return-value]
            Ack,
            seq=ping.seq,
            of=self.me,
            of_incarnation=self.incarnation,
            sync=sync,
            members=members,
        )

    def _acked(self, ack: Ack, now: float) -> list[Out]:
        # A member list only in answer to this node's own join ping: from the member asked, or
        # from a well-known host asked by sequence number (any other ack's list is ignored:
        # two made-up lists would fill the member table).
        # Its word revives members held dead at the same incarnation only if it is back from the
        # dead itself (across a healed partition the other side never lost them) or this node
        # knew nobody alive; a random member's table is merged by SWIM's precedence alone (in a
        # split, a member of this side that has not yet found the other side dead would bring
        # it back each time, and the split would never be noticed everywhere).
        probe = self._probes.get(ack.seq)
        asked = probe is not None and probe.join and probe.target == ack.sender
        seeded = not asked and self._seed_joins.pop(ack.seq, None) is not None
        if ack.members and (asked or seeded):
            vouched = seeded or (probe is not None and probe.vouch)
            for news in ack.members:  # claims of members alive (a suspect listed is not news)
                if news.status == Status.ALIVE:
                    self.learn(news, now, spread=False, vouched=vouched)
            if not vouched:
                self.left_out(ack.members)
        if ack.sync is not None and ack.sync.origin == ack.sender:
            self.spread(self.catalogue.take(ack.sync))
        relay = self._relays.pop(ack.seq, None)
        if relay is not None:  # an indirect probe made for another: forward the ack
            requester, seq, _ = relay
            msg = self._message(Ack, seq=seq, of=ack.of, of_incarnation=ack.of_incarnation)
            return [(requester, msg)]
        probe = self._probes.get(ack.seq)
        if probe is not None and probe.target == ack.of:
            probe.acked = True
            known = self.members.get(ack.of)
            if known is not None and ack.of != ack.sender:
                self.learn(News(ack.of, known.address, ack.of_incarnation, Status.ALIVE), now)
        return []

    def leave(self) -> list[Out]:
        """This node leaves: tell ``fanout`` members."""
        news = (News(self.me, self.address, self.incarnation, Status.LEFT),)
        alive = self.alive()
        targets = self.rng.sample(alive, min(self.config.fanout, len(alive)))
        return [(self.members[p].address, self._message(Push, news=news)) for p in targets]
