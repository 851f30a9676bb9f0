"""Claims never override facts (THREATS.md): what a message may change in the catalogue, and the
cap on tracked peers. A real SQLite file in tmp_path, never a mock."""

from __future__ import annotations

import hashlib

import pytest

from treedrive.core.fileid import compute_file_id
from treedrive.core.model import MEGABYTE, CatalogEntry, FileMeta, Timestamp
from treedrive.core.sizes import claimed_size, size_agrees
from treedrive.store import Store

DATA = b"the true bytes of a file this node holds"
TS = 1_750_000_000
FID = compute_file_id(DATA, TS)


def record(ts: Timestamp = TS, *, name: str = "true.txt", owner: str = "alice") -> FileMeta:
    return FileMeta(FID, name, len(DATA) / MEGABYTE, owner, ts)


def forged(ts: Timestamp = TS + 1000) -> FileMeta:
    """The same id, a larger timestamp, another name, size and owner."""
    return FileMeta(FID, "forged.txt", 99_999.0, "mallory", ts)


def entry(store: Store) -> CatalogEntry:
    with store.unit_of_work() as uow:
        found = uow.files.get(FID)
    assert found is not None
    return found


def verifies(e: CatalogEntry) -> bool:
    return compute_file_id(DATA, int(e.meta.file_timestamp)) == e.meta.file_id


# -- a held record is frozen -----------------------------------------------------------------------
def test_held_record_is_frozen_against_advertise_and_merge(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.mark_local(record(), len(DATA), 1.0)
        uow.commit()
    with store.unit_of_work() as uow:
        changed = uow.files.advertise("mallory", [forged()], 2.0)
        uow.files.merge(forged(TS + 2000), 3.0)
        uow.files.advertise("bob", [forged(TS + 0.5)], 4.0)  # same hash, still a claim
        uow.commit()
    assert [(m.file_id, new) for m, new in changed] == [(FID, False)]  # a holder was added
    held = entry(store)
    assert held.meta == record()
    assert held.has_copy
    assert held.size_bytes == len(DATA)
    assert held.holders == ("bob", "mallory")  # claims may only add holders
    assert verifies(held)


def test_held_record_is_not_changed_by_marking_it_local_again(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.mark_local(record(), len(DATA), 1.0)
        uow.files.mark_local(forged(), 12345, 2.0)
        uow.commit()
    held = entry(store)
    assert (held.meta, held.size_bytes) == (record(), len(DATA))


# -- a remote record keeps the timestamp that can verify -----------------------------------------
def test_remote_record_keeps_its_first_timestamp(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.advertise("bob", [record()], 1.0)
        uow.files.advertise("mallory", [forged()], 2.0)
        uow.files.merge(forged(TS + 5000), 3.0)
        uow.commit()
    remote = entry(store)
    assert not remote.has_copy
    assert remote.meta == record()  # timestamp, name, size and owner as first seen
    assert remote.holders == ("bob", "mallory")
    assert verifies(remote)


def test_remote_record_takes_a_newer_timestamp_only_if_it_hashes_the_same(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.advertise("bob", [record(TS)], 1.0)
        uow.files.advertise("carol", [record(float(TS) + 0.5, name="later.txt")], 2.0)
        uow.commit()
    remote = entry(store)
    assert remote.meta.file_timestamp == TS + 0.5
    assert remote.meta.file_name == "later.txt"
    assert remote.meta.file_size == len(DATA) / MEGABYTE  # a claim never changes the size
    assert verifies(remote)


def test_one_batch_cannot_replace_its_own_first_record_with_a_forgery(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.advertise("mallory", [record(), forged()], 1.0)
        uow.commit()
    assert entry(store).meta == record()


# -- a verified fact overrides claims -------------------------------------------------------------
def test_mark_local_with_the_verified_timestamp_wins(store: Store) -> None:
    """The first record seen was a forgery (the node heard of the file from a liar first): once
    the bytes verify under the true timestamp, the record takes it, and the true size."""
    with store.unit_of_work() as uow:
        uow.files.advertise("mallory", [forged()], 1.0)
        uow.files.advertise("bob", [record()], 2.0)  # a claim: does not replace the first
        uow.commit()
    assert entry(store).meta.file_timestamp == TS + 1000
    with store.unit_of_work() as uow:
        uow.files.mark_local(record(), len(DATA), 3.0)  # verified under TS
        uow.commit()
    held = entry(store)
    assert held.has_copy
    assert held.meta.file_timestamp == TS
    assert held.size_bytes == len(DATA)
    assert held.meta.file_size == len(DATA) / MEGABYTE  # 99,999 MB did not agree: replaced
    assert held.meta.file_owner == "mallory"  # the owner stays as first recorded
    assert verifies(held)
    with store.unit_of_work() as uow:  # and from now on it is frozen
        uow.files.advertise("mallory", [forged(TS + 9000)], 4.0)
        uow.commit()
    assert entry(store).meta.file_timestamp == TS


def test_mark_local_keeps_a_file_size_that_agrees(store: Store) -> None:
    as_bytes = FileMeta(FID, "bytes.txt", float(len(DATA)), "alice", TS)  # some peers send bytes
    with store.unit_of_work() as uow:
        uow.files.advertise("bob", [as_bytes], 1.0)
        uow.files.mark_local(as_bytes, len(DATA), 2.0)
        uow.commit()
    assert entry(store).meta.file_size == float(len(DATA))


# -- sizes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("file_size", "size", "agrees"),
    [
        (184292 / MEGABYTE, 184292, True),  # MB, as the reference data sends it
        (0.18, 184292, True),  # MB rounded by a peer
        (184292, 184292, True),  # bytes, as some peers send it
        (0.005, 5, True),  # a tiny file rounded to 0.005 MB
        (0.0, 5, False),  # 0 says nothing (the download then caps by the free disk)
        (1.0, 2**47, False),
        (1.0, 2**43, False),
        (1.0, 3 * MEGABYTE, False),
        (1e308, 2**20, False),
        (float("nan"), 10, False),
        (float("inf"), 10, False),
        (-1.0, 10, False),
    ],
)
def test_size_agrees_with_a_record_in_mb_or_bytes(
    file_size: float, size: int, agrees: bool
) -> None:
    assert size_agrees(file_size, size) is agrees


def test_claimed_size_says_nothing_for_nonsense() -> None:
    assert claimed_size(1e308) is None
    assert claimed_size(float("nan")) is None
    assert claimed_size(0.0) is None
    assert claimed_size(10**400) is None  # an int too large for a float
    assert claimed_size(0.5) == 0.5


# -- the peer cap ----------------------------------------------------------------------------------
def test_peer_cap_evicts_the_longest_silent_and_their_holder_rows(store: Store) -> None:
    with store.unit_of_work() as uow:
        for n, seen in enumerate([50.0, 10.0, 40.0, 20.0, 30.0]):
            uow.peers.upsert(f"p{n}", "127.0.0.1", 9000 + n, seen, None, max_peers=5)
            assert uow.peers.evicted == []
        uow.files.advertise("p1", [record()], 60.0)  # p1 (silent since 10) holds a file
        uow.files.advertise("p2", [record()], 60.0)
        uow.commit()
    with store.unit_of_work() as uow:
        # refreshing a known peer never evicts
        uow.peers.upsert("p0", "127.0.0.1", 9000, 70.0, None, max_peers=5)
        assert uow.peers.evicted == []
        peer, new = uow.peers.upsert("new", "127.0.0.1", 9100, 80.0, None, max_peers=5)
        assert new
        assert peer.peer_id == "new"
        assert uow.peers.evicted == ["p1"]
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.peers.count() == 5
        assert {p.peer_id for p in uow.peers.all()} == {"p0", "p2", "p3", "p4", "new"}
        assert uow.peers.get("p1") is None
    assert entry(store).holders == ("p2",)  # p1's holder row went with it


def test_peer_cap_lowered_evicts_down_to_it(store: Store) -> None:
    with store.unit_of_work() as uow:
        for n in range(10):
            uow.peers.upsert(f"p{n}", "127.0.0.1", 9000 + n, float(n), None)
        assert uow.peers.count() == 10
        gone = uow.peers.evict_over(3)
        assert gone == [f"p{n}" for n in range(7)]  # longest silent first
        assert uow.peers.evict_over(3) == []
        uow.peers.upsert("x", "127.0.0.1", 9999, 100.0, None, max_peers=3)
        assert uow.peers.evicted == ["p7"]
        uow.commit()
    with store.unit_of_work() as uow:
        assert [p.peer_id for p in uow.peers.all()] == ["p8", "p9", "x"]


def test_peer_cap_holds_against_thousands_of_new_peers(store: Store) -> None:
    with store.unit_of_work() as uow:
        for n in range(2000):
            uow.peers.upsert(f"fake-{n}", "127.0.0.1", 22, float(n), None, max_peers=100)
        assert uow.peers.count() == 100
        uow.commit()
    with store.unit_of_work() as uow:
        kept = sorted(p.peer_id for p in uow.peers.all())
    assert kept == sorted(f"fake-{n}" for n in range(1900, 2000))


def test_fid_is_the_true_id() -> None:
    assert hashlib.sha256(DATA + str(TS).encode()).hexdigest() == FID


def test_peer_cap_keeps_the_peers_it_is_told_to_keep(store: Store) -> None:
    """Honest peers answer this node's GOSSIPs; a flood of new peer ids, each newer than their
    last word, evicts the others first."""
    with store.unit_of_work() as uow:
        uow.peers.upsert("honest", "127.0.0.1", 8270, 1.0, None, max_peers=5)
        uow.peers.upsert("quiet", "127.0.0.1", 8271, 2.0, None, max_peers=5)
        for n in range(2000):
            uow.peers.upsert(
                f"fake-{n}", "127.0.0.1", 22, 10.0 + n, None, max_peers=5, keep={"honest"}
            )
            assert "honest" not in uow.peers.evicted
        uow.commit()
    with store.unit_of_work() as uow:
        kept = {p.peer_id for p in uow.peers.all()}
        assert kept == {"honest"} | {f"fake-{n}" for n in range(1996, 2000)}
        # when only kept peers are left to evict, the longest silent of them goes
        assert uow.peers.evict_over(0, keep={"honest", "fake-1999"}) == [
            "fake-1996", "fake-1997", "fake-1998", "honest", "fake-1999",
        ]  # fmt: skip
        uow.peers.upsert("a", "127.0.0.1", 1, 1.0, None)
        uow.peers.upsert("b", "127.0.0.1", 2, 2.0, None)
        uow.peers.upsert("c", "127.0.0.1", 3, 3.0, None)
        assert uow.peers.evict_over(1, keep={"a", "b"}) == ["c", "a"]
