"""Reading a file to send it, for the encrypted send (``SecureStream.send_file``), which cannot
hand the file to the kernel as ``sendfile`` does: :data:`ReadAt`, and :class:`FileReader` for a
blob. Partial files are read by the store (their ``Tail``), never here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

ReadAt = Callable[[memoryview, int], int]
"""Reads a file into the view from the offset; how many bytes (0: the file ends there)."""


class FileReader:
    """Reads a file opened for one upload alone (its own file position, unbuffered) at the
    offsets the upload asks for, in order: one ``readinto`` per piece, a seek only when an
    offset is not where the last read ended (what ``sendfile`` does in the kernel for a plain
    connection). Partial files are read by the store (their ``Tail``), never here."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb", buffering=0)
        self._at = 0

    def fileno(self) -> int:
        return self._file.fileno()

    def __call__(self, view: memoryview, offset: int) -> int:
        if offset != self._at:
            self._file.seek(offset)
        n = self._file.readinto(view) or 0
        self._at = offset + n
        return n

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
