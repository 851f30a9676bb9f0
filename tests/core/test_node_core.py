"""The node's protocol behaviour with no sockets: a real store in tmp_path, real plugins, and a
small recording stand-in for the transport port (``treedrive.core.ports.Network``)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.core.harness import (
    ME,
    MY_HOST,
    MY_PORT,
    TS,
    Broken,
    Harness,
    failing,
    file_of,
    gossip,
    reply,
    serving,
)
from treedrive.core.errors import FetchFailed, NotFound, NotOwner
from treedrive.core.events import (
    Event,
    FileAdvertised,
    FileDeleted,
    FileRefused,
    FileStored,
    PeerExpired,
    PeerSeen,
    TransferFinished,
)
from treedrive.core.fileid import compute_file_id
from treedrive.core.hookspecs import hookimpl
from treedrive.core.messages import (
    RAW_PUSH,
    RAW_RANGE,
    STREAM_PUSH,
    SWIM,
    TLS,
    Announce,
    Delete,
    Extension,
    FileData,
    Gossip,
    GossipReply,
)
from treedrive.core.model import FileMeta
from treedrive.core.node import RELAYS_PER_ADDRESS, RELAYS_PER_MESSAGE, Node
from treedrive.core.ports import FileSink


# -- GOSSIP ---------------------------------------------------------------------------------------
async def test_start_listens_and_recovers_identity(h: Harness) -> None:
    assert h.node.peer_id == ME
    with h.node.store.unit_of_work() as uow:
        assert uow.identity.get() == ME


async def test_gossip_is_answered_once_per_id(h: Harness) -> None:
    await h.node.handle_message(gossip("alice", 7001, "g-1"), "127.0.0.1:50000")
    await h.node.handle_message(gossip("alice", 7001, "g-1"), "127.0.0.1:50001")
    await h.settle()
    assert len(h.net.messages(GossipReply)) == 1
    await h.node.handle_message(gossip("alice", 7002, "g-2"), "127.0.0.1:50002")
    await h.settle()
    assert len(h.net.messages(GossipReply)) == 2


async def test_own_gossip_is_ignored(h: Harness) -> None:
    await h.node.handle_message(gossip(ME, 7001, "g-mine"), "127.0.0.1:50000")
    await h.settle()
    assert h.net.sent == []
    assert h.node.peers() == []


async def test_gossip_we_sent_is_not_answered_when_it_comes_back(h: Harness) -> None:
    ours = h.node.new_gossip()
    relayed = Gossip(host="127.0.0.1", port=7001, id=ours.id, peer_id="alice")
    await h.node.handle_message(relayed, "127.0.0.1:50000")
    await h.settle()
    assert h.net.sent == []


async def test_gossip_reply_goes_to_the_address_in_the_message(h: Harness) -> None:
    src = h.tmp / "notes.txt"
    src.write_bytes(b"my notes")
    mine = await h.node.push(src)
    await h.node.handle_message(gossip("alice", 7123), "10.9.9.9:55555")
    await h.settle()
    [(host, port, answer)] = h.net.messages(GossipReply)
    assert (host, port) == ("127.0.0.1", 7123)
    assert answer.peer_id == ME
    assert (answer.host, answer.port) == (MY_HOST, MY_PORT)
    assert answer.files == (mine,)
    assert answer.extension is not None
    assert answer.extension.proof is not None
    ext = replace(answer.extension, proof=None)
    assert ext == Extension(frozenset({RAW_PUSH, RAW_RANGE, STREAM_PUSH, SWIM, TLS}), 1)
    assert answer.extra == {}
    [alice] = h.node.peers()
    assert (alice.peer_id, alice.host, alice.port) == ("alice", "127.0.0.1", 7123)
    assert PeerSeen(alice, True) in h.recorder.events


async def test_gossip_reply_lists_only_local_files(h: Harness) -> None:
    h.advertise(file_of(b"remote"), "bob")
    await h.node.handle_message(gossip("alice", 7001), "src")
    await h.settle()
    [(_, _, answer)] = h.net.messages(GossipReply)
    assert answer.files == ()


async def test_gossip_is_forwarded_to_at_most_fanout_peers(h: Harness) -> None:
    ports = {f"p{i}": 7100 + i for i in range(6)}
    for peer_id, port in ports.items():
        h.add_peer(peer_id, port)
    h.add_peer("origin", 7001)
    g = gossip("origin", 7001, "g-fwd")
    await h.node.handle_message(g, "src")
    await h.settle()
    forwarded = h.net.messages(Gossip)
    assert len(forwarded) == h.node.config.fanout == 3
    assert all(m is g for _, _, m in forwarded)  # relayed unchanged
    targets = [(host, port) for host, port, _ in forwarded]
    assert len(set(targets)) == 3
    assert set(targets) <= {("127.0.0.1", p) for p in ports.values()}
    assert ("127.0.0.1", 7001) not in targets


async def test_gossip_forwarding_with_few_peers_excludes_originator(h: Harness) -> None:
    h.add_peer("p1", 7101)
    await h.node.handle_message(gossip("origin", 7001, "g-few"), "src")
    await h.settle()
    assert [(host, port) for host, port, _ in h.net.messages(Gossip)] == [("127.0.0.1", 7101)]


async def test_gossip_now_goes_to_bootstrap_while_nobody_is_known(
    make_harness: Callable[..., Harness],
) -> None:
    from treedrive.core.config import Address

    h = make_harness(bootstrap=(Address("127.0.0.1", 7900), Address(MY_HOST, MY_PORT)))
    await h.node.gossip_now()
    await h.settle()
    [(host, port, g)] = h.net.messages(Gossip)
    assert (host, port) == ("127.0.0.1", 7900)  # never to itself
    assert g.peer_id == ME
    assert (g.host, g.port) == (MY_HOST, MY_PORT)


# -- GOSSIP_REPLY ---------------------------------------------------------------------------------
async def test_gossip_reply_merges_files_and_holders(h: Harness) -> None:
    one, two = file_of(b"one"), file_of(b"two", owner="bob")
    await h.node.handle_message(reply("bob", 7002, one, two), "src")
    await h.node.handle_message(reply("carol", 7003, one), "src")
    await h.settle()
    entries = {e.meta.file_id: e for e in h.node.files()}
    assert set(entries) == {one.file_id, two.file_id}
    assert entries[one.file_id].holders == ("bob", "carol")
    assert entries[two.file_id].holders == ("bob",)
    assert entries[one.file_id].meta == one
    assert not entries[one.file_id].has_copy
    assert {p.peer_id for p in h.node.peers()} == {"bob", "carol"}
    adverts = h.recorder.of(FileAdvertised)
    assert [(a.meta.file_id, a.holder, a.new) for a in adverts] == [
        (one.file_id, "bob", True),
        (two.file_id, "bob", True),
        (one.file_id, "carol", False),
    ]


async def test_gossip_reply_known_file_again_changes_nothing(h: Harness) -> None:
    one = file_of(b"one")
    await h.node.handle_message(reply("bob", 7002, one), "src")
    await h.node.handle_message(reply("bob", 7002, one), "src")
    await h.settle()
    [entry] = h.node.files()
    assert entry.holders == ("bob",)
    assert len(h.recorder.of(FileAdvertised)) == 1


async def test_gossip_reply_keeps_the_first_timestamp_seen(h: Harness) -> None:
    """A newer timestamp would make the true bytes fail verification here: claims never
    override the record that can verify (the store's rules, tests/store)."""
    base = file_of(b"one", name="first.txt")
    newer = FileMeta(base.file_id, "renamed.txt", base.file_size, "alice", TS + 10)
    older = FileMeta(base.file_id, "stale.txt", base.file_size, "alice", TS - 10)
    await h.node.handle_message(reply("bob", 7002, base), "src")
    await h.node.handle_message(reply("carol", 7003, newer), "src")
    await h.node.handle_message(reply("dave", 7004, older), "src")
    [entry] = h.node.files()
    assert entry.meta == base
    assert entry.holders == ("bob", "carol", "dave")


async def test_gossip_reply_drops_files_a_peer_no_longer_lists(h: Harness) -> None:
    one, two = file_of(b"one"), file_of(b"two")
    await h.node.handle_message(reply("bob", 7002, one, two), "src")
    await h.node.handle_message(reply("bob", 7002, two), "src")
    entries = {e.meta.file_id: e.holders for e in h.node.files()}
    assert entries == {one.file_id: (), two.file_id: ("bob",)}


async def test_a_newer_record_does_not_change_who_may_delete(h: Harness) -> None:
    base = file_of(b"owned", owner="alice")
    claim = FileMeta(base.file_id, "mine-now.txt", base.file_size, "mallory", TS + 100)
    await h.node.handle_message(reply("bob", 7002, base), "src")
    await h.node.handle_message(reply("mallory", 7666, claim), "src")
    entry = h.node.file(base.file_id)
    assert entry is not None
    assert entry.meta.file_owner == "alice"
    await h.node.handle_message(Delete(from_peer="mallory", file_id=base.file_id), "src")
    assert h.node.file(base.file_id) is not None
    await h.node.handle_message(Delete(from_peer="alice", file_id=base.file_id), "src")
    assert h.node.file(base.file_id) is None


async def test_own_gossip_reply_is_ignored(h: Harness) -> None:
    await h.node.handle_message(reply(ME, MY_PORT, file_of(b"x")), "src")
    assert h.node.files() == []
    assert h.node.peers() == []


# -- tombstones -----------------------------------------------------------------------------------
async def _deleted_by_owner(h: Harness, data: bytes = b"doomed") -> FileMeta:
    meta = file_of(data, owner="alice")
    await h.receive(meta, data)
    assert meta.file_id in h.local_ids()
    await h.node.handle_message(Delete(from_peer="alice", file_id=meta.file_id), "src")
    await h.settle()
    return meta


async def test_gossip_reply_does_not_resurrect_a_deleted_file(h: Harness) -> None:
    meta = await _deleted_by_owner(h)
    h.net.sent.clear()
    await h.node.handle_message(reply("bob", 7002, meta), "src")
    await h.settle()
    assert h.node.file(meta.file_id) is None
    [(host, port, relayed)] = h.net.messages(Delete)
    assert (host, port) == ("127.0.0.1", 7002)
    assert relayed == Delete(from_peer="alice", file_id=meta.file_id)
    # Told once; the same stale advert right after is not answered again.
    await h.node.handle_message(reply("bob", 7002, meta), "src")
    await h.settle()
    assert len(h.net.messages(Delete)) == 1


async def test_announce_does_not_resurrect_a_deleted_file(h: Harness) -> None:
    meta = await _deleted_by_owner(h)
    h.add_peer("carol", 7003)
    h.net.sent.clear()
    await h.node.handle_message(Announce(from_peer="carol", meta=meta), "src")
    await h.settle()
    assert h.node.file(meta.file_id) is None
    assert h.net.messages(Delete) == [
        ("127.0.0.1", 7003, Delete(from_peer="alice", file_id=meta.file_id))
    ]


async def test_pushed_copy_of_a_deleted_file_is_refused(h: Harness) -> None:
    meta = await _deleted_by_owner(h, b"zombie")
    await h.receive(meta, b"zombie")
    assert h.node.file(meta.file_id) is None
    assert not h.node.store.blobs.has(meta.file_id)
    assert h.partials() == []


# -- ANNOUNCE and DELETE --------------------------------------------------------------------------
async def test_announce_adds_a_holder(h: Harness) -> None:
    meta = file_of(b"announced")
    await h.node.handle_message(Announce(from_peer="bob", meta=meta), "src")
    await h.node.handle_message(Announce(from_peer="carol", meta=meta), "src")
    entry = h.node.file(meta.file_id)
    assert entry is not None
    assert entry.meta == meta
    assert entry.holders == ("bob", "carol")
    await h.node.handle_message(Announce(from_peer=ME, meta=file_of(b"own")), "src")
    assert len(h.node.files()) == 1


async def test_delete_by_non_owner_is_ignored(h: Harness) -> None:
    data = b"precious"
    meta = file_of(data, owner="alice")
    await h.receive(meta, data)
    await h.node.handle_message(Delete(from_peer="mallory", file_id=meta.file_id), "src")
    await h.node.handle_message(Delete(from_peer="alice", file_id="f" * 64), "src")  # unknown
    entry = h.node.file(meta.file_id)
    assert entry is not None
    assert entry.has_copy
    assert h.node.store.blobs.has(meta.file_id)
    with h.node.store.unit_of_work() as uow:
        assert uow.tombstones.count() == 0


async def test_delete_by_owner_removes_record_blob_and_leaves_a_tombstone(h: Harness) -> None:
    meta = await _deleted_by_owner(h)
    assert h.node.file(meta.file_id) is None
    assert not h.node.store.blobs.has(meta.file_id)
    with h.node.store.unit_of_work() as uow:
        assert uow.tombstones.owner(meta.file_id) == "alice"
    assert FileDeleted(meta.file_id, "alice") in h.recorder.events


async def test_delete_by_owner_of_a_remote_record(h: Harness) -> None:
    meta = file_of(b"remote", owner="alice")
    h.advertise(meta, "bob")
    await h.node.handle_message(Delete(from_peer="alice", file_id=meta.file_id), "src")
    assert h.node.files() == []


# -- peers ----------------------------------------------------------------------------------------
async def test_expire_peers_removes_peers_and_their_holdings(h: Harness) -> None:
    h.add_peer("old", 7001, last_seen=100.0)
    h.add_peer("fresh", 7002, last_seen=1000.0)
    only_old, both = file_of(b"only old"), file_of(b"both")
    h.advertise(only_old, "old")
    h.advertise(both, "old", "fresh")
    gone = h.node.expire_peers(now=1000.0 + h.node.config.peer_timeout - 1)
    await h.settle()
    assert gone == ["old"]
    assert [p.peer_id for p in h.node.peers()] == ["fresh"]
    entries = {e.meta.file_id: e.holders for e in h.node.files()}
    assert entries == {both.file_id: ("fresh",)}  # nobody holds the other: forgotten
    assert PeerExpired("old") in h.recorder.events


# -- commands -------------------------------------------------------------------------------------
async def test_delete_command_refuses_files_of_others(h: Harness) -> None:
    data = b"alice's"
    meta = file_of(data, owner="alice")
    await h.receive(meta, data)
    with pytest.raises(NotOwner, match="alice"):
        await h.node.delete(meta.file_id)
    assert h.node.file(meta.file_id) is not None
    assert h.node.store.blobs.has(meta.file_id)
    with pytest.raises(NotFound):
        await h.node.delete("0" * 64)


async def test_delete_command_removes_own_file_and_tells_everyone(h: Harness) -> None:
    src = h.tmp / "mine.txt"
    src.write_bytes(b"mine")
    meta = await h.node.push(src)
    h.add_peer("bob", 7002)
    h.add_peer("carol", 7003)
    h.net.sent.clear()
    await h.node.delete(meta.file_id)
    await h.settle()
    assert h.node.file(meta.file_id) is None
    assert not h.node.store.blobs.has(meta.file_id)
    sent = sorted((host, port) for host, port, _ in h.net.messages(Delete))
    assert sent == [("127.0.0.1", 7002), ("127.0.0.1", 7003)]
    assert all(m == Delete(ME, meta.file_id) for _, _, m in h.net.messages(Delete))


async def test_get_tries_the_next_holder_after_a_failure(h: Harness) -> None:
    data = b"wanted"
    meta = file_of(data)
    h.add_peer("first", 7001, last_seen=2000.0)  # most recently seen: tried first
    h.add_peer("second", 7002, last_seen=1000.0)
    h.advertise(meta, "first", "second")
    h.net.holders[("127.0.0.1", 7001)] = failing("connection reset")
    h.net.holders[("127.0.0.1", 7002)] = serving(meta, data)
    entry = await h.node.get(meta.file_id)
    await h.settle()
    assert [port for _, port, _ in h.net.fetches] == [7001, 7002]
    assert entry.has_copy
    assert h.node.store.blobs.path(meta.file_id).read_bytes() == data
    assert h.partials() == []
    assert [s.source for s in h.recorder.of(FileStored)] == ["get"]
    finished = h.recorder.of(TransferFinished)
    assert [(f.transfer.direction, f.transfer.peer_id, f.ok) for f in finished] == [
        ("in", "first", False),
        ("in", "second", True),
    ]
    assert finished[0].error is not None
    assert "connection reset" in finished[0].error
    assert finished[1].transfer.bytes_done == len(data)
    assert h.node.active_transfers == {}


async def test_get_refuses_wrong_bytes_and_tries_the_next_holder(h: Harness) -> None:
    data = b"the real thing"
    meta = file_of(data)
    h.add_peer("liar", 7001, last_seen=2000.0)
    h.add_peer("honest", 7002, last_seen=1000.0)
    h.advertise(meta, "liar", "honest")
    h.net.holders[("127.0.0.1", 7001)] = serving(meta, b"a forgery")
    h.net.holders[("127.0.0.1", 7002)] = serving(meta, data)
    entry = await h.node.get(meta.file_id)
    await h.settle()
    assert [port for _, port, _ in h.net.fetches] == [7001, 7002]
    assert entry.has_copy
    assert h.node.store.blobs.path(meta.file_id).read_bytes() == data
    [refused] = h.recorder.of(FileRefused)
    assert (refused.file_id, refused.peer_id) == (meta.file_id, "liar")
    assert h.partials() == []
    announced = {(host, port) for host, port, _ in h.net.messages(Announce)}
    assert announced == {("127.0.0.1", 7001), ("127.0.0.1", 7002)}


async def test_get_fails_when_every_holder_fails(h: Harness) -> None:
    data = b"unreachable"
    meta = file_of(data)
    h.add_peer("a", 7001)
    h.add_peer("b", 7002)
    h.advertise(meta, "a", "b")
    h.net.holders[("127.0.0.1", 7002)] = serving(None, b"")  # "does not have it"
    with pytest.raises(FetchFailed):
        await h.node.get(meta.file_id)
    assert not h.node.store.blobs.has(meta.file_id)
    assert h.partials() == []
    entry = h.node.file(meta.file_id)
    assert entry is not None
    assert entry.holders == ("a",)  # b said it does not have it
    with pytest.raises(NotFound):
        await h.node.get("1" * 64)


async def test_push_stores_sends_file_data_to_one_peer_and_announces_to_all(h: Harness) -> None:
    h.add_peer("bob", 7002)
    h.add_peer("carol", 7003)
    src = h.tmp / "report.pdf"
    src.write_bytes(b"%PDF-1.7 ...")
    meta = await h.node.push(src)
    await h.settle()
    assert meta.file_owner == ME
    assert meta.file_name == "report.pdf"
    assert meta.file_id == compute_file_id(b"%PDF-1.7 ...", int(meta.file_timestamp))
    assert h.node.store.blobs.path(meta.file_id).read_bytes() == b"%PDF-1.7 ..."
    entry = h.node.file(meta.file_id)
    assert entry is not None
    assert entry.has_copy
    [(host, port, pushed_meta, body)] = h.net.pushed
    assert (host, port) in {("127.0.0.1", 7002), ("127.0.0.1", 7003)}
    assert (pushed_meta, body) == (meta, b"%PDF-1.7 ...")
    announced = sorted((host, port) for host, port, _ in h.net.messages(Announce))
    assert announced == [("127.0.0.1", 7002), ("127.0.0.1", 7003)]
    assert all(m == Announce(ME, meta) for _, _, m in h.net.messages(Announce))
    [out] = h.recorder.of(TransferFinished)
    assert (out.transfer.direction, out.ok, out.transfer.file_id) == ("out", True, meta.file_id)


async def test_push_with_no_peers_only_stores(h: Harness) -> None:
    src = h.tmp / "alone.txt"
    src.write_bytes(b"nobody to tell")
    meta = await h.node.push(src, name="renamed.txt")
    await h.settle()
    assert meta.file_name == "renamed.txt"
    assert h.net.pushed == []
    assert h.net.sent == []
    assert h.local_ids() == {meta.file_id}


async def test_received_push_is_stored_and_announced(h: Harness) -> None:
    h.add_peer("bob", 7002)
    data = b"gift"
    meta = file_of(data)
    await h.receive(meta, data)
    await h.settle()
    assert meta.file_id in h.local_ids()
    assert [s.source for s in h.recorder.of(FileStored)] == ["received"]
    assert h.net.messages(Announce) == [("127.0.0.1", 7002, Announce(ME, meta))]


async def test_received_push_with_wrong_bytes_is_refused(h: Harness) -> None:
    meta = file_of(b"claimed")
    await h.receive(meta, b"actual")
    await h.settle()
    assert h.node.file(meta.file_id) is None
    assert h.partials() == []
    [refused] = h.recorder.of(FileRefused)
    assert refused.file_id == meta.file_id


# -- plugins --------------------------------------------------------------------------------------
async def test_events_reach_plugins_only_after_commit(h: Harness) -> None:
    await h.node.handle_message(reply("bob", 7002, file_of(b"one")), "src")
    await h.receive(file_of(b"two"), b"two")
    await _deleted_by_owner(h, b"three")
    await h.settle()
    assert h.recorder.visible
    assert all(h.recorder.visible)


async def test_events_of_a_transaction_that_did_not_commit_are_never_published(
    h: Harness,
) -> None:
    with h.node.transaction() as uow:
        uow.emit(PeerExpired("ghost"))

    def fail_mid_way() -> None:
        with h.node.transaction() as uow:
            uow.emit(PeerExpired("ghost"))
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        fail_mid_way()
    await h.settle()
    assert h.recorder.events == []
    with h.node.transaction() as uow:
        uow.emit(PeerExpired("real"))
        assert h.recorder.events == []  # not before the commit
        uow.commit()
    assert h.recorder.events == [PeerExpired("real")]


async def test_async_event_hooks_are_awaited(make_harness: Callable[..., Harness]) -> None:
    seen: list[str] = []

    class AsyncPlugin:
        @hookimpl
        async def treedrive_on_event(self, node: Node, event: Event) -> None:
            await asyncio.sleep(0)
            seen.append(event.name)

    h = make_harness(AsyncPlugin())
    await h.node.handle_message(Announce(from_peer="bob", meta=file_of(b"x")), "src")
    await h.settle()
    assert seen == ["FileAdvertised"]


async def test_a_broken_plugin_is_logged_and_skipped(
    make_harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    h = make_harness(Broken())
    caplog.set_level(logging.ERROR, logger="treedrive.core.plugins")
    await h.node.handle_message(gossip("alice", 7001), "src")
    await h.settle()
    # The node still answered, with the built-in keys, and the other plugin still heard it.
    [(_, _, answer)] = h.net.messages(GossipReply)
    assert answer.extension is not None
    assert h.recorder.of(PeerSeen)
    # Policy hooks fall through to the defaults.
    data = b"still accepted"
    await h.receive(file_of(data), data)
    assert file_of(data).file_id in h.local_ids()
    h.add_peer("bob", 7002)
    wanted = file_of(b"wanted")
    h.advertise(wanted, "bob")
    h.net.holders[("127.0.0.1", 7002)] = serving(wanted, b"wanted")
    assert (await h.node.get(wanted.file_id)).has_copy
    await h.settle()
    failures = [r.getMessage() for r in caplog.records if "failed in" in r.getMessage()]
    for hook in ("treedrive_on_event", "treedrive_gossip_extra", "treedrive_accept_file",
                 "treedrive_order_holders"):  # fmt: skip
        assert any(hook in f for f in failures), hook


async def test_gossip_extra_adds_keys_to_outgoing_gossip(
    make_harness: Callable[..., Harness],
) -> None:
    asked: list[str] = []

    class Extra:
        @hookimpl
        def treedrive_gossip_extra(self, node: Node, message_type: str) -> Mapping[str, Any]:
            asked.append(message_type)
            return {"x_color": "blue", "x_type": message_type}

    h = make_harness(Extra())
    g = h.node.new_gossip()
    assert g.extra["x_color"] == "blue"
    assert g.extra["x_type"] == "GOSSIP"
    assert g.extension is not None
    assert set(g.extra) == {"x_color", "x_type"}
    await h.node.handle_message(gossip("alice", 7001), "src")
    await h.settle()
    [(_, _, answer)] = h.net.messages(GossipReply)
    assert answer.extra["x_color"] == "blue"
    assert answer.extra["x_type"] == "GOSSIP_REPLY"
    assert asked == ["GOSSIP", "GOSSIP_REPLY"]


async def test_gossip_received_sees_unknown_incoming_keys(
    make_harness: Callable[..., Harness],
) -> None:
    heard: list[tuple[str, str, dict[str, Any]]] = []

    class Listener:
        @hookimpl
        def treedrive_gossip_received(
            self, node: Node, message_type: str, peer_id: str, extra: Mapping[str, Any]
        ) -> None:
            heard.append((message_type, peer_id, dict(extra)))

    h = make_harness(Listener())
    td = Extension(frozenset())
    alice_says = replace(gossip("alice", 7001, x_color="red"), extension=td)
    await h.node.handle_message(alice_says, "src")
    await h.node.handle_message(reply("bob", 7002, x_size=3), "src")
    await h.node.handle_message(replace(gossip("carol", 7003, "g-plain"), extension=td), "src")
    assert heard == [
        ("GOSSIP", "alice", {"x_color": "red"}),
        ("GOSSIP_REPLY", "bob", {"x_size": 3}),
    ]
    alice = next(p for p in h.node.peers() if p.peer_id == "alice")
    assert alice.is_treedrive
    bob = next(p for p in h.node.peers() if p.peer_id == "bob")
    assert not bob.is_treedrive


async def test_accept_file_false_refuses_a_push(make_harness: Callable[..., Harness]) -> None:
    offered: list[str] = []

    class Picky:
        @hookimpl
        def treedrive_accept_file(self, node: Node, meta: FileMeta, peer_id: str | None) -> bool:
            offered.append(meta.file_name)
            return not meta.file_name.endswith(".exe")

    h = make_harness(Picky())
    bad, good = b"MZ...", b"plain text"
    await h.receive(file_of(bad, name="virus.exe"), bad)
    await h.receive(file_of(good, name="notes.txt"), good)
    assert offered == ["virus.exe", "notes.txt"]
    assert h.local_ids() == {file_of(good).file_id}
    assert not h.node.store.blobs.has(file_of(bad).file_id)
    assert h.node.file(file_of(bad).file_id) is None
    assert h.partials() == []


async def test_start_and_stop_through_the_port(h: Harness) -> None:
    await h.node.start()
    try:
        assert h.net.started
        assert (h.node.host, h.node.port) == (MY_HOST, MY_PORT)
    finally:
        await h.node.stop()
    assert h.net.closed


async def test_pushed_copy_of_a_file_already_held_is_not_stored_twice(h: Harness) -> None:
    data = b"twice"
    meta = file_of(data)
    await h.receive(meta, data)
    await h.receive(meta, data)
    await h.settle()
    assert len(h.recorder.of(FileStored)) == 1
    assert h.partials() == []


async def test_concurrent_gets_of_one_file_fetch_it_once(h: Harness) -> None:
    data = b"popular"
    meta = file_of(data)
    h.add_peer("bob", 7002)
    h.advertise(meta, "bob")
    release = asyncio.Event()

    async def slow_fetch(
        host: str,
        port: int,
        file_id: str,
        sink: FileSink,
        progress: Callable[[int], None] | None = None,
        max_bytes: int | None = None,
    ) -> FileData:
        h.net.fetches.append((host, port, file_id))
        await release.wait()
        sink.write(data)
        return FileData(meta)

    h.net.fetch_file = slow_fetch  # type: ignore[method-assign]
    first = asyncio.ensure_future(h.node.get(meta.file_id))
    second = asyncio.ensure_future(h.node.get(meta.file_id))
    await asyncio.sleep(0.01)
    release.set()
    a, b = await asyncio.gather(first, second)
    assert a == b
    assert a.has_copy
    assert len(h.net.fetches) == 1


async def test_push_of_an_unreadable_path_fails_cleanly(h: Harness) -> None:
    from treedrive.core.errors import NodeError

    with pytest.raises(NodeError, match="cannot read"):
        await h.node.push(h.tmp / "does-not-exist.txt")
    assert h.partials() == []
    assert h.node.files() == []


# -- bounded work per stranger (issue 8) ----------------------------------------------------------
async def test_gossips_naming_one_address_are_answered_once_per_interval(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(gossip_interval=1.0)  # long enough for the 20 messages on a busy machine
    for i in range(20):  # twenty peer ids, one address
        await h.node.handle_message(gossip(f"fake-{i}", 7001, f"g-{i}"), "127.0.0.1:5000")
    assert len(h.net.messages(GossipReply)) == 1
    await asyncio.sleep(1.2)  # the one pending reply goes when the interval is over
    assert len(h.net.messages(GossipReply)) == 2
    await asyncio.sleep(1.2)
    assert len(h.net.messages(GossipReply)) == 2


async def test_the_reply_object_is_reused_until_local_files_change(h: Harness) -> None:
    await h.node.handle_message(gossip("alice", 7001, "g-1"), "127.0.0.1:5000")
    await h.node.handle_message(gossip("bob", 7002, "g-2"), "127.0.0.1:5000")
    first, second = (m for _, _, m in h.net.messages(GossipReply))
    assert first is second  # the transport encodes it once
    src = h.tmp / "new.txt"
    src.write_bytes(b"new file")
    mine = await h.node.push(src)
    await h.node.handle_message(gossip("carol", 7003, "g-3"), "127.0.0.1:5000")
    third = h.net.messages(GossipReply)[-1][2]
    assert third is not first
    assert third.files == (mine,)


async def test_a_stranger_does_not_earn_large_replies_but_a_proven_peer_is_answered(
    h: Harness,
) -> None:
    for i in range(300):  # 300 x ~2.5 kB: more than the burst allowance
        h.advertise(file_of(b"x%d" % i), "bob")
        data = b"held %d" % i
        await h.receive(file_of(data, name=f"{'n' * 2000}{i}"), data)
    h.net.sent.clear()
    answered = 0
    for i in range(50):
        await h.node.handle_message(gossip(f"eve-{i}", 9000 + i, f"e-{i}"), "127.0.0.1:5000")
        answered = len(h.net.messages(GossipReply))
    assert answered <= 1
    assert h.node.replies.refused >= 49
    # a peer that answered our GOSSIPs shares the stranger's IP and is still answered
    h.add_peer("alice", 7001)
    await h.node.gossip_now()
    await h.node.handle_message(reply("alice", 7001), "127.0.0.1:6000")
    await h.node.handle_message(gossip("alice", 7001, "a-1"), "127.0.0.1:6001")
    assert h.net.messages(GossipReply)[-1][:2] == ("127.0.0.1", 7001)


async def test_gossip_now_sends_once_per_address(h: Harness) -> None:
    for i in range(200):
        h.add_peer(f"forged-{i}", 22)
    h.add_peer("real", 7001)
    with h.node.store.unit_of_work() as uow:  # and one that names this node's own address
        uow.peers.upsert("mirror", MY_HOST, MY_PORT, 1e12, None)
        uow.commit()
    await h.node.gossip_now()
    targets = sorted((host, port) for host, port, _ in h.net.messages(Gossip))
    assert targets == [("127.0.0.1", 22), ("127.0.0.1", 7001)]


async def test_forwarding_skips_the_originators_address_and_is_rate_limited(h: Harness) -> None:
    for i in range(20):
        h.add_peer(f"forged-{i}", 22)  # every peer id names the originator's address
    await h.node.handle_message(gossip("forged-0", 22, "f-0"), "src")
    assert h.net.messages(Gossip) == []
    h.add_peer("p1", 7101)
    h.add_peer("p2", 7102)
    started = time.monotonic()
    for i in range(300):
        await h.node.handle_message(gossip(f"n-{i}", 9000 + i, f"n-{i}"), "src")
    took = time.monotonic() - started
    forwarded = h.net.messages(Gossip)
    assert all((host, port) != (m.host, m.port) for host, port, m in forwarded)
    # 30 a second and a burst of 30 at most, each to fan-out 3 addresses
    allowed = 30 + 30 * took + 1
    assert len({m.id for _, _, m in forwarded}) <= allowed
    assert len(forwarded) <= 3 * allowed
    assert allowed < 300  # or the bound says nothing (over 9 s for 300 messages)


async def test_peers_beyond_max_peers_evict_the_longest_silent(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(max_peers=5)
    for i in range(12):
        await h.node.handle_message(gossip(f"p{i}", 7100 + i, f"g-{i}"), "src")
    assert {p.peer_id for p in h.node.peers()} == {f"p{i}" for i in range(7, 12)}
    assert {e.peer_id for e in h.recorder.of(PeerExpired)} == {f"p{i}" for i in range(7)}


# -- claims never override facts (issue 8) ---------------------------------------------------------
async def test_a_delete_in_this_nodes_own_name_is_refused(h: Harness) -> None:
    src = h.tmp / "mine.txt"
    src.write_bytes(b"mine")
    mine = await h.node.push(src)
    await h.node.handle_message(Delete(from_peer=ME, file_id=mine.file_id), "127.0.0.1:5000")
    entry = h.node.file(mine.file_id)
    assert entry is not None
    assert entry.has_copy
    assert h.node.store.blobs.has(mine.file_id)


async def test_a_deleted_file_is_never_relayed_to_its_owner(h: Harness) -> None:
    meta = await _deleted_by_owner(h)  # alice deleted it (or someone said so in her name)
    h.net.sent.clear()
    await h.node.handle_message(reply("alice", 7001, meta), "src")  # alice still holds it
    await h.node.handle_message(Announce(from_peer="alice", meta=meta), "src")
    assert h.net.messages(Delete) == []


async def test_a_pushed_file_claiming_this_node_as_owner_is_refused(h: Harness) -> None:
    data = b"not yours"
    meta = file_of(data, owner=ME)
    await h.receive(meta, data)
    assert h.node.file(meta.file_id) is None
    assert not h.node.store.blobs.has(meta.file_id)
    assert h.partials() == []
    # whatever the record says: a stranger's claim may have written it
    own = file_of(b"lost", owner=ME)
    with h.node.store.unit_of_work() as uow:
        uow.files.merge(own, 1.0)
        uow.commit()
    await h.receive(own, b"lost")
    entry = h.node.file(own.file_id)
    assert entry is not None
    assert not entry.has_copy
    assert not h.node.store.blobs.has(own.file_id)
    assert h.node.forged_claims == 2


async def test_a_record_saying_this_node_owns_a_file_it_never_pushed_is_skipped(
    h: Harness,
) -> None:
    """mallory's GOSSIP_REPLY (or ANNOUNCE) names this node as the owner: the record is not
    taken, so the push that follows finds no record that says "ours" (and is refused anyway)."""
    src = h.tmp / "mine.txt"
    src.write_bytes(b"really mine")
    mine = await h.node.push(src)
    data = b"never pushed here"
    forged = file_of(data, owner=ME)
    other = file_of(b"mallory's own", owner="mallory")
    await h.node.handle_message(reply("mallory", 7666, forged, other, mine), "127.0.0.1:5000")
    assert h.node.file(forged.file_id) is None
    entry = h.node.file(mine.file_id)  # a file this node did push: mallory may hold it
    assert entry is not None
    assert entry.holders == ("mallory",)
    assert h.node.file(other.file_id) is not None
    await h.node.handle_message(Announce("mallory", forged), "127.0.0.1:5000")
    assert h.node.file(forged.file_id) is None
    await h.receive(forged, data)
    assert h.node.file(forged.file_id) is None
    assert not h.node.store.blobs.has(forged.file_id)
    assert all(e.meta.file_owner != ME for e in h.node.files() if e.meta != mine)
    assert h.node.forged_claims == 3


async def test_claims_of_this_nodes_files_are_judged_inside_their_own_transaction(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Which files this node owns is read in the transaction that takes the claims, not in a
    second session opened beside it (which saw only what was committed before)."""
    src = h.tmp / "mine.txt"
    src.write_bytes(b"really mine")
    mine = await h.node.push(src)
    store = h.node.store
    writing, beside = [False], []
    real_write, real_read = store.unit_of_work, store.reading

    @contextmanager
    def unit_of_work() -> Iterator[Any]:
        writing[0] = True
        try:
            with real_write() as uow:
                yield uow
        finally:
            writing[0] = False

    @contextmanager
    def reading() -> Iterator[Any]:
        beside.append(writing[0])
        with real_read() as uow:
            yield uow

    monkeypatch.setattr(store, "unit_of_work", unit_of_work)
    monkeypatch.setattr(store, "reading", reading)
    forged = file_of(b"never pushed here", owner=ME)
    await h.node.handle_message(reply("mallory", 7666, forged, mine), "127.0.0.1:5000")
    assert h.node.file(forged.file_id) is None
    entry = h.node.file(mine.file_id)
    assert entry is not None
    assert entry.holders == ("mallory",)
    assert True not in beside
    assert h.node.forged_claims == 1


async def test_a_peer_that_missed_this_nodes_delete_gets_it_again(h: Harness) -> None:
    """dave was away when this node deleted its file: his GOSSIP_REPLY (and ANNOUNCE) still list
    it with this node as the owner. That is no forgery: he is sent the owner's DELETE again, and
    the file stays deleted here."""
    src = h.tmp / "mine.txt"
    src.write_bytes(b"mine, then gone")
    meta = await h.node.push(src)
    await h.node.delete(meta.file_id)
    await h.settle()
    h.net.sent.clear()
    await h.node.handle_message(reply("dave", 7004, meta), "127.0.0.1:5000")
    await h.settle()
    assert h.node.file(meta.file_id) is None
    assert h.node.forged_claims == 0
    to_dave = [m for host, port, m in h.net.messages(Delete) if port == 7004]
    assert [(m.from_peer, m.file_id) for m in to_dave] == [(ME, meta.file_id)]
    await h.node.handle_message(Announce("erin", meta), "127.0.0.1:5000")
    assert h.node.file(meta.file_id) is None
    assert h.node.forged_claims == 0


async def test_delete_relays_are_few_per_message_and_per_address(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """One GOSSIP_REPLY listing 300 deleted files made 300 DELETE connections to the address it
    claims (and 300 log lines); a fresh peer id at the same address made 300 more."""
    caplog.set_level(logging.INFO, logger="treedrive.core.node")
    started = time.monotonic()
    doomed = [file_of(b"doomed %d" % i, owner="alice") for i in range(300)]
    with h.node.store.unit_of_work() as uow:
        for meta in doomed:
            uow.tombstones.add(meta.file_id, "alice", 1.0)
        uow.commit()
    await h.node.handle_message(reply("bob", 7002, *doomed), "127.0.0.1:5000")
    assert len(h.net.messages(Delete)) == RELAYS_PER_MESSAGE
    for i in range(20):  # fresh peer ids, one address
        await h.node.handle_message(reply(f"bob-{i}", 7002, *doomed), "127.0.0.1:5000")
        await h.node.handle_message(Announce(f"bob-{i}", doomed[-1 - i]), "127.0.0.1:5000")
    assert len(h.net.messages(Delete)) <= RELAYS_PER_ADDRESS
    await h.node.handle_message(reply("carol", 7003, *doomed), "127.0.0.1:5000")
    to_carol = [m for host, port, m in h.net.messages(Delete) if port == 7003]
    assert len(to_carol) == RELAYS_PER_MESSAGE
    relay_lines = [r for r in caplog.records if "deleted by" in r.getMessage()]
    assert len(relay_lines) <= 1 + math.ceil(time.monotonic() - started)  # one a second
    assert all(h.node.file(m.file_id) is None for m in doomed)


async def test_log_lines_caused_by_peer_input_are_rate_limited(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="treedrive.core.node")
    started = time.monotonic()
    for i in range(50):
        await h.receive(file_of(b"claimed %d" % i), b"actual")  # bad bytes
        await h.receive(file_of(b"mine %d" % i, owner=ME), b"mine %d" % i)  # refused push
        await h.node.handle_pushed_file(FileData(None), h.node.open_sink(), "src")
        broken = GossipReply("127.0.0.1", 7001, f"p{i}", (), skipped=3)
        await h.node.handle_message(broken, "src")  # malformed records
        await h.node.handle_message(reply("mallory", 7666, file_of(b"f%d" % i, owner=ME)), "src")
        await h.node.handle_message(Delete("alice", "1" * 64), "src")
        await h.node.handle_message(Delete(ME, "2" * 64), "src")
    seconds = math.ceil(time.monotonic() - started)  # about 1 s; more on a busy machine
    lines = [r.getMessage() for r in caplog.records]
    kinds = ["from src refused:", "not stored", "without a file", "malformed", "never pushed",
             "unknown file", "own name"]  # fmt: skip
    for kind in kinds:  # each said once a second at most, of 50 times each
        assert 1 <= sum(kind in line for line in lines) <= 1 + seconds, (kind, seconds, lines)
    assert len(lines) <= (1 + seconds) * len(kinds), lines


async def test_peers_that_answer_our_gossip_survive_a_flood_of_new_peer_ids(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(max_peers=5)
    await h.node.handle_message(gossip("alice", 7001, "a-1"), "127.0.0.1:5000")
    await h.node.gossip_now()  # reaches alice, who answers from her address
    await h.node.handle_message(reply("alice", 7001), "127.0.0.1:6000")
    for i in range(200):  # new peer ids, each heard from after alice
        await h.node.handle_message(gossip(f"fake-{i}", 9000 + i, f"f-{i}"), "127.0.0.1:5001")
    tracked = {p.peer_id for p in h.node.peers()}
    assert "alice" in tracked
    assert len(tracked) == 5
    # a GOSSIP_REPLY that answers nothing we sent (or from another IP) proves nothing
    await h.node.handle_message(reply("bob", 7002), "127.0.0.1:6001")
    await h.node.gossip_now()
    await h.node.handle_message(reply("carol", 9199), "10.6.6.6:6002")
    for i in range(200, 400):
        await h.node.handle_message(gossip(f"fake-{i}", 9000 + i, f"f-{i}"), "127.0.0.1:5001")
    tracked = {p.peer_id for p in h.node.peers()}
    assert "alice" in tracked
    assert not tracked & {"bob", "carol"}


def test_swim_is_offered_unless_turned_off(tmp_path: Path) -> None:
    from treedrive.core.config import NodeConfig
    from treedrive.core.context import features_for
    from treedrive.core.messages import SWIM

    base = NodeConfig(data_dir=tmp_path)
    assert SWIM in features_for(base)
    assert SWIM not in features_for(replace(base, swim=False))
    assert SWIM in features_for(replace(base, swim=True))
    assert TLS not in features_for(replace(base, swim=True, encryption=False))
    assert features_for(replace(base, swim=True, extension=False)) == frozenset()
