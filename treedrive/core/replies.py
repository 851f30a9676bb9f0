"""How much work a GOSSIP may cost this node: pure policy, no sockets, no clock of its own.

A GOSSIP is ~120 bytes; the GOSSIP_REPLY that answers it lists every file this node holds (200 kB
for 1,000 files), and goes to whatever ``host:port`` the GOSSIP names. Unchecked, any stranger can
turn the node into an amplifier against any address. So (THREATS.md, "bad input costs the
attacker more than the node"):

- one reply per address (``host``, ``port``) per gossip interval, whatever peer id asks; a GOSSIP
  that comes sooner gets its reply when the interval is over (one pending reply per address);
- the bytes of replies that a TCP source address (its IP: a port is free to change) can cause are
  bounded by :data:`REPLY_RATIO` times the bytes of the GOSSIPs it sent, plus :data:`BURST`;
- one reply per source *network* (a /24 for IPv4, a /64 for IPv6: an attacker has many addresses
  in one) per interval is a *welcome*, whatever its size: a node that joins through this one (its
  first GOSSIP, 120 bytes) gets the whole catalogue at once, as the classic protocol promises,
  instead of after an interval or two. At most :data:`WELCOMES` replies per interval are welcomes
  in all, whatever the number of networks asking; likewise only :data:`FRESH` new sources an
  interval start with the :data:`BURST`, the others with nothing (so neither many source
  addresses nor many networks buy more than a bounded number of unpaid replies an interval);
- an address that has proven itself is exempt from that budget, not from the interval: attackers
  and honest peers share source addresses (127.0.0.1, a NAT), and an honest peer's 120-byte GOSSIP
  would never pay for a 200 kB reply. Proof is a GOSSIP_REPLY that answers this node's GOSSIP:
  this node sent a GOSSIP to that exact address within :data:`ANSWER_WITHIN` intervals, and the
  reply came from that address's IP (its TCP source). It lasts :data:`PROVEN_FOR` intervals (a
  peer answers every round: this node gossips to every tracked peer each interval). Neither the
  address a GOSSIP_REPLY claims nor the time an address has been named is proof. An address named
  by more than :data:`FLOOD` GOSSIPs in an interval is not a peer gossiping: it loses that
  exemption for the next interval;
- the reply is built once and reused (so the transport encodes it once) until the files this
  node holds change, or it is an interval old;
- GOSSIPs are forwarded at most :data:`FORWARDS_PER_SECOND` times a second in all.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Hashable
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from treedrive.core.bounded import Bounded, Window
from treedrive.core.messages import Gossip, GossipReply

REPLY_RATIO = 7.0
"""Reply bytes a source address earns per byte of GOSSIP it sends. Well below 10 so that the
burst allowance, the welcomes and rounding keep the whole ratio of a flood under the 10x that
THREATS.md allows."""
BURST = 16 * 1024
"""Reply bytes a source address may cause before it has earned any (an empty node's reply fits)."""
SPACING = 0.9
"""Fraction of the gossip interval between two replies to one address: an honest peer gossips
once per interval, and network jitter must not push its reply to the next interval."""
MAX_CREDIT = 4 * 1024 * 1024
"""Reply bytes a source address can save up (a quiet address does not bank a flood's worth)."""
EXTENSION_BYTES = 43
"""What the TreeDrive extension's key adds to a reply's JSON besides its list of features."""
MAX_ADDRESSES = 8192
"""Addresses (and, separately, source IPs) remembered; the least recently heard go first."""
FLOOD = 3
"""GOSSIPs naming one address in one interval beyond which the address is flooding: an honest
peer originates one per interval (forwarded copies carry the same id and are dropped before)."""
UNPAID_PERIOD = 30.0
"""Seconds (or the gossip interval, if longer) over which :data:`WELCOMES` and :data:`FRESH`
count: replies nobody paid for are limited in real time, so a node with a short interval does not
give away more of them."""
WELCOMES = 2
"""Welcomes (replies that the source has not paid for) per :data:`UNPAID_PERIOD`, in all."""
FRESH = 8
"""New sources per :data:`UNPAID_PERIOD`, in all, that start with the :data:`BURST`."""
ANSWER_WITHIN = 2.0
"""Intervals after this node's GOSSIP to an address within which a GOSSIP_REPLY from that address
answers it (and proves the address)."""
PROVEN_FOR = 4.0
"""Intervals a proof lasts: a peer renews it each round by answering."""
FORWARDS_PER_SECOND = 30.0
"""Forwards of new GOSSIPs, in all (fan-out 3: ten new GOSSIPs a second fully forwarded)."""

Address = tuple[str, int]
K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Verdict(Enum):
    SEND = "send"
    LATER = "later"
    """Replied to this address less than an interval ago: the reply may go at ``Decision.at``."""
    OVER_BUDGET = "over budget"
    """The source address has not earned the bytes of this reply: it is not sent."""


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    at: float = 0.0


def source_ip(source: str) -> str:
    """The IP of a TCP source ``"ip:port"`` (IPv6 too: the port is after the last colon)."""
    ip, sep, _ = source.rpartition(":")
    return ip.strip("[]") if sep else source


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def network_of(ip: str) -> str:
    """The network a source IP belongs to for welcomes: its /24 (IPv4) or /64 (IPv6); anything
    else is its own network."""
    parsed = _ip(ip)
    if parsed is None:
        return ip
    prefix = 24 if parsed.version == 4 else 64
    return str(ipaddress.ip_network(f"{parsed}/{prefix}", strict=False))


def same_host(host: str, ip: str) -> bool:
    """Whether the claimed ``host`` is the source ``ip`` (IP literals only: a host name cannot be
    checked without resolving it, and proves nothing)."""
    a, b = _ip(host), _ip(ip)
    return a is not None and a == b


def gossip_size(g: Gossip) -> int:
    """The bytes a GOSSIP took on the wire (as received, else as it would be encoded)."""
    wire: dict[str, object]
    if g.original is not None:
        wire = dict(g.original)
    else:
        wire = {"type": "GOSSIP", "host": g.host, "port": g.port, "id": g.id, "peerId": g.peer_id}
        wire.update(g.extra)
    try:
        return len(json.dumps(wire))
    except (TypeError, ValueError):
        return len(g.host) + len(g.id) + len(g.peer_id) + 60


def reply_size(r: GossipReply) -> int:
    """The bytes of a GOSSIP_REPLY on the wire, estimated from its JSON (computed once per
    reply object: the node reuses the object)."""
    files = [
        {
            "file_name": m.file_name,
            "file_size": m.file_size,
            "file_id": m.file_id,
            "file_owner": m.file_owner,
            "file_timestamp": m.file_timestamp,
        }
        for m in r.files
    ]
    wire: dict[str, object] = {
        "type": "GOSSIP_REPLY",
        "host": r.host,
        "port": r.port,
        "peerId": r.peer_id,
        "files": files,
    }
    wire.update(r.extra)
    try:
        size = len(json.dumps(wire))
    except (TypeError, ValueError):
        return 200 * (len(files) + 1)
    if r.extension is not None:  # the transport writes it: about this much
        size += EXTENSION_BYTES + len(json.dumps(sorted(r.extension.features)))
    return size


@dataclass(slots=True)
class _Heard:
    last_reply: float | None = None
    window: float = 0.0
    """When the current interval of counting GOSSIPs naming this address began."""
    count: int = 0
    flooding_until: float = 0.0


@dataclass(frozen=True, slots=True)
class _Proof:
    at: float
    peer_id: str


class ReplyPolicy:
    """Decides whether a GOSSIP_REPLY goes now, later, or not at all. Times are the caller's
    (``time.monotonic()`` in the node)."""

    def __init__(
        self,
        interval: float,
        *,
        ratio: float = REPLY_RATIO,
        burst: int = BURST,
        size: int = MAX_ADDRESSES,
    ) -> None:
        self.interval = interval
        self.ratio = ratio
        self.burst = burst
        self._addresses: Bounded[Address, _Heard] = Bounded(size)
        self._credit: Bounded[str, float] = Bounded(size)
        self._welcomed: Bounded[str, float] = Bounded(size)
        unpaid = max(interval, UNPAID_PERIOD)
        self._welcomes = Window(WELCOMES, unpaid)
        self._fresh = Window(FRESH, unpaid)
        self._gossiped: Bounded[Address, float] = Bounded(size)
        self._proofs: Bounded[Address, _Proof] = Bounded(size)
        self.refused = 0
        """Replies not sent because their source had not earned them."""
        self.unproven = 0
        """GOSSIP_REPLYs that did not answer a GOSSIP of this node (or not from its address)."""
        self.sent_bytes = 0

    @property
    def spacing(self) -> float:
        return self.interval * SPACING

    @property
    def addresses_kept(self) -> int:
        """How many addresses the policy remembers (and replies it may defer)."""
        return self._addresses.size

    def _heard(self, address: Address) -> _Heard:
        heard = self._addresses.get(address)
        if heard is None:
            heard = _Heard()
            self._addresses.put(address, heard)
        return heard

    def gossip_received(self, address: Address, ip: str, size: int, now: float) -> None:
        """A new GOSSIP naming ``address`` came from source ``ip`` in ``size`` bytes."""
        heard = self._heard(address)
        if now - heard.window >= self.interval:
            heard.window, heard.count = now, 0
        heard.count += 1
        if heard.count > FLOOD:
            heard.flooding_until = now + 2 * self.interval
        credit = self._credit.get(ip)
        if credit is None:  # a new source: the burst, while few new sources come
            credit = float(self.burst) if self._fresh.take(now) else 0.0
        earned = credit + self.ratio * size
        self._credit.put(ip, min(earned, max(MAX_CREDIT, self.burst)))

    def gossiped(self, address: Address, now: float) -> None:
        """This node sent a GOSSIP to ``address`` (its own round, or a forward)."""
        self._gossiped.put(address, now)

    def answered_us(self, address: Address, ip: str, now: float, peer_id: str = "") -> bool:
        """A GOSSIP_REPLY claiming ``address`` (and ``peer_id``) came from source ``ip``. It
        proves the address only if it answers a GOSSIP that this node sent to that exact address
        within :data:`ANSWER_WITHIN` intervals, and came from that address's IP: a stranger
        cannot prove an address by naming it. Returns whether it proved it."""
        sent = self._gossiped.get(address)
        if (
            sent is None
            or not 0.0 <= now - sent <= ANSWER_WITHIN * self.interval
            or not same_host(address[0], ip)
        ):
            self.unproven += 1
            return False
        self._proofs.put(address, _Proof(now, peer_id))
        return True

    def _valid(self, proof: _Proof | None, now: float) -> bool:
        return proof is not None and now - proof.at <= PROVEN_FOR * self.interval

    def proven(self, address: Address, now: float) -> bool:
        if not self._valid(self._proofs.get(address), now):
            return False
        heard = self._addresses.get(address)
        return heard is None or now >= heard.flooding_until

    def proven_peers(self, now: float) -> frozenset[str]:
        """The peer ids that answered this node's GOSSIPs lately (one per proven address)."""
        return frozenset(
            p.peer_id for p in self._proofs.values() if p.peer_id and self._valid(p, now)
        )

    def _welcome(self, ip: str, now: float) -> bool:
        network = network_of(ip)
        last = self._welcomed.get(network)
        if last is not None and now - last < self.interval:
            return False
        if not self._welcomes.take(now):
            return False
        self._welcomed.put(network, now)
        return True

    def credit(self, ip: str) -> float:
        credit = self._credit.get(ip)
        return 0.0 if credit is None else credit

    def decide(self, address: Address, ip: str, size: int, now: float) -> Decision:
        """May a reply of ``size`` bytes go to ``address`` now, for a GOSSIP from ``ip``? A SEND
        is counted as sent (the interval starts, the source pays unless the address is proven)."""
        heard = self._heard(address)
        if heard.last_reply is not None and now - heard.last_reply < self.spacing:
            return Decision(Verdict.LATER, heard.last_reply + self.spacing)
        if not self.proven(address, now):
            credit = self.credit(ip)
            if size <= credit:
                self._credit.put(ip, credit - size)
            elif self._welcome(ip, now):
                pass  # this interval's welcome of that network: its credit stays as it is
            else:
                self.refused += 1
                return Decision(Verdict.OVER_BUDGET)
        heard.last_reply = now
        self.sent_bytes += size
        return Decision(Verdict.SEND)


def distinct_addresses(
    addresses: list[Address], exclude: frozenset[Address] = frozenset()
) -> list[Address]:
    """Each address once, in first-seen order, without those in ``exclude``."""
    seen: set[Address] = set(exclude)
    out: list[Address] = []
    for a in addresses:
        if a not in seen:
            seen.add(a)
            out.append(a)
    return out
