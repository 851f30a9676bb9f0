"""Wire objects (decoded JSON) to the core's messages and back. Pure: no I/O.

Validation is strict where a value is used (types of host, port, ids) and lenient where real peers
differ (file_size in MB or bytes, timestamps as int, float or string, owners as numbers). Unknown
keys are kept in ``extra``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from treedrive.core.fileid import is_file_id
from treedrive.core.messages import (
    Announce,
    Delete,
    FileData,
    GetFile,
    Gossip,
    GossipReply,
    Message,
)
from treedrive.core.model import FileMeta, Timestamp

MAX_TEXT = 4096
RECORD_KEYS = ("file_name", "file_size", "file_id", "file_owner", "file_timestamp")
TYPES = ("GOSSIP", "GOSSIP_REPLY", "GET_FILE", "FILE_DATA", "ANNOUNCE", "DELETE")


class WireError(ValueError):
    """A message that is valid JSON but not a valid protocol message."""


def _text(obj: Mapping[str, Any], key: str, *, numbers: bool = False) -> str:
    value = obj.get(key)
    if numbers and isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise WireError(f"{key!r} must be a non-empty string, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise WireError(f"{key!r} is too long ({len(value)} chars)")
    return value


def _port(obj: Mapping[str, Any]) -> int:
    value = obj.get("port")
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise WireError(f"'port' must be a port number, got {value!r}")
    return value


def _file_id(obj: Mapping[str, Any], key: str = "file_id") -> str:
    value = obj.get(key)
    if isinstance(value, str):
        value = value.lower()
    if not is_file_id(value):
        raise WireError(f"{key!r} must be 64 hex characters, got {str(value)[:80]!r}")
    assert isinstance(value, str)
    return value


def _size(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if math.isfinite(value) and value >= 0 else 0.0


def _timestamp(value: Any) -> Timestamp:
    if isinstance(value, bool) or value is None:
        raise WireError("'file_timestamp' is missing")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise WireError("'file_timestamp' is not finite")
        return value
    if isinstance(value, str) and 0 < len(value) <= 64:
        return value
    raise WireError(f"'file_timestamp' must be a number or a short string, got {value!r:.80}")


def _extra(obj: Mapping[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in known and k != "type"}


def file_meta(obj: Any) -> FileMeta:
    if not isinstance(obj, Mapping):
        raise WireError("a file record must be an object")
    name = obj.get("file_name")
    if not isinstance(name, str):
        raise WireError("'file_name' must be a string")
    return FileMeta(
        file_id=_file_id(obj),
        file_name=name[:MAX_TEXT],
        file_size=_size(obj.get("file_size")),
        file_owner=_text(obj, "file_owner", numbers=True),
        file_timestamp=_timestamp(obj.get("file_timestamp")),
    )


def decode(obj: Mapping[str, Any]) -> Message:
    """A wire object as a core message. Raises WireError saying what is wrong."""
    kind = obj.get("type")
    if kind == "GOSSIP":
        keys = ("host", "port", "id", "peerId")
        return Gossip(
            host=_text(obj, "host"),
            port=_port(obj),
            id=_text(obj, "id", numbers=True),
            peer_id=_text(obj, "peerId", numbers=True),
            extra=_extra(obj, keys),
            original=dict(obj),
        )
    if kind == "GOSSIP_REPLY":
        raw_files = obj.get("files", [])
        if raw_files is None:
            raw_files = []
        if not isinstance(raw_files, list):
            raise WireError("'files' must be a list")
        files, skipped = [], 0
        for item in raw_files:
            try:
                files.append(file_meta(item))
            except WireError:
                skipped += 1
        return GossipReply(
            host=_text(obj, "host"),
            port=_port(obj),
            peer_id=_text(obj, "peerId", numbers=True),
            files=tuple(files),
            extra=_extra(obj, ("host", "port", "peerId", "files")),
            skipped=skipped,
        )
    if kind == "GET_FILE":
        return GetFile(file_id=_file_id(obj), extra=_extra(obj, ("file_id",)))
    if kind == "FILE_DATA":
        extra = _extra(obj, (*RECORD_KEYS, "data"))
        ext = extra.get("treedrive")
        raw = isinstance(ext, Mapping) and ext.get("raw") is True  # bytes follow the object
        if obj.get("file_id") is None or not (obj.get("data") or raw):
            return FileData(meta=None, extra=extra)
        return FileData(meta=file_meta(obj), extra=extra)
    if kind == "ANNOUNCE":
        return Announce(
            from_peer=_text(obj, "from", numbers=True),
            meta=file_meta(obj),
            extra=_extra(obj, (*RECORD_KEYS, "from")),
        )
    if kind == "DELETE":
        return Delete(
            from_peer=_text(obj, "from", numbers=True),
            file_id=_file_id(obj),
            extra=_extra(obj, ("from", "file_id")),
        )
    if isinstance(kind, str):
        raise WireError(f"unknown message type {kind[:40]!r}")
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
            "files": [m.wire() for m in message.files],
        }
    elif isinstance(message, GetFile):
        out = {"type": "GET_FILE", "file_id": message.file_id}
    elif isinstance(message, FileData):
        if message.meta is None:
            out = {"type": "FILE_DATA", **dict.fromkeys(RECORD_KEYS)}
        else:
            out = {"type": "FILE_DATA", **message.meta.wire()}
    elif isinstance(message, Announce):
        out = {"type": "ANNOUNCE", "from": message.from_peer, **message.meta.wire()}
    else:
        out = {"type": "DELETE", "from": message.from_peer, "file_id": message.file_id}
    for key, value in message.extra.items():
        out.setdefault(key, value)
    return out
