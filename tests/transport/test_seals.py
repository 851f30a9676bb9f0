"""Seals and signed DELETEs on the wire (PROTOCOL.md 2.8): written and read only by the transport
(wire.py, extension.py), inside a ``treedrive`` object on each record; a malformed one reads as
none, with the reason for the log. No sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.classic_peer import ClassicPeer
from treedrive.core.identity import NodeKey, encode_b64
from treedrive.core.messages import Announce, Delete, FileData, GossipReply
from treedrive.core.model import FileMeta
from treedrive.core.ownership import seal, seal_verifies, sign_delete
from treedrive.transport import codec, wire
from treedrive.transport.extension import (
    RangeHeader,
    push_trailer,
    raw_file_data,
    record_seal,
    stream_push,
)
from treedrive.transport.fields import WireError

KEY = NodeKey.generate()
FID = "cd" * 32
META = FileMeta(FID, "notes.txt", 0.5, "alice", 1_795_617_115)
SEALED = seal(KEY, META)
assert SEALED.seal is not None
SEAL = {"owner_key": encode_b64(KEY.public), "seal": encode_b64(SEALED.seal.signature)}


def round_trip(obj: dict[str, Any]) -> dict[str, Any]:
    """As a peer reads what this node writes: encoded, then parsed back."""
    parsed: dict[str, Any] = json.loads(codec.encode_message(obj))
    return parsed


def test_a_reply_carries_each_records_seal_in_its_own_treedrive_object() -> None:
    reply = GossipReply("127.0.0.1", 9000, "bob", files=(SEALED, META))
    out = round_trip(wire.encode(reply))
    assert out["files"][0] == {**META.wire(), "treedrive": SEAL}
    assert out["files"][1] == META.wire()  # unsealed: exactly the classic record
    back = wire.decode(out)
    assert isinstance(back, GossipReply)
    assert back.files[0].seal == SEALED.seal
    assert seal_verifies(back.files[0])
    assert back.files[1].seal is None


def test_announce_and_classic_file_data_carry_the_seal() -> None:
    announce = round_trip(wire.encode(Announce("bob", SEALED)))
    assert announce["treedrive"] == SEAL
    got = wire.decode(announce)
    assert isinstance(got, Announce)
    assert seal_verifies(got.meta)
    head = wire.encode(FileData(SEALED))
    assert head["treedrive"] == SEAL
    data = round_trip({**head, "data": "00"})
    got_data = wire.decode(data)
    assert isinstance(got_data, FileData)
    assert got_data.meta is not None
    assert seal_verifies(got_data.meta)
    assert "treedrive" not in wire.encode(FileData(META))


def test_raw_headers_and_the_streamed_record_carry_the_seal_beside_their_keys() -> None:
    header = raw_file_data(SEALED, RangeHeader(0, 10, 10, sender="alice"))
    assert header["treedrive"] == {
        "raw": True, "offset": 0, "length": 10, "size": 10, "from": "alice", **SEAL,
    }  # fmt: skip
    got = wire.decode(round_trip(header))
    assert isinstance(got, FileData)
    assert got.meta is not None
    assert seal_verifies(got.meta)
    trailer = push_trailer(SEALED)
    assert trailer["treedrive"] == {"record": True, **SEAL}
    assert seal_verifies(wire.trailer_record(round_trip(trailer)))
    assert push_trailer(META)["treedrive"] == {"record": True}
    assert "owner_key" not in stream_push(RangeHeader(0, 10, 10))["treedrive"]


@pytest.mark.parametrize(
    ("ext", "error"),
    [
        ({"owner_key": "!!", "seal": SEAL["seal"]}, "owner_key"),
        ({"owner_key": SEAL["owner_key"]}, "seal"),
        ({"seal": SEAL["seal"]}, "owner_key"),
        ({"owner_key": SEAL["owner_key"], "seal": SEAL["seal"] + "AA"}, "seal"),
        ({"owner_key": SEAL["owner_key"][:-2], "seal": SEAL["seal"]}, "owner_key"),
        ({"owner_key": 42, "seal": None}, "owner_key"),
        ({"owner_key": "A" * 10_000, "seal": SEAL["seal"]}, "owner_key"),
        ({"owner_key": SEAL["owner_key"], "seal": ["x"]}, "seal"),
    ],
)
def test_a_malformed_seal_reads_as_none_with_a_reason(ext: dict[str, Any], error: str) -> None:
    record = {**META.wire(), "treedrive": ext}
    meta = wire.file_meta(record)
    assert meta == META
    assert meta.seal is None
    assert meta.seal_error is not None
    assert error in meta.seal_error
    # The same in a reply: the record is kept (unsealed), the rest of the message too.
    reply = wire.decode(
        {"type": "GOSSIP_REPLY", "host": "h", "port": 1, "peerId": "b", "files": [record]}
    )
    assert isinstance(reply, GossipReply)
    assert reply.skipped == 0
    assert reply.files[0].seal is None
    assert reply.files[0].seal_error is not None


@pytest.mark.parametrize("ext", [None, "x", 7, [], {}, {"record": True}, {"other": 1}])
def test_no_seal_keys_is_no_seal_and_no_error(ext: Any) -> None:
    seal_, error = record_seal({**META.wire(), "treedrive": ext})
    assert (seal_, error) == (None, None)


def test_a_signed_delete_and_its_classic_form() -> None:
    signed = sign_delete(KEY, FID, "alice", 1_795_700_000)
    out = round_trip(wire.encode(Delete("alice", FID, signed=signed)))
    assert out == {
        "type": "DELETE",
        "from": "alice",
        "file_id": FID,
        "treedrive": {"ts": 1_795_700_000, "sig": encode_b64(signed.signature)},
    }
    back = wire.decode(out)
    assert isinstance(back, Delete)
    assert back.signed == signed
    assert back.signature_error is None
    assert wire.encode(Delete("alice", FID)) == {"type": "DELETE", "from": "alice", "file_id": FID}


@pytest.mark.parametrize(
    "ext",
    [
        {"ts": "1", "sig": "AA"},
        {"ts": True, "sig": "AA"},
        {"ts": -1, "sig": "AA"},
        {"ts": 2**41, "sig": "AA"},
        {"ts": 1, "sig": "AA"},
        {"ts": 1},
        {"sig": "A" * 86},
    ],
)
def test_a_malformed_delete_signature_reads_as_unsigned(ext: dict[str, Any]) -> None:
    back = wire.decode({"type": "DELETE", "from": "alice", "file_id": FID, "treedrive": ext})
    assert isinstance(back, Delete)
    assert back.signed is None
    assert back.signature_error is not None


def test_a_bad_record_is_still_refused_whatever_its_seal() -> None:
    with pytest.raises(WireError):
        wire.file_meta({**META.wire(), "file_id": "zz", "treedrive": SEAL})


def test_a_classic_peer_ignores_the_seal(tmp_path: Any) -> None:
    """tests/classic_peer.py keeps only the five record keys and honours a DELETE by its owner
    whatever else it carries: the extra key changes nothing for it."""
    peer = ClassicPeer("carol")
    announce = round_trip(wire.encode(Announce("alice", SEALED)))
    peer._handle(None, announce)  # type: ignore[arg-type]
    entry = peer.entry(FID)
    assert entry is not None
    assert entry.record == META.wire()
    assert entry.holders == {"alice"}
    signed = sign_delete(KEY, FID, "alice", 1)
    peer._handle(None, round_trip(wire.encode(Delete("alice", FID, signed=signed))))  # type: ignore[arg-type]
    assert peer.entry(FID) is None
