"""The GOSSIP reply policy, with no sockets and no clock: times are given."""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Callable, Iterable

import pytest

from treedrive.core.bounded import Bounded, Reused, Throttle, TokenBucket
from treedrive.core.messages import Gossip, GossipReply
from treedrive.core.model import FileMeta
from treedrive.core.replies import (
    ANSWER_WITHIN,
    BURST,
    FLOOD,
    FRESH,
    MAX_CREDIT,
    PROVEN_FOR,
    REPLY_RATIO,
    SPACING,
    WELCOMES,
    Address,
    ReplyPolicy,
    Verdict,
    distinct_addresses,
    gossip_size,
    network_of,
    reply_size,
    same_host,
    source_ip,
)

INTERVAL = 30.0
A = ("127.0.0.1", 9001)
B = ("127.0.0.1", 9002)
IP = "127.0.0.1"
GOSSIP = 120  # bytes of one GOSSIP
BIG = 200_000  # the reply of a node holding 1,000 files


def prove(p: ReplyPolicy, address: Address, now: float, peer_id: str = "") -> None:
    """This node gossips to ``address`` and the peer there answers, from its own IP."""
    p.gossiped(address, now)
    assert p.answered_us(address, address[0], now, peer_id)


def amplification(
    p: ReplyPolicy, gossips: Iterable[tuple[float, Address, str]], size: int = BIG
) -> float:
    """Feed GOSSIPs ``(time, named address, source ip)`` to ``p`` as the node does (a LATER
    reply goes at its time, one pending per address); reply bytes sent / GOSSIP bytes in."""
    pending: dict[Address, tuple[float, str]] = {}
    due: list[tuple[float, Address]] = []
    sent_in = sent_out = 0

    def replies_due(until: float) -> None:
        nonlocal sent_out
        while due and due[0][0] <= until:
            at, address = heapq.heappop(due)
            _, ip = pending.pop(address)
            if p.decide(address, ip, size, at).verdict is Verdict.SEND:
                sent_out += size

    for t, address, ip in gossips:
        replies_due(t)
        p.gossip_received(address, ip, GOSSIP, t)
        sent_in += GOSSIP
        d = p.decide(address, ip, size, t)
        if d.verdict is Verdict.SEND:
            sent_out += size
        elif d.verdict is Verdict.LATER:
            if address not in pending:
                heapq.heappush(due, (d.at, address))
            pending[address] = (d.at, ip)
    replies_due(math.inf)
    return sent_out / sent_in


BENCH = 2.0
"""The gossip interval of bench/hostile.py, where the reviewer measured the bypasses."""
ATTACKS = [(BENCH, 4.0), (BENCH, 60.0), (INTERVAL, 4.0), (INTERVAL, 60.0)]
"""(gossip interval, seconds the 2,000 GOSSIPs take)."""
TARGETS = [("127.0.0.1", 20_000 + i) for i in range(32)]


def flood(
    seconds: float,
    source: Callable[[int], str],
    targets: list[Address] = TARGETS,
    start: float = 0.0,
) -> list[tuple[float, Address, str]]:
    """bench/hostile.py's flood: 2,000 GOSSIPs naming ``targets`` in turn, over ``seconds``."""
    return [(start + i * seconds / 2000, targets[i % len(targets)], source(i)) for i in range(2000)]


def one_ip(i: int) -> str:
    return IP


def test_one_reply_per_address_per_interval_whatever_peer_id_asks() -> None:
    p = ReplyPolicy(INTERVAL)
    p.gossip_received(A, IP, GOSSIP, 0.0)
    assert p.decide(A, IP, 100, 0.0).verdict is Verdict.SEND
    p.gossip_received(A, IP, GOSSIP, 1.0)
    later = p.decide(A, IP, 100, 1.0)
    assert later.verdict is Verdict.LATER
    assert later.at == SPACING * INTERVAL
    assert p.decide(B, IP, 100, 1.0).verdict is Verdict.SEND  # another address: its own interval
    assert p.decide(A, IP, 100, later.at).verdict is Verdict.SEND
    assert p.decide(A, IP, 100, later.at + 1).verdict is Verdict.LATER


def test_a_stranger_gets_replies_worth_at_most_the_ratio_of_what_it_sent() -> None:
    p = ReplyPolicy(INTERVAL)
    big = 200_000  # 1,000 files
    sent_in = sent_out = 0
    for i in range(2000):
        address = ("127.0.0.1", 10_000 + i)  # every GOSSIP names a new address
        p.gossip_received(address, IP, GOSSIP, i * 0.001)
        sent_in += GOSSIP
        if p.decide(address, IP, big, i * 0.001).verdict is Verdict.SEND:
            sent_out += big
    welcome = big  # the flood lasts 2 s: one welcome of the source in one interval
    assert sent_out <= REPLY_RATIO * sent_in + BURST + welcome
    assert sent_out / sent_in <= 10
    assert sent_out > 0  # it does earn a reply now and then
    assert p.refused > 1900


def test_the_budget_is_per_source_ip() -> None:
    p = ReplyPolicy(INTERVAL)
    for i in range(100):
        p.gossip_received(("10.0.0.1", 1000 + i), "10.0.0.1", GOSSIP, 0.0)
        p.decide(("10.0.0.1", 1000 + i), "10.0.0.1", 50_000, 0.0)
    assert p.decide(("10.0.0.1", 5000), "10.0.0.1", 50_000, 0.0).verdict is Verdict.OVER_BUDGET
    p.gossip_received(("10.0.0.2", 8270), "10.0.0.2", GOSSIP, 0.0)
    assert p.decide(("10.0.0.2", 8270), "10.0.0.2", 10_000, 0.0).verdict is Verdict.SEND


def test_small_replies_fit_the_burst_and_what_each_gossip_earns() -> None:
    p = ReplyPolicy(INTERVAL)
    for i in range(1000):  # an empty node's reply costs less than what a GOSSIP earns
        address = ("127.0.0.1", 10_000 + i)
        p.gossip_received(address, IP, GOSSIP, 0.0)
        assert p.decide(address, IP, 300, 0.0).verdict is Verdict.SEND


def test_a_proven_address_is_exempt_from_the_budget_not_from_the_interval() -> None:
    p = ReplyPolicy(INTERVAL, burst=0)
    p.gossip_received(B, IP, GOSSIP, 0.0)
    assert p.decide(B, IP, 200_000, 0.0).verdict is Verdict.SEND  # this interval's welcome
    p.gossip_received(A, IP, GOSSIP, 0.0)
    assert p.decide(A, IP, 200_000, 0.0).verdict is Verdict.OVER_BUDGET
    assert not p.proven(A, 0.0)
    prove(p, A, 0.5)  # it answered our GOSSIP
    assert p.proven(A, 0.5)
    assert p.decide(A, IP, 200_000, 1.0).verdict is Verdict.SEND
    assert p.decide(A, IP, 200_000, 2.0).verdict is Verdict.LATER
    assert p.credit(IP) == 2 * REPLY_RATIO * GOSSIP  # the source paid for neither


def test_time_is_no_proof() -> None:
    """Naming an address once, waiting an interval and naming it again proved it (x263): now
    only answering this node's GOSSIPs does."""
    p = ReplyPolicy(INTERVAL, burst=0)
    p.gossip_received(B, IP, GOSSIP, 0.0)
    p.gossip_received(B, IP, GOSSIP, 10 * INTERVAL)
    assert not p.proven(B, 10 * INTERVAL)
    p.decide(A, IP, BIG, 10 * INTERVAL)  # this interval's welcome goes elsewhere
    assert p.decide(B, IP, BIG, 10 * INTERVAL).verdict is Verdict.OVER_BUDGET


def test_time_is_no_proof_against_a_flood() -> None:
    """The x263 attack: name each address once, wait an interval, then flood naming them."""
    for interval, seconds in ATTACKS:
        p = ReplyPolicy(interval)
        for address in TARGETS:
            p.gossip_received(address, IP, GOSSIP, 0.0)
        ratio = amplification(p, flood(seconds, one_ip, start=interval + 0.1))
        assert ratio <= 10, (interval, seconds, ratio)


def test_a_legitimate_peer_is_answered_during_a_flood_from_its_own_ip() -> None:
    p = ReplyPolicy(INTERVAL)
    legit = ("127.0.0.1", 8270)
    p.gossip_received(legit, IP, GOSSIP, 0.0)
    prove(p, legit, 0.0)
    now = INTERVAL
    for i in range(2000):  # the flood drains what 127.0.0.1 earns
        address = ("127.0.0.1", 20_000 + i)
        p.gossip_received(address, IP, GOSSIP, now)
        p.decide(address, IP, 200_000, now)
    p.gossip_received(legit, IP, GOSSIP, now)
    assert p.decide(legit, IP, 200_000, now).verdict is Verdict.SEND


def test_remembered_addresses_and_sources_are_bounded() -> None:
    p = ReplyPolicy(INTERVAL, size=100)
    for i in range(1000):
        p.gossip_received(("h", i), f"10.0.{i // 256}.{i % 256}", GOSSIP, 0.0)
        p.decide(("h", i), f"10.0.{i // 256}.{i % 256}", 100, 0.0)
    assert len(p._addresses) == 100
    assert len(p._credit) == 100


def test_bounded_drops_the_least_recently_touched() -> None:
    b: Bounded[str, int] = Bounded(2)
    b.put("a", 1)
    b.put("b", 2)
    assert b.get("a") == 1
    b.put("c", 3)
    assert "a" in b
    assert "c" in b
    assert "b" not in b


def test_reused_until_the_version_changes_or_it_is_old() -> None:
    r: Reused[object] = Reused(max_age=30.0)
    assert r.get(0, 0.0) is None
    value = r.put(object(), 0, 0.0)
    assert r.get(0, 10.0) is value
    assert r.get(1, 10.0) is None  # the node's files changed
    assert r.get(0, 30.0) is None  # an interval old


def test_token_bucket_limits_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=10)
    taken = sum(bucket.take(i * 0.001) for i in range(1000))  # 1,000 tries in one second
    assert 10 <= taken <= 21


def test_throttle_lets_one_through_per_period_and_counts_the_rest() -> None:
    t = Throttle(1.0)
    assert t.ready(0.0)
    assert not t.ready(0.5)
    assert not t.ready(0.9)
    assert t.ready(1.0)
    assert t.take_suppressed() == 2
    assert t.take_suppressed() == 0


def test_sizes_and_addresses() -> None:
    wire = {"type": "GOSSIP", "host": "127.0.0.1", "port": 1, "id": "x", "peerId": "p"}
    g = Gossip(host="127.0.0.1", port=1, id="x", peer_id="p", original=wire)
    assert gossip_size(g) == len(json.dumps(wire))
    assert gossip_size(Gossip(host="127.0.0.1", port=1, id="x", peer_id="p")) > 60
    meta = FileMeta("a" * 64, "f.txt", 0.5, "alice", 1_700_000_000)
    one = reply_size(GossipReply("127.0.0.1", 1, "me", (meta,)))
    many = reply_size(GossipReply("127.0.0.1", 1, "me", (meta,) * 1000))
    assert 100 < one < 300
    assert 150_000 < many < 250_000
    assert source_ip("127.0.0.1:5555") == "127.0.0.1"
    assert source_ip("::1:5555") == "::1"
    assert source_ip("[::1]:5555") == "::1"
    assert distinct_addresses([A, B, A, ("me", 1)], exclude=frozenset({("me", 1)})) == [A, B]


def test_an_address_named_by_a_flood_loses_its_exemption_for_a_while() -> None:
    p = ReplyPolicy(INTERVAL, burst=0)
    prove(p, A, 0.0)
    prove(p, B, 0.0)
    p.gossip_received(B, IP, GOSSIP, 0.0)
    now = INTERVAL
    assert p.proven(A, now)
    assert p.proven(B, now)
    for _ in range(FLOOD + 1):  # more GOSSIPs naming it in one interval than a peer sends
        p.gossip_received(A, IP, GOSSIP, now)
        p.gossip_received(B, IP, GOSSIP, now)
    assert not p.proven(A, now)
    assert not p.proven(B, now)
    assert p.decide(B, IP, 200_000, now).verdict is Verdict.SEND  # this interval's welcome
    assert p.decide(A, IP, 200_000, now).verdict is Verdict.OVER_BUDGET
    prove(p, A, now + INTERVAL)  # it goes on answering our rounds
    assert p.proven(A, now + 2 * INTERVAL)  # it calmed down
    p.gossip_received(A, IP, GOSSIP, now + 2 * INTERVAL)  # one per interval: a peer
    assert p.proven(A, now + 3 * INTERVAL)


def test_a_newcomer_gets_the_whole_catalogue_once_per_source_per_interval() -> None:
    """A node joining through this one sends one small GOSSIP and must get the whole list at
    once (its join-time downloads pick from it): one reply per source network per interval is
    free, whatever its size; the next stranger from that network in the same interval pays."""
    p = ReplyPolicy(INTERVAL, burst=0)
    p.gossip_received(A, IP, GOSSIP, 0.0)
    assert p.decide(A, IP, 2_000_000, 0.0).verdict is Verdict.SEND
    p.gossip_received(B, IP, GOSSIP, 1.0)
    assert p.decide(B, IP, 2_000_000, 1.0).verdict is Verdict.OVER_BUDGET
    neighbour = ("127.0.0.2", 8270)  # another IP of the same /24
    p.gossip_received(neighbour, "127.0.0.2", GOSSIP, 1.0)
    assert p.decide(neighbour, "127.0.0.2", 2_000_000, 1.0).verdict is Verdict.OVER_BUDGET
    other = ("10.0.0.9", 8270)
    p.gossip_received(other, "10.0.0.9", GOSSIP, 1.0)
    assert p.decide(other, "10.0.0.9", 2_000_000, 1.0).verdict is Verdict.SEND  # its own IP
    p.gossip_received(B, IP, GOSSIP, INTERVAL)
    assert p.decide(B, IP, 2_000_000, INTERVAL).verdict is Verdict.SEND  # the next interval


def test_saved_credit_is_capped() -> None:
    p = ReplyPolicy(INTERVAL, burst=0)
    for i in range(1_000_000 // GOSSIP):  # a quiet source banking credit for hours
        p.gossip_received(("10.0.0.1", 1), "10.0.0.1", GOSSIP, float(i))
    assert p.credit("10.0.0.1") == MAX_CREDIT


# -- proof is an answer to this node's GOSSIP, from the address it went to -----------------------
def test_a_gossip_reply_proves_an_address_only_if_it_answers_our_gossip_from_there() -> None:
    p = ReplyPolicy(INTERVAL)
    victim = ("10.0.0.5", 9000)
    assert not p.answered_us(victim, "10.0.0.5", 0.0)  # we never gossiped to it
    p.gossiped(victim, 1.0)
    assert not p.answered_us(victim, "10.6.6.6", 2.0)  # not from the victim's IP
    assert not p.answered_us(("10.0.0.5", 9001), "10.0.0.5", 2.0)  # another port
    assert not p.answered_us(victim, "10.0.0.5", 1.0 + ANSWER_WITHIN * INTERVAL + 1)  # too late
    assert not p.proven(victim, 2.0)
    assert p.unproven == 4
    p.gossiped(victim, 100.0)
    assert p.answered_us(victim, "10.0.0.5", 101.0, "bob")
    assert p.proven(victim, 101.0)
    assert p.proven_peers(101.0) == {"bob"}
    assert not p.proven(victim, 101.0 + PROVEN_FOR * INTERVAL + 1)  # it stopped answering
    assert p.proven_peers(101.0 + PROVEN_FOR * INTERVAL + 1) == frozenset()


def test_a_forged_gossip_reply_buys_no_exemption() -> None:
    """The x269 attack: one empty GOSSIP_REPLY claiming each victim's address, then a flood
    naming them; also when this node did gossip to the victims (the attacker made them tracked
    peers): the forged replies do not come from the victims' IP."""
    victims = [("10.0.0.5", 9000 + i) for i in range(32)]
    for interval, seconds in ATTACKS:
        for we_gossiped in (False, True):
            p = ReplyPolicy(interval)
            for v in victims:
                if we_gossiped:
                    p.gossiped(v, 0.0)
                assert not p.answered_us(v, IP, 0.5)  # forged, from the attacker's IP
            gossips = flood(seconds, one_ip, victims, start=1.0)
            ratio = amplification(p, gossips)
            assert ratio <= 10, (interval, seconds, we_gossiped, ratio)
            assert not any(p.proven(v, 1.0) for v in victims)


def test_same_host_and_networks() -> None:
    assert same_host("127.0.0.1", "127.0.0.1")
    assert same_host("127.0.0.1", "::ffff:127.0.0.1")
    assert same_host("::1", "[::1]")
    assert not same_host("127.0.0.1", "127.0.0.2")
    assert not same_host("localhost", "127.0.0.1")  # a name proves nothing
    assert not same_host("", "src")
    assert network_of("127.0.3.4") == network_of("127.0.3.200") == "127.0.3.0/24"
    assert network_of("::ffff:10.1.2.3") == "10.1.2.0/24"
    assert network_of("2001:db8::1") == network_of("2001:db8::ffff:1") == "2001:db8::/64"
    assert network_of("2001:db8:0:1::1") != network_of("2001:db8::1")
    assert network_of("src") == "src"


# -- welcomes and bursts: per network, and few in all --------------------------------------------
SOURCES: dict[str, Callable[[int], str]] = {
    "20 IPs in one /24": lambda i: f"127.0.0.{1 + i % 20}",
    "20 /24s": lambda i: f"127.0.{i % 20}.{1 + i % 250}",  # x459 when welcomes were per IP
    "2,000 /24s": lambda i: f"10.{i // 250}.{i % 250}.1",
    "2,000 IPv6 /64s": lambda i: f"2001:db8:{i:x}::1",
    "2,000 IPv6 in one /64": lambda i: f"2001:db8::{i:x}",
}


@pytest.mark.parametrize("name", list(SOURCES))
def test_many_source_ips_and_networks_buy_no_amplification(name: str) -> None:
    """The flood from many source addresses, naming 32 or 2,000 addresses, against replies of
    every size (within the ratio, around the burst, welcome-sized)."""
    many = [("127.0.0.1", 30_000 + i) for i in range(2000)]
    for interval, seconds in ATTACKS:
        for targets in (TARGETS, many):
            for size in (500, BURST + 900, 50_000, BIG):
                gossips = flood(seconds, SOURCES[name], targets)
                ratio = amplification(ReplyPolicy(interval), gossips, size)
                assert ratio <= 10, (interval, seconds, len(targets), size, ratio)


def test_one_ip_buys_no_amplification_with_many_addresses() -> None:
    many = [("127.0.0.1", 30_000 + i) for i in range(2000)]
    for interval, seconds in ATTACKS:
        for targets in (TARGETS, many):
            for size in (500, BURST + 900, 50_000, BIG):
                ratio = amplification(ReplyPolicy(interval), flood(seconds, one_ip, targets), size)
                assert ratio <= 10, (interval, seconds, len(targets), size, ratio)


def test_welcomes_are_few_in_all_whatever_the_number_of_networks() -> None:
    p = ReplyPolicy(INTERVAL, burst=0)
    sent = 0
    for i in range(100):  # a hundred networks, one GOSSIP each
        ip = f"10.{i}.0.1"
        p.gossip_received((ip, 8270), ip, GOSSIP, 0.0)
        sent += p.decide((ip, 8270), ip, BIG, 0.0).verdict is Verdict.SEND
    assert sent == WELCOMES
    ip = "10.200.0.1"  # the next interval: new welcomes
    p.gossip_received((ip, 8270), ip, GOSSIP, INTERVAL)
    assert p.decide((ip, 8270), ip, BIG, INTERVAL).verdict is Verdict.SEND


def test_only_a_few_new_sources_an_interval_start_with_the_burst() -> None:
    p = ReplyPolicy(INTERVAL)
    for i in range(50):
        p.gossip_received(("h", i), f"10.0.{i}.1", GOSSIP, 0.0)
    with_burst = [i for i in range(50) if p.credit(f"10.0.{i}.1") >= BURST]
    assert with_burst == list(range(FRESH))
    assert p.credit("10.0.49.1") == REPLY_RATIO * GOSSIP
    p.gossip_received(("h", 99), "10.9.9.9", GOSSIP, INTERVAL)
    assert p.credit("10.9.9.9") == BURST + REPLY_RATIO * GOSSIP
