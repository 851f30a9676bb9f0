"""The node key, fingerprints, signatures and the canonical payloads (pure: no I/O)."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from treedrive.core import identity
from treedrive.core.identity import (
    DELETE_TAG,
    GOSSIP_TAG,
    RECORD_TAG,
    NodeKey,
    decode_b64,
    decode_key,
    decode_signature,
    delete_claim,
    encode_b64,
    fingerprint,
    gossip_claim,
    record_claim,
    verify,
)

FID = "9ae9c20e3e6066e2cce37d7639810a0d9268a5ee117bfcf28ef99ed576f327fe"
# RFC 8032, test 1: the secret key, its public key and the signature of the empty message.
RFC_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)

QUICK = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- the key ------------------------------------------------------------------------------------
def test_a_key_from_known_bytes_signs_as_rfc_8032_says() -> None:
    key = NodeKey.from_private_bytes(RFC_SECRET)
    assert key.public == RFC_PUBLIC
    assert key.sign(b"") == RFC_SIGNATURE
    assert key.private_bytes() == RFC_SECRET
    assert verify(RFC_PUBLIC, RFC_SIGNATURE, b"")


def test_generated_keys_differ_and_round_trip_through_their_private_bytes() -> None:
    a, b = NodeKey.generate(), NodeKey.generate()
    assert a.public != b.public
    again = NodeKey.from_private_bytes(a.private_bytes())
    assert again.public == a.public
    assert again.fingerprint == a.fingerprint
    assert len(a.public) == 32
    assert len(a.private_bytes()) == 32


@pytest.mark.parametrize("raw", [b"", b"\x00" * 31, b"\x00" * 33, "x" * 32])
def test_private_bytes_of_the_wrong_size_or_type_are_refused(raw: Any) -> None:
    with pytest.raises(ValueError, match="32 raw bytes"):
        NodeKey.from_private_bytes(raw)


def test_the_private_key_object_is_exposed_and_never_shown() -> None:
    key = NodeKey.from_private_bytes(RFC_SECRET)
    assert key.private_key.sign(b"m") == key.sign(b"m")
    assert RFC_SECRET.hex() not in repr(key)
    assert key.fingerprint in repr(key)


def test_a_signature_verifies_only_for_its_key_and_payload() -> None:
    a, b = NodeKey.generate(), NodeKey.generate()
    sig = a.sign(b"payload")
    assert verify(a.public, sig, b"payload")
    assert not verify(b.public, sig, b"payload")
    assert not verify(a.public, sig, b"payload!")
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert not verify(a.public, flipped, b"payload")


# -- fingerprints -------------------------------------------------------------------------------
def test_a_fingerprint_is_8_groups_of_4_base32_characters() -> None:
    fp = fingerprint(RFC_PUBLIC)
    assert re.fullmatch(r"[A-Z2-7]{4}(-[A-Z2-7]{4}){7}", fp), fp
    assert fp == NodeKey.from_private_bytes(RFC_SECRET).fingerprint


def test_a_fingerprint_is_the_start_of_the_keys_sha256_in_base32() -> None:
    import base64
    import hashlib

    want = base64.b32encode(hashlib.sha256(RFC_PUBLIC).digest()).decode()[:32]
    assert fingerprint(RFC_PUBLIC).replace("-", "") == want


def test_keys_that_differ_in_one_bit_have_different_fingerprints() -> None:
    other = bytes([RFC_PUBLIC[0] ^ 1]) + RFC_PUBLIC[1:]
    assert fingerprint(other) != fingerprint(RFC_PUBLIC)


# -- verify never raises ------------------------------------------------------------------------
ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=80),
    st.binary(max_size=100),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=64, max_size=64),
    st.lists(st.integers(), max_size=5),
    st.just(bytearray(32)),
    st.just(memoryview(b"\x00" * 64)),
)


@QUICK
@given(public=ANYTHING, signature=ANYTHING, payload=ANYTHING)
def test_verify_never_raises_whatever_it_is_given(
    public: object, signature: object, payload: object
) -> None:
    assert verify(public, signature, payload) is False


@QUICK
@given(
    public=st.binary(min_size=32, max_size=32),
    signature=st.binary(min_size=64, max_size=64),
    payload=st.binary(max_size=200),
)
def test_verify_says_false_for_random_keys_and_signatures(
    public: bytes, signature: bytes, payload: bytes
) -> None:
    # Any 32 bytes: many are no curve point at all, some are small-order points.
    assert verify(public, signature, payload) is False


@QUICK
@given(payload=st.binary(max_size=200), flip=st.integers(min_value=0, max_value=64 * 8 - 1))
def test_a_signature_with_any_bit_flipped_fails(payload: bytes, flip: int) -> None:
    key = NodeKey.from_private_bytes(RFC_SECRET)
    sig = bytearray(key.sign(payload))
    sig[flip // 8] ^= 1 << (flip % 8)
    assert verify(key.public, key.sign(payload), payload)
    assert verify(key.public, bytes(sig), payload) is False


NEUTRAL = bytes([1]) + bytes(31)


@pytest.mark.parametrize("point", identity.SMALL_ORDER_POINTS)
@pytest.mark.parametrize("sign", [0, 0x80])
def test_small_order_keys_verify_nothing_though_openssl_would(point: bytes, sign: int) -> None:
    public = point[:31] + bytes([point[31] | sign])
    assert identity.weak_key(public)
    made_up = [NEUTRAL + bytes(32), bytes(64)]  # R = a small-order point, S = 0
    payloads = [i.to_bytes(4, "big") for i in range(64)]
    # What the blocklist is for: the library alone takes some of these made-up signatures.
    raw = Ed25519PublicKey.from_public_bytes(public)
    passed = 0
    for sig, payload in itertools.product(made_up, payloads):
        try:
            raw.verify(sig, payload)
            passed += 1
        except InvalidSignature:
            pass
        assert verify(public, sig, payload) is False
    assert passed > 0


def test_real_keys_are_not_weak() -> None:
    assert not identity.weak_key(RFC_PUBLIC)
    assert not identity.weak_key(NodeKey.generate().public)
    assert identity.weak_key(b"short")


def test_a_key_that_is_no_curve_point_verifies_nothing() -> None:
    assert verify(b"\xff" * 32, RFC_SIGNATURE, b"") is False


# -- canonical payloads -------------------------------------------------------------------------
def _body(payload: bytes, tag: bytes) -> Any:
    assert payload.startswith(tag)
    return json.loads(payload[len(tag) :])


def test_each_payload_starts_with_its_own_versioned_tag() -> None:
    tags = {GOSSIP_TAG, RECORD_TAG, DELETE_TAG}
    assert len(tags) == 3
    assert all(t.startswith(b"treedrive/") and t.endswith(b"/v1\n") for t in tags)
    assert _body(gossip_claim("alice", "127.0.0.1", 8270, "g-1", 1700.5), GOSSIP_TAG) == [
        "alice",
        "127.0.0.1",
        8270,
        "g-1",
        1700.5,
        [],
    ]
    signed = gossip_claim("alice", "127.0.0.1", 8270, "g-1", 1700.5, ["tls", "raw-range"])
    assert _body(signed, GOSSIP_TAG)[-1] == ["raw-range", "tls"]  # sorted
    assert _body(record_claim(FID, "a.txt", 0.5, "alice", 1700), RECORD_TAG) == [
        FID,
        "a.txt",
        0.5,
        "alice",
        1700,
    ]
    assert _body(delete_claim(FID, "alice", 1701), DELETE_TAG) == [FID, "alice", 1701]


def test_a_signature_for_one_purpose_never_passes_for_another() -> None:
    key = NodeKey.generate()
    # The same values, claimed for three purposes: three different payloads.
    gossip = gossip_claim(FID, "alice", 1700, "x", 1)
    record = record_claim(FID, "alice", 1700, "x", 1)
    delete = delete_claim(FID, "alice", 1700)
    assert len({gossip, record, delete}) == 3
    sig = key.sign(delete)
    assert verify(key.public, sig, delete)
    assert not verify(key.public, sig, record)
    assert not verify(key.public, sig, gossip)
    assert not verify(key.public, key.sign(record), gossip)


def test_the_payload_has_no_line_break_after_the_tag_so_tags_cannot_be_forged() -> None:
    payload = record_claim(FID, "line\nbreak\ntreedrive/delete/v1\n", 1.0, "o", 1)
    assert payload.count(b"\n") == 1
    assert payload.isascii()


@pytest.mark.parametrize(
    ("one", "other"),
    [(1000, 1000.0), (1000, "1000"), (1000.0, "1000.0"), (1000.5, 1000.25), (True, 1)],
)
def test_timestamps_that_differ_on_the_wire_are_different_claims(one: Any, other: Any) -> None:
    assert record_claim(FID, "n", 1.0, "o", one) != record_claim(FID, "n", 1.0, "o", other)


def test_the_same_values_always_make_the_same_payload() -> None:
    assert record_claim(FID, "é\udc80", 0.1, "o", 1.5) == record_claim(
        FID, "é\udc80", 0.1, "o", 1.5
    )


ts_values = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)


@QUICK
@given(
    name=st.text(max_size=50),
    size=st.floats(allow_nan=False, allow_infinity=False),
    owner=st.text(max_size=20),
    ts=ts_values,
)
def test_record_fields_round_trip_exactly_through_the_payload(
    name: str, size: float, owner: str, ts: int | float | str
) -> None:
    body = _body(record_claim(FID, name, size, owner, ts), RECORD_TAG)
    assert body == [FID, name, size, owner, ts]
    assert type(body[4]) is type(ts)
    assert type(body[2]) is float


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_values_json_cannot_carry_are_not_signable(bad: float) -> None:
    with pytest.raises(ValueError, match="float"):
        record_claim(FID, "n", bad, "o", 1)
    with pytest.raises(ValueError, match="float"):
        delete_claim(FID, "o", bad)


# -- the wire form ------------------------------------------------------------------------------
def test_keys_and_signatures_travel_as_unpadded_base64url() -> None:
    text = encode_b64(RFC_PUBLIC)
    assert "=" not in text
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", text)
    assert decode_key(text) == RFC_PUBLIC
    sig = encode_b64(RFC_SIGNATURE)
    assert len(sig) == 86
    assert decode_signature(sig) == RFC_SIGNATURE
    assert decode_b64("") == b""


@pytest.mark.parametrize(
    "text",
    [
        None,
        43,
        b"AAAA",
        "AAAA=",  # padding
        "AA==",
        "A",  # a length no encoding has
        "AB",  # non-zero trailing bits: not the canonical form of any bytes
        "AA AA",
        "AA+/",  # standard, not url-safe
        "AAAA\n",
        "ÄAAA",
        "A" * 2000,  # over the hard limit
    ],
)
def test_malformed_wire_forms_decode_to_none(text: object) -> None:
    assert decode_b64(text) is None


def test_decode_has_a_hard_length_limit() -> None:
    assert decode_b64(encode_b64(b"\x01" * 10), limit=10) == b"\x01" * 10
    assert decode_b64(encode_b64(b"\x01" * 11), limit=10) is None
    assert decode_b64(encode_b64(b"\x01" * identity.MAX_B64_BYTES)) is not None
    assert decode_b64(encode_b64(b"\x01" * (identity.MAX_B64_BYTES + 1))) is None
    # a larger limit cannot lift the hard one
    assert decode_b64(encode_b64(b"\x01" * 2000), limit=4000) is None


def test_keys_and_signatures_of_the_wrong_length_decode_to_none() -> None:
    assert decode_key(encode_b64(b"\x01" * 31)) is None
    assert decode_key(encode_b64(b"\x01" * 33)) is None
    assert decode_key(encode_b64(RFC_SIGNATURE)) is None
    assert decode_signature(encode_b64(RFC_PUBLIC)) is None
    assert decode_signature(encode_b64(RFC_SIGNATURE + b"\x00")) is None


@QUICK
@given(raw=st.binary(max_size=200))
def test_any_bytes_round_trip_through_the_wire_form(raw: bytes) -> None:
    assert decode_b64(encode_b64(raw)) == raw


@QUICK
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=50), st.integers()))
def test_decode_never_raises(text: object) -> None:
    out = decode_b64(text)
    assert out is None or encode_b64(out) == text
    assert decode_key(text) is None or len(decode_key(text) or b"") == 32
    assert decode_signature(text) is None or len(decode_signature(text) or b"") == 64
