"""Sans-IO codec for the classic TreeDrive/COMP 3010 framing (PROTOCOL.md 1.1).

Each connection carries exactly one JSON object (UTF-8), with no length prefix and no delimiter.
The receiver has to find the end of the object by parsing incrementally and must never wait for
EOF. A ``FILE_DATA`` message carries the whole file as a lowercase hex string under ``"data"``,
which can be gigabytes long, so this parser never holds that string: it decodes the hex as it
arrives and hands out raw :class:`DataChunk` events.

Usage, in the style of h11::

    parser = MessageParser()
    parser.receive_data(chunk)          # b"" means EOF
    while True:
        event = parser.next_event()
        if event is NEED_DATA:
            break                       # read more from the socket
        ...                             # DataChunk*, then Message, or ProtocolError

Events come in this order: zero or more :class:`DataChunk` (only while inside the ``"data"``
string, one per fed piece), then exactly one :class:`Message`; or a :class:`ProtocolError` at
any point, which is terminal. After the ``Message``, :meth:`MessageParser.next_event` returns
``NEED_DATA`` forever.

Bytes after the object are not an error (one classic server keeps the socket open; a TreeDrive
raw-range reply puts raw bytes right after its JSON header). Whatever had already been fed when
the object ended is kept whole in ``trailing``, so a caller that feeds each read and stops at the
``Message`` loses nothing; of input fed after that, only the first few KiB are kept.

The parser checks that the input is one JSON object (RFC 8259: ``NaN``/``Infinity`` are
rejected), but not which message type or fields it holds: another layer does that.

This module does no I/O.
"""

from __future__ import annotations

from typing import Any

from treedrive.transport.codec_encode import (
    FILE_DATA_TAIL,
    encode_data_chunk,
    encode_file_data_head,
    encode_message,
)
from treedrive.transport.codec_events import (
    NEED_DATA,
    CodecError,
    DataChunk,
    Event,
    Limits,
    Message,
    NeedData,
    ProtocolError,
)
from treedrive.transport.codec_parser import MessageParser

__all__ = [
    "FILE_DATA_TAIL",
    "NEED_DATA",
    "CodecError",
    "DataChunk",
    "Event",
    "Limits",
    "Message",
    "MessageParser",
    "NeedData",
    "ProtocolError",
    "encode_data_chunk",
    "encode_file_data_head",
    "encode_message",
    "parse_one",
]


def parse_one(data: bytes, limits: Limits | None = None) -> tuple[dict[str, Any], bytes]:
    """Parse one complete message held in memory (tests, small messages).

    Returns the fields, with ``"data"`` as the decoded bytes when it was a hex string, and the
    bytes that followed the object. Raises :class:`CodecError` if the input is invalid or
    incomplete.
    """
    parser = MessageParser(limits)
    parser.receive_data(data)
    parser.receive_data(b"")
    chunks: list[bytes] = []
    while True:
        event = parser.next_event()
        if isinstance(event, DataChunk):
            chunks.append(event.data)
        elif isinstance(event, Message):
            fields = dict(event.fields)
            if fields.get("data") is True:
                fields["data"] = b"".join(chunks)
            return fields, parser.trailing
        elif isinstance(event, ProtocolError):
            raise CodecError(event.reason)
        else:  # pragma: no cover - impossible after EOF
            raise CodecError("incomplete message")
