"""What the core needs from the transport, and what the transport needs from the core.

The transport implements :class:`Network`; the node implements :class:`InboundHandler`. Neither
side imports the other's package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from treedrive.core.messages import FileData, Message
from treedrive.core.model import FileMeta


@dataclass(frozen=True, slots=True)
class RangeAnswer:
    """What a holder said to a ranged GET_FILE (the TreeDrive extension's ``raw-range``)."""

    meta: FileMeta | None
    """None: the holder does not have the file."""
    size: int
    """The whole file's size in bytes."""
    offset: int
    length: int
    """How many bytes of the range were written to the file."""


class FileSink(Protocol):
    """Where the bytes of an arriving file go (a temp file in the blob store)."""

    size: int

    def write(self, data: bytes | memoryview) -> None: ...

    def abort(self) -> None: ...


class Progress(Protocol):
    """Progress of one transfer, reported by whoever moves the bytes."""

    def update(self, done: int) -> None: ...

    def finish(self, ok: bool, error: str | None = None) -> None: ...


class InboundHandler(Protocol):
    @property
    def peer_id(self) -> str:
        """This node's id (ranged requests carry it, so that the holder knows who asks)."""
        ...

    @property
    def features(self) -> frozenset[str]:
        """The extension features the node speaks (empty: classic only)."""
        ...

    def open_sink(self) -> FileSink:
        """A fresh sink for the bytes of an incoming FILE_DATA."""
        ...

    async def handle_message(self, message: Message, source: str) -> None:
        """A GOSSIP, GOSSIP_REPLY, ANNOUNCE or DELETE arrived from TCP address ``source``."""
        ...

    def track_push(
        self, meta: FileMeta, source: str, sender: str | None, size: int | None
    ) -> Progress:
        """The bytes of a file pushed to us unasked begin to arrive from TCP address ``source``:
        the receiving side of the push, as a transfer. ``meta`` is the record the push claims
        so far (for a classic hex push, the keys before ``data``: later keys may still change
        it, so it is for display only; the whole header comes to :meth:`handle_pushed_file`).
        ``sender`` is the pusher's peer id when it says it (a raw push's claim), ``size`` the
        bytes expected when known (a raw push's length; None for hex). The transport calls
        ``update`` as bytes land (every MiB or so), and ``finish(False, reason)`` itself if the
        body fails (cut short, too slow, malformed, a full disk); once the body is whole, the
        progress goes to :meth:`handle_pushed_file`, which finishes it."""
        ...

    async def handle_pushed_file(
        self,
        header: FileData,
        sink: FileSink | None,
        source: str,
        progress: Progress | None = None,
    ) -> None:
        """An unsolicited FILE_DATA is complete; its bytes are in ``sink`` (None: no data).
        ``progress`` (from :meth:`track_push`, None when the push was not tracked) is this
        handler's to finish, ok once the file is stored, failed when it is refused."""
        ...

    def file_to_serve(self, file_id: str) -> tuple[FileMeta, Path] | None:
        """The record and blob path of a file we hold, for a GET_FILE; None if we don't."""
        ...

    def track_upload(self, meta: FileMeta, peer: str, size: int) -> Progress:
        """We are about to send ``size`` bytes of ``meta`` to ``peer`` (a GET_FILE answer)."""
        ...

    def track_range(self, meta: FileMeta, peer: str, download: str | None, size: int) -> Progress:
        """We are about to send one range of ``meta`` (a file of ``size`` bytes) to ``peer``.
        Ranges of the same ``download`` (the asker's id for one run of its download) add up to
        one upload; ``update`` counts this range's bytes."""
        ...


class Network(Protocol):
    async def start(self, handler: InboundHandler) -> tuple[str, int]:
        """Listen; returns the bound host and port."""
        ...

    async def close(self) -> None: ...

    async def send(self, host: str, port: int, message: Message) -> bool:
        """Deliver one message on a new connection; False if it could not be delivered."""
        ...

    def post(self, host: str, port: int, message: Message) -> None:
        """Queue one message for delivery on a new connection, without waiting. The outbound
        queue is bounded (its oldest entries are dropped when full), a message is encoded only
        when a sender takes it (one object posted to many addresses is encoded once), and an
        address that refuses is dialed at most a few times a minute (posts to it meanwhile are
        dropped). Nothing reports whether it arrived."""
        ...

    async def push_file(
        self,
        host: str,
        port: int,
        meta: FileMeta,
        path: Path,
        progress: Callable[[int], None] | None = None,
        raw: bool = False,
    ) -> bool:
        """Send an unsolicited FILE_DATA with the bytes at ``path``, streamed from disk."""
        ...

    async def fetch_range(
        self,
        host: str,
        port: int,
        file_id: str,
        offset: int,
        length: int | None,
        fd: int,
        progress: Callable[[int], None] | None = None,
        written: Callable[[int], None] | None = None,
        download: str | None = None,
    ) -> RangeAnswer:
        """Ranged GET_FILE (extension): bytes ``offset`` to ``offset + length`` of the file,
        written front to back at the same offsets of ``fd``. ``length`` None asks for the rest
        (and, with ``offset`` 0, the size). ``progress`` is called on the loop every few MiB;
        ``written``, if given, right after every write, from whatever thread wrote (so it must
        be thread-safe and quick), with the bytes of the range on disk so far. ``download``
        names the download this range belongs to (the holder counts its ranges as one upload).
        Raises
        TransferError when the exchange fails, or ClassicAnswer when the peer answered the
        classic way."""
        ...

    def set_rate_limits(self, download: float | None, upload: float | None) -> None:
        """Bytes per second for all transfers in each direction (None: no limit)."""
        ...

    async def fetch_file(
        self,
        host: str,
        port: int,
        file_id: str,
        sink: FileSink,
        progress: Callable[[int], None] | None = None,
        max_bytes: int | None = None,
    ) -> FileData:
        """GET_FILE: the answer's header, its bytes written to ``sink``. ``meta`` None means the
        peer does not have it. Raises TransferError when the exchange fails: also when more than
        ``max_bytes`` file bytes come (none past the cap is written), or when they come too
        slowly."""
        ...


# -- the store -------------------------------------------------------------------------------
# What the core (and the web, through the node) needs from the store: the units of work and their
# repositories, the blob store and the partial files that fill it. The store package implements
# them (``tests/store/test_ports.py`` holds it to them under mypy --strict); the core imports
# nothing from it. Repositories read and stage changes, never commit; values they hand back are
# the core's own (``core/model.py``), detached from the database.
# (Imported here, apart from the block at the top, so that the two parts of this module merge
# without touching each other.)

import hashlib  # noqa: E402
from collections.abc import Collection, Sequence  # noqa: E402
from contextlib import AbstractContextManager  # noqa: E402

from treedrive.core.events import Event  # noqa: E402
from treedrive.core.model import (  # noqa: E402
    CatalogEntry,
    DownloadState,
    PeerInfo,
    Timestamp,
    TransferRecord,
)


class PartialFile(Protocol):
    """A file on its way into the blob store: the one owner of its bytes until it is adopted as
    a blob or aborted (nothing partial is ever visible as a blob). Disk errors are
    :class:`~treedrive.core.errors.StorageError`. A context manager: leaving it un-adopted
    aborts it."""

    @property
    def path(self) -> Path: ...

    size: int
    """Bytes written in order (:meth:`write`); an attribute, as in :class:`FileSink`, which a
    partial file is."""

    @property
    def committed(self) -> Path | None:
        """The blob it became, once adopted."""
        ...

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        """Write all of ``data`` at ``offset`` (any thread)."""
        ...

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``, hashed in order behind the writer (one writer at a time)."""
        ...

    def sync(self) -> None: ...

    def resize(self, size: int) -> None: ...

    def digest(self) -> hashlib._Hash:
        """sha256 of the bytes written in order (blocks until the hasher caught up)."""
        ...

    def matches(self, file_id: str, ts: Timestamp) -> bool: ...

    def content_id(self, ts: int) -> str: ...

    def follow(self, ready: Callable[[int], int], end: int) -> hashlib._Hash:
        """sha256 of bytes ``0..end`` read back as they land (blocking: a thread of its own)."""
        ...

    def hash_span(self, h: hashlib._Hash, offset: int, length: int) -> None: ...

    def commit(self, file_id: str, ts: Timestamp) -> Path:
        """Verify the bytes written in order and adopt them (blocking); VerificationError
        (aborted) when they do not match."""
        ...

    def adopt(self, file_id: str) -> Path:
        """Publish the file, verified by the caller, as the blob of ``file_id`` (blocking)."""
        ...

    def close(self) -> None:
        """Close and keep the file (a resumable download's bytes)."""
        ...

    def abort(self) -> None:
        """Close and remove the file (unless adopted)."""
        ...

    def __enter__(self) -> PartialFile: ...

    def __exit__(self, *exc: object) -> None: ...


class BlobStore(Protocol):
    """The verified files this node holds, one blob per file id, and the partial files that
    become them."""

    def path(self, file_id: str) -> Path: ...

    def has(self, file_id: str) -> bool: ...

    def size(self, file_id: str) -> int: ...

    def ids(self) -> set[str]: ...

    def delete(self, file_id: str) -> bool: ...

    def writer(self) -> PartialFile:
        """A new partial file, filled in order (a push, an upload, a classic answer)."""
        ...

    def partial(self, file_id: str, *, keep: bool) -> PartialFile:
        """The partial file of a ranged download of ``file_id``; ``keep``: with the bytes an
        earlier run left in it."""
        ...

    def range_path(self, file_id: str) -> Path: ...

    def adopt(self, path: Path, file_id: str) -> Path:
        """Sync and publish a complete, verified partial file as the blob of ``file_id``."""
        ...

    def clean_partials(self, keep: frozenset[str] = frozenset()) -> int:
        """Remove the partial files a crash left, but for the resumable downloads in ``keep``;
        returns how many."""
        ...


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
        self, scope: str = "both", *, offset: int = 0, limit: int | None = None
    ) -> list[CatalogEntry]:
        """``scope``: "local" (held here), "remote" or "both"; newest first."""
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
    ) -> list[tuple[FileMeta, bool]]:
        """``holder`` says it holds ``metas`` (``complete``: and nothing else it did not
        announce; ``announced``: in its own ANNOUNCE). Returns the (meta, is_new) that changed
        something."""
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

    def add(self, file_id: str, owner: str, now: float) -> None: ...


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

    def unit_of_work(self) -> AbstractContextManager[UnitOfWork]:
        """A transaction that may write: it holds the write lock from its first statement."""
        ...

    def reading(self) -> AbstractContextManager[ReadOnlyUnitOfWork]:
        """A read-only transaction: no write lock, never waits for a writer or another reader;
        ends with a rollback."""
        ...

    def close(self) -> None: ...
