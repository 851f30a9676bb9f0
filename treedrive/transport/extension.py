"""The TreeDrive extension on the wire (PROTOCOL.md part 2), defined once: typed values and how
each is written and read under the ``treedrive`` key of a classic message. Pure: no I/O.

- the capabilities of a GOSSIP or GOSSIP_REPLY (:class:`~treedrive.core.messages.Extension`),
  with the proof of its sender's name (:class:`~treedrive.core.messages.Proof`, 2.7):
  :func:`capabilities` and :func:`capabilities_wire`; :mod:`wire` puts them in and out of the
  core's messages, so that the core never sees the key;
- a ranged GET_FILE (:class:`RangeRequest`): :func:`ranged_get` and :func:`range_request`;
- the raw header of a FILE_DATA, the answer to a ranged GET_FILE or a raw push
  (:class:`RangeHeader`): :func:`raw_file_data`, :func:`range_header` and :func:`push_header`;
- a streamed push (its record after its bytes): :func:`stream_push`, :func:`push_trailer` and
  :func:`is_trailer`;
- the owner's seal on a file record (2.8), wherever a record travels: :func:`seal_keys` and
  :func:`record_seal`; the owner's signature on a DELETE: :func:`delete_keys` and
  :func:`delete_signature`.

Each is a claim with a limit (THREATS.md): at most :data:`MAX_FEATURES` features are read, each a
short name (:data:`FEATURE_NAME`); a proof's ``key`` and ``sig`` are canonical base64url of
exactly 32 and 64 bytes (longer text is refused before it is decoded) and its ``ts`` an int in
0..:data:`MAX_PROOF_TS`, else the proof reads as none, flagged malformed; offsets, lengths
and sizes are ints in 0..:data:`~treedrive.transport.fields.MAX_FILE_BYTES`; ``from`` is a peer
id and ``download`` a run id, checked like the classic identifiers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from treedrive.core.identity import decode_key, decode_signature, encode_b64
from treedrive.core.messages import Extension, Proof
from treedrive.core.model import DeleteSignature, FileMeta, Seal
from treedrive.transport import fields
from treedrive.transport.fields import (
    MAX_DOWNLOAD_ID,
    MAX_FILE_BYTES,
    MAX_PEER_ID,
    MAX_TIMESTAMP,
    WireError,
)

KEY: Final = "treedrive"
"""The top-level key of a classic message that carries the extension."""
MAX_FEATURES: Final = 32
"""Entries of a peer's ``features`` list that are read (the rest are ignored)."""
FEATURE_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
"""A feature name worth keeping (others are ignored): a few short names, kept with the peer."""
MAX_VERSION: Final = 2**31 - 1
"""Largest ``version`` read as one (any other value reads as "no usable version")."""
PROOF_KEYS: Final = ("key", "ts", "sig")
"""The keys of a signed GOSSIP's or GOSSIP_REPLY's proof (PROTOCOL.md 2.7)."""
MAX_PROOF_TS: Final = 2**40
"""A proof's ``ts`` (int unix seconds) is read in 0..this (any other value is malformed)."""


# --------------------------------------------------------------------------------------------
# Capabilities (PROTOCOL.md 2.1)


def capabilities(obj: Mapping[str, Any]) -> Extension | None:
    """What a GOSSIP or GOSSIP_REPLY says of the extension; None: a classic peer (no ``treedrive``
    object). An object whose ``features`` is not a list is a TreeDrive peer with no features; of
    a list, the first :data:`MAX_FEATURES` entries that are feature names are kept. Never raises."""
    ext = obj.get(KEY)
    if not isinstance(ext, Mapping):
        return None
    version = ext.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= MAX_VERSION:
        version = None
    proof = _proof(ext)
    malformed = proof is None and any(k in ext for k in PROOF_KEYS)
    feats = ext.get("features")
    if not isinstance(feats, list):
        return Extension(frozenset(), version, proof, malformed)
    kept = (f for f in feats[:MAX_FEATURES] if isinstance(f, str) and FEATURE_NAME.fullmatch(f))
    return Extension(frozenset(kept), version, proof, malformed)


def _proof(ext: Mapping[str, Any]) -> Proof | None:
    """The proof in a ``treedrive`` object (PROTOCOL.md 2.7): ``key`` a 32-byte and ``sig`` a
    64-byte base64url value, ``ts`` an int in 0..:data:`MAX_PROOF_TS`; None if any is missing
    or malformed."""
    key, sig, ts = decode_key(ext.get("key")), decode_signature(ext.get("sig")), ext.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts <= MAX_PROOF_TS:
        return None
    if key is None or sig is None:
        return None
    return Proof(key, int(ts), sig)


def capabilities_wire(ext: Extension) -> dict[str, Any]:
    """The value of the ``treedrive`` key for ``ext`` (features sorted; its proof, if any)."""
    out: dict[str, Any] = {} if ext.version is None else {"version": ext.version}
    out["features"] = sorted(ext.features)
    if ext.proof is not None:
        out["key"] = encode_b64(ext.proof.key)
        out["ts"] = ext.proof.ts
        out["sig"] = encode_b64(ext.proof.sig)
    return out


# --------------------------------------------------------------------------------------------
# Raw ranged transfer (PROTOCOL.md 2.2) and raw push (2.3)


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """What a ranged GET_FILE asks for: ``length`` None means to the end of the file."""

    offset: int
    length: int | None
    asker: str | None = None
    """The asker's peer id, as it claims it (a label for progress, not a fact): ``from``."""
    download: str | None = None
    """The asker's name for its download run (its ranges count as one upload)."""


@dataclass(frozen=True, slots=True)
class RangeHeader:
    """The raw header of a FILE_DATA: ``length`` raw bytes at ``offset`` of ``size`` follow it."""

    offset: int
    length: int
    size: int
    sender: str | None = None
    """A raw push's pusher (``from``): its peer id as it claims it, for display only."""
    stream: bool = False
    """A streamed push (2.4): no record in the header; it follows the bytes."""


def ranged_get(file_id: str, request: RangeRequest) -> dict[str, Any]:
    """A ranged GET_FILE as a wire object."""
    ext: dict[str, Any] = {"raw": True, "offset": request.offset, "length": request.length}
    if request.asker is not None:
        ext["from"] = request.asker
    if request.download is not None:
        ext["download"] = request.download
    return {"type": "GET_FILE", "file_id": file_id, KEY: ext}


def raw_file_data(meta: FileMeta, header: RangeHeader) -> dict[str, Any]:
    """The JSON header of a FILE_DATA whose bytes follow it raw (a ranged answer or a push)."""
    ext: dict[str, Any] = {
        "raw": True,
        "offset": header.offset,
        "length": header.length,
        "size": header.size,
    }
    if header.sender is not None:
        ext["from"] = header.sender
    ext.update(seal_keys(meta))
    return {"type": "FILE_DATA", **meta.wire(), "data": None, KEY: ext}


def stream_push(header: RangeHeader) -> dict[str, Any]:
    """The header of a streamed push (PROTOCOL.md 2.4): a FILE_DATA without its record, whose
    ``length`` raw bytes follow, then the record (:func:`push_trailer`)."""
    ext: dict[str, Any] = {
        "raw": True,
        "stream": True,
        "offset": 0,
        "length": header.length,
        "size": header.length,
    }
    if header.sender is not None:
        ext["from"] = header.sender
    return {"type": "FILE_DATA", "data": None, KEY: ext}


def push_trailer(meta: FileMeta) -> dict[str, Any]:
    """The record that ends a streamed push, after its bytes."""
    ext = {"record": True, **seal_keys(meta)}
    return {"type": "FILE_DATA", **meta.wire(), "data": None, KEY: ext}


def is_trailer(obj: Mapping[str, Any]) -> bool:
    """True if ``obj`` is the record that ends a streamed push."""
    ext = obj.get(KEY)
    return obj.get("type") == "FILE_DATA" and isinstance(ext, Mapping) and ext.get("record") is True


def is_raw(obj: Mapping[str, Any]) -> bool:
    """True if the message asks for (or announces) raw bytes."""
    return _raw_ext(obj) is not None


def _raw_ext(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``treedrive`` object when it asks for (or announces) raw bytes."""
    ext = obj.get(KEY)
    return ext if isinstance(ext, Mapping) and ext.get("raw") is True else None


def _byte_count(ext: Mapping[str, Any], key: str) -> int:
    value = ext.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_FILE_BYTES:
        raise WireError(f"'{KEY}.{key}' must be an int in 0..2**50, got {fields.preview(value)}")
    return int(value)


def _peer(ext: Mapping[str, Any]) -> str | None:
    """``from``: a peer id, or None if it says none."""
    if ext.get("from") is None:
        return None
    return fields.ident(ext, "from", MAX_PEER_ID, numbers=True)


def range_request(obj: Mapping[str, Any]) -> RangeRequest | None:
    """The range a GET_FILE asks for; None if it does not ask for raw bytes.

    Raises WireError if it asks with bad values. A missing ``offset`` is 0; a missing or null
    ``length`` is "to the end"; ``from`` and ``download`` are optional.
    """
    ext = _raw_ext(obj)
    if ext is None:
        return None
    offset = _byte_count(ext, "offset") if "offset" in ext else 0
    length = None if ext.get("length") is None else _byte_count(ext, "length")
    asker = _peer(ext)
    download = (
        None if ext.get("download") is None else fields.ident(ext, "download", MAX_DOWNLOAD_ID)
    )
    return RangeRequest(offset=offset, length=length, asker=asker, download=download)


def range_header(obj: Mapping[str, Any]) -> RangeHeader | None:
    """The raw header of a FILE_DATA that answers a ranged GET_FILE; None if it is not raw.

    Raises WireError unless ``offset``, ``length`` and ``size`` are ints in 0..MAX_FILE_BYTES with
    ``offset + length <= size``. ``from`` is not read (a push's, see :func:`push_header`).
    """
    ext = _raw_ext(obj)
    if ext is None:
        return None
    offset, length, size = (_byte_count(ext, k) for k in ("offset", "length", "size"))
    if offset + length > size:
        raise WireError(f"raw header: offset {offset} + length {length} > size {size}")
    return RangeHeader(offset=offset, length=length, size=size)


def push_header(obj: Mapping[str, Any]) -> RangeHeader | None:
    """The raw header of a pushed FILE_DATA, with the pusher it names (``from``, a claim for
    display only); None if the push is not raw. Raises WireError as :func:`range_header` does,
    and if ``from`` is not a valid peer id."""
    header = range_header(obj)
    ext = _raw_ext(obj)
    if header is None or ext is None:
        return None
    stream = ext.get("stream") is True
    if stream and (header.offset != 0 or header.length != header.size):
        raise WireError("a streamed push sends the whole file: offset 0, length = size")
    return replace(header, sender=_peer(ext), stream=stream)


def claimed_peer(obj: Mapping[str, Any]) -> str | None:
    """The peer id an extension request claims to come from (``from``): a ranged GET_FILE's
    asker, a raw or streamed push's pusher; None if it is not such a request or names no one.
    Raises WireError as :func:`range_request` and :func:`push_header` do. Over TLS (2.9) the
    key pinned to it must be the key the client proved."""
    if obj.get("type") == "GET_FILE":
        request = range_request(obj)
        return None if request is None else request.asker
    if obj.get("type") == "FILE_DATA":
        header = push_header(obj)
        return None if header is None else header.sender
    return None


# --------------------------------------------------------------------------------------------
# Signed records and deletes (PROTOCOL.md 2.8)

OWNER_KEY: Final = "owner_key"
"""Key of a record's ``treedrive`` object: the owner's public key (base64url, 32 bytes)."""
SEAL: Final = "seal"
"""Key of a record's ``treedrive`` object: the owner's signature of the record (64 bytes)."""
DELETE_TS: Final = "ts"
DELETE_SIG: Final = "sig"


def seal_keys(meta: FileMeta) -> dict[str, str]:
    """The keys a record's ``treedrive`` object carries for its seal (none if unsealed)."""
    if meta.seal is None:
        return {}
    return {OWNER_KEY: encode_b64(meta.seal.owner_key), SEAL: encode_b64(meta.seal.signature)}


def sealed_record(meta: FileMeta) -> dict[str, Any]:
    """A record as it travels on its own (a GOSSIP_REPLY's ``files`` entry, the keys of an
    ANNOUNCE or a FILE_DATA): the five classic keys, and its seal in a ``treedrive`` object."""
    keys = seal_keys(meta)
    return {**meta.wire(), KEY: keys} if keys else meta.wire()


def record_seal(obj: Mapping[str, Any]) -> tuple[Seal | None, str | None]:
    """The seal ``obj`` (a record) carries, and why it could not be read if it could not (it
    then reads as no seal). No ``treedrive`` object, or one without seal keys: no seal, no
    error. Never raises."""
    ext = obj.get(KEY)
    if not isinstance(ext, Mapping) or (OWNER_KEY not in ext and SEAL not in ext):
        return None, None
    key, signature = decode_key(ext.get(OWNER_KEY)), decode_signature(ext.get(SEAL))
    if key is None:
        return None, f"'{KEY}.{OWNER_KEY}' is not a 32-byte key in base64url"
    if signature is None:
        return None, f"'{KEY}.{SEAL}' is not a 64-byte signature in base64url"
    return Seal(key, signature), None


def delete_keys(signed: DeleteSignature) -> dict[str, Any]:
    """The ``treedrive`` object of a signed DELETE."""
    return {DELETE_TS: signed.ts, DELETE_SIG: encode_b64(signed.signature)}


def delete_signature(obj: Mapping[str, Any]) -> tuple[DeleteSignature | None, str | None]:
    """The owner's signature a DELETE carries, and why it could not be read if it could not
    (it then reads as unsigned). Never raises."""
    ext = obj.get(KEY)
    if not isinstance(ext, Mapping) or (DELETE_TS not in ext and DELETE_SIG not in ext):
        return None, None
    ts = ext.get(DELETE_TS)
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts <= MAX_TIMESTAMP:
        return None, f"'{KEY}.{DELETE_TS}' must be an int in 0..2**40"
    signature = decode_signature(ext.get(DELETE_SIG))
    if signature is None:
        return None, f"'{KEY}.{DELETE_SIG}' is not a 64-byte signature in base64url"
    return DeleteSignature(int(ts), signature), None
