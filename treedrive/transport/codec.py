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

import binascii
import json
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

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


# --------------------------------------------------------------------------------------------
# Events


class NeedData:
    """Sentinel type: the parser needs more input (or EOF) before it can produce an event."""

    __slots__ = ()
    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


@dataclass(frozen=True, slots=True)
class DataChunk:
    """Decoded raw bytes of the ``"data"`` hex string, in order."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Message:
    """The complete object.

    ``fields["data"]`` is ``True`` when ``"data"`` was a hex string (its bytes were delivered as
    :class:`DataChunk` events, possibly none for ``""``), ``None`` when it was JSON ``null``, and
    absent when the key was absent. Every other key holds its ``json.loads`` value.
    """

    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The input is not a valid message. Terminal: the parser keeps returning this same error."""

    reason: str


Event = DataChunk | Message | ProtocolError | NeedData


class CodecError(ValueError):
    """Raised by :func:`parse_one` when the input is not exactly one complete valid message."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits for one message.

    ``max_control_bytes`` counts every byte of the object except the hex content of ``"data"``
    (whitespace included), so it also bounds a big ``GOSSIP_REPLY``. ``max_key_bytes`` is the raw
    (still escaped) length of one key. ``max_depth`` counts the top-level object as 1.
    ``max_data_bytes`` bounds the decoded length of ``"data"`` (``None``: unlimited).
    """

    max_control_bytes: int = 8 * 1024 * 1024
    max_key_bytes: int = 1024
    max_depth: int = 32
    max_data_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_control_bytes < 2:
            raise ValueError("max_control_bytes must be at least 2")
        if self.max_key_bytes < 1:
            raise ValueError("max_key_bytes must be at least 1")
        if self.max_depth < 1:
            raise ValueError("max_depth must be at least 1")
        if self.max_data_bytes is not None and self.max_data_bytes < 0:
            raise ValueError("max_data_bytes must be >= 0 or None")


# --------------------------------------------------------------------------------------------
# Parser

# Top-level states.
_ST_START: Final = 0  # before "{"
_ST_KEY_OR_CLOSE: Final = 1  # after "{": a key or "}"
_ST_KEY_START: Final = 2  # after ",": a key
_ST_KEY: Final = 3  # inside a key string
_ST_COLON: Final = 4  # after a key
_ST_VALUE_START: Final = 5  # after ":"
_ST_VALUE: Final = 6  # inside a (non-"data") value
_ST_AFTER_VALUE: Final = 7  # "," or "}"
_ST_DATA: Final = 8  # inside the "data" hex string
_ST_DONE: Final = 9  # the object is complete

# Kinds of value scanned in _ST_VALUE.
_VK_STRING: Final = 0
_VK_NUMBER: Final = 1
_VK_LITERAL: Final = 2
_VK_NESTED: Final = 3

_QUOTE: Final = 0x22
_BACKSLASH: Final = 0x5C
_OPEN_BRACE: Final = 0x7B
_CLOSE_BRACE: Final = 0x7D
_OPEN_BRACKET: Final = 0x5B
_CLOSE_BRACKET: Final = 0x5D
_COMMA: Final = 0x2C
_COLON: Final = 0x3A

_WS_RUN: Final = re.compile(rb"[ \t\n\r]*")
# The body of a JSON string up to (not including) its closing quote, or up to a backslash that
# ends the piece. Escapes are validated later by json.loads.
_STR_BODY: Final = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
_NUM_END: Final = re.compile(rb"[^0-9eE+\-.]")
_LIT_END: Final = re.compile(rb"[^a-z]")
# Inside a nested value: a run of complete strings and of the only other bytes allowed outside
# strings (whitespace, ",:", number and literal characters). It stops at a bracket, at a string
# that does not end in this piece, or at a byte that cannot appear there (an error, detected at
# once rather than at the size limit).
_NEST_RUN: Final = re.compile(
    rb'(?:[ \t\n\r,:0-9eE+\-.aeflnrstu]+|"[^"\\]*(?:\\.[^"\\]*)*")*', re.DOTALL
)
_NUMBER_START: Final = frozenset(b"-0123456789")
_LITERAL_START: Final = frozenset(b"tfn")
_MAX_LITERAL: Final = 5  # len("false")

_TRAILING_KEEP: Final = 4096  # bytes kept of input fed after the object was complete


def _describe(byte: int) -> str:
    if 0x20 <= byte < 0x7F:
        return repr(chr(byte))
    return f"byte 0x{byte:02x}"


class MessageParser:
    """Incremental parser for one classic-framed message. See the module docstring."""

    def __init__(self, limits: Limits | None = None) -> None:
        self._limits = limits if limits is not None else Limits()
        self.bytes_received = 0
        self._queue: deque[bytes] = deque()
        self._cur = b""
        self._mv = memoryview(b"")
        self._pos = 0
        self._eof = False
        self._state = _ST_START
        self._error: ProtocolError | None = None
        self._message: Message | None = None
        self._message_returned = False
        self._trailing = bytearray()
        self._trailing_cap = 0
        self._control_used = 0
        self._fields: dict[str, Any] = {}
        # Key scanning.
        self._key_buf = bytearray()
        self._key = ""
        self._seen_data = False
        # String scanning (keys, string values, strings inside nested values).
        self._esc = False
        # Value scanning.
        self._val = bytearray()
        self._val_kind = _VK_STRING
        self._in_string = False
        self._stack: list[int] = []
        # Data string.
        self._nibble = b""
        self._data_len = 0

    # -- public API ------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """True once the :class:`Message` event has been returned."""
        return self._message_returned

    @property
    def fields_so_far(self) -> Mapping[str, Any]:
        """The keys of the object parsed so far, before it is complete (read-only; empty once
        the :class:`Message` is out or after an error). While ``"data"`` streams these are
        the keys that came before it: claims that later keys may still override, for display
        only."""
        return MappingProxyType(self._fields)

    @property
    def trailing(self) -> bytes:
        """Bytes received after the object: all of those fed before the object ended, then
        at most a few KiB more (see the module docstring)."""
        return bytes(self._trailing)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes read from the connection; ``b""`` signals EOF. The bytes are copied
        only if they are not ``bytes`` (the caller may reuse its buffer)."""
        self.bytes_received += len(data)
        if not data:
            self._eof = True
            return
        if self._state == _ST_DONE:
            self._keep_trailing(data)
            return
        if self._error is not None:
            return
        if self._eof:
            raise RuntimeError("receive_data() called with data after EOF")
        self._queue.append(bytes(data))

    def next_event(self) -> Event:
        """Return the next event, or ``NEED_DATA`` when more input (or EOF) is needed."""
        if self._error is not None:
            return self._error
        while True:
            if self._state == _ST_DONE:
                return self._take_message()
            if self._pos >= len(self._cur):
                if self._queue:
                    self._cur = self._queue.popleft()
                    self._mv = memoryview(self._cur)
                    self._pos = 0
                    continue
                if self._eof:
                    return self._fail(self._truncated_reason())
                if self._cur:
                    self._cur = b""
                    self._mv = memoryview(b"")
                    self._pos = 0
                return NEED_DATA
            if self._state == _ST_DATA:
                chunk = self._step_data()
            else:
                chunk = None
                self._step_control()
            if self._error is not None:
                return self._error
            if chunk is not None:
                return chunk

    # -- internals -------------------------------------------------------------------------

    def _fail(self, reason: str) -> ProtocolError:
        if self._error is None:
            self._error = ProtocolError(reason)
            # Free whatever we were holding.
            self._queue.clear()
            self._cur = b""
            self._mv = memoryview(b"")
            self._pos = 0
            self._val = bytearray()
            self._key_buf = bytearray()
            self._fields = {}
        return self._error

    def _truncated_reason(self) -> str:
        if self._state == _ST_START and self._control_used == 0:
            return "truncated: connection closed before any data was received"
        where = {
            _ST_START: "before the object",
            _ST_KEY_OR_CLOSE: "after '{'",
            _ST_KEY_START: "after ','",
            _ST_KEY: "inside a key",
            _ST_COLON: "after a key",
            _ST_VALUE_START: "after ':'",
            _ST_VALUE: "inside a value",
            _ST_AFTER_VALUE: "after a value",
            _ST_DATA: "inside the data string",
        }.get(self._state, "")
        return (
            f"truncated: connection closed {where} before the JSON object was complete "
            f"({self.bytes_received} bytes received)"
        )

    def _keep_trailing(self, data: bytes | bytearray | memoryview) -> None:
        room = self._trailing_cap - len(self._trailing)
        if room > 0:
            self._trailing += data[:room]

    def _take_message(self) -> Event:
        if self._message_returned or self._message is None:
            return NEED_DATA
        self._message_returned = True
        message = self._message
        self._message = None
        return message

    def _finish_object(self, pos: int) -> None:
        """The top-level '}' ended just before ``pos``: keep what follows as trailing."""
        self._state = _ST_DONE
        self._message = Message(self._fields)
        self._fields = {}
        # Everything already fed is kept whole; later input only up to _TRAILING_KEEP more.
        self._trailing += self._mv[pos:]
        while self._queue:
            self._trailing += self._queue.popleft()
        self._trailing_cap = len(self._trailing) + _TRAILING_KEEP
        self._cur = b""
        self._mv = memoryview(b"")
        self._pos = 0

    # The data path: no per-byte Python work.

    def _step_data(self) -> DataChunk | None:
        cur = self._cur
        pos = self._pos
        end = len(cur)
        quote = cur.find(b'"', pos)
        stop = end if quote < 0 else quote
        out = b""
        if stop > pos:
            max_data = self._limits.max_data_bytes
            if max_data is not None:
                total = self._data_len + (len(self._nibble) + stop - pos) // 2
                if total > max_data:
                    self._fail(f"data is longer than the limit of {max_data} bytes")
                    return None
            try:
                start = pos
                head = b""
                if self._nibble:
                    head = binascii.a2b_hex(self._nibble + cur[pos : pos + 1])
                    self._nibble = b""
                    start += 1
                even_stop = stop
                if (stop - start) & 1:
                    even_stop -= 1
                    self._nibble = cur[even_stop:stop]
                body = binascii.a2b_hex(self._mv[start:even_stop])
            except binascii.Error:
                if self._nibble == b"\\" or cur.find(b"\\", pos, stop) >= 0:
                    self._fail("escape sequence inside the data hex string")
                else:
                    self._fail("data is not a hex string (non-hex character)")
                return None
            out = head + body if head else body
            self._data_len += len(out)
        if quote < 0:
            self._pos = end
        else:
            if self._nibble:
                # Check the character itself first: a lone bad char is better reported as such.
                if self._nibble == b"\\":
                    self._fail("escape sequence inside the data hex string")
                elif self._nibble not in b"0123456789abcdefABCDEF":
                    self._fail("data is not a hex string (non-hex character)")
                else:
                    self._fail("data hex string has an odd number of digits")
                return None
            self._pos = quote + 1
            self._control_used += 1  # the closing quote
            self._fields["data"] = True
            self._state = _ST_AFTER_VALUE
        if out:
            return DataChunk(out)
        return None

    # The control path: a byte-level state machine over everything but the data hex.

    def _step_control(self) -> None:
        budget = self._limits.max_control_bytes - self._control_used
        if budget <= 0:
            self._fail(
                f"message is larger than the limit of {self._limits.max_control_bytes} bytes "
                "(excluding the data string)"
            )
            return
        start = self._pos
        end = min(len(self._cur), start + budget)
        pos = self._run_control(self._cur, start, end)
        self._control_used += pos - start
        if self._state != _ST_DONE and self._error is None:
            self._pos = pos

    def _scan_string(self, cur: bytes, pos: int, end: int) -> tuple[int, bool]:
        """Advance through a JSON string body; return (new_pos, closed). Escapes are skipped
        here and validated later by json.loads."""
        if self._esc:
            if pos >= end:
                return pos, False
            pos += 1
            self._esc = False
        m = _STR_BODY.match(cur, pos, end)
        assert m is not None  # "*" always matches
        pos = m.end()
        if pos >= end:
            return end, False
        if cur[pos] == _QUOTE:
            return pos + 1, True
        # A backslash that is the last byte of this piece: its escaped byte comes next.
        self._esc = True
        return end, False

    def _run_control(self, cur: bytes, pos: int, end: int) -> int:
        ws = _WS_RUN.match
        while pos < end:
            state = self._state
            if state == _ST_VALUE:
                pos = self._scan_value(cur, pos, end)
            elif state == _ST_KEY:
                pos = self._scan_key(cur, pos, end)
            else:
                # Structural states: skip whitespace, then look at one byte.
                m = ws(cur, pos, end)
                assert m is not None  # "*" always matches
                pos = m.end()
                if pos >= end:
                    break
                if not self._structural(state, cur[pos], pos):
                    return pos
                pos += 1
                if self._state in (_ST_DONE, _ST_DATA):
                    return pos
            if self._error is not None:
                return pos
        return pos

    def _scan_key(self, cur: bytes, pos: int, end: int) -> int:
        """Scan the current key from ``pos``, within ``max_key_bytes``; end it when it closes."""
        start = pos
        pos, closed = self._scan_string(cur, pos, end)
        stop = pos - 1 if closed else pos
        if len(self._key_buf) + stop - start > self._limits.max_key_bytes:
            self._fail(f"key longer than {self._limits.max_key_bytes} bytes")
            return pos
        self._key_buf += cur[start:stop]
        if closed:
            self._end_key()
        return pos

    def _structural(self, state: int, b: int, pos: int) -> bool:
        """Take the byte ``b`` (at ``pos``) that a structural state expects: False on error
        (recorded), else the byte is consumed (the object may now be complete)."""
        if state == _ST_START:
            if b == _OPEN_BRACE:
                self._state = _ST_KEY_OR_CLOSE
                return True
            if b == _OPEN_BRACKET:
                self._fail("top-level JSON value must be an object, got an array")
            else:
                self._fail(f"not a JSON object: expected '{{', got {_describe(b)}")
            return False
        if state in (_ST_KEY_OR_CLOSE, _ST_KEY_START):
            return self._key_or_close(state, b, pos)
        if state == _ST_COLON:
            if b != _COLON:
                self._fail(f"invalid JSON: expected ':' after a key, got {_describe(b)}")
                return False
            self._state = _ST_VALUE_START
            return True
        if state == _ST_VALUE_START:
            return self._start_value(b)
        if state == _ST_AFTER_VALUE:
            return self._comma_or_close(b, pos)
        raise AssertionError(f"unexpected parser state {state}")  # pragma: no cover

    def _key_or_close(self, state: int, b: int, pos: int) -> bool:
        if b == _QUOTE:
            self._state = _ST_KEY
            self._key_buf = bytearray()
            self._esc = False
            return True
        if b == _CLOSE_BRACE and state == _ST_KEY_OR_CLOSE:
            self._finish_object(pos + 1)
            return True
        self._fail(f"invalid JSON: expected a key string, got {_describe(b)}")
        return False

    def _comma_or_close(self, b: int, pos: int) -> bool:
        if b == _COMMA:
            self._state = _ST_KEY_START
            return True
        if b == _CLOSE_BRACE:
            self._finish_object(pos + 1)
            return True
        self._fail(f"invalid JSON: expected ',' or '}}', got {_describe(b)}")
        return False

    def _end_key(self) -> None:
        raw = bytes(self._key_buf)
        self._key_buf = bytearray()
        try:
            key = json.loads('"' + raw.decode("utf-8") + '"')
        except UnicodeDecodeError:
            self._fail("invalid UTF-8 in a key")
            return
        except ValueError as exc:
            self._fail(f"invalid JSON in a key: {exc}")
            return
        if key == "data":
            if self._seen_data:
                self._fail('duplicate "data" key')
                return
            self._seen_data = True
        self._key = key
        self._state = _ST_COLON

    def _start_value(self, b: int) -> bool:
        """Begin a value at byte ``b`` (not yet consumed). False on error."""
        if self._key == "data" and b != _QUOTE and b != ord("n"):
            self._fail(f'"data" must be a hex string or null, got {_describe(b)}')
            return False
        self._val = bytearray((b,))
        if b == _QUOTE:
            if self._key == "data":
                self._state = _ST_DATA
                self._nibble = b""
                return True
            self._val_kind = _VK_STRING
            self._esc = False
        elif b in (_OPEN_BRACE, _OPEN_BRACKET):
            if self._limits.max_depth < 2:
                self._fail(f"nesting deeper than {self._limits.max_depth} levels")
                return False
            self._val_kind = _VK_NESTED
            self._stack = [b]
            self._in_string = False
            self._esc = False
        elif b in _NUMBER_START:
            self._val_kind = _VK_NUMBER
        elif b in _LITERAL_START:
            self._val_kind = _VK_LITERAL
        else:
            self._fail(f"invalid JSON: expected a value, got {_describe(b)}")
            return False
        self._state = _ST_VALUE
        return True

    def _scan_value(self, cur: bytes, pos: int, end: int) -> int:
        """Scan the current value from ``pos``; accumulate it; finish it when it ends."""
        kind = self._val_kind
        start = pos
        if kind == _VK_STRING:
            pos, closed = self._scan_string(cur, pos, end)
            self._val += cur[start:pos]
            if closed:
                self._end_value()
            return pos
        if kind in (_VK_NUMBER, _VK_LITERAL):
            m = (_NUM_END if kind == _VK_NUMBER else _LIT_END).search(cur, pos, end)
            stop = end if m is None else m.start()
            self._val += cur[start:stop]
            if kind == _VK_LITERAL and len(self._val) > _MAX_LITERAL:
                self._fail(f"invalid JSON literal starting {bytes(self._val[:8])!r}")
                return stop
            if m is not None:
                self._end_value()
            return stop
        # Nested object/array: track strings and brackets; json.loads validates the rest.
        stack = self._stack
        run = _NEST_RUN.match
        max_nested = self._limits.max_depth - 1
        while pos < end:
            if self._in_string:
                pos, closed = self._scan_string(cur, pos, end)
                if closed:
                    self._in_string = False
                continue
            m = run(cur, pos, end)
            assert m is not None  # "*" always matches
            pos = m.end()
            if pos >= end:
                break
            b = cur[pos]
            pos += 1
            if b == _QUOTE:
                # A string that does not end in this piece.
                self._in_string = True
                self._esc = False
            elif b in (_OPEN_BRACE, _OPEN_BRACKET):
                if len(stack) >= max_nested:
                    self._fail(f"nesting deeper than {self._limits.max_depth} levels")
                    return pos
                stack.append(b)
            elif b in (_CLOSE_BRACE, _CLOSE_BRACKET):
                opener = stack.pop()
                if (opener == _OPEN_BRACE) != (b == _CLOSE_BRACE):
                    self._fail(f"invalid JSON: mismatched {_describe(b)}")
                    return pos
                if not stack:
                    self._val += cur[start:pos]
                    self._end_value()
                    return pos
            else:
                self._fail(f"invalid JSON: unexpected {_describe(b)} in a value")
                return pos
        self._val += cur[start:pos]
        return pos

    def _end_value(self) -> None:
        raw = bytes(self._val)
        self._val = bytearray()
        try:
            # NaN/Infinity never get here: the scanners reject "N" and "I".
            value = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            self._fail(f"invalid UTF-8 in the value of {self._key!r}")
            return
        except ValueError as exc:
            self._fail(f"invalid JSON in the value of {self._key!r}: {exc}")
            return
        if self._key == "data" and value is not None:
            self._fail(f'"data" must be a hex string or null, got {type(value).__name__}')
            return
        self._fields[self._key] = value
        self._state = _ST_AFTER_VALUE


# --------------------------------------------------------------------------------------------
# Encoders

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
