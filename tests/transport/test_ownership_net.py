"""Signed ownership between in-process nodes, with a stranger on raw sockets (PROTOCOL.md 2.8):
records a TreeDrive node pushes travel sealed and are kept sealed; a record that contradicts
one, or a DELETE its owner did not sign, changes nothing; the owner's DELETE goes everywhere,
signed, and relays carry its signature on."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import address, wait_for, watch
from tests.transport.test_raw import Recorder, recorder, send
from treedrive.core.events import FileRefused
from treedrive.core.identity import NodeKey, decode_signature, delete_claim, encode_b64, verify
from treedrive.core.model import FileMeta
from treedrive.core.node import Node
from treedrive.core.ownership import SEAL_CHECKS_BURST, seal, sign_delete
from treedrive.transport import codec, wire
from treedrive.transport.extension import sealed_record

pytestmark = pytest.mark.timeout(60)
Starter = Callable[..., Any]
FEATURES = {"treedrive": {"version": 1, "features": ["raw-push", "raw-range", "stream-push"]}}
MALLORY = NodeKey.generate()
__all__ = ["recorder"]  # the fixture, used here


def post(node: Node, message: dict[str, Any]) -> None:
    send(node.port, codec.encode_message(message))


async def network(start_node: Starter, tmp_path: Path) -> tuple[Node, Node, FileMeta]:
    """alice pushes a file; bob, who joined through her later, knows its sealed record (and
    does not hold the file)."""
    alice: Node = await start_node("alice", download_limit=0)
    src = tmp_path / "owned.txt"
    src.write_bytes(os.urandom(5000))
    meta = await alice.push(src)
    bob: Node = await start_node("bob", bootstrap=(address(alice),), download_limit=0)
    await wait_for(lambda: alice.peers() and bob.peers())
    await wait_for(lambda: bob.file(meta.file_id))
    return alice, bob, meta


def sealed_at(node: Node, meta: FileMeta) -> bool:
    entry = node.file(meta.file_id)
    return entry is not None and entry.meta.seal == meta.seal and entry.meta == meta


async def test_a_pushed_file_travels_sealed_and_is_kept_sealed(
    start_node: Starter, tmp_path: Path
) -> None:
    alice, bob, meta = await network(start_node, tmp_path)
    assert meta.seal is not None
    assert meta.seal.owner_key == alice.key.public
    await wait_for(lambda: sealed_at(bob, meta))
    entry = await bob.get(meta.file_id)
    assert entry.has_copy
    assert sealed_at(bob, meta)  # verified bytes keep the seal


async def test_a_delete_not_signed_by_the_owner_changes_nothing(
    start_node: Starter, tmp_path: Path
) -> None:
    _alice, bob, meta = await network(start_node, tmp_path)
    await wait_for(lambda: sealed_at(bob, meta))
    events = watch(bob)
    fid = meta.file_id
    forged = {"type": "DELETE", "from": "alice", "file_id": fid}
    by_mallory = sign_delete(MALLORY, fid, "alice", 1_795_700_000)
    for message in (
        forged,  # unsigned
        {**forged, "treedrive": {"ts": 1, "sig": encode_b64(by_mallory.signature)}},
        {**forged, "treedrive": {"ts": by_mallory.ts, "sig": encode_b64(by_mallory.signature)}},
        {**forged, "treedrive": {"ts": "soon", "sig": [1, 2]}},  # malformed: unsigned
    ):
        await asyncio.to_thread(post, bob, message)
    await wait_for(lambda: len([e for e in events.seen if isinstance(e, FileRefused)]) >= 4)
    assert sealed_at(bob, meta)
    refused = [e for e in events.seen if isinstance(e, FileRefused)]
    assert {e.file_id for e in refused} == {fid}
    assert all(e.reason.startswith("DELETE refused") for e in refused)
    entry = await bob.get(fid)  # still fetchable from alice
    assert entry.has_copy


async def test_the_owners_delete_is_signed_and_relayed_with_its_signature(
    start_node: Starter, tmp_path: Path, recorder: Callable[[], Recorder]
) -> None:
    alice, bob, meta = await network(start_node, tmp_path)
    await wait_for(lambda: sealed_at(bob, meta))
    fid = meta.file_id
    await alice.delete(fid)
    await wait_for(lambda: bob.file(fid) is None)
    with bob.store.reading() as uow:
        signed = uow.tombstones.signatures([fid])[fid]
    assert verify(alice.key.public, signed.signature, delete_claim(fid, "alice", signed.ts))

    # Two peers missed it and still list the file: a TreeDrive one and a classic one.
    for name, extra in (("td", FEATURES), ("classic", {})):
        rec = recorder()
        reply = {
            "type": "GOSSIP_REPLY",
            "host": "127.0.0.1",
            "port": rec.port,
            "peerId": name,
            "files": [sealed_record(meta)],
            **extra,
        }
        await asyncio.to_thread(post, bob, reply)
        relayed = (await wait_for(lambda rec=rec: rec.of_type("DELETE")))[0][0]
        if extra:
            sig = decode_signature(relayed["treedrive"]["sig"])
            assert relayed["treedrive"]["ts"] == signed.ts
            assert sig == signed.signature
        else:
            assert relayed == {"type": "DELETE", "from": "alice", "file_id": fid}
    assert bob.file(fid) is None


async def test_records_contradicting_a_sealed_one_are_refused(
    start_node: Starter, tmp_path: Path, recorder: Callable[[], Recorder]
) -> None:
    _alice, bob, meta = await network(start_node, tmp_path)
    await wait_for(lambda: sealed_at(bob, meta))
    events = watch(bob)
    renamed = replace(meta, file_name="evil.exe", seal=None)
    others = [
        renamed,
        replace(meta, file_timestamp=meta.file_timestamp + 1, seal=None),  # type: ignore[operator]
        replace(meta, file_owner="mallory", seal=None),
        seal(MALLORY, renamed),  # sealed, by a stranger
        replace(renamed, seal=meta.seal),  # alice's seal, over other fields
    ]
    for other in others:
        message = {"type": "ANNOUNCE", "from": "mallory", **sealed_record(other)}
        await asyncio.to_thread(post, bob, message)
    rec = recorder()
    fresh = FileMeta("0f" * 32, "fresh.txt", 0.1, "mallory", 1_795_000_000)
    reply = {
        "type": "GOSSIP_REPLY",
        "host": "127.0.0.1",
        "port": rec.port,
        "peerId": "mallory",
        "files": [sealed_record(o) for o in others] + [fresh.wire()],
        **FEATURES,
    }
    await asyncio.to_thread(post, bob, reply)
    await wait_for(lambda: bob.file(fresh.file_id))  # the rest of the reply is taken

    def refusals() -> list[FileRefused]:
        return [e for e in events.seen if isinstance(e, FileRefused) and e.file_id == meta.file_id]

    await wait_for(lambda: len(refusals()) >= len(others) + 1)  # one for each message
    assert sealed_at(bob, meta)
    entry = bob.file(meta.file_id)
    assert entry is not None
    assert "mallory" not in entry.holders
    assert (await bob.get(meta.file_id)).has_copy


async def test_a_push_contradicting_a_sealed_record_is_not_kept(
    start_node: Starter, tmp_path: Path
) -> None:
    _alice, bob, meta = await network(start_node, tmp_path)
    await wait_for(lambda: sealed_at(bob, meta))
    data = (tmp_path / "owned.txt").read_bytes()
    renamed = {**meta.wire(), "file_name": "evil.exe"}
    await asyncio.to_thread(post, bob, {"type": "FILE_DATA", **renamed, "data": data.hex()})
    await asyncio.sleep(0.5)
    entry = bob.file(meta.file_id)
    assert entry is not None
    assert not entry.has_copy
    assert sealed_at(bob, meta)
    # The same record, as a classic peer pushes it (without the seal), is the file: kept,
    # with its seal.
    await asyncio.to_thread(post, bob, {"type": "FILE_DATA", **meta.wire(), "data": data.hex()})
    await wait_for(lambda: (e := bob.file(meta.file_id)) is not None and e.has_copy)
    assert sealed_at(bob, meta)


async def test_a_malformed_seal_is_one_log_line_never_a_traceback(
    start_node: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    node: Node = await start_node("solo", download_limit=0)
    record = FileMeta("0e" * 32, "x.txt", 0.1, "someone", 1_795_000_000).wire()
    for i in range(20):
        bad = {**record, "treedrive": {"owner_key": "!" * i, "seal": None}}
        await asyncio.to_thread(post, node, {"type": "ANNOUNCE", "from": "p", **bad})
    entry = await wait_for(lambda: node.file("0e" * 32))  # read as unsealed: classic rules
    assert entry.meta.seal is None
    await asyncio.sleep(0.3)
    lines = [r for r in caplog.records if "malformed seal" in r.getMessage()]
    assert 1 <= len(lines) <= 2
    assert not [r for r in caplog.records if r.exc_info]


def test_the_stranger_messages_above_are_valid_wire() -> None:
    """Guard: the forged messages of these tests decode (they are refused for what they say,
    not for how they are written)."""
    meta = FileMeta("0d" * 32, "a", 0.1, "alice", 1)
    for message in (
        {"type": "ANNOUNCE", "from": "mallory", **sealed_record(seal(MALLORY, meta))},
        {"type": "DELETE", "from": "alice", "file_id": meta.file_id},
    ):
        wire.decode(json.loads(codec.encode_message(message)))


async def test_seals_are_verified_within_a_budget_the_rest_wait(
    start_node: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    """A stranger's reply with more sealed records than the budget: the node verifies at most
    ``SEAL_CHECKS_BURST`` at once and leaves the rest for a later message (one info line)."""
    caplog.set_level("INFO")
    node: Node = await start_node("solo", download_limit=0)
    count = 2 * int(SEAL_CHECKS_BURST)
    records = [
        sealed_record(seal(MALLORY, FileMeta(f"{i:064x}", f"f{i}", 0.1, "mallory", 1_795_000_000)))
        for i in range(count)
    ]
    reply = {
        "type": "GOSSIP_REPLY", "host": "127.0.0.1", "port": 9, "peerId": "mallory",
        "files": records, **FEATURES,
    }  # fmt: skip
    started = time.monotonic()
    await asyncio.to_thread(post, node, reply)
    await wait_for(lambda: any("left for later" in r.getMessage() for r in caplog.records))
    with node.store.reading() as uow:
        stored = uow.files.count()
    assert int(SEAL_CHECKS_BURST) - 100 <= stored < count
    assert time.monotonic() - started < 10


async def test_a_record_sealed_against_the_owners_pinned_key_is_refused(
    start_node: Starter,
) -> None:
    node: Node = await start_node("solo", download_limit=0)
    alice = NodeKey.generate()
    with node.store.unit_of_work() as uow:  # as a signed GOSSIP from alice would have (2.7)
        assert uow.keys.pin("alice", alice.public, 1.0)
        uow.commit()
    events = watch(node)
    forged = seal(MALLORY, FileMeta("0c" * 32, "a.txt", 0.1, "alice", 1_795_000_000))
    real = seal(alice, FileMeta("0b" * 32, "b.txt", 0.1, "alice", 1_795_000_000))
    for meta in (forged, real):
        message = {"type": "ANNOUNCE", "from": "carol", **sealed_record(meta)}
        await asyncio.to_thread(post, node, message)
    entry = await wait_for(lambda: node.file(real.file_id))
    assert entry.meta.seal == real.seal
    await wait_for(lambda: [e for e in events.seen if isinstance(e, FileRefused)])
    assert node.file(forged.file_id) is None
    [refused] = [e for e in events.seen if isinstance(e, FileRefused)]
    assert refused.file_id == forged.file_id
    assert "pinned" in refused.reason
