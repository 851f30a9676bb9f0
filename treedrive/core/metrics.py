"""What a node counts as things happen, for its ``/metrics`` (and anyone who reads them).

One :class:`Counters` per node (``NodeContext.counters``): plain integers, incremented on the
event loop where the thing happens (a message handed to the network, one taken in, a transfer
ended, something refused or dropped). Nothing here does I/O or reads the store: a scrape reads
these numbers as they are. The transport keeps its own tallies (connections refused at its cap,
messages dropped from its outbox...); the web layer reads both.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

from treedrive.core.messages import Announce, Delete, Gossip, GossipReply

MESSAGE_TYPES: Final = {
    Gossip: "GOSSIP",
    GossipReply: "GOSSIP_REPLY",
    Announce: "ANNOUNCE",
    Delete: "DELETE",
}
"""The gossip protocol's messages (PROTOCOL.md part 1), by the name they have on the wire."""


def message_type(message: object) -> str:
    """The wire name of a message (``"other"`` for a type not in :data:`MESSAGE_TYPES`)."""
    return MESSAGE_TYPES.get(type(message), "other")


class Counters:
    """A node's counts since it started; only ever incremented."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        """Gossip-protocol messages handed to the network, by wire type (GOSSIP, ...)."""
        self.received: Counter[str] = Counter()
        """Gossip-protocol messages taken in (decoded and handed to the node), by wire type."""
        self.refused: Counter[str] = Counter()
        """Things refused, by reason (``file``: bytes that did not verify, ``delete``: a DELETE
        this node would not obey; refused GOSSIPs are counted by the gate, ``Gate.refused``)."""
        self.dropped: Counter[str] = Counter()
        """Messages taken in and dropped, by reason (``unexpected``, ``storage``)."""
        self.bytes: Counter[str] = Counter()
        """File bytes moved by transfers that ended, by direction (``in``, ``out``); bytes a
        resumed download found on disk do not count. Running transfers add theirs at the end."""
        self.transfers: Counter[tuple[str, str]] = Counter()
        """Transfers that ended, by (direction, ``ok`` or ``failed``)."""
        self.changes = 0
        """Committed changes to peers and the catalogue: a cached count older than this number
        of changes is stale."""

    def message_sent(self, message: object, n: int = 1) -> None:
        self.sent[message_type(message)] += n

    def message_received(self, message: object) -> None:
        self.received[message_type(message)] += 1

    def transfer_ended(self, direction: str, moved: int, ok: bool) -> None:
        self.bytes[direction] += max(0, moved)
        self.transfers[direction, "ok" if ok else "failed"] += 1
