"""Encoders for the classic framing: one compact JSON object, or a FILE_DATA streamed in pieces
(see :mod:`treedrive.transport.codec`).

This module does no I/O.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "FILE_DATA_TAIL",
    "encode_data_chunk",
    "encode_file_data_head",
    "encode_message",
]

FILE_DATA_TAIL: Final = b'"}'


def _dumps(obj: Any) -> bytes:
    try:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (it can arrive from a peer through json.loads): escape it instead.
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        return text.encode("ascii")


def encode_message(fields: Mapping[str, Any]) -> bytes:
    """Encode one message as compact UTF-8 JSON (no trailing newline).

    For convenience a bytes-like ``"data"`` value is written as lowercase hex.
    """
    obj = dict(fields)
    data = obj.get("data")
    if isinstance(data, bytes | bytearray | memoryview):
        obj["data"] = binascii.b2a_hex(data).decode("ascii")
    return _dumps(obj)


def encode_file_data_head(fields: Mapping[str, Any]) -> bytes:
    """Encode the start of a FILE_DATA object through ``"data":"``.

    Follow it with :func:`encode_data_chunk` pieces and then :data:`FILE_DATA_TAIL`.
    """
    if "data" in fields:
        raise ValueError('fields for encode_file_data_head() must not contain "data"')
    body = _dumps(dict(fields))
    if body == b"{}":
        return b'{"data":"'
    return body[:-1] + b',"data":"'


def encode_data_chunk(raw: bytes) -> bytes:
    """Encode raw file bytes as the lowercase hex that goes inside the data string."""
    return binascii.b2a_hex(raw)
