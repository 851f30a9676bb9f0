"""The network port: what the core needs from the transport, and what the transport needs from
the core.

The transport implements :class:`Network`; the node implements :class:`InboundHandler`. Neither
side imports the other's package. (:mod:`treedrive.core.ports` re-exports these, beside the
store's port.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from treedrive.core.messages import FileData, Message
from treedrive.core.model import FileMeta

if TYPE_CHECKING:
    from hashlib import _Hash

    from treedrive.core.identity import NodeKey


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

    def append_from(self, sock_fd: int, count: int) -> int:
        """Append up to ``count`` bytes received from the socket ``sock_fd`` (moved in the
        kernel where it can: no copy through user space), as :meth:`write` would; how many
        (0: the socket is at its end). Blocks as the socket does: its errors (a timeout under
        ``SO_RCVTIMEO`` is EAGAIN) are raised as ``recv_into`` raises them, a disk error is a
        StorageError."""
        ...

    def digest(self) -> _Hash:
        """sha256 of the bytes written in order (blocks until they are all hashed)."""
        ...

    def sync(self) -> None:
        """Make what is written so far durable (blocking; a disk error is a StorageError)."""
        ...

    def abort(self) -> None: ...


class GrowingFile(Protocol):
    """A file being written in order, read behind its writer (the store's ``Tail`` of a
    partial file): the bytes of a push sent on while they arrive."""

    def fileno(self) -> int: ...

    def ready(self, upto: int, timeout: float) -> int:
        """Bytes from the start that are written: at least ``upto`` unless ``timeout`` s pass
        first (blocking: a thread). Raises StorageError once the file is dropped."""
        ...

    def read_into(self, view: memoryview, offset: int) -> int:
        """Read written bytes from ``offset`` into ``view`` (a thread); how many."""
        ...

    def close(self) -> None: ...


class RangeFile(Protocol):
    """The partial file of a ranged download (the store's ``PartialFile``, opened to resume):
    the one owner of its bytes on disk. Ranges are written at their offsets from whatever thread
    received them; the download sizes, syncs and hashes it, and adopts it into the blob store
    once it verifies (or closes it, keeping its bytes to resume, or aborts it, removing them)."""

    @property
    def path(self) -> Path: ...

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        """Write all of ``data`` at ``offset`` (any thread; StorageError on a disk error)."""
        ...

    def splice_from(self, sock_fd: int, offset: int, count: int) -> int:
        """Move up to ``count`` bytes received from the socket ``sock_fd`` to ``offset`` (any
        thread; in the kernel where it can); how many (0: the socket is at its end). Socket
        errors are raised as ``recv_into`` raises them, a disk error is a StorageError."""
        ...

    def resize(self, size: int) -> None: ...

    def sync(self) -> None: ...

    def follow(self, ready: Callable[[int], int], end: int) -> _Hash:
        """sha256 of bytes ``0..end`` in order as they land (``ready(pos)`` blocks until bytes
        from ``pos`` on are on disk and says how many). Blocking: for a thread."""
        ...

    def hash_span(self, h: _Hash, offset: int, length: int) -> None: ...

    def adopt(self, file_id: str) -> Path:
        """Publish the whole, verified file as the blob of ``file_id`` (blocking)."""
        ...

    def close(self) -> None: ...

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

    @property
    def key(self) -> NodeKey:
        """The node's key pair: its TLS certificate is made from it (PROTOCOL.md 2.9)."""
        ...

    def pinned_key(self, peer_id: str) -> bytes | None:
        """The key pinned to ``peer_id`` (None: none is): a TLS client that claims ``peer_id``
        must have proved it."""
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
        peer_key: bytes | None = None,
    ) -> bool:
        """Send an unsolicited FILE_DATA with the bytes at ``path``, streamed from disk. With
        ``peer_key`` (a raw push only), over TLS to the peer that proves that key (2.9)."""
        ...

    async def push_stream(
        self,
        host: str,
        port: int,
        source: GrowingFile,
        size: int,
        record: Awaitable[FileMeta | None],
        progress: Callable[[int], None] | None = None,
        peer_key: bytes | None = None,
    ) -> bool:
        """Push ``size`` bytes to a TreeDrive peer that takes ``stream-push`` while they are
        still being written to ``source``, then their record once ``record`` gives it (None:
        the push is called off, and the peer keeps nothing). True once the record is sent.
        ``peer_key``: over TLS, as for :meth:`push_file`."""
        ...

    async def fetch_range(
        self,
        host: str,
        port: int,
        file_id: str,
        offset: int,
        length: int | None,
        partial: RangeFile,
        progress: Callable[[int], None] | None = None,
        written: Callable[[int], None] | None = None,
        download: str | None = None,
        peer_key: bytes | None = None,
    ) -> RangeAnswer:
        """Ranged GET_FILE (extension): bytes ``offset`` to ``offset + length`` of the file,
        written front to back at the same offsets of ``partial`` (``partial.splice_from`` in the
        thread that receives them: socket to file in the kernel; a disk error is the
        StorageError it raises). ``length`` None asks for the rest (and, with ``offset`` 0, the
        size). ``progress`` is called on the loop every few MiB; ``written``, if given, right
        after every write, from whatever thread wrote (so it must be thread-safe and quick),
        with the bytes of the range on disk so far. ``download`` names the download this range
        belongs to (the holder counts its ranges as one upload). Raises TransferError when the
        exchange fails, or ClassicAnswer when the peer answered the classic way. With
        ``peer_key``, over TLS to the peer that proves that key (PROTOCOL.md 2.9; the bytes are
        then decrypted and written, ``write_at``, not spliced)."""
        ...

    def reachable(self, host: str, port: int) -> None:
        """The node has reason to think ``host:port`` is reachable again: a GOSSIP or
        GOSSIP_REPLY naming it came from its own IP (its TCP source: a source vouches only for
        its own IP), or it is a peer that had answered the node, tried again on the node's own
        slow schedule (:mod:`treedrive.core.recontact`). Dials to it need not wait out the
        back-off of its earlier failures (a partition that healed)."""
        ...

    def set_rate_limits(self, download: float | None, upload: float | None) -> None:
        """Bytes per second for all transfers in each direction (None: no limit)."""
        ...

    def stats(self) -> dict[str, int]:
        """Counts since the start, by kind: connections refused and evicted, messages posted,
        sent and dropped, failed or invalid inbound connections... (for ``/metrics``)."""
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
