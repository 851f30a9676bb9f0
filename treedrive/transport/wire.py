"""Wire objects (decoded JSON) to the core's messages and back. Pure: no I/O.

Every field is checked here, at the boundary, into a typed, range-checked value: nothing the core
receives can make ``str()``, ``int()``, ``float()``, ``round(size * MEGABYTE)`` or a UTF-8 encode
raise, and no string it prints holds a control character or a lone surrogate.

The limits (module constants below):

- identifiers (``peerId``, ``from``, ``file_owner``: :data:`MAX_PEER_ID` chars; gossip ``id``:
  :data:`MAX_GOSSIP_ID`; a ranged request's ``download``: :data:`MAX_DOWNLOAD_ID`) are non-empty
  strings without control characters (C0, DEL, C1) or lone surrogates; a number is accepted where
  real peers send one (ids, owners) and read as its text, if it has at most :data:`MAX_ID_DIGITS`
  digits. A bad identifier is refused, never rewritten: two distinct ids must never become one.
- ``host``: 1 to :data:`MAX_HOST` characters that a host name or IP literal can hold.
- ``port``: an int 1..65535, or a string of at most 5 ASCII digits.
- ``file_name`` is a label (never a path, never hashed): control characters and lone surrogates are
  replaced by U+FFFD and it is cut to :data:`MAX_FILE_NAME` characters. The record is kept.
- ``file_size`` (MB, or bytes for some peers): a finite number, or a short ASCII string of one, in
  0..:data:`MAX_FILE_SIZE`; missing or null reads as 0.0. Anything else makes the record invalid.
- ``file_timestamp``: an int or finite float in 0..:data:`MAX_TIMESTAMP`, or a string of 1 to
  :data:`MAX_TIMESTAMP_TEXT` showable characters (which, if it reads as a number, is in range too).
- ``GOSSIP_REPLY``: at most :data:`MAX_RECORDS` records are decoded, the rest count as skipped; a
  bad record is skipped alone.
- ``GOSSIP`` is forwarded unchanged, so it is bounded as a whole: at most
  :data:`MAX_GOSSIP_EXTRA_KEYS` unknown keys and :data:`MAX_GOSSIP_BYTES` once encoded.
- The TreeDrive extension's ``treedrive`` key is read and written by :mod:`extension` (its
  values typed there, once): a GOSSIP's or GOSSIP_REPLY's capabilities become the message's
  ``extension`` (None: a classic peer), and are written from it. The key is never in ``extra``.
  A record's ``treedrive`` object carries its owner's seal (``FileMeta.seal``; a malformed one
  reads as none, its reason in ``FileMeta.seal_error``), a DELETE's the owner's signature
  (``Delete.signed``): PROTOCOL.md 2.8.

A bad message raises :class:`WireError` (the transport drops it with one log line). Unknown keys
are kept in ``extra`` (plugins read them), the extension's key aside.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

from treedrive.core.messages import (
    Announce,
    Delete,
    FileData,
    GetFile,
    Gossip,
    GossipReply,
    Message,
)
from treedrive.core.model import FileMeta
from treedrive.transport import codec, extension, fields
from treedrive.transport.extension import RangeHeader, RangeRequest, range_header, range_request
from treedrive.transport.fields import (
    MAX_DOWNLOAD_ID,
    MAX_FILE_BYTES,
    MAX_FILE_NAME,
    MAX_FILE_SIZE,
    MAX_GOSSIP_BYTES,
    MAX_GOSSIP_EXTRA_KEYS,
    MAX_GOSSIP_ID,
    MAX_HOST,
    MAX_ID_DIGITS,
    MAX_PEER_ID,
    MAX_RECORDS,
    MAX_TIMESTAMP,
    MAX_TIMESTAMP_TEXT,
    WireError,
    showable,
)

__all__ = [
    "MAX_DOWNLOAD_ID",
    "MAX_FILE_BYTES",
    "MAX_FILE_NAME",
    "MAX_FILE_SIZE",
    "MAX_GOSSIP_BYTES",
    "MAX_GOSSIP_EXTRA_KEYS",
    "MAX_GOSSIP_ID",
    "MAX_HOST",
    "MAX_ID_DIGITS",
    "MAX_PEER_ID",
    "MAX_RECORDS",
    "MAX_TIMESTAMP",
    "MAX_TIMESTAMP_TEXT",
    "RECORD_KEYS",
    "TYPES",
    "RangeHeader",
    "RangeRequest",
    "WireError",
    "decode",
    "encode",
    "file_meta",
    "partial_record",
    "range_header",
    "range_request",
    "showable",
    "trailer_record",
]

RECORD_KEYS = ("file_name", "file_size", "file_id", "file_owner", "file_timestamp")
TYPES = ("GOSSIP", "GOSSIP_REPLY", "GET_FILE", "FILE_DATA", "ANNOUNCE", "DELETE")

SWIM_KEY: Final = "swim"
"""The key of the extension's object that carries a membership message (PROTOCOL.md 2.10)."""
_NOT_EXTRA: Final = frozenset({"type", extension.KEY})
_MAX_JSON_INT_DIGITS: Final = 4000
"""Below Python's limit on int/str conversion (4300 digits): such an int can be encoded."""


def _extra(obj: Mapping[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    """The keys the protocol does not define: neither ``known``, ``type`` nor the extension's."""
    return {k: v for k, v in obj.items() if k not in known and k not in _NOT_EXTRA}


def _json_size_over(obj: Any, limit: int) -> bool:
    """True if ``obj`` encoded as compact JSON surely takes more than ``limit`` bytes.

    Iterative and stops as soon as the lower bound passes ``limit``, so its cost is bounded by the
    limit, not by the object. Raises WireError for a value that JSON cannot carry.
    """
    total = 0
    stack: list[Any] = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if len(item) + 2 > limit - total:
                return True
            text = json.dumps(item, ensure_ascii=False)
            total += len(text.encode("utf-8", "surrogatepass"))
        elif item is None or isinstance(item, bool):
            total += 5 if item is False else 4
        elif isinstance(item, int):
            if item.bit_length() > 3 * _MAX_JSON_INT_DIGITS:
                raise WireError("a number with too many digits to forward")
            total += len(str(item))
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise WireError("a number that JSON cannot carry")
            total += len(repr(item))
        elif isinstance(item, Mapping):
            total += 1 + max(1, len(item))  # braces and commas, colons counted below
            for key, value in item.items():
                if not isinstance(key, str):
                    raise WireError("an object key that is not a string")
                total += 1
                stack.append(key)
                stack.append(value)
        elif isinstance(item, list | tuple):
            total += 1 + max(1, len(item))
            stack.extend(item)
        else:
            raise WireError(f"a value that JSON cannot carry ({type(item).__name__})")
        if total > limit:
            return True
    return False


def _check_gossip_size(obj: Mapping[str, Any], unknown_keys: int) -> None:
    """A GOSSIP is forwarded unchanged: at most MAX_GOSSIP_EXTRA_KEYS keys that classic GOSSIP
    does not define, at most MAX_GOSSIP_BYTES once encoded. WireError otherwise."""
    if unknown_keys > MAX_GOSSIP_EXTRA_KEYS:
        raise WireError(
            f"GOSSIP has {unknown_keys} unknown keys (at most {MAX_GOSSIP_EXTRA_KEYS}): "
            "not forwarded"
        )
    if _json_size_over(obj, MAX_GOSSIP_BYTES):
        raise WireError(f"GOSSIP is larger than {MAX_GOSSIP_BYTES} bytes: not forwarded")
    try:
        size = len(codec.encode_message(obj))
    except (ValueError, TypeError, RecursionError) as exc:
        raise WireError(f"GOSSIP cannot be forwarded: {exc}") from None
    if size > MAX_GOSSIP_BYTES:
        raise WireError(f"GOSSIP is larger than {MAX_GOSSIP_BYTES} bytes: not forwarded")


def file_meta(obj: Any) -> FileMeta:
    """One file record (PROTOCOL.md 1.2). Raises WireError if it is not usable."""
    if not isinstance(obj, Mapping):
        raise WireError("a file record must be an object")
    seal, seal_error = extension.record_seal(obj)
    return FileMeta(
        file_id=fields.file_id(obj),
        file_name=fields.file_name(obj.get("file_name")),
        file_size=fields.size(obj.get("file_size")),
        file_owner=fields.ident(obj, "file_owner", MAX_PEER_ID, numbers=True),
        file_timestamp=fields.timestamp(obj.get("file_timestamp")),
        seal=seal,
        seal_error=seal_error,
    )


def decode(obj: Mapping[str, Any]) -> Message:
    """A wire object as a core message. Raises WireError saying what is wrong."""
    if not isinstance(obj, Mapping):
        raise WireError("a message must be an object")
    kind = obj.get("type")
    if kind == "GOSSIP":
        keys = ("host", "port", "id", "peerId")
        gossip = Gossip(
            host=fields.host(obj),
            port=fields.port(obj),
            id=fields.ident(obj, "id", MAX_GOSSIP_ID, numbers=True),
            peer_id=fields.ident(obj, "peerId", MAX_PEER_ID, numbers=True),
            extra=_extra(obj, keys),
            original=dict(obj),
            extension=extension.capabilities(obj),
            swim=_swim(obj),
        )
        # The extension's key counts as unknown here: it is forwarded too, whatever it holds.
        _check_gossip_size(obj, len(gossip.extra) + (extension.KEY in obj))
        return gossip
    if kind == "GOSSIP_REPLY":
        host, port = fields.host(obj), fields.port(obj)
        peer_id = fields.ident(obj, "peerId", MAX_PEER_ID, numbers=True)
        raw_files = obj.get("files", [])
        if raw_files is None:
            raw_files = []
        if not isinstance(raw_files, list):
            raise WireError(f"'files' must be a list, got {fields.preview(raw_files)}")
        files: list[FileMeta] = []
        skipped = max(0, len(raw_files) - MAX_RECORDS)
        for item in raw_files[:MAX_RECORDS]:
            try:
                files.append(file_meta(item))
            except WireError:
                skipped += 1
        return GossipReply(
            host=host,
            port=port,
            peer_id=peer_id,
            files=tuple(files),
            extra=_extra(obj, ("host", "port", "peerId", "files")),
            skipped=skipped,
            extension=extension.capabilities(obj),
            swim=_swim(obj),
        )
    if kind == "GET_FILE":
        return GetFile(file_id=fields.file_id(obj), extra=_extra(obj, ("file_id",)))
    if kind == "FILE_DATA":
        extra = _extra(obj, (*RECORD_KEYS, "data"))
        raw = extension.is_raw(obj)  # bytes follow the object
        if obj.get("file_id") is None or not (obj.get("data") or raw):
            return FileData(meta=None, extra=extra)
        return FileData(meta=file_meta(obj), extra=extra)
    if kind == "ANNOUNCE":
        return Announce(
            from_peer=fields.ident(obj, "from", MAX_PEER_ID, numbers=True),
            meta=file_meta(obj),
            extra=_extra(obj, (*RECORD_KEYS, "from")),
        )
    if kind == "DELETE":
        signed, signature_error = extension.delete_signature(obj)
        return Delete(
            from_peer=fields.ident(obj, "from", MAX_PEER_ID, numbers=True),
            file_id=fields.file_id(obj),
            extra=_extra(obj, ("from", "file_id")),
            signed=signed,
            signature_error=signature_error,
        )
    if isinstance(kind, str):
        raise WireError(f"unknown message type {fields.preview(kind)}")
    raise WireError("the message has no 'type'")


def encode(message: Message) -> dict[str, Any]:
    """A core message as a wire object (FILE_DATA without its ``data``: it streams)."""
    if isinstance(message, Gossip) and message.original is not None:
        return dict(message.original)  # forwarded: unchanged
    if isinstance(message, Gossip):
        out: dict[str, Any] = {
            "type": "GOSSIP",
            "host": message.host,
            "port": message.port,
            "id": message.id,
            "peerId": message.peer_id,
        }
    elif isinstance(message, GossipReply):
        out = {
            "type": "GOSSIP_REPLY",
            "host": message.host,
            "port": message.port,
            "peerId": message.peer_id,
            "files": [extension.sealed_record(m) for m in message.files],
        }
    elif isinstance(message, GetFile):
        out = {"type": "GET_FILE", "file_id": message.file_id}
    elif isinstance(message, FileData):
        if message.meta is None:
            out = {"type": "FILE_DATA", **dict.fromkeys(RECORD_KEYS)}
        else:
            out = {"type": "FILE_DATA", **extension.sealed_record(message.meta)}
    elif isinstance(message, Announce):
        out = {"type": "ANNOUNCE", "from": message.from_peer}
        out.update(extension.sealed_record(message.meta))
    else:
        out = {"type": "DELETE", "from": message.from_peer, "file_id": message.file_id}
        if message.signed is not None:
            out[extension.KEY] = extension.delete_keys(message.signed)
    for key, value in message.extra.items():
        if key != extension.KEY:  # written from typed values only
            out.setdefault(key, value)
    if isinstance(message, Gossip | GossipReply) and message.extension is not None:
        out[extension.KEY] = extension.capabilities_wire(message.extension)
        if message.swim is not None:
            out[extension.KEY][SWIM_KEY] = message.swim
    return out


def _swim(obj: Mapping[str, Any]) -> Any:
    """The ``swim`` value of a GOSSIP's or GOSSIP_REPLY's extension object, as it came (the core
    reads it, with its limits: :mod:`treedrive.core.swimwire`); None when there is none. The
    whole message is already bounded (the codec's limits, and a GOSSIP's size)."""
    ext = obj.get(extension.KEY)
    return ext.get(SWIM_KEY) if isinstance(ext, Mapping) else None


def trailer_record(obj: Mapping[str, Any]) -> FileMeta:
    """The record that ends a streamed push (PROTOCOL.md 2.4); WireError unless ``obj`` is one,
    with a valid record."""
    if not extension.is_trailer(obj):
        raise WireError("a streamed push must end with its record")
    return file_meta(obj)


def partial_record(fields_so_far: Mapping[str, Any]) -> FileMeta | None:
    """The record of a FILE_DATA whose ``data`` is still arriving, from the keys that came
    before it (:attr:`codec.MessageParser.fields_so_far`); None unless they make a valid record
    under the same checks as a whole one. Later keys may still change it: for display only."""
    if fields_so_far.get("type") != "FILE_DATA" or fields_so_far.get("file_id") is None:
        return None
    try:
        return file_meta(fields_so_far)
    except WireError:
        return None
