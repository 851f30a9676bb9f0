"""Ranged, multi-source, resumable downloads between TreeDrive nodes (extension ``raw-range``).

The file is cut into chunks fetched from every holder that speaks the extension, a bounded number
at a time; a chunk that fails goes back to the queue for another holder, and a holder that keeps
failing waits out a back-off. The chunks land in ``partial/<file_id>.range`` at their offsets;
every so often the file is synced and the chunks on disk are recorded in the store, so a crash
costs at most what arrived since the last sync. A task hashes the file in order while it arrives.
Nothing becomes a blob until the whole file verifies against its id; when it does not, the
chunks of each holder in turn are fetched again from the others until it does, which names the
holder that sent bad bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from treedrive.core import fileid
from treedrive.core.errors import ClassicAnswer, FetchFailed, TransferError
from treedrive.core.events import FileRefused
from treedrive.core.model import CatalogEntry, PeerInfo
from treedrive.core.ports import RangeAnswer
from treedrive.store.uow import DownloadState

if TYPE_CHECKING:
    from treedrive.core.node import Node, TransferHandle

log = logging.getLogger(__name__)

RAW_RANGE = "raw-range"
HASH_BLOCK = 1024 * 1024


class HolderGone(Exception):
    """The holder answered that it does not have the file."""


class RangedDownload:
    def __init__(self, node: Node, entry: CatalogEntry, holders: list[PeerInfo]) -> None:
        self.node = node
        self.entry = entry
        self.file_id = entry.meta.file_id
        self.holders = {p.peer_id: p for p in holders}
        cfg = node.config
        self.chunk_size = cfg.chunk_size
        self.max_inflight = cfg.max_inflight
        self.path = node.store.blobs.range_path(self.file_id)
        self.size: int | None = None
        self.done: set[int] = set()  # chunks on disk (maybe not yet synced)
        self.synced: frozenset[int] = frozenset()  # chunks recorded in the store
        self.sources: dict[int, str] = {}  # chunk -> holder that sent it (this run)
        self.failures: Counter[str] = Counter()
        self.backoff: dict[str, float] = {}
        self.excluded: set[str] = set()
        self.inflight_bytes: dict[int, int] = {}
        self.fetched_bytes = 0  # bytes that came over the network in this run
        self.handle: TransferHandle | None = None
        self.fd = -1
        self._arrived = asyncio.Event()
        self._syncing: asyncio.Task[None] | None = None

    # -- the plan ---------------------------------------------------------------------------
    @property
    def chunks(self) -> int:
        assert self.size is not None
        return max(1, -(-self.size // self.chunk_size))

    def span(self, chunk: int) -> tuple[int, int]:
        assert self.size is not None
        start = chunk * self.chunk_size
        return start, min(self.chunk_size, self.size - start)

    def bytes_on_disk(self) -> int:
        return sum(self.span(c)[1] for c in self.done)

    # -- running ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Fetch, verify and store the file, or raise FetchFailed (keeping what can resume)."""
        with self.node.store.unit_of_work() as uow:
            saved = uow.downloads.get(self.file_id)
        fresh = saved is None or not self.path.exists()
        if not fresh:
            assert saved is not None
            self.size, self.chunk_size = saved.size, saved.chunk_size
            self.done = set(saved.done)
            self.synced = saved.done
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if self.size is None:
                await self._first_chunk()
            assert self.size is not None
            if fresh:
                os.ftruncate(self.fd, self.size)
                self._save()
            if not fresh and self.done:
                log.info(
                    "resuming %s: %d of %d bytes already here",
                    self.file_id[:12],
                    self.bytes_on_disk(),
                    self.size,
                )
            self.handle = self.node.begin_transfer(self.entry.meta, "in", None, self.size)
            self._report()
            await self._fetch_and_verify()
        except BaseException as exc:
            if self.handle is not None:
                self.handle.finish(False, str(exc) or type(exc).__name__)
            raise
        finally:
            if self._syncing is not None:  # never sync a closed descriptor
                with contextlib.suppress(BaseException):
                    await self._syncing
            os.close(self.fd)

    async def _first_chunk(self) -> None:
        """Ask holders for chunk 0 until one answers: that answer says the file's size."""
        last = "no holder speaks the extension"
        for peer in self._usable():
            try:
                answer = await self._fetch(peer, 0, self.chunk_size)
            except (TransferError, HolderGone) as exc:
                last = f"{peer.peer_id}: {exc}"
                self._failed(peer.peer_id, exc)
                continue
            finally:
                self.inflight_bytes.pop(0, None)
            self.size = answer.size
            if answer.length == self.span(0)[1]:
                self.done.add(0)
                self.sources[0] = peer.peer_id
            return
        raise FetchFailed(f"could not start {self.file_id[:12]}… ({last})")

    async def _fetch(self, peer: PeerInfo, offset: int, length: int) -> RangeAnswer:
        answer = await self.node.network.fetch_range(
            peer.host, peer.port, self.file_id, offset, length, self.fd,
            self._progress_for(offset),
        )  # fmt: skip
        if answer.meta is None:
            raise HolderGone("does not have it")
        if answer.meta.file_id != self.file_id:
            raise TransferError("sent another file")
        if self.size is not None and answer.size != self.size:
            raise TransferError(f"says the file has {answer.size} bytes, not {self.size}")
        self.fetched_bytes += answer.length
        return answer

    def _progress_for(self, offset: int) -> Callable[[int], None]:
        chunk = offset // self.chunk_size

        def progress(done: int) -> None:
            if chunk not in self.done:  # a late report of a chunk already counted
                self.inflight_bytes[chunk] = done
                self._report()

        return progress

    def _report(self) -> None:
        if self.handle is not None:
            # The peers this download has taken chunks from so far.
            self.handle.state.peer_id = ", ".join(sorted(set(self.sources.values()))) or None
            done = self.bytes_on_disk() + sum(self.inflight_bytes.values())
            self.handle.update(min(done, self.size or 0))

    def _usable(self) -> list[PeerInfo]:
        now = time.monotonic()
        return [
            p
            for p in self.holders.values()
            if p.peer_id not in self.excluded and self.backoff.get(p.peer_id, 0) <= now
        ]

    def _failed(self, peer_id: str, exc: BaseException) -> None:
        if isinstance(exc, HolderGone | ClassicAnswer):
            # It does not have the file, or speaks only hex: not a holder for this download
            # (the node falls back to the classic GET_FILE for such holders).
            self.excluded.add(peer_id)
            return
        self.failures[peer_id] += 1
        wait = min(30.0, 0.25 * 2 ** self.failures[peer_id])
        self.backoff[peer_id] = time.monotonic() + wait
        log.info("chunk from %s failed (%s); retrying it elsewhere", peer_id, exc)

    def _refresh_holders(self) -> None:
        """Holders come and go while we wait: take the catalogue's current view."""
        entry = self.node.file(self.file_id)
        if entry is None:
            raise FetchFailed(f"{self.file_id[:12]}… was deleted meanwhile")
        for peer in self.node.peers():
            if (
                peer.peer_id in entry.holders
                and RAW_RANGE in (peer.features or ())
                and not self.node.distrusted(peer.peer_id)
            ):
                self.holders[peer.peer_id] = peer

    async def _fetch_chunks(self, wanted: list[int], avoid: str | None = None) -> None:
        """Fetch ``wanted`` chunks from the holders (never from ``avoid``), a few at a time."""
        pending = deque(wanted)
        inflight: dict[asyncio.Task[RangeAnswer], tuple[int, str]] = {}
        load: Counter[str] = Counter()
        given: Counter[str] = Counter(self.sources.values())
        stalled_since: float | None = None
        try:
            while pending or inflight:
                usable = [p for p in self._usable() if p.peer_id != avoid]
                per_holder = max(1, -(-self.max_inflight // max(1, len(usable))))
                # The least busy holder first; among equals, the one given the fewest chunks.
                for peer in sorted(usable, key=lambda p: (load[p.peer_id], given[p.peer_id])):
                    while pending and len(inflight) < self.max_inflight:
                        if load[peer.peer_id] >= per_holder:
                            break
                        chunk = pending.popleft()
                        offset, length = self.span(chunk)
                        task = asyncio.ensure_future(self._fetch(peer, offset, length))
                        inflight[task] = (chunk, peer.peer_id)
                        load[peer.peer_id] += 1
                        given[peer.peer_id] += 1
                if not inflight:
                    now = time.monotonic()
                    stalled_since = stalled_since or now
                    if now - stalled_since > self.node.config.stall_timeout:
                        raise FetchFailed(
                            f"no holder of {self.file_id[:12]}… answered for "
                            f"{self.node.config.stall_timeout:.0f} s; it can resume later"
                        )
                    await asyncio.sleep(0.2)
                    self._refresh_holders()
                    continue
                stalled_since = None
                finished, _ = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    chunk, peer_id = inflight.pop(task)
                    load[peer_id] -= 1
                    self.inflight_bytes.pop(chunk, None)
                    try:
                        answer = task.result()
                    except (TransferError, HolderGone) as exc:
                        self._failed(peer_id, exc)
                        pending.appendleft(chunk)
                        continue
                    if answer.length != self.span(chunk)[1]:
                        self._failed(peer_id, TransferError("sent a short range"))
                        pending.appendleft(chunk)
                        continue
                    self.done.add(chunk)
                    self.sources[chunk] = peer_id
                    self._arrived.set()
                    self._report()
                self._maybe_checkpoint()
                self._report()
        finally:
            for task in inflight:
                task.cancel()
            if inflight:
                await asyncio.wait(inflight)

    def _maybe_checkpoint(self) -> None:
        """Every ``sync_every`` bytes (at most 1/20 of the file, so that little is ever fetched
        again after a crash), sync the partial file and record its chunks: in the background,
        one sync at a time, so that the chunks keep coming meanwhile."""
        if self._syncing is not None and not self._syncing.done():
            return
        assert self.size is not None
        every = min(self.node.config.sync_every, max(self.chunk_size, self.size // 20))
        if sum(self.span(c)[1] for c in self.done - self.synced) >= every:
            self._syncing = asyncio.ensure_future(self._sync(frozenset(self.done)))

    async def _sync(self, snapshot: frozenset[int]) -> None:
        """Make the chunks in ``snapshot`` durable, then record them."""
        await asyncio.to_thread(os.fdatasync, self.fd)
        self.synced = snapshot
        self._save()

    async def _checkpoint(self) -> None:
        """Sync and record every chunk on disk now (waiting for a sync under way)."""
        if self._syncing is not None:
            with contextlib.suppress(Exception):
                await self._syncing
            self._syncing = None
        if self.done - self.synced:
            await self._sync(frozenset(self.done))

    def _save(self) -> None:
        assert self.size is not None
        state = DownloadState(self.file_id, self.size, self.chunk_size, self.synced)
        with self.node.store.unit_of_work() as uow:
            uow.downloads.save(state, time.time())
            uow.commit()

    async def _fetch_and_verify(self) -> None:
        hasher = asyncio.ensure_future(self._hash_in_order())
        try:
            await self._fetch_chunks([c for c in range(self.chunks) if c not in self.done])
            await self._checkpoint()
            digest = await hasher
        finally:
            hasher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hasher
        if not self._matches(digest):
            digest = await self._find_bad_holder()
        await self._commit()

    async def _hash_in_order(self) -> hashlib._Hash:
        """sha256 of the file, chunk by chunk in order, as the chunks arrive."""
        h = hashlib.sha256()
        for chunk in range(self.chunks):
            while chunk not in self.done:
                self._arrived.clear()
                await self._arrived.wait()
            offset, length = self.span(chunk)
            await asyncio.to_thread(self._hash_span, h, offset, length)
        return h

    def _hash_span(self, h: hashlib._Hash, offset: int, length: int) -> None:
        end = offset + length
        while offset < end:
            block = os.pread(self.fd, min(HASH_BLOCK, end - offset), offset)
            if not block:
                raise OSError("the partial file is shorter than it should be")
            h.update(block)
            offset += len(block)

    def _matches(self, h: hashlib._Hash) -> bool:
        return fileid.matches(h, self.entry.meta.file_timestamp, self.file_id)

    async def _rehash(self) -> hashlib._Hash:
        h = hashlib.sha256()
        assert self.size is not None
        await asyncio.to_thread(self._hash_span, h, 0, self.size)
        return h

    async def _find_bad_holder(self) -> hashlib._Hash:
        """The bytes do not verify: fetch each holder's chunks again from the others; the
        holder whose chunks, replaced, make the file verify sent the bad bytes."""
        by_holder = Counter(self.sources.values())
        for suspect, _ in by_holder.most_common():
            chunks = [c for c, p in self.sources.items() if p == suspect]
            others = [p for p in self._usable() if p.peer_id != suspect]
            if not others:
                continue
            log.warning(
                "%s did not verify; fetching %d chunks that %s sent from other holders",
                self.file_id[:12],
                len(chunks),
                suspect,
            )
            await self._fetch_chunks(chunks, avoid=suspect)
            digest = await self._rehash()
            if self._matches(digest):
                self._blame(suspect, len(chunks))
                return digest
        await self._discard()
        raise FetchFailed(f"{self.file_id[:12]}… did not verify from any set of its holders")

    def _blame(self, peer_id: str, chunks: int) -> None:
        reason = f"sent {chunks} chunks that do not match the file id"
        log.warning("holder %s of %s %s; avoiding it", peer_id, self.file_id[:12], reason)
        self.node.distrust(peer_id)
        self.node.publish([FileRefused(self.file_id, peer_id, reason)])

    async def _discard(self) -> None:
        self.path.unlink(missing_ok=True)
        with self.node.store.unit_of_work() as uow:
            uow.downloads.remove(self.file_id)
            uow.commit()

    async def _commit(self) -> None:
        assert self.size is not None
        assert self.handle is not None
        await asyncio.to_thread(self.node.store.blobs.adopt, self.path, self.file_id)
        with self.node.store.unit_of_work() as uow:
            uow.downloads.remove(self.file_id)
            uow.commit()
        self.handle.update(self.size)
        self.handle.finish(True)
        log.info(
            "got %s (%d bytes; %d over the network in this run) from %s",
            self.file_id[:12],
            self.size,
            self.fetched_bytes,
            ", ".join(sorted(set(self.sources.values()))) or "this node's partial file",
        )
