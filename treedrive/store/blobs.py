"""File contents, one blob per file id, written atomically.

Bytes arrive into a :class:`~treedrive.store.partial.PartialFile` under ``partial/``; only when
the whole verifies against its id is it fsynced and renamed to ``blobs/<file_id>``. A
half-received file is never visible as a blob, and a crash leaves only temp files, which the next
start removes (but for the partial files of resumable downloads).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from treedrive.core import fileid
from treedrive.core.errors import VerificationError
from treedrive.store.partial import PartialFile

log = logging.getLogger(__name__)

__all__ = ["BlobStore", "BlobWriter", "PartialFile", "VerificationError"]

BlobWriter = PartialFile
"""The old name of a partial file filled in order."""

CHUNK = 1024 * 1024


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.blob_dir = root / "blobs"
        self.partial_dir = root / "partial"
        # Owner-only, like every file in them (mkstemp makes 0600 files; renames keep it).
        self.blob_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.partial_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path(self, file_id: str) -> Path:
        if not fileid.is_file_id(file_id):
            raise ValueError(f"not a file id: {file_id!r}")
        return self.blob_dir / file_id

    def has(self, file_id: str) -> bool:
        return fileid.is_file_id(file_id) and self.path(file_id).is_file()

    def size(self, file_id: str) -> int:
        return self.path(file_id).stat().st_size

    def writer(self) -> PartialFile:
        """A new temp file under ``partial/``, filled in order (a push, an upload, a classic
        answer)."""
        fd, name = tempfile.mkstemp(prefix="in-", suffix=".part", dir=self.partial_dir)
        os.close(fd)
        return PartialFile(Path(name), self.publish)

    def partial(self, file_id: str, *, keep: bool) -> PartialFile:
        """The partial file of a ranged (resumable) download of ``file_id``; ``keep``: with
        the bytes an earlier run left in it."""
        return PartialFile(self.range_path(file_id), self.publish, keep=keep)

    def open(self, file_id: str) -> BinaryIO:
        return self.path(file_id).open("rb")

    def read_chunks(self, file_id: str, chunk: int = CHUNK) -> Iterator[bytes]:
        with self.open(file_id) as f:
            while block := f.read(chunk):
                yield block

    def delete(self, file_id: str) -> bool:
        try:
            self.path(file_id).unlink()
        except FileNotFoundError:
            return False
        return True

    def ids(self) -> set[str]:
        return {p.name for p in self.blob_dir.iterdir() if fileid.is_file_id(p.name)}

    def clean_partials(self, keep: frozenset[str] = frozenset()) -> int:
        """Remove temp files a crash left behind, but for the partial files of the resumable
        downloads in ``keep`` (file ids); returns how many were removed."""
        n = 0
        for p in self.partial_dir.iterdir():
            resumable = p.suffix == ".range" and p.stem in keep
            if p.suffix in (".part", ".range") and not resumable:
                p.unlink(missing_ok=True)
                n += 1
        return n

    def free(self) -> int:
        """Bytes free on the disk that partial files and blobs are written to."""
        return shutil.disk_usage(self.partial_dir).free

    def range_path(self, file_id: str) -> Path:
        """The partial file of a ranged (resumable) download of ``file_id``."""
        if not fileid.is_file_id(file_id):
            raise ValueError(f"not a file id: {file_id!r}")
        return self.partial_dir / f"{file_id}.range"

    def publish(self, path: Path, file_id: str) -> Path:
        """Move a complete, verified and synced partial file into place as ``file_id``'s blob."""
        target = self.path(file_id)
        os.replace(path, target)
        self.fsync_dir()
        return target

    def fsync_dir(self) -> None:
        fd = os.open(self.blob_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
