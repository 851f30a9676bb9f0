"""Owners' DELETEs passed on to a peer that still advertises files their owners deleted (it
missed the DELETEs; PROTOCOL.md 1.6), bounded: a stranger names any address, with a fresh peer
id each time, and lists up to 300 files in one GOSSIP_REPLY.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from treedrive.core.bounded import Bounded
from treedrive.core.context import NodeContext
from treedrive.core.messages import Delete
from treedrive.core.model import DeleteSignature, PeerInfo
from treedrive.core.replies import MAX_ADDRESSES, Address

RELAY_DELETE_EVERY = 30.0  # seconds before re-telling one address about one deleted file
RELAYS_PER_MESSAGE = 8
"""DELETEs relayed for one message that advertises deleted files (a GOSSIP_REPLY may list 300)."""
RELAYS_PER_ADDRESS = 8
"""DELETEs relayed to one address per gossip interval, whatever peer id it goes by."""
RELAYED_KEPT = 10_000
"""(address, file) pairs remembered as told."""


class DeleteRelay:
    """What one node has relayed lately, and to whom (see the module's docstring)."""

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self._relayed: Bounded[tuple[Address, str], float] = Bounded(RELAYED_KEPT)
        """(address, file id) -> when that address was last told the file was deleted."""
        self._windows: Bounded[Address, tuple[float, int]] = Bounded(MAX_ADDRESSES)
        """address -> (start of its current interval, DELETEs relayed to it in it)."""

    def _window(self, address: Address, now: float) -> tuple[float, int]:
        window = self._windows.get(address)
        if window is None or now - window[0] >= self.ctx.config.gossip_interval:
            window = (now, 0)
        return window

    def relay(
        self,
        peer: PeerInfo,
        stale: Sequence[tuple[str, str]],
        signed: dict[str, DeleteSignature],
    ) -> None:
        """``peer`` still advertises the files of ``stale`` (file id, owner): pass the owners'
        DELETEs on to its address (with the owner's signature, if ``signed`` has one, to a
        TreeDrive peer; a classic peer gets the classic DELETE). Bounded: each (address, file)
        at most once per ``RELAY_DELETE_EVERY``, at most ``RELAYS_PER_MESSAGE`` for one call
        and ``RELAYS_PER_ADDRESS`` per interval to one address; one log line (rate-limited)
        says how many."""
        ctx = self.ctx
        address = (peer.host, peer.port)
        if peer.peer_id == ctx.peer_id or address == (ctx.host, ctx.port):
            return  # a DELETE in this node's own name is a forgery
        now = time.monotonic()
        start, count = self._window(address, now)
        sent = held_back = 0
        for file_id, owner in stale:
            last = self._relayed.get((address, file_id))
            if owner == peer.peer_id or (last is not None and now - last < RELAY_DELETE_EVERY):
                continue  # the owner knows what it deleted; or told lately
            if sent >= RELAYS_PER_MESSAGE or count >= RELAYS_PER_ADDRESS:
                held_back += 1
                continue
            self._relayed.put((address, file_id), now)
            sent += 1
            count += 1
            signature = signed.get(file_id) if peer.is_treedrive and ctx.features else None
            ctx.send(*address, Delete(from_peer=owner, file_id=file_id, signed=signature))
        self._windows.put(address, (start, count))
        if sent or held_back:
            ctx.log_limited(
                "relay-delete", logging.INFO,
                "told %s:%d (%r) that %d files were deleted by their owners (%d more not now)",
                address[0][:64], address[1], peer.peer_id[:64], sent, held_back,
            )  # fmt: skip
