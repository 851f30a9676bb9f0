"""Bound names (PROTOCOL.md 2.7) between real in-process nodes (loopback sockets, SQLite files),
with raw sockets as strangers: what a node sends is signed, nodes pin each other's keys (also
from forwarded GOSSIPs), and a message that claims a pinned peer id without its key changes
nothing: no address moved, no peer added or refreshed, no reply, no forward; it is counted,
logged and shown (a PeerRefused notice)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import address, wait_for, watch
from tests.e2e.helpers import Listener, send_message
from treedrive.core.bound import Claim, prove
from treedrive.core.events import PeerRefused
from treedrive.core.identity import (
    NodeKey,
    decode_key,
    decode_signature,
    encode_b64,
    gossip_claim,
    reply_claim,
    verify,
)
from treedrive.core.node import Node

pytestmark = pytest.mark.timeout(60)

Starter = Callable[..., Any]
INTERVAL = 0.5  # the gossip interval of tests/conftest.py's FAST timers
HOST = "127.0.0.1"


# -- helpers -------------------------------------------------------------------------------------
def proof_keys(key: NodeKey, claim: Claim, ts: int) -> dict[str, Any]:
    proof = prove(key, claim, ts)
    return {"key": encode_b64(proof.key), "ts": ts, "sig": encode_b64(proof.sig)}


def signed_gossip(key: NodeKey, peer_id: str, port: int, ts: int | None = None) -> dict[str, Any]:
    """A GOSSIP from ``peer_id`` at 127.0.0.1:``port``, signed by ``key`` at ``ts`` (now)."""
    gossip_id = str(uuid.uuid4())
    when = int(time.time()) if ts is None else ts
    td = {
        "version": 1,
        "features": [],
        **proof_keys(key, Claim(peer_id, HOST, port, gossip_id), when),
    }
    obj = {"type": "GOSSIP", "host": HOST, "port": port, "id": gossip_id, "peerId": peer_id}
    return {**obj, "treedrive": td}


def signed_reply(
    key: NodeKey, peer_id: str, port: int, ts: int | None = None, files: Any = ()
) -> dict[str, Any]:
    when = int(time.time()) if ts is None else ts
    td = {"version": 1, "features": [], **proof_keys(key, Claim(peer_id, HOST, port), when)}
    obj = {"type": "GOSSIP_REPLY", "host": HOST, "port": port, "peerId": peer_id}
    return {**obj, "files": list(files), "treedrive": td}


def classic_gossip(peer_id: str, port: int) -> dict[str, Any]:
    return {
        "type": "GOSSIP",
        "host": HOST,
        "port": port,
        "id": str(uuid.uuid4()),
        "peerId": peer_id,
    }


def pinned(node: Node, peer_id: str) -> bytes | None:
    with node.store.reading() as uow:
        pin = uow.keys.get(peer_id)
    return None if pin is None else pin.public_key


def address_of(node: Node, peer_id: str) -> tuple[str, int] | None:
    for p in node.peers():
        if p.peer_id == peer_id:
            return (p.host, p.port)
    return None


def record(file_id: str, owner: str = "bob") -> dict[str, Any]:
    return {
        "file_name": "planted.txt", "file_size": 0.001, "file_id": file_id,
        "file_owner": owner, "file_timestamp": 1795617115,
    }  # fmt: skip


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


@pytest.fixture
def bystander() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


async def pair(start_node: Starter) -> tuple[Node, Node]:
    alice: Node = await start_node("alice")
    bob: Node = await start_node("bob", bootstrap=(address(alice),))
    await wait_for(lambda: pinned(alice, "bob") and pinned(bob, "alice"), timeout=30)
    return alice, bob


def nothing_for(lst: Listener, seconds: float, what: Callable[[dict[str, Any]], bool]) -> bool:
    """True if no message that ``what`` matches reaches ``lst`` within ``seconds``."""
    try:
        lst.wait(what, timeout=seconds)
    except AssertionError:
        return True
    return False


# -- signing and pinning -------------------------------------------------------------------------
async def test_three_nodes_pin_each_others_keys_also_from_forwarded_gossip(
    start_node: Starter,
) -> None:
    alice: Node = await start_node("alice")
    bob: Node = await start_node("bob", bootstrap=(address(alice),))
    carol: Node = await start_node("carol", bootstrap=(address(alice),))
    nodes = (alice, bob, carol)

    def all_pinned() -> bool:
        return all(pinned(a, b.peer_id) == b.key.public for a in nodes for b in nodes if a is not b)

    # bob and carol only know alice: each learns of the other from a GOSSIP alice forwarded.
    await wait_for(all_pinned, timeout=20)
    assert not any(n.gate.refused.total() for n in nodes)


async def test_what_a_node_originates_is_signed(start_node: Starter, listener: Listener) -> None:
    alice: Node = await start_node("alice")
    send_message(alice.port, classic_gossip("stranger", listener.port))
    reply = await asyncio.to_thread(listener.wait, lambda m: m.get("type") == "GOSSIP_REPLY")
    td = reply["treedrive"]
    assert decode_key(td["key"]) == alice.key.public
    assert isinstance(td["ts"], int)
    assert abs(td["ts"] - time.time()) < 30
    claim = reply_claim("alice", reply["host"], reply["port"], td["ts"], td["features"])
    assert verify(alice.key.public, decode_signature(td["sig"]), claim)
    assert "tls" in td["features"]
    # the features are signed: without one of them, the signature does not verify
    stripped = [f for f in td["features"] if f != "tls"]
    assert not verify(alice.key.public, decode_signature(td["sig"]), reply_claim(
        "alice", reply["host"], reply["port"], td["ts"], stripped))  # fmt: skip
    # alice now tracks the stranger (a classic peer) and gossips to it: signed too.
    gossip = await asyncio.to_thread(listener.wait, lambda m: m.get("type") == "GOSSIP")
    td = gossip["treedrive"]
    assert decode_key(td["key"]) == alice.key.public
    claim = gossip_claim(
        "alice", gossip["host"], gossip["port"], gossip["id"], td["ts"], td["features"]
    )
    assert verify(alice.key.public, decode_signature(td["sig"]), claim)
    assert not verify(alice.key.public, decode_signature(td["sig"]), reply_claim(
        "alice", gossip["host"], gossip["port"], td["ts"], td["features"]))  # fmt: skip


# -- refusals ------------------------------------------------------------------------------------
async def test_another_key_for_a_pinned_peer_is_refused_and_changes_nothing(
    start_node: Starter,
    listener: Listener,
    bystander: Listener,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="treedrive.core.node")
    alice, bob = await pair(start_node)
    events = watch(alice)
    # A classic bystander that alice tracks: it is sent the GOSSIPs alice forwards.
    send_message(alice.port, classic_gossip("bystander", bystander.port))
    await asyncio.to_thread(bystander.wait, lambda m: m.get("peerId") == "bob")  # forwards work
    before = address_of(alice, "bob")
    assert before == (bob.host, bob.port)

    mallory = NodeKey.generate()
    forged = signed_gossip(mallory, "bob", listener.port)
    send_message(alice.port, forged)
    await wait_for(lambda: alice.gate.refused["other_key"] >= 1)

    assert address_of(alice, "bob") == before
    assert pinned(alice, "bob") == bob.key.public
    [notice] = [e for e in events.seen if isinstance(e, PeerRefused)]
    assert (notice.peer_id, notice.code) == ("bob", "other_key")
    assert notice.source.startswith("127.0.0.1")
    assert mallory.fingerprint in notice.reason
    assert "treedrive peers forget-key bob" in notice.reason
    assert any("refused a message from peer bob" in r.getMessage() for r in caplog.records)
    # no reply to the forger's address, and the forgery is not forwarded
    assert nothing_for(listener, 4 * INTERVAL, lambda m: m.get("type") == "GOSSIP_REPLY")
    assert nothing_for(bystander, 2 * INTERVAL, lambda m: m.get("id") == forged["id"])
    assert address_of(alice, "bob") == before


async def test_an_unsigned_gossip_for_a_pinned_peer_is_refused(
    start_node: Starter, listener: Listener
) -> None:
    alice, bob = await pair(start_node)
    for message in (
        classic_gossip("bob", listener.port),
        {**classic_gossip("bob", listener.port), "treedrive": {"version": 1, "features": []}},
        {**classic_gossip("bob", listener.port), "treedrive": {"key": "!", "ts": 1, "sig": ""}},
    ):
        send_message(alice.port, message)
    await wait_for(lambda: alice.gate.refused["unsigned"] >= 3)
    assert address_of(alice, "bob") == (bob.host, bob.port)
    assert nothing_for(listener, 3 * INTERVAL, lambda m: True)


async def test_a_forged_signature_or_time_is_refused(
    start_node: Starter, listener: Listener
) -> None:
    alice, bob = await pair(start_node)
    mallory = NodeKey.generate()
    # signed by mallory for its own port, then the port changed: bad signature (even unpinned)
    send_message(alice.port, signed_gossip(mallory, "dave", 9) | {"port": listener.port})
    # the real bob's key cannot be used without its private half
    stolen = {"key": encode_b64(bob.key.public), "ts": int(time.time()), "sig": "A" * 86}
    send_message(alice.port, signed_gossip(mallory, "bob", listener.port) | {"treedrive": stolen})
    # signed too far in the future
    send_message(alice.port, signed_gossip(mallory, "erin", listener.port, int(time.time()) + 3600))
    await wait_for(lambda: alice.gate.refused["bad_signature"] >= 2)
    await wait_for(lambda: alice.gate.refused["future"] >= 1)
    assert {p.peer_id for p in alice.peers()} == {"bob"}
    assert pinned(alice, "dave") is None
    assert pinned(alice, "erin") is None
    assert address_of(alice, "bob") == (bob.host, bob.port)


async def test_a_forged_reply_advertises_nothing_and_moves_nothing(
    start_node: Starter, listener: Listener
) -> None:
    alice, bob = await pair(start_node)
    await bob.stop()  # so that nothing bob says could undo a forgery alice took
    planted = "ee" * 32
    mallory = NodeKey.generate()
    send_message(alice.port, signed_reply(mallory, "bob", listener.port, files=[record(planted)]))
    unsigned = signed_reply(mallory, "bob", listener.port, files=[record(planted)])
    del unsigned["treedrive"]
    send_message(alice.port, unsigned)
    await wait_for(lambda: alice.gate.refused["other_key"] >= 1)
    await wait_for(lambda: alice.gate.refused["unsigned"] >= 1)
    assert alice.file(planted) is None
    # bob said he was leaving as he stopped (swim), so alice may no longer track him; what
    # she must never do is track him at the forger's address
    assert address_of(alice, "bob") in (None, (bob.host, bob.port))


async def test_a_replayed_old_reply_cannot_move_an_address_back(
    start_node: Starter, listener: Listener
) -> None:
    alice: Node = await start_node("alice")
    dave = NodeKey.generate()
    now = int(time.time())
    old = signed_reply(dave, "dave", 7001, ts=now - 200)
    send_message(alice.port, old)
    await wait_for(lambda: address_of(alice, "dave") == (HOST, 7001))
    assert pinned(alice, "dave") == dave.public
    send_message(alice.port, signed_reply(dave, "dave", 7002, ts=now - 100))  # dave moved
    await wait_for(lambda: address_of(alice, "dave") == (HOST, 7002))
    send_message(alice.port, old)  # a replay
    await wait_for(lambda: alice.gate.refused["stale"] >= 1)
    assert address_of(alice, "dave") == (HOST, 7002)


async def test_a_classic_peer_is_tracked_as_before_and_a_malformed_proof_reads_as_classic(
    start_node: Starter, listener: Listener
) -> None:
    alice: Node = await start_node("alice")
    send_message(alice.port, classic_gossip("classic", listener.port))
    malformed = {**classic_gossip("odd", 7009), "treedrive": {"key": "x", "ts": "y", "sig": 1}}
    send_message(alice.port, malformed)
    await asyncio.to_thread(listener.wait, lambda m: m.get("type") == "GOSSIP_REPLY")
    await wait_for(lambda: {p.peer_id for p in alice.peers()} == {"classic", "odd"})
    assert pinned(alice, "classic") is None
    assert pinned(alice, "odd") is None
    assert alice.gate.refused.total() == 0


async def test_forget_key_accepts_the_new_key(start_node: Starter, listener: Listener) -> None:
    alice, bob = await pair(start_node)
    await bob.stop()  # bob's data dir is lost; it comes back with another key
    new = NodeKey.generate()
    send_message(alice.port, signed_gossip(new, "bob", listener.port))
    await wait_for(lambda: alice.gate.refused["other_key"] >= 1)
    assert pinned(alice, "bob") == bob.key.public
    alice.forget_key("bob")  # the user's `treedrive peers forget-key bob`
    send_message(alice.port, signed_gossip(new, "bob", listener.port))
    await wait_for(lambda: pinned(alice, "bob") == new.public)
    await wait_for(lambda: address_of(alice, "bob") == (HOST, listener.port))


async def test_a_stranger_cannot_take_a_classic_peers_name_by_signing_first(
    start_node: Starter, listener: Listener
) -> None:
    """carol is a classic peer (no extension): mallory's signed GOSSIP in her name pins nothing,
    so carol's own classic messages are still taken; the signed one counts as classic."""
    alice: Node = await start_node("alice")
    send_message(alice.port, classic_gossip("carol", 7010))
    await wait_for(lambda: address_of(alice, "carol") == (HOST, 7010))
    send_message(alice.port, signed_gossip(NodeKey.generate(), "carol", listener.port))
    await wait_for(lambda: address_of(alice, "carol") == (HOST, listener.port))  # as today
    assert pinned(alice, "carol") is None
    [carol] = [p for p in alice.peers() if p.peer_id == "carol"]
    assert not carol.is_treedrive
    send_message(alice.port, classic_gossip("carol", 7010))  # the real carol again
    await wait_for(lambda: address_of(alice, "carol") == (HOST, 7010))
    assert alice.gate.refused.total() == 0


async def test_a_full_pin_table_pins_no_stranger_and_keeps_every_pin(
    start_node: Starter, listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    """Pins are bounded and never evicted: once the table is full, a new signer is tracked but
    not pinned (with a warning), and the pins already there stay."""
    caplog.set_level(logging.WARNING, logger="treedrive.core.node")
    alice, bob = await pair(start_node)
    await wait_for(lambda: pinned(alice, "bob") == bob.key.public)
    alice.gate.max_pins = 1  # bob's pin fills it
    for i in range(3):
        send_message(alice.port, signed_gossip(NodeKey.generate(), f"new{i}", listener.port))
    # deadlines (a busy machine may stall the nodes' event loop for seconds)
    await wait_for(lambda: all(address_of(alice, f"new{i}") for i in range(3)), timeout=30)
    assert [pinned(alice, f"new{i}") for i in range(3)] == [None, None, None]
    assert pinned(alice, "bob") == bob.key.public
    assert any("the most this node keeps" in r.getMessage() for r in caplog.records)
    alice.gate.max_pins = 10
    alice.gate._full_since = None  # the next count is made now, not in a minute
    send_message(alice.port, signed_gossip(NodeKey.generate(), "later", listener.port))
    await wait_for(lambda: pinned(alice, "later") is not None, timeout=30)


async def test_a_relayed_reply_stripped_of_a_feature_is_refused(
    start_node: Starter, listener: Listener
) -> None:
    """The features are signed with the rest: a node that passes on a peer's GOSSIP_REPLY
    without ``tls`` (to force its transfers into clear) breaks the signature, and the peer's
    features stay as the peer itself said."""
    alice, bob = await pair(start_node)
    await wait_for(lambda: "tls" in features_of(alice, "bob"))
    send_message(bob.port, classic_gossip("relay", listener.port))
    reply = await asyncio.to_thread(
        listener.wait, lambda m: m.get("type") == "GOSSIP_REPLY" and m.get("peerId") == "bob"
    )
    stripped = {**reply, "treedrive": dict(reply["treedrive"])}
    stripped["treedrive"]["features"] = [f for f in reply["treedrive"]["features"] if f != "tls"]
    send_message(alice.port, stripped)
    await wait_for(lambda: alice.gate.refused["bad_signature"] >= 1)
    assert "tls" in features_of(alice, "bob")
    send_message(alice.port, reply)  # the same reply, whole, is taken
    await asyncio.sleep(0.2)
    assert alice.gate.refused["bad_signature"] == 1


def features_of(node: Node, peer_id: str) -> frozenset[str]:
    for p in node.peers():
        if p.peer_id == peer_id:
            return p.features or frozenset()
    return frozenset()
