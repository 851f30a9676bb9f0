"""A push that did not reach its peer goes to another (treedrive.core.pushretry; and through the
node, with a recording transport whose pushes to some addresses fail)."""

from __future__ import annotations

import random
from collections.abc import Callable

from tests.core.harness import Harness
from treedrive.core.model import PeerInfo
from treedrive.core.pushretry import ATTEMPTS, FIRST_WAIT, PushRetry

INTERVAL = 0.05


def peer(name: str, port: int) -> PeerInfo:
    return PeerInfo(name, "127.0.0.1", port, 0.0)


PEERS = [peer("a", 1), peer("b", 2), peer("c", 3)]


def test_untried_peers_first_then_the_one_tried_longest_ago() -> None:
    retry = PushRetry(30.0, random.Random(1))
    retry.failed("a")
    chosen = retry.next_target(PEERS, ())
    assert chosen is not None
    assert chosen.peer_id in {"b", "c"}
    retry.failed(chosen.peer_id)
    last = retry.next_target(PEERS, ())
    assert last is not None
    assert last.peer_id not in {"a", chosen.peer_id}
    retry.failed(last.peer_id)
    again = retry.next_target(PEERS, ())
    assert again is not None
    assert again.peer_id == "a"  # every peer tried: the one tried longest ago


def test_waits_double_up_to_the_interval_and_the_tries_are_bounded() -> None:
    retry = PushRetry(5.0)
    waits = []
    while (wait := retry.failed("a")) is not None:
        waits.append(wait)
    assert len(waits) == ATTEMPTS - 1  # the first push and ATTEMPTS - 1 more
    assert waits[0] == FIRST_WAIT
    assert waits == sorted(waits)
    assert max(waits) == 5.0


def test_no_target_when_a_peer_holds_it_or_no_peer_is_known() -> None:
    retry = PushRetry(30.0)
    retry.failed("a")
    assert retry.next_target(PEERS, ("b",)) is None
    assert retry.next_target([], ()) is None
    assert retry.failed(None) is not None  # no peer to push to counts as a try


async def test_a_push_whose_peer_is_unreachable_goes_to_another(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(gossip_interval=INTERVAL)
    h.add_peer("dead", 7001)
    h.net.unreachable.add(("127.0.0.1", 7001))
    src = h.tmp / "new.bin"
    src.write_bytes(b"a new file" * 100)
    pushed = await h.node.push_path(src)
    h.add_peer("alive", 7002)  # the only other peer, known once the first push is under way
    await h.settle()
    file_id = pushed.meta.file_id
    assert ("127.0.0.1", 7001, file_id) in h.net.refused
    assert [(port, meta.file_id) for _, port, meta, _ in h.net.pushed] == [(7002, file_id)]


async def test_a_push_nobody_takes_is_given_up_after_a_few_tries(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(gossip_interval=INTERVAL)
    h.add_peer("dead", 7001)
    h.add_peer("gone", 7003)
    h.net.unreachable.update({("127.0.0.1", 7001), ("127.0.0.1", 7003)})
    src = h.tmp / "lonely.bin"
    src.write_bytes(b"nobody takes it" * 100)
    await h.node.push_path(src)
    await h.settle()
    assert len(h.net.refused) == ATTEMPTS
    assert {port for _, port, _ in h.net.refused} == {7001, 7003}
    assert h.net.pushed == []
    assert h.local_ids()  # it stays here
