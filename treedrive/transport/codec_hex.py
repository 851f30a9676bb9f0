"""Streaming decoder of the FILE_DATA ``"data"`` hex string (see :mod:`treedrive.transport.codec`).

The hex string can be gigabytes long, so it is decoded piece by piece as it arrives, with no
per-byte Python work: an odd digit at the end of a piece waits for the next one.

This module does no I/O.
"""

from __future__ import annotations

import binascii

__all__ = ["HexDecoder", "HexError"]


class HexError(ValueError):
    """The data string is not valid hex; ``str(exc)`` is the reason. Terminal for the message."""


class HexDecoder:
    """Decode the content of one ``"data"`` hex string, within ``max_data`` decoded bytes."""

    __slots__ = ("_max_data", "_nibble", "data_len")

    def __init__(self, max_data: int | None) -> None:
        self._max_data = max_data
        self._nibble = b""
        self.data_len = 0
        """Decoded bytes so far."""

    def decode(self, cur: bytes, mv: memoryview, pos: int, stop: int) -> bytes:
        """Decode ``cur[pos:stop]`` (``mv`` is a view of ``cur``; ``stop > pos``), holding back
        an odd last digit. Raise :class:`HexError` on a bad character or past the limit."""
        max_data = self._max_data
        if max_data is not None:
            total = self.data_len + (len(self._nibble) + stop - pos) // 2
            if total > max_data:
                raise HexError(f"data is longer than the limit of {max_data} bytes")
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
            body = binascii.a2b_hex(mv[start:even_stop])
        except binascii.Error:
            if self._nibble == b"\\" or cur.find(b"\\", pos, stop) >= 0:
                raise HexError("escape sequence inside the data hex string") from None
            raise HexError("data is not a hex string (non-hex character)") from None
        out = head + body if head else body
        self.data_len += len(out)
        return out

    def finish(self) -> None:
        """The closing quote came: raise :class:`HexError` if a digit is left over."""
        if self._nibble:
            # Check the character itself first: a lone bad char is better reported as such.
            if self._nibble == b"\\":
                raise HexError("escape sequence inside the data hex string")
            if self._nibble not in b"0123456789abcdefABCDEF":
                raise HexError("data is not a hex string (non-hex character)")
            raise HexError("data hex string has an odd number of digits")
