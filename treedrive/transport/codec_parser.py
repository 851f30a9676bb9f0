"""The incremental parser of one classic-framed message (see :mod:`treedrive.transport.codec`).

A byte-level state machine over the object's structure (keys, ``:``, ``,``, braces); values are
scanned by :class:`~treedrive.transport.codec_jsonscan.ValueScanner` and the ``"data"`` hex string
is decoded by :class:`~treedrive.transport.codec_hex.HexDecoder`.

This module does no I/O.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from treedrive.transport.codec_events import (
    NEED_DATA,
    DataChunk,
    Event,
    Limits,
    Message,
    ProtocolError,
)
from treedrive.transport.codec_hex import HexDecoder, HexError
from treedrive.transport.codec_jsonscan import (
    CLOSE_BRACE,
    COLON,
    COMMA,
    OPEN_BRACE,
    OPEN_BRACKET,
    QUOTE,
    ScanError,
    ValueScanner,
    describe,
)

__all__ = ["MessageParser"]

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

_WS_RUN: Final = re.compile(rb"[ \t\n\r]*")

_TRAILING_KEEP: Final = 4096  # bytes kept of input fed after the object was complete


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
        self._key = ""  # the key whose value comes next
        self._seen_data = False
        self._scan = ValueScanner(self._limits.max_depth)
        # The data string.
        self._hex = HexDecoder(self._limits.max_data_bytes)

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
            self._scan.val = bytearray()
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

    # The data path: no per-byte Python work.

    def _step_data(self) -> DataChunk | None:
        cur = self._cur
        pos = self._pos
        quote = cur.find(b'"', pos)
        stop = len(cur) if quote < 0 else quote
        try:
            out = self._hex.decode(cur, self._mv, pos, stop) if stop > pos else b""
            if quote >= 0:
                self._hex.finish()
        except HexError as exc:
            self._fail(str(exc))
            return None
        if quote < 0:
            self._pos = stop
        else:
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

    def _run_control(self, cur: bytes, pos: int, end: int) -> int:
        ws = _WS_RUN.match
        while pos < end:
            state = self._state
            if state in (_ST_VALUE, _ST_KEY):
                try:
                    pos = self._scan_value_or_key(state, cur, pos, end)
                except ScanError as exc:
                    self._fail(str(exc))
                    return pos
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

    def _scan_value_or_key(self, state: int, cur: bytes, pos: int, end: int) -> int:
        """Scan the current value or key from ``pos``; end it when it closes. A
        :class:`ScanError` (the input cannot be valid) is left to the caller."""
        if state == _ST_VALUE:
            pos, complete = self._scan.scan(cur, pos, end)
            if complete:
                self._end_value()
        else:
            pos, complete = self._scan.scan_key(cur, pos, end, self._limits.max_key_bytes)
            if complete:
                self._end_key()
        return pos

    def _structural(self, state: int, b: int, pos: int) -> bool:
        """Take the byte ``b`` (at ``pos``) that a structural state expects: False on error
        (recorded), else the byte is consumed (the object may now be complete)."""
        if state == _ST_START:
            if b == OPEN_BRACE:
                self._state = _ST_KEY_OR_CLOSE
                return True
            if b == OPEN_BRACKET:
                self._fail("top-level JSON value must be an object, got an array")
            else:
                self._fail(f"not a JSON object: expected '{{', got {describe(b)}")
            return False
        if state in (_ST_KEY_OR_CLOSE, _ST_KEY_START):
            return self._key_or_close(state, b, pos)
        if state == _ST_COLON:
            if b != COLON:
                self._fail(f"invalid JSON: expected ':' after a key, got {describe(b)}")
                return False
            self._state = _ST_VALUE_START
            return True
        if state == _ST_VALUE_START:
            return self._start_value(b)
        if state == _ST_AFTER_VALUE:
            return self._comma_or_close(b, pos)
        raise AssertionError(f"unexpected parser state {state}")  # pragma: no cover

    def _key_or_close(self, state: int, b: int, pos: int) -> bool:
        if b == QUOTE:
            self._state = _ST_KEY
            self._scan.begin_key()
            return True
        if b == CLOSE_BRACE and state == _ST_KEY_OR_CLOSE:
            self._finish_object(pos + 1)
            return True
        self._fail(f"invalid JSON: expected a key string, got {describe(b)}")
        return False

    def _comma_or_close(self, b: int, pos: int) -> bool:
        if b == COMMA:
            self._state = _ST_KEY_START
            return True
        if b == CLOSE_BRACE:
            self._finish_object(pos + 1)
            return True
        self._fail(f"invalid JSON: expected ',' or '}}', got {describe(b)}")
        return False

    def _end_key(self) -> None:
        raw = self._scan.take()
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
        if self._key == "data":
            if b == QUOTE:
                self._state = _ST_DATA
                return True
            if b != ord("n"):
                self._fail(f'"data" must be a hex string or null, got {describe(b)}')
                return False
        try:
            self._scan.begin(b)
        except ScanError as exc:
            self._fail(str(exc))
            return False
        self._state = _ST_VALUE
        return True

    def _end_value(self) -> None:
        raw = self._scan.take()
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
