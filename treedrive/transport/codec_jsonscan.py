"""Incremental scanning of one JSON value (or key string) for the codec's parser.

:class:`ValueScanner` finds where a value ends, piece by piece, and accumulates its raw bytes;
it does not decode them: the parser hands the complete value to ``json.loads``, which validates
what this scanner only skips (escapes, number syntax, literals). It rejects at once what can
never be valid (``NaN``, ``Infinity``, a stray byte in a nested value, mismatched brackets) and
bounds nesting depth and literal length.

This module does no I/O.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "CLOSE_BRACE",
    "CLOSE_BRACKET",
    "COLON",
    "COMMA",
    "OPEN_BRACE",
    "OPEN_BRACKET",
    "QUOTE",
    "ScanError",
    "ValueScanner",
    "describe",
]

QUOTE: Final = 0x22
OPEN_BRACE: Final = 0x7B
CLOSE_BRACE: Final = 0x7D
OPEN_BRACKET: Final = 0x5B
CLOSE_BRACKET: Final = 0x5D
COMMA: Final = 0x2C
COLON: Final = 0x3A

# Kinds of value.
_VK_STRING: Final = 0
_VK_NUMBER: Final = 1
_VK_LITERAL: Final = 2
_VK_NESTED: Final = 3

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


def describe(byte: int) -> str:
    """A byte as an error message shows it."""
    if 0x20 <= byte < 0x7F:
        return repr(chr(byte))
    return f"byte 0x{byte:02x}"


class ScanError(ValueError):
    """The value is not valid JSON; ``str(exc)`` is the reason. Terminal for the message."""


class ValueScanner:
    """Scan one key or value at a time; ``max_depth`` counts the top-level object."""

    __slots__ = ("_esc", "_in_string", "_kind", "_max_depth", "_stack", "val")

    def __init__(self, max_depth: int) -> None:
        self._max_depth = max_depth
        self._esc = False
        self.val = bytearray()
        """The raw bytes of the key or value being scanned."""
        self._kind = _VK_STRING
        self._in_string = False
        self._stack: list[int] = []

    def begin_key(self) -> None:
        """A key string starts (after its opening quote); :attr:`val` will hold its raw body."""
        self.val = bytearray()
        self._esc = False

    def scan_key(self, cur: bytes, pos: int, end: int, max_key: int) -> tuple[int, bool]:
        """Scan the key's body into :attr:`val`; return (new_pos, closed). Raise
        :class:`ScanError` past ``max_key`` raw bytes."""
        start = pos
        pos, closed = self.scan_string(cur, pos, end)
        stop = pos - 1 if closed else pos
        if len(self.val) + stop - start > max_key:
            raise ScanError(f"key longer than {max_key} bytes")
        self.val += cur[start:stop]
        return pos, closed

    def scan_string(self, cur: bytes, pos: int, end: int) -> tuple[int, bool]:
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
        if cur[pos] == QUOTE:
            return pos + 1, True
        # A backslash that is the last byte of this piece: its escaped byte comes next.
        self._esc = True
        return end, False

    def begin(self, b: int) -> None:
        """Begin a value at byte ``b`` (consumed into :attr:`val`); :class:`ScanError` if no
        value can start there."""
        self.val = bytearray((b,))
        if b == QUOTE:
            self._kind = _VK_STRING
            self._esc = False
        elif b in (OPEN_BRACE, OPEN_BRACKET):
            if self._max_depth < 2:
                raise ScanError(f"nesting deeper than {self._max_depth} levels")
            self._kind = _VK_NESTED
            self._stack = [b]
            self._in_string = False
            self._esc = False
        elif b in _NUMBER_START:
            self._kind = _VK_NUMBER
        elif b in _LITERAL_START:
            self._kind = _VK_LITERAL
        else:
            raise ScanError(f"invalid JSON: expected a value, got {describe(b)}")

    def take(self) -> bytes:
        """The raw bytes of the key or value just completed; the buffer is released."""
        raw = bytes(self.val)
        self.val = bytearray()
        return raw

    def scan(self, cur: bytes, pos: int, end: int) -> tuple[int, bool]:
        """Scan the current value from ``pos``; accumulate it; return (new_pos, complete).
        Raise :class:`ScanError` when it cannot be valid."""
        kind = self._kind
        start = pos
        if kind == _VK_STRING:
            pos, closed = self.scan_string(cur, pos, end)
            self.val += cur[start:pos]
            return pos, closed
        if kind in (_VK_NUMBER, _VK_LITERAL):
            m = (_NUM_END if kind == _VK_NUMBER else _LIT_END).search(cur, pos, end)
            stop = end if m is None else m.start()
            self.val += cur[start:stop]
            if kind == _VK_LITERAL and len(self.val) > _MAX_LITERAL:
                raise ScanError(f"invalid JSON literal starting {bytes(self.val[:8])!r}")
            return stop, m is not None
        pos, closed = self._scan_nested(cur, pos, end)
        self.val += cur[start:pos]
        return pos, closed

    def _scan_nested(self, cur: bytes, pos: int, end: int) -> tuple[int, bool]:
        """Nested object/array: track strings and brackets; json.loads validates the rest."""
        stack = self._stack
        run = _NEST_RUN.match
        max_nested = self._max_depth - 1
        while pos < end:
            if self._in_string:
                pos, closed = self.scan_string(cur, pos, end)
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
            if b == QUOTE:
                # A string that does not end in this piece.
                self._in_string = True
                self._esc = False
            elif b in (OPEN_BRACE, OPEN_BRACKET):
                if len(stack) >= max_nested:
                    raise ScanError(f"nesting deeper than {self._max_depth} levels")
                stack.append(b)
            elif b in (CLOSE_BRACE, CLOSE_BRACKET):
                opener = stack.pop()
                if (opener == OPEN_BRACE) != (b == CLOSE_BRACE):
                    raise ScanError(f"invalid JSON: mismatched {describe(b)}")
                if not stack:
                    return pos, True
            else:
                raise ScanError(f"invalid JSON: unexpected {describe(b)} in a value")
        return pos, False
