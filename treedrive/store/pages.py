"""Pages of the catalogue, newest first, that cost the same at any depth of 100,000 records: the
ids of a page are found in an ordering index alone (``ix_files_order``, or with the scope
``ix_files_scope_order``: covering, no sort, no table rows), and then only that page's rows are
read. A keyset page (``after`` an id) starts where the last one ended, however deep."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, literal, select, tuple_
from sqlalchemy.orm import Session, selectinload

from treedrive.store.models import FileRecord

S = TypeVar("S", bound=Select[Any])

ORDER = (FileRecord.timestamp_value.desc(), FileRecord.file_id.desc())
"""Newest first; the id breaks ties (the order of both ordering indexes, read backwards)."""
IN_BATCH = 500
"""Ids per ``IN (...)``: within SQLite's limit on bound parameters."""


def scoped(q: S, scope: str) -> S:
    """``q`` limited to ``scope``: "local" (held here), "remote" (not), "both" (all)."""
    if scope == "local":
        return q.where(FileRecord.has_copy.is_(True))
    if scope == "remote":
        return q.where(FileRecord.has_copy.is_(False))
    return q


def page_rows(
    s: Session, scope: str, offset: int, limit: int | None, after: str | None
) -> list[FileRecord]:
    """The records (holders loaded) of one page of ``scope``; ``after``: only those after the
    record with that id (KeyError if it is not in the catalogue)."""
    if limit is None and offset == 0 and after is None:  # the whole scope: one statement
        q = scoped(select(FileRecord), scope).options(selectinload(FileRecord.holders))
        return list(s.scalars(q.order_by(*ORDER)))
    ids = scoped(select(FileRecord.file_id), scope)
    if after is not None:
        value = s.scalar(select(FileRecord.timestamp_value).where(FileRecord.file_id == after))
        if value is None:
            raise KeyError(after)
        key = tuple_(FileRecord.timestamp_value, FileRecord.file_id)
        ids = ids.where(key < tuple_(literal(value), literal(after)))
    page = list(s.scalars(ids.order_by(*ORDER).offset(offset).limit(limit)))
    rows: dict[str, FileRecord] = {}
    for i in range(0, len(page), IN_BATCH):
        q = select(FileRecord).where(FileRecord.file_id.in_(page[i : i + IN_BATCH]))
        rows.update((r.file_id, r) for r in s.scalars(q.options(selectinload(FileRecord.holders))))
    return [rows[file_id] for file_id in page if file_id in rows]
