"""Trust on first use: what a message's key and signature make of the pin for its peer id."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treedrive.core.identity import NodeKey, fingerprint
from treedrive.core.pins import MAX_SHOWN_ID, Judgement, Verdict, judge

A = NodeKey.generate().public
B = NodeKey.generate().public


def test_nothing_pinned_and_no_key_is_classic() -> None:
    for verified in (False, True):
        j = judge("alice", None, None, verified)
        assert j == Judgement(Verdict.CLASSIC)
        assert j.accepted
        assert not j.pin
        assert j.reason is None


def test_a_first_signed_message_pins_its_key() -> None:
    j = judge("alice", None, A, True)
    assert j.verdict is Verdict.NEW_PIN
    assert j.accepted
    assert j.pin
    assert j.reason is None


def test_the_pinned_key_signing_again_is_a_match() -> None:
    j = judge("alice", A, A, True)
    assert j.verdict is Verdict.MATCH
    assert j.accepted
    assert not j.pin


@pytest.mark.parametrize("verified", [True, False])
def test_another_key_for_a_pinned_peer_is_refused_and_says_both_keys(verified: bool) -> None:
    j = judge("alice", A, B, verified)
    assert j.verdict is Verdict.OTHER_KEY
    assert not j.accepted
    assert not j.pin
    assert j.reason is not None
    assert "alice" in j.reason
    assert fingerprint(A) in j.reason
    assert fingerprint(B) in j.reason
    assert "treedrive peers forget-key alice" in j.reason


def test_an_unsigned_message_for_a_pinned_peer_is_refused() -> None:
    for verified in (False, True):
        j = judge("alice", A, None, verified)
        assert j.verdict is Verdict.UNSIGNED
        assert not j.accepted
        assert j.reason is not None
        assert "unsigned" in j.reason
        assert fingerprint(A) in j.reason


@pytest.mark.parametrize("pinned", [None, A], ids=["unpinned", "pinned"])
def test_a_signature_that_does_not_verify_is_refused_and_never_pinned(pinned: bytes | None) -> None:
    j = judge("alice", pinned, A, False)
    assert j.verdict is Verdict.BAD_SIGNATURE
    assert not j.accepted
    assert not j.pin
    assert j.reason is not None
    assert "does not verify" in j.reason


def test_a_garbage_key_presented_is_refused_not_pinned() -> None:
    # A key that did not even decode to 32 bytes cannot have verified.
    j = judge("alice", None, b"\x00", False)
    assert j.verdict is Verdict.BAD_SIGNATURE


def test_every_combination_has_exactly_one_verdict_and_refusals_have_reasons() -> None:
    keys = (None, A, B)
    seen = set()
    for pinned, presented, verified in itertools.product(keys, keys, (False, True)):
        j = judge("p", pinned, presented, verified)
        seen.add(j.verdict)
        assert (j.reason is None) == j.accepted
        # only a verified signature ever pins or matches
        if j.verdict in (Verdict.NEW_PIN, Verdict.MATCH):
            assert verified
            assert presented is not None
        # a pinned peer is accepted only under its own key
        if pinned is not None and j.accepted:
            assert presented == pinned
    assert seen == set(Verdict)


def test_a_strangers_peer_id_is_escaped_quoted_and_cut_short_in_the_reason() -> None:
    evil = "al\x1b[31mice\nFAKE LINE " + "x" * 500
    j = judge(evil, A, B, True)
    assert j.reason is not None
    assert "\n" not in j.reason
    assert "\x1b" not in j.reason
    assert "x" * (MAX_SHOWN_ID + 1) not in j.reason
    assert "'" in j.reason  # quoted, as the shell needs it


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    peer_id=st.text(max_size=300),
    pinned=st.one_of(st.none(), st.binary(max_size=40)),
    presented=st.one_of(st.none(), st.binary(max_size=40)),
    verified=st.booleans(),
)
def test_judge_never_raises_and_reasons_are_one_line(
    peer_id: str, pinned: bytes | None, presented: bytes | None, verified: bool
) -> None:
    j = judge(peer_id, pinned, presented, verified)
    if j.reason is not None:
        assert "\n" not in j.reason
        assert len(j.reason) < 400
