"""The partial file: the one owner of bytes on their way into the blob store (real files)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from treedrive.core import fileid
from treedrive.core.errors import StorageError, VerificationError
from treedrive.store import BlobStore
from treedrive.store import partial as partial_mod

MiB = 1024 * 1024


def payload(n: int, seed: int = 1) -> bytes:
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:n])


def test_written_in_order_is_hashed_behind_the_writer_and_adopted(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    data = payload(3 * MiB + 17)
    ts = 1_700_000_000
    expected = fileid.compute_file_id(data, ts)
    p = blobs.writer()
    for i in range(0, len(data), 100_000):
        p.write(data[i : i + 100_000])
    assert p.size == len(data)
    assert p.content_id(ts) == expected
    assert p.matches(expected, ts)
    path = p.commit(expected, ts)
    assert path == blobs.path(expected)
    assert path.read_bytes() == data
    assert list(blobs.partial_dir.iterdir()) == []


def test_bytes_that_do_not_match_are_refused_and_removed(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    p = blobs.writer()
    p.write(b"not what was announced")
    with pytest.raises(VerificationError):
        p.commit("0" * 64, 5)
    assert not p.path.exists()
    assert blobs.ids() == set()


def test_background_syncs_while_filling_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(partial_mod, "SYNC_EVERY", MiB)
    synced: list[int] = []
    real = os.fdatasync

    def spy(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(partial_mod.os, "fdatasync", spy)
    blobs = BlobStore(tmp_path)
    data = payload(4 * MiB)
    p = blobs.writer()
    for i in range(0, len(data), MiB // 2):
        p.write(data[i : i + MiB // 2])
    p.commit(fileid.compute_file_id(data, 9), 9)
    assert synced  # at least one sync ran behind the writer


def test_ranges_written_from_threads_are_followed_in_order(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    data = payload(8 * MiB, seed=2)
    file_id = "a" * 64
    p = blobs.partial(file_id, keep=False)
    p.resize(len(data))
    cond = threading.Condition()
    have = [0, 0, 0, 0]
    quarter = len(data) // 4

    def ready(pos: int) -> int:
        c = pos // quarter
        with cond:
            while have[c] <= pos - c * quarter:
                cond.wait()
            return c * quarter + have[c] - pos

    def fill(c: int) -> None:
        start = c * quarter
        for off in range(0, quarter, 256 * 1024):
            p.write_at(start + off, data[start + off : start + off + 256 * 1024])
            with cond:
                have[c] = off + 256 * 1024
                cond.notify_all()

    result: list[hashlib._Hash] = []
    hasher = threading.Thread(target=lambda: result.append(p.follow(ready, len(data))))
    hasher.start()
    writers = [threading.Thread(target=fill, args=(c,)) for c in (3, 1, 2, 0)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    hasher.join(10)
    assert result
    assert result[0].digest() == hashlib.sha256(data).digest()
    h = hashlib.sha256()
    p.hash_span(h, 0, len(data))
    assert h.digest() == hashlib.sha256(data).digest()
    p.adopt(file_id)
    assert blobs.path(file_id).read_bytes() == data
    assert not blobs.range_path(file_id).exists()


def test_a_resumed_partial_file_keeps_its_bytes(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    file_id = "b" * 64
    p = blobs.partial(file_id, keep=False)
    p.write_at(0, b"first run")
    p.sync()
    p.close()
    again = blobs.partial(file_id, keep=True)
    h = hashlib.sha256()
    again.hash_span(h, 0, 9)
    assert h.digest() == hashlib.sha256(b"first run").digest()
    with pytest.raises(ValueError, match="offsets"):
        again.write(b"x")  # a resumed file is written at offsets only
    again.abort()
    assert not blobs.range_path(file_id).exists()


def test_a_full_disk_is_a_storage_error(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    p = partial_mod.PartialFile(Path("/dev/full"), lambda path, fid: path, keep=True)
    with pytest.raises(StorageError, match="cannot write"):
        p.write_at(0, b"x" * 4096)
    p.close()


def test_a_closed_partial_file_refuses_writes(tmp_path: Path) -> None:
    p = BlobStore(tmp_path).writer()
    p.abort()
    with pytest.raises(ValueError, match="closed"):
        p.write(b"late")
    with pytest.raises(ValueError, match="closed"):
        p.write_at(0, b"late")
