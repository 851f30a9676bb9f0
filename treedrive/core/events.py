"""Domain events and notices.

An :class:`Event` is a change committed to the store; plugins hear of it (``treedrive_on_event``)
only after the commit, never for a change that rolled back. A :class:`Notice` is transient:
something happened that no commit stands behind (bytes moving, bytes refused); plugins hear of it
at once (``treedrive_on_notice``), and the store may never know of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from treedrive.core.model import FileMeta, PeerInfo, TransferState


@dataclass(frozen=True, slots=True)
class Named:
    @property
    def name(self) -> str:
        return type(self).__name__


@dataclass(frozen=True, slots=True)
class Event(Named):
    """A change committed to the store."""


@dataclass(frozen=True, slots=True)
class Notice(Named):
    """Something that happened with no commit behind it."""


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
class TransferProgress(Notice):
    """Bytes of a running transfer moved (at most every ``PROGRESS_EVERY`` s per transfer)."""

    transfer: TransferState


@dataclass(frozen=True, slots=True)
class TransferFinished(Event):
    transfer: TransferState
    ok: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class FileRefused(Notice):
    """Bytes a peer sent that this node threw away: they did not match the file's id, or their
    holder lied about the file. Nothing of them was kept."""

    file_id: str
    peer_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class PeerRefused(Notice):
    """A GOSSIP or GOSSIP_REPLY that names a peer was refused: its key is not the one pinned to
    the peer id, it is unsigned although the peer id is pinned, its signature does not verify,
    or it is signed too far in the future or before what was already accepted (PROTOCOL.md 2.7).
    It changed nothing."""

    peer_id: str
    source: str
    """Where it came from (the connection's address)."""
    reason: str
    """One line saying why (fit for the log and the dashboard)."""
    code: str
    """Why, as a short key: ``other_key``, ``unsigned``, ``bad_signature``, ``future``,
    ``stale``."""
