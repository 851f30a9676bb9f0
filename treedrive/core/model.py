"""Domain values shared by every layer: file records, peers, catalogue entries."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

Timestamp = int | float | str
"""A ``file_timestamp`` as peers send it: usually an int, sometimes a float, once a string."""

MEGABYTE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Seal:
    """An owner's signature over a file record (:func:`treedrive.core.identity.record_claim` of
    its five fields), made by the TreeDrive node that pushed the file (PROTOCOL.md 2.8)."""

    owner_key: bytes
    """The raw 32-byte Ed25519 public key of the owner."""
    signature: bytes
    """The raw 64-byte signature."""


@dataclass(frozen=True, slots=True)
class DeleteSignature:
    """An owner's signature of its DELETE (:func:`treedrive.core.identity.delete_claim` of the
    file id, the owner and ``ts``): what a TreeDrive node needs to honour the DELETE of a sealed
    file (PROTOCOL.md 2.8). Kept with the tombstone, so that relayed DELETEs carry it on."""

    ts: int
    """When the owner deleted the file (Unix seconds), as signed."""
    signature: bytes
    """The raw 64-byte signature."""


@dataclass(frozen=True, slots=True)
class FileMeta:
    """A file record as the protocol carries it (PROTOCOL.md 1.2), and its owner's seal if it
    came with one (2.8). The seal takes no part in equality or hashing: two records that say
    the same are equal, sealed or not."""

    file_id: str
    file_name: str
    file_size: float
    file_owner: str
    file_timestamp: Timestamp
    seal: Seal | None = field(default=None, compare=False)
    seal_error: str | None = field(default=None, compare=False, repr=False)
    """Why the seal the record came with could not be read (it reads as no seal): a claim
    with limits, logged by whoever takes the record."""

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
class PeerKey:
    """The key pinned to a peer id (trust on first use: :mod:`treedrive.core.pins`)."""

    peer_id: str
    public_key: bytes
    """The raw 32-byte Ed25519 public key."""
    first_seen: float
    """When it was pinned."""
    last_seen: float
    """When it last signed a message this node accepted."""


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One file of the catalogue with what this node knows about its copies."""

    meta: FileMeta
    has_copy: bool
    size_bytes: int | None
    holders: tuple[str, ...] = field(default=())
    """Peer ids known to hold a copy (never this node itself; see ``has_copy``)."""


@dataclass(frozen=True, slots=True)
class Pushed:
    """What a push did: ``existing`` means this node already held the same bytes, so nothing
    new was pushed and ``meta`` is the record it has."""

    meta: FileMeta
    existing: bool = False


@dataclass(slots=True)
class TransferState:
    """A transfer in progress (mutable; events carry frozen snapshots)."""

    transfer_id: int
    file_id: str
    file_name: str
    direction: str
    """"in" (we fetch) or "out" (we send)."""
    peer_id: str | None
    bytes_total: int | None
    bytes_done: int = 0
    started_at: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    bytes_at_start: int = 0
    """Bytes already there when this run of the transfer began (a resumed download's
    partial file): they count in ``bytes_done`` but not in the rate."""

    @property
    def rate(self) -> float:
        """Bytes per second moved in this run (what a resume found on disk is not counted)."""
        elapsed = time.monotonic() - self.started_mono
        moved = max(0, self.bytes_done - self.bytes_at_start)
        return moved / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate, when the total is known."""
        rate = self.rate
        if self.bytes_total is None or rate <= 0:
            return None
        return max(0.0, (self.bytes_total - self.bytes_done) / rate)

    def snapshot(self) -> TransferState:
        return replace(self)


@dataclass(frozen=True, slots=True)
class DownloadState:
    file_id: str
    size: int
    chunk_size: int
    done: frozenset[int]
    """Chunks wholly on disk."""
    partial: Mapping[int, int] = field(default_factory=dict)
    """Chunks partly on disk: index -> how many of its first bytes."""

    def bytes_on_disk(self) -> int:
        whole = sum(min(self.chunk_size, self.size - c * self.chunk_size) for c in self.done)
        return whole + sum(self.partial.values())


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """A transfer as the store remembers it (one row of its history: running, done or failed,
    and how far it got), read back detached from the database."""

    id: int
    """The transfer's id (``TransferState.transfer_id`` while it runs)."""
    file_id: str
    direction: str
    """"in" (we fetch) or "out" (we send)."""
    peer_id: str | None
    state: str
    """"running", "done" or "failed"."""
    bytes_done: int
    bytes_total: int | None
    started_at: float
    updated_at: float
    error: str | None
