"""The TreeDrive extension as this node advertises it, and the other keys of a GOSSIP or
GOSSIP_REPLY, which belong to plugins (the gossip-extension hooks). How either is written on the
wire is the transport's business (``treedrive.transport.extension``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from treedrive.core.context import NodeContext
from treedrive.core.messages import Extension


def extension(ctx: NodeContext) -> Extension | None:
    """What this node's GOSSIP and GOSSIP_REPLY say of the extension (None: it speaks only the
    classic protocol)."""
    return Extension(ctx.features) if ctx.config.extension else None


def features_of(ext: Extension | None) -> frozenset[str] | None:
    """The features a peer's message advertises; None for a classic peer."""
    return None if ext is None else ext.features


def gossip_extra(ctx: NodeContext, message_type: str) -> dict[str, Any]:
    """The plugins' extra keys of an outgoing GOSSIP or GOSSIP_REPLY."""
    return ctx.plugins.gossip_extra(ctx.hook_node, message_type)


def plugin_keys(
    ctx: NodeContext, message_type: str, peer_id: str, extra: Mapping[str, Any]
) -> None:
    """Hand the keys of a GOSSIP or GOSSIP_REPLY that the protocol does not define to plugins."""
    if extra:
        ctx.plugins.gossip_received(ctx.hook_node, message_type, peer_id, dict(extra))
