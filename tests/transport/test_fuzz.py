"""Property-based fuzzing of the wire boundary: the codec and treedrive.transport.wire.

(a) Random bytes and mutated valid messages, whole and in random pieces, through the incremental
    parser: it never raises, and ends in a Message, a ProtocolError, or NEED_DATA.
(b) Arbitrary JSON-like objects (lone surrogates, control characters, 401-digit ints, 1e308, wrong
    types in every field of every message type, nested junk) through ``wire.decode``: the only
    exception that escapes is WireError, and every decoded value is in range and safe to print,
    store, convert and re-encode.

Bounded for CI: a fixed number of examples, derandomized, no example database.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from treedrive.core import fileid
from treedrive.core.messages import (
    Announce,
    Delete,
    FileData,
    GetFile,
    Gossip,
    GossipReply,
    Message,
)
from treedrive.core.model import MEGABYTE, FileMeta
from treedrive.transport import codec, wire

SCALE = float(os.environ.get("TREEDRIVE_FUZZ_SCALE", "1"))
"""More examples for a deeper local run (``TREEDRIVE_FUZZ_SCALE=20``); CI runs the default."""


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


FILE_ID = "9ae9c20e3e6066e2cce37d7639810a0d9268a5ee117bfcf28ef99ed576f327fe"

# -- strategies ------------------------------------------------------------------------------------
CHARS = st.one_of(
    st.characters(max_codepoint=0xFF, exclude_categories=()),  # ASCII, C0, DEL, C1, Latin-1
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=()),
    st.characters(exclude_categories=()),
)
NASTY_TEXT_VALUES: list[Any] = [
    "²",
    "١٢٣",
    "\udc80",
    "\ud800x",
    "\x1b[2J\x07",
    "\x00",
    "\x85",
    "1e308",
    "1e400",
    "-1e400",
    "nan",
    "inf",
    "-1",
    "0x10",
    "9" * 401,
    "Sun Jun 15 21:36:41 2025",
    "",
    " 80",
    "65536",
    "8270",
    "127.0.0.1",
    "::1",
    "a" * 300,
    FILE_ID,
    FILE_ID.upper(),
    "1750028734.0",
    str(2**40 + 1),
]
NASTY_TEXT = st.sampled_from(NASTY_TEXT_VALUES)
TEXT = st.one_of(st.text(CHARS, max_size=16), NASTY_TEXT)
NASTY_NUMBER_VALUES: list[Any] = [
    *(1e308, -1e308, 10**400, -(10**400), 2**50, 2**50 + 1, 2**40, 2**40 + 1, 0, -0.0),
    *(65535, 65536, 5e-324, 1750028734.0, 1743970142.6140459, 8270, 2**63, -1),
]
NASTY_NUMBERS = st.sampled_from(NASTY_NUMBER_VALUES)
FINITE = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=False, allow_infinity=False),
    NASTY_NUMBERS,
)
NON_FINITE = st.sampled_from([math.inf, -math.inf, math.nan])
SCALAR = st.one_of(st.none(), st.booleans(), FINITE, TEXT)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=6,
)
"""What JSON can carry (what the codec can hand to wire.decode)."""


def field(valid: st.SearchStrategy[Any], *, nan: bool) -> st.SearchStrategy[Any]:
    """A value for a known field: often valid, else junk of any kind (non-finite floats only when
    the object is not going through JSON)."""
    junk = st.one_of(JSON, NON_FINITE) if nan else JSON
    return st.one_of(valid, NASTY_TEXT, NASTY_NUMBERS, junk)


VALID = {
    "host": st.sampled_from(["127.0.0.1", "localhost", "::1", "silicon.cs.umanitoba.ca"]),
    "port": st.one_of(st.integers(1, 65535), st.sampled_from(["8270", "1", "65535"])),
    "id": st.one_of(st.uuids().map(str), st.integers(0, 10**6)),
    "peer": st.one_of(
        st.sampled_from(["alice", "Starscourge Radahn", "TEST8!!!", "7951705"]), TEXT
    ),
    "file_id": st.one_of(st.just(FILE_ID), st.binary(min_size=32, max_size=32).map(bytes.hex)),
    "file_name": TEXT,
    "file_size": st.one_of(st.floats(0, 2**50), st.integers(0, 2**50), st.just("0.5")),
    "file_timestamp": st.one_of(
        st.integers(0, 2**40),
        st.floats(0, 2**40),
        st.sampled_from(["Sun Jun 15 21:36:41 2025", "1750028734"]),
    ),
}


def record(nan: bool) -> st.SearchStrategy[dict[str, Any]]:
    keys = ("file_name", "file_size", "file_id", "file_timestamp")
    known = {k: field(VALID[k], nan=nan) for k in keys}
    known["file_owner"] = field(VALID["peer"], nan=nan)
    return st.fixed_dictionaries({}, optional=known)


def treedrive_ext() -> st.SearchStrategy[Any]:
    ext = st.fixed_dictionaries(
        {"raw": st.one_of(st.just(True), st.just(True), JSON)},
        optional={
            "offset": st.one_of(st.integers(0, 2**50), JSON),
            "length": st.one_of(st.none(), st.integers(0, 2**50), JSON),
            "size": st.one_of(st.integers(0, 2**50), JSON),
            "from": field(VALID["peer"], nan=False),
            "download": st.one_of(st.text(max_size=70), JSON),
            "version": JSON,
            "features": JSON,
        },
    )
    return st.one_of(ext, JSON)


def message(nan: bool) -> st.SearchStrategy[dict[str, Any]]:
    """A message of any type, each known field valid or junk, with unknown keys (JSON only: they
    travel in ``extra`` and are re-encoded)."""
    peer = field(VALID["peer"], nan=nan)
    common = {"host": field(VALID["host"], nan=nan), "port": field(VALID["port"], nan=nan)}
    extra = st.dictionaries(TEXT, JSON, max_size=3)
    files = st.one_of(st.lists(st.one_of(record(nan), JSON), max_size=5), JSON)
    data = st.one_of(st.just(True), st.none(), st.just("00ff"), JSON)
    shapes: dict[str, dict[str, st.SearchStrategy[Any]]] = {
        "GOSSIP": {**common, "id": field(VALID["id"], nan=nan), "peerId": peer},
        "GOSSIP_REPLY": {**common, "peerId": peer, "files": files},
        "GET_FILE": {"file_id": field(VALID["file_id"], nan=nan), "treedrive": treedrive_ext()},
        "FILE_DATA": {"data": data, "treedrive": treedrive_ext()},
        "ANNOUNCE": {"from": peer},
        "DELETE": {"from": peer, "file_id": field(VALID["file_id"], nan=nan)},
    }

    def build(kind: Any, known: dict[str, Any], rec: dict[str, Any], more: dict[str, Any]) -> Any:
        obj = {**more, **known}
        if kind in ("FILE_DATA", "ANNOUNCE"):
            obj.update(rec)
        if kind is not None:
            obj["type"] = kind
        return obj

    kinds = st.one_of(st.sampled_from(wire.TYPES), st.sampled_from(wire.TYPES), JSON)
    return kinds.flatmap(
        lambda kind: st.builds(
            build,
            st.just(kind),
            st.fixed_dictionaries(
                {}, optional=shapes.get(kind, {}) if isinstance(kind, str) else {}
            ),
            record(nan),
            extra,
        )
    )


VALID_DATA = st.binary(min_size=1, max_size=8).map(bytes.hex)


def valid_message(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """A valid message of ``kind`` (the corruptions below start from it)."""
    rec = {k: VALID["peer" if k == "file_owner" else k] for k in wire.RECORD_KEYS}
    peer, common = VALID["peer"], {"host": VALID["host"], "port": VALID["port"]}
    files = st.lists(st.fixed_dictionaries(rec), max_size=3)
    shapes: dict[str, dict[str, st.SearchStrategy[Any]]] = {
        "GOSSIP": {**common, "id": VALID["id"], "peerId": peer},
        "GOSSIP_REPLY": {**common, "peerId": peer, "files": files},
        "GET_FILE": {"file_id": VALID["file_id"]},
        "FILE_DATA": {**rec, "data": VALID_DATA},
        "ANNOUNCE": {**rec, "from": peer},
        "DELETE": {"from": peer, "file_id": VALID["file_id"]},
    }
    return st.fixed_dictionaries({"type": st.just(kind), **shapes[kind]})


_IDENT_NASTY = ["\udc80", "a\x00", "\x9b", "x" * 257, "", 10**400, 10**32, 1e308, True, math.nan]
FIELD_NASTY: dict[str, list[Any]] = {
    "host": ["\x1b[31m", "a b", "[::1]", "h" * 256, "", "ex\u00e4mple", "127.0.0.1\n", 12],
    "port": ["²", "١٢٣", "0", "65536", "8270.0", " 80", "000080", 8270.0, True, 0, 65536, 10**400],
    "id": ["x" * 129, *_IDENT_NASTY],
    "peerId": _IDENT_NASTY,
    "from": _IDENT_NASTY,
    "file_owner": _IDENT_NASTY,
    "file_id": ["abc", FILE_ID + "0", "\u00e9" * 64, 10**400, None],
    "file_name": ["\udc80", "\x1b]0;x\x07", "x" * 5000, 5, None],
    "file_size": [1e308, 10**400, -1, 2**50 + 1, "1e400", "abc", "", True, math.inf, math.nan],
    "file_timestamp": [1e308, 10**400, -1, 2**40 + 1, "1e308", "1" * 40, "\x1b", True, math.inf],
    "files": [5, "x", {"a": 1}, [0, 0, 0]],
    "data": [[], 5, "zz"],
}


def nasty_for(key: str, nan: bool) -> st.SearchStrategy[Any]:
    values = [
        v
        for v in FIELD_NASTY.get(key, [None])
        if nan or not (isinstance(v, float) and not math.isfinite(v))
    ]
    generic = [NASTY_TEXT, NASTY_NUMBERS, JSON, *[NON_FINITE] * (nan and key in FIELD_NASTY)]
    return st.one_of(st.sampled_from(values), st.sampled_from(values), *generic)


@st.composite
def corrupted(draw: st.DrawFn, nan: bool) -> dict[str, Any]:
    """A valid message with one to three fields (its own, or a record's) made junk or removed."""
    obj = draw(st.sampled_from(wire.TYPES).flatmap(valid_message))
    for _ in range(draw(st.integers(1, 3))):
        target = obj
        records = obj.get("files")
        if isinstance(records, list) and records and draw(st.booleans()):
            target = draw(st.sampled_from(records))
        keys = sorted(k for k in target if k != "type") if isinstance(target, dict) else []
        if not keys:
            continue
        key, op = draw(st.sampled_from(keys)), draw(st.integers(0, 6))
        if op == 0:
            del target[key]
        elif op == 1:  # big or many unknown keys (a GOSSIP is forwarded: an amplifier)
            width = draw(st.sampled_from([16 * 1024, 40]))
            target.update({"pad": "p" * width} if width > 40 else {f"k{i}": i for i in range(40)})
        else:
            target[key] = draw(nasty_for(key, nan))
    return obj


# -- what a decoded value must be ------------------------------------------------------------------
def unshowable(char: str) -> bool:
    """C0, DEL, C1 or a lone surrogate (independent of the module under test)."""
    code = ord(char)
    return code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF


def check_text(value: Any, limit: int, *, empty: bool = False) -> None:
    assert isinstance(value, str)
    assert empty or value
    assert len(value) <= limit
    assert not any(unshowable(c) for c in value)
    value.encode("utf-8")  # strict: no lone surrogate
    json.dumps(value)


def check_meta(meta: FileMeta) -> None:
    assert fileid.is_file_id(meta.file_id)
    check_text(meta.file_name, wire.MAX_FILE_NAME, empty=True)
    check_text(meta.file_owner, wire.MAX_PEER_ID)
    size = meta.file_size
    assert type(size) is float
    assert math.isfinite(size)
    assert 0 <= size <= wire.MAX_FILE_SIZE
    str(size), float(size), round(size * MEGABYTE), int(size)
    ts = meta.file_timestamp
    assert not isinstance(ts, bool)
    if isinstance(ts, str):
        check_text(ts, wire.MAX_TIMESTAMP_TEXT)
    else:
        assert isinstance(ts, int | float)
        assert math.isfinite(ts)
        assert 0 <= ts <= wire.MAX_TIMESTAMP
        str(ts), float(ts), int(ts)
    assert math.isfinite(fileid.timestamp_value(ts))
    assert 0 <= fileid.timestamp_value(ts) <= wire.MAX_TIMESTAMP
    fileid.timestamp_suffixes(ts)


def check_message(message: Message) -> None:
    if isinstance(message, Gossip | GossipReply):
        assert isinstance(message.host, str)
        assert 0 < len(message.host) <= wire.MAX_HOST
        assert message.host.isascii()
        assert message.host.isprintable()
        assert type(message.port) is int
        assert 1 <= message.port <= 65535
        check_text(message.peer_id, wire.MAX_PEER_ID)
    if isinstance(message, Gossip):
        check_text(message.id, wire.MAX_GOSSIP_ID)
        assert len(message.extra) <= wire.MAX_GOSSIP_EXTRA_KEYS
    elif isinstance(message, GossipReply):
        assert len(message.files) <= wire.MAX_RECORDS
        assert message.skipped >= 0
        for meta in message.files:
            check_meta(meta)
    elif isinstance(message, GetFile | Delete):
        assert fileid.is_file_id(message.file_id)
    if isinstance(message, Announce | Delete):
        check_text(message.from_peer, wire.MAX_PEER_ID)
    if isinstance(message, Announce | FileData) and message.meta is not None:
        check_meta(message.meta)
    for parse in (wire.range_request, wire.range_header):
        try:
            got = parse(message.extra)
        except wire.WireError:
            continue
        for name in ("offset", "length", "size"):
            number = getattr(got, name, None)
            assert number is None or (type(number) is int and 0 <= number <= wire.MAX_FILE_BYTES)
        if isinstance(got, wire.RangeRequest):
            for label, limit in ((got.asker, wire.MAX_PEER_ID), (got.download, 64)):
                if label is not None:
                    check_text(label, limit)
        if isinstance(got, wire.RangeHeader):
            assert got.offset + got.length <= got.size
    # It goes back out: encode, then the codec writes it, and it reads back the same.
    encoded = codec.encode_message(wire.encode(message))
    if isinstance(message, Gossip):
        assert len(encoded) <= wire.MAX_GOSSIP_BYTES
    if not isinstance(message, FileData):  # a FILE_DATA goes out with its data, not without
        again = wire.decode(json.loads(encoded))
        assert json.loads(codec.encode_message(wire.encode(again))) == json.loads(encoded)


def decode_checked(obj: Any) -> Message | None:
    """``wire.decode`` of anything: a WireError, or a message that passes ``check_message``."""
    try:
        message = wire.decode(obj)
    except wire.WireError:
        return None
    check_message(message)
    return message


# -- (a) the codec ---------------------------------------------------------------------------------
VALID_MESSAGES = [
    codec.encode_message(m)
    for m in (
        {"type": "GOSSIP", "host": "127.0.0.1", "port": 8270, "id": "g-1", "peerId": "alice"},
        {
            "type": "GOSSIP_REPLY",
            "host": "127.0.0.1",
            "port": 8271,
            "peerId": "bob",
            "files": [
                {
                    "file_name": "names.txt",
                    "file_size": 0.0014142990112304688,
                    "file_id": FILE_ID,
                    "file_owner": "peer05",
                    "file_timestamp": 1750028734.0,
                }
            ],
        },
        {"type": "GET_FILE", "file_id": FILE_ID, "treedrive": {"raw": True, "offset": 0}},
        {
            "type": "FILE_DATA",
            "file_name": "a",
            "file_size": 3,
            "file_id": FILE_ID,
            "file_owner": "x",
            "file_timestamp": "Sun Jun 15 21:36:41 2025",
            "data": b"\x00\x01\xfe\xff",
        },
        {"type": "ANNOUNCE", "from": "bob", "file_name": "a", "file_size": 1, "file_id": FILE_ID}
        | {"file_owner": 7951705, "file_timestamp": 1},
        {"type": "DELETE", "from": "alice", "file_id": FILE_ID},
    )
]
MUTATION = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "replace", "cut", "repeat"]),
    st.integers(0, 1 << 16),
    st.binary(min_size=1, max_size=8),
)


def mutate(data: bytes, mutations: list[tuple[str, int, bytes]]) -> bytes:
    buf = bytearray(data)
    for op, where, chunk in mutations:
        at = where % (len(buf) + 1)
        if op == "flip" and at < len(buf):
            buf[at] ^= chunk[0] or 1
        elif op == "insert":
            buf[at:at] = chunk
        elif op == "delete":
            del buf[at : at + len(chunk)]
        elif op == "replace":
            buf[at : at + len(chunk)] = chunk
        elif op == "cut":
            del buf[at:]
        elif op == "repeat":
            buf[at:at] = buf[at : at + 1 + chunk[0] % 64] * 2
    return bytes(buf)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def parse_pieces(pieces: list[bytes], eof: bool) -> codec.Event:
    """Feed the pieces (then EOF if asked); return the last event: it must be terminal or
    NEED_DATA, and everything before it DataChunks."""
    parser = codec.MessageParser()
    last: codec.Event = codec.NEED_DATA
    pieces = [p for p in pieces if p]  # an empty piece would mean EOF
    for piece in [*pieces, b""] if eof else pieces:
        if isinstance(last, codec.Message | codec.ProtocolError):
            parser.receive_data(piece)  # after the end: kept as trailing, never an error
            continue
        parser.receive_data(piece)
        while True:
            event = parser.next_event()
            assert isinstance(event, codec.DataChunk | codec.Message | codec.ProtocolError) or (
                event is codec.NEED_DATA
            )
            if event is codec.NEED_DATA:
                break
            last = event
            if isinstance(event, codec.Message | codec.ProtocolError):
                break
    if eof:
        assert isinstance(last, codec.Message | codec.ProtocolError)
    return last


@fuzz(300)
@given(data=st.binary(max_size=512), cuts=st.lists(st.integers(0, 1 << 16), max_size=8))
def test_random_bytes_never_break_the_parser(data: bytes, cuts: list[int]) -> None:
    for eof in (False, True):
        for pieces in ([data], split(data, cuts)):
            event = parse_pieces(pieces, eof)
            if isinstance(event, codec.Message):
                decode_checked(event.fields)


@fuzz(300)
@given(
    base=st.sampled_from(VALID_MESSAGES),
    mutations=st.lists(MUTATION, max_size=4),
    cuts=st.lists(st.integers(0, 1 << 16), max_size=8),
    eof=st.booleans(),
)
def test_mutated_messages_never_break_the_parser_or_the_decoder(
    base: bytes, mutations: list[tuple[str, int, bytes]], cuts: list[int], eof: bool
) -> None:
    data = mutate(base, mutations)
    whole = parse_pieces([data], eof)
    pieced = parse_pieces(split(data, cuts), eof)
    assert type(whole) is type(pieced)  # how it was split never matters
    if isinstance(whole, codec.Message):
        assert isinstance(pieced, codec.Message)
        assert pieced.fields == whole.fields
        decode_checked(whole.fields)


# -- (b) wire.decode -------------------------------------------------------------------------------
BASES: dict[str, dict[str, Any]] = {
    "GOSSIP": {"type": "GOSSIP", "host": "127.0.0.1", "port": 8270, "id": "g", "peerId": "p"},
    "GOSSIP_REPLY": {"type": "GOSSIP_REPLY", "host": "::1", "port": "8271", "peerId": "p"},
    "GET_FILE": {"type": "GET_FILE", "file_id": FILE_ID},
    "FILE_DATA": {"type": "FILE_DATA", "data": True},
    "ANNOUNCE": {"type": "ANNOUNCE", "from": "bob"},
    "DELETE": {"type": "DELETE", "from": "alice", "file_id": FILE_ID},
}
GOOD_RECORD = {
    "file_name": "a.txt",
    "file_size": 0.5,
    "file_id": FILE_ID,
    "file_owner": "PROF",
    "file_timestamp": 1750000000,
}


def every_corruption() -> list[dict[str, Any]]:
    """Each known-nasty value, in each field of each message type (and of a reply's record)."""
    generic = [*NASTY_TEXT_VALUES, *NASTY_NUMBER_VALUES, math.inf, -math.inf, math.nan]
    generic += [None, True, False, [], {}, [1], {"a": 1}]
    out: list[dict[str, Any]] = []
    for kind, base in BASES.items():
        good = dict(base)
        if kind in ("FILE_DATA", "ANNOUNCE"):
            good.update(GOOD_RECORD)
        if kind == "GOSSIP_REPLY":
            good["files"] = [GOOD_RECORD]
            for key in GOOD_RECORD:
                for value in [*FIELD_NASTY[key], *generic]:
                    out.append(good | {"files": [GOOD_RECORD, GOOD_RECORD | {key: value}]})
        for key in good:
            if key != "type":
                out.extend(good | {key: value} for value in [*FIELD_NASTY.get(key, []), *generic])
    return out


def test_every_nasty_value_in_every_field_is_refused_or_safe() -> None:
    cases = every_corruption()
    assert len(cases) > 1500
    outcomes = [decode_checked(obj) is not None for obj in cases]
    assert any(outcomes)
    assert not all(outcomes)


@fuzz(100)
@given(obj=message(nan=True))
def test_decode_of_any_object_is_wire_error_or_a_valid_message(obj: Any) -> None:
    decode_checked(obj)


@fuzz(600)
@given(obj=corrupted(nan=True))
def test_decode_of_a_corrupted_message_is_wire_error_or_a_valid_message(obj: Any) -> None:
    decode_checked(obj)


@fuzz(150)
@given(
    obj=st.one_of(JSON, message(nan=False), corrupted(nan=False)),
    cuts=st.lists(st.integers(0, 1 << 16), max_size=4),
)
def test_any_json_message_through_the_codec_then_decode(obj: Any, cuts: list[int]) -> None:
    if not isinstance(obj, dict):
        obj = {"type": "GOSSIP", "x": obj}
    fields, data = dict(obj), obj.get("data")
    if data is True:
        fields["data"] = b"\x01\x02"  # the codec writes bytes as hex
    elif data is not None and not isinstance(data, str):
        fields.pop("data")  # the codec refuses a "data" that is neither hex nor null
    elif isinstance(data, str) and (len(data) % 2 or not data.isascii() or not data.isalnum()):
        fields.pop("data")
    event = parse_pieces(split(codec.encode_message(fields), cuts), eof=True)
    if isinstance(event, codec.Message):
        decode_checked(event.fields)


@fuzz(100)
@given(records=st.lists(st.one_of(record(nan=True), JSON), max_size=6))
def test_a_bad_record_is_skipped_alone(records: list[Any]) -> None:
    obj = {"type": "GOSSIP_REPLY", "host": "127.0.0.1", "port": 1, "peerId": "p", "files": records}
    message = decode_checked(obj)
    assert isinstance(message, GossipReply)
    good = 0
    for item in records:
        try:
            wire.file_meta(item)
        except wire.WireError:
            continue
        good += 1
    assert (len(message.files), message.skipped) == (good, len(records) - good)


@fuzz(150)
@given(ext=treedrive_ext(), nan=NON_FINITE)
def test_range_parsers_raise_only_wire_error(ext: Any, nan: float) -> None:
    for extra in ({"treedrive": ext}, {"treedrive": {"raw": True, "offset": nan, "size": nan}}):
        for parse in (wire.range_request, wire.range_header):
            try:
                got = parse(extra)
            except wire.WireError:
                continue
            if got is not None:
                assert 0 <= got.offset <= wire.MAX_FILE_BYTES
