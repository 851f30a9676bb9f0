"""The ports of the core: Protocols that other layers implement, so that the core imports none
of them.

The store's port is here: the units of work and their repositories, and (from
:mod:`treedrive.core.blobport`) the blob store and the partial files that fill it. The store
package implements them (``tests/store/test_ports.py`` holds it to them under mypy --strict).
Repositories read and stage changes, never commit; values they hand back are the core's own
(``core/model.py``), detached from the database. A :class:`ReadOnlyUnitOfWork`
(``Store.reading()``) takes no write lock.

The network port (the transport's :class:`Network`, the node's :class:`InboundHandler`, …) is in
:mod:`treedrive.core.netport` and re-exported here.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from treedrive.core.blobport import BlobStore, PartialFile
from treedrive.core.events import Event
from treedrive.core.identity import NodeKey
from treedrive.core.model import (
    CatalogEntry,
    DeleteSignature,
    DownloadState,
    FileMeta,
    PeerInfo,
    PeerKey,
    TransferRecord,
)
from treedrive.core.netport import (
    FileSink,
    GrowingFile,
    InboundHandler,
    Network,
    Progress,
    RangeAnswer,
    RangeFile,
)

__all__ = [
    "BlobStore",
    "DownloadRepository",
    "FileRepository",
    "FileSink",
    "GrowingFile",
    "IdentityRepository",
    "InboundHandler",
    "KeyRepository",
    "Network",
    "PartialFile",
    "PeerRepository",
    "Progress",
    "RangeAnswer",
    "RangeFile",
    "ReadOnlyUnitOfWork",
    "Store",
    "TombstoneRepository",
    "TransferRepository",
    "UnitOfWork",
]


class IdentityRepository(Protocol):
    def get(self) -> str | None: ...

    def set(self, peer_id: str, now: float) -> None: ...


class PeerRepository(Protocol):
    @property
    def evicted(self) -> list[str]:
        """The peers the last :meth:`upsert` evicted to stay within its ``max_peers``."""
        ...

    def get(self, peer_id: str) -> PeerInfo | None: ...

    def all(self) -> list[PeerInfo]: ...

    def page(self, offset: int = 0, limit: int | None = None) -> list[PeerInfo]:
        """Peers ``offset`` to ``offset + limit`` by peer id (the order of :meth:`all`)."""
        ...

    def count(self) -> int: ...

    def upsert(
        self,
        peer_id: str,
        host: str,
        port: int,
        now: float,
        features: frozenset[str] | None,
        *,
        keep_features: bool = False,
        max_peers: int | None = None,
        keep: Collection[str] = frozenset(),
    ) -> tuple[PeerInfo, bool]:
        """Track or refresh a peer; returns it and whether it is new. A new peer beyond
        ``max_peers`` first evicts the longest silent (those in ``keep`` last)."""
        ...

    def expired(self, before: float) -> list[str]: ...

    def remove(self, peer_ids: Sequence[str]) -> None:
        """Forget the peers and what they hold."""
        ...


class FileRepository(Protocol):
    """The catalogue: file records and their holders. Claims never override facts: a held,
    verified record is frozen."""

    def get(self, file_id: str) -> CatalogEntry | None: ...

    def entries(
        self,
        scope: str = "both",
        *,
        offset: int = 0,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[CatalogEntry]:
        """``scope``: "local" (held here), "remote" or "both"; newest first. ``after``: only
        the entries after the one with that id (a keyset page; KeyError if it is unknown)."""
        ...

    def count(self, scope: str = "both") -> int: ...

    def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[str]: ...

    def held_of_size(self, size: int, limit: int = 100) -> list[FileMeta]: ...

    def local_metas(self) -> list[FileMeta]: ...

    def advertise(
        self,
        holder: str,
        metas: Sequence[FileMeta],
        now: float,
        *,
        complete: bool = False,
        announced: bool = False,
        untouched: Collection[str] = (),
    ) -> list[tuple[FileMeta, bool]]:
        """``holder`` says it holds ``metas`` (``complete``: and nothing else it did not
        announce, nor in ``untouched``; ``announced``: in its own ANNOUNCE). Returns the
        (meta, is_new) that changed something."""
        ...

    def known(self, file_ids: Sequence[str]) -> dict[str, CatalogEntry]:
        """The known records among ``file_ids``, without their holders."""
        ...

    def remove_holder(self, file_id: str, peer_id: str) -> None: ...

    def drop_untracked_holders(self) -> int: ...

    def mark_local(self, meta: FileMeta, size: int, now: float) -> None:
        """This node holds and verified the ``size`` bytes of ``meta``: a fact."""
        ...

    def unmark_local(self, file_id: str) -> None: ...

    def remove(self, file_id: str) -> bool: ...

    def remove_orphans(self) -> list[str]:
        """Drop remote records nobody holds any more; returns their ids."""
        ...


class TombstoneRepository(Protocol):
    def owners(self, file_ids: Sequence[str]) -> dict[str, str]:
        """The recorded owner of each of ``file_ids`` that is tombstoned."""
        ...

    def owner(self, file_id: str) -> str | None: ...

    def add(
        self, file_id: str, owner: str, now: float, signed: DeleteSignature | None = None
    ) -> None: ...

    def signatures(self, file_ids: Sequence[str]) -> dict[str, DeleteSignature]:
        """The owner's signature of the DELETE of each of ``file_ids`` that has one."""
        ...


class TransferRepository(Protocol):
    def start(
        self, file_id: str, direction: str, peer_id: str | None, total: int | None, now: float
    ) -> int:
        """Record a running transfer; returns its id."""
        ...

    def finish(
        self,
        transfer_id: int,
        ok: bool,
        bytes_done: int,
        now: float,
        error: str | None = None,
        peer_id: str | None = None,
    ) -> None: ...

    def progress(self, transfer_id: int, bytes_done: int, now: float) -> None: ...

    def recent(self, limit: int = 20) -> list[TransferRecord]: ...

    def abandon_running(self, now: float) -> int:
        """Mark transfers a crash interrupted as failed; returns how many."""
        ...


class DownloadRepository(Protocol):
    """What of each resumable download is on disk for good."""

    def get(self, file_id: str) -> DownloadState | None: ...

    def all(self) -> list[DownloadState]: ...

    def save(self, state: DownloadState, now: float) -> None: ...

    def remove(self, file_id: str) -> None: ...


class KeyRepository(Protocol):
    """The keys pinned to peer ids: trust on first use (:mod:`treedrive.core.pins` decides)."""

    def get(self, peer_id: str) -> PeerKey | None: ...

    def pinned(self, peer_ids: Collection[str]) -> dict[str, bytes]:
        """The key pinned to each of ``peer_ids`` that has one. Batched."""
        ...

    def pin(self, peer_id: str, public_key: bytes, now: float) -> bool:
        """Pin ``peer_id`` to ``public_key`` unless it is pinned already; whether it is now
        pinned to that key (False: to another, which stays until :meth:`forget`)."""
        ...

    def touch(self, peer_id: str, now: float) -> None:
        """The pinned key signed again at ``now``."""
        ...

    def forget(self, peer_id: str) -> bool:
        """Drop the pin (the next signed message pins anew); whether there was one."""
        ...

    def count(self) -> int:
        """How many peer ids are pinned."""
        ...

    def all(self) -> list[PeerKey]: ...


class ReadOnlyUnitOfWork(Protocol):
    """One consistent snapshot of the database (``Store.reading``): it has the repositories
    but can neither commit nor publish events."""

    @property
    def identity(self) -> IdentityRepository: ...

    @property
    def peers(self) -> PeerRepository: ...

    @property
    def files(self) -> FileRepository: ...

    @property
    def tombstones(self) -> TombstoneRepository: ...

    @property
    def transfers(self) -> TransferRepository: ...

    @property
    def downloads(self) -> DownloadRepository: ...

    @property
    def keys(self) -> KeyRepository: ...


class UnitOfWork(ReadOnlyUnitOfWork, Protocol):
    """One transaction that may write (``Store.unit_of_work``): leaving it without
    :meth:`commit` rolls back."""

    @property
    def published(self) -> Sequence[Event]:
        """Every event a commit of this unit of work handed out so far."""
        ...

    def emit(self, event: Event) -> None:
        """Record an event to hand out once the transaction commits."""
        ...

    def commit(self) -> list[Event]:
        """Make the changes durable; returns the events recorded since the last commit."""
        ...


class Store(Protocol):
    """A node's persistent state. A full disk is a StorageError."""

    @property
    def blobs(self) -> BlobStore: ...

    def node_key(self) -> NodeKey:
        """The node's own key pair, kept in its data dir (made at the first call). A key that
        is there but cannot be read is a StorageError: it is never replaced."""
        ...

    def unit_of_work(self) -> AbstractContextManager[UnitOfWork]:
        """A transaction that may write: it holds the write lock from its first statement."""
        ...

    def reading(self) -> AbstractContextManager[ReadOnlyUnitOfWork]:
        """A read-only transaction: no write lock, never waits for a writer or another reader;
        ends with a rollback."""
        ...

    def close(self) -> None: ...
