"""The simulator's world (``bench/simulate.py``): N nodes, each running the real
:mod:`treedrive.core.swim` and :mod:`treedrive.core.deltas` logic, over an in-memory network in
virtual time (1.0 = one gossip interval) with loss, delay, crashes, joins and partitions.

Every message sent is counted with its real encoded size: the classic JSON object that
:func:`treedrive.core.swimwire.encode` builds (GOSSIP or GOSSIP_REPLY, with the extension's
version, features and a proof of the real sizes), written compactly as the node writes it.
And with what it costs on the wire (:data:`SENDER_FRAMING`, :data:`RECEIVER_FRAMING`): every
message is a TCP connection of its own, whose handshake, segment headers and FIN exchange weigh
more than a ping's JSON; the real benchmark (``bench/network.py``) counts them on the interfaces.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
from dataclasses import dataclass, field
from typing import Any

from treedrive.core.deltas import View
from treedrive.core.deltasync import Catalogue
from treedrive.core.model import FileMeta
from treedrive.core.swim import Swim
from treedrive.core.swimtypes import DEFAULT, Ack, Address, Config, Member, Message, Status
from treedrive.core.swimwire import encode

BASE_EXT: dict[str, Any] = {
    "version": 1,
    "features": ["raw-push", "raw-range", "stream-push", "swim", "tls"],
    "key": "k" * 43,  # an Ed25519 public key, base64url
    "ts": 1795617115,
    "sig": "s" * 86,  # an Ed25519 signature, base64url
}
GOSSIP_ID = "0aab9be0-b6f7-4323-942b-f5d17e1f8d39"  # a UUID4's length


SENDER_FRAMING = 338
"""Bytes a message's sender puts on the wire besides the message itself, measured on the test
lab's veth pairs (``tests/test_netlab.py`` checks it): Ethernet, IPv4 and TCP headers with
timestamps (66 bytes a segment) on its SYN (74), the handshake's ACK, the data segment, its FIN
and the ACK of the receiver's FIN (the lab's links pass one message of up to 64 kB as one
segment)."""
RECEIVER_FRAMING = 206
"""Bytes a message's receiver sends back for it: the SYN-ACK (74), the ACK of the data, its FIN."""


def file_meta(owner: str, n: int) -> FileMeta:
    fid = hashlib.sha256(f"{owner}/{n}".encode()).hexdigest()
    return FileMeta(fid, f"{owner}-file-{n}.bin", 0.25, owner, 1795617115 + n)


def encoded_size(msg: Message) -> int:
    obj = encode(msg, BASE_EXT, GOSSIP_ID)
    return len(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())


@dataclass(slots=True)
class SimNode:
    idx: int
    peer_id: str
    address: Address
    swim: Swim
    catalogue: Catalogue
    up: bool = True
    side: int = 0
    wake: float = float("inf")


@dataclass(slots=True)
class Traffic:
    """Bytes and messages each node sent since :meth:`reset`: ``bytes`` the messages' JSON,
    ``wire`` what the node's interface sends (its messages with their framing, and the
    receiver's share of each connection it took in)."""

    bytes: dict[int, int] = field(default_factory=dict)
    messages: dict[int, int] = field(default_factory=dict)
    wire: dict[int, int] = field(default_factory=dict)

    def count(self, idx: int, size: int) -> None:
        self.bytes[idx] = self.bytes.get(idx, 0) + size
        self.messages[idx] = self.messages.get(idx, 0) + 1
        self.wire[idx] = self.wire.get(idx, 0) + size + SENDER_FRAMING

    def received(self, idx: int) -> None:
        self.wire[idx] = self.wire.get(idx, 0) + RECEIVER_FRAMING

    def reset(self) -> None:
        self.bytes.clear()
        self.messages.clear()
        self.wire.clear()


class World:
    """The nodes, the network between them and virtual time."""

    def __init__(
        self,
        rng: random.Random,
        *,
        loss: float = 0.0,
        delay: tuple[float, float] = (0.002, 0.02),
        config: Config = DEFAULT,
        seeds: int = 3,
        measure: bool = True,
    ) -> None:
        self.rng, self.loss, self.delay, self.config = rng, loss, delay, config
        self.measure = measure
        """Count each message's encoded size in :attr:`traffic` (off: only its number)."""
        self.nodes: list[SimNode] = []
        self.by_address: dict[Address, int] = {}
        self.now = 0.0
        self._events: list[tuple[float, int, int, Message | None]] = []
        self._counter = 0
        self.partitioned = False
        self.traffic = Traffic()
        self.seed_count = seeds
        self.base_views: dict[str, View] = {}
        self.sizes: dict[int, int] = {}
        """Encoded sizes of the messages in flight (a message sent to several is encoded once)."""

    @property
    def seeds(self) -> tuple[Address, ...]:
        return tuple(n.address for n in self.nodes[: self.seed_count])

    def _node(self, files: int, members: dict[str, Member] | None) -> SimNode:
        idx = len(self.nodes)
        peer_id = f"n{idx:05d}"
        address = (f"10.{idx >> 16 & 255}.{idx >> 8 & 255}.{idx & 255}", 8270)
        catalogue = Catalogue(peer_id, self.base_views)
        for i in range(files):
            catalogue.add(file_meta(peer_id, i))
        rng = random.Random(self.rng.getrandbits(64))
        swim = Swim(
            peer_id,
            address,
            catalogue,
            rng,
            self.now + rng.random(),
            config=self.config,
            seeds=self.seeds,
        )
        if members is not None:
            swim.start({p: m for p, m in members.items() if p != peer_id})
        node = SimNode(idx, peer_id, address, swim, catalogue)
        self.nodes.append(node)
        self.by_address[address] = idx
        self._schedule(node, swim.next_wake())
        return node

    def populate(self, n: int, files: int) -> None:
        """``n`` nodes in steady state: each knows every other alive, and every other's ``files``
        records (a shared start, copied on a write)."""
        members: dict[str, Member] = {}
        for idx in range(n):
            peer_id = f"n{idx:05d}"
            address = (f"10.{idx >> 16 & 255}.{idx >> 8 & 255}.{idx & 255}", 8270)
            members[peer_id] = Member(peer_id, address, 0, Status.ALIVE, 0.0)
        for _ in range(n):
            node = self._node(files, members)
            head = node.catalogue.head()
            view = View(head, head=head, said=head)  # each origin has spoken: steady state
            view.files = dict(node.catalogue.log._held)
            self.base_views[node.peer_id] = view
        for v in self.base_views.values():
            v.shared = True

    def join(self) -> SimNode:
        """A new node that knows only the well-known hosts."""
        return self._node(0, None)

    def crash(self, node: SimNode) -> None:
        node.up = False

    # ------------------------------------------------------------------ events

    def _schedule(self, node: SimNode, at: float) -> None:
        if at < node.wake:
            node.wake = at
            self._counter += 1
            heapq.heappush(self._events, (at, self._counter, node.idx, None))

    def _send(self, src: SimNode, out: list[tuple[Address, Message]]) -> None:
        sizes = self.sizes
        for address, msg in out:
            size = 0
            if self.measure:
                key = id(msg)
                size = sizes.get(key, -1)
                if size < 0:
                    size = sizes[key] = encoded_size(msg)
            self.traffic.count(src.idx, size)
            dest = self.by_address.get(address)
            if dest is None or (self.loss and self.rng.random() < self.loss):
                continue
            if self.partitioned and self.nodes[dest].side != src.side:
                continue
            if self.nodes[dest].up:
                self.traffic.received(dest)
            self._counter += 1
            at = self.now + self.rng.uniform(*self.delay)
            heapq.heappush(self._events, (at, self._counter, dest, msg))
        sizes.clear()

    def run_until(self, end: float) -> None:
        events = self._events
        while events and events[0][0] <= end:
            at, _, idx, msg = heapq.heappop(events)
            node = self.nodes[idx]
            self.now = at
            if msg is None:
                if at != node.wake:
                    continue
                node.wake = float("inf")
                if not node.up:
                    continue
                self._send(node, node.swim.tick(at))
            elif node.up:
                self._send(node, node.swim.receive(msg, at))
            if node.up:
                self._schedule(node, max(node.swim.next_wake(), at + 1e-6))
        self.now = end

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes if n.up]


def knows_alive(node: SimNode, peer_id: str) -> bool:
    m = node.swim.members.get(peer_id)
    return m is not None and m.status <= Status.SUSPECT


def is_ack(msg: Message) -> bool:
    return isinstance(msg, Ack)
