"""The running node's swim side (core/swimnode.py, core/swimstore.py) with the recording network:
what it sends, what it tracks, and what reaches the store, under the catalogue's rules."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from tests.core.harness import ME, MY_HOST, MY_PORT, TS, Harness, file_of, gossip
from treedrive.core import ownership, swimwire
from treedrive.core.bound import Claim, prove
from treedrive.core.deltas import WINDOW, Change, Sync
from treedrive.core.events import PeerExpired
from treedrive.core.identity import NodeKey
from treedrive.core.messages import RAW_RANGE, SWIM, Extension, Gossip, GossipReply
from treedrive.core.model import FileMeta
from treedrive.core.swimtypes import Ack, Message, News, Ping, Push, Status

FEATURES = Extension(frozenset({SWIM, RAW_RANGE}))


def message(msg: Message, *, port: int | None = None) -> Gossip | GossipReply:
    """``msg`` as the transport hands it to the node (unsigned)."""
    host, own = msg.address
    port = own if port is None else port
    fields: Any = swimwire.fields(msg)
    if isinstance(msg, Ack):
        return GossipReply(host=host, port=port, peer_id=msg.sender, files=(),
                           extension=FEATURES, swim=fields)  # fmt: skip
    return Gossip(host=host, port=port, id=f"s-{time.monotonic()}", peer_id=msg.sender,
                  extension=FEATURES, swim=fields)  # fmt: skip


def signed(key: NodeKey, msg: Message) -> Gossip | GossipReply:
    """``msg`` as the transport hands it to the node, signed by ``key`` (PROTOCOL.md 2.7)."""
    m = message(msg)
    gossip_id = m.id if isinstance(m, Gossip) else None
    claim = Claim(m.peer_id, m.host, m.port, gossip_id, tuple(sorted(FEATURES.features)))
    return replace(m, extension=replace(FEATURES, proof=prove(key, claim, int(time.time()))))


def ping(sender: str, port: int, seq: int = 1, **kw: Any) -> Ping:
    return Ping(sender=sender, address=("127.0.0.1", port), incarnation=1, head=0, seq=seq, **kw)


def push(sender: str, port: int, **kw: Any) -> Push:
    return Push(sender=sender, address=("127.0.0.1", port), incarnation=1, head=0, **kw)


@pytest.fixture
def s(make_harness: Callable[..., Harness]) -> Harness:
    h = make_harness(swim=True)  # swim is opt-in (NodeConfig.swim)
    h.node.swim.start()
    return h


async def take(h: Harness, msg: Message, source: str = "127.0.0.1:40000") -> None:
    await h.node.handle_message(message(msg), source)
    await h.settle()


def peers(h: Harness) -> dict[str, Any]:
    return {p.peer_id: p for p in h.node.peers()}


def epoch(h: Harness) -> int:
    deltas = h.node.swim.deltas
    assert deltas is not None
    return deltas.head()


async def test_a_ping_is_acked_never_answered_the_classic_way_nor_forwarded(s: Harness) -> None:
    s.add_peer("carol", 7002)  # a classic peer a GOSSIP could be forwarded to
    await take(s, ping("bob", 7001, seq=5))
    [(host, port, ack)] = s.net.messages(GossipReply)
    assert (host, port) == ("127.0.0.1", 7001)
    assert ack.files == ()
    assert (ack.host, ack.port, ack.peer_id) == (MY_HOST, MY_PORT, ME)
    assert ack.extension is not None
    assert ack.extension.proof is not None
    assert isinstance(swimwire.read(ME, MY_HOST, MY_PORT, ack.swim), Ack)
    assert ack.swim["s"] == 5
    assert not [m for _, _, m in s.net.messages(Gossip) if m.peer_id == "bob"]
    bob = peers(s)["bob"]
    assert bob.features is not None
    assert SWIM in bob.features


async def test_an_ack_with_no_files_leaves_what_the_peer_holds(s: Harness) -> None:
    await take(s, ping("bob", 7001))
    meta = file_of(b"held by bob")
    s.advertise(meta, "bob")
    ack = Ack(sender="bob", address=("127.0.0.1", 7001), incarnation=1, head=0, seq=1,
              of="bob", of_incarnation=1)  # fmt: skip
    await take(s, ack)
    entry = s.node.file(meta.file_id)
    assert entry is not None
    assert entry.holders == ("bob",)


async def test_a_malformed_swim_message_is_dropped_with_one_log_line(
    s: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    bad = Gossip(host="127.0.0.1", port=7001, id="x", peer_id="bob", extension=FEATURES,
                 swim={"k": "ping", "n": -1})  # fmt: skip
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            await s.node.handle_message(bad, "127.0.0.1:40000")
    await s.settle()
    assert s.node.ctx.counters.dropped["swim_malformed"] == 3
    assert s.net.sent == []
    assert "bob" not in peers(s)
    assert len([r for r in caplog.records if "malformed membership" in r.message]) == 1


async def test_the_classic_round_skips_members_but_not_classic_peers(s: Harness) -> None:
    s.add_peer("carol", 7002)
    await take(s, ping("bob", 7001))
    s.net.sent.clear()
    s.node.joining.joined.set()
    await s.node.gossip_now()
    classic = [(h, p) for h, p, m in s.net.messages(Gossip) if m.swim is None]
    assert classic == [("127.0.0.1", 7002)]


async def test_a_classic_gossip_from_a_member_still_gets_the_classic_reply(s: Harness) -> None:
    g = gossip("bob", 7001)
    g = Gossip(host=g.host, port=g.port, id=g.id, peer_id=g.peer_id, extension=FEATURES)
    await s.node.handle_message(g, "127.0.0.1:40000")
    await s.settle()
    replies = [m for _, _, m in s.net.messages(GossipReply)]
    assert [r.swim for r in replies] == [None]
    # ...and bob, met first, is asked for its member list
    pings = [m for _, _, m in s.net.messages(Gossip) if m.swim is not None]
    assert [(p.swim["k"], p.swim.get("join")) for p in pings] == [("ping", True)]
    assert s.node.swim.manages("bob")


async def test_peers_follow_the_member_table(s: Harness) -> None:
    await take(s, ping("bob", 7001))
    news = (
        News("dave", ("127.0.0.1", 7004), 3, Status.ALIVE),
        News("bob", ("127.0.0.1", 7001), 1, Status.DEAD),
    )
    await take(s, push("carol", 7002, news=news))
    assert set(peers(s)) == {"carol", "dave"}
    assert "bob" in [e.peer_id for e in s.recorder.of(PeerExpired)]
    # members do not expire for silence; classic peers do
    s.add_peer("eve", 7005, last_seen=1.0)
    assert s.node.expire_peers(time.time() + 1e6) == ["eve"]
    assert set(peers(s)) == {"carol", "dave"}


async def test_changes_of_members_reach_the_store(s: Harness) -> None:
    meta = file_of(b"bob's copy", owner="alice")
    await take(s, ping("bob", 7001, changes=(Change("bob", 10, meta.file_id, meta),)))
    entry = s.node.file(meta.file_id)
    assert entry is not None
    assert entry.holders == ("bob",)
    assert not entry.has_copy
    # a change of an origin that is no member is not applied
    other = file_of(b"zed's copy", owner="zed")
    await take(s, push("bob", 7001, changes=(Change("zed", 3, other.file_id, other),)))
    assert s.node.file(other.file_id) is None
    # bob no longer holds it (not its owner): the record, held by nobody, goes
    await take(s, push("bob", 7001, changes=(Change("bob", 11, meta.file_id, None),)))
    assert s.node.file(meta.file_id) is None


async def test_a_change_that_says_this_node_owns_a_file_is_refused(s: Harness) -> None:
    forged = file_of(b"not mine", owner=ME)
    await take(s, ping("bob", 7001, changes=(Change("bob", 4, forged.file_id, forged),)))
    assert s.node.file(forged.file_id) is None
    assert s.node.forged_claims == 1


async def held_copy(h: Harness, meta: FileMeta, data: bytes) -> None:
    await h.receive(meta, data)
    assert h.local_ids() == {meta.file_id}


async def test_the_owners_tombstone_deletes_the_copy_here(s: Harness) -> None:
    data = b"bob's own file"
    meta = file_of(data, owner="bob")
    await take(s, ping("bob", 7001))
    await held_copy(s, meta, data)
    await take(s, push("bob", 7001, changes=(Change("bob", 7, meta.file_id, None),)))
    assert s.node.file(meta.file_id) is None
    assert not s.node.store.blobs.has(meta.file_id)
    deltas = s.node.swim.deltas
    assert deltas is not None
    assert not deltas.log.holds(meta.file_id)


async def test_a_sealed_file_needs_the_owners_signature_in_the_tombstone(s: Harness) -> None:
    key = NodeKey.generate()
    data = b"sealed by bob"
    meta = ownership.seal(key, file_of(data, owner="bob"))
    await take(s, ping("bob", 7001))
    await held_copy(s, meta, data)
    # unsigned: refused, and this node lists its copy again (the store is the truth)
    await take(s, push("bob", 7001, changes=(Change("bob", 7, meta.file_id, None),)))
    entry = s.node.file(meta.file_id)
    assert entry is not None
    assert entry.has_copy
    s.node.swim.tick()
    deltas = s.node.swim.deltas
    assert deltas is not None
    assert deltas.log.holds(meta.file_id)
    # signed by the owner's key: honoured
    signed = ownership.sign_delete(key, meta.file_id, "bob", TS + 5)
    tomb = Change("bob", 8, meta.file_id, None, signed)
    await take(s, push("bob", 7001, changes=(tomb,)))
    assert s.node.file(meta.file_id) is None
    assert not s.node.store.blobs.has(meta.file_id)


async def test_an_ack_carries_the_catalogue_only_back_to_the_pings_own_ip(s: Harness) -> None:
    src = s.tmp / "mine.txt"
    src.write_bytes(b"mine")
    await s.node.push(src)
    s.net.sent.clear()
    await take(s, ping("bob", 7001, have=None), source="10.0.0.9:40000")
    [(_, _, far)] = s.net.messages(GossipReply)
    assert "sync" not in far.swim
    assert not far.swim.get("ch")  # a bare ack to a named address: no changes, no news
    assert not far.swim.get("news")
    s.net.sent.clear()
    await take(s, ping("bob", 7001, seq=2, have=None), source="127.0.0.1:40000")
    [(_, _, near)] = s.net.messages(GossipReply)
    assert near.swim["sync"]["snap"] is True
    assert [c[2] for c in near.swim["sync"]["ch"]] == list(s.node.own_files())


async def test_own_changes_follow_the_store(s: Harness) -> None:
    src = s.tmp / "mine.txt"
    src.write_bytes(b"mine")
    meta = await s.node.push(src)
    start = epoch(s)
    s.node.swim.tick()
    deltas = s.node.swim.deltas
    assert deltas is not None
    assert deltas.log.holds(meta.file_id)
    assert epoch(s) == start + 1
    assert start > time.time() * 1e6 - 600e6
    await s.node.delete(meta.file_id)
    s.node.swim.tick()
    assert not deltas.log.holds(meta.file_id)
    [tomb] = [c for c in deltas.log.since(start + 1).changes if c.deleted]
    assert tomb.signed is not None  # the owner's signature travels with the tombstone


async def test_news_of_a_member_keeps_the_features_it_said_itself(s: Harness) -> None:
    await take(s, ping("bob", 7001))
    moved = News("bob", ("127.0.0.1", 7011), 2, Status.ALIVE)
    await take(s, push("carol", 7002, news=(moved,)))
    bob = peers(s)["bob"]
    assert (bob.host, bob.port) == ("127.0.0.1", 7011)
    assert bob.features == FEATURES.features  # not cut down to {swim}
    assert peers(s)["carol"].features == FEATURES.features


def forged_first(h: Harness, key: NodeKey) -> FileMeta:
    """alice's record as she sealed it; the store holds a forgery of it first (unsealed, its
    size a lie), from mallory."""
    honest = ownership.seal(key, file_of(b"alice's six bytes", owner="alice"))
    h.advertise(replace(honest, seal=None, file_size=999.0), "mallory")
    return honest


ALICE = ("127.0.0.1", 7003)


async def test_a_members_own_sealed_record_replaces_a_forgery_when_it_was_heard_of_first(
    s: Harness,
) -> None:
    """carol's news names alice before alice says a word: alice's own first message (a signed
    ack with the record she sealed) still pins her key (news of a member is no message of its
    own), so her record takes the forgery's place, as in a GOSSIP_REPLY (PROTOCOL.md 2.7,
    2.8)."""
    key = NodeKey.generate()
    honest = forged_first(s, key)
    await take(s, push("carol", 7002, news=(News("alice", ALICE, 1, Status.ALIVE),)))
    assert s.node.swim.manages("alice")
    sync = Sync("alice", 0, 5, 5, (Change("alice", 5, honest.file_id, honest),), snapshot=True)
    ack = Ack(sender="alice", address=ALICE, incarnation=1, head=5, seq=1, of="alice",
              of_incarnation=1, sync=sync)  # fmt: skip
    await s.node.handle_message(signed(key, ack), "127.0.0.1:40000")
    await s.settle()
    entry = s.node.file(honest.file_id)
    assert entry is not None
    assert entry.meta == honest  # the size she sealed...
    assert entry.meta.seal == honest.seal  # ...and her seal
    assert set(entry.holders) == {"mallory", "alice"}
    alice = peers(s)["alice"]
    assert alice.features == FEATURES.features  # what she said, not only {swim}


async def test_a_sealed_record_relayed_before_its_owner_was_pinned_is_judged_again_at_the_pin(
    s: Harness,
) -> None:
    """carol relays alice's change (the record alice sealed) before alice's key is pinned here:
    its seal cannot count yet (a stranger may seal with a key of its own), so alice is not
    listed with a record that contradicts the stored one. alice's own first message pins her
    key: the records she holds are judged again, and hers takes the forgery's place (a
    GOSSIP_REPLY would pin and list at once; a relayed change comes first, and once)."""
    key = NodeKey.generate()
    honest = forged_first(s, key)
    news = (News("alice", ALICE, 1, Status.ALIVE),)
    await take(
        s, push("carol", 7002, news=news, changes=(Change("alice", 5, honest.file_id, honest),))
    )
    entry = s.node.file(honest.file_id)
    assert entry is not None
    assert (entry.meta.file_size, entry.meta.seal) == (999.0, None)
    assert entry.holders == ("mallory",)
    # her own message states her head: 5, the change relayed (a lower one would show it forged)
    own = replace(push("alice", ALICE[1]), head=5)
    await s.node.handle_message(signed(key, own), "127.0.0.1:40000")
    await s.settle()
    entry = s.node.file(honest.file_id)
    assert entry is not None
    assert entry.meta == honest
    assert entry.meta.seal == honest.seal
    assert set(entry.holders) == {"mallory", "alice"}


async def test_a_members_own_first_message_is_tracked_though_news_of_it_came_first(
    s: Harness,
) -> None:
    await take(s, push("carol", 7002, news=(News("alice", ALICE, 1, Status.ALIVE),)))
    assert peers(s)["alice"].features == frozenset({SWIM})  # heard of: all that is known
    await take(s, ping("alice", ALICE[1]))
    assert peers(s)["alice"].features == FEATURES.features  # what she says herself


async def test_an_incarnation_far_ahead_of_the_clock_is_dropped(s: Harness) -> None:
    """mallory's news says bob is dead at incarnation 2**53: taken, no word of bob's own could
    ever win over it again; the whole message is dropped instead, as malformed."""
    doom = News("bob", ("127.0.0.1", 7002), 2**53, Status.DEAD)
    await take(s, push("mallory", 7666, news=(doom,)))
    assert s.node.ctx.counters.dropped["swim_malformed"] == 1
    core = s.node.swim.swim
    assert core is not None
    assert "bob" not in core.members
    now = int(time.time())
    fine = News("carol", ("127.0.0.1", 7003), now + 5, Status.ALIVE)
    await take(s, push("mallory", 7666, news=(fine,)))
    assert s.node.ctx.counters.dropped["swim_malformed"] == 1
    assert "carol" in core.members
    assert swimwire.too_far_ahead(push("m", 1, news=(doom,)), now)
    assert not swimwire.too_far_ahead(push("m", 1, news=(fine,)), now)


async def test_a_relayed_number_past_the_owners_word_is_dropped_and_never_costs_the_copy(
    s: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """carol relays bob's add of bob's own file, numbered past the head bob states himself:
    bob's next message of his own shows it forged, so bob is no longer listed as its holder, but
    this is no delete of bob's (the copy here stays); a number past bob's word + WINDOW is not
    taken at all. Both are counted, with a log line."""
    data = b"bob's own file"
    meta = file_of(data, owner="bob")
    await take(s, replace(ping("bob", 7001), head=100))
    await held_copy(s, meta, data)
    with caplog.at_level(logging.WARNING):
        await take(s, push("carol", 7002, changes=(Change("bob", 150, meta.file_id, meta),)))
        entry = s.node.file(meta.file_id)
        assert entry is not None
        assert "bob" in entry.holders
        await take(s, replace(push("bob", 7001), head=100))
        entry = s.node.file(meta.file_id)
        assert entry is not None
        assert "bob" not in entry.holders
        assert entry.has_copy
        assert s.node.store.blobs.has(meta.file_id)
        deltas = s.node.swim.deltas
        assert deltas is not None
        assert deltas.log.holds(meta.file_id)
        assert s.node.ctx.counters.dropped["swim_claim_forged"] == 1
        other = file_of(b"bob's other file", owner="bob")
        far = Change("bob", 100 + WINDOW + 1, other.file_id, other)
        await take(s, push("carol", 7002, changes=(far,)))
        assert s.node.file(other.file_id) is None
        assert s.node.ctx.counters.dropped["swim_claim_ahead"] == 1
    assert [r for r in caplog.records if "relayed catalogue claims dropped" in r.message]
