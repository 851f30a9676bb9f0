"""The proof of a GOSSIP's or GOSSIP_REPLY's name on the wire (PROTOCOL.md 2.7): ``key``, ``ts``
and ``sig`` in the ``treedrive`` object, read and written by transport/extension.py only. A
malformed value reads as "no proof" with a flag, never as an error. No sockets."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from treedrive.core.bound import Claim, claim_of, decide, prove
from treedrive.core.identity import NodeKey, encode_b64
from treedrive.core.messages import RAW_PUSH, Extension, Gossip, GossipReply, Proof
from treedrive.transport import codec, wire
from treedrive.transport.extension import MAX_PROOF_TS, capabilities, capabilities_wire

KEY = NodeKey.generate()
TS = 1_800_000_000
CLAIM = Claim("a", "127.0.0.1", 8270, "g1", ("raw-push",))  # the features are signed too
PROOF = prove(KEY, CLAIM, TS)
GOOD = {"key": encode_b64(PROOF.key), "ts": TS, "sig": encode_b64(PROOF.sig)}


def gossip(**td: Any) -> dict[str, Any]:
    return {
        "type": "GOSSIP", "host": "127.0.0.1", "port": 8270, "id": "g1", "peerId": "a",
        "treedrive": {"version": 1, "features": ["raw-push"], **td},
    }  # fmt: skip


def through_the_wire(obj: dict[str, Any]) -> Any:
    fields, _ = codec.parse_one(codec.encode_message(obj))
    return wire.decode(fields)


def test_a_proof_is_read_typed() -> None:
    message = wire.decode(gossip(**GOOD))
    assert isinstance(message, Gossip)
    assert message.extension == Extension(frozenset({RAW_PUSH}), 1, PROOF, False)
    assert "key" not in message.extra
    assert "treedrive" not in message.extra
    assert decide(claim_of(message), message.extension, None, None, TS).pin


def test_a_proof_is_written_with_these_keys_and_round_trips() -> None:
    ext = Extension(frozenset({RAW_PUSH}), 1, PROOF)
    assert capabilities_wire(ext) == {"version": 1, "features": ["raw-push"], **GOOD}
    sent = wire.encode(Gossip("127.0.0.1", 8270, "g1", "a", extension=ext))
    assert sent["treedrive"] == {"version": 1, "features": ["raw-push"], **GOOD}
    back = through_the_wire(sent)
    assert back.extension == ext
    assert decide(claim_of(back), back.extension, KEY.public, TS, TS).accepted


def test_a_reply_carries_its_proof_too() -> None:
    proof = prove(KEY, Claim("b", "127.0.0.1", 8271), TS)
    ext = Extension(frozenset(), 1, proof)
    sent = wire.encode(GossipReply("127.0.0.1", 8271, "b", (), extension=ext))
    assert set(sent["treedrive"]) == {"version", "features", "key", "ts", "sig"}
    back = through_the_wire(sent)
    assert isinstance(back, GossipReply)
    assert back.extension == ext
    assert decide(claim_of(back), back.extension, KEY.public, TS, TS).accepted


def test_no_proof_is_not_malformed() -> None:
    message = wire.decode(gossip())
    assert message.extension == Extension(frozenset({RAW_PUSH}), 1)
    assert message.extension.proof is None
    assert not message.extension.malformed_proof
    assert "key" not in wire.encode(replace(message, original=None))["treedrive"]


def b64(n: int) -> str:
    return encode_b64(b"\x01" * n)


MALFORMED: list[tuple[str, Any]] = [
    ("key", None), ("key", 5), ("key", b64(31)), ("key", b64(33)), ("key", b64(32) + "="),
    ("key", "!" * 43), ("key", b64(32).upper() + "A"),
    ("key", ["x"]), ("key", {"k": 1}),
    ("sig", None), ("sig", b64(63)), ("sig", b64(65)), ("sig", 0),
    ("ts", None), ("ts", -1), ("ts", MAX_PROOF_TS + 1), ("ts", 1.5), ("ts", float(TS)),
    ("ts", str(TS)), ("ts", True), ("ts", 10**400), ("ts", [TS]),
]  # fmt: skip


@pytest.mark.parametrize(("key", "value"), MALFORMED)
def test_a_malformed_value_reads_as_no_proof_and_a_flag(key: str, value: Any) -> None:
    message = wire.decode(gossip(**(GOOD | {key: value})))
    assert message.extension is not None
    assert message.extension.proof is None
    assert message.extension.malformed_proof
    assert message.extension.features == frozenset({RAW_PUSH})  # the rest still reads


@pytest.mark.parametrize(("key", "size"), [("key", 100_000), ("sig", 1_000_000)])
def test_a_huge_value_is_not_decoded(key: str, size: int) -> None:
    """A GOSSIP_REPLY has no size limit of its own (a GOSSIP does: 16 KiB): its proof's values
    are refused by their length, before any decoding."""
    obj = {"type": "GOSSIP_REPLY", "host": "h", "port": 1, "peerId": "b", "files": []}
    obj["treedrive"] = GOOD | {key: "A" * size}
    message = wire.decode(obj)
    assert message.extension is not None
    assert message.extension.proof is None
    assert message.extension.malformed_proof


@pytest.mark.parametrize("missing", ["key", "ts", "sig"])
def test_a_proof_without_one_of_its_keys_is_malformed(missing: str) -> None:
    td = {k: v for k, v in GOOD.items() if k != missing}
    ext = capabilities(gossip(**td))
    assert ext is not None
    assert ext.proof is None
    assert ext.malformed_proof


def test_the_limits_of_ts() -> None:
    for ts in (0, MAX_PROOF_TS):
        ext = capabilities(gossip(**(GOOD | {"ts": ts})))
        assert ext is not None
        assert ext.proof == Proof(PROOF.key, ts, PROOF.sig)


def test_a_treedrive_value_that_is_not_an_object_is_still_classic() -> None:
    for value in (None, 1, "x", [GOOD]):
        assert capabilities(gossip() | {"treedrive": value}) is None


def test_a_forwarded_signed_gossip_leaves_exactly_as_it_came() -> None:
    obj = gossip(**GOOD)
    message = wire.decode(obj)
    assert wire.encode(message) == obj
