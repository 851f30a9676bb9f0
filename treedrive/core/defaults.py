"""The built-in policies, registered as a plugin that runs last (``trylast``): any installed
plugin that returns a result overrides them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from treedrive.core.hookspecs import hookimpl

if TYPE_CHECKING:
    from treedrive.core.model import CatalogEntry, FileMeta, PeerInfo
    from treedrive.core.node import Node


@hookimpl(trylast=True)
def treedrive_select_downloads(
    node: Node, candidates: Sequence[CatalogEntry], limit: int
) -> Sequence[str]:
    """Like the seed: the first ``limit`` files it does not hold (newest first)."""
    return [c.meta.file_id for c in candidates[:limit]]


@hookimpl(trylast=True)
def treedrive_order_holders(
    node: Node, entry: CatalogEntry, holders: Sequence[PeerInfo]
) -> Sequence[PeerInfo]:
    """TreeDrive peers first (they verify and stream faster), then the most recently seen."""
    return sorted(holders, key=lambda p: (not p.is_treedrive, -p.last_seen))


@hookimpl(trylast=True)
def treedrive_accept_file(node: Node, meta: FileMeta, peer_id: str | None) -> bool:
    return True
