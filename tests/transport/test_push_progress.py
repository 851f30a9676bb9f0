"""The receiving side of a push, as the transport reports it (issue 9, point 3): when a pushed
FILE_DATA's bytes begin to arrive, ``track_push`` is called with the record, the sender and the
size when known; ``update`` follows the bytes up to the whole file, which is handed to
``handle_pushed_file`` with its progress; a body cut short is ``finish(False, …)`` here.

Real sockets and a real :class:`TcpNetwork` on both ends (the pusher's own ``push_file``, or a
plain socket for what a stranger sends); the handler is a recording stand-in for the node.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from treedrive.core.fileid import compute_file_id
from treedrive.core.messages import FileData, Message
from treedrive.core.model import MEGABYTE, FileMeta
from treedrive.core.ports import FileSink, Progress
from treedrive.transport.net import NetLimits, TcpNetwork

pytestmark = pytest.mark.timeout(30)

SIZE = 3 * 1024 * 1024 + 12345  # more than one progress step (1 MiB)
TS = 1750000000


class Sink:
    """A real file the pushed bytes go to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = path.open("wb", buffering=0)
        self.size = 0
        self.aborted = False

    def write(self, data: bytes | memoryview) -> None:
        self.f.write(data)
        self.size += len(data)

    def append_from(self, sock_fd: int, count: int) -> int:
        data = os.read(sock_fd, min(count, 1024 * 1024))
        self.write(data)
        return len(data)

    def abort(self) -> None:
        self.aborted = True
        self.f.close()


@dataclass
class Recorded:
    """A Progress that keeps every call."""

    updates: list[int] = field(default_factory=list)
    finished: list[tuple[bool, str | None]] = field(default_factory=list)

    def update(self, done: int) -> None:
        self.updates.append(done)

    def finish(self, ok: bool, error: str | None = None) -> None:
        self.finished.append((ok, error))


@dataclass
class Tracked:
    meta: FileMeta
    source: str
    sender: str | None
    size: int | None
    progress: Recorded
    pushed: tuple[FileData, bytes | None, Progress | None] | None = None
    """What handle_pushed_file got: the header, the bytes, the progress."""


class Handler:
    """The node's side, recorded: every push tracked, and what arrived whole."""

    def __init__(self, peer_id: str, tmp: Path) -> None:
        self.peer_id = peer_id
        self.features = frozenset({"raw-range", "raw-push"})
        self.tmp = tmp
        self.tracked: list[Tracked] = []
        self.untracked: list[FileData] = []
        self._sinks = 0

    def open_sink(self) -> FileSink:
        self._sinks += 1
        return Sink(self.tmp / f"{self.peer_id}-{self._sinks}")

    async def handle_message(self, message: Message, source: str) -> None:
        pass

    def track_push(
        self, meta: FileMeta, source: str, sender: str | None, size: int | None
    ) -> Progress:
        self.tracked.append(Tracked(meta, source, sender, size, Recorded()))
        return self.tracked[-1].progress

    async def handle_pushed_file(
        self,
        header: FileData,
        sink: FileSink | None,
        source: str,
        progress: Progress | None = None,
    ) -> None:
        data = None
        if sink is not None:
            assert isinstance(sink, Sink)
            sink.abort()
            data = sink.path.read_bytes()
        mine = [t for t in self.tracked if t.progress is progress]
        if not mine:
            self.untracked.append(header)
            return
        mine[0].pushed = (header, data, progress)
        assert progress is not None
        progress.finish(True)  # what the node does once it stored the file

    def file_to_serve(self, file_id: str) -> tuple[FileMeta, Path] | None:
        return None

    def track_upload(self, meta: FileMeta, peer: str, size: int) -> Progress:
        return Recorded()

    def track_range(self, meta: FileMeta, peer: str, download: str | None, size: int) -> Progress:
        return Recorded()


@dataclass
class Ends:
    pusher: TcpNetwork
    receiver: TcpNetwork
    handler: Handler
    port: int


@pytest.fixture
async def ends(tmp_path: Path) -> AsyncIterator[Ends]:
    receiver, pusher = TcpNetwork("127.0.0.1", 0, NetLimits()), TcpNetwork("127.0.0.1", 0)
    handler = Handler("receiver", tmp_path)
    try:
        _, port = await receiver.start(handler)
        await pusher.start(Handler("pusher", tmp_path))
        yield Ends(pusher, receiver, handler, port)
    finally:
        await pusher.close()
        await receiver.close()


def a_file(tmp_path: Path, size: int = SIZE) -> tuple[FileMeta, Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "source.bin"
    path.write_bytes(data)
    meta = FileMeta(compute_file_id(data, TS), "pushed.bin", size / MEGABYTE, "pusher", TS)
    return meta, path, data


def send(port: int, data: bytes, *, half: bool = False) -> None:
    """Write ``data`` on a new connection and close it (``half``: only its first half)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data[: len(data) // 2] if half else data)


def raw_header(meta: FileMeta, length: int, **ext: Any) -> bytes:
    treedrive = {"raw": True, "offset": 0, "length": length, "size": length, **ext}
    message = {"type": "FILE_DATA", **meta.wire(), "data": None, "treedrive": treedrive}
    return json.dumps(message).encode()


async def whole(handler: Handler) -> Tracked:
    """The last push tracked, once it was handed over whole."""
    last = await wait_for(lambda: handler.tracked and handler.tracked[-1].pushed and handler)
    return last.tracked[-1]


def check_updates(tracked: Tracked, size: int) -> None:
    updates = tracked.progress.updates
    assert updates, "no progress while the bytes arrived"
    assert updates == sorted(updates)
    assert updates[-1] == size
    assert len(updates) >= 2  # reported as the bytes came, not only at the end
    assert len(updates) < 1000  # not per chunk


# -- whole pushes --------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "hex"])
async def test_a_push_is_tracked_from_its_first_bytes_to_the_whole_file(
    ends: Ends, tmp_path: Path, raw: bool
) -> None:
    meta, path, data = a_file(tmp_path)
    assert await ends.pusher.push_file("127.0.0.1", ends.port, meta, path, raw=raw)
    tracked = await whole(ends.handler)

    assert len(ends.handler.tracked) == 1
    assert tracked.meta == meta
    assert tracked.source.startswith("127.0.0.1:")
    # A raw push says who pushes and how many bytes come; a classic hex push says neither.
    assert (tracked.sender, tracked.size) == (("pusher", SIZE) if raw else (None, None))
    check_updates(tracked, SIZE)
    assert tracked.pushed is not None
    header, got, progress = tracked.pushed
    assert header.meta == meta
    assert got == data
    assert progress is tracked.progress
    assert tracked.progress.finished == [(True, None)]  # the handler's, not the transport's


async def test_a_hex_push_that_sends_its_data_first_is_tracked_once_whole(
    ends: Ends, tmp_path: Path
) -> None:
    """No record came before the bytes: nothing to show while they arrive, so the push is
    tracked only once whole (its record is then known)."""
    meta, _, data = a_file(tmp_path, 200_000)
    body = json.dumps({"data": data.hex(), "type": "FILE_DATA", **meta.wire()}).encode()
    await asyncio.to_thread(send, ends.port, body)
    tracked = await whole(ends.handler)
    assert (tracked.meta, tracked.sender, tracked.size) == (meta, None, len(data))
    assert tracked.progress.updates == [len(data)]
    assert tracked.pushed is not None
    assert tracked.pushed[1] == data


async def test_a_hex_push_whose_record_before_data_is_not_valid_is_not_tracked_early(
    ends: Ends, tmp_path: Path
) -> None:
    """The keys before ``data`` lack an owner: not a record, so not tracked while the bytes
    come (the owner after ``data`` completes it: tracked once whole)."""
    meta, _, data = a_file(tmp_path, 200_000)
    record = meta.wire()
    owner = record.pop("file_owner")
    head = json.dumps({"type": "FILE_DATA", **record, "data": data.hex()})[:-1]
    body = (head + ', "file_owner": ' + json.dumps(owner) + "}").encode()
    await asyncio.to_thread(send, ends.port, body)
    tracked = await whole(ends.handler)
    assert tracked.meta == meta
    assert tracked.progress.updates == [len(data)]


# -- bodies cut short or refused -----------------------------------------------------------------
async def test_a_raw_push_cut_short_finishes_its_progress_failed(
    ends: Ends, tmp_path: Path
) -> None:
    meta, _, data = a_file(tmp_path)
    header = raw_header(meta, len(data), **{"from": "mallory"})
    await asyncio.to_thread(send, ends.port, header + data[: len(data) // 2])
    tracked = await wait_for(lambda: ends.handler.tracked and ends.handler.tracked[-1])
    await wait_for(lambda: tracked.progress.finished)
    assert (tracked.sender, tracked.size) == ("mallory", len(data))
    [(ok, why)] = tracked.progress.finished
    assert ok is False
    assert why
    assert "closed" in why
    assert tracked.pushed is None
    assert not tracked.progress.updates or tracked.progress.updates[-1] < len(data)


async def test_a_hex_push_cut_short_finishes_its_progress_failed(
    ends: Ends, tmp_path: Path
) -> None:
    meta, _, data = a_file(tmp_path)
    body = json.dumps({"type": "FILE_DATA", **meta.wire(), "data": data.hex()}).encode()
    await asyncio.to_thread(send, ends.port, body, half=True)
    tracked = await wait_for(lambda: ends.handler.tracked and ends.handler.tracked[-1])
    await wait_for(lambda: tracked.progress.finished)
    assert (tracked.meta, tracked.sender, tracked.size) == (meta, None, None)
    [(ok, why)] = tracked.progress.finished
    assert ok is False
    assert why
    assert "truncated" in why
    assert tracked.pushed is None
    assert tracked.progress.updates  # bytes had arrived before it was cut


async def test_a_raw_push_too_slow_finishes_its_progress_failed(tmp_path: Path) -> None:
    limits = NetLimits(min_push_rate=64 * 1024, push_rate_grace=0.5)
    receiver = TcpNetwork("127.0.0.1", 0, limits)
    handler = Handler("receiver", tmp_path)
    _, port = await receiver.start(handler)
    meta, _, _ = a_file(tmp_path, 10 * 1024 * 1024)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(raw_header(meta, 10 * 1024 * 1024) + b"\0" * 1000)
            tracked = await wait_for(lambda: handler.tracked and handler.tracked[-1])
            await wait_for(lambda: tracked.progress.finished, timeout=10)
    finally:
        await receiver.close()
    [(ok, why)] = tracked.progress.finished
    assert ok is False
    assert why
    assert "slowly" in why


@pytest.mark.parametrize("sender", ["", "a\x01b", "x" * 257, ["list"]], ids=repr)
async def test_a_raw_push_with_a_bad_from_is_dropped_untracked(
    ends: Ends, tmp_path: Path, sender: Any
) -> None:
    meta, _, data = a_file(tmp_path, 1000)
    header = raw_header(meta, len(data), **{"from": sender})
    await asyncio.to_thread(send, ends.port, header + data)
    await asyncio.sleep(0.2)
    # Then a good one on a new connection: handled, so the bad one was handled before.
    good = raw_header(meta, len(data), **{"from": 42})
    await asyncio.to_thread(send, ends.port, good + data)
    tracked = await whole(ends.handler)
    assert len(ends.handler.tracked) == 1
    assert tracked.sender == "42"  # a number reads as its text, like every peer id
    assert ends.handler.untracked == []
