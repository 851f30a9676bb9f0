"""Tests for treedrive.transport.codec: the sans-IO classic-framing parser and its encoders."""

from __future__ import annotations

import ast
import binascii
import json
import random
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from treedrive.transport import codec
from treedrive.transport.codec import (
    FILE_DATA_TAIL,
    NEED_DATA,
    CodecError,
    DataChunk,
    Limits,
    Message,
    MessageParser,
    NeedData,
    ProtocolError,
    encode_data_chunk,
    encode_file_data_head,
    encode_message,
    parse_one,
)

FILE_ID = "64e3" + "0" * 56 + "beef"
RECORD = {
    "file_name": "hello.txt",
    "file_size": 0.0,
    "file_id": FILE_ID,
    "file_owner": "alice",
    "file_timestamp": 1795617115,
}

# --------------------------------------------------------------------------------------------
# Helpers


def run(
    parser: MessageParser, pieces: Iterable[bytes], eof: bool = False, feed_all: bool = False
) -> list[Any]:
    """Feed pieces one at a time, draining events after each; return all events (no NEED_DATA).

    Stops feeding at the Message or ProtocolError unless ``feed_all``."""
    events: list[Any] = []

    def drain() -> None:
        while True:
            ev = parser.next_event()
            if ev is NEED_DATA:
                return
            events.append(ev)
            if isinstance(ev, Message | ProtocolError):
                return

    for piece in pieces:
        parser.receive_data(piece)
        drain()
        if events and isinstance(events[-1], Message | ProtocolError) and not feed_all:
            break
    if eof and not (events and isinstance(events[-1], Message | ProtocolError)):
        parser.receive_data(b"")
        drain()
    return events


def split_random(raw: bytes, rng: random.Random, max_piece: int = 64) -> Iterator[bytes]:
    pos = 0
    while pos < len(raw):
        n = rng.randint(1, max_piece)
        yield raw[pos : pos + n]
        pos += n


def one_byte(raw: bytes) -> Iterator[bytes]:
    return (raw[i : i + 1] for i in range(len(raw)))


def collect(events: list[Any]) -> tuple[dict[str, Any], bytes]:
    """Check the event order (DataChunk* then one Message) and rebuild the fields."""
    assert events, "no event"
    assert isinstance(events[-1], Message), events[-1]
    chunks = events[:-1]
    assert all(isinstance(ev, DataChunk) for ev in chunks), chunks
    fields = dict(events[-1].fields)
    data = b"".join(ev.data for ev in chunks)
    if chunks:
        assert fields.get("data") is True
    if fields.get("data") is True:
        fields["data"] = data
    return fields, data


def expected(raw: bytes) -> dict[str, Any]:
    """What json.loads says, with a hex "data" decoded to bytes."""
    obj = json.loads(raw)
    assert isinstance(obj, dict)
    if isinstance(obj.get("data"), str):
        obj["data"] = bytes.fromhex(obj["data"])
    return obj


def error_of(raw: bytes | Iterable[bytes], limits: Limits | None = None, eof: bool = True) -> str:
    pieces = [raw] if isinstance(raw, bytes) else list(raw)
    events = run(MessageParser(limits), pieces, eof=eof)
    assert events, "expected a ProtocolError, got nothing"
    assert isinstance(events[-1], ProtocolError), events[-1]
    assert not any(isinstance(ev, Message) for ev in events)
    return events[-1].reason


FEEDS = ["whole", "one_byte", "random"]


def pieces_for(raw: bytes, mode: str, seed: int = 0) -> list[bytes]:
    if mode == "whole":
        return [raw]
    if mode == "one_byte":
        return list(one_byte(raw))
    return list(split_random(raw, random.Random(seed)))


# --------------------------------------------------------------------------------------------
# Every message type of PROTOCOL.md, fed whole, byte by byte and in random splits

PROTOCOL_EXAMPLES: dict[str, bytes] = {
    "gossip": (
        b'{"type": "GOSSIP", "host": "127.0.0.1", "port": 8270, '
        b'"id": "0aab9be0-b6f7-4323-942b-f5d17e1f8d39", "peerId": "alice"}'
    ),
    "gossip_treedrive": (
        b'{"type":"GOSSIP","host":"127.0.0.1","port":8270,"id":"0aab9be0","peerId":"alice",'
        b'"treedrive":{"version":1,"features":["raw-range"]}}'
    ),
    "gossip_reply_empty": (
        b'{"type": "GOSSIP_REPLY", "host": "127.0.0.1", "port": 8271, "peerId": "bob", "files": []}'
    ),
    "gossip_reply_records": json.dumps(
        {
            "type": "GOSSIP_REPLY",
            "host": "127.0.0.1",
            "port": 8271,
            "peerId": "bob",
            "files": [
                RECORD,
                {**RECORD, "file_timestamp": 1743466870.0, "file_size": 0.17575836181640625},
                {**RECORD, "file_timestamp": "1749713822", "file_size": 184292},
                {**RECORD, "peers_with_file": ["alice", "bob"], "has_copy": True, "x": None},
                {**RECORD, "file_name": "../../etc/passwd\u0000", "file_owner": "z\u00e9"},
            ],
        }
    ).encode(),
    "get_file": b'{"type": "GET_FILE", "file_id": "08bfad9f' + b"0" * 56 + b'"}',
    "get_file_raw": (
        b'{"type":"GET_FILE","file_id":"08bf","treedrive":{"raw":true,"offset":0,"length":null}}'
    ),
    "file_data": json.dumps({"type": "FILE_DATA", **RECORD, "data": b"hello\n".hex()}).encode(),
    "file_data_null": (
        b'{"type": "FILE_DATA", "file_name": null, "file_size": null, "file_id": null, '
        b'"file_owner": null, "file_timestamp": null, "data": null}'
    ),
    "file_data_empty": json.dumps({"type": "FILE_DATA", **RECORD, "data": ""}).encode(),
    "file_data_data_first": json.dumps({"data": bytes(range(256)).hex(), **RECORD}).encode(),
    "file_data_raw_header": json.dumps(
        {
            "type": "FILE_DATA",
            **RECORD,
            "data": None,
            "treedrive": {"raw": True, "offset": 0, "length": 5, "size": 5},
        }
    ).encode(),
    "announce": json.dumps({"type": "ANNOUNCE", "from": "bob", **RECORD}).encode(),
    "delete": b'{"type": "DELETE", "from": "alice", "file_id": "08bfad9f"}',
    "escapes": (
        b'{"k\\u00e9y": "a\\"b\\\\c\\/d\\n\\t\\u20ac\\ud83d\\ude00", "\\"q\\"": 1, '
        b'"b\\\\": ["\\"]}", {"\\\\": "}"}]}'
    ),
    "unicode_raw": '{"type":"FILE_DATA","file_name":"r\u00e9sum\u00e9 \u6587\u4ef6 \U0001f600.pdf",'
    '"data":"00ff"}'.encode(),
    "numbers": b'{"a": -0, "b": 1.5e-3, "c": 1E+2, "d": 12345678901234567890, "e": -1.0}',
    "literals": b'{"t": true, "f": false, "n": null, "l": [true,false,null]}',
    "whitespace": b' \r\n\t{ \n"type" :\t"GOSSIP" ,\r\n "port" : 1 , "x" : [ 1 , { } , [ ] ] }',
    "empty": b"{}",
}


@pytest.mark.parametrize("mode", FEEDS)
@pytest.mark.parametrize("name", sorted(PROTOCOL_EXAMPLES))
def test_protocol_examples_parse_like_json_loads(name: str, mode: str) -> None:
    raw = PROTOCOL_EXAMPLES[name]
    for seed in range(3 if mode == "random" else 1):
        parser = MessageParser()
        events = run(parser, pieces_for(raw, mode, seed))
        fields, _ = collect(events)
        assert fields == expected(raw)
        assert parser.complete
        assert parser.bytes_received == len(raw)
        # Never waits for EOF, and stays complete afterwards.
        assert parser.next_event() is NEED_DATA


def test_message_field_types_are_preserved() -> None:
    fields, _ = parse_one(PROTOCOL_EXAMPLES["gossip_reply_records"])
    files = fields["files"]
    assert isinstance(files[0]["file_timestamp"], int)
    assert isinstance(files[1]["file_timestamp"], float)
    assert files[1]["file_timestamp"] == 1743466870.0
    assert files[2]["file_timestamp"] == "1749713822"
    assert files[3]["peers_with_file"] == ["alice", "bob"]
    assert files[4]["file_name"] == "../../etc/passwd\x00"


def test_data_field_states() -> None:
    streamed = run(MessageParser(), [PROTOCOL_EXAMPLES["file_data"]])
    assert streamed[-1].fields["data"] is True
    assert b"".join(ev.data for ev in streamed[:-1]) == b"hello\n"

    empty = run(MessageParser(), [PROTOCOL_EXAMPLES["file_data_empty"]])
    assert len(empty) == 1  # no DataChunk for ""
    assert empty[0].fields["data"] is True
    assert parse_one(PROTOCOL_EXAMPLES["file_data_empty"])[0]["data"] == b""

    null = run(MessageParser(), [PROTOCOL_EXAMPLES["file_data_null"]])
    assert len(null) == 1
    assert null[0].fields["data"] is None
    assert null[0].fields["file_id"] is None

    absent = run(MessageParser(), [PROTOCOL_EXAMPLES["gossip"]])
    assert "data" not in absent[0].fields


def test_data_before_other_keys_keeps_them() -> None:
    raw = b'{"data":"6869","type":"FILE_DATA","file_name":"a"}'
    for piece_list in ([raw], list(one_byte(raw))):
        fields, data = collect(run(MessageParser(), piece_list))
        assert data == b"hi"
        assert fields == {"data": b"hi", "type": "FILE_DATA", "file_name": "a"}


def test_uppercase_and_mixed_case_hex_accepted() -> None:
    fields, _ = parse_one(b'{"data":"DEADbeefAbCd"}')
    assert fields["data"] == bytes.fromhex("deadbeefabcd")


def test_escapes_split_at_every_byte() -> None:
    # Every split point of a message full of escapes (including a split right after "\").
    raw = PROTOCOL_EXAMPLES["escapes"]
    want = expected(raw)
    assert "k\u00e9y" in want
    assert want['"q"'] == 1
    for cut in range(1, len(raw)):
        fields, _ = collect(run(MessageParser(), [raw[:cut], raw[cut:]]))
        assert fields == want, cut


def test_unicode_split_inside_multibyte_characters() -> None:
    raw = PROTOCOL_EXAMPLES["unicode_raw"]
    fields, _ = collect(run(MessageParser(), one_byte(raw)))
    assert fields["file_name"] == "r\u00e9sum\u00e9 \u6587\u4ef6 \U0001f600.pdf"
    assert fields["data"] == b"\x00\xff"


def test_nested_values() -> None:
    raw = (
        b'{"type":"GOSSIP","treedrive":{"version":1,"features":["raw-range","x"],'
        b'"deep":{"a":[{"b":[1,2,{"c":"}]"}]}]}},"after":2}'
    )
    for mode in FEEDS:
        fields, _ = collect(run(MessageParser(), pieces_for(raw, mode)))
        assert fields["treedrive"] == {
            "version": 1,
            "features": ["raw-range", "x"],
            "deep": {"a": [{"b": [1, 2, {"c": "}]"}]}]},
        }
        assert fields["after"] == 2


def test_duplicate_keys_last_wins_like_json_loads() -> None:
    raw = b'{"a":1,"b":2,"a":{"x":3}}'
    fields, _ = parse_one(raw)
    assert fields == json.loads(raw) == {"a": {"x": 3}, "b": 2}


# --------------------------------------------------------------------------------------------
# Trailing bytes, EOF, event order


@pytest.mark.parametrize("suffix", [b"\n", b"  \r\n\t ", b"\n\n{}", b"garbage after", b"}}}]"])
def test_bytes_after_the_object_are_not_an_error(suffix: bytes) -> None:
    raw = PROTOCOL_EXAMPLES["gossip"]
    for mode in FEEDS:
        parser = MessageParser()
        events = run(parser, pieces_for(raw + suffix, mode), eof=True, feed_all=True)
        fields, _ = collect(events)
        assert fields == json.loads(raw)
        assert parser.trailing == suffix
        assert parser.complete


def test_message_completes_without_eof_and_later_data_is_ignored_and_bounded() -> None:
    parser = MessageParser()
    parser.receive_data(PROTOCOL_EXAMPLES["file_data"] + b"\nextra")
    events = []
    while (ev := parser.next_event()) is not NEED_DATA:
        events.append(ev)
        assert len(events) < 10
    _fields, data = collect(events)
    assert data == b"hello\n"
    # The peer keeps the socket open and sends more: ignored, and not kept without bound.
    for _ in range(100):
        parser.receive_data(b"x" * 65536)
        assert parser.next_event() is NEED_DATA
    parser.receive_data(b"")
    assert parser.next_event() is NEED_DATA
    assert parser.trailing.startswith(b"\nextraxxx")
    assert len(parser.trailing) <= 65536
    assert parser.bytes_received == len(PROTOCOL_EXAMPLES["file_data"]) + 6 + 100 * 65536


def test_everything_fed_before_the_end_is_kept_in_trailing() -> None:
    # A TreeDrive raw-range reply: a JSON header immediately followed by raw bytes, often in
    # the same read. None of them may be lost, however many there are.
    header = encode_message({"type": "FILE_DATA", **RECORD, "data": None})
    raw = random.Random(3).randbytes(200_000)
    wire = header + raw
    for pieces in ([wire], [wire[:10], wire[10:]], [header[:-1], header[-1:] + raw]):
        parser = MessageParser()
        events = run(parser, pieces)
        assert isinstance(events[-1], Message)
        assert events[-1].fields["data"] is None
        assert parser.trailing == raw
    # Several pieces queued before next_event() is called: all kept, in order.
    parser = MessageParser()
    parser.receive_data(header + b"ab")
    parser.receive_data(b"cd")
    parser.receive_data(b"ef")
    assert isinstance(parser.next_event(), Message)
    assert parser.trailing == b"abcdef"
    # Input fed after the end: only a few KiB more are kept.
    parser.receive_data(b"g" * 100_000)
    assert parser.trailing.startswith(b"abcdefggg")
    assert 6 < len(parser.trailing) <= 6 + 65536


def test_event_order_and_complete_flag() -> None:
    parser = MessageParser()
    head = encode_file_data_head({"type": "FILE_DATA", "file_id": FILE_ID})
    parser.receive_data(head)
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"0102")
    assert parser.next_event() == DataChunk(b"\x01\x02")
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"03")
    parser.receive_data(b"04" + FILE_DATA_TAIL)
    # One DataChunk per fed piece, not coalesced.
    assert parser.next_event() == DataChunk(b"\x03")
    assert parser.next_event() == DataChunk(b"\x04")
    assert not parser.complete
    ev = parser.next_event()
    assert ev == Message({"type": "FILE_DATA", "file_id": FILE_ID, "data": True})
    assert parser.complete
    assert parser.next_event() is NEED_DATA


def test_odd_split_of_hex_pairs_across_feeds() -> None:
    parser = MessageParser()
    events = run(parser, [b'{"data":"a', b"b", b"cdef0", b"1", b'"}'])
    _, data = collect(events)
    assert data == b"\xab\xcd\xef\x01"
    assert [len(ev.data) for ev in events[:-1]] == [1, 2, 1]


def test_need_data_is_a_singleton() -> None:
    assert NeedData() is NEED_DATA
    assert repr(NEED_DATA) == "NEED_DATA"
    assert MessageParser().next_event() is NEED_DATA


def test_receive_data_after_eof_is_a_caller_bug() -> None:
    parser = MessageParser()
    parser.receive_data(b'{"a":')
    parser.receive_data(b"")
    with pytest.raises(RuntimeError):
        parser.receive_data(b"1}")


def test_accepts_bytearray_and_memoryview_without_aliasing() -> None:
    buf = bytearray(b'{"a":"xy"}')
    parser = MessageParser()
    parser.receive_data(buf)
    buf[:] = b"\x00" * len(buf)  # the caller reuses its buffer
    parser.receive_data(memoryview(b"\n"))
    ev = parser.next_event()
    assert ev == Message({"a": "xy"})


# --------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"hello", "not a JSON object"),
        (b"GET / HTTP/1.1\r\n\r\n", "not a JSON object"),
        (b'  ["GOSSIP"]', "array"),
        (b'"just a string"', "not a JSON object"),
        (b"\xef\xbb\xbf{}", "not a JSON object"),
        (b"{'a': 1}", "key"),
        (b'{"a" 1}', "':'"),
        (b'{"a":1,}', "key"),
        (b'{"a":1 "b":2}', "','"),
        (b'{"a":tru}', "invalid JSON"),
        (b'{"a":truex}', "invalid JSON"),
        (b'{"a":falsey}', "invalid JSON literal"),
        (b'{"a":01}', "invalid JSON"),
        (b'{"a":1.}', "invalid JSON"),
        (b'{"a":-}', "invalid JSON"),
        (b'{"a":NaN}', "invalid JSON"),
        (b'{"a":-Infinity}', "invalid JSON"),
        (b'{"a":[NaN]}', "invalid JSON"),
        (b'{"a":[1,]}', "invalid JSON"),
        (b'{"a":[1 2]}', "invalid JSON"),
        (b'{"a":{"b"}}', "invalid JSON"),
        (b'{"a":[}', "mismatched"),
        (b'{"a":{]}', "mismatched"),
        (b'{"a":[1,<]}', "unexpected"),
        (b'{"a":"\\x"}', "invalid JSON"),
        (b'{"a":"\\u12"}', "invalid JSON"),
        (b'{"a":"tab\there"}', "invalid JSON"),
        (b'{"k\\q":1}', "key"),
        (b'{"a":"\xff"}', "UTF-8"),
        (b'{"a":["\xc3"]}', "UTF-8"),
        (b'{"\xe9":1}', "UTF-8"),
        (b'{"a":1}', None),  # control: valid
    ],
)
def test_invalid_json_is_a_protocol_error(raw: bytes, needle: str | None) -> None:
    if needle is None:
        assert parse_one(raw)[0] == {"a": 1}
        return
    for mode in FEEDS:
        reason = error_of(pieces_for(raw, mode))
        assert needle in reason, reason


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b'{"data":"abc"}', "odd"),
        (b'{"data":"a"}', "odd"),
        (b'{"data":"zz"}', "non-hex"),
        (b'{"data":"0g"}', "non-hex"),
        (b'{"data":"00 11"}', "non-hex"),
        (b'{"data":"0011z"}', "non-hex"),
        (b'{"data":"\\u0030\\u0030"}', "escape"),
        (b'{"data":"00\\"11"}', "escape"),
        (b'{"data":5}', "hex string or null"),
        (b'{"data":-1}', "hex string or null"),
        (b'{"data":true}', "hex string or null"),
        (b'{"data":{"a":1}}', "hex string or null"),
        (b'{"data":["00"]}', "hex string or null"),
        (b'{"data":nul}', "invalid JSON"),
        (b'{"data":"00","data":"00"}', "duplicate"),
        (b'{"data":null,"x":1,"data":"00"}', "duplicate"),
        (b'{"d\\u0061ta":"00","data":null}', "duplicate"),
    ],
)
def test_bad_data_is_a_protocol_error(raw: bytes, needle: str) -> None:
    for mode in FEEDS:
        reason = error_of(pieces_for(raw, mode))
        assert needle in reason, reason


def test_escaped_data_key_is_streamed() -> None:
    fields, _ = parse_one(b'{"d\\u0061ta":"6869"}')
    assert fields == {"data": b"hi"}


@pytest.mark.parametrize("name", ["gossip_reply_records", "file_data", "escapes", "numbers"])
def test_truncated_at_every_cut_point(name: str) -> None:
    raw = PROTOCOL_EXAMPLES[name]
    for cut in range(len(raw)):
        parser = MessageParser()
        parser.receive_data(raw[:cut])
        events = run(parser, [], eof=True)
        assert isinstance(events[-1], ProtocolError), cut
        assert events[-1].reason.startswith("truncated"), events[-1].reason
        assert all(isinstance(ev, DataChunk) for ev in events[:-1])


def test_eof_with_nothing_received() -> None:
    reason = error_of([], eof=True)
    assert reason.startswith("truncated")
    assert "before any data" in reason


def test_error_is_terminal() -> None:
    parser = MessageParser()
    parser.receive_data(b'{"a":1,,')
    first = parser.next_event()
    assert isinstance(first, ProtocolError)
    parser.receive_data(b'"b":2}')
    assert parser.next_event() is first
    parser.receive_data(b"")
    assert parser.next_event() is first
    assert not parser.complete


def test_control_limit() -> None:
    limits = Limits(max_control_bytes=100)
    exact = b'{"a":"' + b"x" * (100 - 8) + b'"}'
    assert len(exact) == 100
    assert parse_one(exact, limits)[0] == {"a": "x" * 92}
    over = b'{"a":"' + b"x" * 93 + b'"}'
    for mode in FEEDS:
        assert "larger than the limit" in error_of(pieces_for(over, mode), limits)
    # Leading whitespace counts too.
    assert "larger than the limit" in error_of(b" " * 101 + b"{}", limits)
    # Hex content does not count towards the control limit.
    big_data = b'{"data":"' + b"ab" * 1000 + b'"}'
    assert parse_one(big_data, limits)[0]["data"] == b"\xab" * 1000


def test_control_limit_detected_without_eof() -> None:
    parser = MessageParser(Limits(max_control_bytes=1000))
    parser.receive_data(b'{"files":[')
    for _ in range(200):
        parser.receive_data(b'{"a":1},')
    ev = parser.next_event()
    assert isinstance(ev, ProtocolError)
    assert "larger than the limit" in ev.reason


def test_key_too_long() -> None:
    ok = b'{"' + b"k" * 1024 + b'":1}'
    assert parse_one(ok)[0] == {"k" * 1024: 1}
    long = b'{"' + b"k" * 1025 + b'":1}'
    for mode in ("whole", "random"):
        assert "key longer" in error_of(pieces_for(long, mode))
    assert "key longer" in error_of(b'{"kkkkk":1}', Limits(max_key_bytes=4))
    # Only top-level keys are "keys"; long nested keys are just control bytes.
    nested = b'{"a":{"' + b"k" * 5000 + b'":1}}'
    assert parse_one(nested)[0] == {"a": {"k" * 5000: 1}}
    # A key that never ends fails at the key limit, not at the control limit.
    parser = MessageParser()
    parser.receive_data(b'{"')
    fed = 2
    while (ev := parser.next_event()) is NEED_DATA:
        parser.receive_data(b"k" * 100)
        fed += 100
    assert isinstance(ev, ProtocolError)
    assert "key longer" in ev.reason
    assert fed < 1300


def nest(depth: int) -> bytes:
    """A top-level object whose total nesting depth (the object itself = 1) is ``depth``."""
    inner = depth - 1
    return b'{"a":' + b"[" * (inner - 1) + b'{"b":1}' + b"]" * (inner - 1) + b"}"


def test_too_deep() -> None:
    assert parse_one(nest(32))[0] == json.loads(nest(32))
    for mode in ("whole", "one_byte"):
        assert "nesting deeper" in error_of(pieces_for(nest(33), mode))
    assert parse_one(nest(3), Limits(max_depth=3))[0] == {"a": [{"b": 1}]}
    assert "nesting deeper" in error_of(nest(4), Limits(max_depth=3))
    assert "nesting deeper" in error_of(b'{"a":[]}', Limits(max_depth=1))
    assert parse_one(b'{"a":1}', Limits(max_depth=1))[0] == {"a": 1}
    # Brackets inside strings do not count.
    raw = b'{"a":["' + b"[" * 100 + b'"]}'
    assert parse_one(raw)[0] == {"a": ["[" * 100]}


def test_data_too_large() -> None:
    limits = Limits(max_data_bytes=4)
    assert parse_one(b'{"data":"01020304"}', limits)[0]["data"] == b"\x01\x02\x03\x04"
    for mode in FEEDS:
        reason = error_of(pieces_for(b'{"data":"0102030405"}', mode), limits)
        assert "longer than the limit" in reason
    # Detected before the string ends (no need to wait for the closing quote).
    parser = MessageParser(Limits(max_data_bytes=1000))
    parser.receive_data(b'{"data":"')
    events = run(parser, [b"00" * 600, b"00" * 600])
    assert isinstance(events[-1], ProtocolError)
    assert sum(len(ev.data) for ev in events[:-1]) <= 1000


def test_limits_validation() -> None:
    assert Limits() == Limits(8 * 1024 * 1024, 1024, 32, None)
    with pytest.raises(ValueError, match="max_depth"):
        Limits(max_depth=0)
    with pytest.raises(ValueError, match="max_data_bytes"):
        Limits(max_data_bytes=-1)


def _feed_garbage(parser: MessageParser, chunks: Iterable[bytes]) -> tuple[Any, int]:
    """Feed chunks (continuing after an error, like a careless caller); return the first
    non-NEED_DATA event and the byte count fed when it appeared."""
    first: Any = None
    fed_at = -1
    for chunk in chunks:
        parser.receive_data(chunk)
        ev = parser.next_event()
        if ev is not NEED_DATA and first is None:
            first = ev
            fed_at = parser.bytes_received
    return first, fed_at


def test_100mb_of_random_garbage_fails_fast_with_small_memory() -> None:
    rng = random.Random(1234)
    total = 100 * 1024 * 1024
    size = 64 * 1024

    def chunks() -> Iterator[bytes]:
        for _ in range(total // size):
            yield rng.randbytes(size)

    parser = MessageParser()
    tracemalloc.start()
    try:
        first, fed_at = _feed_garbage(parser, chunks())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(first, ProtocolError)
    assert fed_at == size  # in the very first piece
    assert parser.bytes_received == total
    assert peak < 20 * 1024 * 1024


@pytest.mark.parametrize(
    ("prefix", "filler"),
    [
        (b'{"a":"', b"a"),  # a string value that never ends
        (b'{"a":[', b"1,"),  # an array that never ends
        (b'{"data":null,"a":{"b":"', b"\\\\"),  # escapes that never end
        (b"", b" "),  # whitespace forever
    ],
)
def test_endless_control_part_stops_at_the_limit_with_small_memory(
    prefix: bytes, filler: bytes
) -> None:
    size = 64 * 1024
    limit = Limits().max_control_bytes

    def chunks() -> Iterator[bytes]:
        if prefix:
            yield prefix
        piece = filler * (size // len(filler))
        for _ in range(200):  # 12.5 MiB, well past the 8 MiB limit
            yield piece

    parser = MessageParser()
    tracemalloc.start()
    try:
        first, fed_at = _feed_garbage(parser, chunks())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(first, ProtocolError)
    assert "larger than the limit" in first.reason
    assert limit < fed_at <= limit + size + len(prefix)
    assert peak < 20 * 1024 * 1024


def test_random_garbage_after_an_opening_brace_fails_fast() -> None:
    rng = random.Random(99)
    for _ in range(200):
        parser = MessageParser()
        first, fed_at = _feed_garbage(parser, [b'{"a":['] + [rng.randbytes(4096)] * 10)
        assert isinstance(first, ProtocolError)
        assert fed_at <= 6 + 4096 * 2  # within the first pieces, not at the 8 MiB limit


# --------------------------------------------------------------------------------------------
# Encoders and round trips


def test_encode_message_is_compact_utf8_json() -> None:
    fields = {"type": "ANNOUNCE", "from": "b\u00f6b", "file_size": 0.5, "n": None, "l": [1]}
    raw = encode_message(fields)
    assert raw == '{"type":"ANNOUNCE","from":"b\u00f6b","file_size":0.5,"n":null,"l":[1]}'.encode()
    assert not raw.endswith(b"\n")
    assert parse_one(raw)[0] == fields


def test_encode_message_bytes_data_as_hex_and_round_trip() -> None:
    raw = encode_message({"type": "FILE_DATA", "data": b"\x00\xffhi"})
    assert json.loads(raw)["data"] == "00ff6869"
    assert parse_one(raw)[0] == {"type": "FILE_DATA", "data": b"\x00\xffhi"}


def test_encode_message_lone_surrogate_falls_back_to_escapes() -> None:
    fields = {"peerId": "x\ud800y", "name": "\u00e9"}
    raw = encode_message(fields)
    raw.decode("utf-8")  # valid UTF-8
    assert json.loads(raw) == fields
    assert parse_one(raw)[0] == fields


def test_encode_message_rejects_nan() -> None:
    with pytest.raises(ValueError, match="JSON"):
        encode_message({"file_size": float("nan")})


def test_file_data_head_shape() -> None:
    head = encode_file_data_head({"type": "FILE_DATA", "file_name": "\u00e9.txt"})
    assert head == '{"type":"FILE_DATA","file_name":"\u00e9.txt","data":"'.encode()
    assert encode_file_data_head({}) == b'{"data":"'
    assert json.loads(encode_file_data_head({}) + FILE_DATA_TAIL) == {"data": ""}
    with pytest.raises(ValueError, match="data"):
        encode_file_data_head({"type": "FILE_DATA", "data": None})


def test_encode_data_chunk_is_lowercase_hex() -> None:
    assert encode_data_chunk(b"\xab\xcd\x01") == b"abcd01"
    assert encode_data_chunk(b"") == b""


def test_round_trip_1mib_random_bytes_random_splits() -> None:
    rng = random.Random(7)
    payload = rng.randbytes(1024 * 1024)
    fields = {"type": "FILE_DATA", **RECORD, "file_size": len(payload) / 1048576}
    raw_chunks = [payload[i : i + 65536] for i in range(0, len(payload), 65536)]
    wire = (
        encode_file_data_head(fields)
        + b"".join(encode_data_chunk(c) for c in raw_chunks)
        + FILE_DATA_TAIL
    )
    assert json.loads(wire) == {**fields, "data": payload.hex()}
    for seed in range(3):
        split_rng = random.Random(seed)
        pieces = list(split_random(wire, split_rng, max_piece=100_000))
        events = run(MessageParser(), pieces)
        got, data = collect(events)
        assert data == payload
        assert got == {**fields, "data": payload}
        assert len(events) - 1 <= len(pieces)


def _random_value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(8 if depth < 5 else 6)
    if kind == 0:
        return rng.randint(-(10**12), 10**12)
    if kind == 1:
        return rng.choice([0.0, -0.5, 1e-7, 1.5e300, rng.random() * 1e6])
    if kind == 2:
        alphabet = 'ab"\\/\n\t\x01 }{][,:\u00e9\u20ac\U0001f600'
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(8)))
    if kind == 3:
        return rng.choice([True, False])
    if kind == 4:
        return None
    if kind == 5:
        return rng.randrange(100)
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice(["x", "y", "\u00e9", 'q"', "a\\b", ""]): _random_value(rng, depth + 1)
        for _ in range(rng.randrange(4))
    }


KEYS = ["type", "host", "port", "peerId", "files", "k\u00e9y", 'q"uote', "back\\slash", "", "x"]


def _corpus(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        obj = {rng.choice(KEYS): _random_value(rng, 1) for _ in range(rng.randrange(6))}
        style = rng.randrange(4)
        if style == 0:
            text = json.dumps(obj)
        elif style == 1:
            text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        elif style == 2:
            text = json.dumps(obj, indent=1 if rng.random() < 0.5 else "\t")
        else:
            text = json.dumps(obj, ensure_ascii=False, indent=2) + "\n"
        out.append(text.encode("utf-8"))
    return out


def test_corpus_matches_json_loads() -> None:
    rng = random.Random(5)
    for raw in _corpus(300, seed=1):
        pieces = list(split_random(raw, rng, max_piece=rng.choice([1, 3, 17, 1000])))
        fields, _ = collect(run(MessageParser(), pieces))
        assert fields == json.loads(raw), raw


def _json_loads_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError:
        return None


def test_mutated_corpus_agrees_with_json_loads() -> None:
    """Single-byte mutations: whatever we accept, json.loads accepts identically (on the part
    before the trailing bytes); whatever json.loads rejects (with nothing after the object),
    we reject; and splitting the input differently changes nothing."""
    rng = random.Random(11)
    accepted = rejected = 0
    for raw in _corpus(150, seed=2):
        for _ in range(20):
            mutated = bytearray(raw)
            pos = rng.randrange(len(mutated))
            mutated[pos] = rng.choice(b'{}[]",:\\ 0a-.eE\xc3\xa9tnf\x00\x7f')
            data = bytes(mutated)
            events = run(MessageParser(), [data], eof=True)
            last = events[-1]
            # The same outcome (same fields or same reason) whatever the split.
            split = run(MessageParser(), list(split_random(data, rng, 5)), eof=True)
            assert split[-1] == last, data
            if isinstance(last, Message):
                accepted += 1
                parser = MessageParser()
                run(parser, [data], eof=True)
                body = data[: len(data) - len(parser.trailing)]
                assert last.fields == _json_loads_or_none(body), data
            else:
                assert isinstance(last, ProtocolError)
                rejected += 1
                assert not isinstance(_json_loads_or_none(data), dict), (data, last.reason)
    assert accepted > 100
    assert rejected > 100


def test_parse_one_errors_and_trailing() -> None:
    assert parse_one(b'{"a":1}\n') == ({"a": 1}, b"\n")
    with pytest.raises(CodecError, match="truncated"):
        parse_one(b'{"a":1')
    with pytest.raises(CodecError, match="odd"):
        parse_one(b'{"data":"0"}')
    assert issubclass(CodecError, ValueError)


def test_codec_is_sans_io() -> None:
    sources = sorted(Path(codec.__file__).parent.glob("codec*.py"))  # the codec and its parts
    assert len(sources) > 1
    trees = [ast.parse(p.read_text(encoding="utf-8")) for p in sources]
    imported: set[str] = set()
    for node in (n for tree in trees for n in ast.walk(tree)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported.isdisjoint({"asyncio", "socket", "selectors", "ssl", "trio", "anyio"})


def test_hex_helpers_agree_with_binascii() -> None:
    raw = bytes(range(256))
    assert encode_data_chunk(raw) == binascii.hexlify(raw)
