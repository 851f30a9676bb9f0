"""A file on this node's own machine that the user pushes by its path (the shell's ``push``; the
API's push by path, ``POST /api/v1/pushes``): opened once, checked to be a regular file (and, when
the caller says which file it means, that very file), copied into a partial file, and checked
again at the end. A file that changed while it was read is refused: the bytes pushed are the bytes
hashed (the partial file's own), and they are the file as it was at one moment.

Errors say which kind they are, for the API to answer each its own way: :class:`Unreadable` (this
node cannot open or read it: not there for it, no permission; a client on this machine may still
send the bytes itself), :class:`NotTheFile` (at that path this node sees another file than the one
meant), :class:`NotRegular` and :class:`Changed`. Nothing is kept of a refused push.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from treedrive.core.errors import NodeError
from treedrive.core.ports import FileSink


class SourceError(NodeError):
    """The file at the path given cannot be pushed from there (see the subclasses)."""


class Unreadable(SourceError):
    """This node cannot open or read the file (not there for it, no permission, ...)."""


class NotTheFile(SourceError):
    """The file this node sees at the path is not the one the caller means."""


class NotRegular(SourceError):
    """The path names no regular file (a folder, a pipe, a device)."""


class Changed(SourceError):
    """The file changed while it was read."""


class Stopped(SourceError):
    """Whoever asked for the push is gone (the copy was stopped)."""


@dataclass(frozen=True)
class Identity:
    """Which file, as ``stat`` says: its device and inode, size and modification time (ns)."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _state(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What changes when a file is written to, truncated or replaced in place."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _why(exc: OSError) -> str:
    return str(exc.strerror or exc)


class Source:
    """An opened regular file to push (see the module): ``size`` bytes, read once by
    :meth:`copy_into`. Close it (or use it in a ``with``)."""

    def __init__(self, path: Path, fd: int, st: os.stat_result) -> None:
        self.path = path
        self.fd = fd
        self.size = st.st_size
        self._before = _state(st)

    def copy_into(
        self,
        sink: FileSink,
        progress: Callable[[int], None] | None = None,
        stopped: Callable[[], bool] | None = None,
    ) -> None:
        """Append the whole file to ``sink`` (blocking: a thread), moved in the kernel where it
        can be (``append_from``, as bytes from a socket are); ``progress`` is told the bytes
        copied so far, ``stopped`` asked between blocks. Then check the file is as it was:
        :class:`Changed` if not (the caller drops ``sink``). A disk error of ``sink`` is its
        StorageError."""
        left = self.size
        while left > 0:
            if stopped is not None and stopped():
                raise Stopped(f"the push of {self.path} was called off")
            try:
                n = sink.append_from(self.fd, left)
            except OSError as exc:  # the source's (a disk error is a StorageError)
                raise Unreadable(f"cannot read {self.path}: {_why(exc)}") from exc
            if n <= 0:
                raise Changed(f"{self.path} got shorter while it was read; push it again")
            left -= n
            if progress is not None:
                progress(self.size - left)
        try:
            more = os.pread(self.fd, 1, self.size)
            after = os.fstat(self.fd)
        except OSError as exc:
            raise Unreadable(f"cannot read {self.path}: {_why(exc)}") from exc
        if more or _state(after) != self._before:
            raise Changed(f"{self.path} changed while it was read; push it again")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_source(path: Path, expect: Identity | None = None) -> Source:
    """Open the regular file at ``path`` to push it (blocking: a thread); ``expect``: the file
    the caller means, which the one found there must be (:class:`NotTheFile` otherwise). Never
    opens what is not a regular file (a pipe's open could wait forever, a device's do
    anything)."""
    try:
        found = os.stat(path)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        why = _why(exc) if isinstance(exc, OSError) else str(exc)
        raise Unreadable(f"cannot read {path}: {why}") from exc
    if not stat.S_ISREG(found.st_mode):
        raise NotRegular(f"{path} is not a regular file")
    try:
        # O_NONBLOCK: should a pipe have taken its place since, the open does not wait for it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise Unreadable(f"cannot read {path}: {_why(exc)}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegular(f"{path} is not a regular file")
        if expect is not None and Identity.of(st) != expect:
            raise NotTheFile(f"the file this node sees at {path} is not the one meant")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return Source(path, fd, st)
