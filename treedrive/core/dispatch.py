"""Each message a peer sends, to the part of the node that handles it: GOSSIP and GOSSIP_REPLY
of peers that speak swim to :mod:`~treedrive.core.swimnode`, the classic GOSSIP to
:mod:`~treedrive.core.membership`, a GOSSIP_REPLY past the gate, ANNOUNCE and DELETE to
:mod:`~treedrive.core.catalogue`. A message the disk or the database refuses to record (a full
disk) is counted and logged, not raised: the node goes on.
"""

from __future__ import annotations

import logging

from treedrive.core.catalogue import Catalogue
from treedrive.core.context import NodeContext, storage_failure
from treedrive.core.membership import Membership
from treedrive.core.messages import Announce, Delete, Gossip, GossipReply, Message
from treedrive.core.swimnode import SwimNode


class Dispatch:
    """The node's inbound messages, routed (see the module's docstring)."""

    def __init__(
        self, ctx: NodeContext, membership: Membership, catalogue: Catalogue, swim: SwimNode
    ) -> None:
        self.ctx = ctx
        self.membership = membership
        self.catalogue = catalogue
        self.swim = swim

    def message(self, message: Message, source: str) -> None:
        """Hand ``message`` from ``source`` (an address) to its part."""
        ctx = self.ctx
        ctx.counters.message_received(message)
        try:
            self._route(message, source)
        except Exception as exc:
            if not storage_failure(exc):
                raise
            ctx.counters.dropped["storage"] += 1
            ctx.log_limited(
                "storage", logging.ERROR, "%s from %s not recorded: %s",
                type(message).__name__, source, exc,
            )  # fmt: skip

    def _route(self, message: Message, source: str) -> None:
        if isinstance(message, Gossip | GossipReply) and self.swim.takes(message):
            self.swim.on_message(message, source)
        elif isinstance(message, Gossip):
            self.membership.on_gossip(message, source)
        elif isinstance(message, GossipReply):
            if self.membership.gate.admit(message, source):
                self.catalogue.on_gossip_reply(message, source)
        elif isinstance(message, Announce):
            self.catalogue.on_announce(message)
        elif isinstance(message, Delete):
            self.catalogue.on_delete(message)
        else:
            self.ctx.counters.dropped["unexpected"] += 1
            self.ctx.log_limited(
                "unexpected", logging.WARNING, "unexpected %s from %s dropped",
                type(message).__name__, source,
            )  # fmt: skip
