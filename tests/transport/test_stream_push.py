"""The streamed push (PROTOCOL.md 2.4) over plain sockets to real in-process nodes: a FILE_DATA
header without a record, the raw bytes, then the record. The receiver keeps the file only once
the record comes and the bytes verify against it; a pusher sends the bytes on while they are
still being written, and a push it calls off leaves nothing at the peer."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.transport.test_raw import Events, Recorder, listing, record, recorder, send, split_answer
from treedrive.core.events import FileRefused
from treedrive.core.model import TransferRecord
from treedrive.core.node import Node
from treedrive.transport.extension import seal_keys

pytestmark = pytest.mark.timeout(60)
__all__ = ["recorder"]  # the fixture, used here

Starter = Callable[..., Any]
SIZE = 300_000
FEATURES = ["raw-push", "raw-range", "stream-push"]


def header(length: int, sender: str | None = "pusher", **ext: Any) -> bytes:
    fields: dict[str, Any] = {"raw": True, "stream": True, "offset": 0, "length": length}
    fields["size"] = length
    if sender is not None:
        fields["from"] = sender
    fields.update(ext)
    return json.dumps({"type": "FILE_DATA", "data": None, "treedrive": fields}).encode()


def trailer(rec: dict[str, Any]) -> bytes:
    message = {"type": "FILE_DATA", **rec, "data": None, "treedrive": {"record": True}}
    return json.dumps(message).encode()


def connect(node: Node) -> socket.socket:
    return socket.create_connection(("127.0.0.1", node.port), timeout=5)


def held(node: Node, file_id: str) -> bool:
    entry = node.file(file_id)
    return entry is not None and entry.has_copy and node.store.blobs.has(file_id)


async def push_in_two(
    node: Node, data: bytes, rec: dict[str, Any], between: Callable[[], Awaitable[None]]
) -> None:
    """Header and bytes, then ``between()``, then the record; the node then holds the file."""
    sock = await asyncio.to_thread(connect, node)
    try:
        await asyncio.to_thread(sock.sendall, header(len(data)) + data)
        await between()
        await asyncio.to_thread(sock.sendall, trailer(rec))
        await wait_for(lambda: held(node, rec["file_id"]))
    finally:
        sock.close()
    assert node.store.blobs.path(rec["file_id"]).read_bytes() == data


# -- receiving -----------------------------------------------------------------------------------
async def test_bytes_are_kept_only_once_their_record_comes(start_node: Starter) -> None:
    node: Node = await start_node("receiver", download_limit=0)
    data = os.urandom(SIZE)
    rec = record(data, int(time.time()))

    async def before_the_record() -> None:
        await wait_for(lambda: listing(node, "partial"))
        await asyncio.sleep(0.3)  # all bytes are there, but no record yet: nothing is kept
        assert listing(node, "blobs") == []
        assert node.file(rec["file_id"]) is None

    await push_in_two(node, data, rec, before_the_record)
    entry = node.file(rec["file_id"])
    assert entry is not None
    assert (entry.meta.file_owner, entry.meta.file_name) == ("pusher", "pushed.bin")
    await wait_for(lambda: listing(node, "partial") == [])
    transfers = await wait_for(
        lambda: [t for t in node.reads.recent_transfers() if t.state != "running"]
    )
    assert [(t.direction, t.peer_id, t.state) for t in transfers] == [("in", "pusher", "done")]


async def test_the_bytes_are_hashed_and_synced_before_their_record_comes(
    start_node: Starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiting for the record, the receiver finishes its hash of the bytes and syncs them: once
    the record comes, little is left to do before the file is stored (issue 10)."""
    node: Node = await start_node("receiver", download_limit=0)
    done: list[str] = []
    opened = node.open_sink

    def open_sink() -> Any:
        sink = opened()
        for name in ("digest", "sync"):
            setattr(sink, name, recorded(getattr(sink, name), name))
        return sink

    def recorded(method: Callable[[], Any], name: str) -> Callable[[], Any]:
        def call() -> Any:
            result = method()
            done.append(name)
            return result

        return call

    monkeypatch.setattr(node, "open_sink", open_sink)
    data = os.urandom(SIZE)
    rec = record(data, int(time.time()))

    async def before_the_record() -> None:
        await wait_for(lambda: sorted(done) == ["digest", "sync"])  # two threads at once
        assert node.file(rec["file_id"]) is None

    await push_in_two(node, data, rec, before_the_record)


@pytest.mark.parametrize("size", [0, 1, 5000])
async def test_a_small_push_in_one_write_is_stored(start_node: Starter, size: int) -> None:
    """Header, bytes and record in one segment: the bytes read past the body are the record's."""
    node: Node = await start_node("receiver", download_limit=0)
    data = os.urandom(size)
    rec = record(data, int(time.time()))
    await asyncio.to_thread(send, node.port, header(size) + data + trailer(rec))
    await wait_for(lambda: held(node, rec["file_id"]))
    assert node.store.blobs.path(rec["file_id"]).read_bytes() == data


@pytest.mark.parametrize(
    "ending",
    [
        b"",  # called off: the pusher closes without the record
        b'{"type":"FILE_DATA","data":null}',  # no record
        b'{"type":"GOSSIP","host":"127.0.0.1","port":1,"id":"x","peerId":"p"}',
        b'{"type":"FILE_DATA", "file_id": 12',  # malformed
    ],
)
async def test_without_a_valid_record_nothing_is_kept(start_node: Starter, ending: bytes) -> None:
    node: Node = await start_node("receiver", download_limit=0)
    data = os.urandom(SIZE)
    await asyncio.to_thread(send, node.port, header(SIZE) + data + ending)
    await wait_for(lambda: listing(node, "partial") == [])
    await asyncio.sleep(0.2)
    assert listing(node, "blobs") == []
    assert node.files() == []
    # the node goes on serving: the next push is kept
    rec = record(data, int(time.time()))
    await asyncio.to_thread(send, node.port, header(SIZE) + data + trailer(rec))
    await wait_for(lambda: held(node, rec["file_id"]))


async def test_a_record_the_bytes_do_not_match_is_refused(start_node: Starter) -> None:
    node: Node = await start_node("receiver", download_limit=0)
    events = Events()
    node.plugins.pm.register(events)
    data = os.urandom(SIZE)
    rec = record(os.urandom(SIZE), int(time.time()))  # another file's record
    await asyncio.to_thread(send, node.port, header(SIZE) + data + trailer(rec))
    refused = await wait_for(lambda: [e for e in events.seen if isinstance(e, FileRefused)])
    assert refused[0].file_id == rec["file_id"]
    await wait_for(lambda: listing(node, "partial") == [])
    assert listing(node, "blobs") == []
    assert node.file(rec["file_id"]) is None


async def test_a_streamed_header_that_is_not_the_whole_file_is_dropped(
    start_node: Starter,
) -> None:
    node: Node = await start_node("receiver", download_limit=0)
    data = os.urandom(1000)
    rec = record(data, int(time.time()))
    bad = header(1000, offset=10)
    await asyncio.to_thread(send, node.port, bad + data + trailer(rec))
    await asyncio.sleep(0.3)
    assert node.file(rec["file_id"]) is None
    assert listing(node, "blobs") == []
    await wait_for(lambda: listing(node, "partial") == [])


# -- pushing -------------------------------------------------------------------------------------
def streamed(raw: bytes) -> tuple[dict[str, Any], bytes, dict[str, Any] | None]:
    """A streamed push as received: its header, its bytes and its record (None if none)."""
    head, rest = split_answer(raw)
    length = head["treedrive"]["length"]
    body, after = rest[:length], rest[length:]
    return head, body, (split_answer(after)[0] if after.strip() else None)


def pushes(rec: Recorder) -> list[bytes]:
    return [r for r in rec.received if split_answer(r)[0].get("type") == "FILE_DATA"]


def outgoing(node: Node, state: str | None = None) -> list[TransferRecord]:
    return [
        t
        for t in node.reads.recent_transfers()
        if t.direction == "out" and state in (None, t.state)
    ]


async def take_streams(node: Node, rec: Recorder, peer_id: str) -> None:
    feats = {"treedrive": {"version": 1, "features": FEATURES}}
    await asyncio.to_thread(rec.gossip, node, peer_id, **feats)
    await wait_for(lambda: node.peers())


async def test_a_push_goes_to_a_peer_that_takes_streams_record_last(
    start_node: Starter, recorder: Callable[[], Recorder], tmp_path: Path
) -> None:
    node: Node = await start_node("td", download_limit=0)
    rec = recorder()
    await take_streams(node, rec, "taker")
    data = os.urandom(SIZE)
    src = tmp_path / "a.bin"
    src.write_bytes(data)
    meta = await node.push(src)
    pushed = await wait_for(lambda: pushes(rec))
    head, body, last = streamed(pushed[0])
    assert head == {
        "type": "FILE_DATA",
        "data": None,
        "treedrive": {
            "raw": True,
            "stream": True,
            "offset": 0,
            "length": SIZE,
            "size": SIZE,
            "from": "td",
        },
    }
    assert body == data
    assert last is not None
    assert last["file_id"] == meta.file_id
    assert (last["file_name"], last["file_owner"]) == ("a.bin", "td")
    # The owner's seal (PROTOCOL.md 2.8) beside the record's mark.
    assert last["treedrive"] == {"record": True, **seal_keys(meta)}
    assert meta.seal is not None
    assert meta.seal.owner_key == node.ctx.key.public
    out = await wait_for(lambda: outgoing(node, "done"))
    assert (out[0].peer_id, out[0].bytes_done) == ("taker", SIZE)


async def test_bytes_already_held_are_called_off_without_a_record(
    start_node: Starter, recorder: Callable[[], Recorder], tmp_path: Path
) -> None:
    node: Node = await start_node("td", download_limit=0)
    src = tmp_path / "a.bin"
    src.write_bytes(os.urandom(SIZE))
    first = await node.push(src)  # no peer yet: stored here only
    rec = recorder()
    await take_streams(node, rec, "taker")
    again = await node.push_path(src)
    assert again.existing
    assert again.meta.file_id == first.file_id
    pushed = await wait_for(lambda: pushes(rec))
    head, _, last = streamed(pushed[0])
    assert head["treedrive"]["stream"] is True
    assert last is None  # the peer keeps nothing
    assert not outgoing(node)
