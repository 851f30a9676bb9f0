"""Unit of work and repositories (cosmicpython's shape).

Repositories read and stage changes; they never commit. ``UnitOfWork.commit()`` commits everything
at once and only then hands back the domain events recorded with ``uow.emit`` — the caller
publishes them, so a plugin never hears of a change that did not happen.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session

from treedrive.core.events import Event
from treedrive.core.model import DeleteSignature, PeerInfo, TransferRecord
from treedrive.store.downloads import DownloadRepo
from treedrive.store.files import FileRepo, chunks
from treedrive.store.keys import KeyRepo
from treedrive.store.models import (
    Holder,
    Identity,
    Peer,
    Tombstone,
    Transfer,
)


def _features_text(features: frozenset[str] | None) -> str | None:
    return None if features is None else " ".join(sorted(features))


def _features_load(text: str | None) -> frozenset[str] | None:
    return None if text is None else frozenset(text.split())


def peer_info(row: Peer) -> PeerInfo:
    return PeerInfo(
        peer_id=row.peer_id,
        host=row.host,
        port=row.port,
        last_seen=row.last_seen,
        features=_features_load(row.features),
    )


def transfer_record(row: Transfer) -> TransferRecord:
    return TransferRecord(
        id=row.id,
        file_id=row.file_id,
        direction=row.direction,
        peer_id=row.peer_id,
        state=row.state,
        bytes_done=row.bytes_done,
        bytes_total=row.bytes_total,
        started_at=row.started_at,
        updated_at=row.updated_at,
        error=row.error,
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
        return self.page()

    def page(self, offset: int = 0, limit: int | None = None) -> list[PeerInfo]:
        rows = self.s.scalars(select(Peer).order_by(Peer.peer_id).offset(offset).limit(limit))
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
        for part in chunks(gone):
            self.remove(part)
        return gone

    def expired(self, before: float) -> list[str]:
        return list(self.s.scalars(select(Peer.peer_id).where(Peer.last_seen < before)))

    def remove(self, peer_ids: Sequence[str]) -> None:
        if peer_ids:
            self.s.execute(delete(Holder).where(Holder.peer_id.in_(peer_ids)))
            self.s.execute(delete(Peer).where(Peer.peer_id.in_(peer_ids)))


class TombstoneRepo:
    def __init__(self, session: Session) -> None:
        self.s = session

    def owners(self, file_ids: Sequence[str]) -> dict[str, str]:
        """The recorded owner of each of ``file_ids`` that is tombstoned."""
        out: dict[str, str] = {}
        for part in chunks(list(file_ids)):
            q = select(Tombstone.file_id, Tombstone.file_owner).where(Tombstone.file_id.in_(part))
            out.update({file_id: owner for file_id, owner in self.s.execute(q)})
        return out

    def get(self, file_id: str) -> Tombstone | None:
        return self.s.get(Tombstone, file_id)

    def owner(self, file_id: str) -> str | None:
        row = self.s.get(Tombstone, file_id)
        return None if row is None else row.file_owner

    def add(
        self, file_id: str, owner: str, now: float, signed: DeleteSignature | None = None
    ) -> None:
        """Remember that ``owner`` deleted ``file_id`` (``signed``: with its signature, which
        relayed DELETEs carry on)."""
        if self.s.get(Tombstone, file_id) is None:
            row = Tombstone(file_id=file_id, file_owner=owner, deleted_at=now)
            if signed is not None:
                row.delete_ts, row.delete_sig = signed.ts, signed.signature
            self.s.add(row)

    def signatures(self, file_ids: Sequence[str]) -> dict[str, DeleteSignature]:
        """The owner's signature of the DELETE of each of ``file_ids`` that has one."""
        out: dict[str, DeleteSignature] = {}
        for part in chunks(list(file_ids)):
            q = select(Tombstone.file_id, Tombstone.delete_ts, Tombstone.delete_sig).where(
                Tombstone.file_id.in_(part), Tombstone.delete_sig.is_not(None)
            )
            for file_id, ts, sig in self.s.execute(q):
                if ts is not None and sig is not None:
                    out[file_id] = DeleteSignature(int(ts), bytes(sig))
        return out

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

    def recent(self, limit: int = 20) -> list[TransferRecord]:
        """The ``limit`` latest transfers, newest first."""
        q = select(Transfer).order_by(Transfer.id.desc()).limit(limit)
        return [transfer_record(r) for r in self.s.scalars(q)]

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
        self.keys = KeyRepo(self.session)
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


class ReadOnlyError(RuntimeError):
    """A read-only unit of work was asked to commit or to publish an event: a programming
    error (it holds no write lock, so what it staged could not be written safely)."""


class ReadOnlyUnitOfWork(UnitOfWork):
    """A unit of work that only reads (see ``Store.reading``): its transaction begins deferred,
    so it takes no write lock and sees one snapshot; it ends with a rollback."""

    def emit(self, event: Event) -> None:
        raise ReadOnlyError(f"a read-only unit of work cannot publish {type(event).__name__}")

    def commit(self) -> list[Event]:
        raise ReadOnlyError("a read-only unit of work cannot commit")

    def close(self) -> None:
        try:
            self.session.rollback()
        finally:
            super().close()
