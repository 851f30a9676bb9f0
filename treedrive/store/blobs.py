"""File contents, one blob per file id, written atomically.

Bytes arrive into a temp file under ``partial/``; only when the whole verifies against its id is it
fsynced and renamed to ``blobs/<file_id>``. A half-received file is never visible as a blob, and a
crash leaves only temp files, which the next start removes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from treedrive.core import fileid
from treedrive.core.model import Timestamp

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024


class VerificationError(Exception):
    """The bytes received do not hash to the id they were sent under."""


class BlobWriter:
    """A temp file being filled; ``commit`` verifies and publishes it, ``abort`` removes it."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        fd, name = tempfile.mkstemp(prefix="in-", suffix=".part", dir=store.partial_dir)
        self.path = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self.committed: Path | None = None

    def write(self, data: bytes | memoryview) -> None:
        if self._file is None:
            raise ValueError("blob writer is closed")
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def matches(self, file_id: str, ts: Timestamp) -> bool:
        return fileid.matches(self._hash, ts, file_id)

    def content_id(self, ts: int) -> str:
        """The id the bytes written so far have under timestamp ``ts`` (for a push)."""
        h = self._hash.copy()
        h.update(str(ts).encode())
        return h.hexdigest()

    def commit(self, file_id: str, ts: Timestamp) -> Path:
        """Verify against ``file_id`` and move into place. Raises VerificationError (and aborts)."""
        if self._file is None:
            raise ValueError("blob writer is closed")
        if not fileid.is_file_id(file_id) or not self.matches(file_id, ts):
            self.abort()
            raise VerificationError(f"bytes do not match file id {file_id[:16]}…")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            target = self._store.path(file_id)
            os.replace(self.path, target)
            self._store.fsync_dir()
        except BaseException:
            self.abort()
            raise
        self.committed = target
        return target

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.committed is None:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.committed is None:
            self.abort()


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

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

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

    def range_path(self, file_id: str) -> Path:
        """The partial file of a ranged (resumable) download of ``file_id``."""
        if not fileid.is_file_id(file_id):
            raise ValueError(f"not a file id: {file_id!r}")
        return self.partial_dir / f"{file_id}.range"

    def adopt(self, path: Path, file_id: str) -> Path:
        """Publish a complete, verified partial file as the blob of ``file_id``."""
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
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
