"""Bound names, the pure decision (PROTOCOL.md 2.7): what a GOSSIP's or GOSSIP_REPLY's proof,
the pinned key, the newest accepted signing time and the clock make of a message."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treedrive.core.bound import (
    MAX_FUTURE,
    STALE_MARGIN,
    Claim,
    Refusal,
    claim_of,
    decide,
    prove,
)
from treedrive.core.identity import NodeKey, fingerprint, gossip_claim, reply_claim
from treedrive.core.messages import Extension, Gossip, GossipReply, Proof
from treedrive.core.pins import Verdict

ALICE = NodeKey.generate()
MALLORY = NodeKey.generate()
NOW = 1_800_000_000
GOSSIP = Claim("alice", "127.0.0.1", 7001, "g-1")
REPLY = Claim("alice", "127.0.0.1", 7001)


def signed(claim: Claim = GOSSIP, key: NodeKey = ALICE, ts: int = NOW) -> Extension:
    return Extension(frozenset({"raw-push"}), 1, prove(key, claim, ts))


# -- the claims ----------------------------------------------------------------------------------
def test_a_gossip_and_a_reply_sign_distinct_bytes() -> None:
    assert GOSSIP.payload(NOW) == gossip_claim("alice", "127.0.0.1", 7001, "g-1", NOW)
    assert REPLY.payload(NOW) == reply_claim("alice", "127.0.0.1", 7001, NOW)
    assert GOSSIP.payload(NOW).startswith(b"treedrive/gossip/v1\n")
    assert REPLY.payload(NOW).startswith(b"treedrive/gossip-reply/v1\n")
    assert REPLY.payload(NOW) == b'treedrive/gossip-reply/v1\n["alice","127.0.0.1",7001,' + (
        str(NOW).encode() + b",[]]"
    )
    with_features = Claim("alice", "127.0.0.1", 7001, None, ("tls", "raw-range"))
    assert with_features.payload(NOW).endswith(b',["raw-range","tls"]]')


def test_a_replys_signature_never_passes_for_a_gossips() -> None:
    """Whatever id a GOSSIP carries (even empty, even one that spells the reply's tag), the
    signature of a reply with the same name, address and time does not verify for it."""
    reply_proof = prove(ALICE, REPLY, NOW)
    for gossip_id in ("", "g-1", "treedrive/gossip-reply/v1", "null"):
        claim = Claim("alice", "127.0.0.1", 7001, gossip_id)
        d = decide(claim, Extension(proof=reply_proof), None, None, NOW)
        assert d.refusal is Refusal.BAD_SIGNATURE
    d = decide(REPLY, Extension(proof=prove(ALICE, GOSSIP, NOW)), None, None, NOW)
    assert d.refusal is Refusal.BAD_SIGNATURE


def test_the_claim_of_a_message() -> None:
    g = Gossip("h", 1, "id-9", "bob")
    r = GossipReply("h", 2, "bob", ())
    assert claim_of(g) == Claim("bob", "h", 1, "id-9")
    assert claim_of(r) == Claim("bob", "h", 2, None)


# -- trust on first use ---------------------------------------------------------------------------
def test_classic_message_for_an_unpinned_peer_is_classic() -> None:
    for ext in (None, Extension(), Extension(malformed_proof=True)):
        d = decide(GOSSIP, ext, None, None, NOW)
        assert d.accepted
        assert d.verdict is Verdict.CLASSIC
        assert not d.pin
        assert d.newest is None


def test_a_first_signed_message_pins_and_is_remembered() -> None:
    d = decide(GOSSIP, signed(), None, None, NOW)
    assert d.accepted
    assert d.verdict is Verdict.NEW_PIN
    assert d.pin
    assert d.newest == NOW


def test_the_pinned_key_again_is_a_match_and_moves_newest_forward() -> None:
    d = decide(GOSSIP, signed(ts=NOW + 30), ALICE.public, NOW, NOW + 30)
    assert d.accepted
    assert d.verdict is Verdict.MATCH
    assert not d.pin
    assert d.newest == NOW + 30
    # an older one within the margin passes, and leaves newest where it was
    d = decide(GOSSIP, signed(ts=NOW - STALE_MARGIN), ALICE.public, NOW, NOW)
    assert d.accepted
    assert d.newest == NOW


def test_another_key_for_a_pinned_peer_is_refused() -> None:
    d = decide(GOSSIP, signed(key=MALLORY), ALICE.public, NOW, NOW)
    assert not d.accepted
    assert d.refusal is Refusal.OTHER_KEY
    assert d.verdict is Verdict.OTHER_KEY
    assert not d.pin
    assert d.reason is not None
    assert fingerprint(MALLORY.public) in d.reason
    assert fingerprint(ALICE.public) in d.reason
    assert "treedrive peers forget-key alice" in d.reason
    assert d.newest == NOW  # unchanged


@pytest.mark.parametrize("ext", [None, Extension(), Extension(frozenset({"raw-push"}), 1)])
def test_an_unsigned_message_for_a_pinned_peer_is_refused(ext: Extension | None) -> None:
    d = decide(GOSSIP, ext, ALICE.public, None, NOW)
    assert d.refusal is Refusal.UNSIGNED
    assert d.reason is not None
    assert "unsigned" in d.reason
    assert "malformed" not in d.reason


def test_a_malformed_proof_for_a_pinned_peer_is_refused_and_says_so() -> None:
    d = decide(GOSSIP, Extension(malformed_proof=True), ALICE.public, None, NOW)
    assert d.refusal is Refusal.UNSIGNED
    assert d.reason is not None
    assert "malformed" in d.reason


@pytest.mark.parametrize("pinned", [None, ALICE.public], ids=["unpinned", "pinned"])
def test_a_signature_that_does_not_verify_is_refused(pinned: bytes | None) -> None:
    good = signed()
    assert good.proof is not None
    bad_sig = bytes([good.proof.sig[0] ^ 1]) + good.proof.sig[1:]
    for proof in (
        replace(good.proof, sig=bad_sig),
        replace(good.proof, ts=NOW + 1),  # the time is signed
    ):
        d = decide(GOSSIP, replace(good, proof=proof), pinned, None, NOW)
        assert d.refusal is Refusal.BAD_SIGNATURE
        assert not d.pin
    # every field of the claim is signed
    for other in (
        replace(GOSSIP, peer_id="alicf"),
        replace(GOSSIP, host="127.0.0.2"),
        replace(GOSSIP, port=7002),
        replace(GOSSIP, gossip_id="g-2"),
    ):
        d = decide(other, good, pinned if other.peer_id == "alice" else None, None, NOW)
        assert d.refusal is Refusal.BAD_SIGNATURE, other


def test_a_weak_key_signs_nothing() -> None:
    zero = Proof(bytes(32), NOW, bytes(64))
    d = decide(GOSSIP, Extension(proof=zero), None, None, NOW)
    assert d.refusal is Refusal.BAD_SIGNATURE


# -- freshness -----------------------------------------------------------------------------------
def test_a_signing_time_too_far_in_the_future_is_refused() -> None:
    ok = decide(GOSSIP, signed(ts=NOW + MAX_FUTURE), None, None, NOW)
    assert ok.accepted
    d = decide(GOSSIP, signed(ts=NOW + MAX_FUTURE + 1), None, None, NOW)
    assert d.refusal is Refusal.FUTURE
    assert not d.pin  # a refused message pins nothing
    d = decide(GOSSIP, signed(ts=NOW + MAX_FUTURE + 1), ALICE.public, NOW, NOW)
    assert d.refusal is Refusal.FUTURE
    assert d.newest == NOW
    assert d.reason is not None
    assert "future" in d.reason


def test_a_replayed_older_message_is_refused() -> None:
    newest = NOW + 300  # the peer moved and said so at NOW + 300
    d = decide(GOSSIP, signed(ts=NOW), ALICE.public, newest, NOW + 310)
    assert d.refusal is Refusal.STALE
    assert d.newest == newest
    assert d.reason is not None
    assert "300 s before" in d.reason
    edge = decide(GOSSIP, signed(ts=newest - STALE_MARGIN), ALICE.public, newest, NOW + 310)
    assert edge.accepted
    older = decide(GOSSIP, signed(ts=newest - STALE_MARGIN - 1), ALICE.public, newest, NOW + 310)
    assert older.refusal is Refusal.STALE


def test_a_key_pinned_anew_starts_from_its_own_times() -> None:
    """After ``forget-key``, what was remembered of the old key's times does not count."""
    d = decide(GOSSIP, signed(key=MALLORY, ts=NOW - 3600), None, NOW, NOW)
    assert d.accepted
    assert d.pin
    assert d.newest == NOW - 3600


def test_an_old_signing_time_is_fine_when_nothing_newer_was_accepted() -> None:
    """Clocks differ: only the future has a bound against the receiver's clock."""
    d = decide(GOSSIP, signed(ts=NOW - 86_400), ALICE.public, None, NOW)
    assert d.accepted
    assert d.newest == NOW - 86_400


@settings(max_examples=100, deadline=None)
@given(
    pinned=st.sampled_from([None, ALICE.public, MALLORY.public]),
    key=st.sampled_from([ALICE, MALLORY]),
    ts=st.integers(0, 2**40),
    newest=st.none() | st.integers(0, 2**40),
    now=st.integers(0, 2**40),
)
def test_accepted_means_verified_by_the_pinned_key_and_fresh(
    pinned: bytes | None, key: NodeKey, ts: int, newest: int | None, now: int
) -> None:
    d = decide(GOSSIP, signed(key=key, ts=ts), pinned, newest, now)
    if d.accepted:
        assert pinned in (None, key.public)
        assert ts <= now + MAX_FUTURE
        assert d.newest is not None
        assert d.newest >= ts
        if pinned is not None and newest is not None:
            assert ts >= newest - STALE_MARGIN
    else:
        assert d.reason
        assert not d.pin
        assert d.newest == newest


def test_a_first_signature_for_a_peer_known_as_classic_pins_nothing() -> None:
    """A stranger who signs first for a classic peer's name must not take it (every message of
    the real peer would be refused): classic rules, as without a signature."""
    d = decide(GOSSIP, signed(key=MALLORY), None, None, NOW, known_classic=True)
    assert d.accepted
    assert d.as_classic
    assert d.verdict is Verdict.CLASSIC
    assert not d.pin
    assert d.newest is None
    # a bad signature is refused all the same, and a pinned peer is judged by its pin
    bad = replace(signed(), proof=replace(prove(ALICE, GOSSIP, NOW), ts=NOW + 1))
    assert decide(GOSSIP, bad, None, None, NOW, known_classic=True).refusal is Refusal.BAD_SIGNATURE
    d = decide(GOSSIP, signed(), ALICE.public, None, NOW, known_classic=True)
    assert d.verdict is Verdict.MATCH
    assert not d.as_classic
