"""Bytes from a socket to a file at an offset, moved by the kernel: ``splice(2)`` from the socket
into a pipe, then from the pipe into the file (Linux). The bytes never pass through user space:
one copy (into the page cache) where ``recv_into`` + ``pwrite`` make two.

Each thread keeps a pipe of its own (1 MiB where the system allows), empty between moves: a
socket is only ever spliced into an empty pipe, so that splice never waits for room that only
this thread could make. Where splice cannot be used (another OS, or a socket or file that it
refuses with EINVAL or ENOSYS), the bytes are read into a buffer and written, as before; that is
decided once, for the process.

Errors keep their sides: the socket's (a timeout under ``SO_RCVTIMEO`` is EAGAIN, a reset, ...)
are raised as they are, as ``recv_into`` would; the disk's become
:class:`~treedrive.core.errors.StorageError`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading

from treedrive.core.errors import StorageError

PIPE_SIZE = 1024 * 1024
"""Bytes a pipe is asked to hold (``F_SETPIPE_SZ``); the kernel's default where refused."""
BUFFER = 1024 * 1024
"""Bytes read at a time where splice is not used."""
UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})

enabled = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
"""Whether moves use splice (False once it was refused; tests set it to force the fallback)."""

_local = threading.local()


def disk_error(what: str, exc: OSError) -> StorageError:
    return StorageError(f"cannot {what} the file on disk: {exc.strerror or exc}")


class _Unsupported(Exception):
    """splice refused this socket or file; ``data`` holds what was already taken off the
    socket (into the pipe) and must still be written."""

    def __init__(self, data: bytes) -> None:
        self.data = data


class _Pipe:
    """A thread's pipe, closed with the thread (or when a failed move left bytes in it)."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        with contextlib.suppress(OSError):  # over the user's pipe quota: the default size
            fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        try:
            self.capacity = fcntl.fcntl(self.w, fcntl.F_GETPIPE_SZ)
        except OSError:
            self.capacity = 64 * 1024

    def close(self) -> None:
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.r = self.w = -1

    def __del__(self) -> None:
        if self.r >= 0:
            self.close()


def _pipe() -> _Pipe:
    pipe: _Pipe | None = getattr(_local, "pipe", None)
    if pipe is None:
        pipe = _local.pipe = _Pipe()
    return pipe


def _drop_pipe() -> None:
    pipe: _Pipe | None = getattr(_local, "pipe", None)
    _local.pipe = None
    if pipe is not None:
        pipe.close()


def _drain(pipe: _Pipe, n: int) -> bytes:
    """The ``n`` bytes in ``pipe`` (splice would not write them)."""
    data = bytearray()
    while len(data) < n:
        chunk = os.read(pipe.r, n - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _splice(sock_fd: int, fd: int, offset: int, count: int) -> int:
    pipe = _pipe()
    try:
        n = os.splice(sock_fd, pipe.w, min(count, pipe.capacity))
    except OSError as exc:
        if exc.errno in UNSUPPORTED:
            raise _Unsupported(b"") from exc
        raise  # the socket's: a timeout, a reset
    left = n
    try:
        while left:
            try:
                moved = os.splice(pipe.r, fd, left, offset_dst=offset + n - left)
            except OSError as exc:
                if exc.errno in UNSUPPORTED and left == n:
                    raise _Unsupported(_drain(pipe, left)) from exc
                raise disk_error("write", exc) from exc
            if moved <= 0:
                raise StorageError("cannot write the file on disk: nothing was written")
            left -= moved
    except BaseException:
        _drop_pipe()  # it may still hold bytes of this move
        raise
    return n


def write_at(fd: int, offset: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` at ``offset`` of ``fd`` (StorageError on a disk error)."""
    view = memoryview(data)
    try:
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n
    except OSError as exc:
        raise disk_error("write", exc) from exc


def _copy(sock_fd: int, fd: int, offset: int, count: int) -> int:
    buf: bytearray | None = getattr(_local, "buffer", None)
    if buf is None:
        buf = _local.buffer = bytearray(BUFFER)
    view = memoryview(buf)[: min(count, BUFFER)]
    n = os.readv(sock_fd, [view])  # the socket's errors, as they are
    write_at(fd, offset, view[:n])
    return n


def move(sock_fd: int, fd: int, offset: int, count: int) -> int:
    """Move up to ``count`` bytes that the socket ``sock_fd`` has (waiting for some as the
    socket does: blocking, ``SO_RCVTIMEO``) to ``fd`` at ``offset``; how many (0: the socket
    is at its end)."""
    global enabled  # decided once: splice is refused for every socket and file alike
    if count <= 0:
        return 0
    if enabled:
        try:
            return _splice(sock_fd, fd, offset, count)
        except _Unsupported as refused:
            enabled = False
            if refused.data:
                write_at(fd, offset, refused.data)
                return len(refused.data)
    return _copy(sock_fd, fd, offset, count)
