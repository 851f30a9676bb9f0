"""A TreeDrive node against an independent classic peer (tests/classic_peer.py), PROTOCOL.md part 1.

Every message type is exercised in both directions where it applies, and every interop hazard of
1.11 has a test. The classic peer runs on threads with blocking sockets, so each of its blocking
calls goes through ``asyncio.to_thread``: the node runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.classic_peer import ClassicPeer, file_id_of
from tests.conftest import wait_for
from treedrive.core import fileid
from treedrive.core.config import Address
from treedrive.core.errors import FetchFailed
from treedrive.core.model import MEGABYTE
from treedrive.core.node import Node

DATA = Path(__file__).resolve().parent.parent / "data"
NAMES = (DATA / "names.txt").read_bytes()
CLASS_RECORDS: list[dict[str, Any]] = json.loads((DATA / "class_records.json").read_text())
NAMES_ID = "ec51d2db09c604ea76a5891229095f9ecb258ad18a48ff657161ec95b6b82b58"
NAMES_TS = 1749713836
NAMES_ID_FLOAT = "9ae9c20e3e6066e2cce37d7639810a0d9268a5ee117bfcf28ef99ed576f327fe"
NAMES_TS_FLOAT = 1750028734.0
UNKNOWN_KEYS = {"peers_with_file": ["peer04", "Silicon"], "has_copy": "yes"}

QUIET = {"gossip_interval": 60.0, "peer_timeout": 60.0, "download_limit": 0}
"""The node gossips once (at start), never drops a peer and fetches nothing by itself during a
test: what a classic peer receives is then only what the test caused."""

PATIENT = {**QUIET, "reply_timeout": 60.0}
"""A client that waited for EOF (or a slow stream) would stall far past the test's timeout."""


@pytest.fixture
def classic(classic_peer: Callable[..., ClassicPeer]) -> Callable[..., ClassicPeer]:
    """``classic("bob", **switches)``: conftest's ``classic_peer`` under this file's name."""
    return classic_peer


def at(node: Node) -> tuple[str, int]:
    return (node.host, node.port)


def boot(*peers: ClassicPeer) -> tuple[Address, ...]:
    return tuple(Address(*p.address) for p in peers)


def tracks(node: Node, *peer_ids: str) -> bool:
    known = {p.peer_id for p in node.peers()}
    return all(p in known for p in peer_ids)


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking classic-peer call off the event loop the node runs on."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def outside_files(node: Node) -> list[Path]:
    """Files under the node's data dir that are not its own bookkeeping or a blob."""
    root = node.config.data_dir
    own = {
        "treedrive.db",
        "treedrive.db-wal",
        "treedrive.db-shm",
        "node.log",
        "node.json",
        "lock",
        "node.key",
    }
    out = []
    for path in root.rglob("*"):
        if path.is_dir():
            continue
        rel = path.relative_to(root)
        if rel.parts[0] == "blobs" and len(rel.parts) == 2 and fileid.is_file_id(rel.parts[1]):
            continue
        if len(rel.parts) == 1 and rel.name in own:
            continue
        out.append(rel)
    return out


def partials(node: Node) -> list[Path]:
    return list(node.store.blobs.partial_dir.iterdir())


async def gossip_barrier(node: Node, peer: ClassicPeer) -> dict[str, Any]:
    """A fresh GOSSIP and its GOSSIP_REPLY: the node handled what the peer sent before."""
    before = len(peer.messages("GOSSIP_REPLY", peerId=node.peer_id))
    await call(peer.send_gossip, at(node))
    replies = await wait_for(
        lambda: (r := peer.messages("GOSSIP_REPLY", peerId=node.peer_id))[before:] and r
    )
    return replies[-1]


# -- class network vectors -----------------------------------------------------------------------
def test_class_network_ids_verify() -> None:
    assert len(NAMES) == 1483
    assert fileid.compute_file_id(NAMES, NAMES_TS) == NAMES_ID
    # A float timestamp hashes as its integer part, never as "1750028734.0".
    assert fileid.matches(hashlib.sha256(NAMES), NAMES_TS_FLOAT, NAMES_ID_FLOAT)
    assert hashlib.sha256(NAMES + b"1750028734.0").hexdigest() != NAMES_ID_FLOAT
    assert not fileid.matches(hashlib.sha256(NAMES), NAMES_TS, NAMES_ID_FLOAT)
    ids = {r["file_id"]: r["file_timestamp"] for r in CLASS_RECORDS}
    assert ids[NAMES_ID] == NAMES_TS
    assert ids[NAMES_ID_FLOAT] == NAMES_TS_FLOAT
    # The classic peer of these tests computes the same ids independently.
    assert file_id_of(NAMES, NAMES_TS) == NAMES_ID
    assert file_id_of(NAMES, NAMES_TS_FLOAT) == NAMES_ID_FLOAT


# -- GOSSIP / GOSSIP_REPLY -----------------------------------------------------------------------
async def test_node_bootstraps_through_classic_peer(start_node, classic) -> None:
    bob = classic("bob")
    record = bob.add_file("names.txt", NAMES, NAMES_TS, owner="PROF", extra=UNKNOWN_KEYS)
    alice = await start_node("alice", bootstrap=boot(bob), **QUIET)

    gossip = (await wait_for(lambda: bob.messages("GOSSIP", peerId="alice")))[0]
    assert (gossip["host"], gossip["port"]) == at(alice)
    assert str(uuid.UUID(gossip["id"])) == gossip["id"]
    await wait_for(lambda: tracks(alice, "bob"))
    peer = next(p for p in alice.peers() if p.peer_id == "bob")
    assert (peer.host, peer.port) == bob.address
    assert peer.features is None  # a classic peer
    entry = await wait_for(lambda: alice.file(NAMES_ID))
    assert entry.holders == ("bob",)
    assert not entry.has_copy
    assert entry.meta.file_name == "names.txt"
    assert entry.meta.file_owner == "PROF"
    assert entry.meta.file_timestamp == NAMES_TS
    assert entry.meta.file_size == record["file_size"]
    # The classic peer tracks the node from its GOSSIP.
    assert bob.tracked()["alice"] == at(alice)


async def test_new_node_fetches_advertised_files_at_join(start_node, classic) -> None:
    bob = classic("bob")
    bob.add_file("names.txt", NAMES, NAMES_TS, owner="PROF")
    alice = await start_node("alice", bootstrap=boot(bob), peer_timeout=60.0)

    await wait_for(lambda: bob.messages("ANNOUNCE", file_id=NAMES_ID, **{"from": "alice"}))
    assert bob.messages("GET_FILE", file_id=NAMES_ID)
    assert alice.store.blobs.path(NAMES_ID).read_bytes() == NAMES


@pytest.mark.parametrize("switches", [{}, {"trailing_newline": True}, {"split_writes": True}])
async def test_node_answers_classic_gossip(start_node, classic, tmp_path, switches) -> None:
    alice = await start_node("alice", **QUIET)
    src = tmp_path / "report.txt"
    src.write_bytes(b"quarterly numbers\n" * 40)
    meta = await alice.push(src)
    bob = classic("bob", **switches)

    sent = await call(bob.send_gossip, at(alice), extra={"x-student-key": 1})
    reply = (await wait_for(lambda: bob.messages("GOSSIP_REPLY")))[0]
    assert reply["peerId"] == "alice"
    assert (reply["host"], reply["port"]) == at(alice)
    assert len(reply["files"]) == 1
    record = reply["files"][0]
    assert record["file_id"] == meta.file_id
    assert record["file_name"] == "report.txt"
    assert record["file_owner"] == "alice"
    assert isinstance(record["file_timestamp"], int)
    assert record["file_size"] == pytest.approx(src.stat().st_size / MEGABYTE)
    assert file_id_of(src.read_bytes(), record["file_timestamp"]) == record["file_id"]
    peer = next(p for p in alice.peers() if p.peer_id == "bob")
    assert (peer.host, peer.port) == (sent["host"], sent["port"])


async def test_gossip_reply_goes_to_the_address_in_the_message(start_node, classic) -> None:
    alice = await start_node("alice", **QUIET)
    bob, carol = classic("bob"), classic("carol")

    # bob relays carol's GOSSIP: the reply must go to carol's host/port, not to bob's socket.
    await call(bob.send_gossip, at(alice), peer_id="carol", host=carol.host, port=carol.port)
    reply = (await wait_for(lambda: carol.messages("GOSSIP_REPLY")))[0]
    assert reply["peerId"] == "alice"
    assert reply["files"] == []
    peer = next(p for p in alice.peers() if p.peer_id == "carol")
    assert (peer.host, peer.port) == carol.address
    await gossip_barrier(alice, bob)
    assert len(bob.messages("GOSSIP_REPLY", peerId="alice")) == 1  # only the barrier's


async def test_node_forwards_gossip_unchanged(start_node, classic) -> None:
    bob, carol = classic("bob"), classic("carol")
    alice = await start_node("alice", bootstrap=boot(bob), **QUIET)
    await wait_for(lambda: tracks(alice, "bob"))

    sent = await call(carol.send_gossip, at(alice), extra={"x-student-key": {"a": [1, 2]}})
    forwarded = await wait_for(lambda: bob.messages("GOSSIP", id=sent["id"]))
    assert forwarded[0] == sent  # same id, peerId, host, port, unknown keys; nothing added
    # carol hears from both (alice answers, bob answers the forwarded GOSSIP's originator) ...
    await wait_for(lambda: carol.messages("GOSSIP_REPLY", peerId="alice"))
    await wait_for(lambda: carol.messages("GOSSIP_REPLY", peerId="bob"))
    # ... and is never sent her own GOSSIP back; bob's forward to alice is dropped as seen. (The
    # barrier comes from another address: carol was answered once this interval already.)
    await gossip_barrier(alice, classic("barrier"))
    assert carol.messages("GOSSIP", id=sent["id"]) == []
    assert len(carol.messages("GOSSIP_REPLY", peerId="alice")) == 1


async def test_node_forwards_to_at_most_three_peers(start_node, classic) -> None:
    tracked = [classic(f"b{i}") for i in range(4)]
    origin = classic("origin")
    alice = await start_node("alice", bootstrap=boot(*tracked), **QUIET)
    await wait_for(lambda: tracks(alice, "b0", "b1", "b2", "b3"))

    sent = await call(origin.send_gossip, at(alice))
    await wait_for(lambda: sum(bool(p.messages("GOSSIP", id=sent["id"])) for p in tracked) >= 3)
    await gossip_barrier(alice, classic("barrier"))  # origin was answered this interval
    await asyncio.sleep(0.2)
    assert sum(bool(p.messages("GOSSIP", id=sent["id"])) for p in tracked) == 3


async def test_repeated_gossip_id_is_answered_and_forwarded_once(start_node, classic) -> None:
    alice = await start_node("alice", **QUIET)
    bob, carol = classic("bob"), classic("carol")
    await call(carol.send_gossip, at(alice))
    await wait_for(lambda: tracks(alice, "carol"))

    sent = await call(bob.send_gossip, at(alice))
    await wait_for(lambda: bob.messages("GOSSIP_REPLY"))
    await wait_for(lambda: carol.messages("GOSSIP", id=sent["id"]))  # forwarded to carol
    await call(bob.send, at(alice), sent)  # the very same GOSSIP again, twice
    await call(bob.send, at(alice), sent)
    await gossip_barrier(alice, classic("barrier"))
    await asyncio.sleep(0.2)
    assert len(bob.messages("GOSSIP_REPLY", peerId="alice")) == 1
    assert len(carol.messages("GOSSIP", id=sent["id"])) == 1  # the repeats were not forwarded


async def test_gossip_with_the_nodes_own_peer_id_is_ignored(start_node, classic) -> None:
    alice = await start_node("alice", **QUIET)
    bob, carol = classic("bob"), classic("carol")
    await call(carol.send_gossip, at(alice))
    await wait_for(lambda: tracks(alice, "carol"))

    await call(bob.send_gossip, at(alice), peer_id="alice")
    await gossip_barrier(alice, bob)
    await asyncio.sleep(0.2)
    assert len(bob.messages("GOSSIP_REPLY", peerId="alice")) == 1  # only the barrier's
    assert {p.peer_id for p in alice.peers()} == {"bob", "carol"}
    assert carol.messages("GOSSIP", peerId="alice") == []  # not forwarded either


async def test_gossip_with_numbers_as_strings_and_strings_as_numbers(start_node, classic) -> None:
    """Hazard 2: a port written as a string, a peerId written as a number."""
    alice = await start_node("alice", **QUIET)
    bob = classic("bob")

    await call(bob.send_gossip, at(alice), peer_id=4242, port=str(bob.port))
    reply = (await wait_for(lambda: bob.messages("GOSSIP_REPLY")))[0]
    assert reply["peerId"] == "alice"
    peer = next(p for p in alice.peers() if p.peer_id == "4242")
    assert (peer.host, peer.port) == bob.address


async def test_silent_classic_peer_is_dropped_with_its_files(start_node, classic) -> None:
    bob = classic("bob")
    bob.add_file("names.txt", NAMES, NAMES_TS, owner="PROF")
    alice = await start_node("alice", bootstrap=boot(bob), peer_timeout=1.0, download_limit=0)
    await wait_for(lambda: alice.file(NAMES_ID))
    assert tracks(alice, "bob")

    await call(bob.stop)
    await wait_for(lambda: not tracks(alice, "bob"), timeout=5)
    await wait_for(lambda: alice.file(NAMES_ID) is None, timeout=5)


async def test_gossip_reply_merge_keeps_the_first_timestamp_that_can_verify(
    start_node, classic
) -> None:
    """The id commits to the timestamp's integer part: a record that names another timestamp
    for a known id is a claim that would make honest holders fail verification, so the first
    record seen stays (the store's tests cover a later one that hashes the same, 1000 -> 1000.5:
    here classic peers would merge each other's records first)."""
    data = b"same bytes, three records"
    first = classic("first", timestamp_style="int")
    later = classic("later", timestamp_style="float")
    older = classic("older", timestamp_style="string")
    file_id = file_id_of(data, 1000)
    first.add_record({**first.make_record("first.txt", data, 1000), "file_id": file_id})
    later.add_record({**later.make_record("later.txt", data, 2000.5), "file_id": file_id})
    older.add_record({**older.make_record("older.txt", data, 500), "file_id": file_id})
    alice = await start_node("alice", bootstrap=boot(first), **QUIET)
    await wait_for(lambda: alice.file(file_id))

    for peer in (later, older):  # tracked, then asked: their GOSSIP_REPLYs list the record
        await call(peer.send_gossip, at(alice))
    await wait_for(lambda: tracks(alice, "later", "older"))
    await alice.gossip_now()
    entry = await wait_for(lambda: (e := alice.file(file_id)) and len(e.holders) == 3 and e)
    assert entry.holders == ("first", "later", "older")
    assert (entry.meta.file_name, entry.meta.file_timestamp) == ("first.txt", 1000)


async def test_real_class_network_records_are_recorded(start_node, classic) -> None:
    bob = classic("bob")
    for record in CLASS_RECORDS:
        bob.add_record(record)
    alice = await start_node("alice", bootstrap=boot(bob), **QUIET)

    await wait_for(lambda: len(alice.files()) == len(CLASS_RECORDS))
    for record in CLASS_RECORDS:
        entry = alice.file(record["file_id"])
        assert entry is not None, record["file_name"]
        assert entry.meta.file_timestamp == record["file_timestamp"]
        assert type(entry.meta.file_timestamp) is type(record["file_timestamp"])
        assert entry.meta.file_owner == record["file_owner"]
        assert entry.meta.file_size == record["file_size"]
        assert entry.holders == ("bob",)
    # The node keeps answering, and does not claim to hold any of them.
    reply = await gossip_barrier(alice, bob)
    assert reply["files"] == []


async def test_malformed_records_are_skipped_and_the_rest_recorded(start_node, classic) -> None:
    bob = classic("bob")
    good = bob.add_file("names.txt", NAMES, NAMES_TS, owner="PROF")
    base = bob.make_record("bad.txt", b"bad", 1750000000)
    for broken in (
        {**base, "file_id": "not-a-file-id"},
        {**base, "file_id": "0" * 63},
        {**base, "file_timestamp": None},
        {**base, "file_name": None},
        {**base, "file_owner": ""},
        {"file_id": base["file_id"] + "0"},
    ):
        bob.add_record(broken)
    alice = await start_node("alice", bootstrap=boot(bob), **QUIET)

    await wait_for(lambda: alice.file(good["file_id"]))
    await gossip_barrier(alice, bob)
    assert [e.meta.file_id for e in alice.files()] == [good["file_id"]]
    assert tracks(alice, "bob")


# -- GET_FILE / FILE_DATA ------------------------------------------------------------------------
async def test_node_gets_a_file_from_a_classic_peer(start_node, classic) -> None:
    bob, carol = classic("bob"), classic("carol")
    bob.add_file("names.txt", NAMES, NAMES_TS, owner="PROF")
    alice = await start_node("alice", bootstrap=boot(bob, carol), **QUIET)
    await wait_for(lambda: tracks(alice, "bob", "carol") and alice.file(NAMES_ID))

    entry = await alice.get(NAMES_ID)
    assert entry.has_copy
    assert entry.size_bytes == len(NAMES)
    assert alice.store.blobs.path(NAMES_ID).read_bytes() == NAMES
    assert bob.messages("GET_FILE") == [{"type": "GET_FILE", "file_id": NAMES_ID}]
    for peer in (bob, carol):
        announce = (await wait_for(lambda p=peer: p.messages("ANNOUNCE", file_id=NAMES_ID)))[0]
        assert announce["from"] == "alice"
        assert announce["file_owner"] == "PROF"
        assert announce["file_name"] == "names.txt"
        assert announce["file_timestamp"] == NAMES_TS
    assert partials(alice) == []


@pytest.mark.timeout(15)
async def test_get_from_a_server_that_keeps_the_socket_open(start_node, classic) -> None:
    """Hazard 1: the reply is complete but the socket stays open; a client reading to EOF would
    wait out its 60 s reply timeout and fail this test's 15 s timeout."""
    bob = classic("bob", keep_open_after_reply=True)
    bob.add_file("names.txt", NAMES, NAMES_TS, owner="PROF")
    alice = await start_node("alice", bootstrap=boot(bob), **PATIENT)
    await wait_for(lambda: alice.file(NAMES_ID))

    entry = await alice.get(NAMES_ID)
    assert entry.has_copy
    assert alice.store.blobs.path(NAMES_ID).read_bytes() == NAMES


HAZARDS = {
    "plain": {},
    "trailing-newline": {"trailing_newline": True},
    "split-writes": {"split_writes": True},
    "float-timestamp": {"timestamp_style": "float"},
    "string-timestamp": {"timestamp_style": "string"},
    "size-in-bytes": {"size_in_bytes": True},
    "data-first": {"data_first": True},
    "keep-open": {"keep_open_after_reply": True},
}


@pytest.mark.timeout(15)
@pytest.mark.parametrize("switches", HAZARDS.values(), ids=HAZARDS.keys())
async def test_node_gets_a_file_despite_classic_quirks(start_node, classic, switches) -> None:
    bob = classic("bob", **switches)
    record = bob.add_file("names.txt", NAMES, 1750028734, owner="peer05", extra=UNKNOWN_KEYS)
    assert record["file_id"] == NAMES_ID_FLOAT
    alice = await start_node("alice", bootstrap=boot(bob), **PATIENT)
    known = await wait_for(lambda: alice.file(NAMES_ID_FLOAT))
    assert known.meta.file_timestamp == record["file_timestamp"]
    assert known.meta.file_size == record["file_size"]

    entry = await alice.get(NAMES_ID_FLOAT)
    assert entry.has_copy
    assert entry.size_bytes == len(NAMES)
    assert alice.store.blobs.path(NAMES_ID_FLOAT).read_bytes() == NAMES
    # A plain classic peer can fetch it back from the node, and verify it.
    carol = classic("carol")
    reply = await call(carol.get_file_reply, at(alice), NAMES_ID_FLOAT, 10)
    assert bytes.fromhex(reply["data"]) == NAMES
    assert file_id_of(NAMES, reply["file_timestamp"]) == NAMES_ID_FLOAT


async def test_node_verifies_a_file_whose_timestamp_is_a_date_string(start_node, classic) -> None:
    """One class peer sent ``"Sun Jun 15 21:36:41 2025"`` and hashed it as written."""
    when = "Sun Jun 15 21:36:41 2025"
    data = b"Hi from a peer with a date for a timestamp"
    bob = classic("bob")
    record = {**bob.make_record("A_Hi.txt", data, 0), "file_timestamp": when}
    record["file_id"] = hashlib.sha256(data + when.encode()).hexdigest()
    bob.add_record(record, data)
    alice = await start_node("alice", bootstrap=boot(bob), **QUIET)
    await wait_for(lambda: alice.file(record["file_id"]))

    entry = await alice.get(record["file_id"])
    assert entry.has_copy
    assert entry.meta.file_timestamp == when
    assert alice.store.blobs.path(record["file_id"]).read_bytes() == data


async def test_holder_without_the_file_is_skipped(start_node, classic) -> None:
    """A classic peer can advertise a file it cannot serve: its null FILE_DATA sends the node to
    the next holder, and the files it does hold stay fetchable from it."""
    data = b"only carol really has this"
    bob, carol = classic("bob"), classic("carol")
    bob.add_file("names.txt", NAMES, NAMES_TS, owner="PROF")
    record = carol.add_file("real.txt", data, 1750000003)
    bob.add_record(record)  # advertised, no bytes
    alice = await start_node("alice", bootstrap=boot(carol, bob), **QUIET)
    await wait_for(lambda: (e := alice.file(record["file_id"])) and len(e.holders) == 2)
    await wait_for(lambda: alice.file(NAMES_ID))
    await call(bob.send_gossip, at(alice))  # bob seen last: asked first
    await wait_for(
        lambda: (seen := {p.peer_id: p.last_seen for p in alice.peers()})["bob"] > seen["carol"]
    )

    entry = await alice.get(record["file_id"])
    assert entry.has_copy
    assert bob.messages("GET_FILE", file_id=record["file_id"])
    assert carol.messages("GET_FILE", file_id=record["file_id"])
    assert alice.store.blobs.path(record["file_id"]).read_bytes() == data
    assert (await alice.get(NAMES_ID)).has_copy
    assert alice.store.blobs.path(NAMES_ID).read_bytes() == NAMES


@pytest.mark.parametrize("switches", [{}, {"trailing_newline": True}, {"split_writes": True}])
async def test_classic_peer_gets_a_file_from_the_node(
    start_node, classic, tmp_path, switches
) -> None:
    alice = await start_node("alice", **QUIET)
    content = bytes(range(256)) * 300
    src = tmp_path / "blob.bin"
    src.write_bytes(content)
    meta = await alice.push(src)
    bob = classic("bob", **switches)

    reply = await call(bob.get_file_reply, at(alice), meta.file_id, 10)
    assert reply["type"] == "FILE_DATA"
    assert reply["data"] == content.hex()  # lowercase hex
    assert reply["file_id"] == meta.file_id
    assert reply["file_name"] == "blob.bin"
    assert reply["file_owner"] == "alice"
    assert file_id_of(content, reply["file_timestamp"]) == meta.file_id


async def test_get_of_a_missing_file_answers_null_and_closes(start_node, classic) -> None:
    carol = classic("carol")
    advertised = carol.add_file("names.txt", NAMES, NAMES_TS, owner="PROF")
    alice = await start_node("alice", bootstrap=boot(carol), **QUIET)
    bob = classic("bob")
    await wait_for(lambda: alice.file(NAMES_ID))

    # exchange_until_eof raises TimeoutError if the node leaves the socket open.
    raw = await call(bob.exchange_until_eof, at(alice), {"type": "GET_FILE", "file_id": "0" * 64})
    reply = json.loads(raw)
    assert reply["type"] == "FILE_DATA"
    assert reply["file_id"] is None
    assert reply["data"] is None
    assert await call(bob.get_file, at(alice), "0" * 64, 10) is None
    # Known to the node but not held by it: "not here" too.
    assert await call(bob.get_file, at(alice), advertised["file_id"], 10) is None


PUSH_HAZARDS = {k: v for k, v in HAZARDS.items() if k != "keep-open"}


@pytest.mark.parametrize("switches", PUSH_HAZARDS.values(), ids=PUSH_HAZARDS.keys())
async def test_classic_push_is_stored_and_announced(start_node, classic, switches) -> None:
    bob = classic("bob", **switches)
    alice = await start_node("alice", bootstrap=boot(bob), **QUIET)
    await wait_for(lambda: tracks(alice, "bob"))
    data = b"pushed by a classic peer\n" * 50

    record = await call(bob.push_file, at(alice), "hello.txt", data, 1743466870, extra=UNKNOWN_KEYS)
    entry = await wait_for(lambda: (e := alice.file(record["file_id"])) and e.has_copy and e)
    assert alice.store.blobs.path(record["file_id"]).read_bytes() == data
    assert entry.meta.file_owner == "bob"
    assert entry.meta.file_timestamp == record["file_timestamp"]
    announce = await wait_for(lambda: bob.messages("ANNOUNCE", file_id=record["file_id"]))
    assert announce[0]["from"] == "alice"
    assert announce[0]["file_owner"] == "bob"
    carol = classic("carol")
    assert await call(carol.get_file, at(alice), record["file_id"], 10) == data


async def test_node_push_reaches_the_classic_peer(start_node, classic, tmp_path) -> None:
    bob = classic("bob")
    alice = await start_node("alice", bootstrap=boot(bob), **QUIET)
    await wait_for(lambda: tracks(alice, "bob"))
    src = tmp_path / "notes.md"
    src.write_bytes(b"# notes\n" + bytes(range(256)) * 20)

    meta = await alice.push(src)
    pushed = (await wait_for(lambda: bob.messages("FILE_DATA")))[0]
    assert bytes.fromhex(pushed["data"]) == src.read_bytes()
    assert pushed["file_id"] == meta.file_id
    assert file_id_of(src.read_bytes(), pushed["file_timestamp"]) == meta.file_id
    assert pushed["file_name"] == "notes.md"
    assert pushed["file_owner"] == "alice"
    announce = (await wait_for(lambda: bob.messages("ANNOUNCE", file_id=meta.file_id)))[0]
    assert announce["from"] == "alice"
    assert bob.blob(meta.file_id) == src.read_bytes()


async def test_a_large_file_both_ways(start_node, classic, tmp_path) -> None:
    """4 MiB: more than the seed's own peer could move before a classic sender times out."""
    content = hashlib.sha256(b"seed").digest() * (4 * MEGABYTE // 32)
    bob = classic("bob")
    alice = await start_node("alice", bootstrap=boot(bob), **QUIET)
    await wait_for(lambda: tracks(alice, "bob"))

    record = await call(bob.push_file, at(alice), "big.bin", content, 1750000004)
    await wait_for(lambda: (e := alice.file(record["file_id"])) and e.has_copy)
    assert alice.store.blobs.path(record["file_id"]).read_bytes() == content
    carol = classic("carol")
    assert await call(carol.get_file, at(alice), record["file_id"], 20) == content


# -- ANNOUNCE ------------------------------------------------------------------------------------
async def test_announce_from_a_classic_peer_adds_the_holder(start_node, classic) -> None:
    bob, carol = classic("bob"), classic("carol")
    bob.add_file("names.txt", NAMES, NAMES_TS, owner="PROF")
    alice = await start_node("alice", bootstrap=boot(bob), **QUIET)
    await wait_for(lambda: alice.file(NAMES_ID))
    # carol is tracked: the cleanup sweep (every 0.25 s here) forgets holders that are not, and
    # with them the records nobody else holds, which made this test race with it.
    await call(carol.send_gossip, at(alice))
    await wait_for(lambda: tracks(alice, "carol"))

    # A known file gains a holder; an unknown one is recorded with its announcer as holder.
    await call(carol.announce, at(alice), record=bob.entry(NAMES_ID).record)
    other = carol.make_record("other.txt", b"other", 1750000000, owner="dave")
    await call(carol.announce, at(alice), record={**other, **UNKNOWN_KEYS})
    await wait_for(lambda: alice.file(NAMES_ID).holders == ("bob", "carol"))
    entry = await wait_for(lambda: alice.file(other["file_id"]))
    assert entry.holders == ("carol",)
    assert not entry.has_copy
    assert entry.meta.file_owner == "dave"
    assert entry.meta.file_name == "other.txt"


# -- DELETE --------------------------------------------------------------------------------------
async def _node_holding_names(start_node, classic) -> tuple[Node, ClassicPeer]:
    bob = classic("bob")
    bob.add_file("names.txt", NAMES, NAMES_TS, owner="PROF")
    alice = await start_node("alice", bootstrap=boot(bob), **QUIET)
    await wait_for(lambda: alice.file(NAMES_ID))
    await alice.get(NAMES_ID)
    return alice, bob


async def test_delete_from_a_non_owner_is_ignored(start_node, classic) -> None:
    alice, bob = await _node_holding_names(start_node, classic)

    for impostor in ("bob", "prof", "PROF ", "alice"):
        await call(bob.delete, at(alice), NAMES_ID, from_=impostor)
    reply = await gossip_barrier(alice, bob)
    assert [f["file_id"] for f in reply["files"]] == [NAMES_ID]
    entry = alice.file(NAMES_ID)
    assert entry is not None
    assert entry.has_copy
    assert alice.store.blobs.path(NAMES_ID).read_bytes() == NAMES


async def test_delete_from_the_owner_removes_record_and_blob(start_node, classic) -> None:
    alice, _ = await _node_holding_names(start_node, classic)
    carol = classic("carol")

    await call(carol.delete, at(alice), NAMES_ID, from_="PROF")
    await wait_for(lambda: alice.file(NAMES_ID) is None)
    assert not alice.store.blobs.has(NAMES_ID)
    reply = await gossip_barrier(alice, carol)
    assert reply["files"] == []


async def test_deleted_file_is_not_resurrected_by_a_classic_peer(start_node, classic) -> None:
    """bob missed the owner's DELETE and keeps advertising the file (PROTOCOL.md 1.8)."""
    alice, bob = await _node_holding_names(start_node, classic)
    carol = classic("carol")
    await call(carol.delete, at(alice), NAMES_ID, from_="PROF")
    await wait_for(lambda: alice.file(NAMES_ID) is None)

    await call(bob.announce, at(alice), NAMES_ID)
    await call(bob.push_file, at(alice), "names.txt", NAMES, NAMES_TS, owner="PROF")
    asked = time.time()
    await alice.gossip_now()  # bob answers with a GOSSIP_REPLY listing the file
    await wait_for(lambda: next(p for p in alice.peers() if p.peer_id == "bob").last_seen >= asked)
    await gossip_barrier(alice, bob)
    assert alice.file(NAMES_ID) is None
    assert not alice.store.blobs.has(NAMES_ID)
    assert partials(alice) == []


async def test_node_delete_reaches_the_classic_peer(start_node, classic, tmp_path) -> None:
    bob = classic("bob")
    alice = await start_node("alice", bootstrap=boot(bob), **QUIET)
    await wait_for(lambda: tracks(alice, "bob"))
    src = tmp_path / "temp.txt"
    src.write_bytes(b"short-lived")
    meta = await alice.push(src)
    await wait_for(lambda: bob.has_file(meta.file_id))

    await alice.delete(meta.file_id)
    delete = (await wait_for(lambda: bob.messages("DELETE")))[0]
    assert delete == {"type": "DELETE", "from": "alice", "file_id": meta.file_id}
    await wait_for(lambda: not bob.has_file(meta.file_id))
    assert alice.file(meta.file_id) is None


# -- bad data ------------------------------------------------------------------------------------
async def test_corrupted_file_is_refused(start_node, classic) -> None:
    bad = classic("bad", corrupt_data=True)
    bad.add_file("names.txt", NAMES, NAMES_TS, owner="PROF")
    alice = await start_node("alice", bootstrap=boot(bad), **QUIET)
    await wait_for(lambda: alice.file(NAMES_ID))

    with pytest.raises(FetchFailed):
        await alice.get(NAMES_ID)
    assert bad.messages("GET_FILE")
    assert not alice.store.blobs.has(NAMES_ID)
    assert not alice.file(NAMES_ID).has_copy
    assert partials(alice) == []
    assert outside_files(alice) == []
    assert bad.messages("ANNOUNCE") == []
    assert alice.distrusted("bad")  # its bytes verified under neither timestamp


async def test_classic_fetch_stops_at_the_records_size(start_node, classic) -> None:
    """A classic holder that sends more than the record says is cut off before the extra bytes
    are written: a record of 0.001 MB never costs 256 KiB of disk."""
    data = bytes(range(256)) * 1024
    bob = classic("bob")
    record = {**bob.make_record("big.bin", data, NAMES_TS), "file_size": 0.001}
    bob.add_record(record, data)
    alice = await start_node("alice", bootstrap=boot(bob), **QUIET)
    await wait_for(lambda: alice.file(record["file_id"]))

    with pytest.raises(FetchFailed, match="more than"):
        await alice.get(record["file_id"])
    assert bob.messages("GET_FILE")
    assert not alice.store.blobs.has(record["file_id"])
    assert partials(alice) == []


async def test_corrupted_file_then_next_holder(start_node, classic) -> None:
    good = classic("good")
    bad = classic("bad", corrupt_data=True)
    for peer in (good, bad):
        peer.add_file("names.txt", NAMES, NAMES_TS, owner="PROF")
    alice = await start_node("alice", bootstrap=boot(good, bad), **QUIET)
    await wait_for(lambda: (e := alice.file(NAMES_ID)) and len(e.holders) == 2)

    # bad was seen last, so the default holder order tries it first.
    await call(bad.send_gossip, at(alice))
    await wait_for(
        lambda: (seen := {p.peer_id: p.last_seen for p in alice.peers()})["bad"] > seen["good"]
    )
    entry = await alice.get(NAMES_ID)
    assert entry.has_copy
    assert bad.messages("GET_FILE")
    assert good.messages("GET_FILE")
    assert alice.store.blobs.path(NAMES_ID).read_bytes() == NAMES
    assert partials(alice) == []


async def test_classic_peer_dying_mid_transfer_leaves_nothing(start_node, classic) -> None:
    bad = classic("bad", die_mid_transfer=True)
    bad.add_file("names.txt", NAMES, NAMES_TS, owner="PROF")
    alice = await start_node("alice", bootstrap=boot(bad), **QUIET)
    await wait_for(lambda: alice.file(NAMES_ID))

    with pytest.raises(FetchFailed):
        await alice.get(NAMES_ID)
    assert bad.messages("GET_FILE")
    assert not alice.store.blobs.has(NAMES_ID)
    assert not alice.file(NAMES_ID).has_copy
    assert partials(alice) == []
    assert outside_files(alice) == []


async def test_classic_pusher_dying_mid_transfer_leaves_nothing(start_node, classic) -> None:
    alice = await start_node("alice", **QUIET)
    bad = classic("bad", die_mid_transfer=True)

    record = await call(bad.push_file, at(alice), "names.txt", NAMES, NAMES_TS, owner="PROF")
    await gossip_barrier(alice, bad)
    await wait_for(lambda: partials(alice) == [])
    assert alice.file(record["file_id"]) is None
    assert not alice.store.blobs.has(record["file_id"])
    assert outside_files(alice) == []


async def test_corrupted_push_is_refused(start_node, classic) -> None:
    alice = await start_node("alice", **QUIET)
    bob = classic("bob")

    wrong = file_id_of(b"something else", NAMES_TS)
    await call(bob.push_file, at(alice), "names.txt", NAMES, NAMES_TS, file_id=wrong)
    await gossip_barrier(alice, bob)
    await wait_for(lambda: partials(alice) == [])
    assert alice.file(wrong) is None
    assert not alice.store.blobs.has(wrong)
    assert outside_files(alice) == []


@pytest.mark.parametrize("name", ["../../x", "..\\..\\x", "/ABSOLUTE/x", "a\x00b/../x"])
async def test_file_name_is_never_a_path(start_node, classic, tmp_path, name) -> None:
    if name.startswith("/ABSOLUTE"):
        name = str(tmp_path / "absolute-x")
    bob = classic("bob")
    held = bob.add_file(name, b"served under a hostile name", 1750000001, owner="mallory")
    alice = await start_node("alice", bootstrap=boot(bob), **QUIET)
    await wait_for(lambda: alice.file(held["file_id"]))

    pushed = await call(bob.push_file, at(alice), name, b"pushed under a hostile name", 1750000002)
    await alice.get(held["file_id"])
    await wait_for(lambda: (e := alice.file(pushed["file_id"])) and e.has_copy)
    for record in (held, pushed):
        assert alice.store.blobs.path(record["file_id"]).is_file()
    assert outside_files(alice) == []
    for where in (tmp_path, tmp_path.parent, alice.config.data_dir, alice.store.blobs.blob_dir):
        assert not (where / "x").exists()
    assert not (tmp_path / "absolute-x").exists()
