"""Every limit of the wire boundary (treedrive.transport.wire), one test per rule.

THREATS.md: every input has a limit, and every limit has a test. Each test checks both sides of
its limit, so that it fails if the limit moves or goes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from treedrive.core import fileid
from treedrive.core.messages import Announce, Delete, FileData, GetFile, Gossip, GossipReply
from treedrive.core.model import MEGABYTE
from treedrive.transport import codec, wire
from treedrive.transport.wire import (
    MAX_DOWNLOAD_ID,
    MAX_FILE_BYTES,
    MAX_FILE_NAME,
    MAX_FILE_SIZE,
    MAX_GOSSIP_BYTES,
    MAX_GOSSIP_EXTRA_KEYS,
    MAX_GOSSIP_ID,
    MAX_HOST,
    MAX_PEER_ID,
    MAX_RECORDS,
    MAX_TIMESTAMP,
    MAX_TIMESTAMP_TEXT,
    RangeHeader,
    RangeRequest,
    WireError,
    decode,
    file_meta,
    range_header,
    range_request,
)

DATA = Path(__file__).resolve().parent.parent / "data"
FILE_ID = "ab" * 32
RECORD: dict[str, Any] = {
    "file_name": "hello.txt",
    "file_size": 0.5,
    "file_id": FILE_ID,
    "file_owner": "alice",
    "file_timestamp": 1750000000,
}
CONTROL = ["\x00", "\x07", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9b", "\x9f"]
SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff"]
UNSHOWABLE = CONTROL + SURROGATES


def gossip(**fields: Any) -> dict[str, Any]:
    return {"type": "GOSSIP", "host": "127.0.0.1", "port": 8270, "id": "g-1", "peerId": "eve"} | (
        fields
    )


def reply(files: list[Any], **fields: Any) -> dict[str, Any]:
    base = {"type": "GOSSIP_REPLY", "host": "127.0.0.1", "port": 8271, "peerId": "bob"}
    return base | {"files": files} | fields


def record(**fields: Any) -> dict[str, Any]:
    return RECORD | fields


def ranged(**ext: Any) -> dict[str, Any]:
    return {"treedrive": {"raw": True, **ext}}


# -- identifiers -----------------------------------------------------------------------------------
IDENTIFIERS = [  # (message builder, key, limit)
    (lambda v: gossip(peerId=v), "peerId", MAX_PEER_ID),
    (lambda v: gossip(id=v), "id", MAX_GOSSIP_ID),
    (lambda v: reply([], peerId=v), "peerId", MAX_PEER_ID),
    (lambda v: {"type": "ANNOUNCE", "from": v, **RECORD}, "from", MAX_PEER_ID),
    (lambda v: {"type": "DELETE", "from": v, "file_id": FILE_ID}, "from", MAX_PEER_ID),
    (lambda v: {"type": "ANNOUNCE", "from": "bob", **record(file_owner=v)}, "file_owner", 256),
]


@pytest.mark.parametrize(("build", "key", "limit"), IDENTIFIERS)
def test_identifier_length_is_bounded(build: Any, key: str, limit: int) -> None:
    decode(build("x" * limit))
    with pytest.raises(WireError, match=f"'{key}' is too long"):
        decode(build("x" * (limit + 1)))
    with pytest.raises(WireError, match=f"'{key}' must be a non-empty string"):
        decode(build(""))
    assert (MAX_PEER_ID, MAX_GOSSIP_ID) == (256, 128)


@pytest.mark.parametrize(("build", "key", "limit"), IDENTIFIERS)
@pytest.mark.parametrize("char", UNSHOWABLE)
def test_identifier_refuses_control_characters_and_lone_surrogates(
    build: Any, key: str, limit: int, char: str
) -> None:
    with pytest.raises(WireError, match=f"'{key}' holds a control character"):
        decode(build(f"alice{char}"))


@pytest.mark.parametrize("name", ["alice", "Starscourge Radahn", "TEST8!!!", "Zoë 🚀", "a\u2028b"])
def test_identifier_keeps_printable_unicode(name: str) -> None:
    message = decode(gossip(peerId=name))
    assert isinstance(message, Gossip)
    assert message.peer_id == name


def test_identifier_as_a_number_is_read_as_text_and_bounded() -> None:
    announce = decode({"type": "ANNOUNCE", "from": 7951705, **record(file_owner=42)})
    assert isinstance(announce, Announce)
    assert (announce.from_peer, announce.meta.file_owner) == ("7951705", "42")
    assert decode(gossip(id=-(10**31) + 1)).id == str(-(10**31) + 1)  # type: ignore[union-attr]
    assert decode(gossip(peerId=1.5)).peer_id == "1.5"  # type: ignore[union-attr]
    for number in (10**32, -(10**32), 10**400):
        with pytest.raises(WireError, match="'peerId' is a number with too many digits"):
            decode(gossip(peerId=number))
    with pytest.raises(WireError, match="'peerId' is not a finite number"):
        decode(gossip(peerId=math.inf))
    not_ids: tuple[Any, ...] = (True, None, [], {})
    for value in not_ids:
        with pytest.raises(WireError, match="'peerId' must be a non-empty string"):
            decode(gossip(peerId=value))


# -- host ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "::1", "fe80::1%eth0", "silicon.cs.umanitoba.ca", "my_host-2", "h" * MAX_HOST],
)
def test_host_accepts_names_and_ip_literals(host: str) -> None:
    assert MAX_HOST == 255
    assert decode(gossip(host=host)).host == host  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("h" * (MAX_HOST + 1), "'host' is too long"),
        ("", "'host' must be a non-empty string"),
        (12, "'host' must be a non-empty string"),
        ("a b", "'host' must be a host name"),
        ("evil/../x", "'host' must be a host name"),
        ("\x1b[31mred", "'host' must be a host name"),
        ("exämple.com", "'host' must be a host name"),
        ("[::1]", "'host' must be a host name"),
        ("127.0.0.1\n", "'host' must be a host name"),
        ("127.0.0.1\udc80", "'host' must be a host name"),
    ],
)
def test_host_refuses_what_no_host_can_hold(host: Any, why: str) -> None:
    with pytest.raises(WireError, match=why):
        decode(gossip(host=host))
    with pytest.raises(WireError, match=why):
        decode(reply([], host=host))


# -- port ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("port", "value"), [(1, 1), (65535, 65535), ("8270", 8270), ("00080", 80)])
def test_port_accepts_ints_and_ascii_digit_strings(port: Any, value: int) -> None:
    decoded = decode(gossip(port=port))
    assert isinstance(decoded, Gossip)
    assert decoded.port == value
    assert type(decoded.port) is int


@pytest.mark.parametrize(
    "port",
    [
        *(0, 65536, -1, 10**400, True, 8270.0, None, [8270]),
        *("", "²", "١٢٣", "\uff18\uff12\uff17\uff10", "123456", " 80", "80\n"),
        *("0", "65536", "-80", "+80", "8_0", "000080", "0008270"),
    ],
)
def test_port_refuses_everything_else(port: Any) -> None:
    with pytest.raises(WireError, match="'port' must be a port number"):
        decode(gossip(port=port))


# -- file_name -------------------------------------------------------------------------------------
def test_file_name_is_a_cleaned_label_not_a_reason_to_drop_the_record() -> None:
    names = {
        "a\x00b/../x": "a\ufffdb/../x",
        "\x1b]0;pwned\x07": "\ufffd]0;pwned\ufffd",
        "bad\udc80name\x85": "bad\ufffdname\ufffd",
        "../../etc/passwd": "../../etc/passwd",
        "": "",
        "x" * (MAX_FILE_NAME + 10): "x" * MAX_FILE_NAME,
    }
    for sent, kept in names.items():
        assert file_meta(record(file_name=sent)).file_name == kept
    assert MAX_FILE_NAME == 4096
    for bad in (None, 12, ["a"], {"a": 1}):
        with pytest.raises(WireError, match="'file_name' must be a string"):
            file_meta(record(file_name=bad))


# -- file_size -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "value"),
    [
        (0.0014142990112304688, 0.0014142990112304688),
        (922, 922.0),
        ("0.5", 0.5),
        (" 7 ", 7.0),
        (None, 0.0),
        (0, 0.0),
        (-0.0, 0.0),
        (2**50, float(2**50)),
        (float(2**50), float(2**50)),
    ],
)
def test_file_size_accepts_sane_numbers_in_mb_or_bytes(size: Any, value: float) -> None:
    meta = file_meta(record(file_size=size))
    assert meta.file_size == value
    assert type(meta.file_size) is float
    assert math.copysign(1.0, meta.file_size) == 1.0
    round(meta.file_size * MEGABYTE)  # what the core does with it: must not raise
    assert file_meta({k: v for k, v in RECORD.items() if k != "file_size"}).file_size == 0.0


@pytest.mark.parametrize(
    "size",
    [
        *(2**50 + 1, 1e308, -1, -1e-9, 10**400, -(10**400), math.inf, math.nan),
        *("1e400", "nan", "inf", "-1", "abc", "", "1" * 33, "\uff11\uff12", True, False, [], {}),
    ],
)
def test_file_size_out_of_range_or_not_a_number_makes_the_record_invalid(size: Any) -> None:
    with pytest.raises(WireError, match="'file_size'"):
        file_meta(record(file_size=size))
    assert MAX_FILE_SIZE == 2**50


# -- file_timestamp --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ts",
    [
        *(0, 1750000000, MAX_TIMESTAMP, 1750028734.0, 1743970142.6140459, float(MAX_TIMESTAMP)),
        *("Sun Jun 15 21:36:41 2025", "1750028734.0", "1750028734", "x" * MAX_TIMESTAMP_TEXT),
    ],
)
def test_file_timestamp_accepts_ints_floats_and_short_strings_in_range(ts: Any) -> None:
    meta = file_meta(record(file_timestamp=ts))
    assert meta.file_timestamp == ts
    assert type(meta.file_timestamp) is type(ts)
    fileid.timestamp_value(meta.file_timestamp)
    assert fileid.timestamp_suffixes(meta.file_timestamp)


@pytest.mark.parametrize(
    "ts",
    [
        *(MAX_TIMESTAMP + 1, -1, -0.5, 10**400, 1e308, math.inf, -math.inf, math.nan),
        *(str(MAX_TIMESTAMP + 1), "1e308", "-5", "1" * 40, "x" * (MAX_TIMESTAMP_TEXT + 1), ""),
        *("Jun\x1b[2J", "Jun\udc80", None, True, [1750000000], {"t": 1}),
    ],
)
def test_file_timestamp_out_of_range_or_unshowable_makes_the_record_invalid(ts: Any) -> None:
    with pytest.raises(WireError, match="'file_timestamp'"):
        file_meta(record(file_timestamp=ts))
    assert (MAX_TIMESTAMP, MAX_TIMESTAMP_TEXT) == (2**40, 32)


def test_fileid_timestamp_helpers_are_total() -> None:
    for ts in (10**400, -(10**5000), 10**5000, 1e308, math.inf, math.nan, "1e999", "9" * 5000):
        value = fileid.timestamp_value(ts)
        assert math.isfinite(value)
        fileid.timestamp_suffixes(ts)
    assert fileid.timestamp_value(10**400) == 0.0
    assert fileid.timestamp_suffixes(10**5000) == []
    assert fileid.timestamp_suffixes("\udc80") == [b"\xed\xb2\x80"]
    assert fileid.timestamp_suffixes(1750028734.9) == [b"1750028734"]
    assert fileid.timestamp_suffixes("12.7") == [b"12.7", b"12"]


# -- GOSSIP_REPLY ----------------------------------------------------------------------------------
def test_gossip_reply_decodes_at_most_max_records_and_counts_the_rest() -> None:
    files = [record(file_id=f"{i:064x}") for i in range(MAX_RECORDS + 7)]
    message = decode(reply(files))
    assert isinstance(message, GossipReply)
    assert len(message.files) == MAX_RECORDS == 10_000
    assert message.files[-1].file_id == f"{MAX_RECORDS - 1:064x}"
    assert message.skipped == 7
    # Junk past the limit is never looked at: counted, not decoded.
    junk = decode(reply([record()] * MAX_RECORDS + [0] * 100_000))
    assert isinstance(junk, GossipReply)
    assert (len(junk.files), junk.skipped) == (MAX_RECORDS, 100_000)


BAD_RECORDS: dict[str, Any] = {
    "not an object": ["a list"],
    "no file_id": {k: v for k, v in RECORD.items() if k != "file_id"},
    "short file_id": record(file_id="abc"),
    "file_id with a surrogate": record(file_id="\udc80" * 64),
    "file_name not a string": record(file_name=5),
    "file_size huge": record(file_size=1e308),
    "file_size 401 digits": record(file_size=10**400),
    "file_size negative": record(file_size=-1),
    "file_size a word": record(file_size="big"),
    "file_owner missing": record(file_owner=None),
    "file_owner with ESC": record(file_owner="al\x1bice"),
    "file_owner with a surrogate": record(file_owner="al\ud800ice"),
    "file_owner too long": record(file_owner="o" * 257),
    "file_owner 401 digits": record(file_owner=10**400),
    "file_timestamp missing": record(file_timestamp=None),
    "file_timestamp huge": record(file_timestamp=1e308),
    "file_timestamp 401 digits": record(file_timestamp=10**400),
    "file_timestamp long string": record(file_timestamp="1" * 33),
    "file_timestamp a bool": record(file_timestamp=True),
}


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_gossip_reply_skips_a_bad_record_alone(case: str) -> None:
    good = [record(file_id="01" * 32), record(file_id="02" * 32)]
    message = decode(reply([good[0], BAD_RECORDS[case], good[1]]))
    assert isinstance(message, GossipReply)
    assert [m.file_id for m in message.files] == ["01" * 32, "02" * 32]
    assert message.skipped == 1


@pytest.mark.parametrize(
    "message",
    [
        reply("nope"),  # type: ignore[arg-type]
        reply({"a": 1}),  # type: ignore[arg-type]
        reply([record()], port="²"),
        reply([record()], host="\x1b"),
        reply([record()], peerId="b\udc80b"),
        reply([record()], peerId=10**400),
    ],
)
def test_a_bad_gossip_reply_raises_wire_error(message: dict[str, Any]) -> None:
    with pytest.raises(WireError):
        decode(message)


# -- GOSSIP ----------------------------------------------------------------------------------------
def test_gossip_unknown_keys_are_bounded() -> None:
    extra = {f"x-{i}": i for i in range(MAX_GOSSIP_EXTRA_KEYS)}
    message = decode(gossip(**extra))
    assert isinstance(message, Gossip)
    assert dict(message.extra) == extra
    with pytest.raises(WireError, match="unknown keys"):
        decode(gossip(**extra, one_more=1))
    assert MAX_GOSSIP_EXTRA_KEYS == 32


def padded_gossip(total: int, pad: str = "p") -> dict[str, Any]:
    """A GOSSIP whose forwarded encoding is exactly ``total`` bytes (``pad`` repeated, then
    ASCII to make up the rest)."""
    base = gossip(treedrive={"version": 1, "features": ["raw-range"]}, pad="")
    room = total - len(codec.encode_message(base))
    width = len(codec.encode_message({"p": pad})) - len(codec.encode_message({"p": ""}))
    count = room // width
    base["pad"] = pad * count + "p" * (room - count * width)
    assert len(codec.encode_message(base)) == total
    return base


def test_gossip_is_bounded_as_forwarded() -> None:
    fits = padded_gossip(MAX_GOSSIP_BYTES)
    message = decode(fits)
    assert isinstance(message, Gossip)
    assert codec.encode_message(wire.encode(message)) == codec.encode_message(fits)
    with pytest.raises(WireError, match="GOSSIP is larger than 16384 bytes"):
        decode(padded_gossip(MAX_GOSSIP_BYTES + 1))
    # Multi-byte characters count as the bytes they are sent as.
    decode(padded_gossip(MAX_GOSSIP_BYTES - 2, pad="é"))
    with pytest.raises(WireError, match="GOSSIP is larger"):
        decode(padded_gossip(MAX_GOSSIP_BYTES + 2, pad="é"))
    # A lone surrogate is forwarded escaped (6 bytes): the bound is on what goes out.
    decode(padded_gossip(MAX_GOSSIP_BYTES, pad="\udc80"))
    with pytest.raises(WireError, match="GOSSIP is larger"):
        decode(padded_gossip(MAX_GOSSIP_BYTES + 1, pad="\udc80"))
    # Nested junk counts too, and an 8 MiB string is refused without being encoded.
    with pytest.raises(WireError, match="GOSSIP is larger"):
        decode(gossip(x=[[{"k": [1, 2, 3]}]] * 2000))
    with pytest.raises(WireError, match="GOSSIP is larger"):
        decode(gossip(x="y" * (8 << 20)))
    assert MAX_GOSSIP_BYTES == 16 * 1024


# -- messages --------------------------------------------------------------------------------------
@pytest.mark.parametrize("obj", [[], "GOSSIP", None, 5, {"type": 5}, {"type": "HELLO" * 100}])
def test_a_message_that_is_not_one_raises_wire_error(obj: Any) -> None:
    with pytest.raises(WireError, match=r"must be an object|no 'type'|unknown message type"):
        decode(obj)


def test_file_data_not_here_and_delete_and_get_file() -> None:
    not_here = decode({"type": "FILE_DATA", **dict.fromkeys(wire.RECORD_KEYS), "data": None})
    assert not_here == FileData(meta=None, extra={})
    get = decode({"type": "GET_FILE", "file_id": FILE_ID.upper()})
    assert get == GetFile(file_id=FILE_ID, extra={})
    delete = decode({"type": "DELETE", "from": "alice", "file_id": FILE_ID})
    assert delete == Delete(from_peer="alice", file_id=FILE_ID, extra={})
    with pytest.raises(WireError, match="'file_id' must be 64 hex"):
        decode({"type": "GET_FILE", "file_id": "é" * 64})
    with pytest.raises(WireError, match="'file_id' must be 64 hex characters, got an int of"):
        decode({"type": "GET_FILE", "file_id": 10**400})


def test_real_class_network_records_decode_unchanged() -> None:
    records = json.loads((DATA / "class_records.json").read_text())
    message = decode(reply(records))
    assert isinstance(message, GossipReply)
    assert message.skipped == 0
    for meta, sent in zip(message.files, records, strict=True):
        assert meta.wire() == {k: sent[k] for k in wire.RECORD_KEYS}


# -- the TreeDrive extension: ranged requests and raw headers --------------------------------------
def test_range_request_is_none_unless_raw_is_asked() -> None:
    for extra in ({}, {"treedrive": None}, {"treedrive": [1]}, {"treedrive": {"raw": 1}}):
        assert range_request(extra) is None
    assert range_request({"treedrive": {"raw": False, "offset": -1}}) is None


def test_range_request_reads_offset_length_asker_and_download() -> None:
    assert range_request(ranged()) == RangeRequest(0, None, None, None)
    got = range_request(ranged(offset=5, length=MAX_FILE_BYTES, **{"from": "bob"}, download="d1"))
    assert got == RangeRequest(5, MAX_FILE_BYTES, "bob", "d1")
    assert range_request(ranged(offset=MAX_FILE_BYTES, length=0)) == RangeRequest(
        MAX_FILE_BYTES, 0, None, None
    )
    assert range_request(ranged(**{"from": 7951705})) == RangeRequest(0, None, "7951705", None)
    assert MAX_FILE_BYTES == wire.MAX_FILE_BYTES == 2**50


@pytest.mark.parametrize(
    "value", [-1, True, False, 1.0, "5", None, [], MAX_FILE_BYTES + 1, 10**400]
)
@pytest.mark.parametrize("key", ["offset", "length"])
def test_range_request_refuses_bad_offsets_and_lengths(key: str, value: Any) -> None:
    if key == "length" and value is None:
        return  # null length: to the end
    with pytest.raises(WireError, match=f"'treedrive.{key}' must be an int"):
        range_request(ranged(**{key: value}))


@pytest.mark.parametrize(
    ("ext", "why"),
    [
        ({"from": "b\x1bob"}, "'from' holds a control character"),
        ({"from": "b\udc80"}, "'from' holds a control character"),
        ({"from": "b" * 257}, "'from' is too long"),
        ({"from": ""}, "'from' must be a non-empty string"),
        ({"from": 10**400}, "'from' is a number with too many digits"),
        ({"download": "d" * (MAX_DOWNLOAD_ID + 1)}, "'download' is too long"),
        ({"download": "d\x07"}, "'download' holds a control character"),
        ({"download": 12}, "'download' must be a non-empty string"),
    ],
)
def test_range_request_validates_asker_and_download_like_peer_ids(
    ext: dict[str, Any], why: str
) -> None:
    with pytest.raises(WireError, match=why):
        range_request(ranged(**ext))
    assert range_request(ranged(download="d" * MAX_DOWNLOAD_ID)) is not None


def test_range_header_reads_and_checks_the_range() -> None:
    assert range_header({}) is None
    assert range_header({"treedrive": {"raw": "yes", "offset": 0}}) is None
    assert range_header(ranged(offset=10, length=90, size=100)) == RangeHeader(10, 90, 100)
    assert range_header(ranged(offset=0, length=0, size=0)) == RangeHeader(0, 0, 0)
    top = MAX_FILE_BYTES
    assert range_header(ranged(offset=0, length=top, size=top)) == RangeHeader(0, top, top)
    with pytest.raises(WireError, match=r"offset 10 \+ length 91 > size 100"):
        range_header(ranged(offset=10, length=91, size=100))
    for key in ("offset", "length", "size"):
        fields = {"offset": 0, "length": 1, "size": 1}
        for bad in (-1, True, 1.0, "1", None, 2**47 * 8 + 1, 10**400):
            with pytest.raises(WireError, match=f"'treedrive.{key}' must be an int"):
                range_header(ranged(**(fields | {key: bad})))
        with pytest.raises(WireError, match=f"'treedrive.{key}' must be an int"):
            range_header(ranged(**{k: v for k, v in fields.items() if k != key}))
