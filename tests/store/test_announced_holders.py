"""Holdings learnt from a peer's own ANNOUNCE (issue 9, point 12): a GOSSIP_REPLY that does not
list them does not end them; "not here", a DELETE (the record goes) and expiry do. A real
SQLite file, migrated by alembic, never a mock."""

from __future__ import annotations

import hashlib
from pathlib import Path

from alembic import command
from sqlalchemy import text

from treedrive.core.model import FileMeta
from treedrive.store import Store
from treedrive.store.db import alembic_config


def fid(n: int) -> str:
    return hashlib.sha256(f"announced-{n}".encode()).hexdigest()


def meta(n: int) -> FileMeta:
    return FileMeta(
        file_id=fid(n),
        file_name=f"f{n}.txt",
        file_size=0.5,
        file_owner="bob",
        file_timestamp=1_700_000_000,
    )


def holders(store: Store, n: int) -> tuple[str, ...] | None:
    with store.unit_of_work() as uow:
        entry = uow.files.get(fid(n))
    return None if entry is None else entry.holders


def reply(store: Store, peer: str, *ns: int, now: float = 2.0) -> None:
    """``peer``'s GOSSIP_REPLY lists exactly ``ns``."""
    with store.unit_of_work() as uow:
        uow.files.advertise(peer, [meta(n) for n in ns], now, complete=True)
        uow.files.remove_orphans()
        uow.commit()


def test_an_announced_holding_outlives_replies_that_do_not_list_it(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.peers.upsert("bob", "127.0.0.1", 9001, 1.0, None)
        uow.files.advertise("bob", [meta(1)], 1.0, announced=True)
        uow.files.advertise("bob", [meta(2)], 1.0)  # listed in a reply only
        uow.commit()
    for _ in range(3):  # several gossip rounds: bob lists its file under another id (3)
        reply(store, "bob", 3)
    assert holders(store, 1) == ("bob",)
    assert holders(store, 2) is None  # not announced: gone with the reply, record swept
    assert holders(store, 3) == ("bob",)


def test_announcing_a_holding_learnt_from_a_reply_makes_it_stay(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.advertise("bob", [meta(1)], 1.0, complete=True)
        changed = uow.files.advertise("bob", [meta(1)], 1.5, announced=True)
        uow.commit()
    assert changed == []  # bob already held it: nothing new to tell
    reply(store, "bob")
    assert holders(store, 1) == ("bob",)


def test_a_reply_listing_an_announced_file_keeps_it_announced(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.advertise("bob", [meta(1)], 1.0, announced=True)
        uow.commit()
    reply(store, "bob", 1)  # listed once: still the announced row
    reply(store, "bob")
    assert holders(store, 1) == ("bob",)


def test_not_here_ends_an_announced_holding(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.advertise("bob", [meta(1)], 1.0, announced=True)
        uow.files.advertise("carol", [meta(1)], 1.0, announced=True)
        uow.commit()
    with store.unit_of_work() as uow:
        uow.files.remove_holder(fid(1), "bob")
        uow.commit()
    assert holders(store, 1) == ("carol",)


def test_expiry_ends_an_announced_holding_and_sweeps_the_record(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.peers.upsert("bob", "127.0.0.1", 9001, 1.0, None)
        uow.files.advertise("bob", [meta(1)], 1.0, announced=True)
        uow.commit()
    with store.unit_of_work() as uow:
        uow.peers.remove(uow.peers.expired(100.0))
        uow.files.drop_untracked_holders()
        assert uow.files.remove_orphans() == [fid(1)]
        uow.commit()
    assert holders(store, 1) is None


def test_a_deleted_file_takes_its_announced_holders_along(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.advertise("bob", [meta(1)], 1.0, announced=True)
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.files.remove(fid(1))
        uow.commit()
    with store.unit_of_work() as uow:
        uow.files.advertise("bob", [meta(2)], 2.0)
        uow.commit()
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT file_id FROM holders")).scalars().all()
    assert rows == [fid(2)]


def test_add_holder_can_make_a_holding_stay(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.files.merge(meta(1), 1.0)
        assert uow.files.add_holder(fid(1), "bob", 1.0) is True
        assert uow.files.add_holder(fid(1), "bob", 1.0, announced=True) is False
        assert uow.files.add_holder(fid(1), "carol", 1.0) is True
        uow.commit()
    reply(store, "bob")
    reply(store, "carol")
    assert holders(store, 1) == ("bob",)


def test_the_migration_keeps_existing_holders_as_reply_holdings(tmp_path: Path) -> None:
    """A store from before the column: its rows become holdings a reply can end."""
    store = Store(tmp_path / "old")
    try:
        command.upgrade(alembic_config(store.engine), "0004")
        with store.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO files (file_id, file_name, file_size, file_owner, "
                    "file_timestamp, timestamp_value, has_copy, added_at) "
                    "VALUES (:f, 'f1.txt', 0.5, 'bob', '1700000000', 1700000000, 0, 1.0)"
                ),
                {"f": fid(1)},
            )
            conn.execute(
                text("INSERT INTO holders (file_id, peer_id, since) VALUES (:f, 'bob', 1.0)"),
                {"f": fid(1)},
            )
        store.upgrade()
        assert store.current_revision() == store.head_revision()
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT announced FROM holders")).scalar() == 0
        reply(store, "bob")
        assert holders(store, 1) is None
    finally:
        store.close()
