"""The catalogue's repository: file records and their holders, and how a stored record is
read back (claims never override facts: see ``_claim_replaces``)."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from treedrive.core.fileid import timestamp_suffixes, timestamp_value
from treedrive.core.model import MEGABYTE, CatalogEntry, FileMeta, Seal, Timestamp
from treedrive.core.sizes import record_agrees, size_agrees
from treedrive.store.models import FileRecord, Holder, Peer
from treedrive.store.pages import page_rows, scoped


def ts_text(ts: Timestamp) -> str:
    return json.dumps(ts)


def ts_load(text: str) -> Timestamp:
    value = json.loads(text)
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        return value
    return str(value)


def chunks(items: list[str], size: int = 500) -> Iterator[list[str]]:
    """Pieces small enough for SQLite's limit on bound parameters."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _file_row(meta: FileMeta, now: float) -> dict[str, object]:
    return {
        "file_id": meta.file_id,
        "file_name": meta.file_name,
        "file_size": meta.file_size,
        "file_owner": meta.file_owner,
        "file_timestamp": ts_text(meta.file_timestamp),
        "timestamp_value": timestamp_value(meta.file_timestamp),
        "has_copy": False,
        "added_at": now,
        "owner_key": None if meta.seal is None else meta.seal.owner_key,
        "seal": None if meta.seal is None else meta.seal.signature,
    }


def _same_hash(old: Timestamp, new: Timestamp) -> bool:
    """Whether every file that verifies under ``old`` verifies under ``new`` too (``1000`` and
    ``1000.5`` both hash as ``"1000"``): only then may ``new`` replace ``old`` in a record."""
    before = set(timestamp_suffixes(old))
    return bool(before) and before <= set(timestamp_suffixes(new))


def _claim_replaces(row: FileRecord, meta: FileMeta) -> bool:
    """Whether the claim ``meta`` replaces the name and timestamp of the known ``row``.

    Claims never override facts: a file this node holds (its bytes verified) is frozen, and a
    remote record keeps the timestamp first seen unless the newer one hashes the same way. So
    no message can make honest holders' bytes fail verification here. The size and the owner
    stay as first recorded in any case. A sealed record never changes."""
    if row.has_copy or row.seal is not None:
        return False
    if timestamp_value(meta.file_timestamp) <= row.timestamp_value:
        return False
    return _same_hash(ts_load(row.file_timestamp), meta.file_timestamp)


def _take_claim(row: FileRecord, meta: FileMeta) -> None:
    """Give ``row`` the name and timestamp of ``meta`` when the claim may replace them (see
    :func:`_claim_replaces`). The owner and the size stay as first recorded: only the owner may
    delete, and a record that merely claims a newer timestamp must not hand that right to
    someone else, nor make honest holders' sizes look like lies.

    A sealed ``meta`` over an unsealed ``row`` takes its place whole, seal and all: the caller
    judged the seal (:func:`treedrive.core.ownership.judge_record`: the same owner, pinned to
    the sealing key, agreeing with any bytes held here). A sealed row never changes."""
    if meta.seal is not None and row.seal is None:
        _take_sealed(row, meta)
    elif _claim_replaces(row, meta):
        row.file_name = meta.file_name
        row.file_timestamp = ts_text(meta.file_timestamp)
        row.timestamp_value = timestamp_value(meta.file_timestamp)


def _take_sealed(row: FileRecord, meta: FileMeta) -> None:
    assert meta.seal is not None
    row.file_name, row.file_size, row.file_owner = meta.file_name, meta.file_size, meta.file_owner
    row.file_timestamp = ts_text(meta.file_timestamp)
    row.timestamp_value = timestamp_value(meta.file_timestamp)
    row.owner_key, row.seal = meta.seal.owner_key, meta.seal.signature


def _latest_claims(metas: Sequence[FileMeta]) -> dict[str, FileMeta]:
    """One claim per id, in the order first listed: the first sealed one if any (an owner's
    word over claims), else the first, unless a later one is newer and hashes the same way (the
    one a record could take)."""
    latest: dict[str, FileMeta] = {}
    for meta in metas:
        seen = latest.get(meta.file_id)
        if seen is not None and seen.seal is not None:
            continue
        if (
            seen is None
            or meta.seal is not None
            or (
                timestamp_value(meta.file_timestamp) > timestamp_value(seen.file_timestamp)
                and _same_hash(seen.file_timestamp, meta.file_timestamp)
            )
        ):
            latest[meta.file_id] = meta
    return latest


def file_meta(row: FileRecord) -> FileMeta:
    seal = None
    if row.owner_key is not None and row.seal is not None:
        seal = Seal(bytes(row.owner_key), bytes(row.seal))
    return FileMeta(
        file_id=row.file_id,
        file_name=row.file_name,
        file_size=row.file_size,
        file_owner=row.file_owner,
        file_timestamp=ts_load(row.file_timestamp),
        seal=seal,
    )


def catalog_entry(row: FileRecord, *, holders: bool = True) -> CatalogEntry:
    return CatalogEntry(
        meta=file_meta(row),
        has_copy=row.has_copy,
        size_bytes=row.size_bytes,
        holders=tuple(sorted(h.peer_id for h in row.holders)) if holders else (),
    )


def _hash_overlap(a: Timestamp, b: Timestamp) -> bool:
    """Whether some bytes could verify under both ``a`` and ``b`` (a suffix in common)."""
    return bool(set(timestamp_suffixes(a)) & set(timestamp_suffixes(b)))


def _take_timestamp(row: FileRecord, ts: Timestamp) -> None:
    row.file_timestamp = ts_text(ts)
    row.timestamp_value = timestamp_value(ts)


def _drop_seal(row: FileRecord) -> None:
    row.owner_key = row.seal = None


class FileRepo:
    def __init__(self, session: Session) -> None:
        self.s = session

    def _row(self, file_id: str) -> FileRecord | None:
        return self.s.get(FileRecord, file_id)

    def get(self, file_id: str) -> CatalogEntry | None:
        row = self._row(file_id)
        return None if row is None else catalog_entry(row)

    def known(self, file_ids: Sequence[str]) -> dict[str, CatalogEntry]:
        """The records of those of ``file_ids`` that are known, without their holders (what
        judging a record needs: :mod:`treedrive.core.ownership`). Batched."""
        rows = self._records(list(dict.fromkeys(file_ids)))
        return {file_id: catalog_entry(row, holders=False) for file_id, row in rows.items()}

    def entries(
        self,
        scope: str = "both",
        *,
        offset: int = 0,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[CatalogEntry]:
        """``scope``: "local" (we hold a copy), "remote" (we don't), or "both"; newest first.
        ``after``: only the entries after the one with that id (a keyset page: it costs the
        same however deep it is; KeyError if that id is not in the catalogue).

        See :mod:`treedrive.store.pages`: a page deep into 100,000 records costs little more
        than the first."""
        return [catalog_entry(r) for r in page_rows(self.s, scope, offset, limit, after)]

    def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[str]:
        """The ids (at most ``limit``, in order) that start with the lowercase hex ``prefix``:
        a range scan of the primary key, so it costs the same in a catalogue of any size."""
        upper = prefix + "g"  # every hex id that starts with the prefix sorts below this
        q = (
            select(FileRecord.file_id)
            .where(FileRecord.file_id >= prefix, FileRecord.file_id < upper)
            .order_by(FileRecord.file_id)
            .limit(limit)
        )
        return list(self.s.scalars(q))

    def held_of_size(self, size: int, limit: int = 100) -> list[FileMeta]:
        """Records of files held here whose verified size is ``size`` bytes (at most
        ``limit``): the only ones that can hold the same bytes as a new file of that size."""
        q = (
            select(FileRecord)
            .where(FileRecord.has_copy.is_(True), FileRecord.size_bytes == size)
            .order_by(FileRecord.timestamp_value)
            .limit(limit)
        )
        return [file_meta(r) for r in self.s.scalars(q)]

    def count(self, scope: str = "both") -> int:
        """Records in ``scope``. The remote ones are all less the local ones: SQLite counts a
        whole table from its smallest index, and the few held here from theirs, but would
        walk 100,000 index entries to count the remote ones."""
        if scope == "remote":
            return self.count("both") - self.count("local")
        q = scoped(select(func.count()).select_from(FileRecord), scope)
        return int(self.s.scalar(q) or 0)

    def local_metas(self) -> list[FileMeta]:
        rows = self.s.scalars(select(FileRecord).where(FileRecord.has_copy.is_(True)))
        return [file_meta(r) for r in rows]

    def merge(self, meta: FileMeta, now: float) -> bool:
        """Record the claim ``meta``: a new id is added; a known one keeps what it has, except
        that a newer timestamp that hashes the same way may replace the name and timestamp of a
        record this node does not hold (see ``_claim_replaces``). Returns whether the id was
        new."""
        row = self._row(meta.file_id)
        if row is None:
            self.s.add(FileRecord(**_file_row(meta, now)))
            self.s.flush()
            return True
        _take_claim(row, meta)
        return False

    def advertise(
        self,
        holder: str,
        metas: Sequence[FileMeta],
        now: float,
        *,
        complete: bool = False,
        announced: bool = False,
        untouched: Collection[str] = (),
    ) -> list[tuple[FileMeta, bool]]:
        """``holder`` says it holds ``metas``: record new ids, add the holder (a known record
        changes only as :meth:`merge` says). ``complete``: that is all it holds (a
        GOSSIP_REPLY), so it stops holding the rest, except what it announced and the
        ``untouched`` ids (records of its that were refused: they change nothing). ``announced``:
        it says so in its own ANNOUNCE, so the holding stays while the peer is tracked,
        whatever its replies list (some classic peers list their files under other ids than
        they announced), until it answers "not here" (:meth:`remove_holder`), the file is
        deleted or the peer expires. Returns the (meta, is_new) that changed something.
        Batched: a reply with thousands of records costs a few statements, not thousands."""
        latest = _latest_claims(metas)
        rows = self._records(list(latest))
        held = self._held_by(holder)
        new_rows: list[dict[str, object]] = []
        new_holders: list[dict[str, object]] = []
        changed: list[tuple[FileMeta, bool]] = []
        for file_id, meta in latest.items():
            found = rows.get(file_id)
            if found is None:
                new_rows.append(_file_row(meta, now))
            else:
                _take_claim(found, meta)
            if file_id not in held:
                new_holders.append(
                    {"file_id": file_id, "peer_id": holder, "since": now, "announced": announced}
                )
            if found is None or file_id not in held:
                changed.append((meta, found is None))
        if new_rows:
            self.s.execute(insert(FileRecord), new_rows)
        if new_holders:
            self.s.execute(insert(Holder), new_holders)
        if announced:
            self._mark_announced(holder, [file_id for file_id in latest if file_id in held])
        if complete:
            self._drop_unlisted(holder, held - set(latest) - set(untouched))
        return changed

    def _records(self, ids: list[str]) -> dict[str, FileRecord]:
        rows: dict[str, FileRecord] = {}
        for part in chunks(ids):
            for row in self.s.scalars(select(FileRecord).where(FileRecord.file_id.in_(part))):
                rows[row.file_id] = row
        return rows

    def _held_by(self, holder: str) -> set[str]:
        return set(self.s.scalars(select(Holder.file_id).where(Holder.peer_id == holder)))

    def _mark_announced(self, holder: str, file_ids: list[str]) -> None:
        """``holder`` announced the ``file_ids`` it was already known to hold."""
        for part in chunks(file_ids):
            self.s.execute(
                update(Holder)
                .where(Holder.peer_id == holder, Holder.file_id.in_(part))
                .values(announced=True)
            )

    def _drop_unlisted(self, holder: str, file_ids: set[str]) -> None:
        """``holder`` no longer lists ``file_ids``: it stops holding those it did not announce."""
        for part in chunks(list(file_ids)):
            self.s.execute(
                delete(Holder).where(
                    Holder.peer_id == holder,
                    Holder.file_id.in_(part),
                    Holder.announced.is_(False),
                )
            )

    def add_holder(
        self, file_id: str, peer_id: str, now: float, *, announced: bool = False
    ) -> bool:
        """``peer_id`` holds ``file_id``; returns whether that is new. ``announced``: it stays
        while the peer is tracked, as if announced (see :meth:`advertise`): for a holder whose
        bytes verified here."""
        row = self.s.get(Holder, (file_id, peer_id))
        if row is not None:
            if announced:
                row.announced = True
            return False
        self.s.add(Holder(file_id=file_id, peer_id=peer_id, since=now, announced=announced))
        return True

    def remove_holder(self, file_id: str, peer_id: str) -> None:
        """``peer_id`` does not hold ``file_id`` (it said "not here"), announced or not."""
        self.s.execute(delete(Holder).where(Holder.file_id == file_id, Holder.peer_id == peer_id))

    def drop_untracked_holders(self) -> int:
        """Forget holders that are not tracked peers (an ANNOUNCE names no address)."""
        result = self.s.execute(delete(Holder).where(Holder.peer_id.not_in(select(Peer.peer_id))))
        return int(getattr(result, "rowcount", 0) or 0)

    def mark_local(self, meta: FileMeta, size: int, now: float) -> None:
        """This node holds the ``size`` bytes of ``meta`` and verified them under
        ``meta.file_timestamp``: a fact, which overrides earlier claims. The record takes that
        timestamp, and the size (``file_size`` becomes ``size`` in MB unless it already agrees
        with it); the name and the owner stay as first recorded. A record already held is
        frozen: nothing changes.

        A sealed record keeps its fields (the owner's timestamp hashes as the verified one)
        unless the fact contradicts them: then it loses its seal, which signed something
        false. A sealed ``meta`` over an unsealed record takes its place (see
        :func:`_take_claim`)."""
        row = self._row(meta.file_id)
        if row is None:
            self.s.add(FileRecord(**_file_row(meta, now)))
            self.s.flush()
            row = self._row(meta.file_id)
            assert row is not None
        elif row.has_copy:
            return
        elif row.seal is not None:
            if not _hash_overlap(ts_load(row.file_timestamp), meta.file_timestamp):
                _drop_seal(row)
                _take_timestamp(row, meta.file_timestamp)
        elif meta.seal is not None:
            _take_sealed(row, meta)
        else:
            _take_timestamp(row, meta.file_timestamp)
        if row.seal is not None and record_agrees(row.file_size, size) is False:
            _drop_seal(row)
        if row.seal is None and not size_agrees(row.file_size, size):
            row.file_size = size / MEGABYTE
        row.has_copy = True
        row.size_bytes = size

    def unmark_local(self, file_id: str) -> None:
        row = self._row(file_id)
        if row is not None:
            row.has_copy = False

    def remove(self, file_id: str) -> bool:
        row = self._row(file_id)
        if row is None:
            return False
        self.s.delete(row)
        self.s.flush()
        return True

    def remove_orphans(self) -> list[str]:
        """Drop remote records that nobody holds any more; returns their ids."""
        held = select(Holder.file_id)
        ids = list(
            self.s.scalars(
                select(FileRecord.file_id).where(
                    FileRecord.has_copy.is_(False), FileRecord.file_id.not_in(held)
                )
            )
        )
        if ids:
            self.s.execute(delete(FileRecord).where(FileRecord.file_id.in_(ids)))
        return ids
