"""The ``swim`` key's records and tombstones (core/swimwire.py): seals and the owner's delete
signature travel with them; every field read from a peer is a claim with a limit."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from tests.core.test_deltas import meta
from treedrive.core import ownership, swimwire
from treedrive.core.deltas import Change, ChangeLog
from treedrive.core.identity import NodeKey
from treedrive.core.swimtypes import Ping, Push

KEY = NodeKey.generate()


def push(*changes: Change) -> Push:
    return Push(sender="bob", address=("10.0.0.2", 8270), incarnation=3, head=9, changes=changes)


def again(msg: Push) -> Any:
    wire = json.loads(json.dumps(swimwire.fields(msg)))
    return swimwire.read("bob", "10.0.0.2", 8270, wire)


def test_a_sealed_record_and_a_signed_tombstone_travel_whole() -> None:
    sealed = ownership.seal(KEY, meta("bob", 1))
    signed = ownership.sign_delete(KEY, sealed.file_id, "bob", 1_700_000_000)
    got = again(push(Change("bob", 4, sealed.file_id, sealed),
                     Change("bob", 5, sealed.file_id, None, signed)))  # fmt: skip
    add, tomb = got.changes
    assert add.meta == sealed
    assert add.meta.seal == sealed.seal
    assert ownership.seal_verifies(add.meta)
    assert tomb.meta is None
    assert tomb.signed == signed


@pytest.mark.parametrize(
    "bad",
    [
        {"ok": "x", "seal": "y"},  # not a key
        "sealed",
        {"ok": None},
    ],
)
def test_a_malformed_seal_drops_the_record(bad: object) -> None:
    wire = swimwire.fields(push(Change("bob", 4, meta("bob", 1).file_id, meta("bob", 1))))
    wire["ch"][0][3]["treedrive"] = bad
    got = swimwire.read("bob", "10.0.0.2", 8270, wire)
    assert got is not None
    assert got.changes == ()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("file_timestamp", float("nan")),
        ("file_timestamp", -1),
        ("file_timestamp", 2**41),
        ("file_timestamp", "1\n2"),
        ("file_name", 7),
    ],
)
def test_record_fields_out_of_range_drop_the_record(field: str, value: object) -> None:
    m = meta("bob", 1)
    wire = swimwire.fields(push(Change("bob", 4, m.file_id, m)))
    wire["ch"][0][3][field] = value
    got = swimwire.read("bob", "10.0.0.2", 8270, wire)
    assert got is not None
    assert got.changes == ()


def test_a_name_is_a_label() -> None:
    m = meta("bob", 1)
    wire = swimwire.fields(push(Change("bob", 4, m.file_id, m)))
    wire["ch"][0][3]["file_name"] = "a\x00b" + "x" * 10_000
    got = swimwire.read("bob", "10.0.0.2", 8270, wire)
    name = got.changes[0].meta.file_name
    assert "\x00" not in name
    assert len(name) <= 4096


def test_a_malformed_delete_signature_drops_the_tombstone() -> None:
    m = meta("bob", 1)
    wire = swimwire.fields(push(Change("bob", 4, m.file_id, None)))
    wire["ch"][0].append([1, "not a signature"])
    got = swimwire.read("bob", "10.0.0.2", 8270, wire)
    assert got is not None
    assert got.changes == ()


def test_numbers_of_an_epoch_fit_the_wire() -> None:
    log = ChangeLog("bob", epoch=1_750_000_000 * 1_000_000)
    change = log.add(meta("bob", 1))
    assert change is not None
    msg = Ping(sender="bob", address=("10.0.0.2", 8270), incarnation=1_750_000_000,
               head=log.seq, seq=1, have=change.seq, changes=(change,))  # fmt: skip
    got = swimwire.read("bob", "10.0.0.2", 8270, json.loads(json.dumps(swimwire.fields(msg))))
    assert got == msg


def test_fit_cuts_changes_then_news_until_the_gossip_is_small_enough() -> None:
    long = [replace(meta("bob", i), file_name="n" * 2000) for i in range(20)]
    changes = tuple(Change("bob", i + 1, m.file_id, m) for i, m in enumerate(long))
    msg = Push(sender="bob", address=("10.0.0.2", 8270), incarnation=1, head=20, changes=changes)
    full = swimwire.fields(msg)
    assert len(json.dumps(full)) > 14 * 1024
    cut = swimwire.fit(msg, 14 * 1024)
    assert len(json.dumps(cut)) <= 14 * 1024
    assert 0 < len(cut["ch"]) < len(changes)
    assert cut["ch"] == full["ch"][: len(cut["ch"])]  # the first ones, whole
