"""What the web layer, the shell and scripts read of a node's catalogue, each in one read-only
unit of work (a snapshot that takes no write lock, so a large page never holds up the node's
writes, nor they it)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from treedrive.core.model import CatalogEntry, PeerInfo, TransferRecord
from treedrive.core.ports import Store


@dataclass(frozen=True, slots=True)
class Page:
    """One page of the catalogue, and how many entries the whole scope has."""

    total: int
    entries: list[CatalogEntry]


@dataclass(frozen=True, slots=True)
class Counts:
    peers: int
    files: int
    local: int
    remote: int


class Reads:
    """Read-only views of one node's store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def page(self, scope: str, offset: int, limit: int, after: str | None = None) -> Page:
        """Entries ``offset`` to ``offset + limit`` of ``scope`` ("local", "remote", "both");
        with ``after``, of those after the entry with that id (KeyError if it is unknown)."""
        with self._store.reading() as uow:
            total = uow.files.count(scope)
            return Page(total, uow.files.entries(scope, offset=offset, limit=limit, after=after))

    def peers(self, offset: int = 0, limit: int | None = None) -> tuple[int, list[PeerInfo]]:
        """How many peers are tracked, and those ``offset`` to ``offset + limit`` by id."""
        with self._store.reading() as uow:
            return uow.peers.count(), uow.peers.page(offset, limit)

    def everything(self) -> tuple[list[PeerInfo], list[CatalogEntry]]:
        """Every tracked peer and every catalogue entry, from one snapshot."""
        with self._store.reading() as uow:
            return uow.peers.all(), uow.files.entries("both")

    @contextmanager
    def paged(self, size: int) -> Iterator[tuple[list[PeerInfo], Iterator[list[CatalogEntry]]]]:
        """Every tracked peer, and the whole catalogue ``size`` entries at a time, from one
        snapshot held until the block ends (a caller on the event loop can yield between pages,
        and never holds the loop for the whole catalogue)."""
        with self._store.reading() as uow:

            def pages() -> Iterator[list[CatalogEntry]]:
                offset = 0
                while page := uow.files.entries("both", offset=offset, limit=size):
                    yield page
                    offset += len(page)

            yield uow.peers.all(), pages()

    def counts(self) -> Counts:
        with self._store.reading() as uow:
            return Counts(
                peers=uow.peers.count(),
                files=uow.files.count("both"),
                local=uow.files.count("local"),
                remote=uow.files.count("remote"),
            )

    def peer_kinds(self) -> tuple[int, int]:
        """The tracked peers that speak the extension, and the classic ones."""
        with self._store.reading() as uow:
            peers = uow.peers.all()
        treedrive = sum(1 for p in peers if p.is_treedrive)
        return treedrive, len(peers) - treedrive

    def recent_transfers(self, limit: int = 20) -> list[TransferRecord]:
        """The latest transfers the store remembers, newest first."""
        with self._store.reading() as uow:
            return uow.transfers.recent(limit)

    def blob(self, entry: CatalogEntry) -> Path | None:
        """Where the bytes of ``entry`` are, if this node holds them."""
        blobs = self._store.blobs
        file_id = entry.meta.file_id
        return blobs.path(file_id) if entry.has_copy and blobs.has(file_id) else None
