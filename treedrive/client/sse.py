"""A parser of server-sent events (the WHATWG HTML standard, "event stream interpretation"),
incremental and with no I/O: :meth:`SseParser.feed` takes bytes as they arrive, in pieces of any
size, and returns the events they complete.

Lines end with CR, LF or CRLF; ``:`` starts a comment; ``data:`` lines join with newlines;
``event:`` names the event (``message`` if none); ``id:`` sets the last event id, which every
later event carries (an id with a NUL is ignored); ``retry:`` (digits only) sets the reconnection
delay; a blank line dispatches, an event with no data is dropped, and an event the stream ends
in the middle of is never returned. A line or an event over its limit is an error."""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_LINE = 1 << 20
"""Bytes of one line at most."""
MAX_EVENT = 4 << 20
"""Bytes of one event's data at most."""

_EOL = re.compile(rb"[\r\n]")
_BOM = "\ufeff"


class SseError(ValueError):
    """A line or an event over its limit."""


@dataclass(frozen=True, slots=True)
class SseMessage:
    event: str
    """The ``event:`` name; ``message`` when the event had none."""
    data: str
    last_id: str
    """The last ``id:`` the stream sent, up to this event ("" if none)."""


class SseParser:
    def __init__(self, max_line: int = MAX_LINE, max_event: int = MAX_EVENT) -> None:
        self.max_line = max_line
        self.max_event = max_event
        self.last_id = ""
        self.retry: int | None = None
        """Milliseconds the server asks a client to wait before it reconnects."""
        self._buf = bytearray()
        self._skip_lf = False  # the last line ended with CR: a LF right after belongs to it
        self._first = True
        self._event = ""
        self._data: list[str] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[SseMessage]:
        self._buf += chunk
        out: list[SseMessage] = []
        while self._buf:
            if self._skip_lf:
                self._skip_lf = False
                if self._buf[0] == 0x0A:
                    del self._buf[0]
                    continue
            found = _EOL.search(self._buf)
            if found is None:
                if len(self._buf) > self.max_line:
                    raise SseError(f"an event stream line over {self.max_line} bytes")
                break
            end = found.start()
            if end > self.max_line:
                raise SseError(f"an event stream line over {self.max_line} bytes")
            line = self._buf[:end].decode("utf-8", "replace")
            self._skip_lf = self._buf[end] == 0x0D
            del self._buf[: end + 1]
            message = self._line(line)
            if message is not None:
                out.append(message)
        return out

    def _line(self, line: str) -> SseMessage | None:
        if self._first:
            self._first = False
            line = line.removeprefix(_BOM)
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment (a keep-alive)
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._size += len(value) + 1
            if self._size > self.max_event:
                raise SseError(f"an event over {self.max_event} bytes")
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\0" not in value:
                self.last_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None  # other fields are ignored, as the standard says

    def _dispatch(self) -> SseMessage | None:
        data, event = self._data, self._event
        self._data, self._event, self._size = [], "", 0
        if not data:
            return None
        return SseMessage(event or "message", "\n".join(data), self.last_id)
