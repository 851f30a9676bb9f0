"""The TreeDrive extension as the node advertises and reads it, and the other keys of a GOSSIP
or GOSSIP_REPLY, which belong to plugins (the gossip-extension hooks)."""

from __future__ import annotations

import re
from typing import Any

from treedrive.core.context import NodeContext

PROTOCOL_VERSION = 1
MAX_FEATURES = 32
FEATURE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")


def features_of(extra: Any) -> frozenset[str] | None:
    """The TreeDrive features a GOSSIP/GOSSIP_REPLY advertises; None for a classic peer."""
    ext = extra.get("treedrive") if hasattr(extra, "get") else None
    if not isinstance(ext, dict):
        return None
    feats = ext.get("features")
    if not isinstance(feats, list):
        return frozenset()
    # A claim with a limit: a few short names, kept with the peer's row.
    return frozenset(
        f for f in feats[:MAX_FEATURES] if isinstance(f, str) and FEATURE_NAME.fullmatch(f)
    )


def gossip_extra(ctx: NodeContext, message_type: str) -> dict[str, Any]:
    """The extra keys of an outgoing GOSSIP or GOSSIP_REPLY: the plugins' and the extension's."""
    extra = ctx.plugins.gossip_extra(ctx.hook_node, message_type)
    extra["treedrive"] = {"version": PROTOCOL_VERSION, "features": sorted(ctx.features)}
    return extra


def plugin_keys(ctx: NodeContext, message_type: str, peer_id: str, extra: Any) -> None:
    """Hand the keys of a GOSSIP or GOSSIP_REPLY that the protocol does not define to plugins."""
    unknown = {k: v for k, v in extra.items() if k != "treedrive"}
    if unknown:
        ctx.plugins.gossip_received(ctx.hook_node, message_type, peer_id, unknown)
