"""Membership by fan-out and catalogue sync by deltas in the running node, between TreeDrive
nodes that both advertise the ``swim`` feature (issue 12; PROTOCOL.md 2.10).

The pure state machines (:class:`~treedrive.core.swim.Swim` with its
:class:`~treedrive.core.deltasync.Catalogue`) decide; this module is their I/O:

- time: ``Swim`` counts in gossip intervals (``time.monotonic() / gossip_interval``); the node's
  swim task ticks it when :meth:`~treedrive.core.swim.Swim.next_wake` says (at least five times
  a round, for the probe timeouts of pings sent while answering);
- out: each message it returns is a GOSSIP (ping, ping-req, push) or a GOSSIP_REPLY (ack) with
  the message under the extension's ``swim`` key (:func:`treedrive.core.swimwire.fields`), signed
  like any of this node's GOSSIPs (PROTOCOL.md 2.7); a GOSSIP is kept under the transport's
  bound on forwarded GOSSIPs (its catalogue news cut if needed);
- in: a GOSSIP or GOSSIP_REPLY with a ``swim`` key passes the gate, its sender is tracked, and
  the message goes to ``Swim.receive``; it is neither forwarded nor answered the classic way,
  and an ack's empty ``files`` says nothing of what its sender holds. A malformed one is dropped
  with one log line (rate-limited). An ack's catalogue answer and member list go only to the
  address of the ping's own source (a stranger cannot aim them at another host);
- the member table's changes drive the peer table: a member alive or suspect is tracked, one
  dead (or gone) is forgotten with what it held (:class:`PeerExpired`); classic expiry ("silent
  for the peer timeout") no longer applies to members;
- the catalogue: this node's change log follows what the store holds (reconciled whenever the
  files held here change); other origins' changes go to the store through
  :class:`~treedrive.core.swimstore.SwimStore`.

Classic peers are untouched: they get the classic GOSSIP each round and classic replies.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections.abc import Sequence

from treedrive.core import swimwire
from treedrive.core.activity import Activity
from treedrive.core.bound import Claim
from treedrive.core.catalogue import Catalogue
from treedrive.core.context import NodeContext, logged, storage_failure
from treedrive.core.deltasync import Catalogue as Deltas
from treedrive.core.events import PeerExpired, PeerSeen
from treedrive.core.features import extension
from treedrive.core.membership import Membership
from treedrive.core.messages import SWIM, Gossip, GossipReply
from treedrive.core.ports import UnitOfWork
from treedrive.core.replies import Address, same_host, source_ip
from treedrive.core.swim import Swim
from treedrive.core.swimstore import SwimStore
from treedrive.core.swimtypes import Ack, Member, Message, Out, Status, node_config

log = logging.getLogger(__name__)

GOSSIP_BYTES = 14 * 1024
"""A swim GOSSIP's ``swim`` value is kept under this (the transport refuses GOSSIPs over 16 KiB:
they could be forwarded)."""
TRACK_EVERY = 1.0
"""Rounds between two writes of one member's ``last_seen`` (not a write per message)."""
RECONCILE_EVERY = 10.0
"""Rounds between two checks of the change log against the store when nothing seemed to
change (a copy dropped without an event)."""
PULLS = (2.0, 5.0, 12.0, 30.0)
"""Rounds after its start at which a node pulls a random member's list once more: nodes that
started about when it did are learned even if their news went round before it knew them."""
LATE_GRACE = 0.02
"""The swim task waking later than this (in rounds) means this node is busy: the rest of the
delay does not count on swim's clock."""
SLOWEST = 0.75
"""The share of real time that may be left out of swim's clock (Lifeguard bounds its
multiplier likewise): a node that stays busy still probes, at a quarter of the rate."""
WAKE_AT_LEAST = 0.2
"""The swim task wakes at least this often (in rounds)."""


class SwimNode:
    """One node's swim side (see the module's docstring); inert when the node does not
    advertise ``swim``."""

    def __init__(self, ctx: NodeContext, membership: Membership, catalogue: Catalogue) -> None:
        self.ctx = ctx
        self.membership = membership
        self.enabled = SWIM in ctx.features
        self.interval = ctx.config.gossip_interval
        self.store = SwimStore(ctx, catalogue)
        self.swim: Swim | None = None
        self.deltas: Deltas | None = None
        self._written: dict[str, tuple[Address, float]] = {}
        """Members as last written to the peer table: address, when (in rounds) from their own
        message (``-inf``: from news of them)."""
        self._version = -1
        self._reconciled = 0.0
        self._ids: frozenset[str] = frozenset()
        self._checked = 0.0
        self._pulls: list[float] = []
        self._lag = 0.0
        """Seconds this node's event loop was late waking the swim task (see :meth:`now`)."""
        self._addresses: frozenset[Address] = frozenset()
        if self.enabled:
            membership.met = self.met
            membership.managed = self.manages
            membership.managed_addresses = self.addresses
            membership.managed_ids = self.ids

    def now(self) -> float:
        """Swim's clock, in rounds: monotonic time less the time this node's own event loop
        was late (Lifeguard's idea: a node that is itself too busy to read its acks in time
        must not take its peers for dead; and a busy node's rounds stretch, so it sends less)."""
        return (time.monotonic() - self._lag) / self.interval

    def start(self) -> None:
        """Once the node knows its address: the member table and the change log, numbered
        after this start's epoch (a peer that has numbers of an earlier run asks for all)."""
        if not self.enabled:
            return
        ctx = self.ctx
        self.deltas = Deltas(ctx.peer_id, epoch=int(time.time() * 1_000_000))
        self.deltas.journal = []
        config = node_config(self.interval, ctx.config.peer_timeout)
        swim = Swim(ctx.peer_id, (ctx.host, ctx.port), self.deltas, random.Random(), self.now(),
                    config=config)  # fmt: skip
        swim.incarnation = int(time.time())  # a restart is newer than what peers remember
        swim.journal = []
        self.swim = swim
        self._pulls = [time.monotonic() / self.interval + r for r in PULLS]  # in real rounds
        self.reconcile(force=True)

    async def loop(self) -> None:
        while self.swim is not None and not self.ctx.stopping.is_set():
            with logged("a swim round"):
                self.tick()
            delay = max(
                0.005, min(self.swim.next_wake() - self.now(), WAKE_AT_LEAST) * self.interval
            )
            slept = time.monotonic()
            await asyncio.sleep(delay)
            woke = time.monotonic()
            late = woke - slept - delay - LATE_GRACE * self.interval
            if late > 0:  # at most SLOWEST of the time: swim's clock runs at least 1/4 speed
                self._lag += min(late, SLOWEST * (woke - slept))

    def tick(self) -> None:
        if self.swim is None:
            return
        self.reconcile()
        now = self.now()
        self._send(self.swim.tick(now))
        if self._pulls and time.monotonic() / self.interval >= self._pulls[0]:
            self._pulls.pop(0)
            self._send(self.swim.pull(now))
        self.settle()
        if self.now() - self._checked >= RECONCILE_EVERY:
            self._checked = self.now()
            self._retrack()

    def _retrack(self) -> None:
        """Members alive that the peer table lost (evicted by a flood of new peers beyond
        ``max_peers``) are tracked again."""
        swim = self.swim
        if swim is None:
            return
        with self.ctx.store.reading() as uow:
            tracked = {p.peer_id for p in uow.peers.all()}
        lost = [swim.members[p] for p in swim.alive() if p not in tracked]
        for m in lost:
            self._written.pop(m.peer_id, None)
        if lost:
            self._members(lost)

    def leave(self) -> None:
        """The node stops: tell a few members."""
        if self.swim is not None:
            self._send(self.swim.leave())

    # -- what other parts ask -----------------------------------------------------------------
    def manages(self, peer_id: str) -> bool:
        """Whether ``peer_id`` is a member alive or suspect (its liveness is swim's to judge)."""
        member = None if self.swim is None else self.swim.members.get(peer_id)
        return member is not None and member.status <= Status.SUSPECT

    def addresses(self) -> frozenset[Address]:
        """The addresses of the members alive or suspect (no classic GOSSIP goes there)."""
        return self._addresses

    def ids(self) -> frozenset[str]:
        """The members alive or suspect (the peer table evicts them last)."""
        return self._ids

    def met(self, peer_id: str, host: str, port: int) -> None:
        """A node that speaks swim sent a classic message (or was tracked): a member; the first
        one met while this node knows none is asked for its table. In-memory only (the caller
        may be inside a unit of work): :meth:`settle` writes the peer table later."""
        if self.swim is not None and peer_id != self.ctx.peer_id:
            self._send(self.swim.join(peer_id, (host, port), self.now()))

    # -- out ----------------------------------------------------------------------------------
    def _send(self, outs: Sequence[Out]) -> None:
        ctx = self.ctx
        own = (ctx.host, ctx.port)
        dead = self._dead_addresses() if outs else frozenset()
        for address, msg in outs:
            if address == own:
                continue
            if address in dead:  # a lost member probed again, on swim's own slow schedule:
                ctx.network.reachable(*address)  # not held back by its failures in the split
            ctx.send(*address, self._wire(msg))

    def _dead_addresses(self) -> frozenset[Address]:
        swim = self.swim
        if swim is None or not swim.counts()[2]:
            return frozenset()
        return frozenset(m.address for m in swim.members.values() if m.status == Status.DEAD)

    def _wire(self, msg: Message) -> Gossip | GossipReply:
        ctx = self.ctx
        sign = self.membership.gate.sign
        if isinstance(msg, Ack):
            claim = Claim(ctx.peer_id, ctx.host, ctx.port)
            return GossipReply(
                host=ctx.host, port=ctx.port, peer_id=ctx.peer_id, files=(),
                extension=sign(extension(ctx), claim), swim=swimwire.fields(msg),
            )  # fmt: skip
        gossip_id = str(uuid.uuid4())
        claim = Claim(ctx.peer_id, ctx.host, ctx.port, gossip_id)
        return Gossip(
            host=ctx.host, port=ctx.port, id=gossip_id, peer_id=ctx.peer_id,
            extension=sign(extension(ctx), claim), swim=swimwire.fit(msg, GOSSIP_BYTES),
        )  # fmt: skip

    # -- in -----------------------------------------------------------------------------------
    def takes(self, message: Gossip | GossipReply) -> bool:
        """Whether ``message`` is a membership message for this node (else it is classic)."""
        return self.enabled and message.swim is not None

    def on_message(self, message: Gossip | GossipReply, source: str) -> None:
        """A GOSSIP or GOSSIP_REPLY that :meth:`takes`."""
        ctx, swim = self.ctx, self.swim
        if swim is None or message.peer_id == ctx.peer_id:
            return
        msg = swimwire.read(message.peer_id, message.host, message.port, message.swim)
        if (
            msg is None
            or isinstance(msg, Ack) != isinstance(message, GossipReply)
            or swimwire.too_far_ahead(msg, time.time())
        ):
            ctx.counters.dropped["swim_malformed"] += 1
            ctx.log_limited(
                "swim-malformed", logging.WARNING, "malformed membership message from %s "
                "(%r) dropped", source, message.peer_id[:64],
            )  # fmt: skip
            return
        if not self.membership.gate.admit(message, source) or not self._track(message):
            return
        if same_host(message.host, source_ip(source)):  # the way to it works
            ctx.network.reachable(message.host, message.port)
        outs = swim.receive(msg, self.now())
        self._send(swimwire.guarded(outs, msg, source))
        self.settle()

    def _track(self, message: Gossip | GossipReply) -> bool:
        """Track the sender (its ``last_seen`` written once a round at most; its first message
        of its own, and one that asks something of the pins, always), and judge again what it
        sealed once its key is pinned. False when the message is to be taken as a classic
        peer's (the gate says so), or was not recorded."""
        ctx = self.ctx
        address = (message.host, message.port)
        written = self._written.get(message.peer_id)
        now = self.now()
        gate = self.membership.gate
        if (
            written is not None
            and written[0] == address
            and now - written[1] < TRACK_EVERY
            and not gate.awaits(message.peer_id)
        ):
            return True
        pinning = gate.pins(message.peer_id)
        try:
            with ctx.transaction() as uow:
                peer = self.membership.track(
                    uow, message.peer_id, message.host, message.port, message.extension
                )
                uow.commit()
        except Exception as exc:
            if not storage_failure(exc):
                raise
            ctx.log_limited("storage", logging.ERROR, "%s not recorded: %s", message.peer_id, exc)
            return True  # a full disk must not silence membership
        if peer.features is None or SWIM not in peer.features:
            return False
        if pinning and self.deltas is not None:
            self.store.judge_again(message.peer_id, self.deltas, self.manages)
        if len(self._written) >= 2 * self.ctx.config.max_peers and self.swim is not None:
            # peer ids a stranger makes up are cheap: keep the rows of members only
            members = self.swim.members
            for peer_id in [p for p in self._written if p not in members]:
                del self._written[peer_id]
        self._written[message.peer_id] = (address, now)
        return True

    # -- the peer table and the store follow ---------------------------------------------------
    def settle(self) -> None:
        """Write what the last calls changed: members to the peer table, other origins'
        catalogue changes to the store, this node's holdings to its change log."""
        swim, deltas = self.swim, self.deltas
        if swim is None or deltas is None:
            return
        members, swim.journal = swim.journal or [], []
        changes, deltas.journal = deltas.journal or [], []
        if members:
            alive = swim.alive()
            self._ids = frozenset(alive)
            self._addresses = frozenset(swim.members[p].address for p in alive)
            self._members(members)
        if changes:
            for origin in self.store.apply(changes, self.manages):
                deltas.views.forget(origin)
        self.store.report_claims(deltas)
        self.reconcile()

    def _members(self, rows: list[Member]) -> None:
        ctx = self.ctx
        latest = {m.peer_id: m for m in rows if m.peer_id != ctx.peer_id}
        gone = [p for p, m in latest.items() if m.status > Status.SUSPECT]
        fresh = [
            m for m in latest.values()
            if m.status <= Status.SUSPECT and self._written.get(m.peer_id, (None,))[0] != m.address
        ]  # fmt: skip
        if not gone and not fresh:
            return
        with ctx.transaction() as uow:
            for m in fresh:
                _track_member(uow, m, ctx.config.max_peers, ctx.activity)
            known = [p for p in gone if uow.peers.get(p) is not None]
            uow.peers.remove(known)
            for peer_id in known:
                uow.emit(PeerExpired(peer_id))
            forgotten = uow.files.remove_orphans() if known else []
            uow.commit()
        # Heard of, not from: the member's own next message is tracked all the same (the gate
        # pins the key it signs with, and the features it says are written).
        self._written.update((m.peer_id, (m.address, -math.inf)) for m in fresh)
        for peer_id in gone:
            self._written.pop(peer_id, None)
            if self.deltas is not None:
                self.deltas.views.forget(peer_id)
        if known:
            ctx.activity.left(known, len(forgotten))

    def reconcile(self, force: bool = False) -> None:
        """Bring this node's change log in line with what the store says it holds (when that
        changed, or every :data:`RECONCILE_EVERY` rounds): the store is the truth, so a delete
        that a peer's change implied but the store refused is undone here too."""
        ctx, swim, deltas = self.ctx, self.swim, self.deltas
        if swim is None or deltas is None:
            return
        now = self.now()
        if (
            not force
            and ctx.local_version == self._version
            and now - self._reconciled < (RECONCILE_EVERY)
        ):
            return
        self._version, self._reconciled = ctx.local_version, now
        changes = self.store.reconcile(deltas)
        if changes:
            swim.spread(changes)


def _track_member(uow: UnitOfWork, m: Member, max_peers: int, activity: Activity) -> None:
    """Track a member heard of (not from): a new one as a TreeDrive peer that speaks swim (its
    other features come with its own messages); a known one keeps the features it said."""
    known = uow.peers.get(m.peer_id) is not None
    peer, new = uow.peers.upsert(
        m.peer_id, m.address[0], m.address[1], time.time(),
        None if known else frozenset({SWIM}), keep_features=True, max_peers=max_peers,
    )  # fmt: skip
    for evicted in uow.peers.evicted:
        uow.emit(PeerExpired(evicted))
    uow.emit(PeerSeen(peer, new))
    if new:
        activity.joined(peer)
