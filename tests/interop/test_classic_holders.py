"""A holder learnt from a classic peer's ANNOUNCE (issue 9, point 12). Some classic peers list
their files in GOSSIP_REPLY under other ids than they announced (they compute ids from a local
copy's modification time). A reply is taken as all its sender holds, but what a peer announced
stays while it is tracked: the file stays fetchable from it across gossip rounds, and goes when
the peer expires.

A real in-process node against the independent classic peer of tests/classic_peer.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.classic_peer import ClassicPeer
from tests.conftest import wait_for
from treedrive.core.config import Address
from treedrive.core.node import Node

pytestmark = pytest.mark.timeout(30)

Peers = Callable[..., ClassicPeer]
TS = 1750000000


def tracks(node: Node, peer_id: str) -> bool:
    return any(p.peer_id == peer_id for p in node.peers())


def gossips_to(peer: ClassicPeer, node: Node) -> int:
    return len(peer.messages("GOSSIP", peerId=node.peer_id))


async def test_an_announced_file_stays_while_its_announcer_lists_it_under_another_id(
    start_node: Callable[..., Any], classic_peer: Peers
) -> None:
    bob = classic_peer("bob", reply_ids_from_mtime=True)
    # Gossip every 0.5 s; bob is dropped 1.5 s after he stops answering.
    alice = await start_node(
        "alice", bootstrap=(Address(*bob.address),), peer_timeout=1.5, download_limit=0
    )
    await wait_for(lambda: tracks(alice, "bob"))
    kept = bob.add_file("kept.txt", b"fetched from bob\n" * 100, TS)
    other = bob.add_file("other.txt", b"never fetched\n" * 100, TS)
    for record in (kept, other):
        await asyncio.to_thread(bob.announce, (alice.host, alice.port), record["file_id"])
    ids = (kept["file_id"], other["file_id"])
    await wait_for(lambda: all(alice.file(i) for i in ids))

    # bob's replies list both files under other ids; once alice recorded those, each of her
    # next gossip rounds is answered by a reply that does not list what bob announced.
    await wait_for(lambda: len(bob.aliases) == 2 and all(alice.file(a) for a in bob.aliases))
    rounds = gossips_to(bob, alice)
    await wait_for(lambda: gossips_to(bob, alice) >= rounds + 3)
    for file_id in ids:
        entry = alice.file(file_id)
        assert entry is not None
        assert entry.holders == ("bob",)
    entry = await alice.get(kept["file_id"])
    assert entry.has_copy
    assert alice.store.blobs.path(kept["file_id"]).read_bytes() == b"fetched from bob\n" * 100
    assert bob.messages("GET_FILE", file_id=kept["file_id"])

    # bob falls silent: once he expires, what only he held is forgotten.
    bob.reply_to_gossip = False
    await wait_for(lambda: not tracks(alice, "bob"))
    await wait_for(lambda: alice.file(other["file_id"]) is None)
    held = alice.file(kept["file_id"])
    assert held is not None
    assert held.has_copy
    assert held.holders == ()


async def test_a_file_no_longer_listed_nor_announced_is_forgotten(
    start_node: Callable[..., Any], classic_peer: Peers
) -> None:
    """Only announced holdings are spared: one learnt from a reply ends with the next reply
    that does not list it (here bob lists his file under another id from then on)."""
    bob = classic_peer("bob")
    record = bob.add_file("listed.txt", b"listed once\n" * 10, TS)
    alice = await start_node("alice", bootstrap=(Address(*bob.address),), download_limit=0)
    await wait_for(lambda: alice.file(record["file_id"]))
    bob.reply_ids_from_mtime = True
    await wait_for(lambda: bob.aliases and alice.file(next(iter(bob.aliases))))
    await wait_for(lambda: alice.file(record["file_id"]) is None)
