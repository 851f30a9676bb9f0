"""Healing through the node (no sockets): each gossip round also tries again, slowly, the
peers it dropped and the well-known hosts it does not track (treedrive.core.recontact)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tests.core.harness import Harness, gossip, reply
from treedrive.core.config import Address
from treedrive.core.messages import Gossip

INTERVAL = 0.05


def gossiped_to(h: Harness) -> list[int]:
    return [port for _, port, _ in h.net.messages(Gossip)]


class Sent(list[int]):
    """The ports gossiped to in some rounds, and how long the rounds took (on a busy machine,
    much more than an interval each)."""

    took: float = 0.0

    def at_most_every_other_interval(self) -> int:
        """How many times a slowly retried address may be in it: once, then once per two
        intervals of the time the rounds took."""
        return int(self.took / (2 * INTERVAL)) + 1


async def rounds(h: Harness, n: int) -> Sent:
    """``n`` gossip rounds an interval apart; the ports gossiped to."""
    h.net.sent.clear()
    started = time.monotonic()
    for _ in range(n):
        await asyncio.sleep(INTERVAL)
        await h.node.gossip_now()
    sent = Sent(gossiped_to(h))
    sent.took = time.monotonic() - started
    return sent


async def test_a_dropped_peer_that_answered_is_tried_again_a_stranger_is_not(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(gossip_interval=INTERVAL, peer_timeout=60.0)
    h.node.joined.set()
    h.add_peer("alice", 7001, last_seen=time.time())
    h.add_peer("keeps", 7003)
    await h.node.gossip_now()
    await h.node.handle_message(reply("alice", 7001), "127.0.0.1:40000")  # answers our GOSSIP
    await h.node.handle_message(gossip("eve", 7002, "e-1"), "127.0.0.1:40001")  # never answers
    gone = h.node.expire_peers(now=time.time() + 1e5)
    assert sorted(gone) == ["alice", "eve"]
    sent = await rounds(h, 8)
    assert 7001 in sent  # the peer that had answered us, though no longer tracked
    assert 7002 not in sent  # a stranger's claimed address is never tried again
    assert sent.count(7003) == 8  # the tracked peer: every round, as before
    assert sent.count(7001) <= sent.at_most_every_other_interval()  # slowly


async def test_a_peer_found_again_is_tried_no_more_than_any_tracked_one(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(gossip_interval=INTERVAL)
    h.node.joined.set()
    h.add_peer("alice", 7001, last_seen=time.time())
    await h.node.gossip_now()
    await h.node.handle_message(reply("alice", 7001), "127.0.0.1:40000")
    h.node.expire_peers(now=time.time() + 1e5)
    assert h.node.membership.recontact.pending() == [("127.0.0.1", 7001)]
    await h.node.handle_message(gossip("alice", 7001, "a-2"), "127.0.0.1:40002")  # back
    sent = await rounds(h, 4)
    assert sent == [7001] * 4
    assert h.node.membership.recontact.pending() == []


async def test_a_well_known_host_is_tried_again_while_the_node_knows_others(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(gossip_interval=INTERVAL, bootstrap=(Address("127.0.0.1", 7100),))
    h.add_peer("alice", 7001)
    # while the node has not joined, the bootstrap host is gossiped to once per round (as before)
    sent = await rounds(h, 3)
    assert sent.count(7100) == 3
    h.node.joined.set()
    sent = await rounds(h, 8)
    assert sent.count(7001) == 8
    assert 1 <= sent.count(7100) <= sent.at_most_every_other_interval()


async def test_a_message_from_an_addresss_own_ip_ends_its_dial_backoff(h: Harness) -> None:
    await h.node.handle_message(gossip("alice", 7001, "a-1"), "127.0.0.1:40000")
    await h.node.handle_message(gossip("eve", 7002, "e-1"), "10.9.9.9:40001")  # not its IP
    await h.node.handle_message(reply("bob", 7003), "127.0.0.1:40002")
    await h.node.handle_message(reply("mallory", 7004), "10.9.9.9:40003")
    assert h.net.reachable_ == [("127.0.0.1", 7001), ("127.0.0.1", 7003)]


async def test_dropped_peers_tried_again_or_heard_of_again_are_dialed_at_once(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(gossip_interval=INTERVAL)
    h.node.joined.set()
    for name, port in (("alice", 7001), ("bob", 7002)):
        h.add_peer(name, port, last_seen=time.time())
    await h.node.gossip_now()
    await h.node.handle_message(reply("alice", 7001), "127.0.0.1:40000")
    await h.node.handle_message(reply("bob", 7002), "127.0.0.1:40001")
    h.node.expire_peers(now=time.time() + 1e5)
    h.net.reachable_.clear()
    h.add_peer("bob", 7002)  # named again by someone else's GOSSIP
    await rounds(h, 4)
    assert ("127.0.0.1", 7002) in h.net.reachable_  # found again: its back-off forgotten
    assert ("127.0.0.1", 7001) in h.net.reachable_  # tried again: so the GOSSIP is not dropped
