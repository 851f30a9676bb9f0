"""Bytes moved from a socket to a partial file in the kernel (``splice_from``, ``append_from``):
real loopback TCP sockets, real files; the same through the fallback (read + write), forced or
decided by a file that splice refuses."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
from pathlib import Path

import pytest

from tests.conftest import fill
from tests.store.test_partial import payload
from treedrive.core import fileid
from treedrive.core.errors import StorageError
from treedrive.store import BlobStore, splicing

pytestmark = pytest.mark.timeout(30)

MiB = 1024 * 1024
TS = 1_700_000_000


@pytest.fixture(params=[True, False], ids=["splice", "fallback"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Each test both ways: splice (where the OS has it) and the forced fallback."""
    if request.param and not splicing.enabled:
        pytest.skip("no splice here")
    monkeypatch.setattr(splicing, "enabled", request.param)
    return bool(request.param)


def connected() -> tuple[socket.socket, socket.socket]:
    """Both ends of a loopback TCP connection: (sender, receiver)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = socket.create_connection(server.getsockname())
        receiver, _ = server.accept()
    return sender, receiver


def send_then_close(sock: socket.socket, data: bytes) -> threading.Thread:
    def run() -> None:
        with sock:
            sock.sendall(data)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_appended_from_a_socket_is_hashed_in_order_and_adopted(tmp_path: Path, mode: bool) -> None:
    blobs = BlobStore(tmp_path)
    data = payload(5 * MiB + 4321, seed=3)
    sender, receiver = connected()
    p = blobs.writer()
    p.write(data[:1000])  # bytes a codec had already read come first, written as before
    t = send_then_close(sender, data[1000:])
    with receiver:
        while p.size < len(data):
            assert p.append_from(receiver.fileno(), len(data) - p.size) > 0
        assert p.append_from(receiver.fileno(), 10) == 0  # the sender's end
    t.join()
    assert p.size == len(data)
    file_id = fileid.compute_file_id(data, TS)
    assert p.content_id(TS) == file_id
    assert p.commit(file_id, TS).read_bytes() == data


def test_ranges_from_two_sockets_land_at_their_offsets(tmp_path: Path, mode: bool) -> None:
    blobs = BlobStore(tmp_path)
    data = payload(6 * MiB, seed=4)
    half = len(data) // 2
    p = blobs.partial("c" * 64, keep=False)
    p.resize(len(data))
    written: list[list[int]] = [[], []]

    def receive(i: int, sock: socket.socket) -> None:
        got = 0
        with sock:
            while got < half:
                n = p.splice_from(sock.fileno(), i * half + got, half - got)
                assert n > 0
                got += n
                written[i].append(got)

    threads = []
    for i in (1, 0):
        sender, receiver = connected()
        threads.append(send_then_close(sender, data[i * half : (i + 1) * half]))
        threads.append(threading.Thread(target=receive, args=(i, receiver)))
        threads[-1].start()
    for t in threads:
        t.join()
    assert written[0][-1] == written[1][-1] == half
    h = hashlib.sha256()
    p.hash_span(h, 0, len(data))
    assert h.digest() == hashlib.sha256(data).digest()
    p.abort()


def test_a_socket_timeout_surfaces_and_the_next_move_is_clean(tmp_path: Path, mode: bool) -> None:
    sender, receiver = connected()
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 100_000))
    p = BlobStore(tmp_path).writer()
    with sender, receiver:
        with pytest.raises(BlockingIOError):  # EAGAIN under SO_RCVTIMEO, as recv_into raises
            p.append_from(receiver.fileno(), 1000)
        assert p.size == 0
        sender.sendall(b"late bytes")
        got = b""
        while len(got) < 10:
            n = p.append_from(receiver.fileno(), 10 - len(got))
            got = p.path.read_bytes()
            assert n > 0
    assert got == b"late bytes"
    assert p.content_id(TS) == fileid.compute_file_id(b"late bytes", TS)
    p.abort()


def test_a_full_disk_is_a_storage_error_and_leaves_the_pipe_empty(
    tmp_path: Path, small_disk: Path, mode: bool
) -> None:
    fill(small_disk / "filler")
    p = BlobStore(small_disk / "blobs").writer()
    sender, receiver = connected()
    with sender, receiver:
        sender.sendall(b"x" * 100_000)

        def until_full() -> None:
            while True:
                p.append_from(receiver.fileno(), 100_000)

        with pytest.raises(StorageError, match="No space left on device"):
            until_full()
        p.abort()
        # what was in flight is gone with the failed file: the next file gets only its bytes
        (small_disk / "filler").unlink()
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 100_000))

        def drain() -> None:  # what is left of the first file's bytes
            while True:
                receiver.recv(100_000)

        with pytest.raises(BlockingIOError):
            drain()
        sender.sendall(b"next")
        q = BlobStore(tmp_path).writer()
        while q.size < 4:
            q.append_from(receiver.fileno(), 4 - q.size)
    assert q.path.read_bytes() == b"next"
    q.abort()


def test_a_file_that_splice_refuses_falls_back_once_for_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not splicing.enabled:
        pytest.skip("no splice here")
    monkeypatch.setattr(splicing, "enabled", True)
    path = tmp_path / "appended"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)  # splice: EINVAL
    sender, receiver = connected()
    data = payload(300_000, seed=5)
    t = send_then_close(sender, data)
    got = 0
    with receiver:
        while got < len(data):
            n = splicing.move(receiver.fileno(), fd, got, len(data) - got)
            assert n > 0
            got += n
    t.join()
    os.close(fd)
    assert not splicing.enabled  # decided: every later move reads and writes
    assert path.read_bytes() == data  # the bytes splice had taken off the socket too
