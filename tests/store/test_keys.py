"""The node's key file (``node.key``) and the pins of peers' keys (``uow.keys``): a real data
dir and a real SQLite file, migrated by alembic, never a mock."""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text

from treedrive.core import ports
from treedrive.core.errors import StorageError
from treedrive.core.identity import NodeKey
from treedrive.core.model import PeerKey
from treedrive.store import Store
from treedrive.store.db import alembic_config
from treedrive.store.keys import KEY_FILE, KeyFileError, load, load_or_create, pem

A = NodeKey.generate().public
B = NodeKey.generate().public


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the key file -------------------------------------------------------------------------------
def test_the_first_start_makes_a_private_pem_key_and_later_ones_read_it(tmp_path: Path) -> None:
    key = load_or_create(tmp_path)
    path = tmp_path / KEY_FILE
    assert mode(path) == 0o600
    data = path.read_bytes()
    assert data.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS #8
    again = load_or_create(tmp_path)
    assert again.public == key.public
    assert again.fingerprint == key.fingerprint
    assert path.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]  # no temp file left


def test_a_key_written_by_hand_is_the_one_used(tmp_path: Path) -> None:
    key = NodeKey.generate()
    (tmp_path / KEY_FILE).write_bytes(pem(key))
    (tmp_path / KEY_FILE).chmod(0o600)
    assert load_or_create(tmp_path).public == key.public


def test_a_key_readable_by_others_is_made_private_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = load_or_create(tmp_path)
    path = tmp_path / KEY_FILE
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="treedrive.store.keys"):
        assert load_or_create(tmp_path).public == key.public
    assert mode(path) == 0o600
    assert "readable by others" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="treedrive.store.keys"):
        load_or_create(tmp_path)
    assert caplog.text == ""  # once tightened, nothing more to say


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"x" * 100_000,
    ],
)
def test_a_corrupt_key_file_stops_the_node_and_is_never_overwritten(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / KEY_FILE
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="cannot be used") as raised:
        load_or_create(tmp_path)
    assert isinstance(raised.value, StorageError)
    assert str(path) in str(raised.value)
    assert "never replaced" in str(raised.value)
    assert path.read_bytes() == content


def test_a_key_of_another_kind_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    other = ec.generate_private_key(ec.SECP256R1())
    data = other.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    path = tmp_path / KEY_FILE
    path.write_bytes(data)
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_or_create(tmp_path)
    assert path.read_bytes() == data


def test_a_key_file_that_is_no_regular_file_or_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir" / KEY_FILE).mkdir(parents=True)
    with pytest.raises(KeyFileError):
        load_or_create(tmp_path / "dir")
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / KEY_FILE, 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_or_create(tmp_path / "fifo")
    real = tmp_path / "real"
    real.mkdir()
    load_or_create(real)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / KEY_FILE).symlink_to(real / KEY_FILE)
    with pytest.raises(KeyFileError):
        load_or_create(linked)
    assert (linked / KEY_FILE).is_symlink()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_key_file_is_a_clear_error_and_stays(tmp_path: Path) -> None:
    key = load_or_create(tmp_path)
    path = tmp_path / KEY_FILE
    path.chmod(0o000)
    try:
        with pytest.raises(KeyFileError, match="Permission denied"):
            load_or_create(tmp_path)
    finally:
        path.chmod(0o600)
    assert load(path).public == key.public


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_data_dir_that_cannot_be_written_is_a_storage_error(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(StorageError, match="cannot write the node's key"):
            load_or_create(tmp_path)
    finally:
        tmp_path.chmod(0o700)
    assert not (tmp_path / KEY_FILE).exists()


def test_a_data_dir_that_is_no_folder_is_a_storage_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(StorageError, match="Not a directory"):
        load_or_create(not_a_dir)


def test_two_processes_starting_at_once_end_up_with_one_key(tmp_path: Path) -> None:
    keys: list[bytes] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        keys.append(load_or_create(tmp_path).public)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1
    assert load(tmp_path / KEY_FILE).public == keys[0]


def test_the_store_hands_out_the_data_dirs_key(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    try:
        port: ports.Store = store
        key = port.node_key()
        assert key is port.node_key()
        assert load(tmp_path / "data" / KEY_FILE).public == key.public
    finally:
        store.close()


# -- pins ---------------------------------------------------------------------------------------
def test_a_pin_is_kept_and_read_back(store: Store) -> None:
    with store.unit_of_work() as uow:
        assert uow.keys.get("alice") is None
        assert uow.keys.pin("alice", A, 10.0) is True
        uow.commit()
    with store.reading() as uow:
        assert uow.keys.get("alice") == PeerKey("alice", A, 10.0, 10.0)
        assert uow.keys.all() == [PeerKey("alice", A, 10.0, 10.0)]


def test_a_pin_is_never_replaced_by_another_key(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.keys.pin("alice", A, 10.0)
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.keys.pin("alice", B, 20.0) is False
        assert uow.keys.pin("alice", A, 20.0) is True  # already so
        uow.commit()
    with store.reading() as uow:
        assert uow.keys.get("alice") == PeerKey("alice", A, 10.0, 10.0)


def test_touch_moves_last_seen_forward_only(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.keys.pin("alice", A, 10.0)
        uow.keys.touch("alice", 30.0)
        uow.keys.touch("alice", 20.0)  # late, out of order
        uow.keys.touch("nobody", 40.0)  # no pin: nothing happens
        uow.commit()
    with store.reading() as uow:
        assert uow.keys.get("alice") == PeerKey("alice", A, 10.0, 30.0)
        assert uow.keys.get("nobody") is None


def test_forget_drops_the_pin_so_a_new_key_can_be_pinned(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.keys.pin("alice", A, 10.0)
        uow.keys.pin("bob", B, 10.0)
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.keys.forget("alice") is True
        assert uow.keys.forget("alice") is False
        assert uow.keys.forget("carol") is False
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.keys.get("alice") is None
        assert uow.keys.pin("alice", B, 50.0) is True
        uow.commit()
    with store.reading() as uow:
        assert [k.peer_id for k in uow.keys.all()] == ["alice", "bob"]
        assert uow.keys.get("alice") == PeerKey("alice", B, 50.0, 50.0)


def test_a_pin_not_committed_is_not_kept(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.keys.pin("alice", A, 10.0)
    with store.reading() as uow:
        assert uow.keys.all() == []


def test_pins_outlive_the_peer_and_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    store.upgrade()
    with store.unit_of_work() as uow:
        uow.peers.upsert("alice", "127.0.0.1", 9000, 1.0, frozenset())
        uow.keys.pin("alice", A, 1.0)
        uow.peers.remove(["alice"])  # expired: the pin stays, as in known_hosts
        uow.commit()
    store.close()
    store = Store(tmp_path / "data")
    try:
        with store.reading() as uow:
            assert uow.peers.get("alice") is None
            assert uow.keys.get("alice") == PeerKey("alice", A, 1.0, 1.0)
    finally:
        store.close()


def test_the_migration_adds_the_pins_table_to_an_older_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "old")
    try:
        command.upgrade(alembic_config(store.engine), "0005")
        with store.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO peers (peer_id, host, port, last_seen, first_seen) "
                    "VALUES ('bob', '127.0.0.1', 9001, 1.0, 1.0)"
                )
            )
        assert "peer_keys" not in inspect(store.engine).get_table_names()
        store.upgrade()
        assert store.current_revision() == store.head_revision()
        with store.unit_of_work() as uow:
            assert uow.peers.get("bob") is not None
            assert uow.keys.pin("bob", A, 2.0)
            uow.commit()
        command.downgrade(alembic_config(store.engine), "0005")
        assert "peer_keys" not in inspect(store.engine).get_table_names()
    finally:
        store.close()
