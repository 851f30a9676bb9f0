"""Classic servers and the client's EOF (issue 9, point 11): some read a request until the client
half-closes before they answer, others close as soon as they see that EOF, before answering.
Both must answer a GET_FILE promptly: the client half-closes its sending side only when nothing
came for a moment (``NetLimits.half_close_after``), and asks once more without the half-close
a server that then closed without a byte.

The servers are the independent classic peer of tests/classic_peer.py; the client is a real
node, or a real :class:`TcpNetwork`. A read-to-EOF server here waits 15 s for EOF: each test
gives the answer 5 s, so a client that never half-closes fails it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.classic_peer import ClassicPeer
from tests.conftest import wait_for
from treedrive.core.config import Address
from treedrive.core.errors import ClassicAnswer
from treedrive.store.blobs import BlobStore, PartialFile
from treedrive.transport.net import NetLimits, TcpNetwork

pytestmark = pytest.mark.timeout(30)

Peers = Callable[..., ClassicPeer]
DATA = b"the answer comes only after EOF\n" * 64
TS = 1750000000
PROMPT = 5.0
"""Seconds an answer gets in these tests: a third of the servers' 15 s wait for EOF."""


class Sink:
    """A real file the fetched bytes go to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = path.open("wb", buffering=0)
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self.f.write(data)
        self.size += len(data)

    def abort(self) -> None:
        self.f.close()


@contextlib.asynccontextmanager
async def network(**limits: Any) -> AsyncIterator[TcpNetwork]:
    net = TcpNetwork("127.0.0.1", 0, NetLimits(**limits))
    try:
        yield net
    finally:
        await net.close()


async def fetch(net: TcpNetwork, peer: ClassicPeer, file_id: str, path: Path) -> int:
    """Fetch ``file_id`` from ``peer`` into ``path`` within PROMPT seconds; the bytes' count."""
    sink = Sink(path)
    try:
        answer = await asyncio.wait_for(
            net.fetch_file(*peer.address, file_id, sink, max_bytes=len(DATA)), PROMPT
        )
    finally:
        sink.abort()
    assert answer.meta is not None
    assert answer.meta.file_id == file_id
    return sink.size


async def test_a_node_gets_a_file_promptly_from_a_server_that_reads_to_eof(
    start_node: Callable[..., Any], classic_peer: Peers
) -> None:
    bob = classic_peer("bob", eof_style="read_to_eof")
    record = bob.add_file("eof.txt", DATA, TS)
    alice = await start_node(
        "alice",
        bootstrap=(Address(*bob.address),),
        gossip_interval=60.0,
        peer_timeout=60.0,
        download_limit=0,
        reply_timeout=60.0,
    )
    await wait_for(lambda: alice.file(record["file_id"]))

    entry = await asyncio.wait_for(alice.get(record["file_id"]), PROMPT)
    assert entry.has_copy
    assert alice.store.blobs.path(record["file_id"]).read_bytes() == DATA
    # Every request bob read (the GOSSIP, the GET_FILE) ended with the client's EOF.
    assert bob.eof_stats["timed_out"] == 0
    assert bob.eof_stats["eof"] >= 2


async def test_a_get_file_to_a_server_that_reads_to_eof_is_answered(
    classic_peer: Peers, tmp_path: Path
) -> None:
    bob = classic_peer("bob", eof_style="read_to_eof")
    record = bob.add_file("eof.txt", DATA, TS)
    async with network(idle_timeout=60.0) as net:
        assert await fetch(net, bob, record["file_id"], tmp_path / "in") == len(DATA)
    assert (tmp_path / "in").read_bytes() == DATA
    assert bob.eof_stats == {"eof": 1, "timed_out": 0, "closed_on_eof": 0}


@pytest.mark.parametrize("delay", [0.0, 1.0], ids=["answers-at-once", "answers-after-1s"])
async def test_a_get_file_to_a_server_that_closes_on_eof_is_answered(
    classic_peer: Peers, tmp_path: Path, delay: float
) -> None:
    """A server that answers at once never sees our EOF; one that takes longer than
    ``half_close_after`` sees it and closes: it is asked again, without the half-close."""
    bob = classic_peer("bob", eof_style="close_on_eof", answer_delay=delay)
    record = bob.add_file("eof.txt", DATA, TS)
    async with network(idle_timeout=60.0, half_close_after=0.3) as net:
        assert await fetch(net, bob, record["file_id"], tmp_path / "in") == len(DATA)
    assert (tmp_path / "in").read_bytes() == DATA
    asked = bob.messages("GET_FILE", file_id=record["file_id"])
    if delay:
        assert bob.eof_stats["closed_on_eof"] == 1
        assert len(asked) == 2
    else:
        assert len(asked) - bob.eof_stats["closed_on_eof"] == 1  # answered exactly once


async def test_a_not_here_from_a_server_that_closes_on_eof_is_heard(
    classic_peer: Peers, tmp_path: Path
) -> None:
    bob = classic_peer("bob", eof_style="close_on_eof", answer_delay=1.0)
    async with network(idle_timeout=60.0, half_close_after=0.3) as net:
        sink = Sink(tmp_path / "in")
        try:
            answer = await asyncio.wait_for(net.fetch_file(*bob.address, "ab" * 32, sink), PROMPT)
        finally:
            sink.abort()
    assert answer.meta is None
    assert sink.size == 0


async def test_a_ranged_get_to_a_server_that_reads_to_eof_learns_it_is_classic(
    classic_peer: Peers, tmp_path: Path
) -> None:
    """The ranged client asks a holder it takes for a TreeDrive peer; a classic one answers
    with hex (the node then falls back to the classic GET_FILE): promptly, too."""
    bob = classic_peer("bob", eof_style="read_to_eof")
    record = bob.add_file("eof.txt", DATA, TS)
    partial = PartialFile(tmp_path / "range", BlobStore(tmp_path).publish, keep=True)
    try:
        async with network(idle_timeout=60.0, control_timeout=60.0) as net:
            with pytest.raises(ClassicAnswer):
                await asyncio.wait_for(
                    net.fetch_range(*bob.address, record["file_id"], 0, None, partial), PROMPT
                )
    finally:
        partial.close()
    assert bob.eof_stats["eof"] == 1


async def test_a_ranged_get_to_a_server_that_closes_on_eof_is_asked_again(
    classic_peer: Peers, tmp_path: Path
) -> None:
    bob = classic_peer("bob", eof_style="close_on_eof", answer_delay=1.0)
    record = bob.add_file("eof.txt", DATA, TS)
    partial = PartialFile(tmp_path / "range", BlobStore(tmp_path).publish, keep=True)
    try:
        async with network(idle_timeout=60.0, half_close_after=0.3) as net:
            with pytest.raises(ClassicAnswer):
                await asyncio.wait_for(
                    net.fetch_range(*bob.address, record["file_id"], 0, None, partial), PROMPT
                )
    finally:
        partial.close()
    assert bob.eof_stats["closed_on_eof"] == 1
    assert len(bob.messages("GET_FILE", file_id=record["file_id"])) == 2
