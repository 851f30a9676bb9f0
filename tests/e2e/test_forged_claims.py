"""Forged claims and a stranger's say-so, against real nodes (in-process nodes on loopback, real
sockets, real SQLite files) fed by raw sockets: a node never acts on a forgery of itself, never
becomes the owner of a file pushed to it, dials an address a stranger names at a bounded rate, and
answers GOSSIP on a full disk (issue 8; THREATS.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import address, fast_config, fill, wait_for, watch
from tests.e2e.helpers import Listener, Server, file_data, file_id_of, send_message
from treedrive.app import running_node
from treedrive.core import replies
from treedrive.core.events import PeerExpired, PeerSeen
from treedrive.core.node import Node

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

Starter = Callable[..., Any]
INTERVAL = 0.5  # the gossip interval of tests/conftest.py's FAST timers


class CountingListener(Server):
    """A port that counts the connections made to it (and closes them unread)."""

    def __init__(self) -> None:
        self.accepted = 0
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        self.accepted += 1
        conn.close()


@pytest.fixture
def counting() -> Iterator[CountingListener]:
    lst = CountingListener()
    yield lst
    lst.close()


def forged_gossips(node_port: int, target_port: int, count: int) -> None:
    """``count`` GOSSIPs, each from a new peer id and with a new id, all naming
    127.0.0.1:``target_port``."""
    for i in range(count):
        send_message(
            node_port,
            {
                "type": "GOSSIP",
                "host": "127.0.0.1",
                "port": target_port,
                "id": str(uuid.uuid4()),
                "peerId": f"forged-{i}-{uuid.uuid4().hex[:6]}",
            },
        )


async def push_bytes(node: Node, tmp_path: Path, data: bytes, name: str) -> str:
    src = tmp_path / "src" / name
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(data)
    meta = await node.push(src)
    return meta.file_id


def holds(node: Node, file_id: str) -> bool:
    entry = node.file(file_id)
    return entry is not None and entry.has_copy and node.store.blobs.has(file_id)


# -- a DELETE in the owner's name ------------------------------------------------------------------
async def test_a_forged_delete_in_the_owners_name_never_reaches_the_owner(
    start_node: Starter, tmp_path: Path
) -> None:
    """A stranger tells B that A deleted A's file. B cannot check that (it forgets its record),
    but it must not pass the DELETE on to A, and A must not believe a DELETE in its own name.

    A speaks only the classic protocol here: a TreeDrive owner's file is sealed, and B refuses
    a DELETE of it that A did not sign (tests/e2e/test_signed_ownership.py)."""
    a: Node = await start_node("A", extension=False)
    b: Node = await start_node("B", bootstrap=(address(a),), download_limit=0)
    file_id = await push_bytes(a, tmp_path, os.urandom(5000), "precious.bin")
    await wait_for(lambda: (e := b.file(file_id)) is not None and "A" in e.holders)

    await asyncio.to_thread(
        send_message, b.port, {"type": "DELETE", "from": "A", "file_id": file_id}
    )
    await wait_for(lambda: b.file(file_id) is None)  # B took the claim: it cannot check it

    await asyncio.sleep(8 * INTERVAL)  # A answers B's GOSSIPs with its file list meanwhile
    assert holds(a, file_id)
    assert a.file(file_id) is not None


async def test_a_delete_in_a_nodes_own_name_sent_to_it_is_refused(
    start_node: Starter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    a: Node = await start_node("A")
    file_id = await push_bytes(a, tmp_path, os.urandom(5000), "mine.bin")
    await asyncio.to_thread(
        send_message, a.port, {"type": "DELETE", "from": "A", "file_id": file_id}
    )

    def answered() -> bool:
        said = " ".join(r.getMessage() for r in caplog.records)
        return "own name refused" in said or not holds(a, file_id)

    await wait_for(answered, timeout=5)
    assert holds(a, file_id)


# -- a push that names the receiver as the owner ---------------------------------------------------
async def test_an_unsolicited_file_data_never_makes_the_receiver_its_owner(
    start_node: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    r: Node = await start_node("R")
    data = os.urandom(20_000)
    ts = int(time.time())
    fid = file_id_of(data, ts)
    raw = file_data(data, "yours.bin", ts, owner="R")

    def push() -> None:
        with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
            s.sendall(raw)

    await asyncio.to_thread(push)

    def settled() -> bool:
        said = " ".join(r.getMessage() for r in caplog.records)
        return fid[:12] in said or r.file(fid) is not None

    await wait_for(settled, timeout=5)
    await asyncio.sleep(0.2)
    entry = r.file(fid)
    assert entry is None or entry.meta.file_owner != r.peer_id
    assert not r.store.blobs.has(fid)
    assert all(e.meta.file_owner != r.peer_id for e in r.files())


async def test_a_stranger_cannot_make_this_node_the_owner_of_a_file_it_never_pushed(
    start_node: Starter, listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    """mallory's record naming R as the owner arrives FIRST (a GOSSIP_REPLY, then an
    ANNOUNCE), then the push of the file with valid bytes: R never records the file as its
    own, never stores it."""
    caplog.set_level(logging.INFO)
    r: Node = await start_node("R")
    data = os.urandom(20_000)
    ts = int(time.time())
    fid = file_id_of(data, ts)
    record = {"file_name": "yours.bin", "file_size": len(data) / 1048576, "file_id": fid,
              "file_owner": "R", "file_timestamp": ts}  # fmt: skip
    theirs = dict(record, file_id="ab" * 32, file_owner="mallory")
    reply = {"type": "GOSSIP_REPLY", "host": "127.0.0.1", "port": listener.port,
             "peerId": "mallory", "files": [record, theirs]}  # fmt: skip
    await asyncio.to_thread(send_message, r.port, reply)
    await wait_for(lambda: r.file("ab" * 32) is not None)  # the reply was handled
    assert r.file(fid) is None
    await asyncio.to_thread(send_message, r.port, {"type": "ANNOUNCE", "from": "mallory", **record})

    def push() -> None:
        with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
            s.sendall(file_data(data, "yours.bin", ts, owner="R"))

    await asyncio.to_thread(push)
    await wait_for(lambda: any("not stored" in m.getMessage() for m in caplog.records))
    await asyncio.sleep(0.2)
    assert r.file(fid) is None
    assert not r.store.blobs.has(fid)
    assert all(e.meta.file_owner != r.peer_id for e in r.files())
    assert r.forged_claims >= 3


@pytest.mark.parametrize("swim", [False, True], ids=["classic", "swim"])
async def test_an_honest_peer_stays_tracked_through_a_flood_of_new_peer_ids(
    start_node: Starter, counting: CountingListener, monkeypatch: pytest.MonkeyPatch, swim: bool
) -> None:
    """At max_peers, a flood of new peer ids (each newer than the honest peer's last GOSSIP)
    evicted the honest peer as the longest silent; a peer that answers R's GOSSIPs is kept.
    Between two nodes that speak swim (PROTOCOL.md 2.10) no classic GOSSIP goes, so the honest
    peer there is a member that answers R's probes; here it speaks only the classic protocol
    (``extension=False``), so that R's GOSSIPs and its answers prove it as before."""
    # A proof lasts 4 gossip intervals (2 s here), renewed each round; on a busy machine the
    # flood keeps the event loop (every node's, here) busy for seconds at a time, and R's
    # GOSSIP or H's answer waits behind it: the proof lapses. It lasts the whole test here.
    monkeypatch.setattr(replies, "PROVEN_FOR", 120 / INTERVAL)
    r: Node = await start_node("R", peer_timeout=30.0, max_peers=5, swim=swim)
    h: Node = await start_node(
        "H", bootstrap=(address(r),), peer_timeout=30.0, extension=swim, swim=swim
    )
    h_address = (h.host, h.port)
    if swim:
        await wait_for(lambda: r.swim.manages("H") and "H" in {p.peer_id for p in r.peers()})
    else:
        await wait_for(lambda: r.replies.proven(h_address, time.monotonic()))
    events = watch(r)
    await asyncio.to_thread(forged_gossips, r.port, counting.port, 300)

    def forged_seen() -> int:
        seen = (e for e in events.seen if isinstance(e, PeerSeen) and e.new)
        return len({e.peer.peer_id for e in seen if e.peer.peer_id.startswith("forged-")})

    # R has handled the whole flood: no connection of it left open (a busy R may have refused
    # some of them at its connection cap), and it took in far more peers than it tracks.
    await wait_for(lambda: r.network.stats()["connections"] == 0, timeout=30)
    assert forged_seen() >= 50
    assert "H" in {p.peer_id for p in r.peers()}
    assert not [e for e in events.seen if isinstance(e, PeerExpired) and e.peer_id == "H"]
    assert len(r.peers()) <= 5


# -- dialing on a stranger's say-so ----------------------------------------------------------------
async def test_forged_gossips_naming_one_address_make_few_dials_to_it(
    start_node: Starter, counting: CountingListener
) -> None:
    """200 GOSSIPs, each from a new peer id, all naming one address: the node dials it a few
    times per gossip interval (replies, its own gossip), not hundreds."""
    r: Node = await start_node("R", peer_timeout=30.0)
    started = time.monotonic()
    await asyncio.to_thread(forged_gossips, r.port, counting.port, 200)
    await wait_for(lambda: len(r.peers()) >= 50, timeout=10)
    await asyncio.sleep(6 * INTERVAL)
    elapsed = time.monotonic() - started
    allowed = 3 * elapsed / INTERVAL + 5
    assert counting.accepted <= allowed, (counting.accepted, elapsed)
    assert counting.accepted >= 1  # it is answered, once in a while


async def test_forged_peers_stay_within_max_peers(
    start_node: Starter, counting: CountingListener
) -> None:
    r: Node = await start_node("R", peer_timeout=30.0, max_peers=50)
    await asyncio.to_thread(forged_gossips, r.port, counting.port, 200)
    await asyncio.sleep(4 * INTERVAL)
    assert 0 < len(r.peers()) <= 50


# -- a full disk -----------------------------------------------------------------------------------
# small_disk (a real 12 MiB tmpfs; needs root) comes from tests/conftest.py.
def fill_to_the_last_byte(path: Path) -> None:
    """Write ``path`` until the disk is full, then a file next to it in small writes: the last
    few bytes too."""
    fill(path)
    fill(path.parent / "crumbs", block=512)


@contextlib.asynccontextmanager
async def node_on(root: Path, peer_id: str) -> AsyncIterator[Node]:
    async with running_node(fast_config(root / peer_id, peer_id)) as node:
        yield node


async def test_gossip_is_answered_when_the_disk_is_full(
    small_disk: Path, tmp_path: Path, listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    filler = small_disk / "filler"
    try:
        async with node_on(small_disk, "R") as r:
            file_id = await push_bytes(r, tmp_path, os.urandom(4000), "kept.bin")
            first = await asyncio.to_thread(listener.gossip_to, r.port, "before", 5)
            assert file_id in {f["file_id"] for f in first["files"]}
            await asyncio.to_thread(fill_to_the_last_byte, filler)

            for i in range(3):  # each a new peer: each needs a write that fails
                started = time.monotonic()
                answer = await asyncio.to_thread(listener.gossip_to, r.port, f"while-full-{i}", 5)
                assert time.monotonic() - started < 2
                assert answer["type"] == "GOSSIP_REPLY"
                assert answer["peerId"] == "R"
                assert file_id in {f["file_id"] for f in answer["files"]}
                await asyncio.sleep(INTERVAL)  # the next interval: a reply to the same address
            said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert any("not recorded" in m for m in said), said
    finally:
        filler.unlink(missing_ok=True)
        (small_disk / "crumbs").unlink(missing_ok=True)
