"""Signed ownership (PROTOCOL.md 2.8): what a node makes of a record or a DELETE, given the stored
record, the pinned keys and the seal. Pure: no store, no sockets."""

from __future__ import annotations

from dataclasses import replace

import pytest

from treedrive.core import identity
from treedrive.core.identity import NodeKey
from treedrive.core.model import MEGABYTE, CatalogEntry, DeleteSignature, FileMeta, Seal
from treedrive.core.ownership import (
    Verdict,
    awaits_owner,
    claim,
    differences,
    judge_delete,
    judge_record,
    needs_check,
    seal,
    seal_verifies,
    sign_delete,
)

ALICE = NodeKey.generate()
MALLORY = NodeKey.generate()
FID = "ab" * 32
RECORD = FileMeta(FID, "notes.txt", 2048 / MEGABYTE, "alice", 1_795_617_115)
SEALED = seal(ALICE, RECORD)


def stored(meta: FileMeta, *, has_copy: bool = False, size: int | None = None) -> CatalogEntry:
    return CatalogEntry(meta=meta, has_copy=has_copy, size_bytes=size)


def judge(
    record: FileMeta, known: CatalogEntry | None, pins: dict[str, bytes] | None = None
) -> tuple[Verdict, FileMeta | None]:
    ruling = judge_record(record, known, pins or {}, seal_verifies(record))
    assert (ruling.reason is not None) == ruling.refused
    return ruling.verdict, ruling.record


# -- seals ---------------------------------------------------------------------------------------
def test_a_seal_signs_the_five_fields_as_they_travel() -> None:
    assert SEALED.seal is not None
    assert SEALED.seal.owner_key == ALICE.public
    assert seal_verifies(SEALED)
    assert identity.verify(ALICE.public, SEALED.seal.signature, claim(RECORD))
    assert claim(RECORD).startswith(identity.RECORD_TAG)
    # The seal takes no part in equality: a sealed record equals its unsealed self.
    assert SEALED == RECORD
    assert hash(SEALED) == hash(RECORD)


@pytest.mark.parametrize(
    "change",
    [
        {"file_name": "other.txt"},
        {"file_size": 1.0},
        {"file_owner": "mallory"},
        {"file_timestamp": 1_795_617_116},
        {"file_timestamp": float(RECORD.file_timestamp)},  # 1000 and 1000.0 are two claims
        {"file_timestamp": str(RECORD.file_timestamp)},
    ],
)
def test_a_seal_does_not_verify_over_other_fields(change: dict[str, object]) -> None:
    assert not seal_verifies(replace(SEALED, **change))  # type: ignore[arg-type]


def test_garbage_seals_never_verify_and_never_raise() -> None:
    for bad in (
        Seal(b"", b""),
        Seal(ALICE.public, b"\0" * 64),
        Seal(b"\0" * 32, b"\0" * 64),  # a key of small order signs nothing
        Seal(MALLORY.public, SEALED.seal.signature if SEALED.seal else b""),
    ):
        assert not seal_verifies(replace(RECORD, seal=bad))
    assert not seal_verifies(RECORD)


# -- records -------------------------------------------------------------------------------------
def test_new_ids_sealed_or_classic() -> None:
    assert judge(SEALED, None) == (Verdict.SEALED, SEALED)
    assert judge(RECORD, None) == (Verdict.CLASSIC, RECORD)


def test_a_seal_that_does_not_verify_is_refused_even_for_a_new_id() -> None:
    forged = replace(SEALED, file_name="evil.exe")
    assert judge(forged, None) == (Verdict.REFUSED, None)
    assert judge(forged, stored(RECORD)) == (Verdict.REFUSED, None)


def test_a_seal_by_another_key_than_the_owners_pin_is_refused() -> None:
    by_mallory = seal(MALLORY, RECORD)  # a good signature, by the wrong key
    assert judge(by_mallory, None, {"alice": ALICE.public}) == (Verdict.REFUSED, None)
    assert judge(SEALED, None, {"alice": ALICE.public}) == (Verdict.SEALED, SEALED)
    ruling = judge_record(by_mallory, None, {"alice": ALICE.public}, True)
    assert ruling.reason is not None
    assert "pinned" in ruling.reason


@pytest.mark.parametrize(
    "change",
    [
        {"file_name": "renamed.txt"},
        {"file_timestamp": 1_795_617_999},
        {"file_owner": "mallory"},
        {"file_size": 9.0},
    ],
)
def test_records_contradicting_a_sealed_one_are_refused(change: dict[str, object]) -> None:
    known = stored(SEALED)
    other = replace(RECORD, **change)  # type: ignore[arg-type]
    assert judge(other, known) == (Verdict.REFUSED, None)  # unsealed
    assert judge(seal(MALLORY, other), known) == (Verdict.REFUSED, None)  # sealed by a stranger
    assert judge(seal(ALICE, other), known) == (Verdict.REFUSED, None)  # the first seal stays
    ruling = judge_record(other, known, {}, False)
    assert ruling.reason is not None
    assert "contradicts the owner's signed record" in ruling.reason


def test_the_same_record_sealed_by_another_key_is_refused() -> None:
    ruling = judge_record(seal(MALLORY, RECORD), stored(SEALED), {}, True)
    assert ruling.refused
    assert ruling.reason is not None
    assert "not the owner's" in ruling.reason


def test_the_sealed_record_again_or_unsealed_but_the_same_changes_nothing() -> None:
    known = stored(SEALED, has_copy=True, size=2048)
    assert judge(SEALED, known) == (Verdict.SAME, SEALED)
    # A classic peer passes the record on without the seal (it drops unknown keys).
    verdict, record = judge(RECORD, known)
    assert verdict is Verdict.SAME
    assert record is not None
    assert record.seal == SEALED.seal


def test_the_stored_seal_again_needs_no_check() -> None:
    known = stored(SEALED)
    assert not needs_check(SEALED, known)
    assert not needs_check(RECORD, known)
    assert needs_check(SEALED, None)
    assert needs_check(seal(MALLORY, RECORD), known)
    # No check done: the stored seal stands for it.
    assert judge_record(SEALED, known, {}, False).verdict is Verdict.SAME


def test_unsealed_over_unsealed_keeps_the_classic_rules() -> None:
    later = replace(RECORD, file_timestamp=RECORD.file_timestamp + 0.5)  # type: ignore[operator]
    assert judge(later, stored(RECORD)) == (Verdict.CLASSIC, later)


def test_a_seal_upgrades_a_claim_only_by_the_same_owners_pinned_key() -> None:
    pins = {"alice": ALICE.public}
    assert judge(SEALED, stored(RECORD), pins) == (Verdict.SEALED, SEALED)
    # Not pinned: the seal may be anyone's; the record is taken as a classic claim.
    verdict, record = judge(SEALED, stored(RECORD))
    assert verdict is Verdict.CLASSIC
    assert record is not None
    assert record.seal is None
    # A stranger's key cannot make a classic peer's file its own.
    classic = replace(RECORD, file_owner="bob")
    mine = seal(MALLORY, replace(RECORD, file_owner="mallory"))
    verdict, record = judge(mine, stored(classic), {"mallory": MALLORY.public})
    assert verdict is Verdict.CLASSIC
    assert record is not None
    assert record.seal is None
    # ... nor seal it in bob's name, so that bob's classic DELETE no longer works.
    in_bobs_name = seal(MALLORY, classic)
    verdict, record = judge(in_bobs_name, stored(classic))
    assert (verdict, record is not None and record.seal) == (Verdict.CLASSIC, None)


def test_a_seal_that_contradicts_the_bytes_held_here_is_not_taken() -> None:
    pins = {"alice": ALICE.public}
    held = stored(RECORD, has_copy=True, size=2048)
    assert judge(SEALED, held, pins)[0] is Verdict.SEALED
    wrong_size = seal(ALICE, replace(RECORD, file_size=5.0))
    assert judge(wrong_size, held, pins)[0] is Verdict.CLASSIC
    other_ts = seal(ALICE, replace(RECORD, file_timestamp=42))
    assert judge(other_ts, held, pins)[0] is Verdict.CLASSIC


def test_a_stored_seal_that_contradicts_the_owners_pin_counts_as_none() -> None:
    """A stranger sealed a record in alice's name before her key was pinned here: once it is,
    her own seal replaces the stranger's."""
    forged = seal(MALLORY, replace(RECORD, file_name="evil.exe"))
    pins = {"alice": ALICE.public}
    assert judge(SEALED, stored(forged), pins) == (Verdict.SEALED, SEALED)
    assert judge(SEALED, stored(forged))[0] is Verdict.REFUSED  # not pinned: the first seal holds


def test_differences_name_the_fields() -> None:
    assert differences(RECORD, RECORD) == ""
    text = differences(RECORD, replace(RECORD, file_name="x", file_owner="y"))
    assert text == "other name, other owner"


# -- deletes -------------------------------------------------------------------------------------
def test_a_delete_of_a_sealed_file_needs_the_owners_signature() -> None:
    signed = sign_delete(ALICE, FID, "alice", 1_795_700_000)
    assert judge_delete(FID, signed, SEALED, None) is None
    assert judge_delete(FID, signed, SEALED, ALICE.public) is None
    unsigned = judge_delete(FID, None, SEALED, None)
    assert unsigned is not None
    assert "unsigned" in unsigned
    by_mallory = sign_delete(MALLORY, FID, "alice", 1_795_700_000)
    assert judge_delete(FID, by_mallory, SEALED, None) is not None
    assert judge_delete(FID, DeleteSignature(1_795_700_000, b"\0" * 64), SEALED, None) is not None
    # The signature names its file, its owner and its time.
    for other in (
        sign_delete(ALICE, "cd" * 32, "alice", 1_795_700_000),
        sign_delete(ALICE, FID, "bob", 1_795_700_000),
    ):
        assert judge_delete(FID, other, SEALED, None) is not None
    moved = DeleteSignature(signed.ts + 1, signed.signature)
    assert judge_delete(FID, moved, SEALED, None) is not None


def test_a_delete_follows_the_pinned_key_over_a_strangers_seal() -> None:
    forged = seal(MALLORY, RECORD)
    pins = ALICE.public
    assert judge_delete(FID, sign_delete(MALLORY, FID, "alice", 1), forged, pins) is not None
    assert judge_delete(FID, sign_delete(ALICE, FID, "alice", 1), forged, pins) is None


def test_a_delete_of_an_unsealed_file_keeps_the_classic_rule() -> None:
    assert judge_delete(FID, None, RECORD, None) is None
    assert judge_delete(FID, None, RECORD, ALICE.public) is None


def test_an_owners_own_sealed_record_against_a_forgery_waits_for_its_key() -> None:
    forged = stored(replace(RECORD, file_size=999.0))
    # alice's own sealed record contradicts the stored claim: it waits until her key is pinned
    assert awaits_owner(SEALED, forged, {}, "alice")
    assert judge(SEALED, forged) == (Verdict.CLASSIC, RECORD)  # else: taken without its seal
    # once pinned, it is judged (and wins); relayed by another holder, it is judged at once
    assert not awaits_owner(SEALED, forged, {"alice": ALICE.public}, "alice")
    assert not awaits_owner(SEALED, forged, {}, "bob")
    # nothing to contradict: a new id, the same fields, or an unsealed record
    assert not awaits_owner(SEALED, None, {}, "alice")
    assert not awaits_owner(SEALED, stored(RECORD), {}, "alice")
    assert not awaits_owner(replace(RECORD, file_size=1.0), forged, {}, "alice")
