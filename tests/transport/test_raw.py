"""The TreeDrive extension on the wire (PROTOCOL.md part 2), spoken over plain sockets to real
in-process nodes: ranged raw GET_FILE (header, then exactly ``length`` raw bytes), raw pushes,
and the capability advertisement in the GOSSIP/GOSSIP_REPLY a node originates."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from treedrive.core.events import FileRefused
from treedrive.core.identity import encode_b64
from treedrive.core.model import MEGABYTE
from treedrive.core.node import Node
from treedrive.testing import Events

pytestmark = pytest.mark.timeout(60)

Starter = Callable[..., Any]
RECORD_KEYS = ("file_name", "file_size", "file_id", "file_owner", "file_timestamp")
SIZE = 300_000
FEATURES = {"raw-range", "raw-push"}


# -- helpers -------------------------------------------------------------------------------------
def split_answer(buf: bytes) -> tuple[dict[str, Any], bytes]:
    """The first JSON object in ``buf`` and every byte after it."""
    text = buf.decode("latin-1")  # one char per byte: the end index is a byte offset
    obj, end = json.JSONDecoder().raw_decode(text)
    assert isinstance(obj, dict)
    return obj, buf[end:]


def exchange(port: int, message: dict[str, Any] | bytes, timeout: float = 10.0) -> bytes:
    """Send one message and read everything the node sends back until it closes."""
    data = message if isinstance(message, bytes) else json.dumps(message).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        buf = bytearray()
        while chunk := s.recv(1 << 20):
            buf += chunk
    return bytes(buf)


async def ask(node: Node, message: dict[str, Any] | bytes) -> tuple[dict[str, Any], bytes]:
    buf = await asyncio.to_thread(exchange, node.port, message)
    return split_answer(buf)


def raw_get(file_id: str, **ext: Any) -> dict[str, Any]:
    return {"type": "GET_FILE", "file_id": file_id, "treedrive": {"raw": True, **ext}}


def record(data: bytes, ts: int, owner: str = "pusher", name: str = "pushed.bin") -> dict[str, Any]:
    return {
        "file_name": name,
        "file_size": len(data) / MEGABYTE,
        "file_id": hashlib.sha256(data + str(ts).encode()).hexdigest(),
        "file_owner": owner,
        "file_timestamp": ts,
    }


def raw_push_header(rec: dict[str, Any], length: int, size: int) -> bytes:
    ext = {"raw": True, "offset": 0, "length": length, "size": size}
    return json.dumps({"type": "FILE_DATA", **rec, "data": None, "treedrive": ext}).encode()


def send(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)


def listing(node: Node, sub: str) -> list[str]:
    return sorted(p.name for p in (node.config.data_dir / sub).iterdir())


class Recorder:
    """A listening socket that keeps every connection's bytes (read to EOF)."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self.port = int(self._server.getsockname()[1])
        self.received: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buf = bytearray()
        with conn:
            conn.settimeout(10)
            try:
                while chunk := conn.recv(1 << 20):
                    buf += chunk
            except OSError:
                return
        with self._lock:
            self.received.append(bytes(buf))

    def messages(self) -> list[tuple[dict[str, Any], bytes]]:
        with self._lock:
            raw = list(self.received)
        out = []
        for buf in raw:
            try:
                out.append(split_answer(buf))
            except ValueError:
                continue
        return out

    def of_type(self, kind: str, **match: Any) -> list[tuple[dict[str, Any], bytes]]:
        return [
            (m, rest)
            for m, rest in self.messages()
            if m.get("type") == kind and all(m.get(k) == v for k, v in match.items())
        ]

    def gossip(self, node: Node, peer_id: str, **extra: Any) -> str:
        """Originate a GOSSIP to ``node`` as ``peer_id`` listening here; returns its id."""
        gid = str(uuid.uuid4())
        message = {
            "type": "GOSSIP",
            "host": "127.0.0.1",
            "port": self.port,
            "id": gid,
            "peerId": peer_id,
            **extra,
        }
        send(node.port, json.dumps(message).encode())
        return gid

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()


@pytest.fixture
def recorder() -> Any:
    made: list[Recorder] = []

    def make() -> Recorder:
        r = Recorder()
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


async def holder_with_file(
    start_node: Starter, tmp_path: Path, peer_id: str = "holder", **config: Any
) -> tuple[Node, str, bytes]:
    node: Node = await start_node(peer_id, download_limit=0, **config)
    data = os.urandom(SIZE)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    meta = await node.push(src)
    return node, meta.file_id, data


# -- ranged GET_FILE -----------------------------------------------------------------------------
async def test_raw_get_whole_file_header_then_exact_bytes(
    start_node: Starter, tmp_path: Path
) -> None:
    node, fid, data = await holder_with_file(start_node, tmp_path)
    header, body = await ask(node, raw_get(fid, offset=0, length=None))
    assert header["type"] == "FILE_DATA"
    assert header["file_id"] == fid
    assert header["file_name"] == "src.bin"
    assert header["file_owner"] == "holder"
    assert header["data"] is None
    ext = dict(header["treedrive"])
    # The owner's seal rides beside the range (PROTOCOL.md 2.8): the holder's own key here.
    assert ext.pop("owner_key") == encode_b64(node.ctx.key.public)
    assert isinstance(ext.pop("seal"), str)
    assert ext == {"raw": True, "offset": 0, "length": SIZE, "size": SIZE}
    assert body == data


async def test_raw_get_without_length_key_means_to_the_end(
    start_node: Starter, tmp_path: Path
) -> None:
    node, fid, data = await holder_with_file(start_node, tmp_path)
    header, body = await ask(node, raw_get(fid, offset=1000))
    assert header["treedrive"]["length"] == SIZE - 1000
    assert body == data[1000:]


@pytest.mark.parametrize(
    ("offset", "length", "want_offset", "want_length"),
    [
        (1000, 5000, 1000, 5000),  # a range inside the file
        (0, 1, 0, 1),
        (SIZE - 10, None, SIZE - 10, 10),  # null: to the end
        (SIZE - 100, 1000, SIZE - 100, 100),  # clamped at the end of the file
        (123, 0, 123, 0),  # an empty range
        (SIZE, None, SIZE, 0),  # at the end: nothing left
        (SIZE + 10, 50, None, 0),  # beyond the end: nothing sent
    ],
)
async def test_raw_get_ranges(
    start_node: Starter,
    tmp_path: Path,
    offset: int,
    length: int | None,
    want_offset: int | None,
    want_length: int,
) -> None:
    node, fid, data = await holder_with_file(start_node, tmp_path)
    header, body = await ask(node, raw_get(fid, offset=offset, length=length))
    ext = header["treedrive"]
    assert ext["raw"] is True
    assert ext["size"] == SIZE
    assert ext["length"] == want_length
    assert header["file_id"] == fid
    if want_offset is None:  # beyond the end: no bytes, whatever offset it reports
        assert body == b""
        return
    assert ext["offset"] == want_offset
    assert body == data[want_offset : want_offset + want_length]


async def test_ranges_of_one_download_add_up_to_one_upload_named_by_its_asker(
    start_node: Starter, tmp_path: Path
) -> None:
    node, fid, data = await holder_with_file(start_node, tmp_path)
    # "zoe" asks for the file in two ranges of one download, then one range of another run
    for offset, length, download in ((0, 1000, "run1"), (1000, 500, "run1"), (0, 70, "run2")):
        _, body = await ask(
            node, raw_get(fid, offset=offset, length=length, download=download, **{"from": "zoe"})
        )
        assert body == data[offset : offset + length]
    # a client that names no download: each of its ranges is an upload of its own
    for offset in (0, 10):
        _, body = await ask(node, raw_get(fid, offset=offset, length=10))
        assert body == data[offset : offset + 10]

    def settled() -> bool:
        return not any(t.direction == "out" for t in node.active_transfers.values())

    await wait_for(settled, timeout=10)
    with node.store.unit_of_work() as uow:
        rows = sorted(
            (t.peer_id or "", t.bytes_done, t.state)
            for t in uow.transfers.recent(50)
            if t.direction == "out" and t.file_id == fid
        )
    assert [r for r in rows if r[0] == "zoe"] == [("zoe", 70, "done"), ("zoe", 1500, "done")]
    others = [r for r in rows if r[0] != "zoe"]
    assert len(others) == 2
    assert all(r[0].startswith("127.0.0.1:") and r[1:] == (10, "done") for r in others)


@pytest.mark.parametrize(
    "ext",
    [
        {"offset": -1, "length": 10},
        {"offset": "0", "length": 10},
        {"offset": True, "length": 10},
        {"offset": 0, "length": -5},
        {"offset": 0, "length": 1.5},
        {"offset": 0, "length": "all"},
        {"offset": None, "length": 10},
    ],
)
async def test_raw_get_bad_range_gets_null_file_data(
    start_node: Starter, tmp_path: Path, ext: dict[str, Any]
) -> None:
    node, fid, _ = await holder_with_file(start_node, tmp_path)
    header, body = await ask(node, raw_get(fid, **ext))
    assert header["type"] == "FILE_DATA"
    assert header["file_id"] is None
    assert header["data"] is None
    assert body.strip() == b""
    # the node still serves good requests afterwards
    header, body = await ask(node, raw_get(fid, offset=0, length=10))
    assert header["file_id"] == fid
    assert len(body) == 10


async def test_raw_get_of_a_missing_file_gets_null_file_data(
    start_node: Starter, tmp_path: Path
) -> None:
    node, _, _ = await holder_with_file(start_node, tmp_path)
    header, body = await ask(node, raw_get("ab" * 32, offset=0, length=None))
    assert header["type"] == "FILE_DATA"
    assert all(header[k] is None for k in RECORD_KEYS)
    assert header["data"] is None
    assert body.strip() == b""


@pytest.mark.parametrize(
    "extra",
    [{}, {"treedrive": {"raw": False, "offset": 0, "length": 10}}, {"treedrive": "yes"}],
)
async def test_get_file_without_raw_gets_classic_hex(
    start_node: Starter, tmp_path: Path, extra: dict[str, Any]
) -> None:
    node, fid, data = await holder_with_file(start_node, tmp_path)
    header, body = await ask(node, {"type": "GET_FILE", "file_id": fid, **extra})
    assert header["type"] == "FILE_DATA"
    assert header["file_id"] == fid
    assert header["data"] == data.hex()
    assert body.strip() == b""
    assert not (isinstance(header.get("treedrive"), dict) and header["treedrive"].get("raw"))


async def test_classic_get_of_a_missing_file_gets_null_file_data(
    start_node: Starter, tmp_path: Path
) -> None:
    node, _, _ = await holder_with_file(start_node, tmp_path)
    header, _ = await ask(node, {"type": "GET_FILE", "file_id": "cd" * 32})
    assert header["file_id"] is None
    assert header["data"] is None


# -- raw pushes ----------------------------------------------------------------------------------
async def test_raw_push_is_stored_and_verified(start_node: Starter) -> None:
    node: Node = await start_node("receiver", download_limit=0)
    data = os.urandom(SIZE)
    rec = record(data, int(time.time()))
    await asyncio.to_thread(send, node.port, raw_push_header(rec, SIZE, SIZE) + data)
    await wait_for(lambda: node.store.blobs.has(rec["file_id"]))
    assert node.store.blobs.path(rec["file_id"]).read_bytes() == data
    entry = node.file(rec["file_id"])
    assert entry is not None
    assert entry.has_copy
    assert entry.meta.file_owner == "pusher"
    assert listing(node, "partial") == []


async def test_raw_push_in_many_small_writes_is_stored(start_node: Starter) -> None:
    node: Node = await start_node("receiver", download_limit=0)
    data = os.urandom(50_000)
    rec = record(data, int(time.time()))
    payload = raw_push_header(rec, len(data), len(data)) + data

    def trickle() -> None:
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(0, len(payload), 4096):
                s.sendall(payload[i : i + 4096])
                time.sleep(0.001)

    await asyncio.to_thread(trickle)
    await wait_for(lambda: node.store.blobs.has(rec["file_id"]))
    assert node.store.blobs.path(rec["file_id"]).read_bytes() == data


async def test_raw_push_with_wrong_bytes_is_refused_leaving_nothing(start_node: Starter) -> None:
    node: Node = await start_node("receiver", download_limit=0)
    events = Events()
    node.plugins.pm.register(events)
    data = os.urandom(SIZE)
    rec = record(data, int(time.time()))
    bad = bytes([data[0] ^ 0xFF]) + data[1:]
    await asyncio.to_thread(send, node.port, raw_push_header(rec, SIZE, SIZE) + bad)
    refused = await wait_for(
        lambda: [e for e in events.seen if isinstance(e, FileRefused)], timeout=10
    )
    assert refused[0].file_id == rec["file_id"]
    assert listing(node, "blobs") == []
    assert listing(node, "partial") == []
    entry = node.file(rec["file_id"])
    assert entry is None or not entry.has_copy


async def test_raw_push_cut_short_leaves_nothing(start_node: Starter) -> None:
    node: Node = await start_node("receiver", download_limit=0)
    data = os.urandom(SIZE)
    rec = record(data, int(time.time()))
    sock = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", node.port), 5)
    try:
        await asyncio.to_thread(sock.sendall, raw_push_header(rec, SIZE, SIZE) + data[: SIZE // 2])
        # the node is receiving: its temp file exists
        await wait_for(lambda: listing(node, "partial"))
    finally:
        sock.close()
    await wait_for(lambda: listing(node, "partial") == [])
    await asyncio.sleep(0.2)
    assert listing(node, "blobs") == []
    entry = node.file(rec["file_id"])
    assert entry is None or not entry.has_copy
    assert listing(node, "partial") == []


# -- capability advertisement --------------------------------------------------------------------
def ext_of(message: dict[str, Any]) -> dict[str, Any]:
    ext = message.get("treedrive")
    return ext if isinstance(ext, dict) else {}


async def test_gossip_and_reply_originated_carry_features(
    start_node: Starter, recorder: Callable[[], Recorder]
) -> None:
    node: Node = await start_node("td", download_limit=0)
    rec = recorder()
    await asyncio.to_thread(rec.gossip, node, "listener")
    replies = await wait_for(lambda: rec.of_type("GOSSIP_REPLY", peerId="td"))
    ext = ext_of(replies[0][0])
    assert ext.get("version") == 1
    assert set(ext.get("features", [])) >= FEATURES
    # tracked now: the node's own periodic GOSSIP reaches the listener
    gossips = await wait_for(lambda: rec.of_type("GOSSIP", peerId="td"))
    ext = ext_of(gossips[0][0])
    assert ext.get("version") == 1
    assert set(ext.get("features", [])) >= FEATURES


async def test_node_remembers_peer_features_and_forwards_gossip_unchanged(
    start_node: Starter, recorder: Callable[[], Recorder]
) -> None:
    node: Node = await start_node("td", download_limit=0)
    first, second, third = recorder(), recorder(), recorder()
    feats = {"treedrive": {"version": 1, "features": ["raw-range", "x-future"]}}
    await asyncio.to_thread(first.gossip, node, "first", **feats)
    await wait_for(lambda: any(p.peer_id == "first" for p in node.peers()))
    peer = next(p for p in node.peers() if p.peer_id == "first")
    assert peer.features == frozenset({"raw-range", "x-future"})

    # a classic peer's gossip is forwarded to "first" as it was: no treedrive key added
    gid = await asyncio.to_thread(second.gossip, node, "classic")
    fwd = await wait_for(lambda: first.of_type("GOSSIP", id=gid))
    assert "treedrive" not in fwd[0][0]
    assert fwd[0][0]["peerId"] == "classic"
    classic = next(p for p in node.peers() if p.peer_id == "classic")
    assert classic.features is None

    # a TreeDrive peer's gossip keeps its own (originator's) capabilities when forwarded
    other = {"treedrive": {"version": 1, "features": ["y-other"]}}
    gid = await asyncio.to_thread(third.gossip, node, "third", **other)
    fwd = await wait_for(lambda: first.of_type("GOSSIP", id=gid))
    assert fwd[0][0]["treedrive"] == other["treedrive"]


async def test_node_without_extension_advertises_no_features(
    start_node: Starter, recorder: Callable[[], Recorder]
) -> None:
    node: Node = await start_node("plain", download_limit=0, extension=False)
    rec = recorder()
    await asyncio.to_thread(rec.gossip, node, "listener")
    replies = await wait_for(lambda: rec.of_type("GOSSIP_REPLY", peerId="plain"))
    gossips = await wait_for(lambda: rec.of_type("GOSSIP", peerId="plain"))
    for message, _ in (*replies, *gossips):
        assert ext_of(message).get("features", []) == []


async def test_node_without_extension_answers_raw_get_with_hex(
    start_node: Starter, tmp_path: Path
) -> None:
    """Classic only, like the seed: it ignores the extension's key and answers with hex."""
    node, fid, data = await holder_with_file(start_node, tmp_path, "plain", extension=False)
    header, body = await ask(node, raw_get(fid, offset=0, length=100))
    assert header["file_id"] == fid
    assert header["data"] == data.hex()
    assert body.strip() == b""


async def test_raw_push_only_to_peers_that_take_it(
    start_node: Starter, recorder: Callable[[], Recorder], tmp_path: Path
) -> None:
    """A TreeDrive node pushes raw bytes to a peer advertising raw-push; a node without the
    extension pushes classic hex to the same kind of peer."""
    feats = {"treedrive": {"version": 1, "features": sorted(FEATURES)}}
    for peer_id, extension in (("td", True), ("plain", False)):
        node: Node = await start_node(peer_id, download_limit=0, extension=extension)
        rec = recorder()
        await asyncio.to_thread(rec.gossip, node, f"taker-{peer_id}", **feats)
        await wait_for(lambda node=node: node.peers())
        data = os.urandom(20_000)
        src = tmp_path / f"{peer_id}.bin"
        src.write_bytes(data)
        meta = await node.push(src)
        pushed = await wait_for(lambda rec=rec, meta=meta: rec.of_type("FILE_DATA"))
        header, rest = pushed[0]
        assert header["file_id"] == meta.file_id
        if extension:
            assert header["data"] is None
            ext = header["treedrive"]
            # The owner's seal (PROTOCOL.md 2.8) rides beside the range.
            assert ext.pop("owner_key") == encode_b64(node.ctx.key.public)
            assert isinstance(ext.pop("seal"), str)
            assert ext == {
                "raw": True,
                "offset": 0,
                "length": len(data),
                "size": len(data),
                "from": "td",  # the pusher's peer id, for the receiver's display
            }
            assert rest == data
        else:
            assert header["data"] == data.hex()
            assert "treedrive" not in header
            assert rest.strip() == b""
