"""Limits on what a holder can make this node take (issue 8, THREATS.md): a classic GET_FILE
answer larger than ``max_bytes`` or trickling under ``min_fetch_rate``, a ranged answer whose
header trickles or whose bytes trickle, and transfers that would keep the dial slots (and so
every outbound message) for as long as they last.

The holders are real socket servers that speak the protocol and say what they like; the
network is a real :class:`TcpNetwork`: no mock anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.e2e.helpers import Listener, Server, read_object
from treedrive.core.errors import TransferError
from treedrive.core.messages import Gossip
from treedrive.core.model import MEGABYTE
from treedrive.store.blobs import BlobStore, PartialFile
from treedrive.transport.net import NetLimits, TcpNetwork

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
FILE_ID = "ab" * 32
RECORD = {
    "file_name": "x.bin",
    "file_size": 0.001,
    "file_id": FILE_ID,
    "file_owner": "o",
    "file_timestamp": 1,
}


class FileSinkOnDisk:
    """A real file the fetched bytes go to (what the node's blob writer does, minus hashing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = path.open("wb", buffering=0)
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self.f.write(data)
        self.size += len(data)

    def abort(self) -> None:
        self.f.close()  # idempotent


class Holder(Server):
    """Answers every request with ``answer(conn, request)``, each on its own thread; counts
    the bytes it managed to send and whether its peer cut it off."""

    def __init__(self, answer: Callable[[socket.socket, dict[str, Any]], None]) -> None:
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self.cut_off = threading.Event()
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        threading.Thread(target=self._serve_one, args=(conn,), daemon=True).start()

    def _serve_one(self, conn: socket.socket) -> None:
        with conn:
            try:
                request = read_object(conn, timeout=5)
                if request is None:
                    return
                self.requests.append(request)
                self.answer(conn, request)
            except OSError:
                self.cut_off.set()


def classic_head() -> bytes:
    return json.dumps({"type": "FILE_DATA", **RECORD})[:-1].encode() + b',"data":"'


def flood(conn: socket.socket, _: dict[str, Any]) -> None:
    """64 MiB of hex for a record that says 0.001 MB."""
    conn.sendall(classic_head())
    block = b"00" * (256 * 1024)
    for _ in range(256):
        conn.sendall(block)
    conn.sendall(b'"}')


def trickle(every: float) -> Callable[[socket.socket, dict[str, Any]], None]:
    """Two hex digits every ``every`` seconds, for ever (the raw-range variant: one byte)."""

    def answer(conn: socket.socket, request: dict[str, Any]) -> None:
        ext = request.get("treedrive")
        if isinstance(ext, dict) and ext.get("raw"):
            size = 10 * MiB
            header = {
                "type": "FILE_DATA",
                **RECORD,
                "data": None,
                "treedrive": {"raw": True, "offset": 0, "length": size, "size": size},
            }
            conn.sendall(json.dumps(header).encode())
            piece = b"\0"
        else:
            conn.sendall(classic_head())
            piece = b"00"
        for _ in range(10_000):
            conn.sendall(piece)
            time.sleep(every)

    return answer


def steady(rate: float, size: int) -> Callable[[socket.socket, dict[str, Any]], None]:
    """A slow but honest classic holder: ``size`` bytes at ``rate`` bytes/s of hex."""

    def answer(conn: socket.socket, _: dict[str, Any]) -> None:
        conn.sendall(classic_head())
        sent = 0
        step = 512
        while sent < size:
            conn.sendall(b"00" * step)
            sent += step
            time.sleep(2 * step / rate)
        conn.sendall(b'"}')

    return answer


def header_trickle(conn: socket.socket, _: dict[str, Any]) -> None:
    """The start of an answer's header, one byte at a time, never finished."""
    for byte in b'{"type": "FILE_DATA", "file_name": "' + b"x" * 10_000:
        conn.sendall(bytes([byte]))
        time.sleep(0.05)


def silent(conn: socket.socket, _: dict[str, Any]) -> None:
    """Takes the request and says nothing."""
    time.sleep(20)


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[FileSinkOnDisk]:
    made = FileSinkOnDisk(tmp_path / "in")
    yield made
    made.abort()


@pytest.fixture
def holders() -> Iterator[Callable[..., Holder]]:
    made: list[Holder] = []

    def make(answer: Callable[[socket.socket, dict[str, Any]], None]) -> Holder:
        made.append(Holder(answer))
        return made[-1]

    yield make
    for holder in made:
        holder.close()


@contextlib.asynccontextmanager
async def network(**limits: Any) -> Any:
    net = TcpNetwork("127.0.0.1", 0, NetLimits(**limits))
    try:
        yield net
    finally:
        await net.close()


# -- classic GET_FILE ----------------------------------------------------------------------------
async def test_a_classic_answer_over_max_bytes_is_cut_off_before_it_is_written(
    holders: Callable[..., Holder], tmp_path: Path, sink: FileSinkOnDisk
) -> None:
    holder = holders(flood)
    cap = int(0.001 * MEGABYTE) + 10 * 1024  # the record's size and its tolerance
    async with network() as net:
        started = time.monotonic()
        with pytest.raises(TransferError, match="more than"):
            await net.dialer.fetch_file(
                "127.0.0.1", holder.port, FILE_ID, sink, None, max_bytes=cap
            )
        took = time.monotonic() - started
    assert sink.size <= cap
    assert (tmp_path / "in").stat().st_size <= cap
    assert took < 5.0
    assert holder.cut_off.wait(5), "the holder was not cut off"


async def test_a_classic_answer_within_max_bytes_arrives(
    holders: Callable[..., Holder], tmp_path: Path, sink: FileSinkOnDisk
) -> None:
    data = os.urandom(5000)

    def honest(conn: socket.socket, _: dict[str, Any]) -> None:
        conn.sendall(classic_head() + data.hex().encode() + b'"}')

    holder = holders(honest)
    async with network() as net:
        answer = await net.dialer.fetch_file(
            "127.0.0.1", holder.port, FILE_ID, sink, None, max_bytes=len(data)
        )
    assert answer.meta is not None
    assert (tmp_path / "in").read_bytes() == data


async def test_a_trickling_classic_holder_is_dropped_after_the_grace(
    holders: Callable[..., Holder], tmp_path: Path, sink: FileSinkOnDisk
) -> None:
    """Two hex digits every 0.2 s: each read comes well within ``idle_timeout``, but under
    ``min_fetch_rate`` on average once ``fetch_rate_grace`` has passed."""
    holder = holders(trickle(0.2))
    async with network(idle_timeout=10.0, min_fetch_rate=1024.0, fetch_rate_grace=1.0) as net:
        started = time.monotonic()
        with pytest.raises(TransferError, match="too slowly"):
            await asyncio.wait_for(
                net.fetch_file("127.0.0.1", holder.port, FILE_ID, sink), timeout=15
            )
        took = time.monotonic() - started
    assert 0.9 < took < 4.0, took


async def test_a_slow_but_steady_classic_holder_is_not_dropped(
    holders: Callable[..., Holder], tmp_path: Path, sink: FileSinkOnDisk
) -> None:
    """8 KiB/s of hex for 2.5 s (above the 1 KiB/s minimum) arrives whole."""
    holder = holders(steady(8 * 1024, 10 * 1024))
    async with network(min_fetch_rate=1024.0, fetch_rate_grace=0.5) as net:
        answer = await net.fetch_file("127.0.0.1", holder.port, FILE_ID, sink)
    assert answer.meta is not None
    assert sink.size == 10 * 1024


async def test_a_classic_fetch_gives_its_dial_slot_back_once_connected(
    holders: Callable[..., Holder], tmp_path: Path, sink: FileSinkOnDisk
) -> None:
    """With one dial slot, a message goes out while a (slow) fetch is still under way."""
    holder = holders(trickle(0.2))
    listener = Listener()
    try:
        async with network(max_dials=1, idle_timeout=10.0, fetch_rate_grace=30.0) as net:
            fetch = asyncio.ensure_future(net.fetch_file("127.0.0.1", holder.port, FILE_ID, sink))
            await wait_for(lambda: holder.requests)
            sent = await asyncio.wait_for(
                net.send("127.0.0.1", listener.port, Gossip("127.0.0.1", 1, "g1", "me")), 3
            )
            assert sent
            assert not fetch.done()
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError, TransferError):
                await fetch
    finally:
        listener.close()


# -- ranged GET_FILE -----------------------------------------------------------------------------
async def test_a_ranged_answer_header_must_arrive_within_control_timeout(
    holders: Callable[..., Holder], tmp_path: Path
) -> None:
    """One byte of header every 50 ms: each recv is quick, the whole header never comes."""
    holder = holders(header_trickle)
    partial = PartialFile(tmp_path / "range", BlobStore(tmp_path).publish, keep=True)
    try:
        async with network(control_timeout=1.0, idle_timeout=10.0) as net:
            started = time.monotonic()
            with pytest.raises(TransferError, match="timed out"):
                await asyncio.wait_for(
                    net.fetch_range("127.0.0.1", holder.port, FILE_ID, 0, None, partial), 8
                )
            took = time.monotonic() - started
    finally:
        partial.close()
    assert took < 3.0, took


async def test_a_trickling_ranged_holder_is_dropped_after_the_grace(
    holders: Callable[..., Holder], tmp_path: Path
) -> None:
    holder = holders(trickle(0.2))
    partial = PartialFile(tmp_path / "range", BlobStore(tmp_path).publish, keep=True)
    try:
        async with network(idle_timeout=10.0, min_fetch_rate=1024.0, fetch_rate_grace=1.0) as net:
            started = time.monotonic()
            with pytest.raises(TransferError, match="bytes/s"):
                await asyncio.wait_for(
                    net.fetch_range("127.0.0.1", holder.port, FILE_ID, 0, None, partial), 15
                )
            took = time.monotonic() - started
    finally:
        partial.close()
    assert took < 4.0, took


async def test_a_ranged_fetch_gives_its_dial_slot_back_once_connected(
    holders: Callable[..., Holder], tmp_path: Path
) -> None:
    holder = holders(silent)
    listener = Listener()
    partial = PartialFile(tmp_path / "range", BlobStore(tmp_path).publish, keep=True)
    try:
        async with network(max_dials=1, control_timeout=10.0, idle_timeout=10.0) as net:
            fetch = asyncio.ensure_future(
                net.fetch_range("127.0.0.1", holder.port, FILE_ID, 0, None, partial)
            )
            await wait_for(lambda: holder.requests)
            sent = await asyncio.wait_for(
                net.send("127.0.0.1", listener.port, Gossip("127.0.0.1", 1, "g1", "me")), 3
            )
            assert sent
            assert not fetch.done()
            started = time.monotonic()
            fetch.cancel()  # the worker's recv returns at once
            with contextlib.suppress(asyncio.CancelledError, TransferError):
                await fetch
            assert time.monotonic() - started < 2.0
    finally:
        listener.close()
        partial.close()
