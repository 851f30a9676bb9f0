"""The port of bytes on disk: the blob store and the partial files that fill it (the store's
``BlobStore`` and ``PartialFile`` implement it). Re-exported by :mod:`treedrive.core.ports`."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from treedrive.core.model import Timestamp
from treedrive.core.netport import GrowingFile


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

    def splice_from(self, sock_fd: int, offset: int, count: int) -> int:
        """Move up to ``count`` bytes from the socket ``sock_fd`` to ``offset`` (any thread;
        socket to file in the kernel where it can); how many (0: the socket's end)."""
        ...

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``, hashed in order behind the writer (one writer at a time)."""
        ...

    def append_from(self, sock_fd: int, count: int) -> int:
        """Append up to ``count`` bytes from the socket ``sock_fd``, as :meth:`write` does
        (moved as :meth:`splice_from` moves them); how many (0: the socket's end)."""
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

    def tail(self) -> GrowingFile:
        """A reader that follows the bytes written in order (a push sent on as it arrives)."""
        ...

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

    def free(self) -> int:
        """Bytes free on the disk that partial files and blobs are written to."""
        ...

    def clean_partials(self, keep: frozenset[str] = frozenset()) -> int:
        """Remove the partial files a crash left, but for the resumable downloads in ``keep``;
        returns how many."""
        ...
