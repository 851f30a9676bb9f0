"""Protocol messages as the core sees them: validated values, no JSON.

The transport turns wire objects into these (and back). Unknown keys a peer sent travel along in
``extra`` so that a forwarded GOSSIP leaves unchanged and plugins can read extension keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from treedrive.core.model import FileMeta


@dataclass(frozen=True, slots=True)
class Gossip:
    host: str
    port: int
    id: str
    peer_id: str
    extra: Mapping[str, Any] = field(default_factory=dict)
    original: Mapping[str, Any] | None = None
    """The message exactly as received, so that forwarding leaves it unchanged."""


@dataclass(frozen=True, slots=True)
class GossipReply:
    host: str
    port: int
    peer_id: str
    files: tuple[FileMeta, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)
    skipped: int = 0
    """How many entries of ``files`` were malformed and left out."""


@dataclass(frozen=True, slots=True)
class GetFile:
    file_id: str
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FileData:
    """The header of a FILE_DATA message; its bytes stream separately. ``meta`` None = not here."""

    meta: FileMeta | None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Announce:
    from_peer: str
    meta: FileMeta
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Delete:
    from_peer: str
    file_id: str
    extra: Mapping[str, Any] = field(default_factory=dict)


Message = Gossip | GossipReply | GetFile | FileData | Announce | Delete
