"""The TreeDrive extension's wire format as typed values (transport/extension.py, and how
wire.py carries the capabilities in and out of the core's messages). No sockets."""

from __future__ import annotations

from typing import Any

import pytest

from treedrive.core.messages import (
    RAW_PUSH,
    RAW_RANGE,
    Extension,
    FileData,
    GetFile,
    Gossip,
    GossipReply,
)
from treedrive.core.model import FileMeta
from treedrive.transport import codec, wire
from treedrive.transport.extension import (
    MAX_FEATURES,
    RangeHeader,
    RangeRequest,
    capabilities,
    push_header,
    range_header,
    range_request,
    ranged_get,
    raw_file_data,
)
from treedrive.transport.fields import MAX_GOSSIP_EXTRA_KEYS, WireError

FILE_ID = "ab" * 32
META = FileMeta(FILE_ID, "a.bin", 1.0, "alice", 1795617115)
BOTH = frozenset({RAW_PUSH, RAW_RANGE})


def gossip(**extra: Any) -> dict[str, Any]:
    return {"type": "GOSSIP", "host": "127.0.0.1", "port": 8270, "id": "g1", "peerId": "a", **extra}


def reply(**extra: Any) -> dict[str, Any]:
    base = {"type": "GOSSIP_REPLY", "host": "127.0.0.1", "port": 8271, "peerId": "b", "files": []}
    return base | extra


def through_the_wire(obj: dict[str, Any]) -> Any:
    """``obj`` encoded, parsed back by the codec, then decoded."""
    fields, _ = codec.parse_one(codec.encode_message(obj))
    return wire.decode(fields)


# -- capabilities ----------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [gossip, reply])
def test_capabilities_become_the_message_extension_and_leave_extra(make: Any) -> None:
    td = {"version": 1, "features": ["raw-range", "raw-push", "x-future"]}
    message = wire.decode(make(treedrive=td, x_color="red"))
    assert message.extension == Extension(BOTH | {"x-future"}, 1)
    assert dict(message.extra) == {"x_color": "red"}  # plugins get only unknown keys
    classic = wire.decode(make(x_color="red"))
    assert classic.extension is None
    assert dict(classic.extra) == {"x_color": "red"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),  # not an object: a classic peer, as before
        (5, None),
        ([1], None),
        ("raw-range", None),
        ({}, Extension(frozenset(), None)),  # an object: a TreeDrive peer...
        ({"version": 1, "features": "raw-range"}, Extension(frozenset(), 1)),  # ...no features
        ({"version": 1, "features": None}, Extension(frozenset(), 1)),
        ({"version": True, "features": []}, Extension(frozenset(), None)),
        ({"version": 10**400, "features": []}, Extension(frozenset(), None)),
        ({"version": -1, "features": []}, Extension(frozenset(), None)),
        ({"version": 2, "features": ["raw-range"]}, Extension(frozenset({RAW_RANGE}), 2)),
        (
            {"features": [1, None, "UPPER", "-x", "a" * 33, "a" * 32, "ok.1_x-y", ["raw-push"]]},
            Extension(frozenset({"a" * 32, "ok.1_x-y"}), None),
        ),
    ],
)
def test_a_malformed_treedrive_key_is_read_as_today(value: Any, expected: Any) -> None:
    for message in (wire.decode(gossip(treedrive=value)), wire.decode(reply(treedrive=value))):
        assert message.extension == expected
        assert "treedrive" not in message.extra


def test_only_the_first_features_are_read() -> None:
    names = [f"f{i:02d}" for i in range(MAX_FEATURES + 8)]
    got = capabilities({"treedrive": {"version": 1, "features": names}})
    assert got is not None
    assert got.features == frozenset(names[:MAX_FEATURES])
    assert MAX_FEATURES == 32


def test_capabilities_round_trip_through_the_wire() -> None:
    for ext in (Extension(BOTH), Extension(frozenset()), Extension(frozenset({"x"}), None)):
        out = GossipReply("127.0.0.1", 8271, "b", (META,), extra={"x_n": 1}, extension=ext)
        obj = wire.encode(out)
        back = through_the_wire(obj)
        assert back == GossipReply("127.0.0.1", 8271, "b", (META,), {"x_n": 1}, extension=ext)
        mine = Gossip("127.0.0.1", 8270, "g1", "a", extra={"x_n": 1}, extension=ext)
        assert through_the_wire(wire.encode(mine)).extension == ext


def test_what_the_node_sends_is_written_as_before() -> None:
    """Byte for byte the GOSSIP the node wrote when it built the key itself: plugin keys, then
    the capabilities, features sorted."""
    mine = Gossip("h", 1, "g1", "a", extra={"x_color": "blue"}, extension=Extension(BOTH))
    assert codec.encode_message(wire.encode(mine)) == (
        b'{"type":"GOSSIP","host":"h","port":1,"id":"g1","peerId":"a","x_color":"blue",'
        b'"treedrive":{"version":1,"features":["raw-push","raw-range"]}}'
    )
    # A classic node (no extension) sends no key; nor does a plugin's key take its place.
    plain = Gossip("h", 1, "g2", "a", extra={"treedrive": {"features": ["forged"]}})
    assert "treedrive" not in wire.encode(plain)
    assert "treedrive" not in wire.encode(GossipReply("h", 1, "a", (), extra=plain.extra))


def test_a_forwarded_gossip_leaves_as_it_came() -> None:
    for td in (
        {"version": 1, "features": ["z-last", "raw-range"]},  # unsorted: not rewritten
        {"features": "junk", "more": [1, 2]},
        "not even an object",
    ):
        obj = gossip(x_first=1, treedrive=td, x_last={"k": None})
        received = through_the_wire(obj)
        assert isinstance(received, Gossip)
        assert codec.encode_message(wire.encode(received)) == codec.encode_message(obj)


def test_the_treedrive_key_counts_among_a_gossips_unknown_keys() -> None:
    """It is forwarded too, so it is bounded with the others, as before."""
    extra = {f"x-{i}": i for i in range(MAX_GOSSIP_EXTRA_KEYS - 1)}
    message = wire.decode(gossip(**extra, treedrive={"features": []}))
    assert dict(message.extra) == extra
    with pytest.raises(WireError, match="unknown keys"):
        wire.decode(gossip(**extra, one_more=1, treedrive={"features": []}))


# -- ranged requests and raw headers ---------------------------------------------------------------
def test_other_messages_keep_the_key_out_of_extra() -> None:
    ask = ranged_get(FILE_ID, RangeRequest(5, None))
    message = wire.decode(ask | {"x": 1})
    assert message == GetFile(FILE_ID, {"x": 1})
    answer = wire.decode(raw_file_data(META, RangeHeader(0, 1, 1)))
    assert answer == FileData(META, {})  # raw bytes follow: a record, not "not here"


@pytest.mark.parametrize(
    "request_",
    [
        RangeRequest(0, None),
        RangeRequest(7, 0, "bob", None),
        RangeRequest(2**50, 2**50, "7951705", "9f2c4e1a7b3d5f60"),
    ],
)
def test_a_range_request_round_trips(request_: RangeRequest) -> None:
    obj = ranged_get(FILE_ID, request_)
    fields, _ = codec.parse_one(codec.encode_message(obj))
    assert range_request(fields) == request_
    assert wire.decode(fields) == GetFile(FILE_ID, {})


def test_a_range_request_is_written_with_todays_keys() -> None:
    assert ranged_get(FILE_ID, RangeRequest(0, 10, "bob", "d1")) == {
        "type": "GET_FILE",
        "file_id": FILE_ID,
        "treedrive": {"raw": True, "offset": 0, "length": 10, "from": "bob", "download": "d1"},
    }
    assert ranged_get(FILE_ID, RangeRequest(3, None))["treedrive"] == {
        "raw": True,
        "offset": 3,
        "length": None,
    }


def test_raw_headers_round_trip_and_are_written_with_todays_keys() -> None:
    answer = RangeHeader(10, 90, 100)
    obj = raw_file_data(META, answer)
    assert obj == {"type": "FILE_DATA", **META.wire(), "data": None, "treedrive": {
        "raw": True, "offset": 10, "length": 90, "size": 100,
    }}  # fmt: skip
    fields, _ = codec.parse_one(codec.encode_message(obj))
    assert range_header(fields) == answer
    assert push_header(fields) == answer  # a push that names no pusher

    push = RangeHeader(0, 100, 100, sender="bob")
    obj = raw_file_data(META, push)
    assert obj["treedrive"] == {"raw": True, "offset": 0, "length": 100, "size": 100, "from": "bob"}
    fields, _ = codec.parse_one(codec.encode_message(obj))
    assert push_header(fields) == push
    assert range_header(fields) == RangeHeader(0, 100, 100)  # an answer's header names no one


def test_a_bad_pusher_drops_a_push_but_not_a_ranged_answer() -> None:
    obj = {"treedrive": {"raw": True, "offset": 0, "length": 1, "size": 1, "from": "b\x1bob"}}
    assert range_header(obj) == RangeHeader(0, 1, 1)
    with pytest.raises(WireError, match="'from' holds a control character"):
        push_header(obj)
    assert push_header({"treedrive": {"raw": False, "from": "b\x1bob"}}) is None
    assert push_header({}) is None
