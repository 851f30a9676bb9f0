"""Pages of the catalogue and of the peers table (issue 12, point 6): a keyset page walks the
same entries as offset pages, each page reads only its own rows, and counts stay right."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event

from tests.store.test_store import fid, meta
from treedrive.store import Store

N = 230


@pytest.fixture
def catalogue(store: Store) -> Store:
    with store.unit_of_work() as uow:
        for i in range(N):
            ts = 1_700_000_000 + i // 3  # ties on the timestamp: the id breaks them
            if i % 7 == 0:
                uow.files.mark_local(meta(i, ts), 10, 1.0)
            else:
                uow.files.merge(meta(i, ts), 1.0)
                uow.files.add_holder(fid(i), f"peer-{i % 5}", 1.0)
        uow.commit()
    return store


@pytest.mark.parametrize("scope", ["both", "local", "remote"])
def test_a_keyset_walk_gives_the_offset_pages(catalogue: Store, scope: str) -> None:
    with catalogue.reading() as uow:
        whole = [e.meta.file_id for e in uow.files.entries(scope)]
        by_offset = [
            e.meta.file_id
            for offset in range(0, len(whole), 50)
            for e in uow.files.entries(scope, offset=offset, limit=50)
        ]
        walked: list[str] = []
        after: str | None = None
        while True:
            page = uow.files.entries(scope, limit=50, after=after)
            walked += [e.meta.file_id for e in page]
            if len(page) < 50:
                break
            after = page[-1].meta.file_id
        assert uow.files.count(scope) == len(whole)
    assert by_offset == whole
    assert walked == whole
    assert len(set(whole)) == len(whole)


def test_pages_carry_their_holders_and_records(catalogue: Store) -> None:
    with catalogue.reading() as uow:
        whole = {e.meta.file_id: e for e in uow.files.entries()}
        for e in uow.files.entries(offset=100, limit=40):
            assert e == whole[e.meta.file_id]
            assert e.holders or e.has_copy


def test_a_keyset_page_after_an_unknown_id_is_refused(catalogue: Store) -> None:
    with catalogue.reading() as uow, pytest.raises(KeyError):
        uow.files.entries(limit=10, after="0" * 64)


def test_counts_by_scope(catalogue: Store) -> None:
    local = len(range(0, N, 7))
    with catalogue.reading() as uow:
        assert uow.files.count("local") == local
        assert uow.files.count("remote") == N - local
        assert uow.files.count("both") == N


@pytest.mark.parametrize("scope", ["both", "local", "remote"])
@pytest.mark.parametrize("after", [False, True])
def test_a_page_is_found_in_an_ordering_index_alone(
    catalogue: Store, scope: str, after: bool
) -> None:
    """The statement that picks a page's ids walks a covering index in its order: no sort,
    no table rows (the rows of the page alone are read afterwards)."""
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        statements.append((statement, params))

    engine = catalogue.engine
    with catalogue.reading() as uow:
        start = uow.files.entries(scope, limit=1)[0].meta.file_id if after else None
        event.listen(engine, "before_cursor_execute", seen)
        try:
            uow.files.entries(scope, offset=10, limit=50, after=start)
        finally:
            event.remove(engine, "before_cursor_execute", seen)
        picks = [(s, p) for s, p in statements if "ORDER BY" in s and "LIMIT" in s]
        assert picks, statements
        statement, params = picks[-1]
        plan = " ".join(
            str(row[-1])
            for row in uow.session.connection().exec_driver_sql(  # type: ignore[attr-defined]
                "EXPLAIN QUERY PLAN " + statement, params
            )
        )
    assert "COVERING INDEX ix_files_" in plan, plan
    assert "TEMP B-TREE" not in plan, plan


def test_peer_pages_and_count(store: Store) -> None:
    with store.unit_of_work() as uow:
        for i in range(25):
            uow.peers.upsert(f"peer-{i:02d}", "127.0.0.1", 9000 + i, 1.0, None)
        uow.commit()
    with store.reading() as uow:
        assert uow.peers.count() == 25
        page = [p.peer_id for p in uow.peers.page(10, 5)]
        assert page == [f"peer-{i:02d}" for i in range(10, 15)]
        assert uow.peers.page() == uow.peers.all()
