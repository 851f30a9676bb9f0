"""What a user of the node meets (issue 9): short ids and prefixes, a push of bytes already
shared, an unreachable bootstrap host, a push arriving, the activity log, a resumed download's
rate. A real store and plugins; the transport is the recording stand-in of ``harness.py``."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable

import pytest

from tests.core.harness import TS, Harness, file_of, gossip, serving
from treedrive.core import bootstrap as bootstrap_module
from treedrive.core import ids
from treedrive.core import node as node_module
from treedrive.core.backoff import Backoff
from treedrive.core.config import Address
from treedrive.core.errors import AmbiguousId, NotFound
from treedrive.core.events import FileStored, TransferFinished
from treedrive.core.messages import FileData, Message
from treedrive.core.model import TransferState
from treedrive.core.ports import Progress

A = "5b1f0c2a" + "0" * 56
B = "5b1f0c2b" + "1" * 56
C = "5b1f0c2a" + "f" * 56


def lookup(known: list[str]) -> Callable[[str, int], list[str]]:
    return lambda prefix, limit: sorted(k for k in known if k.startswith(prefix))[:limit]


# -- ids (pure) -----------------------------------------------------------------------------------
def test_a_unique_prefix_names_its_file() -> None:
    assert ids.resolve("5b1f0c2b", lookup([A, B])) == B
    assert ids.resolve("  5B1F0C2B1111 ", lookup([A, B])) == B  # case and spaces do not matter
    assert ids.resolve(A, lookup([A, B])) == A


def test_an_ambiguous_prefix_lists_the_candidates() -> None:
    with pytest.raises(AmbiguousId) as err:
        ids.resolve("5b1f0c2a", lookup([A, B, C]))
    assert "5b1f0c2a0000" in str(err.value)
    assert "5b1f0c2affff" in str(err.value)
    assert "type more" in str(err.value)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("5b1f0c2", "too short"),
        ("5b1f…e0", "not a file id"),
        ("notes.txt", "not a file id"),
        ("", "not a file id"),
        ("a" * 65, "not a file id"),
        ("deadbeef", "no file id starts with"),
        ("d" * 64, "no file dddddddddddd"),
    ],
)
def test_what_is_not_an_id_of_a_known_file_says_what_to_type(text: str, says: str) -> None:
    with pytest.raises(NotFound, match=says):
        ids.resolve(text, lookup([A, B]))


def test_backoff_doubles_to_its_cap_and_starts_over() -> None:
    b = Backoff(first=1.0, cap=10.0)
    assert [b.failed() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    b.succeeded()
    assert b.failed() == 1.0


# -- ids (through the node) -----------------------------------------------------------------------
async def test_get_and_delete_take_a_unique_prefix(h: Harness) -> None:
    meta = file_of(b"by prefix")
    h.add_peer("alice", 7001)
    h.advertise(meta, "alice")
    h.net.holders[("127.0.0.1", 7001)] = serving(meta, b"by prefix")
    entry = await h.node.get(meta.file_id[:8])
    assert entry.meta.file_id == meta.file_id
    assert entry.has_copy
    src = h.tmp / "mine.txt"
    src.write_bytes(b"mine")
    mine = await h.node.push(src)
    await h.node.delete(mine.file_id[:10].upper())
    assert h.node.file(mine.file_id) is None


async def test_a_prefix_that_two_files_share_is_refused(h: Harness) -> None:
    for data in (b"x1", b"x2"):
        h.advertise(file_of(data))
    first = {e.meta.file_id[:1] for e in h.node.files()}
    with pytest.raises(NotFound, match="too short"):
        await h.node.get(next(iter(first)))
    # Two real ids that share 8 characters are too rare to make; the store's lookup is the
    # part the node adds, so check that it finds every id with a prefix, in order.
    with h.node.store.unit_of_work() as uow:
        every = sorted(e.meta.file_id for e in h.node.files())
        assert uow.files.ids_with_prefix("", 10) == every
        assert uow.files.ids_with_prefix(every[0][:9], 10) == [every[0]]


# -- a push of bytes already shared ----------------------------------------------------------------
async def test_pushing_bytes_already_held_answers_with_the_existing_id(h: Harness) -> None:
    h.add_peer("bob", 7002)
    src = h.tmp / "notes.txt"
    src.write_bytes(b"the same notes")
    first = await h.node.push_path(src)
    again = await h.node.push_path(h.tmp / "notes.txt", "copy.txt")
    await h.settle()
    assert not first.existing
    assert again.existing
    assert again.meta == first.meta
    assert [e.meta.file_id for e in h.node.files()] == [first.meta.file_id]
    assert len(h.net.pushed) == 1  # the second push sent nothing
    assert h.partials() == []  # and left no temp file behind


async def test_a_forced_push_of_the_same_bytes_makes_a_new_file(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = h.tmp / "notes.txt"
    src.write_bytes(b"pushed anew")
    first = await h.node.push_path(src)
    later = time.time() + 5
    monkeypatch.setattr(node_module.time, "time", lambda: later)
    forced = await h.node.push_path(src, force=True)
    assert not forced.existing
    assert forced.meta.file_id != first.meta.file_id
    assert len(h.node.files("local")) == 2


async def test_same_size_other_bytes_are_a_new_file(h: Harness) -> None:
    one, two = h.tmp / "one", h.tmp / "two"
    one.write_bytes(b"aaaa")
    two.write_bytes(b"bbbb")
    assert not (await h.node.push_path(one)).existing
    assert not (await h.node.push_path(two)).existing
    assert len(h.node.files("local")) == 2


async def test_a_push_is_hashed_and_synced_before_it_is_committed(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hash catches up while the bytes are synced, so that the commit (before a streamed
    push's record is sent) has little left to write (issue 10)."""
    calls: list[str] = []
    make = h.node.store.blobs.writer

    def called(method: Callable[..., object], name: str) -> Callable[..., object]:
        def call(*args: object) -> object:
            calls.append(name)
            return method(*args)

        return call

    def writer() -> object:
        w = make()
        for name in ("digest", "sync", "commit"):
            setattr(w, name, called(getattr(w, name), name))
        return w

    monkeypatch.setattr(h.node.store.blobs, "writer", writer)
    src = h.tmp / "notes.txt"
    src.write_bytes(b"synced before they are a file")
    pushed = await h.node.push_path(src)
    assert sorted(calls[:2]) == ["digest", "sync"]  # together, first
    assert "commit" in calls[2:]
    assert h.node.store.blobs.path(pushed.meta.file_id).read_bytes() == src.read_bytes()


# -- an unreachable bootstrap host -----------------------------------------------------------------
async def test_an_unreachable_bootstrap_host_is_reported_and_retried_until_a_peer_answers(
    make_harness: Callable[..., Harness],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(bootstrap_module, "BOOTSTRAP_FIRST_WAIT", 0.01)
    monkeypatch.setattr(bootstrap_module, "BOOTSTRAP_FIRST_RETRY", 0.03)
    h = make_harness(bootstrap=(Address("127.0.0.1", 7900),), gossip_interval=1.0)
    tries: list[float] = []

    async def refuse(host: str, port: int, message: Message) -> bool:
        tries.append(time.monotonic())
        return False

    h.net.send = refuse  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger="treedrive")
    task = asyncio.ensure_future(h.node._bootstrap_loop())
    try:
        for _ in range(200):
            await asyncio.sleep(0.02)
            if len(tries) >= 3:
                break
        assert len(tries) >= 3
        problem = h.node.bootstrap_problem
        assert problem is not None
        assert "cannot reach the bootstrap host 127.0.0.1:7900" in problem
        assert "retrying in" in problem
        gaps = [b - a for a, b in itertools.pairwise(tries)]
        assert gaps[1] > gaps[0] * 1.5  # backing off
        warned = [r.getMessage() for r in caplog.records if "bootstrap" in r.getMessage()]
        assert warned
        assert len(warned) <= len(tries)
        h.add_peer("alice", 7900)
        for _ in range(200):
            await asyncio.sleep(0.02)
            if h.node.bootstrap_problem is None:
                break
        assert h.node.bootstrap_problem is None
    finally:
        task.cancel()


# -- a push arriving ------------------------------------------------------------------------------
async def test_a_push_arriving_is_an_incoming_transfer_and_is_logged_by_name(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="treedrive")
    data = b"pushed to me" * 1000
    meta = file_of(data, owner="bob", name="notes.txt")
    progress: Progress = h.node.track_push(meta, "127.0.0.1:50000", "bob", len(data))
    [active] = h.node.active_transfers.values()
    assert (active.direction, active.peer_id, active.bytes_total) == ("in", "bob", len(data))
    sink = h.node.open_sink()
    sink.write(data[:5000])
    progress.update(5000)
    sink.write(data[5000:])
    await h.node.handle_pushed_file(FileData(meta), sink, "127.0.0.1:50000", progress)
    assert h.node.active_transfers == {}
    [done] = h.recorder.of(TransferFinished)
    assert done.ok
    assert (done.transfer.bytes_done, done.transfer.file_name) == (len(data), "notes.txt")
    with h.node.store.unit_of_work() as uow:
        [row] = uow.transfers.recent()
    assert (row.direction, row.state, row.peer_id) == ("in", "done", "bob")
    assert h.recorder.of(FileStored)[0].source == "received"
    lines = [r.getMessage() for r in caplog.records]
    assert any("received notes.txt" in ln and "bob" in ln for ln in lines), lines


async def test_a_refused_push_finishes_its_transfer_as_failed(h: Harness) -> None:
    data = b"mine already"
    meta = file_of(data, owner="bob")
    progress = h.node.track_push(meta, "127.0.0.1:50001", None, len(data))
    sink = h.node.open_sink()
    sink.write(b"not the bytes of that id")
    await h.node.handle_pushed_file(FileData(meta), sink, "127.0.0.1:50001", progress)
    [done] = h.recorder.of(TransferFinished)
    assert not done.ok
    assert done.transfer.peer_id == "127.0.0.1:50001"
    assert "match" in (done.error or "")
    assert h.node.active_transfers == {}
    assert h.local_ids() == set()


# -- the activity log -----------------------------------------------------------------------------
async def test_joining_leaving_and_deleting_are_logged_once_with_names(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="treedrive")
    await h.node.handle_message(gossip("bob", 7002), "127.0.0.1:1")
    await h.node.handle_message(gossip("bob", 7002, gid="g-2"), "127.0.0.1:1")
    h.node.expire_peers(now=time.time() + 3600)
    src = h.tmp / "plan.txt"
    src.write_bytes(b"a plan")
    meta = await h.node.push(src)
    await h.node.delete(meta.file_id)
    lines = [r.getMessage() for r in caplog.records if r.name == "treedrive.node"]
    assert [ln for ln in lines if "joined" in ln] == [
        "peer bob (127.0.0.1:7002) joined (classic peer)"
    ]
    assert [ln for ln in lines if "left" in ln] == ["peer bob left (silent too long)"]
    assert any(ln.startswith("pushed plan.txt (6 B, ") for ln in lines), lines
    assert any(ln.startswith("deleted plan.txt") for ln in lines), lines


async def test_a_flood_of_new_peer_ids_makes_a_few_log_lines(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="treedrive")
    for i in range(300):
        await h.node.handle_message(gossip(f"stranger-{i}", 8000 + i, gid=f"f-{i}"), "10.0.0.9:1")
    joined = [r for r in caplog.records if "joined" in r.getMessage()]
    assert 1 <= len(joined) <= 25


# -- a resumed download's rate --------------------------------------------------------------------
def test_the_rate_of_a_resumed_transfer_counts_only_this_run() -> None:
    t = TransferState(1, "f" * 64, "big.bin", "in", None, 100, bytes_done=60, bytes_at_start=60)
    t.started_mono -= 2.0
    assert t.rate == 0.0
    assert t.eta is None
    t.bytes_done = 80
    assert t.rate == pytest.approx(10.0, rel=0.05)
    assert t.eta == pytest.approx(2.0, rel=0.05)


def test_a_resumed_transfer_records_where_it_started(h: Harness) -> None:
    meta = file_of(b"resumed", ts=TS)
    handle = h.node.begin_transfer(meta, "in", None, 1000, done=400)
    handle.update(450)
    state = h.node.active_transfers[handle.state.transfer_id]
    assert (state.bytes_at_start, state.bytes_done) == (400, 450)
    assert state.snapshot().bytes_at_start == 400  # what events and the API carry
