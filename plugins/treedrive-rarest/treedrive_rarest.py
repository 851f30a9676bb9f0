"""A TreeDrive download selector: on join, fetch the files the fewest peers hold.

Replicating the rarest files first makes the network lose fewer files when peers leave. Ties go
to the newest file (like the built-in selector), then to the smaller file id, so the choice is
deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from treedrive.core.fileid import timestamp_value
from treedrive.core.hookspecs import hookimpl

if TYPE_CHECKING:
    from treedrive.core.model import CatalogEntry
    from treedrive.core.node import Node

__all__ = ["rarity_key", "treedrive_select_downloads"]


def rarity_key(entry: CatalogEntry) -> tuple[int, float, str]:
    """Sort key: fewest holders, then newest timestamp, then file id."""
    return (
        len(entry.holders),
        -timestamp_value(entry.meta.file_timestamp),
        entry.meta.file_id,
    )


@hookimpl
def treedrive_select_downloads(
    node: Node, candidates: Sequence[CatalogEntry], limit: int
) -> list[str] | None:
    """Up to ``limit`` candidate ids, rarest first; None (let others decide) if none."""
    if not candidates:
        return None
    ranked = sorted(candidates, key=rarity_key)
    return [entry.meta.file_id for entry in ranked[: max(limit, 0)]]
