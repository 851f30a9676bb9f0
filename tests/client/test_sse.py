"""The event-stream parser, fed bytes as they could arrive: whole, one byte at a time, split
anywhere. What it returns follows the WHATWG standard's "event stream interpretation"."""

from __future__ import annotations

import pytest

from treedrive.client.sse import SseError, SseMessage, SseParser


def parse_whole(stream: bytes) -> list[SseMessage]:
    return SseParser().feed(stream)


def parse_bytewise(stream: bytes) -> list[SseMessage]:
    parser = SseParser()
    out: list[SseMessage] = []
    for i in range(len(stream)):
        out += parser.feed(stream[i : i + 1])
    return out


def parse_split(stream: bytes) -> list[list[SseMessage]]:
    """The stream cut in two at every place."""
    results = []
    for cut in range(len(stream) + 1):
        parser = SseParser()
        results.append(parser.feed(stream[:cut]) + parser.feed(stream[cut:]))
    return results


def every_way(stream: bytes) -> list[SseMessage]:
    whole = parse_whole(stream)
    assert parse_bytewise(stream) == whole
    assert all(got == whole for got in parse_split(stream))
    return whole


TODAY = (
    b"retry: 2000\n\n"
    b'data: {"type": "Hello", "status": {}}\n\n'
    b": keep-alive\n\n"
    b'data: {"type": "PeerSeen", "new": true}\n\n'
)


def test_the_stream_a_node_sends_today() -> None:
    parser = SseParser()
    got = parser.feed(TODAY)
    assert got == [
        SseMessage("message", '{"type": "Hello", "status": {}}', ""),
        SseMessage("message", '{"type": "PeerSeen", "new": true}', ""),
    ]
    assert every_way(TODAY) == got
    assert parser.retry == 2000


def test_ids_and_event_names_as_a_node_that_numbers_its_events_sends_them() -> None:
    stream = (
        b"retry: 2000\n\n"
        b'id: 7\nevent: Hello\ndata: {"type": "Hello"}\n\n'
        b": keep-alive\n\n"
        b'event: FileStored\ndata: {"type": "FileStored"}\nid: 8\n\n'
        b'data: {"type": "Throughput"}\n\n'  # no id of its own: it carries the last one
    )
    assert every_way(stream) == [
        SseMessage("Hello", '{"type": "Hello"}', "7"),
        SseMessage("FileStored", '{"type": "FileStored"}', "8"),
        SseMessage("message", '{"type": "Throughput"}', "8"),
    ]


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_every_line_ending_reads_the_same(eol: bytes) -> None:
    stream = eol.join([b"id: 1", b"data: a", b"data:b", b"", b": c", b"data", b"", b""])
    assert every_way(stream) == [
        SseMessage("message", "a\nb", "1"),
        SseMessage("message", "", "1"),  # "data" alone is a data line with nothing on it
    ]


def test_fields_as_the_standard_reads_them() -> None:
    stream = (
        b"\xef\xbb\xbfdata: after a BOM\n\n"
        b"data:  two spaces keep one\n\n"
        b"id: a\x00b\ndata: an id with a NUL is ignored\n\n"
        b"retry: soon\nretry: 12x\nunknown: field\nevent: named\n\n"  # no data: not sent
        b"data: the name above went with the empty event\n\n"
        b"id\ndata: an empty id resets it\n\n"
        b"data: \xff not UTF-8\n\n"
        b"data: cut off by the end of the stream\n"
    )
    parser = SseParser()
    got = parser.feed(stream)
    assert got == [
        SseMessage("message", "after a BOM", ""),
        SseMessage("message", " two spaces keep one", ""),
        SseMessage("message", "an id with a NUL is ignored", ""),
        SseMessage("message", "the name above went with the empty event", ""),
        SseMessage("message", "an empty id resets it", ""),
        SseMessage("message", "\ufffd not UTF-8", ""),
    ]
    assert parser.retry is None
    assert every_way(stream) == got


def test_a_line_or_an_event_over_its_limit_is_an_error() -> None:
    with pytest.raises(SseError, match="line over 16 bytes"):
        SseParser(max_line=16).feed(b"data: " + b"x" * 11)  # no end of line yet
    with pytest.raises(SseError, match="line over 16 bytes"):
        SseParser(max_line=16).feed(b"data: " + b"x" * 11 + b"\n")
    assert SseParser(max_line=16).feed(b"data: " + b"x" * 10 + b"\n\n")[0].data == "x" * 10
    parser = SseParser(max_event=20)
    parser.feed(b"data: 0123456789\n")
    with pytest.raises(SseError, match="event over 20 bytes"):
        parser.feed(b"data: 0123456789\n")
