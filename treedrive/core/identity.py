"""A node's key pair and what it signs (pure: no I/O).

Each TreeDrive node holds an Ed25519 key (``cryptography``, never hand-written crypto). Between
TreeDrive nodes it binds names to keys: a peer id is pinned to the key that first signed for it
(:mod:`treedrive.core.pins`), and a signed claim can be checked by anyone who forwards it.

What is signed is a *canonical payload*: a tag line naming the purpose and its version
(``treedrive/<purpose>/v1``), then the claim's fields as one JSON array (ASCII only, no spaces,
floats in Python's shortest round-trip form). The tag keeps a signature made for one purpose from
ever passing for another; the JSON keeps every value exactly as it travels on the wire (``1000``
and ``1000.0`` and ``"1000"`` are three different claims), so a receiver rebuilds the very bytes
the sender signed from the values it decoded.

On the wire, public keys and signatures are base64url without padding (:func:`encode_b64`,
:func:`decode_b64`, which refuses anything malformed or too long).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from treedrive.core.model import Timestamp

KEY_SIZE = 32
"""Bytes of a raw Ed25519 public (or private) key."""
SIGNATURE_SIZE = 64
"""Bytes of an Ed25519 signature."""

GOSSIP_TAG = b"treedrive/gossip/v1\n"
REPLY_TAG = b"treedrive/gossip-reply/v1\n"
RECORD_TAG = b"treedrive/record/v1\n"
DELETE_TAG = b"treedrive/delete/v1\n"

FINGERPRINT_CHARS = 32
"""Base32 characters of a fingerprint: 160 bits of the key's sha256, shown as 8 groups of 4."""
FINGERPRINT_GROUP = 4


class NodeKey:
    """An Ed25519 key pair: the node's identity between TreeDrive nodes."""

    __slots__ = ("private_key", "public")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self.private_key = private_key
        """The ``cryptography`` key object (TLS builds the node's certificate from it)."""
        self.public: bytes = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        """The raw 32-byte public key."""

    @classmethod
    def generate(cls) -> NodeKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> NodeKey:
        """The key whose raw 32-byte private form is ``raw`` (ValueError otherwise)."""
        if not isinstance(raw, bytes) or len(raw) != KEY_SIZE:
            raise ValueError(f"a node's private key is {KEY_SIZE} raw bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        """The raw 32-byte private key (a secret: only the key file holds it)."""
        return self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def sign(self, payload: bytes) -> bytes:
        """The 64-byte signature of ``payload`` (one of the canonical payloads below)."""
        return self.private_key.sign(payload)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)

    def __repr__(self) -> str:  # never the private half, even in a traceback
        return f"NodeKey({self.fingerprint})"


def fingerprint(public: bytes) -> str:
    """A public key in a short form people can read aloud and compare, like Syncthing's device
    id: the base32 (A-Z, 2-7, no padding) of the key's sha256, upper case, in dash-separated
    groups, e.g. ``MFRG-GZDF-…`` (39 characters).

    Length: 32 characters, 8 groups of 4. That is 160 bits of the hash; to pass for a key, an
    attacker has to find another key with the same 160 bits (a second preimage, about 2**160
    tries), far beyond reach, while 8 short groups are still easy to compare by eye (Syncthing's
    56 characters carry check digits we do not need: a fingerprint is compared, never typed)."""
    digest = hashlib.sha256(public).digest()
    text = base64.b32encode(digest).decode("ascii")[:FINGERPRINT_CHARS]
    step = FINGERPRINT_GROUP
    return "-".join(text[i : i + step] for i in range(0, len(text), step))


SMALL_ORDER_POINTS = tuple(
    bytes.fromhex(h)
    for h in (
        "00" * 32,  # 0 (order 4)
        "01" + "00" * 31,  # 1, the neutral point (order 1)
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
        "ec" + "ff" * 30 + "7f",  # p - 1 (order 2)
        "ed" + "ff" * 30 + "7f",  # p, a second form of 0 (order 4)
        "ee" + "ff" * 30 + "7f",  # p + 1, a second form of 1 (order 1)
    )
)
"""The encodings of Ed25519's points of small order, as libsodium blocks them (sign bit
aside). OpenSSL verifies signatures under such a "key" that nobody had to sign: one in eight
messages or more pass with a made-up signature (``tests/core/test_identity.py`` shows it)."""


def weak_key(public: bytes) -> bool:
    """Whether ``public`` is a point of small order (not a key anyone holds the secret of)."""
    if len(public) != KEY_SIZE:
        return True
    unsigned = public[:31] + bytes([public[31] & 0x7F])
    return unsigned in SMALL_ORDER_POINTS


def verify(public: object, signature: object, payload: object) -> bool:
    """Whether ``signature`` is ``public``'s Ed25519 signature of ``payload``. Never raises,
    whatever it is given (wrong lengths, garbage, values that are not bytes): False. A weak
    key (:func:`weak_key`) verifies nothing."""
    if not (
        isinstance(public, bytes)
        and isinstance(signature, bytes)
        and isinstance(payload, bytes)
        and len(public) == KEY_SIZE
        and len(signature) == SIGNATURE_SIZE
    ):
        return False
    if weak_key(public):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, payload)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


# -- canonical payloads -------------------------------------------------------------------------
def _canonical(tag: bytes, fields: Sequence[object]) -> bytes:
    """``tag`` then ``fields`` as one JSON array: ASCII only (any string, even one with lone
    surrogates, has one form), no spaces, no NaN or infinity (ValueError: not signable)."""
    body = json.dumps(list(fields), ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return tag + body.encode("ascii")


def gossip_claim(
    peer_id: str, host: str, port: int, gossip_id: str, ts: float, features: Sequence[str] = ()
) -> bytes:
    """What a node signs in its GOSSIP: who it is, where it listens, which gossip, when, and
    the extension features it advertises (sorted: a node that forwards the GOSSIP cannot remove
    one, say ``tls``, without breaking the signature)."""
    return _canonical(GOSSIP_TAG, [peer_id, host, port, gossip_id, ts, sorted(features)])


def reply_claim(
    peer_id: str, host: str, port: int, ts: float, features: Sequence[str] = ()
) -> bytes:
    """What a node signs in its GOSSIP_REPLY: who it is, where it listens, when, its features
    (sorted). A reply has no id; its own tag keeps its signature from ever passing for a
    GOSSIP's (or the reverse)."""
    return _canonical(REPLY_TAG, [peer_id, host, port, ts, sorted(features)])


def record_claim(
    file_id: str, file_name: str, file_size: float, file_owner: str, file_timestamp: Timestamp
) -> bytes:
    """What an owner signs of a file record: the fields of
    :class:`~treedrive.core.model.FileMeta` exactly as they travel (``file_size`` the classic
    float MB, ``file_timestamp`` int, float or string as sent)."""
    return _canonical(RECORD_TAG, [file_id, file_name, file_size, file_owner, file_timestamp])


def delete_claim(file_id: str, owner: str, ts: float) -> bytes:
    """What an owner signs to delete its file: which file, whose, when."""
    return _canonical(DELETE_TAG, [file_id, owner, ts])


# -- wire form ----------------------------------------------------------------------------------
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
MAX_B64_BYTES = 1024
"""The most bytes :func:`decode_b64` ever decodes (a security limit: the longest thing sent in
this form is a 64-byte signature)."""


def encode_b64(raw: bytes) -> str:
    """``raw`` as base64url without padding (how keys and signatures travel)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_b64(text: object, limit: int = MAX_B64_BYTES) -> bytes | None:
    """The bytes of the base64url ``text`` (no padding), or None when it is not a string, is
    longer than ``limit`` bytes would need, has a character outside the alphabet, or is not the
    one canonical encoding of its bytes (so one value has exactly one wire form)."""
    if not isinstance(text, str) or len(text) > -(-min(limit, MAX_B64_BYTES) * 4 // 3):
        return None
    if len(text) % 4 == 1 or _B64URL.fullmatch(text) is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) > limit or encode_b64(raw) != text:
        return None
    return raw


def decode_key(text: object) -> bytes | None:
    """A raw public key from its wire form (exactly 32 bytes), or None."""
    raw = decode_b64(text, KEY_SIZE)
    return raw if raw is not None and len(raw) == KEY_SIZE else None


def decode_signature(text: object) -> bytes | None:
    """A raw signature from its wire form (exactly 64 bytes), or None."""
    raw = decode_b64(text, SIGNATURE_SIZE)
    return raw if raw is not None and len(raw) == SIGNATURE_SIZE else None
