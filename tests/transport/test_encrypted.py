"""Encrypted extension transfers (PROTOCOL.md 2.9) between real in-process nodes on loopback:
ranged gets and pushes over TLS 1.3 bound to the pinned node keys, refusals of the wrong key at
either end, and the listener telling TLS from classic JSON by the first byte.

The pins are written straight into each node's store here (in a real network, signed GOSSIP
fills them: tests/e2e/test_encrypted.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import address, wait_for
from tests.transport.tls_helpers import hung_up
from treedrive.core.errors import FetchFailed
from treedrive.core.identity import NodeKey
from treedrive.core.node import Node
from treedrive.transport import codec, tlsstream
from treedrive.transport.extension import RangeRequest, claimed_peer, ranged_get
from treedrive.transport.secure import HandshakeError, NodeTLS
from treedrive.transport.secureconn import is_tls, refusal

pytestmark = pytest.mark.timeout(60)

SIZE = 3 * 1024 * 1024 + 4321  # several ranges of 1 MiB, the last one short


def pin(node: Node, peer_id: str, key: bytes) -> None:
    with node.ctx.transaction() as uow:
        uow.keys.forget(peer_id)
        uow.keys.pin(peer_id, key, time.time())
        uow.commit()


def tls_served(node: Node) -> int:
    return node.network.stats().get("tls served", 0)  # type: ignore[attr-defined, no-any-return]


async def pair(start_node: Any, tmp_path: Path, **config: Any) -> tuple[Node, Node, str, bytes]:
    """A holder with a file and a fetcher that knows it (both pinned to each other's real key
    unless the test changes that)."""
    holder: Node = await start_node("holder", download_limit=0, **config)
    data = os.urandom(SIZE)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    meta = await holder.push(src)
    fetcher: Node = await start_node(
        "fetcher", download_limit=0, bootstrap=(address(holder),), chunk_size=1024 * 1024, **config
    )
    await wait_for(lambda: fetcher.file(meta.file_id) is not None)
    await wait_for(lambda: any(p.peer_id == "fetcher" for p in holder.ctx.peers()))
    pin(fetcher, "holder", holder.key.public)
    pin(holder, "fetcher", fetcher.key.public)
    return holder, fetcher, meta.file_id, data


async def test_a_ranged_get_between_pinned_nodes_goes_over_tls_and_verifies(
    start_node: Any, tmp_path: Path
) -> None:
    holder, fetcher, file_id, data = await pair(start_node, tmp_path)
    assert "tls" in holder.features
    assert "tls" in fetcher.features
    await fetcher.get(file_id)
    assert fetcher.store.blobs.path(file_id).read_bytes() == data
    assert tls_served(holder) >= 4  # every range, each its own TLS connection


async def test_without_encryption_the_same_get_is_in_clear(start_node: Any, tmp_path: Path) -> None:
    holder, fetcher, file_id, data = await pair(start_node, tmp_path, encryption=False)
    assert "tls" not in holder.features
    await fetcher.get(file_id)
    assert fetcher.store.blobs.path(file_id).read_bytes() == data
    assert tls_served(holder) == 0


async def test_the_fetcher_refuses_a_holder_that_proves_another_key(
    start_node: Any, tmp_path: Path
) -> None:
    """The holder's pin is another key (a relay's): no range is taken, and the fetcher does not
    fall back to a classic GET_FILE in clear either."""
    holder, fetcher, file_id, _ = await pair(start_node, tmp_path)
    pin(fetcher, "holder", NodeKey.generate().public)
    fetcher.ctx.config = replace(fetcher.ctx.config, stall_timeout=1.0)
    fetcher.fetching.ctx.config = fetcher.ctx.config
    with pytest.raises(FetchFailed):
        await fetcher.get(file_id)
    assert not fetcher.store.blobs.path(file_id).exists()
    assert tls_served(holder) == 0
    assert holder.network.bytes_uploaded == 0  # type: ignore[attr-defined]


async def test_the_holder_refuses_a_client_that_proves_another_key(
    start_node: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder, fetcher, file_id, _ = await pair(start_node, tmp_path)
    pin(holder, "fetcher", NodeKey.generate().public)
    fetcher.ctx.config = replace(fetcher.ctx.config, stall_timeout=1.0)
    fetcher.fetching.ctx.config = fetcher.ctx.config
    with caplog.at_level(logging.WARNING), pytest.raises(FetchFailed):
        await fetcher.get(file_id)
    assert tls_served(holder) == 0
    assert holder.network.bytes_uploaded == 0  # type: ignore[attr-defined]
    refused = [r.getMessage() for r in caplog.records if "TLS connection refused" in r.message]
    assert refused
    assert "but peer 'fetcher' is pinned to" in refused[0]


async def test_a_push_to_a_pinned_peer_goes_over_tls(start_node: Any, tmp_path: Path) -> None:
    receiver: Node = await start_node("receiver", download_limit=0)
    pusher: Node = await start_node("pusher", download_limit=0, bootstrap=(address(receiver),))
    await wait_for(lambda: [p for p in pusher.ctx.peers() if p.features])
    await wait_for(lambda: [p for p in receiver.ctx.peers() if p.features])
    pin(pusher, "receiver", receiver.key.public)
    pin(receiver, "pusher", pusher.key.public)
    data = os.urandom(SIZE)
    src = tmp_path / "pushed.bin"
    src.write_bytes(data)
    meta = await pusher.push(src)
    await wait_for(lambda: (e := receiver.file(meta.file_id)) is not None and e.has_copy)
    assert receiver.store.blobs.path(meta.file_id).read_bytes() == data
    assert tls_served(receiver) == 1


async def test_a_push_to_a_peer_that_proves_another_key_is_not_sent(
    start_node: Any, tmp_path: Path
) -> None:
    receiver: Node = await start_node("receiver", download_limit=0)
    pusher: Node = await start_node("pusher", download_limit=0, bootstrap=(address(receiver),))
    await wait_for(lambda: [p for p in pusher.ctx.peers() if p.features])
    await wait_for(lambda: [p for p in receiver.ctx.peers() if p.features])
    pin(pusher, "receiver", NodeKey.generate().public)  # a relay's key, say
    pin(receiver, "pusher", pusher.key.public)
    src = tmp_path / "pushed.bin"
    src.write_bytes(os.urandom(SIZE))
    meta = await pusher.push(src)
    await wait_for(lambda: not pusher.active_transfers, timeout=20)
    await asyncio.sleep(0.3)
    entry = receiver.file(meta.file_id)  # listed from the ANNOUNCE, at most
    assert entry is None or not entry.has_copy
    assert not receiver.store.blobs.path(meta.file_id).exists()
    assert tls_served(receiver) == 0
    assert pusher.store.blobs.path(meta.file_id).read_bytes() == src.read_bytes()


# -- the listener, spoken to by hand -------------------------------------------------------------
def stranger_get(node: Node, file_id: str, claimed: str, key: NodeKey) -> bool:
    """Dial ``node`` over TLS with ``key``, ask for a range as ``claimed``; whether any answer
    byte came before the node hung up."""
    me = NodeTLS.from_private_key(key.private_key)
    sock = socket.create_connection((node.host, node.port), timeout=10)
    stream = tlsstream.connect(me, sock, node.key.public, 10)
    with stream:
        stream.sendall(codec.encode_message(ranged_get(file_id, RangeRequest(0, 10, claimed))))
        try:
            return stream.recv(100) != b""
        except ConnectionError:
            return False


async def test_the_listener_refuses_a_stranger_and_a_forged_sender(
    start_node: Any, tmp_path: Path
) -> None:
    holder, fetcher, file_id, _ = await pair(start_node, tmp_path)
    stranger = NodeKey.generate()
    # an unpinned peer id, and the fetcher's id with the stranger's key: nothing is served
    assert not await asyncio.to_thread(stranger_get, holder, file_id, "nobody", stranger)
    assert not await asyncio.to_thread(stranger_get, holder, file_id, "fetcher", stranger)
    assert tls_served(holder) == 0
    # the fetcher's own key, as the fetcher: served
    assert await asyncio.to_thread(stranger_get, holder, file_id, "fetcher", fetcher.key)
    assert tls_served(holder) == 1


async def test_the_client_refuses_a_listener_with_another_key(start_node: Any) -> None:
    node: Node = await start_node("node", download_limit=0)
    me = NodeTLS.from_private_key(NodeKey.generate().private_key)
    sock = await asyncio.to_thread(socket.create_connection, (node.host, node.port), 10)
    with pytest.raises(HandshakeError):
        await asyncio.to_thread(tlsstream.connect, me, sock, NodeKey.generate().public, 10)


async def test_classic_json_still_answered_in_clear_beside_tls(start_node: Any) -> None:
    node: Node = await start_node("node", download_limit=0)

    def classic_get() -> bytes:
        with socket.create_connection((node.host, node.port), timeout=10) as s:
            s.sendall(b' {"type":"GET_FILE","file_id":"' + b"0" * 64 + b'"}')
            return s.recv(1000)

    answer = await asyncio.to_thread(classic_get)
    assert answer.startswith(b'{"type"')
    assert b'"FILE_DATA"' in answer


async def test_a_silent_tls_client_is_closed_at_the_message_deadline(start_node: Any) -> None:
    node: Node = await start_node("node", download_limit=0)
    node.network.limits = replace(node.network.limits, control_timeout=1.0)  # type: ignore[attr-defined]
    threads = len(__import__("threading").enumerate())

    def hello_then_silence() -> float:
        with socket.create_connection((node.host, node.port), timeout=10) as s:
            s.sendall(b"\x16\x03\x01")  # the start of a handshake record, then nothing
            started = time.monotonic()
            assert hung_up(s)
            return time.monotonic() - started

    waited = await asyncio.to_thread(hello_then_silence)
    assert 0.5 < waited < 5
    assert len(__import__("threading").enumerate()) <= threads + 1  # no thread held meanwhile


async def test_a_node_without_encryption_takes_tls_for_malformed(start_node: Any) -> None:
    node: Node = await start_node("node", download_limit=0, encryption=False)
    me = NodeTLS.from_private_key(NodeKey.generate().private_key)
    sock = await asyncio.to_thread(socket.create_connection, (node.host, node.port), 10)
    with pytest.raises(HandshakeError):
        await asyncio.to_thread(tlsstream.connect, me, sock, node.key.public, 5)


# -- the decisions, pure -------------------------------------------------------------------------
KEY, OTHER = NodeKey.generate().public, NodeKey.generate().public
PINS = {"alice": KEY}


def test_tls_is_told_by_its_first_byte() -> None:
    assert is_tls(b"\x16\x03\x01\x02\x00")
    assert not is_tls(b'{"type":"GOSSIP"}')
    assert not is_tls(b" \x16")
    assert not is_tls(b"")


@pytest.mark.parametrize(
    ("fields", "claimed"),
    [
        (ranged_get("f" * 64, RangeRequest(0, 10, "alice")), "alice"),
        (ranged_get("f" * 64, RangeRequest(0, 10)), None),
        ({"type": "GET_FILE", "file_id": "f" * 64}, None),  # classic: not over TLS
        (
            {
                "type": "FILE_DATA",
                "data": None,
                "treedrive": {
                    "raw": True,
                    "stream": True,
                    "offset": 0,
                    "length": 5,
                    "size": 5,
                    "from": "alice",
                },
            },
            "alice",
        ),
        ({"type": "GOSSIP", "peerId": "alice"}, None),
    ],
)
def test_the_claimed_peer_of_a_request(fields: dict[str, Any], claimed: str | None) -> None:
    assert claimed_peer(fields) == claimed


def test_a_request_is_served_only_to_the_key_pinned_to_its_sender() -> None:
    ask = ranged_get("f" * 64, RangeRequest(0, 10, "alice"))
    assert refusal(ask, KEY, PINS.get) is None
    why = refusal(ask, OTHER, PINS.get)
    assert why is not None
    assert "pinned to" in why
    bob = ranged_get("f" * 64, RangeRequest(0, 10, "bob"))
    assert "no pinned key" in (refusal(bob, KEY, PINS.get) or "")
    anonymous = ranged_get("f" * 64, RangeRequest(0, 10))
    assert "names its sender" in (refusal(anonymous, KEY, PINS.get) or "")
    bad = {"type": "GET_FILE", "file_id": "f", "treedrive": {"raw": True, "offset": -1}}
    assert "invalid" in (refusal(bad, KEY, PINS.get) or "")
