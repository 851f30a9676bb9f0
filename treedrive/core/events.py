"""Domain events: what changed, delivered to plugins only after the change is committed."""

from __future__ import annotations

from dataclasses import dataclass

from treedrive.core.model import FileMeta, PeerInfo, TransferState


@dataclass(frozen=True, slots=True)
class Event:
    @property
    def name(self) -> str:
        return type(self).__name__


@dataclass(frozen=True, slots=True)
class PeerSeen(Event):
    peer: PeerInfo
    new: bool


@dataclass(frozen=True, slots=True)
class PeerExpired(Event):
    peer_id: str


@dataclass(frozen=True, slots=True)
class FileAdvertised(Event):
    """A peer says it holds a file (GOSSIP_REPLY or ANNOUNCE)."""

    meta: FileMeta
    holder: str
    new: bool


@dataclass(frozen=True, slots=True)
class FileStored(Event):
    """This node now holds a verified copy of the file."""

    meta: FileMeta
    size: int
    source: str
    """"push" (pushed by this node), "get" (fetched), or "received" (pushed to us)."""


@dataclass(frozen=True, slots=True)
class FileDeleted(Event):
    file_id: str
    owner: str


@dataclass(frozen=True, slots=True)
class TransferProgress(Event):
    transfer: TransferState


@dataclass(frozen=True, slots=True)
class TransferFinished(Event):
    transfer: TransferState
    ok: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class FileRefused(Event):
    """Bytes that did not verify against their id (or were refused by policy)."""

    file_id: str
    peer_id: str | None
    reason: str
