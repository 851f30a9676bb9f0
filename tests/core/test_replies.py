"""The GOSSIP reply policy, with no sockets and no clock: times are given."""

from __future__ import annotations

import json

from treedrive.core.messages import Gossip, GossipReply
from treedrive.core.model import FileMeta
from treedrive.core.replies import (
    BURST,
    FLOOD,
    MAX_CREDIT,
    REPLY_RATIO,
    SPACING,
    Bounded,
    ReplyPolicy,
    Reused,
    Throttle,
    TokenBucket,
    Verdict,
    distinct_addresses,
    gossip_size,
    reply_size,
    source_ip,
)

INTERVAL = 30.0
A = ("127.0.0.1", 9001)
B = ("127.0.0.1", 9002)
IP = "127.0.0.1"
GOSSIP = 120  # bytes of one GOSSIP


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
    p.answered_us(A, 0.5)  # it sent us a GOSSIP_REPLY
    assert p.proven(A, 0.5)
    assert p.decide(A, IP, 200_000, 1.0).verdict is Verdict.SEND
    assert p.decide(A, IP, 200_000, 2.0).verdict is Verdict.LATER
    assert p.credit(IP) == 2 * REPLY_RATIO * GOSSIP  # the source paid for neither


def test_an_address_heard_for_an_interval_is_proven() -> None:
    p = ReplyPolicy(INTERVAL, burst=0)
    p.gossip_received(B, IP, GOSSIP, 0.0)
    assert not p.proven(B, INTERVAL - 1)
    p.gossip_received(B, IP, GOSSIP, INTERVAL)
    assert p.proven(B, INTERVAL)
    assert p.decide(B, IP, 200_000, INTERVAL).verdict is Verdict.SEND


def test_a_legitimate_peer_is_answered_during_a_flood_from_its_own_ip() -> None:
    p = ReplyPolicy(INTERVAL)
    legit = ("127.0.0.1", 8270)
    p.gossip_received(legit, IP, GOSSIP, 0.0)
    p.answered_us(legit, 0.0)
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
    p.answered_us(A, 0.0)
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
    assert p.proven(A, now + 2 * INTERVAL)  # it calmed down
    p.gossip_received(A, IP, GOSSIP, now + 2 * INTERVAL)  # one per interval: a peer
    assert p.proven(A, now + 3 * INTERVAL)


def test_a_newcomer_gets_the_whole_catalogue_once_per_source_per_interval() -> None:
    """A node joining through this one sends one small GOSSIP and must get the whole list at
    once (its join-time downloads pick from it): one reply per source IP per interval is free,
    whatever its size; the next stranger from that IP in the same interval pays."""
    p = ReplyPolicy(INTERVAL, burst=0)
    p.gossip_received(A, IP, GOSSIP, 0.0)
    assert p.decide(A, IP, 2_000_000, 0.0).verdict is Verdict.SEND
    p.gossip_received(B, IP, GOSSIP, 1.0)
    assert p.decide(B, IP, 2_000_000, 1.0).verdict is Verdict.OVER_BUDGET
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
