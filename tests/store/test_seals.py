"""Owners' seals kept with their records, owners' signatures kept with their tombstones
(PROTOCOL.md 2.8; migration 0007). A real SQLite file, migrated by alembic, never a mock."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from alembic import command
from sqlalchemy import inspect, text

from treedrive.core.identity import NodeKey
from treedrive.core.model import MEGABYTE, FileMeta
from treedrive.core.ownership import seal, seal_verifies, sign_delete
from treedrive.store import Store
from treedrive.store.db import alembic_config

ALICE = NodeKey.generate()
FID = "ef" * 32
META = FileMeta(FID, "a.txt", 4096 / MEGABYTE, "alice", 1_795_617_115)
SEALED = seal(ALICE, META)


def stored(store: Store) -> FileMeta | None:
    with store.reading() as uow:
        entry = uow.files.get(FID)
    return None if entry is None else entry.meta


def test_a_sealed_record_is_read_back_with_its_seal(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.advertise("bob", [SEALED], 1.0)
        uow.commit()
    meta = stored(store)
    assert meta is not None
    assert meta.seal == SEALED.seal
    assert seal_verifies(meta)
    with store.reading() as uow:
        assert uow.files.known([FID, "00" * 32])[FID].meta.seal == SEALED.seal
        assert uow.files.local_metas() == []


def test_a_sealed_record_never_changes_and_wins_in_one_message(store: Store) -> None:
    later = replace(META, file_name="renamed", file_timestamp=1_795_617_115.5)
    with store.unit_of_work() as uow:
        # A forged claim first in the same reply: the sealed one is taken.
        uow.files.advertise("bob", [later, SEALED], 1.0)
        uow.files.advertise("carol", [later], 2.0)  # a newer timestamp that hashes the same
        uow.commit()
    meta = stored(store)
    assert meta is not None
    assert meta.file_name == "a.txt"
    assert seal_verifies(meta)


def test_a_judged_seal_takes_the_place_of_an_unsealed_record(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.advertise("bob", [replace(META, file_name="first")], 1.0)
        uow.files.advertise("alice", [SEALED], 2.0)
        uow.commit()
    meta = stored(store)
    assert meta is not None
    assert meta.file_name == "a.txt"
    assert seal_verifies(meta)


def test_verified_bytes_keep_the_seal_that_agrees_with_them(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.advertise("bob", [SEALED], 1.0)
        # The holder sent the timestamp as a float: the bytes verified under it.
        uow.files.mark_local(replace(META, file_timestamp=1_795_617_115.0), 4096, 2.0)
        uow.commit()
    meta = stored(store)
    assert meta is not None
    assert meta.file_timestamp == 1_795_617_115
    assert seal_verifies(meta)


def test_a_seal_that_verified_bytes_contradict_is_dropped(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.advertise("bob", [SEALED], 1.0)
        uow.files.mark_local(SEALED, 10 * MEGABYTE, 2.0)  # not the size it signed
        uow.commit()
    meta = stored(store)
    assert meta is not None
    assert meta.seal is None
    assert meta.file_size == 10.0


def test_a_push_of_a_sealed_file_is_kept_with_its_seal(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.mark_local(SEALED, 4096, 1.0)
        uow.commit()
    meta = stored(store)
    assert meta is not None
    assert seal_verifies(meta)


def test_a_refused_record_leaves_its_senders_holdings_as_they_were(store: Store) -> None:
    other = "01" * 32
    with store.unit_of_work() as uow:
        uow.files.advertise("bob", [SEALED, replace(META, file_id=other)], 1.0)
        # bob's next reply lists only the other file; its record of ours was refused.
        uow.files.advertise(
            "bob", [replace(META, file_id=other)], 2.0, complete=True, untouched={FID}
        )
        uow.commit()
        assert uow.files.get(FID) is not None
    with store.reading() as uow:
        entry = uow.files.get(FID)
        assert entry is not None
        assert entry.holders == ("bob",)


def test_tombstones_keep_the_owners_signature(store: Store) -> None:
    signed = sign_delete(ALICE, FID, "alice", 1_795_700_000)
    with store.unit_of_work() as uow:
        uow.tombstones.add(FID, "alice", 1.0, signed)
        uow.tombstones.add("02" * 32, "bob", 1.0)
        uow.commit()
    with store.reading() as uow:
        assert uow.tombstones.signatures([FID, "02" * 32, "03" * 32]) == {FID: signed}
        assert uow.tombstones.owner(FID) == "alice"


def test_the_migration_adds_the_seal_columns_to_an_older_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "old")
    try:
        command.upgrade(alembic_config(store.engine), "0006")
        with store.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO files (file_id, file_name, file_size, file_owner, "
                    "file_timestamp, timestamp_value, has_copy, added_at) "
                    "VALUES (:f, 'old.txt', 0.5, 'bob', '1700000000', 1700000000, 0, 1.0)"
                ),
                {"f": FID},
            )
            conn.execute(
                text(
                    "INSERT INTO tombstones (file_id, file_owner, deleted_at) "
                    "VALUES (:f, 'bob', 1.0)"
                ),
                {"f": "04" * 32},
            )
        store.upgrade()
        assert store.current_revision() == store.head_revision()
        with store.reading() as uow:
            entry = uow.files.get(FID)
            assert entry is not None
            assert entry.meta.seal is None
            assert uow.tombstones.signatures(["04" * 32]) == {}
        command.downgrade(alembic_config(store.engine), "0006")
        columns = {c["name"] for c in inspect(store.engine).get_columns("files")}
        assert "seal" not in columns
        assert "owner_key" not in columns
    finally:
        store.close()
