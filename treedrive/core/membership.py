"""Membership: who the node knows, by the classic protocol's GOSSIP (PROTOCOL.md 1.3).

The node gossips to every tracked address each interval (and to its bootstrap hosts while it
knows nobody), tracks whoever gossips or answers within ``max_peers``, answers a GOSSIP with its
GOSSIP_REPLY as the reply policy (:mod:`treedrive.core.replies`) allows, forwards new GOSSIPs to a
few others, and drops peers that fall silent. One unit of work per incoming GOSSIP. Each round it
also tries again, slowly, the bootstrap hosts it does not track and the peers it dropped
(:mod:`treedrive.core.recontact`): a partition heals once the network is whole again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

from treedrive.core.bound import REPLY_RESIGN, Claim
from treedrive.core.bounded import Reused, TokenBucket
from treedrive.core.context import NodeContext, storage_failure
from treedrive.core.events import PeerExpired, PeerSeen
from treedrive.core.features import extension, features_of, gossip_extra, plugin_keys
from treedrive.core.gate import Gate
from treedrive.core.messages import SWIM, Extension, Gossip, GossipReply
from treedrive.core.model import PeerInfo
from treedrive.core.ports import UnitOfWork
from treedrive.core.recontact import Recontact
from treedrive.core.replies import (
    FORWARDS_PER_SECOND,
    Address,
    ReplyPolicy,
    Verdict,
    distinct_addresses,
    gossip_size,
    reply_size,
    same_host,
    source_ip,
)

log = logging.getLogger(__name__)

SEEN_IDS = 10_000
"""GOSSIP ids remembered (a GOSSIP seen before is neither answered nor forwarded again)."""
KEEP_FOR = 1.0
"""Seconds the set of proven peers (kept when the peer table is full) is reused."""
FORWARD_TARGETS_FOR = 1.0
"""Seconds the tracked addresses that GOSSIPs are forwarded to are reused before they are read
again (a flood must not make the node read its whole peer table per GOSSIP)."""


class Membership:
    """The GOSSIP side of one node (see the module's docstring)."""

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.replies = ReplyPolicy(ctx.config.gossip_interval)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._reply: Reused[tuple[GossipReply, int]] = Reused(ctx.config.gossip_interval)
        self._pending_replies: dict[Address, tuple[str, asyncio.TimerHandle]] = {}
        self._forwards = TokenBucket(FORWARDS_PER_SECOND, FORWARDS_PER_SECOND)
        self._forward_targets: Reused[list[tuple[str, Address]]] = Reused(FORWARD_TARGETS_FOR)
        self._keep: Reused[frozenset[str]] = Reused(KEEP_FOR)
        self._proofs = 0
        """Bumped when a peer proves itself (the set of kept peers is read again)."""
        self.gate = Gate(ctx)
        """Every GOSSIP and GOSSIP_REPLY passes it first (PROTOCOL.md 2.7)."""
        self._resigned: tuple[GossipReply, tuple[GossipReply, int]] | None = None
        """The cached reply and the same reply signed again later (see :meth:`gossip_reply`)."""
        self.recontact = Recontact(ctx.config.gossip_interval)
        """The bootstrap hosts and dropped peers tried again (see :meth:`heal`)."""
        self.recontact.well_known(
            ((a.host, a.port) for a in ctx.config.bootstrap), time.monotonic()
        )
        # Set by the swim side (:mod:`treedrive.core.swimnode`) when the node speaks it:
        self.met: Callable[[str, str, int], None] = _nothing
        """A peer that speaks swim was tracked (its id, host and port)."""
        self.managed: Callable[[str], bool] = _no
        """Whether a peer's liveness is swim's to judge (not expired for silence here)."""
        self.managed_addresses: Callable[[], frozenset[Address]] = frozenset
        """The addresses that get no classic GOSSIP (members of swim)."""
        self.managed_ids: Callable[[], frozenset[str]] = frozenset
        """The members of swim alive or suspect: like proven peers, evicted last."""

    def close(self) -> None:
        for _, timer in self._pending_replies.values():
            timer.cancel()
        self._pending_replies.clear()

    # -- gossip out ---------------------------------------------------------------------------
    def new_gossip(self) -> Gossip:
        """A GOSSIP of this node's, signed (PROTOCOL.md 2.7) if it speaks the extension."""
        ctx = self.ctx
        gossip_id = str(uuid.uuid4())
        claim = Claim(ctx.peer_id, ctx.host, ctx.port, gossip_id)
        gossip = Gossip(
            host=ctx.host,
            port=ctx.port,
            id=gossip_id,
            peer_id=ctx.peer_id,
            extra=gossip_extra(ctx, "GOSSIP"),
            extension=self.gate.sign(extension(ctx), claim),
        )
        self.remember(gossip.id)
        return gossip

    def remember(self, gossip_id: str) -> bool:
        """Record a gossip id; False if it was already seen."""
        if gossip_id in self._seen:
            return False
        self._seen[gossip_id] = None
        if len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        return True

    def gossip_to(self, addresses: list[Address]) -> None:
        """A new GOSSIP to each of ``addresses`` (a GOSSIP_REPLY from there answers it), but
        those of swim's members (they hear from this node by swim)."""
        managed = self.managed_addresses()
        addresses = [a for a in addresses if a not in managed] if managed else addresses
        if not addresses:
            return
        gossip = self.new_gossip()
        now = time.monotonic()
        for host, port in addresses:
            self.replies.gossiped((host, port), now)
            self.ctx.send(host, port, gossip)

    def heal(self, tracked: list[Address], *, well_known: bool = True) -> list[Address]:
        """Once per gossip round: a GOSSIP to the few dropped peers and untracked bootstrap
        hosts that are due to be tried again (``tracked``: the addresses gossiped to this
        round; ``well_known``: False while the bootstrap hosts are being gossiped to anyway).
        Returns the addresses tried."""
        exclude = set(tracked) | self.ctx.own_address()
        # Dropped peers heard of again (another peer's forwarded GOSSIP named them) and those
        # due now: their dials need not wait out the back-off of the partition's failures.
        found = self.recontact.found(exclude)
        due = self.recontact.due(time.monotonic(), exclude, well_known=well_known)
        for host, port in found + due:
            self.ctx.network.reachable(host, port)
        if due:
            log.debug("trying again %s", ", ".join(f"{h}:{p}" for h, p in due))
            self.gossip_to(due)
        return due

    # -- tracking -----------------------------------------------------------------------------
    def track(
        self, uow: UnitOfWork, peer_id: str, host: str, port: int, ext: Extension | None
    ) -> PeerInfo:
        """Track or refresh a peer, within ``max_peers``: the longest silent make room, but the
        peers that answer this node's GOSSIPs go last (a flood of new peer ids must not push
        them out). Returns it as tracked."""
        ctx = self.ctx
        if self.gate.record(uow, peer_id):
            ext = None  # a signature for a classic peer's name: classic rules (PROTOCOL.md 2.7)
        peers = uow.peers
        peer, new = peers.upsert(
            peer_id, host, port, time.time(), features_of(ext),
            max_peers=ctx.config.max_peers, keep=self._proven_peers() | self.managed_ids(),
        )  # fmt: skip
        for gone in peers.evicted:
            uow.emit(PeerExpired(gone))
        if peers.evicted:
            ctx.log_limited(
                "evicted", logging.INFO, "%d peers tracked at most: %d longest silent forgotten",
                ctx.config.max_peers, len(peers.evicted),
            )  # fmt: skip
        uow.emit(PeerSeen(peer, new))
        if new:
            ctx.activity.joined(peer)
        if peer.features is not None and SWIM in peer.features:
            self.met(peer_id, host, port)
        return peer

    def _proven_peers(self) -> frozenset[str]:
        now = time.monotonic()
        kept = self._keep.get(self._proofs, now)
        if kept is None:
            kept = self._keep.put(self.replies.proven_peers(now), self._proofs, now)
        return kept

    def answered(self, r: GossipReply, source: str) -> None:
        """A GOSSIP_REPLY came: it may prove its sender (it answers our GOSSIP)."""
        self._heard(r.host, r.port, source_ip(source))
        if self.replies.answered_us(
            (r.host, r.port), source_ip(source), time.monotonic(), r.peer_id
        ):
            self._proofs += 1
            self.recontact.answered((r.host, r.port))

    def _heard(self, host: str, port: int, ip: str) -> None:
        """A message naming ``host:port`` came from ``ip``: if that is its own IP, the way to
        it works (dials to it need not wait out the back-off of a partition's failures)."""
        if same_host(host, ip):
            self.ctx.network.reachable(host, port)

    def expire(self, now: float | None = None) -> list[str]:
        """Forget the peers silent for longer than the peer timeout (and the holdings and
        records that only they kept)."""
        ctx = self.ctx
        now = time.time() if now is None else now
        with ctx.transaction() as uow:
            gone = [
                p for p in uow.peers.expired(now - ctx.config.peer_timeout) if not self.managed(p)
            ]
            addresses = [(p.host, p.port) for p in map(uow.peers.get, gone) if p is not None]
            uow.peers.remove(gone)
            for peer_id in gone:
                uow.emit(PeerExpired(peer_id))
            uow.files.drop_untracked_holders()
            forgotten = uow.files.remove_orphans()
            uow.commit()
        at = time.monotonic()
        for address in addresses:
            self.recontact.dropped(address, at)
        if gone:
            # Peer ids are claims: a thousand forged ones make a few short lines.
            ctx.activity.left(gone, len(forgotten))
        return gone

    # -- gossip in ----------------------------------------------------------------------------
    def on_gossip(self, g: Gossip, source: str) -> None:
        ctx = self.ctx
        if g.id in self._seen or g.peer_id == ctx.peer_id:
            return
        if not self.gate.admit(g, source):
            return  # refused: its id is not remembered (the real GOSSIP may still come)
        self.remember(g.id)
        ip = source_ip(source)
        self._heard(g.host, g.port, ip)
        self.replies.gossip_received((g.host, g.port), ip, gossip_size(g), time.monotonic())
        try:
            with ctx.transaction() as uow:
                self.track(uow, g.peer_id, g.host, g.port, g.extension)
                uow.commit()
        except Exception as exc:
            # A full disk must not silence the node: peers that hear nothing drop it. The reply
            # needs no write.
            if not storage_failure(exc):
                raise
            ctx.log_limited(
                "storage", logging.ERROR, "GOSSIP from %s not recorded: %s", g.peer_id, exc
            )
        plugin_keys(ctx, "GOSSIP", g.peer_id, g.extra)
        self._answer((g.host, g.port), ip)
        self._forward(g)

    def gossip_reply(self) -> tuple[GossipReply, int]:
        """The GOSSIP_REPLY this node sends and its size on the wire: one object, reused until
        the files held here change (or an interval passes), so the transport encodes it once;
        signed again, as a new object, once its signature is :data:`REPLY_RESIGN` s old."""
        ctx = self.ctx
        now = time.monotonic()
        cached = self._reply.get(ctx.local_version, now)
        if cached is not None:
            return self._fresh(cached)
        version = ctx.local_version
        with ctx.store.reading() as uow:  # a read: works on a full disk too
            files = uow.files.local_metas()
        reply = GossipReply(
            host=ctx.host,
            port=ctx.port,
            peer_id=ctx.peer_id,
            files=tuple(files),
            extra=gossip_extra(ctx, "GOSSIP_REPLY"),
            extension=self.gate.sign(extension(ctx), Claim(ctx.peer_id, ctx.host, ctx.port)),
        )
        return self._reply.put((reply, reply_size(reply)), version, now)

    def _fresh(self, cached: tuple[GossipReply, int]) -> tuple[GossipReply, int]:
        """``cached``, or the same reply signed now if its signature is getting old (receivers
        refuse a signature much older than the newest they accepted from this node)."""
        reply, size = cached
        wall = int(time.time())
        if _signed_within(reply, wall):
            return cached
        if self._resigned is not None and self._resigned[0] is reply:
            again = self._resigned[1]
            if _signed_within(again[0], wall):
                return again
        claim = Claim(reply.peer_id, reply.host, reply.port)
        fresh = (replace(reply, extension=self.gate.sign(reply.extension, claim, wall)), size)
        self._resigned = (reply, fresh)
        return fresh

    def _answer(self, address: Address, ip: str) -> None:
        """Reply to ``address`` as the reply policy says: now, once its interval is over, or
        (a stranger that has not earned the bytes) not at all."""
        reply, size = self.gossip_reply()
        decision = self.replies.decide(address, ip, size, time.monotonic())
        if decision.verdict is Verdict.SEND:
            self.ctx.send(*address, reply)
        elif decision.verdict is Verdict.LATER:
            self._defer(address, ip, decision.at)
        else:
            self.ctx.log_limited(
                "budget", logging.INFO,
                "GOSSIP_REPLY to %s:%d not sent: its source %s has not sent enough to earn "
                "%d bytes (%d refused so far)",
                address[0], address[1], ip, size, self.replies.refused,
            )  # fmt: skip

    def _defer(self, address: Address, ip: str, at: float) -> None:
        """One pending reply per address (at most as many as the policy remembers)."""
        pending = self._pending_replies.get(address)
        if pending is not None:
            self._pending_replies[address] = (ip, pending[1])
        elif len(self._pending_replies) < self.replies.addresses_kept:
            delay = max(0.0, at - time.monotonic())
            timer = asyncio.get_running_loop().call_later(delay, self._answer_later, address)
            self._pending_replies[address] = (ip, timer)

    def _answer_later(self, address: Address) -> None:
        pending = self._pending_replies.pop(address, None)
        if pending is None or self.ctx.stopping.is_set():
            return
        try:
            self._answer(address, pending[0])
        except Exception:
            log.exception("a deferred GOSSIP_REPLY to %s:%d failed", *address)

    def _forward(self, g: Gossip) -> None:
        """Pass a new GOSSIP on to up to ``fanout`` other addresses, within the overall rate."""
        ctx = self.ctx
        if ctx.config.fanout <= 0 or not self._forwards.take(time.monotonic()):
            return
        now = time.monotonic()
        targets = self._forward_targets.get(0, now)
        if targets is None:
            tracked = [(p.peer_id, (p.host, p.port)) for p in ctx.peers()]
            targets = self._forward_targets.put(tracked, 0, now)
        origin = (g.host, g.port)
        others = distinct_addresses(
            [a for peer_id, a in targets if peer_id != g.peer_id and a != origin],
            exclude=ctx.own_address(),
        )
        for host, port in random.sample(others, min(ctx.config.fanout, len(others))):
            self.replies.gossiped((host, port), now)
            ctx.send(host, port, g)


def _nothing(peer_id: str, host: str, port: int) -> None:
    pass


def _no(peer_id: str) -> bool:
    return False


def _signed_within(reply: GossipReply, wall: int) -> bool:
    """Whether ``reply`` is unsigned (nothing to refresh) or was signed under
    :data:`REPLY_RESIGN` seconds before ``wall``."""
    proof = None if reply.extension is None else reply.extension.proof
    return proof is None or wall - proof.ts < REPLY_RESIGN
