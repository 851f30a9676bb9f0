"""The extension's ``swim`` key passes through the wire layer (PROTOCOL.md 2.10): written from
the message's ``swim`` value, read back as it came, and a swim GOSSIP is still bounded like any
GOSSIP (it could be forwarded by a peer that does not speak swim)."""

from __future__ import annotations

import pytest

from treedrive.core.messages import Extension, Gossip, GossipReply
from treedrive.transport import codec, wire
from treedrive.transport.fields import MAX_GOSSIP_BYTES, WireError

EXT = Extension(frozenset({"swim"}))
SWIM = {"k": "ping", "n": 1, "h": 0, "s": 3, "have": None}


def round_trip(message: Gossip | GossipReply) -> Gossip | GossipReply:
    fields, _ = codec.parse_one(codec.encode_message(wire.encode(message)))
    got = wire.decode(fields)
    assert isinstance(got, Gossip | GossipReply)
    return got


def test_the_swim_key_travels_in_the_extension_object() -> None:
    g = Gossip(host="127.0.0.1", port=1, id="i", peer_id="a", extension=EXT, swim=SWIM)
    obj = wire.encode(g)
    assert obj["treedrive"]["swim"] == SWIM
    assert "swim" not in obj
    assert round_trip(g).swim == SWIM
    ack = {"k": "ack", "n": 1, "h": 0, "s": 3, "of": "a", "oi": 1}
    r = GossipReply(host="127.0.0.1", port=1, peer_id="a", files=(), extension=EXT, swim=ack)
    back = round_trip(r)
    assert back.swim == ack
    assert isinstance(back, GossipReply)
    assert back.files == ()


def test_classic_messages_carry_no_swim_value() -> None:
    g = Gossip(host="127.0.0.1", port=1, id="i", peer_id="a", extension=EXT)
    assert "swim" not in wire.encode(g)["treedrive"]
    assert round_trip(g).swim is None
    plain = {"type": "GOSSIP", "host": "h", "port": 1, "id": "i", "peerId": "a",
             "treedrive": "not an object"}  # fmt: skip
    decoded = wire.decode(plain)
    assert isinstance(decoded, Gossip)
    assert decoded.swim is None


def test_a_swim_gossip_over_the_gossip_bound_is_refused() -> None:
    big = {**SWIM, "news": [["x" * 200, "h", 1, 0, 0, -1]] * (MAX_GOSSIP_BYTES // 200)}
    g = Gossip(host="127.0.0.1", port=1, id="i", peer_id="a", extension=EXT, swim=big)
    with pytest.raises(WireError):
        wire.decode(wire.encode(g))
