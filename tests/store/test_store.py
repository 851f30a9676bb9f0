"""Tests for treedrive.store: a real SQLite file and blob folder in tmp_path, never a mock."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from treedrive.core.events import FileDeleted
from treedrive.core.fileid import compute_file_id
from treedrive.core.model import DownloadState, FileMeta, PeerInfo, Timestamp
from treedrive.store import BlobStore, Store, VerificationError
from treedrive.store.db import DB_NAME, alembic_config
from treedrive.store.models import Base

TABLES = {"identity", "peers", "files", "holders", "tombstones", "transfers"}


def fid(n: int) -> str:
    """A well-formed file id that no bytes need to match (catalogue tests)."""
    return hashlib.sha256(f"file-{n}".encode()).hexdigest()


def meta(
    n: int,
    ts: Timestamp = 1_700_000_000,
    *,
    name: str | None = None,
    owner: str = "alice",
) -> FileMeta:
    return FileMeta(
        file_id=fid(n),
        file_name=name or f"f{n}.txt",
        file_size=0.5,
        file_owner=owner,
        file_timestamp=ts,
    )


# -- schema and pragmas ---------------------------------------------------------------------------
def test_upgrade_creates_tables_at_head(store: Store) -> None:
    assert store.db_path.is_file()
    names = set(inspect(store.engine).get_table_names())
    assert names >= TABLES
    assert "alembic_version" in names
    assert store.head_revision() is not None
    assert store.current_revision() == store.head_revision()


def test_fresh_store_is_empty_until_upgraded(tmp_path: Path) -> None:
    s = Store(tmp_path / "fresh")
    try:
        assert s.current_revision() is None
        assert not set(inspect(s.engine).get_table_names()) & TABLES
        s.upgrade()
        assert s.current_revision() == s.head_revision()
    finally:
        s.close()


def test_second_upgrade_is_a_no_op(store: Store) -> None:
    before = store.current_revision()
    with store.unit_of_work() as uow:
        uow.identity.set("me", 1.0)
        uow.commit()
    store.upgrade()
    assert store.current_revision() == before
    # Nothing to upgrade: no backup is made and the data is untouched.
    assert not list(store.data_dir.glob(f"{DB_NAME}.*.bak"))
    with store.unit_of_work() as uow:
        assert uow.identity.get() == "me"


def test_wal_and_foreign_keys_are_on(store: Store) -> None:
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 5000


def test_holder_rows_cannot_outlive_their_file(store: Store) -> None:
    """foreign_keys=ON is effective: deleting a file record removes its holder rows."""
    with store.unit_of_work() as uow:
        uow.files.merge(meta(1), 1.0)
        uow.files.add_holder(fid(1), "bob", 1.0)
        uow.commit()
    with store.engine.connect() as conn:
        conn.execute(text("DELETE FROM files WHERE file_id = :f"), {"f": fid(1)})
        conn.commit()
        assert conn.execute(text("SELECT count(*) FROM holders")).scalar() == 0


def test_models_match_migrations(store: Store) -> None:
    """The equivalent of ``alembic check``: the migrated schema is exactly the models'."""
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "render_as_batch": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


# -- unit of work ---------------------------------------------------------------------------------
def test_leaving_without_commit_writes_nothing(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.merge(meta(1), 1.0)
        uow.peers.upsert("bob", "127.0.0.1", 9001, 1.0, None)
        assert uow.files.get(fid(1)) is not None  # visible inside the transaction
    with store.unit_of_work() as uow:
        assert uow.files.get(fid(1)) is None
        assert uow.peers.all() == []


def test_exception_mid_way_writes_nothing(store: Store) -> None:
    def work() -> None:
        with store.unit_of_work() as uow:
            uow.files.merge(meta(1), 1.0)
            uow.files.add_holder(fid(1), "bob", 1.0)
            uow.tombstones.add(fid(2), "alice", 1.0)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        work()
    with store.unit_of_work() as uow:
        assert uow.files.get(fid(1)) is None
        assert uow.tombstones.count() == 0


def test_commit_writes_everything_at_once(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.merge(meta(1), 1.0)
        uow.files.add_holder(fid(1), "bob", 1.0)
        uow.peers.upsert("bob", "127.0.0.1", 9001, 1.0, None)
        uow.commit()
    with store.unit_of_work() as uow:
        entry = uow.files.get(fid(1))
        assert entry is not None
        assert entry.holders == ("bob",)
        assert [p.peer_id for p in uow.peers.all()] == ["bob"]


def test_events_are_handed_out_only_after_commit(store: Store) -> None:
    event = FileDeleted(fid(1), "alice")
    with store.unit_of_work() as uow:
        uow.emit(event)
        assert uow.published == []
        assert uow.commit() == [event]
        assert uow.published == [event]
        # A second commit does not hand the same events out again.
        assert uow.commit() == []
        assert uow.published == [event]


def test_events_of_a_rolled_back_transaction_are_dropped(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.emit(FileDeleted(fid(1), "alice"))
        uow.rollback()
        assert uow.commit() == []
        assert uow.published == []
    with store.unit_of_work() as uow:
        uow.emit(FileDeleted(fid(1), "alice"))
    assert uow.published == []  # left without commit


# -- files ----------------------------------------------------------------------------------------
def test_merge_adds_a_new_id(store: Store) -> None:
    with store.unit_of_work() as uow:
        assert uow.files.merge(meta(1), 1.0) is True
        assert uow.files.merge(meta(1), 2.0) is False
        uow.commit()
    with store.unit_of_work() as uow:
        entry = uow.files.get(fid(1))
    assert entry is not None
    assert entry.meta == meta(1)
    assert entry.has_copy is False
    assert entry.size_bytes is None
    assert entry.holders == ()


def test_merge_keeps_the_first_timestamp_unless_a_newer_one_hashes_the_same(store: Store) -> None:
    """A newer timestamp replaces a remote record only when every file that verifies under the
    recorded one verifies under it too (2000 and 2000.5 both hash as "2000"); otherwise the first
    seen stays, so that no claim can make honest holders fail verification."""
    with store.unit_of_work() as uow:
        uow.files.merge(meta(1, 2000, name="first"), 1.0)
        uow.files.merge(meta(1, 3000, name="forged", owner="carol"), 2.0)
        uow.files.merge(meta(1, 1500, name="older"), 3.0)
        uow.files.merge(meta(1, 2000.5, name="same-hash", owner="carol"), 4.0)
        uow.files.merge(meta(1, 2000, name="same"), 5.0)
        uow.commit()
    with store.unit_of_work() as uow:
        entry = uow.files.get(fid(1))
    assert entry is not None
    assert entry.meta.file_name == "same-hash"
    # The owner stays as first recorded: a newer record must not hand the right to delete over.
    assert entry.meta.file_owner == "alice"
    assert entry.meta.file_timestamp == 2000.5


@pytest.mark.parametrize("ts", [1_700_000_000, 1_700_000_000.75, "1700000000", "not a number"])
def test_timestamps_round_trip_as_received(store: Store, ts: Timestamp) -> None:
    with store.unit_of_work() as uow:
        uow.files.merge(meta(1, ts), 1.0)
        uow.commit()
    with store.unit_of_work() as uow:
        entry = uow.files.get(fid(1))
    assert entry is not None
    assert entry.meta.file_timestamp == ts
    assert type(entry.meta.file_timestamp) is type(ts)


def test_merge_orders_string_timestamps_by_their_value(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.merge(meta(1, "1000", name="str-1000"), 1.0)
        uow.files.merge(meta(1, 999, name="int-999"), 1.0)
        uow.commit()
    with store.unit_of_work() as uow:
        entry = uow.files.get(fid(1))
        assert entry is not None
        assert entry.meta.file_name == "str-1000"
        uow.files.merge(meta(1, "1000.5", name="str-1000.5"), 1.0)  # hashes as "1000" too
        uow.files.merge(meta(1, "garbage", name="garbage"), 1.0)  # not a number: value 0
        uow.commit()
    with store.unit_of_work() as uow:
        entry = uow.files.get(fid(1))
    assert entry is not None
    assert entry.meta.file_name == "str-1000.5"
    assert entry.meta.file_timestamp == "1000.5"


def test_entries_scope_and_order(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.merge(meta(1, 100), 1.0)
        uow.files.merge(meta(2, 300), 1.0)
        uow.files.mark_local(meta(3, 200), 42, 1.0)
        uow.commit()
    with store.unit_of_work() as uow:
        assert [e.meta.file_id for e in uow.files.entries()] == [fid(2), fid(3), fid(1)]
        assert [e.meta.file_id for e in uow.files.entries("local")] == [fid(3)]
        assert [e.meta.file_id for e in uow.files.entries("remote")] == [fid(2), fid(1)]
        assert [e.meta.file_id for e in uow.files.entries(offset=1, limit=1)] == [fid(3)]
        assert uow.files.count() == 3
        assert uow.files.count("local") == 1
        assert [m.file_id for m in uow.files.local_metas()] == [fid(3)]
        local = uow.files.get(fid(3))
    assert local is not None
    assert local.has_copy is True
    assert local.size_bytes == 42


def test_holders(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.merge(meta(1), 1.0)
        assert uow.files.add_holder(fid(1), "carol", 1.0) is True
        assert uow.files.add_holder(fid(1), "bob", 1.0) is True
        assert uow.files.add_holder(fid(1), "bob", 2.0) is False
        uow.commit()
    with store.unit_of_work() as uow:
        entry = uow.files.get(fid(1))
    assert entry is not None
    assert entry.holders == ("bob", "carol")


def test_a_complete_advert_drops_what_a_peer_no_longer_lists(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.advertise("bob", [meta(1), meta(2), meta(3)], 1.0)
        uow.files.advertise("carol", [meta(1), meta(2), meta(3)], 1.0)
        changed = uow.files.advertise("bob", [meta(2)], 2.0, complete=True)
        uow.commit()
    assert changed == []  # bob already held 2: nothing new
    with store.unit_of_work() as uow:
        holders = {n: uow.files.get(fid(n)).holders for n in (1, 2, 3)}  # type: ignore[union-attr]
    assert holders == {1: ("carol",), 2: ("bob", "carol"), 3: ("carol",)}


def test_an_empty_complete_advert_forgets_every_holding(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.advertise("bob", [meta(1)], 1.0)
        uow.files.advertise("bob", [], 2.0, complete=True)
        uow.commit()
    with store.unit_of_work() as uow:
        entry = uow.files.get(fid(1))
    assert entry is not None
    assert entry.holders == ()


def test_advertise_reports_new_records_and_new_holders(store: Store) -> None:
    with store.unit_of_work() as uow:
        first = uow.files.advertise("bob", [meta(1), meta(2)], 1.0)
        again = uow.files.advertise("carol", [meta(2)], 1.0)
        same = uow.files.advertise("bob", [meta(1)], 1.0)
        uow.commit()
    assert [(m.file_id, new) for m, new in first] == [(fid(1), True), (fid(2), True)]
    assert [(m.file_id, new) for m, new in again] == [(fid(2), False)]
    assert same == []


def test_advertise_takes_a_newer_timestamp_only_when_it_hashes_the_same(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.advertise(
            "bob", [meta(1, 10, name="old"), meta(1, 20, name="new"), meta(1, 10.5, name="ok")], 1.0
        )
        uow.files.advertise("carol", [meta(1, 15, name="middle")], 1.0)
        uow.commit()
    with store.unit_of_work() as uow:
        entry = uow.files.get(fid(1))
    assert entry is not None
    assert (entry.meta.file_name, entry.meta.file_timestamp) == ("ok", 10.5)
    assert entry.holders == ("bob", "carol")


def test_advertise_handles_thousands_of_records(store: Store) -> None:
    many = [meta(n) for n in range(3000)]  # more than one batch of bound parameters
    with store.unit_of_work() as uow:
        assert len(uow.files.advertise("bob", many, 1.0)) == 3000
        assert uow.tombstones.owners([fid(n) for n in range(3000)]) == {}
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.files.count() == 3000
        assert uow.files.advertise("bob", many[:10], 2.0, complete=True) == []
        uow.commit()
    with store.unit_of_work() as uow:
        assert sum(1 for e in uow.files.entries() if e.holders) == 10


def test_remove_orphans_keeps_held_and_local_files(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.merge(meta(1), 1.0)  # remote, nobody holds it
        uow.files.merge(meta(2), 1.0)  # remote, bob holds it
        uow.files.add_holder(fid(2), "bob", 1.0)
        uow.files.mark_local(meta(3), 10, 1.0)  # ours
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.files.remove_orphans() == [fid(1)]
        uow.commit()
    with store.unit_of_work() as uow:
        assert {e.meta.file_id for e in uow.files.entries()} == {fid(2), fid(3)}
        assert uow.files.remove_orphans() == []


def test_remove_file_takes_its_holders(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.merge(meta(1), 1.0)
        uow.files.add_holder(fid(1), "bob", 1.0)
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.files.remove(fid(1)) is True
        assert uow.files.remove(fid(9)) is False
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.files.get(fid(1)) is None
        assert uow.files.remove(fid(1)) is False
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM holders")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM files")).scalar() == 0


def test_removed_file_is_gone_within_the_same_transaction(store: Store) -> None:
    """Repositories see their own staged changes: after ``remove`` the file is not there."""
    with store.unit_of_work() as uow:
        uow.files.merge(meta(1), 1.0)
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.files.remove(fid(1)) is True
        assert uow.files.get(fid(1)) is None
        assert uow.files.remove(fid(1)) is False


def test_unmark_local(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.mark_local(meta(1), 10, 1.0)
        uow.files.unmark_local(fid(1))
        uow.files.unmark_local(fid(9))  # unknown: nothing happens
        uow.commit()
    with store.unit_of_work() as uow:
        entry = uow.files.get(fid(1))
    assert entry is not None
    assert entry.has_copy is False


# -- tombstones -----------------------------------------------------------------------------------
def test_tombstones(store: Store) -> None:
    with store.unit_of_work() as uow:
        assert uow.tombstones.owner(fid(1)) is None
        uow.tombstones.add(fid(1), "alice", 5.0)
        uow.tombstones.add(fid(1), "mallory", 6.0)  # the first one stays
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.tombstones.owner(fid(1)) == "alice"
        row = uow.tombstones.get(fid(1))
        assert row is not None
        assert row.deleted_at == 5.0
        assert uow.tombstones.count() == 1


# -- peers ----------------------------------------------------------------------------------------
def test_peer_upsert_new_and_refresh(store: Store) -> None:
    with store.unit_of_work() as uow:
        peer, new = uow.peers.upsert("bob", "127.0.0.1", 9001, 10.0, None)
        assert new is True
        assert peer == PeerInfo("bob", "127.0.0.1", 9001, 10.0, None)
        assert peer.is_treedrive is False
        peer, new = uow.peers.upsert("bob", "127.0.0.2", 9002, 20.0, frozenset({"fast"}))
        assert new is False
        assert (peer.host, peer.port, peer.last_seen) == ("127.0.0.2", 9002, 20.0)
        assert peer.features == frozenset({"fast"})
        # A late message does not move last_seen backwards.
        peer, _ = uow.peers.upsert("bob", "127.0.0.2", 9002, 15.0, None, keep_features=True)
        assert peer.last_seen == 20.0
        assert peer.features == frozenset({"fast"})
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.peers.get("bob") == PeerInfo("bob", "127.0.0.2", 9002, 20.0, frozenset({"fast"}))
        assert uow.peers.get("nobody") is None


def test_peers_expired_and_remove_takes_their_holdings(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.peers.upsert("old", "127.0.0.1", 9001, 10.0, None)
        uow.peers.upsert("fresh", "127.0.0.1", 9002, 100.0, None)
        uow.files.merge(meta(1), 1.0)
        uow.files.add_holder(fid(1), "old", 1.0)
        uow.files.add_holder(fid(1), "fresh", 1.0)
        uow.files.merge(meta(2), 1.0)
        uow.files.add_holder(fid(2), "old", 1.0)
        uow.commit()
    with store.unit_of_work() as uow:
        gone = uow.peers.expired(50.0)
        assert gone == ["old"]
        uow.peers.remove(gone)
        uow.peers.remove([])  # nothing to do
        uow.commit()
    with store.unit_of_work() as uow:
        assert [p.peer_id for p in uow.peers.all()] == ["fresh"]
        one, two = uow.files.get(fid(1)), uow.files.get(fid(2))
        assert one is not None
        assert two is not None
        assert one.holders == ("fresh",)
        assert two.holders == ()


# -- identity -------------------------------------------------------------------------------------
def test_identity(store: Store) -> None:
    with store.unit_of_work() as uow:
        assert uow.identity.get() is None
        uow.identity.set("td-1", 1.0)
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.identity.get() == "td-1"
        uow.identity.set("td-2", 2.0)
        uow.commit()
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, peer_id, created_at FROM identity")).all()
    assert [tuple(r) for r in rows] == [(1, "td-2", 1.0)]


# -- reopening ------------------------------------------------------------------------------------
def test_reopened_store_keeps_everything(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Store(data)
    first.upgrade()
    body = b"kept across restarts"
    with first.blobs.writer() as w:
        w.write(body)
        w.commit(compute_file_id(body, 1234), 1234)
    local = FileMeta(compute_file_id(body, 1234), "kept.txt", len(body) / 1048576, "me", 1234)
    with first.unit_of_work() as uow:
        uow.identity.set("me", 1.0)
        uow.peers.upsert("bob", "127.0.0.1", 9001, 10.0, frozenset({"x"}))
        uow.files.mark_local(local, len(body), 1.0)
        uow.files.merge(meta(1, "1700000000.5"), 1.0)
        uow.files.add_holder(fid(1), "bob", 1.0)
        uow.tombstones.add(fid(2), "alice", 1.0)
        tid = uow.transfers.start(fid(1), "in", "bob", 100, 1.0)
        uow.commit()
    first.close()

    second = Store(data)
    try:
        second.upgrade()
        assert second.current_revision() == second.head_revision()
        with second.unit_of_work() as uow:
            assert uow.identity.get() == "me"
            assert uow.peers.get("bob") == PeerInfo(
                "bob", "127.0.0.1", 9001, 10.0, frozenset({"x"})
            )
            kept = uow.files.get(local.file_id)
            assert kept is not None
            assert kept.meta == local
            assert kept.has_copy is True
            assert kept.size_bytes == len(body)
            remote = uow.files.get(fid(1))
            assert remote is not None
            assert remote.meta.file_timestamp == "1700000000.5"
            assert remote.holders == ("bob",)
            assert uow.tombstones.owner(fid(2)) == "alice"
            assert uow.transfers.abandon_running(2.0) == 1
            uow.commit()
        assert second.blobs.ids() == {local.file_id}
        assert second.blobs.path(local.file_id).read_bytes() == body
        with second.engine.connect() as conn:
            state = conn.execute(
                text("SELECT state, error FROM transfers WHERE id = :i"), {"i": tid}
            ).one()
        assert state[0] == "failed"
        assert "restart" in state[1]
    finally:
        second.close()


# -- transfers ------------------------------------------------------------------------------------
def test_transfers_start_and_finish(store: Store) -> None:
    with store.unit_of_work() as uow:
        tid = uow.transfers.start(fid(1), "in", "bob", 100, 1.0)
        uow.transfers.finish(tid, True, 100, 2.0)
        other = uow.transfers.start(fid(2), "in", "bob", None, 1.0)
        uow.transfers.finish(other, False, 3, 2.0, "reset")
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.transfers.abandon_running(3.0) == 0
    with store.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, state, bytes_done, error FROM transfers ORDER BY id")
        ).all()
    assert [tuple(r) for r in rows] == [(tid, "done", 100, None), (other, "failed", 3, "reset")]


# -- blobs ----------------------------------------------------------------------------------------
@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobdata")


def partials(b: BlobStore) -> list[Path]:
    return list(b.partial_dir.iterdir())


def test_writer_commit_publishes_verified_bytes(blobs: BlobStore) -> None:
    body = b"hello " * 1000
    file_id = compute_file_id(body, 1_700_000_000)
    w = blobs.writer()
    assert w.path.parent == blobs.partial_dir
    w.write(body[:100])
    w.write(memoryview(body[100:]))
    assert w.size == len(body)
    assert w.content_id(1_700_000_000) == file_id
    target = w.commit(file_id, 1_700_000_000)
    assert target == blobs.blob_dir / file_id
    assert target.read_bytes() == body
    assert blobs.has(file_id)
    assert blobs.size(file_id) == len(body)
    assert b"".join(blobs.read_chunks(file_id, chunk=7)) == body
    assert blobs.ids() == {file_id}
    assert partials(blobs) == []


def test_writer_wrong_id_raises_and_leaves_nothing(blobs: BlobStore) -> None:
    w = blobs.writer()
    w.write(b"these bytes")
    wrong = compute_file_id(b"other bytes", 1000)
    with pytest.raises(VerificationError):
        w.commit(wrong, 1000)
    assert list(blobs.blob_dir.iterdir()) == []
    assert partials(blobs) == []
    assert not blobs.has(wrong)


def test_writer_wrong_timestamp_raises(blobs: BlobStore) -> None:
    body = b"x"
    with pytest.raises(VerificationError):
        blobs.writer().commit(compute_file_id(body, 1000), 1001)
    assert list(blobs.blob_dir.iterdir()) == []


def test_writer_malformed_id_raises(blobs: BlobStore) -> None:
    w = blobs.writer()
    w.write(b"x")
    with pytest.raises(VerificationError):
        w.commit("../../etc/passwd", 1)
    assert list(blobs.blob_dir.iterdir()) == []
    assert partials(blobs) == []


@pytest.mark.parametrize("ts", [1_700_000_000.9, "1700000000", "1700000000.25"])
def test_float_and_string_timestamps_verify_as_their_int(blobs: BlobStore, ts: Timestamp) -> None:
    body = b"floaty"
    file_id = compute_file_id(body, 1_700_000_000)
    w = blobs.writer()
    w.write(body)
    assert w.matches(file_id, ts)
    w.commit(file_id, ts)
    assert blobs.has(file_id)


def test_abort_removes_the_temp_file(blobs: BlobStore) -> None:
    w = blobs.writer()
    w.write(b"half a file")
    assert w.path.exists()
    w.abort()
    assert not w.path.exists()
    assert partials(blobs) == []
    w.abort()  # twice is fine
    with pytest.raises(ValueError, match="closed"):
        w.write(b"more")


def test_writer_context_aborts_unless_committed(blobs: BlobStore) -> None:
    with blobs.writer() as w:
        w.write(b"abandoned")
    assert partials(blobs) == []
    body = b"kept"
    with blobs.writer() as w:
        w.write(body)
        w.commit(compute_file_id(body, 5), 5)
    assert blobs.ids() == {compute_file_id(body, 5)}


def test_clean_partials(blobs: BlobStore) -> None:
    a, b = blobs.writer(), blobs.writer()
    a.write(b"a")
    (blobs.partial_dir / "unrelated.txt").write_text("not ours")
    try:
        assert blobs.clean_partials() == 2
        assert not a.path.exists()
        assert not b.path.exists()
    finally:
        a.abort()
        b.abort()
    assert [p.name for p in partials(blobs)] == ["unrelated.txt"]


def test_blob_paths_only_for_file_ids(blobs: BlobStore) -> None:
    with pytest.raises(ValueError, match="not a file id"):
        blobs.path("../escape")
    assert blobs.has("../escape") is False
    assert blobs.delete(fid(1)) is False
    (blobs.blob_dir / "README").write_text("not a blob")
    assert blobs.ids() == set()


def test_delete_blob(blobs: BlobStore) -> None:
    body = b"gone soon"
    file_id = compute_file_id(body, 1)
    with blobs.writer() as w:
        w.write(body)
        w.commit(file_id, 1)
    assert blobs.delete(file_id) is True
    assert not blobs.has(file_id)
    assert blobs.delete(file_id) is False


# -- resumable downloads ---------------------------------------------------------------------------
def test_download_state_keeps_whole_and_partial_chunks(store: Store) -> None:
    chunk = 1024 * 1024
    size = 5 * chunk + 123
    state = DownloadState(fid(1), size, chunk, frozenset({0, 2, 5}), {1: 4096, 3: chunk - 1})
    with store.unit_of_work() as uow:
        uow.downloads.save(state, 1.0)
        uow.commit()
    with store.unit_of_work() as uow:
        got = uow.downloads.get(fid(1))
        listed = uow.downloads.all()
    assert got == state
    assert listed == [state]
    # 3 whole chunks (the last one is 123 bytes) and the first bytes of two others
    assert got.bytes_on_disk() == 2 * chunk + 123 + 4096 + chunk - 1

    # a later checkpoint replaces both: chunk 1 done, chunk 3 further along, chunk 4 begun
    later = DownloadState(fid(1), size, chunk, frozenset({0, 1, 2, 5}), {3: chunk - 1, 4: 7})
    with store.unit_of_work() as uow:
        uow.downloads.save(later, 2.0)
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.downloads.get(fid(1)) == later


def test_download_row_from_before_partial_chunks_reads_with_none(tmp_path: Path) -> None:
    """A downloads row written at revision 0003 (whole chunks only) survives the upgrade."""
    s = Store(tmp_path / "old")
    try:
        command.upgrade(alembic_config(s.engine), "0003")
        with s.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO downloads (file_id, size, chunk_size, done, started_at, "
                    "updated_at) VALUES (:f, 300, 100, :done, 1.0, 1.0)"
                ),
                {"f": fid(2), "done": bytes([0b101])},
            )
        s.upgrade()
        assert s.current_revision() == s.head_revision()
        with s.unit_of_work() as uow:
            state = uow.downloads.get(fid(2))
        assert state == DownloadState(fid(2), 300, 100, frozenset({0, 2}), {})
        assert state is not None
        assert state.bytes_on_disk() == 200
    finally:
        s.close()


def test_download_row_with_a_damaged_partial_column_reads_as_no_partial_chunks(
    store: Store,
) -> None:
    with store.unit_of_work() as uow:
        uow.downloads.save(DownloadState(fid(3), 300, 100, frozenset({1})), 1.0)
        uow.commit()
    for damaged in ("not json", "[1, 2]", '{"x": 5, "0": -4, "2": "7", "1": true}'):
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE downloads SET partial = :p"), {"p": damaged})
        with store.unit_of_work() as uow:
            state = uow.downloads.get(fid(3))
        assert state == DownloadState(fid(3), 300, 100, frozenset({1}), {}), damaged
