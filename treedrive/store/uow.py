"""Unit of work and repositories (cosmicpython's shape).

Repositories read and stage changes; they never commit. ``UnitOfWork.commit()`` commits everything
at once and only then hands back the domain events recorded with ``uow.emit`` — the caller
publishes them, so a plugin never hears of a change that did not happen.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.orm import Session, selectinload

from treedrive.core.events import Event
from treedrive.core.fileid import timestamp_suffixes, timestamp_value
from treedrive.core.model import MEGABYTE, CatalogEntry, FileMeta, PeerInfo, Timestamp
from treedrive.core.sizes import size_agrees
from treedrive.store.downloads import DownloadRepo
from treedrive.store.models import (
    FileRecord,
    Holder,
    Identity,
    Peer,
    Tombstone,
    Transfer,
)


def _ts_text(ts: Timestamp) -> str:
    return json.dumps(ts)


def _ts_load(text: str) -> Timestamp:
    value = json.loads(text)
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        return value
    return str(value)


def _features_text(features: frozenset[str] | None) -> str | None:
    return None if features is None else " ".join(sorted(features))


def _features_load(text: str | None) -> frozenset[str] | None:
    return None if text is None else frozenset(text.split())


def _chunks(items: list[str], size: int = 500) -> Iterator[list[str]]:
    """Pieces small enough for SQLite's limit on bound parameters."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _file_row(meta: FileMeta, now: float) -> dict[str, object]:
    return {
        "file_id": meta.file_id,
        "file_name": meta.file_name,
        "file_size": meta.file_size,
        "file_owner": meta.file_owner,
        "file_timestamp": _ts_text(meta.file_timestamp),
        "timestamp_value": timestamp_value(meta.file_timestamp),
        "has_copy": False,
        "added_at": now,
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
    stay as first recorded in any case."""
    if row.has_copy:
        return False
    if timestamp_value(meta.file_timestamp) <= row.timestamp_value:
        return False
    return _same_hash(_ts_load(row.file_timestamp), meta.file_timestamp)


def peer_info(row: Peer) -> PeerInfo:
    return PeerInfo(
        peer_id=row.peer_id,
        host=row.host,
        port=row.port,
        last_seen=row.last_seen,
        features=_features_load(row.features),
    )


def file_meta(row: FileRecord) -> FileMeta:
    return FileMeta(
        file_id=row.file_id,
        file_name=row.file_name,
        file_size=row.file_size,
        file_owner=row.file_owner,
        file_timestamp=_ts_load(row.file_timestamp),
    )


def catalog_entry(row: FileRecord) -> CatalogEntry:
    return CatalogEntry(
        meta=file_meta(row),
        has_copy=row.has_copy,
        size_bytes=row.size_bytes,
        holders=tuple(sorted(h.peer_id for h in row.holders)),
    )


class IdentityRepo:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self) -> str | None:
        row = self.s.get(Identity, 1)
        return None if row is None else row.peer_id

    def set(self, peer_id: str, now: float) -> None:
        row = self.s.get(Identity, 1)
        if row is None:
            self.s.add(Identity(id=1, peer_id=peer_id, created_at=now))
        else:
            row.peer_id = peer_id


class PeerRepo:
    def __init__(self, session: Session) -> None:
        self.s = session
        self.evicted: list[str] = []
        """The peers the last :meth:`upsert` evicted to stay within its ``max_peers``."""

    def get(self, peer_id: str) -> PeerInfo | None:
        row = self.s.get(Peer, peer_id)
        return None if row is None else peer_info(row)

    def all(self) -> list[PeerInfo]:
        rows = self.s.scalars(select(Peer).order_by(Peer.peer_id))
        return [peer_info(r) for r in rows]

    def count(self) -> int:
        return int(self.s.scalar(select(func.count()).select_from(Peer)) or 0)

    def upsert(
        self,
        peer_id: str,
        host: str,
        port: int,
        now: float,
        features: frozenset[str] | None,
        *,
        keep_features: bool = False,
        max_peers: int | None = None,
        keep: Collection[str] = frozenset(),
    ) -> tuple[PeerInfo, bool]:
        """Track or refresh a peer; returns it and whether it is new.

        ``keep_features`` leaves known features alone (a message that does not say them).
        ``max_peers``: a new peer that would make more than this many tracked peers first
        evicts the longest silent ones (and their holder rows), those in ``keep`` last (see
        :meth:`evict_over`); their ids are in :attr:`evicted` afterwards (empty when none
        was). Values below 1 count as 1.
        """
        self.evicted = []
        row = self.s.get(Peer, peer_id)
        new = row is None
        if row is None:
            if max_peers is not None:
                self.evicted = self.evict_over(max(1, max_peers) - 1, keep=keep)
            row = Peer(peer_id=peer_id, host=host, port=port, last_seen=now, first_seen=now)
            row.features = _features_text(features)
            self.s.add(row)
        else:
            row.host, row.port, row.last_seen = host, port, max(row.last_seen, now)
            if not keep_features or features is not None:
                row.features = _features_text(features)
        return peer_info(row), new

    def evict_over(self, max_peers: int, keep: Collection[str] = frozenset()) -> list[str]:
        """Forget the longest silent peers (and their holder rows) until at most ``max_peers``
        are tracked; returns their ids. The peers not in ``keep`` go first, longest silent
        first; then, if that is not enough, the longest silent of those in ``keep`` (peers that
        answer this node: a flood of new peer ids must not push them out)."""
        over = self.count() - max(0, max_peers)
        if over <= 0:
            return []
        keep = frozenset(keep)
        q = select(Peer.peer_id).order_by(Peer.last_seen, Peer.peer_id)
        if not keep:
            q = q.limit(over)
        gone: list[str] = []
        spared: list[str] = []
        # Rows come longest silent first: at most len(keep) are passed over.
        rows = self.s.scalars(q)
        for peer_id in rows:
            (spared if peer_id in keep else gone).append(peer_id)
            if len(gone) == over:
                break
        rows.close()
        gone += spared[: over - len(gone)]
        for part in _chunks(gone):
            self.remove(part)
        return gone

    def expired(self, before: float) -> list[str]:
        return list(self.s.scalars(select(Peer.peer_id).where(Peer.last_seen < before)))

    def remove(self, peer_ids: Sequence[str]) -> None:
        if peer_ids:
            self.s.execute(delete(Holder).where(Holder.peer_id.in_(peer_ids)))
            self.s.execute(delete(Peer).where(Peer.peer_id.in_(peer_ids)))


class FileRepo:
    def __init__(self, session: Session) -> None:
        self.s = session

    def _row(self, file_id: str) -> FileRecord | None:
        return self.s.get(FileRecord, file_id)

    def get(self, file_id: str) -> CatalogEntry | None:
        row = self._row(file_id)
        return None if row is None else catalog_entry(row)

    def entries(
        self, scope: str = "both", *, offset: int = 0, limit: int | None = None
    ) -> list[CatalogEntry]:
        """``scope``: "local" (we hold a copy), "remote" (we don't), or "both"."""
        q = select(FileRecord).options(selectinload(FileRecord.holders))
        if scope == "local":
            q = q.where(FileRecord.has_copy.is_(True))
        elif scope == "remote":
            q = q.where(FileRecord.has_copy.is_(False))
        q = q.order_by(FileRecord.timestamp_value.desc(), FileRecord.file_id.desc())
        q = q.offset(offset).limit(limit)
        return [catalog_entry(r) for r in self.s.scalars(q)]

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
        q = select(func.count()).select_from(FileRecord)
        if scope == "local":
            q = q.where(FileRecord.has_copy.is_(True))
        elif scope == "remote":
            q = q.where(FileRecord.has_copy.is_(False))
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
        if _claim_replaces(row, meta):
            # The owner and the size stay as first recorded: only the owner may delete, and a
            # record that merely claims a newer timestamp must not hand that right to someone
            # else, nor make honest holders' sizes look like lies.
            row.file_name = meta.file_name
            row.file_timestamp = _ts_text(meta.file_timestamp)
            row.timestamp_value = timestamp_value(meta.file_timestamp)
        return False

    def advertise(
        self,
        holder: str,
        metas: Sequence[FileMeta],
        now: float,
        *,
        complete: bool = False,
        announced: bool = False,
    ) -> list[tuple[FileMeta, bool]]:
        """``holder`` says it holds ``metas``: record new ids, add the holder (a known record
        changes only as :meth:`merge` says). ``complete``: that is all it holds (a
        GOSSIP_REPLY), so it stops holding the rest, except what it announced. ``announced``:
        it says so in its own ANNOUNCE, so the holding stays while the peer is tracked,
        whatever its replies list (some classic peers list their files under other ids than
        they announced), until it answers "not here" (:meth:`remove_holder`), the file is
        deleted or the peer expires. Returns the (meta, is_new) that changed something.
        Batched: a reply with thousands of records costs a few statements, not thousands."""
        latest: dict[str, FileMeta] = {}
        for meta in metas:
            seen = latest.get(meta.file_id)
            if seen is None or (
                timestamp_value(meta.file_timestamp) > timestamp_value(seen.file_timestamp)
                and _same_hash(seen.file_timestamp, meta.file_timestamp)
            ):
                latest[meta.file_id] = meta
        ids = list(latest)
        rows: dict[str, FileRecord] = {}
        for part in _chunks(ids):
            for row in self.s.scalars(select(FileRecord).where(FileRecord.file_id.in_(part))):
                rows[row.file_id] = row
        held = set(self.s.scalars(select(Holder.file_id).where(Holder.peer_id == holder)))
        new_rows: list[dict[str, object]] = []
        new_holders: list[dict[str, object]] = []
        changed: list[tuple[FileMeta, bool]] = []
        for file_id, meta in latest.items():
            found = rows.get(file_id)
            if found is None:
                new_rows.append(_file_row(meta, now))
            elif _claim_replaces(found, meta):
                found.file_name = meta.file_name
                found.file_timestamp = _ts_text(meta.file_timestamp)
                found.timestamp_value = timestamp_value(meta.file_timestamp)
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
            known = [file_id for file_id in ids if file_id in held]
            for part in _chunks(known):
                self.s.execute(
                    update(Holder)
                    .where(Holder.peer_id == holder, Holder.file_id.in_(part))
                    .values(announced=True)
                )
        if complete:
            gone = held - set(ids)
            for part in _chunks(list(gone)):
                self.s.execute(
                    delete(Holder).where(
                        Holder.peer_id == holder,
                        Holder.file_id.in_(part),
                        Holder.announced.is_(False),
                    )
                )
        return changed

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
        frozen: nothing changes."""
        row = self._row(meta.file_id)
        if row is None:
            self.s.add(FileRecord(**_file_row(meta, now)))
            self.s.flush()
            row = self._row(meta.file_id)
            assert row is not None
        elif row.has_copy:
            return
        else:
            row.file_timestamp = _ts_text(meta.file_timestamp)
            row.timestamp_value = timestamp_value(meta.file_timestamp)
        if not size_agrees(row.file_size, size):
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


class TombstoneRepo:
    def __init__(self, session: Session) -> None:
        self.s = session

    def owners(self, file_ids: Sequence[str]) -> dict[str, str]:
        """The recorded owner of each of ``file_ids`` that is tombstoned."""
        out: dict[str, str] = {}
        for part in _chunks(list(file_ids)):
            q = select(Tombstone.file_id, Tombstone.file_owner).where(Tombstone.file_id.in_(part))
            out.update({file_id: owner for file_id, owner in self.s.execute(q)})
        return out

    def get(self, file_id: str) -> Tombstone | None:
        return self.s.get(Tombstone, file_id)

    def owner(self, file_id: str) -> str | None:
        row = self.s.get(Tombstone, file_id)
        return None if row is None else row.file_owner

    def add(self, file_id: str, owner: str, now: float) -> None:
        if self.s.get(Tombstone, file_id) is None:
            self.s.add(Tombstone(file_id=file_id, file_owner=owner, deleted_at=now))

    def count(self) -> int:
        return int(self.s.scalar(select(func.count()).select_from(Tombstone)) or 0)


class TransferRepo:
    def __init__(self, session: Session) -> None:
        self.s = session

    def start(
        self, file_id: str, direction: str, peer_id: str | None, total: int | None, now: float
    ) -> int:
        row = Transfer(
            file_id=file_id,
            direction=direction,
            peer_id=peer_id,
            state="running",
            bytes_done=0,
            bytes_total=total,
            started_at=now,
            updated_at=now,
        )
        self.s.add(row)
        self.s.flush()
        return row.id

    def finish(
        self,
        transfer_id: int,
        ok: bool,
        bytes_done: int,
        now: float,
        error: str | None = None,
        peer_id: str | None = None,
    ) -> None:
        row = self.s.get(Transfer, transfer_id)
        if row is not None:
            row.peer_id = peer_id or row.peer_id
            row.state = "done" if ok else "failed"
            row.bytes_done = bytes_done
            row.updated_at = now
            row.error = error

    def progress(self, transfer_id: int, bytes_done: int, now: float) -> None:
        """Record how far a running transfer got (it may never finish: a crash)."""
        row = self.s.get(Transfer, transfer_id)
        if row is not None and row.state == "running":
            row.bytes_done = bytes_done
            row.updated_at = now

    def recent(self, limit: int = 20) -> list[Transfer]:
        q = select(Transfer).order_by(Transfer.id.desc()).limit(limit)
        return list(self.s.scalars(q))

    def abandon_running(self, now: float) -> int:
        """Mark transfers a crash interrupted as failed; returns how many."""
        rows = list(self.s.scalars(select(Transfer).where(Transfer.state == "running")))
        for row in rows:
            row.state, row.error, row.updated_at = "failed", "interrupted by a restart", now
        return len(rows)


class UnitOfWork:
    def __init__(self, engine: Engine) -> None:
        self.session = Session(engine, expire_on_commit=False, autoflush=True)
        self.identity = IdentityRepo(self.session)
        self.peers = PeerRepo(self.session)
        self.files = FileRepo(self.session)
        self.tombstones = TombstoneRepo(self.session)
        self.transfers = TransferRepo(self.session)
        self.downloads = DownloadRepo(self.session)
        self._events: list[Event] = []
        self.published: list[Event] = []

    def emit(self, event: Event) -> None:
        """Record an event to hand out once the transaction commits."""
        self._events.append(event)

    def commit(self) -> list[Event]:
        self.session.commit()
        events, self._events = self._events, []
        self.published.extend(events)
        return events

    def rollback(self) -> None:
        self.session.rollback()
        self._events.clear()

    def close(self) -> None:
        self._events.clear()
        self.session.close()
