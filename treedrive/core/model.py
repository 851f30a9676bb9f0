"""Domain values shared by every layer: file records, peers, catalogue entries."""

from __future__ import annotations

from dataclasses import dataclass, field

Timestamp = int | float | str
"""A ``file_timestamp`` as peers send it: usually an int, sometimes a float, once a string."""

MEGABYTE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class FileMeta:
    """A file record as the protocol carries it (PROTOCOL.md 1.2)."""

    file_id: str
    file_name: str
    file_size: float
    file_owner: str
    file_timestamp: Timestamp

    def wire(self) -> dict[str, object]:
        return {
            "file_name": self.file_name,
            "file_size": self.file_size,
            "file_id": self.file_id,
            "file_owner": self.file_owner,
            "file_timestamp": self.file_timestamp,
        }


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A tracked peer, dialable at ``host:port``."""

    peer_id: str
    host: str
    port: int
    last_seen: float
    features: frozenset[str] | None = None
    """TreeDrive extension features it advertised; None for a classic peer."""

    @property
    def is_treedrive(self) -> bool:
        return self.features is not None


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One file of the catalogue with what this node knows about its copies."""

    meta: FileMeta
    has_copy: bool
    size_bytes: int | None
    holders: tuple[str, ...] = field(default=())
    """Peer ids known to hold a copy (never this node itself; see ``has_copy``)."""
