"""A file being received: the one owner of bytes on their way into the blob store.

Every receive path writes through a :class:`PartialFile`: a classic GET_FILE answer, the ranges of
a multi-source download, a pushed file (raw or hex), an upload over HTTP. It lives under
``partial/`` and owns its descriptor: bytes are written at an offset from whatever thread received
them (``write_at``) or appended in order (``write``), or moved there from a socket in the kernel
(``splice_from``, ``append_from``: :mod:`~treedrive.store.splicing`); it syncs (``sync``, and in
the background every so often while it fills in order), it hashes the bytes in order as they land
(a hasher thread follows the filled prefix, so the writer never waits for sha256), and once the
whole verifies it is adopted as ``blobs/<file_id>`` (fsync, rename, fsync of the directory). An OS
error on the disk becomes :class:`~treedrive.core.errors.StorageError`; a file that is aborted is
removed. Nothing partial is ever visible as a blob.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

from treedrive.core import fileid
from treedrive.core.errors import StorageError, VerificationError
from treedrive.core.model import Timestamp
from treedrive.store import splicing
from treedrive.store.splicing import disk_error as _disk_error

HASH_BLOCK = 1024 * 1024
"""Bytes the hasher reads back at a time."""
SYNC_EVERY = 64 * 1024 * 1024
"""A file filled in order is synced in the background every this many bytes, so that the
final fsync before it is adopted has little left to write."""

Publish = Callable[[Path, str], Path]
"""Moves a complete, synced file into the blob store under a file id; returns the blob's path."""


class _Follower:
    """The in-order hasher of a file filled front to back: a thread that reads back and hashes
    what the writer has put on disk, while the writer goes on."""

    def __init__(self, fd: int, start: int = 0, h: hashlib._Hash | None = None) -> None:
        self._fd = fd
        self._cond = threading.Condition()
        self._filled = start
        self._hashed = start
        self._ended = False
        self._stopped = False
        self._error: BaseException | None = None
        self.hash = h if h is not None else hashlib.sha256()
        self._thread = threading.Thread(target=self._run, name="hasher", daemon=True)
        self._thread.start()

    def filled(self, upto: int) -> None:
        with self._cond:
            self._filled = upto
            self._cond.notify_all()

    def _next(self) -> int:
        """Bytes ready to hash (0: nothing more will come, or the hash is abandoned)."""
        with self._cond:
            while self._filled <= self._hashed and not self._ended:
                self._cond.wait()
            return 0 if self._stopped else max(0, self._filled - self._hashed)

    def _run(self) -> None:
        buf = memoryview(bytearray(HASH_BLOCK))
        try:
            while ready := self._next():
                n = os.preadv(self._fd, [buf[: min(ready, HASH_BLOCK)]], self._hashed)
                if n <= 0:
                    raise StorageError("the partial file is shorter than it should be")
                self.hash.update(buf[:n])
                with self._cond:
                    self._hashed += n
                    self._cond.notify_all()
        except BaseException as exc:  # handed to whoever waits for the hash
            with self._cond:
                self._error = exc
                self._ended = True
                self._cond.notify_all()

    def finish(self) -> hashlib._Hash:
        """Wait until every filled byte is hashed; the hash (the follower stops)."""
        with self._cond:
            while self._hashed < self._filled and self._error is None:
                self._cond.wait()
            self._ended = True
            self._cond.notify_all()
        self._thread.join()
        if self._error is not None:
            if isinstance(self._error, OSError):
                raise _disk_error("read", self._error) from self._error
            raise self._error
        return self.hash

    def wait_filled(self, upto: int, timeout: float) -> tuple[int, bool]:
        """Bytes filled so far, once at least ``upto`` are or ``timeout`` s have passed or
        nothing more will come; and whether nothing more will come (finished or abandoned)."""
        with self._cond:
            self._cond.wait_for(lambda: self._filled >= upto or self._ended, timeout)
            return self._filled, self._ended

    def stop(self) -> None:
        """Abandon the hash (the file is aborted or kept without it)."""
        with self._cond:
            self._ended = self._stopped = True
            self._cond.notify_all()
        self._thread.join()


class Tail:
    """A reader of a partial file that follows its writer: the bytes filled in order so far,
    for another thread to send on while they arrive (a push forwarded while it is uploaded).
    Its own descriptor stays valid when the file is adopted (renamed) or aborted (removed)."""

    def __init__(self, partial: PartialFile, fd: int, follower: _Follower) -> None:
        self._partial = partial
        self._follower = follower
        self._fd: int | None = os.dup(fd)

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError("the tail is closed")
        return self._fd

    def ready(self, upto: int, timeout: float) -> int:
        """Bytes from the start that are on disk, in order: at least ``upto`` unless
        ``timeout`` s pass first (blocking: a thread). Raises StorageError once the file is
        aborted (what it held will never be a file), or ended short of ``upto``."""
        filled, ended = self._follower.wait_filled(upto, timeout)
        if self._partial.aborted:
            raise StorageError("the file was dropped before it was whole")
        if ended and filled < upto:
            raise StorageError(f"the file ended at {filled} bytes")
        return filled

    def read_into(self, view: memoryview, offset: int) -> int:
        """Read bytes from ``offset`` into ``view`` (any thread; the caller asked :meth:`ready`
        first); how many (0: none there). A disk error is a StorageError."""
        try:
            return os.preadv(self.fileno(), [view], offset)
        except OSError as exc:
            raise _disk_error("read", exc) from exc

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class PartialFile:
    """A file under ``partial/`` being filled: see the module's docstring.

    Written in order (``write``, the :class:`~treedrive.core.ports.FileSink` of classic answers,
    pushes and uploads), it is hashed as it fills and ``size`` counts the bytes; written at
    offsets (``write_at``, ranged downloads, any thread), whoever writes knows what is where and
    hashes with :meth:`follow` or :meth:`hash_span`."""

    def __init__(self, path: Path, publish: Publish, *, keep: bool = False) -> None:
        """Open (creating it, 0600) the file at ``path``. ``keep``: the file holds bytes of an
        earlier run (a resumable download): they stay, and it is not hashed in order."""
        self.path = path
        self._publish = publish
        try:
            flags = os.O_RDWR | os.O_CREAT | (0 if keep else os.O_TRUNC)
            self._fd: int | None = os.open(path, flags, 0o600)
        except OSError as exc:
            raise _disk_error("create", exc) from exc
        self.size = 0
        """Bytes written in order (``write``)."""
        self.committed: Path | None = None
        self._synced_at = 0
        self._syncing: threading.Thread | None = None
        self._follower: _Follower | None = None if keep else _Follower(self._fd)
        self._digest: hashlib._Hash | None = None
        self.aborted = False
        """Removed without being adopted."""

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ValueError("the partial file is closed")
        return self._fd

    # -- writing ------------------------------------------------------------------------------
    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        """Write all of ``data`` at ``offset`` (thread-safe: any thread, any offset)."""
        splicing.write_at(self.fd, offset, data)

    def splice_from(self, sock_fd: int, offset: int, count: int) -> int:
        """Move up to ``count`` bytes from the socket ``sock_fd`` to ``offset``, in the kernel
        (splice: no copy through user space), as :meth:`write_at` does (thread-safe). Blocks
        as the socket does (its errors, such as EAGAIN under ``SO_RCVTIMEO``, are raised as
        ``recv_into`` raises them); how many bytes moved (0: the socket is at its end)."""
        return splicing.move(sock_fd, self.fd, offset, count)

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data`` (one writer at a time): hashed in order behind the writer."""
        self.write_at(self._end(), data)
        self._filled(len(data))

    def append_from(self, sock_fd: int, count: int) -> int:
        """Append up to ``count`` bytes from the socket ``sock_fd``, as :meth:`write` does,
        moved as :meth:`splice_from` moves them; how many (0: the socket is at its end)."""
        n = splicing.move(sock_fd, self.fd, self._end(), count)
        self._filled(n)
        return n

    def _end(self) -> int:
        self.fd  # noqa: B018 - raises if closed
        if self._follower is None:
            raise ValueError("a partial file opened to resume is written at offsets only")
        return self.size

    def _filled(self, n: int) -> None:
        """``n`` more bytes are on disk in order: the hasher may read them."""
        if self._follower is None or n <= 0:
            return
        self.size += n
        self._follower.filled(self.size)
        if self.size - self._synced_at >= SYNC_EVERY:
            self._sync_behind()

    def _sync_behind(self) -> None:
        """Start an fdatasync in the background (unless one is running): the dirty pages go to
        disk while the writer goes on, and the fsync at the end has little left to do."""
        if self._syncing is not None and self._syncing.is_alive():
            return
        self._synced_at = self.size
        fd = self.fd

        def sync() -> None:
            with contextlib.suppress(OSError):  # the final fsync reports it
                os.fdatasync(fd)

        self._syncing = threading.Thread(target=sync, name="sync-behind", daemon=True)
        self._syncing.start()

    def sync(self) -> None:
        """fdatasync what is written so far (a checkpoint)."""
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            raise _disk_error("sync", exc) from exc

    def resize(self, size: int) -> None:
        """Make the file ``size`` bytes long (sparse: a ranged download's full size, or 0)."""
        try:
            if os.fstat(self.fd).st_size != size:
                os.ftruncate(self.fd, size)
        except OSError as exc:
            raise _disk_error("size", exc) from exc

    def tail(self) -> Tail:
        """A reader that follows the bytes written in order (see :class:`Tail`)."""
        if self._follower is None:
            raise ValueError("a partial file written at offsets has no in-order tail")
        return Tail(self, self.fd, self._follower)

    # -- hashing ------------------------------------------------------------------------------
    def digest(self) -> hashlib._Hash:
        """sha256 of the bytes written in order (waits for the hasher to catch up)."""
        if self._digest is None:
            if self._follower is None:
                raise ValueError("a partial file written at offsets has no in-order hash")
            self._digest = self._follower.finish()
        return self._digest

    def matches(self, file_id: str, ts: Timestamp) -> bool:
        """Whether the bytes written in order are the file ``file_id`` under timestamp ``ts``."""
        return fileid.matches(self.digest(), ts, file_id)

    def content_id(self, ts: int) -> str:
        """The id the bytes written in order have under timestamp ``ts`` (for a push)."""
        h = self.digest().copy()
        h.update(str(ts).encode())
        return h.hexdigest()

    def follow(self, ready: Callable[[int], int], end: int) -> hashlib._Hash:
        """sha256 of bytes ``0..end`` read back in order as they land, however they are
        written: ``ready(pos)`` blocks until bytes from ``pos`` on are on disk and says how many
        (it raises to stop). For a thread of its own."""
        h = hashlib.sha256()
        buf = memoryview(bytearray(HASH_BLOCK))
        pos = 0
        while pos < end:
            n = self._read(buf[: min(ready(pos), HASH_BLOCK, end - pos)], pos)
            h.update(buf[:n])
            pos += n
        return h

    def hash_span(self, h: hashlib._Hash, offset: int, length: int) -> None:
        """Feed bytes ``offset..offset+length`` to ``h`` (blocking: for a thread)."""
        buf = memoryview(bytearray(HASH_BLOCK))
        end = offset + length
        while offset < end:
            n = self._read(buf[: min(HASH_BLOCK, end - offset)], offset)
            h.update(buf[:n])
            offset += n

    def _read(self, view: memoryview, offset: int) -> int:
        try:
            n = os.preadv(self.fd, [view], offset)
        except OSError as exc:
            raise _disk_error("read", exc) from exc
        if n <= 0:
            raise StorageError("the partial file is shorter than it should be")
        return n

    # -- the end ------------------------------------------------------------------------------
    def commit(self, file_id: str, ts: Timestamp) -> Path:
        """Verify the bytes written in order against ``file_id`` and adopt them (blocking).
        Raises VerificationError (and aborts) when they do not match."""
        if not fileid.is_file_id(file_id) or not self.matches(file_id, ts):
            self.abort()
            raise VerificationError(f"bytes do not match file id {file_id[:16]}…")
        return self.adopt(file_id)

    def adopt(self, file_id: str) -> Path:
        """Publish the file, verified by the caller, as the blob of ``file_id``: fsync, rename,
        fsync of the blob directory (blocking). On an error the file is removed."""
        try:
            if self._syncing is not None:
                self._syncing.join()
            os.fsync(self.fd)
            self._close()
            self.committed = self._publish(self.path, file_id)
        except OSError as exc:
            self.abort()
            raise _disk_error("store", exc) from exc
        except BaseException:
            self.abort()
            raise
        return self.committed

    def _close(self) -> None:
        if self._follower is not None:
            self._follower.stop()
            self._follower = None
        if self._syncing is not None:
            self._syncing.join()
            self._syncing = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Close the file and keep it (a resumable download's bytes)."""
        self._close()

    def abort(self) -> None:
        """Close and remove the file (unless it was adopted)."""
        if self.committed is None:
            self.aborted = True
        self._close()
        if self.committed is None:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> PartialFile:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.committed is None:
            self.abort()
