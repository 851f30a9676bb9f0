"""The event iterator against a server that numbers its events (``id:`` and ``event:`` lines,
as the node's stream does once it replays from ``Last-Event-ID``): what it yields, the id it
keeps, the header it resumes with, and a stream that breaks."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from treedrive.client import Client, NodeUnreachable, ProtocolError

NUMBERED = (
    b"retry: 1500\n\n"
    b'id: 42\nevent: FileStored\ndata: {"type": "FileStored", "file_id": "ab"}\n\n'
    b": keep-alive\n\n"
    b'id: 43\nevent: PeerSeen\ndata: {"type": "PeerSeen",\ndata:  "new": true}\n\n'
    b'event: Resync\ndata: {"time": 1}\n\n'  # no type in the data: the event's name
)


@contextlib.contextmanager
def serving(
    body: bytes, framing: str = "chunked", cut: bool = False
) -> Iterator[tuple[Client, list[str | None]]]:
    """A server whose ``/api/events`` sends ``body`` then ends (in chunks, as aiohttp does, or
    with a ``Content-Length``); ``cut``: it hangs up before the end. The ``Last-Event-ID``
    headers it was sent."""
    asked: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            asked.append(self.headers.get("Last-Event-ID"))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            if framing == "chunked":
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for event in body.split(b"\n\n"):
                    part = event + b"\n\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                if not cut:
                    self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Content-Length", str(len(body) + (100 if cut else 0)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    worker = threading.Thread(target=server.serve_forever, daemon=True)
    worker.start()
    try:
        yield Client(f"127.0.0.1:{server.server_address[1]}"), asked
    finally:
        server.shutdown()
        server.server_close()
        worker.join(5)


@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_numbered_events_are_read_and_resumed_from_their_id(framing: str) -> None:
    with serving(NUMBERED, framing) as (client, asked):
        with client.events() as stream:
            events = list(stream)
            assert (stream.last_id, stream.retry) == ("43", 1.5)
        assert [(e.type, e.id) for e in events] == [
            ("FileStored", "42"),
            ("PeerSeen", "43"),
            ("Resync", "43"),
        ]
        assert events[1].data == {"type": "PeerSeen", "new": True}
        with client.events(last_event_id="43", types={"Resync"}) as stream:
            assert [e.type for e in stream] == ["Resync"]
    assert asked == [None, "43"]


@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_a_stream_that_breaks_is_an_error_and_not_an_end(framing: str) -> None:
    with serving(NUMBERED, framing, cut=True) as (client, _), client.events() as stream:
        events = iter(stream)
        assert [next(events).type for _ in range(3)] == ["FileStored", "PeerSeen", "Resync"]
        with pytest.raises(NodeUnreachable, match="cannot reach the node at"):
            next(events)
    with (
        serving(b"data: not json\n\n") as (client, _),
        client.events() as stream,
        pytest.raises(ProtocolError, match="no JSON object: 'not json'"),
    ):
        next(iter(stream))
