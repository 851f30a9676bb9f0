"""Bound names (PROTOCOL.md 2.7), the decision without I/O: whether a GOSSIP or GOSSIP_REPLY may
change what this node believes of the peer it names.

A TreeDrive node signs what its GOSSIP and GOSSIP_REPLY claim (its peer id, address, the gossip's
id, when) with its key (:func:`prove`). A receiver rebuilds the claim from the values it decoded
(:class:`Claim`) and :func:`decide` says what to make of the message from its proof, the key
pinned for the peer id, the newest signing time already accepted from that peer id and the
receiver's clock. Trust on first use (:func:`treedrive.core.pins.judge`) decides about the key;
then the signing time must not be more than :data:`MAX_FUTURE` seconds ahead of the receiver's
clock, nor more than :data:`STALE_MARGIN` seconds older than the newest accepted (a replayed old
message must not move an address back). Nothing here reads a clock, the store or a socket: the
node's gate (:mod:`treedrive.core.gate`) does, and carries the decision out.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from treedrive.core.identity import NodeKey, gossip_claim, reply_claim, verify
from treedrive.core.messages import Extension, Gossip, GossipReply, Proof
from treedrive.core.pins import Verdict, judge, shown

MAX_FUTURE = 600
"""Seconds a signing time may be ahead of the receiver's clock (clocks differ a little)."""
STALE_MARGIN = 15
"""Seconds a signed message may be older than the newest accepted from its peer id: late
forwarded copies and a reply signed a few seconds ago still pass, a replay of an older message
does not."""
REPLY_RESIGN = 5
"""Seconds a node reuses its signed GOSSIP_REPLY before it signs it again (well within
:data:`STALE_MARGIN`, so an honest reply is never stale)."""


class Refusal(enum.Enum):
    """Why a message was refused (the values are the keys of ``refused_peers`` in the status)."""

    OTHER_KEY = "other_key"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    FUTURE = "future"
    STALE = "stale"


_BY_VERDICT = {
    Verdict.OTHER_KEY: Refusal.OTHER_KEY,
    Verdict.UNSIGNED: Refusal.UNSIGNED,
    Verdict.BAD_SIGNATURE: Refusal.BAD_SIGNATURE,
}


@dataclass(frozen=True, slots=True)
class Claim:
    """What a GOSSIP (``gossip_id`` its id) or a GOSSIP_REPLY (``gossip_id`` None) claims."""

    peer_id: str
    host: str
    port: int
    gossip_id: str | None = None
    features: tuple[str, ...] = ()
    """The extension features the message advertises (signed too: none can be stripped)."""

    def payload(self, ts: int) -> bytes:
        """The bytes signed for this claim at ``ts`` (PROTOCOL.md 2.7)."""
        if self.gossip_id is None:
            return reply_claim(self.peer_id, self.host, self.port, ts, self.features)
        return gossip_claim(self.peer_id, self.host, self.port, self.gossip_id, ts, self.features)


def claim_of(message: Gossip | GossipReply) -> Claim:
    """The claim a received message makes (of its originator, or its replier)."""
    gossip_id = message.id if isinstance(message, Gossip) else None
    ext = message.extension
    features = tuple(sorted(ext.features)) if ext is not None else ()
    return Claim(message.peer_id, message.host, message.port, gossip_id, features)


def prove(key: NodeKey, claim: Claim, ts: int) -> Proof:
    """This node's proof of ``claim``, signed at ``ts`` (int unix seconds)."""
    return Proof(key.public, ts, key.sign(claim.payload(ts)))


@dataclass(frozen=True, slots=True)
class Decision:
    """What :func:`decide` made of a message. ``refusal`` None: accepted; then ``newest`` is the
    newest signing time accepted from the peer id (None: nothing signed), and :attr:`pin` says
    whether to pin the presented key. Refused: ``reason`` says why in one line (log,
    dashboard)."""

    verdict: Verdict
    refusal: Refusal | None = None
    reason: str | None = None
    newest: int | None = None
    as_classic: bool = False
    """A first signed message for a peer id this node knows as a classic peer: classic rules,
    no pin (see :func:`decide`)."""

    @property
    def accepted(self) -> bool:
        return self.refusal is None

    @property
    def pin(self) -> bool:
        return self.accepted and self.verdict is Verdict.NEW_PIN


def decide(
    claim: Claim,
    ext: Extension | None,
    pinned: bytes | None,
    newest: int | None,
    now: float,
    known_classic: bool = False,
) -> Decision:
    """What to make of a message that makes ``claim`` with the extension ``ext`` (None: a
    classic message): ``pinned`` is the key pinned for its peer id (None: none), ``newest`` the
    newest signing time accepted from that peer id under that key (None: none remembered) and
    ``now`` the receiver's clock (unix seconds).

    ``known_classic``: the peer id is tracked here as a classic peer (its messages carry no
    extension). A signed message that would pin a key to it is taken by the classic rules
    instead (``as_classic``, no pin): a stranger who signs first must not take a classic
    peer's name, which would have every message of the real peer refused."""
    proof = None if ext is None else ext.proof
    presented = None if proof is None else proof.key
    verified = proof is not None and verify(proof.key, proof.sig, claim.payload(proof.ts))
    judged = judge(claim.peer_id, pinned, presented, verified)
    if not judged.accepted:
        reason = judged.reason or judged.verdict.value
        if ext is not None and ext.malformed_proof:
            reason += " (its key, ts or sig is malformed)"
        return Decision(judged.verdict, _BY_VERDICT[judged.verdict], reason, newest)
    if proof is None:
        return Decision(judged.verdict, newest=newest)  # classic: classic rules
    who = shown(claim.peer_id)
    if proof.ts > now + MAX_FUTURE:
        return Decision(
            judged.verdict,
            Refusal.FUTURE,
            f"refused a message from peer {who}: it is signed {proof.ts - now:.0f} s in the "
            f"future (at most {MAX_FUTURE} s)",
            newest,
        )
    if pinned is None and known_classic:
        return Decision(Verdict.CLASSIC, as_classic=True)
    if pinned is None:
        newest = None  # what was remembered belonged to a key no longer pinned
    if newest is not None and proof.ts < newest - STALE_MARGIN:
        return Decision(
            judged.verdict,
            Refusal.STALE,
            f"refused a message from peer {who}: it was signed {newest - proof.ts} s before "
            f"the newest one accepted from it (a replay?)",
            newest,
        )
    return Decision(judged.verdict, newest=proof.ts if newest is None else max(newest, proof.ts))
