"""Read-only units of work: deferred transactions that take no write lock, on a real SQLite file
shared by threads. Timeouts only detect a hang (a lock wait ends after SQLite's busy_timeout, 5 s,
with "database is locked"): nothing here measures speed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import pytest
from sqlalchemy import text

from treedrive.core.errors import StorageError
from treedrive.core.events import PeerExpired
from treedrive.core.model import FileMeta
from treedrive.store import Store
from treedrive.store.uow import ReadOnlyError

HANG = 30.0
"""Seconds after which a thread that has not finished is taken to be blocked."""


def meta(n: int) -> FileMeta:
    return FileMeta(f"{n:064x}", f"f{n}.txt", 0.5, "owner", 1_700_000_000 + n)


def add_file(store: Store, n: int) -> None:
    with store.unit_of_work() as uow:
        uow.files.merge(meta(n), 1.0)
        uow.commit()


def count(store: Store) -> int:
    with store.reading() as r:
        return r.files.count()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as ex:
        yield ex


T = TypeVar("T")


def finished(future: Future[T]) -> T:
    """The thread's result; fails (rather than waits on) a thread blocked on a lock."""
    return future.result(timeout=HANG)


def test_an_open_read_blocks_neither_a_writer_nor_another_reader(
    store: Store, pool: ThreadPoolExecutor
) -> None:
    add_file(store, 1)
    with store.reading() as r:
        assert r.files.count() == 1  # the snapshot is taken by this first read
        finished(pool.submit(add_file, store, 2))  # a writer commits meanwhile
        assert finished(pool.submit(count, store)) == 2  # a second reader, after the write
        assert r.files.count() == 1  # still the snapshot
        assert r.files.get(meta(2).file_id) is None
    assert count(store) == 2


def test_a_writer_holding_the_lock_does_not_block_a_read(
    store: Store, pool: ThreadPoolExecutor
) -> None:
    add_file(store, 1)
    with store.unit_of_work() as w:
        w.files.merge(meta(2), 1.0)
        w.session.flush()  # the write lock is held from here until the commit
        assert finished(pool.submit(count, store)) == 1  # a read sees the last commit
        w.commit()
    assert count(store) == 2


def test_reads_held_open_at_once_in_threads(store: Store, pool: ThreadPoolExecutor) -> None:
    """Two read-only units of work open at the same time, each waiting for the other to have
    read: with a lock taken at begin, the second would wait for the first to end."""
    add_file(store, 1)
    both = threading.Barrier(2, timeout=HANG)

    def hold() -> int:
        with store.reading() as r:
            n = r.files.count()
            both.wait()
            return n

    futures = [pool.submit(hold) for _ in range(2)]
    assert [finished(f) for f in futures] == [1, 1]


def test_a_read_only_unit_of_work_refuses_to_commit_or_publish(store: Store) -> None:
    with store.reading() as r:
        r.files.merge(meta(1), 1.0)
        with pytest.raises(ReadOnlyError):
            r.commit()
        with pytest.raises(ReadOnlyError):
            r.emit(PeerExpired("p1"))
        assert r.published == []
    assert count(store) == 0  # what it staged was rolled back


def test_a_read_only_unit_of_work_leaves_the_write_lock_free(store: Store) -> None:
    """A write in the same thread right after a read neither waits nor fails."""
    add_file(store, 1)
    with store.reading() as r:
        r.files.entries()
        add_file(store, 2)
    assert count(store) == 2


def overfill(store: Store, kind: str) -> None:
    """Stage more rows than the database may grow to hold (its page limit set to its size)."""
    with getattr(store, kind)() as uow:
        pages = uow.session.execute(text("PRAGMA page_count")).scalar_one()
        uow.session.execute(text(f"PRAGMA max_page_count={pages}"))
        uow.files.advertise("peer", [meta(n) for n in range(2000)], 1.0)


@pytest.mark.parametrize("kind", ["unit_of_work", "reading"])
def test_a_full_database_is_a_storage_error(store: Store, kind: str) -> None:
    """SQLite refusing to grow the file ("database or disk is full") is the core's
    StorageError, in either kind of unit of work."""
    with pytest.raises(StorageError, match="cannot write"):
        overfill(store, kind)
