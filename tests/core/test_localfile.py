"""A file pushed by its path (``core/localfile.py``): only a regular file is opened (a pipe's open
never waits), the file meant or none, its bytes copied whole into a real partial file, and a file
that changes while it is read is refused; and the node's push of such a path keeps nothing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.core.harness import Harness
from treedrive.core import localfile
from treedrive.core.localfile import Identity
from treedrive.store.blobs import BlobStore

MiB = 1 << 20


def payload(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def test_the_bytes_copied_are_the_files_and_hashed_as_they_are(tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    data = payload(src, 3 * MiB + 17)  # several blocks, not a whole number of them
    told: list[int] = []
    with (
        localfile.open_source(src, Identity.of(src.stat())) as source,
        BlobStore(tmp_path / "blobs").writer() as sink,
    ):
        source.copy_into(sink, told.append)
        assert sink.size == len(data)
        assert sink.digest().hexdigest() == hashlib.sha256(data).hexdigest()
        assert sink.path.read_bytes() == data
    assert told[-1] == len(data)
    assert told == sorted(told)


def test_only_a_regular_file_and_only_the_one_meant_is_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(localfile.NotRegular, match="is not a regular file"):
        localfile.open_source(fifo)  # returns at once: no writer is waited for
    with pytest.raises(localfile.NotRegular):
        localfile.open_source(tmp_path)
    with pytest.raises(localfile.Unreadable, match="No such file or directory"):
        localfile.open_source(tmp_path / "missing")
    with pytest.raises(localfile.Unreadable, match="null"):
        localfile.open_source(Path(f"{tmp_path}/a\x00b"))

    src = tmp_path / "f.bin"
    payload(src, 100)
    meant = Identity.of(src.stat())
    other = tmp_path / "g.bin"
    payload(other, 100)
    with pytest.raises(localfile.NotTheFile):
        localfile.open_source(other, meant)  # same size, another inode
    with pytest.raises(localfile.NotTheFile):
        localfile.open_source(src, Identity(meant.dev, meant.ino, 101, meant.mtime_ns))
    localfile.open_source(src, meant).close()


@pytest.mark.parametrize("change", ["append", "overwrite", "truncate"])
def test_a_file_that_changes_while_it_is_read_is_refused(tmp_path: Path, change: str) -> None:
    src = tmp_path / "f.bin"
    payload(src, 4 * MiB)
    # a minute old: a write now gives it another time (the clock of file times is coarse)
    os.utime(src, (src.stat().st_atime - 60, src.stat().st_mtime - 60))

    def meddle(done: int) -> None:
        if done >= 4 * MiB:
            return
        if change == "append":
            with src.open("ab") as f:
                f.write(b"x")
        elif change == "overwrite":
            with src.open("r+b") as f:
                f.write(b"changed")
        else:
            os.truncate(src, 2 * MiB)

    with (
        localfile.open_source(src) as source,
        BlobStore(tmp_path / "blobs").writer() as sink,
        pytest.raises(localfile.Changed, match="while it was read; push it again"),
    ):
        source.copy_into(sink, meddle)


def test_a_stopped_copy_says_so(tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    payload(src, 3 * MiB)
    with localfile.open_source(src) as source, BlobStore(tmp_path / "blobs").writer() as sink:
        with pytest.raises(localfile.Stopped):
            source.copy_into(sink, None, lambda: sink.size > 0)
        assert 0 < sink.size < 3 * MiB


async def test_a_push_of_what_cannot_be_pushed_keeps_nothing(h: Harness, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(localfile.NotRegular):
        await h.node.push(fifo)
    src = tmp_path / "f.bin"
    payload(src, 3 * MiB)

    def grow(done: int) -> None:
        with src.open("ab") as f:
            f.write(b"more")

    with localfile.open_source(src) as source, pytest.raises(localfile.Changed):
        await h.node.sharing.push_source(source, "f.bin", progress=grow)
    assert h.partials() == []
    assert h.node.files() == []

    pushed = await h.node.push_path(src)  # as it is now
    assert pushed.meta.file_size * MiB == src.stat().st_size
    assert h.partials() == []
