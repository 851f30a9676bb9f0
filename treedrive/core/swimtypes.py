"""The messages and member rows of :mod:`treedrive.core.swim`, and its settings: plain frozen
dataclasses (their classic-message form is :mod:`treedrive.core.swimwire`'s)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from treedrive.core.deltas import Change, Sync

Address = tuple[str, int]
MAX_MEMBERS = 8192
"""Members listed in one answer to a joining (or healing) node."""


class Status(IntEnum):
    """A member's state; at one incarnation a higher value wins."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass(frozen=True, slots=True)
class Member:
    """A row of the member table (immutable: replaced on change, so tables can share rows)."""

    peer_id: str
    address: Address
    incarnation: int
    status: Status
    since: float
    """When ``status`` last changed."""


@dataclass(frozen=True, slots=True)
class News:
    """A claim about a member: it is ``status`` at ``incarnation``; ``head`` its catalogue's last
    change number as the claimer knows it (-1: not known)."""

    peer_id: str
    address: Address
    incarnation: int
    status: Status
    head: int = -1


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """What every message says of its sender (it is alive at ``incarnation``), and the news it
    carries."""

    sender: str
    address: Address
    incarnation: int
    head: int
    news: tuple[News, ...] = ()
    changes: tuple[Change, ...] = ()
    heads: tuple[tuple[str, int], ...] = ()
    """(origin, last change number) of origins whose catalogue changed lately: a receiver that
    is behind on one asks it (anti-entropy for changes that its news missed)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(Message):
    """A probe (a GOSSIP on the wire): answer with an :class:`Ack` of the same ``seq``. ``have``:
    the sender has the receiver's catalogue changes up to this (None: none; -1: do not send any).
    ``join``: the sender knows nobody, answer with the member list."""

    seq: int
    have: int | None = -1
    asof: int | None = None
    """The sender's records of the receiver up to ``have`` are right as of this number."""
    join: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack(Message):
    """The answer to a :class:`Ping` (a GOSSIP_REPLY on the wire). ``of`` is the member whose
    liveness it proves (the sender, or the target of an indirect probe)."""

    seq: int
    of: str
    of_incarnation: int
    sync: Sync | None = None
    members: tuple[News, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PingReq(Message):
    """Probe ``target`` for me and forward its ack (a GOSSIP on the wire)."""

    seq: int
    target: str
    target_address: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class Push(Message):
    """News only, no answer (a GOSSIP on the wire)."""


Out = tuple[Address, Message]
"""A message to send, and where."""


@dataclass(frozen=True, slots=True)
class Config:
    fanout: int = 3
    indirect: int = 3
    probe_timeout: float = 0.2
    """Rounds after a ping before the indirect probes."""
    suspect_after: float = 0.8
    """Rounds after a ping before an unanswered target is suspected."""
    suspect_rounds: float = 4.0
    """Rounds a suspicion lasts before the member is dead."""
    retransmit_mult: float = 4.0
    max_news: int = 64
    """News (and, separately, catalogue changes) per message: as many as a message may carry
    (``swimwire.MAX_WIRE_NEWS``). With 24, at N = 5,000 news was dropped as stale before it had
    gone round (a partition healed in 16 rounds, churn left crashes unnoticed); messages with no
    news, the steady state, are not larger."""
    seed_rounds: int = 10
    reprobe_dead: int = 3
    """Dead members probed per round (one that answers is asked for its table next round)."""
    pull_rounds: float = 10.0
    """Rounds after a dead member answered during which this node pulls a table each round
    (from such a member) while it still holds members dead or suspect: a partition is healing."""
    heads: int = 8
    """(origin, head) pairs per message, of origins that changed within ``heads_rounds``."""
    heads_rounds: float = 10.0
    news_rounds: float = 3.0
    """Rounds after which membership news not yet sent ``retransmit`` times is dropped as stale
    (catalogue changes never are: they stay true)."""
    syncs: int = 3
    """Extra pings per round to origins this node is behind on."""
    recheck: int = 3
    """Extra probes per round of members this node holds alive that a random member's table
    left out (that member holds them dead, suspect or not yet known): a node that missed a death
    while it went round checks for itself instead of waiting for its round-robin (N rounds)."""
    heal_checks: int = 8
    """The same probes per round while a partition heals (a dead member answered within
    ``check_rounds``), of members held alive that another claims failed
    (:meth:`~treedrive.core.swimnews.MemberNews.checked_first`)."""
    check_rounds: float = 3.0
    """Rounds after a dead member answered during which such claims are checked first: the
    stale claims of a healed cut go round in the first few; a crash meanwhile is found a round
    or two later than by taking them."""
    dead_rounds: float = 10_000.0
    """Rounds a dead member stays in the table (re-probed) before it is dropped."""
    max_members: int = 16_384


DEFAULT = Config()


PROBE_SECONDS = 1.0
"""A probe waits at least this long (up to half a round) for its ack before others are asked
to probe too: a short interval must not turn a busy member's slow answer into indirect probes,
which cost the busy network more messages."""


def node_config(interval: float, peer_timeout: float) -> Config:
    """A running node's settings for its gossip ``interval`` and ``peer_timeout`` (seconds)."""
    timeout = peer_timeout / interval
    probe = min(0.5, max(0.2, PROBE_SECONDS / interval))
    return Config(
        probe_timeout=probe,
        suspect_after=max(0.8, probe + 0.3),
        suspect_rounds=max(1.0, timeout - 1.0),
        # Origins that changed are named for longer than a member takes to be found dead:
        # after a split too short for either side to drop the other, a change made on one
        # side (an owner's delete) is still asked for from the other.
        heads_rounds=max(10.0, 2 * timeout + 2),
    )
