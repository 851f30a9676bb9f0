"""The gate every GOSSIP and GOSSIP_REPLY passes before it changes anything (PROTOCOL.md 2.7):
the I/O around :func:`treedrive.core.bound.decide`.

It reads the key pinned for the peer id the message names, lets :mod:`~treedrive.core.bound`
decide, then pins a first key (or notes that the pinned key signed again), or refuses: a refused
message is counted by reason, logged (one line a second at most per reason) and shown on the
dashboard (a :class:`~treedrive.core.events.PeerRefused` notice, a few a second at most). What it
remembers of signing times is bounded (:data:`NEWEST_KEPT` peer ids).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import replace

from treedrive.core.bound import Claim, Decision, Refusal, claim_of, decide, prove
from treedrive.core.bounded import Bounded, TokenBucket
from treedrive.core.context import NodeContext
from treedrive.core.errors import NotFound
from treedrive.core.events import PeerRefused
from treedrive.core.identity import fingerprint
from treedrive.core.messages import Extension, Gossip, GossipReply
from treedrive.core.model import PeerKey
from treedrive.core.pins import Verdict
from treedrive.core.ports import UnitOfWork
from treedrive.core.text import printable

log = logging.getLogger("treedrive.core.node")

NEWEST_KEPT = 10_000
"""Peer ids whose newest accepted signing time is remembered (the least recently heard go
first: a peer forgotten here is checked against its pin only)."""
TOUCH_EVERY = 60.0
"""Seconds between two writes of a pinned key's ``last_seen`` (not one write per message)."""
NOTICES_PER_SECOND = 2.0
"""Refusals shown on the dashboard per second at most (a flood of forgeries is counted, not
shown one by one)."""
NOTICE_BURST = 10.0
MAX_PINS = 100_000
"""Peer ids pinned at most. Pins are never evicted (a stranger who could push pins out could
then take the names they protected): once the table is full, a new signer is not pinned (it
is tracked, unpinned, as before keys), with a warning; ``treedrive peers forget-key`` makes
room."""
FULL_RECHECK = 60.0
CLASSIC = b""
"""Pending for a peer id: take its message as a classic peer's (no pin, no features)."""


class Gate:
    """Whether a GOSSIP or GOSSIP_REPLY may change anything (see the module's docstring)."""

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self._newest: Bounded[str, int] = Bounded(NEWEST_KEPT)
        self.refused: Counter[str] = Counter({r.value: 0 for r in Refusal})
        """Messages refused so far, by reason (:class:`~treedrive.core.bound.Refusal` values)."""
        self.last_refused: tuple[float, PeerRefused] | None = None
        """The latest refusal and when it came (unix seconds), for the dashboard."""
        self._notices = TokenBucket(NOTICES_PER_SECOND, NOTICE_BURST)
        self.max_pins = MAX_PINS
        self._full_since: float | None = None
        self._pending: tuple[str, bytes | None, float] | None = None
        """What the message :meth:`admit` let in last asks of the pins: (peer id, the key to
        pin, None to note that the pinned key signed again, or :data:`CLASSIC`, when);
        :meth:`record` writes it."""
        with ctx.store.reading() as uow:  # the first GOSSIP is answered as fast as before
            uow.keys.get("")

    # -- outgoing -----------------------------------------------------------------------------
    def sign(self, ext: Extension | None, claim: Claim, ts: int | None = None) -> Extension | None:
        """``ext`` with this node's proof of ``claim`` (signed now); None stays None (a node
        that speaks only the classic protocol signs nothing)."""
        if ext is None:
            return None
        when = int(time.time()) if ts is None else ts
        claim = replace(claim, features=tuple(sorted(ext.features)))
        return replace(ext, proof=prove(self.ctx.key, claim, when), malformed_proof=False)

    def forget(self, peer_id: str) -> None:
        """Forget the key pinned to ``peer_id``: how a user accepts, on purpose, that the peer
        now signs with another key (the next signed message pins it). NotFound if none is."""
        with self.ctx.transaction() as uow:
            pinned = uow.keys.get(peer_id)
            if pinned is None:
                raise NotFound(f"no key is pinned to peer {printable(peer_id)}")
            uow.keys.forget(peer_id)
            uow.commit()
        log.info(
            "forgot the key %s pinned to peer %s: the next key it signs with is pinned",
            fingerprint(pinned.public_key),
            printable(peer_id),
        )

    # -- incoming -----------------------------------------------------------------------------
    def admit(self, message: Gossip | GossipReply, source: str) -> bool:
        """Whether ``message`` may go on to change what this node believes. A message in this
        node's own name is not admitted (it is ignored, as the classic protocol says)."""
        ctx = self.ctx
        claim = claim_of(message)
        if claim.peer_id == ctx.peer_id:
            return False
        with ctx.store.reading() as uow:  # a read: works on a full disk too
            pin = uow.keys.get(claim.peer_id)
            known = uow.peers.get(claim.peer_id) if pin is None else None
        now = time.time()
        newest = self._newest.get(claim.peer_id)
        pinned = None if pin is None else pin.public_key
        classic = known is not None and not known.is_treedrive
        decision = decide(claim, message.extension, pinned, newest, now, classic)
        if not decision.accepted:
            self._refuse(claim.peer_id, source, decision)
            return False
        if decision.newest is not None:
            self._newest.put(claim.peer_id, decision.newest)
        proof = message.extension.proof if message.extension is not None else None
        self._pending = None
        if decision.as_classic:
            self._pending = (claim.peer_id, CLASSIC, now)
        elif decision.pin and proof is not None:
            self._pending = (claim.peer_id, proof.key, now)
        elif decision.verdict is Verdict.MATCH and _stale_touch(pin, now):
            self._pending = (claim.peer_id, None, now)
        elif message.extension is not None and message.extension.malformed_proof:
            ctx.log_limited(
                "malformed-proof", logging.INFO,
                "%s from %s (%s): its key, ts or sig is malformed; taken as unsigned",
                type(message).__name__.upper(), claim.peer_id[:64], source,
            )  # fmt: skip
        return True

    def awaits(self, peer_id: str) -> bool:
        """Whether the message :meth:`admit` let in last, from ``peer_id``, asks something of
        the pins (a first key to pin, the pinned key's ``last_seen``, or to be taken as a
        classic peer's): the unit of work that tracks ``peer_id`` must :meth:`record` it."""
        return self._pending is not None and self._pending[0] == peer_id

    def pins(self, peer_id: str) -> bool:
        """Whether the message :meth:`admit` let in last, from ``peer_id``, presents a first key
        to pin (:meth:`record` pins it, unless the table of pins is full)."""
        pending = self._pending
        return pending is not None and pending[0] == peer_id and pending[1] not in (None, CLASSIC)

    def record(self, uow: UnitOfWork, peer_id: str) -> bool:
        """In the unit of work that tracks ``peer_id`` after :meth:`admit` let its message in:
        pin the key it presented first, or note that the pinned key signed again (the pin
        commits with the tracking, or not at all). True: the message is to be taken as a
        classic peer's (a first signature for a peer id known here as classic)."""
        pending, self._pending = self._pending, None
        if pending is None or pending[0] != peer_id:
            return False
        _, key, now = pending
        if key == CLASSIC:
            return True
        if key is not None:
            if self._pins_full(uow):
                self.ctx.log_limited(
                    "pins-full", logging.WARNING,
                    "%d peer keys are pinned, the most this node keeps: %s is not pinned "
                    "(`treedrive peers forget-key` makes room)", self.max_pins, peer_id[:64],
                )  # fmt: skip
                return False
            uow.keys.pin(peer_id, key, now)
        else:
            uow.keys.touch(peer_id, now)
        return False

    def _pins_full(self, uow: UnitOfWork) -> bool:
        """Whether no more keys may be pinned (counted again at most every
        :data:`FULL_RECHECK` s while full: a flood of new signers costs no count each)."""
        now = time.monotonic()
        if self._full_since is not None and now - self._full_since < FULL_RECHECK:
            return True
        full = uow.keys.count() >= self.max_pins
        self._full_since = now if full else None
        return full

    def _refuse(self, peer_id: str, source: str, decision: Decision) -> None:
        ctx = self.ctx
        assert decision.refusal is not None
        code = decision.refusal.value
        reason = decision.reason or code
        self.refused[code] += 1
        ctx.log_limited(
            f"refused-{code}", logging.WARNING, "%s (from %s; %d refused so far)",
            reason, source, self.refused[code],
        )  # fmt: skip
        notice = PeerRefused(peer_id[:256], source, reason, code)
        self.last_refused = (time.time(), notice)
        if self._notices.take(time.monotonic()):
            ctx.notify(notice)


def _stale_touch(pin: PeerKey | None, now: float) -> bool:
    return pin is not None and now - pin.last_seen >= TOUCH_EVERY
