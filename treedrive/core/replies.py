"""How much work a GOSSIP may cost this node: pure policy, no sockets, no clock of its own.

A GOSSIP is ~120 bytes; the GOSSIP_REPLY that answers it lists every file this node holds (200 kB
for 1,000 files), and goes to whatever ``host:port`` the GOSSIP names. Unchecked, any stranger can
turn the node into an amplifier against any address. So (THREATS.md, "bad input costs the
attacker more than the node"):

- one reply per address (``host``, ``port``) per gossip interval, whatever peer id asks; a GOSSIP
  that comes sooner gets its reply when the interval is over (one pending reply per address);
- the bytes of replies that a TCP source address (its IP: a port is free to change) can cause are
  bounded by :data:`REPLY_RATIO` times the bytes of the GOSSIPs it sent, plus :data:`BURST`;
- one reply per source address per interval is a *welcome*, whatever its size: a node that
  joins through this one (its first GOSSIP, 120 bytes) gets the whole catalogue at once, as the
  classic protocol promises, instead of after an interval or two. It costs an attacker one reply
  per source address per interval, not per GOSSIP;
- an address that has proven itself (it answered us with a GOSSIP_REPLY, or it has been heard
  from for longer than an interval) is exempt from that budget, not from the interval: attackers
  and honest peers share source addresses (127.0.0.1, a NAT), and an honest peer's 120-byte GOSSIP
  would never pay for a 200 kB reply. An address named by more than :data:`FLOOD` GOSSIPs in an
  interval is not a peer gossiping: it loses that exemption for the next interval;
- the reply is built once and reused (so the transport encodes it once) until the files this
  node holds change, or it is an interval old;
- GOSSIPs are forwarded at most :data:`FORWARDS_PER_SECOND` times a second in all.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

from treedrive.core.messages import Gossip, GossipReply

REPLY_RATIO = 8.0
"""Reply bytes a source address earns per byte of GOSSIP it sends. Below 10 so that the burst
allowance and rounding keep the whole ratio under the 10x that THREATS.md allows."""
BURST = 16 * 1024
"""Reply bytes a source address may cause before it has earned any (an empty node's reply fits)."""
SPACING = 0.9
"""Fraction of the gossip interval between two replies to one address: an honest peer gossips
once per interval, and network jitter must not push its reply to the next interval."""
MAX_CREDIT = 4 * 1024 * 1024
"""Reply bytes a source address can save up (a quiet address does not bank a flood's worth)."""
MAX_ADDRESSES = 8192
"""Addresses (and, separately, source IPs) remembered; the least recently heard go first."""
FLOOD = 3
"""GOSSIPs naming one address in one interval beyond which the address is flooding: an honest
peer originates one per interval (forwarded copies carry the same id and are dropped before)."""
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
        return len(json.dumps(wire))
    except (TypeError, ValueError):
        return 200 * (len(files) + 1)


class Bounded(Generic[K, T]):
    """A dict of at most ``size`` entries; the least recently touched goes first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, T] = OrderedDict()

    def get(self, key: K) -> T | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: T) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def pop(self, key: K) -> T | None:
        return self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items


@dataclass(slots=True)
class _Heard:
    first_seen: float
    last_reply: float | None = None
    answered_us: bool = False
    window: float = 0.0
    """When the current interval of counting GOSSIPs naming this address began."""
    count: int = 0
    flooding_until: float = 0.0


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
        self.refused = 0
        """Replies not sent because their source had not earned them."""
        self.sent_bytes = 0

    @property
    def spacing(self) -> float:
        return self.interval * SPACING

    def _heard(self, address: Address, now: float) -> _Heard:
        heard = self._addresses.get(address)
        if heard is None:
            heard = _Heard(first_seen=now)
            self._addresses.put(address, heard)
        return heard

    def gossip_received(self, address: Address, ip: str, size: int, now: float) -> None:
        """A new GOSSIP naming ``address`` came from source ``ip`` in ``size`` bytes."""
        heard = self._heard(address, now)
        if now - heard.window >= self.interval:
            heard.window, heard.count = now, 0
        heard.count += 1
        if heard.count > FLOOD:
            heard.flooding_until = now + 2 * self.interval
        credit = self._credit.get(ip)
        earned = (self.burst if credit is None else credit) + self.ratio * size
        self._credit.put(ip, min(earned, max(MAX_CREDIT, self.burst)))

    def answered_us(self, address: Address, now: float) -> None:
        """A GOSSIP_REPLY from ``address``: it answers our GOSSIPs, as a peer does."""
        self._heard(address, now).answered_us = True

    def proven(self, address: Address, now: float) -> bool:
        heard = self._addresses.get(address)
        if heard is None or now < heard.flooding_until:
            return False
        return heard.answered_us or now - heard.first_seen >= self.interval

    def _welcome(self, ip: str, now: float) -> bool:
        last = self._welcomed.get(ip)
        if last is not None and now - last < self.interval:
            return False
        self._welcomed.put(ip, now)
        return True

    def credit(self, ip: str) -> float:
        credit = self._credit.get(ip)
        return self.burst if credit is None else credit

    def decide(self, address: Address, ip: str, size: int, now: float) -> Decision:
        """May a reply of ``size`` bytes go to ``address`` now, for a GOSSIP from ``ip``? A SEND
        is counted as sent (the interval starts, the source pays unless the address is proven)."""
        heard = self._heard(address, now)
        if heard.last_reply is not None and now - heard.last_reply < self.spacing:
            return Decision(Verdict.LATER, heard.last_reply + self.spacing)
        if not self.proven(address, now):
            credit = self.credit(ip)
            if size <= credit:
                self._credit.put(ip, credit - size)
            elif self._welcome(ip, now):
                pass  # this interval's welcome of that source: its credit stays as it is
            else:
                self.refused += 1
                return Decision(Verdict.OVER_BUDGET)
        heard.last_reply = now
        self.sent_bytes += size
        return Decision(Verdict.SEND)


class TokenBucket:
    """At most ``rate`` events a second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at: float | None = None

    def take(self, now: float, n: float = 1.0) -> bool:
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < n:
            return False
        self._tokens -= n
        return True


class Throttle:
    """For log lines: ``ready(now)`` at most once per ``every`` seconds; ``suppressed`` counts the
    calls in between (reset when ready)."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self._last: float | None = None
        self.suppressed = 0

    def ready(self, now: float) -> bool:
        if self._last is not None and now - self._last < self.every:
            self.suppressed += 1
            return False
        self._last = now
        return True

    def take_suppressed(self) -> int:
        n, self.suppressed = self.suppressed, 0
        return n


class Reused(Generic[T]):
    """One value, reused while its ``version`` holds and it is younger than ``max_age``."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._value: T | None = None
        self._version: int | None = None
        self._at = 0.0

    def get(self, version: int, now: float) -> T | None:
        if self._value is None or self._version != version or now - self._at >= self.max_age:
            return None
        return self._value

    def put(self, value: T, version: int, now: float) -> T:
        self._value, self._version, self._at = value, version, now
        return value


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
