"""Forged claims and lying holders against real nodes (THREATS.md: "verified facts are never
overwritten by claims"; issue 8, items 6 and 7).

The nodes are real in-process TreeDrive nodes (real sockets on loopback, real SQLite files); the
forger and the lying holder are real socket servers that speak the protocol and its extension
(``raw-range``) and say what they like: no mock anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HoldersInOrder, address, wait_for, watch
from tests.e2e.helpers import Server, read_object, send_message
from treedrive.core.download import RAW_RANGE
from treedrive.core.errors import FetchFailed, StorageError
from treedrive.core.events import FileRefused
from treedrive.core.fileid import compute_file_id
from treedrive.core.model import MEGABYTE, FileMeta
from treedrive.core.node import Node

pytestmark = pytest.mark.timeout(90)

Starter = Callable[..., Any]
MiB = 1024 * 1024
QUIET = {"download_limit": 0}
FEATURES = {"treedrive": {"version": 1, "features": [RAW_RANGE]}}


# -- helpers -------------------------------------------------------------------------------------
def knows(node: Node, file_id: str, holders: set[str]) -> bool:
    entry = node.file(file_id)
    if entry is None or not holders <= set(entry.holders):
        return False
    peers = {p.peer_id: p for p in node.peers()}
    return holders <= peers.keys() and all(RAW_RANGE in (peers[h].features or ()) for h in holders)


async def push_random(node: Node, tmp_path: Path, size: int, name: str) -> tuple[FileMeta, bytes]:
    data = os.urandom(size)
    src = tmp_path / "src" / name
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(data)
    return await node.push(src), data


def gossip(peer_id: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "GOSSIP",
        "host": "127.0.0.1",
        "port": port,
        "id": str(uuid.uuid4()),
        "peerId": peer_id,
        **extra,
    }


async def send(node: Node, message: dict[str, Any]) -> None:
    await asyncio.to_thread(send_message, node.port, message)


def downloads_rows(node: Node) -> list[str]:
    with node.store.unit_of_work() as uow:
        return [d.file_id for d in uow.downloads.all()]


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


class PeakMemory:
    """The peak RSS of this process (where the nodes run) over a block, above its start."""

    def __enter__(self) -> PeakMemory:
        try:  # reset VmHWM to the current RSS (Linux)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pytest.skip("cannot reset the peak RSS here")
        self.start = status_kib("VmRSS")
        self.growth_mib = 0.0
        return self

    def __exit__(self, *_: object) -> None:
        self.growth_mib = (status_kib("VmHWM") - self.start) / 1024


class LoopLag:
    """The longest the event loop was kept from running a 20 ms timer, while the block runs."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            self.worst = max(self.worst, now - last - 0.02)
            last = now

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.ensure_future(self._tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class LyingHolder(Server):
    """A TreeDrive-extension peer on a real socket: it gossips with ``raw-range``, announces
    ``records``, answers GOSSIPs with a GOSSIP_REPLY listing them (so it stays tracked) and
    answers a ranged GET_FILE with a header that says the file has ``size`` bytes, followed by
    the bytes of the range it was asked for (zeros). A classic GET_FILE gets "not here", and so
    does every GET_FILE when ``serves`` is False (a forger that only makes claims)."""

    def __init__(self, peer_id: str, size: int, serves: bool = True) -> None:
        self.peer_id = peer_id
        self.size = size
        self.serves = serves
        self.records: dict[str, dict[str, Any]] = {}
        self.ranged: list[dict[str, Any]] = []
        super().__init__()

    def add(self, record: dict[str, Any]) -> None:
        self.records[record["file_id"]] = record

    def handle(self, conn: socket.socket) -> None:
        threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, AssertionError, ValueError):
            msg = read_object(conn, timeout=5)
            if msg is None:
                return
            if msg.get("type") == "GOSSIP":
                self._reply(msg)
            elif msg.get("type") == "GET_FILE":
                self._answer(conn, msg)

    def _reply(self, msg: dict[str, Any]) -> None:
        reply = {
            "type": "GOSSIP_REPLY",
            "host": "127.0.0.1",
            "port": self.port,
            "peerId": self.peer_id,
            "files": list(self.records.values()),
            **FEATURES,
        }
        with contextlib.suppress(OSError, TypeError, ValueError):
            send_message(int(msg["port"]), reply)

    def _answer(self, conn: socket.socket, msg: dict[str, Any]) -> None:
        record = self.records.get(str(msg.get("file_id")))
        ext = msg.get("treedrive")
        if record is None or not self.serves or not isinstance(ext, dict) or not ext.get("raw"):
            null = dict.fromkeys(("file_name", "file_size", "file_id", "file_owner"))
            conn.sendall(json.dumps({"type": "FILE_DATA", **null, "data": None}).encode())
            return
        self.ranged.append(ext)
        offset = int(ext.get("offset") or 0)
        asked = ext.get("length")
        length = min(self.size - offset, 8 * MiB if asked is None else int(asked))
        header = {
            "type": "FILE_DATA",
            **record,
            "data": None,
            "treedrive": {"raw": True, "offset": offset, "length": length, "size": self.size},
        }
        conn.sendall(json.dumps(header).encode())
        block = b"\0" * (256 * 1024)
        left = length
        while left > 0:
            n = conn.send(block[: min(left, len(block))])
            left -= n

    async def join(self, node: Node) -> None:
        """Gossip to ``node`` (it tracks us, with raw-range) and announce every record."""
        await send(node, gossip(self.peer_id, self.port, **FEATURES))
        await wait_for(lambda: any(p.peer_id == self.peer_id for p in node.peers()))
        for record in self.records.values():
            await send(node, {"type": "ANNOUNCE", "from": self.peer_id, **record})


@pytest.fixture
def liars() -> Iterator[Callable[..., LyingHolder]]:
    made: list[LyingHolder] = []

    def make(peer_id: str, size: int, serves: bool = True) -> LyingHolder:
        made.append(LyingHolder(peer_id, size, serves))
        return made[-1]

    yield make
    for liar in made:
        liar.close()


def partial_on_disk(node: Node, file_id: str) -> tuple[int, int]:
    """(st_size, bytes allocated) of the node's partial file for ``file_id``; (0, 0) if none."""
    path = node.store.blobs.range_path(file_id)
    try:
        st = path.stat()
    except FileNotFoundError:
        return 0, 0
    return st.st_size, st.st_blocks * 512


# -- (a) a forged ANNOUNCE with a larger timestamp -------------------------------------------------
async def test_forged_announce_changes_neither_the_holder_nor_a_peer(
    start_node: Starter, tmp_path: Path
) -> None:
    a: Node = await start_node("A", **QUIET)
    meta, data = await push_random(a, tmp_path, 300 * 1024, "true.bin")
    b: Node = await start_node("B", bootstrap=(address(a),), **QUIET)
    await wait_for(lambda: knows(b, meta.file_id, {"A"}))

    forged = {**meta.wire(), "file_timestamp": int(meta.file_timestamp) + 10_000}
    forged.update(file_name="forged.bin", file_size=123.0, file_owner="mallory")
    for node in (a, b):
        await send(node, {"type": "ANNOUNCE", "from": "mallory", **forged})
    await asyncio.sleep(1.0)  # a few gossip rounds: A's replies carry its record to B again

    for node in (a, b):
        entry = node.file(meta.file_id)
        assert entry is not None
        assert entry.meta == meta, node.peer_id  # the true timestamp, name, size and owner
    assert compute_file_id(data, int(meta.file_timestamp)) == meta.file_id

    entry = await asyncio.wait_for(b.get(meta.file_id), 30)  # B still fetches A's true bytes

    assert entry.has_copy
    assert entry.meta.file_timestamp == meta.file_timestamp
    assert b.store.blobs.path(meta.file_id).read_bytes() == data
    assert not b.distrusted("A")


async def test_a_node_that_first_hears_a_forgery_takes_the_verified_timestamp(
    start_node: Starter, tmp_path: Path, liars: Callable[..., LyingHolder]
) -> None:
    """C learns of the file from a forger first (the record it keeps is the forgery), then from
    A: the bytes verify under the timestamp A's answers carry, and C's record takes it."""
    a: Node = await start_node("A", **QUIET)
    meta, data = await push_random(a, tmp_path, 300 * 1024, "true.bin")
    c: Node = await start_node("C", **QUIET)
    forger = liars("mallory", 0, serves=False)  # tracked by C, so that its claim is kept
    forged = {**meta.wire(), "file_timestamp": int(meta.file_timestamp) + 10_000}
    forger.add(forged)
    await forger.join(c)
    await wait_for(lambda: knows(c, meta.file_id, {"mallory"}))
    recorded = c.file(meta.file_id)
    assert recorded is not None
    assert recorded.meta.file_timestamp == forged["file_timestamp"]  # first seen
    # A's own GOSSIP, as if forwarded: C tracks A and asks it for its files
    await send(c, gossip("A", a.port, **FEATURES))
    await wait_for(lambda: knows(c, meta.file_id, {"A"}))
    # A's GOSSIP_REPLY is signed: C pins A's key with it (PROTOCOL.md 2.7), so the record A
    # sealed takes the forgery's place at once (2.8)
    recorded = c.file(meta.file_id)
    assert recorded is not None
    assert recorded.meta.file_timestamp == meta.file_timestamp

    entry = await asyncio.wait_for(c.get(meta.file_id), 30)

    assert c.store.blobs.path(meta.file_id).read_bytes() == data
    assert entry.meta.file_timestamp == meta.file_timestamp  # the verified fact won
    assert not c.distrusted("A")


# -- (b) a holder that says the file has 2^47 or 2^43 bytes --------------------------------------
@pytest.mark.parametrize("lie", [2**47, 2**43], ids=["2^47", "2^43"])
async def test_lying_size_is_refused_and_the_honest_holder_serves(
    start_node: Starter,
    tmp_path: Path,
    liars: Callable[..., LyingHolder],
    lie: int,
) -> None:
    h: Node = await start_node("H", **QUIET)
    meta, data = await push_random(h, tmp_path, 1 * MiB + 321, "honest.bin")
    r: Node = await start_node("R", bootstrap=(address(h),), **QUIET)
    got = watch(r)
    r.plugins.pm.register(HoldersInOrder("liar", "H"))  # the liar is asked first
    liar = liars("liar", lie)
    liar.add(meta.wire())  # the true record: only its answers lie
    await liar.join(r)
    await wait_for(lambda: knows(r, meta.file_id, {"H", "liar"}))

    with PeakMemory() as memory:
        async with LoopLag() as lag:
            entry = await asyncio.wait_for(r.get(meta.file_id), 30)

    assert entry.has_copy
    assert r.store.blobs.path(meta.file_id).read_bytes() == data
    assert liar.ranged, "the liar was asked first"
    assert r.distrusted("liar")
    assert not r.distrusted("H")
    refused = [e for e in got.seen if isinstance(e, FileRefused)]
    assert [e.peer_id for e in refused] == ["liar"]
    assert str(lie) in refused[0].reason
    assert lag.worst < 0.5, f"the event loop stalled {lag.worst:.2f} s"
    assert memory.growth_mib < 64, f"RSS grew {memory.growth_mib:.0f} MiB"
    assert partial_on_disk(r, meta.file_id) == (0, 0)
    assert downloads_rows(r) == []
    print(f"lie {lie}: loop lag {lag.worst * 1000:.0f} ms, RSS +{memory.growth_mib:.1f} MiB")


@pytest.mark.parametrize("lie", [2**47, 2**43], ids=["2^47", "2^43"])
async def test_lying_size_from_the_only_holder_blames_it_not_the_disk(
    start_node: Starter,
    liars: Callable[..., LyingHolder],
    lie: int,
) -> None:
    r: Node = await start_node("R", **QUIET)
    liar = liars("liar", lie)
    fake = os.urandom(64)
    ts = int(time.time())
    record: dict[str, Any] = {
        "file_name": "big-lie.bin",
        "file_size": 1.0,  # 1 MB, as the record says
        "file_id": compute_file_id(fake, ts),
        "file_owner": "liar",
        "file_timestamp": ts,
    }
    liar.add(record)
    await liar.join(r)
    file_id = str(record["file_id"])
    await wait_for(lambda: knows(r, file_id, {"liar"}))

    partial_seen: list[tuple[int, int]] = []

    async def watch_partial() -> None:
        while True:
            partial_seen.append(partial_on_disk(r, file_id))
            await asyncio.sleep(0.01)

    watcher = asyncio.ensure_future(watch_partial())
    try:
        with PeakMemory() as memory:
            async with LoopLag() as lag:
                with pytest.raises(FetchFailed) as failed:
                    await asyncio.wait_for(r.get(file_id), 30)
    finally:
        watcher.cancel()
    assert not isinstance(failed.value, StorageError)  # a 502 naming the holder, not a 507
    assert "liar" in str(failed.value)
    assert str(lie) in str(failed.value)
    # The record's 1.0 is only a claim (the forgery may be the record): not distrusted for it.
    assert not r.distrusted("liar")
    assert lag.worst < 0.5, f"the event loop stalled {lag.worst:.2f} s"
    assert memory.growth_mib < 64, f"RSS grew {memory.growth_mib:.0f} MiB"
    # never more than the range asked for on disk, and nothing left
    assert max(s for s, _ in partial_seen) <= 8 * MiB
    assert max(b for _, b in partial_seen) <= 8 * MiB
    assert partial_on_disk(r, file_id) == (0, 0)
    assert downloads_rows(r) == []

    asked = len(liar.ranged)
    await asyncio.sleep(2.0)  # eight cleanup sweeps: nothing is retried
    assert len(liar.ranged) == asked
    assert downloads_rows(r) == []


# -- (c) a record whose file_size is 1e308 ---------------------------------------------------------
async def test_record_with_a_huge_file_size_is_fetched(start_node: Starter, tmp_path: Path) -> None:
    """The record says 1e308 MB (the wire may refuse it: it is put in the store directly). Its
    size says nothing; the holder's answer (which fits the disk) is taken."""
    h: Node = await start_node("H", **QUIET)
    meta, data = await push_random(h, tmp_path, 200 * 1024, "huge-record.bin")
    r: Node = await start_node("R", **QUIET)
    with r.store.unit_of_work() as uow:
        uow.peers.upsert("H", h.host, h.port, time.time(), frozenset({RAW_RANGE}))
        huge = FileMeta(meta.file_id, meta.file_name, 1e308, meta.file_owner, meta.file_timestamp)
        uow.files.advertise("H", [huge], time.time())
        uow.commit()
    entry = r.file(meta.file_id)
    assert entry is not None
    assert entry.meta.file_size == 1e308

    got = await asyncio.wait_for(r.get(meta.file_id), 30)

    assert got.has_copy
    assert r.store.blobs.path(meta.file_id).read_bytes() == data
    assert got.size_bytes == len(data)
    assert got.meta.file_size == len(data) / MEGABYTE  # the verified size replaced the nonsense


# -- (d) a forged size seen first, or a record of 0.0 --------------------------------------------
async def test_a_forged_size_seen_first_does_not_get_honest_holders_blamed(
    start_node: Starter, tmp_path: Path, liars: Callable[..., LyingHolder]
) -> None:
    """C first hears of a 6 MiB file from a forger whose record says 999.0 MB (the record C
    keeps), then from A and B, which hold it. Both say 6 MiB: the record is only a claim, so
    neither is distrusted nor refused; the size two of them agree on is taken and the ranged
    download succeeds (its bytes verify against the id)."""
    a: Node = await start_node("A", **QUIET)
    meta, data = await push_random(a, tmp_path, 6 * MiB, "six.bin")
    b: Node = await start_node("B", bootstrap=(address(a),), **QUIET)
    await wait_for(lambda: knows(b, meta.file_id, {"A"}))
    await asyncio.wait_for(b.get(meta.file_id), 30)
    c: Node = await start_node("C", **QUIET)
    got = watch(c)
    forger = liars("mallory", 0, serves=False)
    forger.add({**meta.wire(), "file_size": 999.0})
    await forger.join(c)
    await wait_for(lambda: knows(c, meta.file_id, {"mallory"}))
    recorded = c.file(meta.file_id)
    assert recorded is not None
    assert recorded.meta.file_size == 999.0  # first seen: the forgery
    for holder in (a, b):  # their own GOSSIPs, as if forwarded: C asks them for their files
        await send(c, gossip(holder.peer_id, holder.port, **FEATURES))
    await wait_for(lambda: knows(c, meta.file_id, {"A", "B"}))
    # A's GOSSIP_REPLY is signed: C pins A's key with it (PROTOCOL.md 2.7), so the record A
    # sealed takes the forgery's place at once (2.8)
    recorded = c.file(meta.file_id)
    assert recorded is not None
    assert recorded.meta.file_size == meta.file_size

    entry = await asyncio.wait_for(c.get(meta.file_id), 30)

    assert c.store.blobs.path(meta.file_id).read_bytes() == data
    assert entry.size_bytes == len(data)
    assert entry.meta.file_size == len(data) / MEGABYTE  # the verified size replaced the claim
    assert not c.distrusted("A")
    assert not c.distrusted("B")
    # neither honest holder is refused (the forger's record, which contradicts the record A
    # sealed once C pinned A's key, is: PROTOCOL.md 2.7, 2.8)
    refused = {e.peer_id for e in got.seen if isinstance(e, FileRefused)}
    assert refused <= {"mallory"}
    assert downloads_rows(c) == []


async def test_a_zero_size_record_and_a_holder_saying_50_gb(
    start_node: Starter, liars: Callable[..., LyingHolder], tmp_path: Path
) -> None:
    """The record says 0.0 (what peers send for a tiny file); the only holder says the file has
    50 GB (or half this disk's free space, if less). Not believed: no partial file of more than
    the one range asked for, no resumable row, and the holder is not distrusted (its word
    against a claim)."""
    r: Node = await start_node("R", **QUIET)
    lie = min(50 * 2**30, shutil.disk_usage(tmp_path).free // 2)
    liar = liars("liar", lie)
    fake = os.urandom(64)
    ts = int(time.time())
    record: dict[str, Any] = {
        "file_name": "tiny.bin",
        "file_size": 0.0,
        "file_id": compute_file_id(fake, ts),
        "file_owner": "liar",
        "file_timestamp": ts,
    }
    liar.add(record)
    await liar.join(r)
    file_id = str(record["file_id"])
    await wait_for(lambda: knows(r, file_id, {"liar"}))

    largest = 0
    fetching = asyncio.ensure_future(r.get(file_id))
    while not fetching.done():  # watch the partial file (and stop it if it grows: the bug)
        largest = max(largest, *partial_on_disk(r, file_id))
        if largest > 8 * MiB:
            fetching.cancel()
        await asyncio.sleep(0.01)
    with pytest.raises((FetchFailed, asyncio.CancelledError)):
        await fetching

    assert largest <= 8 * MiB, f"a partial file of {largest} bytes"
    assert fetching.exception() is not None
    assert str(lie) in str(fetching.exception())
    assert partial_on_disk(r, file_id) == (0, 0)
    assert downloads_rows(r) == []
    assert not r.distrusted("liar")


async def test_a_zero_size_record_of_a_tiny_file_is_fetched_ranged(
    start_node: Starter, tmp_path: Path
) -> None:
    """A record of 0.0 for a 3 KiB file (MB rounded): the holder's size agrees with it."""
    h: Node = await start_node("H", **QUIET)
    meta, data = await push_random(h, tmp_path, 3 * 1024, "tiny.bin")
    r: Node = await start_node("R", **QUIET)
    with r.store.unit_of_work() as uow:
        uow.peers.upsert("H", h.host, h.port, time.time(), frozenset({RAW_RANGE}))
        zero = FileMeta(meta.file_id, meta.file_name, 0.0, meta.file_owner, meta.file_timestamp)
        uow.files.advertise("H", [zero], time.time())
        uow.commit()

    entry = await asyncio.wait_for(r.get(meta.file_id), 30)

    assert entry.has_copy
    assert r.store.blobs.path(meta.file_id).read_bytes() == data
    assert not r.distrusted("H")


class ManyTimestamps(LyingHolder):
    """A holder whose every ranged answer carries another timestamp (and zeros)."""

    lock = threading.Lock()

    def _answer(self, conn: socket.socket, msg: dict[str, Any]) -> None:
        with self.lock:
            for record in self.records.values():
                record["file_timestamp"] += 1
        super()._answer(conn, msg)


async def test_a_liars_many_timestamps_do_not_crowd_out_the_honest_holders(
    start_node: Starter, tmp_path: Path
) -> None:
    """R first hears of the file from a liar (its record: a forged timestamp); the liar answers
    many ranges fast, each with yet another timestamp, while A (the true holder, held to
    256 KiB/s) answers its first one. The bytes verify under A's timestamp all the same: one
    timestamp is kept per holder, however many the liar sends."""
    a: Node = await start_node("A", max_upload_rate=256 * 1024, **QUIET)
    meta, data = await push_random(a, tmp_path, 1 * MiB, "true.bin")
    r: Node = await start_node("R", chunk_size=32 * 1024, max_inflight=8, **QUIET)
    got = watch(r)
    r.plugins.pm.register(HoldersInOrder("liar", "A"))
    liar = ManyTimestamps("liar", len(data))
    try:
        forged = {**meta.wire(), "file_timestamp": int(meta.file_timestamp) + 10_000}
        liar.add(forged)
        await liar.join(r)
        await wait_for(lambda: knows(r, meta.file_id, {"liar"}))
        await send(r, gossip("A", a.port, **FEATURES))
        await wait_for(lambda: knows(r, meta.file_id, {"A"}))

        entry = await asyncio.wait_for(r.get(meta.file_id), 60)
    finally:
        liar.close()

    assert len(liar.ranged) > 8, "the liar answered fewer ranges than the old cap"
    assert r.store.blobs.path(meta.file_id).read_bytes() == data
    assert entry.meta.file_timestamp == meta.file_timestamp
    assert r.distrusted("liar")
    assert not r.distrusted("A")
    # R pinned A's key from A's signed GOSSIP_REPLY (PROTOCOL.md 2.7) and keeps A's sealed
    # record (2.8): each of the liar's answers, under another timestamp, is refused as a record
    # that contradicts it; only the liar is ever refused
    refused = [e.peer_id for e in got.seen if isinstance(e, FileRefused)]
    assert refused
    assert set(refused) == {"liar"}
