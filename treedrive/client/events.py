"""The node's live events (``GET /api/events``, server-sent events) as an iterator of
:class:`NodeEvent`: the first is ``Hello`` (with the node's status), then each committed change
and notice as it happens (``PeerSeen``, ``FileStored``, ``TransferProgress``, … ; ``Resync``
when this client fell behind and missed some). The stream ends when the node stops.

Each event carries the last ``id:`` the node sent (None from a node that sends none): to resume
after a break, open the stream again with ``last_event_id=stream.last_id``, and a node that keeps
its recent events sends those missed first."""

from __future__ import annotations

import http.client
import json
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from treedrive.client.errors import NodeUnreachable, ProtocolError
from treedrive.client.sse import SseError, SseMessage, SseParser

READ = 1 << 16


@dataclass(frozen=True, slots=True)
class NodeEvent:
    type: str
    """``Hello``, ``PeerSeen``, ``FileStored``, …: the event's ``type``, else its SSE name."""
    data: dict[str, Any]
    """The event's JSON object (with ``type`` and ``time``)."""
    id: str | None
    """The last event id the node sent up to this event; None if it sends none."""


class EventStream:
    """An open event stream: iterate it for events, close it (or use it in a ``with``) when
    done. ``types``: only events of these types (all if None)."""

    def __init__(
        self,
        response: http.client.HTTPResponse,
        url: str,
        types: Collection[str] | None = None,
    ) -> None:
        self._resp = response
        self._url = url
        self._types = None if types is None else frozenset(types)
        self._parser = SseParser()

    @property
    def last_id(self) -> str | None:
        """The last event id received (None before any): give it to resume."""
        return self._parser.last_id or None

    @property
    def retry(self) -> float | None:
        """Seconds the node asks a client to wait before it reconnects (None: it said not)."""
        ms = self._parser.retry
        return None if ms is None else ms / 1000

    def __iter__(self) -> Iterator[NodeEvent]:
        while True:
            try:
                chunk = self._resp.read1(READ)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if self._resp.closed:
                    return  # closed by this side
                raise NodeUnreachable(self._url, exc) from None
            if not chunk:
                if self._resp.length:  # a Content-Length not reached
                    raise NodeUnreachable(self._url, "the event stream was cut off")
                return
            try:
                messages = self._parser.feed(chunk)
            except SseError as exc:
                raise ProtocolError(f"the node's event stream broke off: {exc}") from None
            for message in messages:
                event = self._event(message)
                if self._types is None or event.type in self._types:
                    yield event

    def _event(self, message: SseMessage) -> NodeEvent:
        try:
            data = json.loads(message.data)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ProtocolError(f"an event from the node is no JSON object: {message.data[:80]!r}")
        kind = data.get("type")
        if not isinstance(kind, str):
            kind = message.event
        return NodeEvent(kind, data, message.last_id or None)

    def close(self) -> None:
        self._resp.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
