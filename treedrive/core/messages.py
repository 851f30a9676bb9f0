"""Protocol messages as the core sees them: validated values, no JSON.

The transport turns wire objects into these (and back). Unknown keys a peer sent travel along in
``extra`` so that a forwarded GOSSIP leaves unchanged and plugins can read extension keys.

The TreeDrive extension (PROTOCOL.md part 2) is not among them: what a GOSSIP or GOSSIP_REPLY
says of it arrives typed, as an :class:`Extension`, and its feature names are defined here, once.
How it is written on the wire is the transport's business (``treedrive.transport.wire``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from treedrive.core.model import DeleteSignature, FileMeta

EXTENSION_VERSION: Final = 1
"""The version of the TreeDrive extension this node speaks."""
RAW_RANGE: Final = "raw-range"
"""Feature: ranged GET_FILE answered with raw bytes (PROTOCOL.md 2.2)."""
RAW_PUSH: Final = "raw-push"
"""Feature: a pushed FILE_DATA with raw bytes (PROTOCOL.md 2.3)."""
STREAM_PUSH: Final = "stream-push"
"""Feature: a raw push whose record follows its bytes, sent while they arrive (PROTOCOL.md 2.4)."""
SWIM: Final = "swim"
"""Feature: membership by fan-out and catalogue sync by deltas (PROTOCOL.md 2.10), in a ``swim``
key of the extension's object; between two nodes that both advertise it, no classic GOSSIP."""
TLS: Final = "tls"
"""Feature: extension connections (2.2-2.4) are TLS 1.3 bound to both nodes' keys (PROTOCOL.md
2.9), with peers whose key is pinned."""


@dataclass(frozen=True, slots=True)
class Proof:
    """What binds a GOSSIP's or GOSSIP_REPLY's name to a key (PROTOCOL.md 2.7): the sender's
    public key, when it signed (unix seconds) and its signature of the message's claim
    (:func:`treedrive.core.identity.gossip_claim` or :func:`~treedrive.core.identity.reply_claim`).
    Well-formed values (32-byte key, 64-byte signature, ``ts`` an int in range); whether the
    signature verifies is for :mod:`treedrive.core.bound` to say."""

    key: bytes
    ts: int
    sig: bytes


@dataclass(frozen=True, slots=True)
class Extension:
    """What a GOSSIP or GOSSIP_REPLY says of the TreeDrive extension: a message without one
    comes from a classic peer. A claim: ``features`` are at most a few short names, ``version``
    None when the peer gave no usable one."""

    features: frozenset[str] = frozenset()
    version: int | None = EXTENSION_VERSION
    proof: Proof | None = None
    """The sender's proof of its name (None: it sent none, or a malformed one)."""
    malformed_proof: bool = False
    """The sender tried to prove its name, with malformed values (they read as no proof)."""


@dataclass(frozen=True, slots=True)
class Gossip:
    host: str
    port: int
    id: str
    peer_id: str
    extra: Mapping[str, Any] = field(default_factory=dict)
    original: Mapping[str, Any] | None = None
    """The message exactly as received, so that forwarding leaves it unchanged."""
    extension: Extension | None = None
    """The originator's TreeDrive extension; None: a classic peer."""
    swim: Any = None
    """The value of the extension's ``swim`` key (a membership message, read by
    :mod:`treedrive.core.swimwire`); None: a classic GOSSIP. Never forwarded."""


@dataclass(frozen=True, slots=True)
class GossipReply:
    host: str
    port: int
    peer_id: str
    files: tuple[FileMeta, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)
    skipped: int = 0
    """How many entries of ``files`` were malformed and left out."""
    extension: Extension | None = None
    """The replier's TreeDrive extension; None: a classic peer."""
    swim: Any = None
    """The value of the extension's ``swim`` key (an ack, read by
    :mod:`treedrive.core.swimwire`; its ``files`` are no list of holdings); None: classic."""


@dataclass(frozen=True, slots=True)
class GetFile:
    file_id: str
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FileData:
    """The header of a FILE_DATA message; its bytes stream separately. ``meta`` None = not here."""

    meta: FileMeta | None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Announce:
    from_peer: str
    meta: FileMeta
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Delete:
    from_peer: str
    file_id: str
    extra: Mapping[str, Any] = field(default_factory=dict)
    signed: DeleteSignature | None = None
    """The owner's signature (PROTOCOL.md 2.8): needed to delete a sealed file."""
    signature_error: str | None = None
    """Why the signature it came with could not be read (it reads as unsigned)."""


Message = Gossip | GossipReply | GetFile | FileData | Announce | Delete
