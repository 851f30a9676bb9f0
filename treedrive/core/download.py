"""Ranged, multi-source, resumable downloads between TreeDrive nodes (extension ``raw-range``).

The file is cut into chunks (sized by the file: 4 to 32 MiB) fetched from every holder that speaks
the extension, a bounded number at a time. Each chunk lands front to back at its offset in
``partial/<file_id>.range``, so what is on disk is always, per chunk, a prefix; a chunk that fails
goes back to the queue and continues from where its bytes stop, with another holder if there is
one, and a holder that keeps failing waits out a back-off. Every so often the file is synced and
those prefixes are recorded in the store, so a crash costs at most what arrived since the last
sync. A thread hashes the file in order, following the bytes as they land. Nothing becomes a blob
until the whole file verifies against its id; when it does not, the chunks of each holder in turn
are fetched again from the others until it does, which names the holder that sent bad bytes.

The file's size is what the first holder to answer says, checked against what this node knows:
a size it verified (``size_bytes``) is a fact, and a holder that contradicts it lies (it is
distrusted for a while). A record's ``file_size`` is only a claim (the first record seen may be
a forgery): a holder that contradicts it is left out of this download and nothing more, until
the bytes verify (then those that said another size lied, and are distrusted). When
every holder that answers contradicts the claim, a size that a majority of them (at least two)
report, or one no larger than the claim, is taken after all (never more than the free disk);
the bytes verify against the id in the end anyway, but no resumable state is kept for a size
that only the holders said.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from treedrive.core import fileid
from treedrive.core.activity import file_label
from treedrive.core.errors import ClassicAnswer, FetchFailed, StorageError, TransferError
from treedrive.core.events import FileRefused
from treedrive.core.frontier import Frontier
from treedrive.core.model import CatalogEntry, DownloadState, FileMeta, PeerInfo, Timestamp
from treedrive.core.ports import RangeAnswer
from treedrive.core.sizes import SMALL, record_agrees, size_hint

if TYPE_CHECKING:
    from treedrive.core.node import Node
    from treedrive.core.transfers import TransferHandle

log = logging.getLogger(__name__)

RAW_RANGE = "raw-range"
HASH_BLOCK = 4 * 1024 * 1024
MIN_CHUNK = 4 * 1024 * 1024
MAX_CHUNK = 32 * 1024 * 1024
CHUNKS_PER_FILE = 16
"""With the chunk size chosen by the file's size, a file has about this many chunks (more when
it is over 512 MiB): enough to spread over several holders, few enough that each ranged request
moves many MiB."""
MIN_SYNC = 256 * 1024
MIB = 1024 * 1024
TAKE_OVER_AFTER = 0.5
"""Seconds a range must have run before its rate says it is slow (see ``_take_over``)."""
TAKE_OVER_GAIN = 2.0
"""An idle holder takes over the rest of a range when it would finish it this many times sooner."""
TAIL = 4 * 1024 * 1024
"""A range with this little left no longer counts against its holder's one range at a time: the
next one is asked for meanwhile, so that the holder's stream does not stop between ranges (a
ranged request costs a couple of milliseconds before its first byte)."""
PER_HOLDER = 1
"""Ranges in flight from one holder. One stream per holder keeps the in-order hasher right behind
the bytes; more split a holder's bandwidth over chunks that all finish together, and the hasher
waits for the first of them while the others pile up. Measured at 1 GiB on loopback (2 cores):
one range at a time 0.94-1.03 GB/s with 10-50 ms of hashing left at the end, two 0.89-0.96 GB/s
with 0.1-0.3 s left, four 0.82-0.93 GB/s."""


def chunk_size_for(size: int) -> int:
    """The chunk size for a file of ``size`` bytes: a whole number of MiB, 4 to 32 MiB."""
    chunk = size // CHUNKS_PER_FILE // MIB * MIB
    return max(MIN_CHUNK, min(MAX_CHUNK, chunk))


class HolderGone(Exception):
    """The holder answered that it does not have the file."""


class LyingHolder(TransferError):
    """The holder's answer contradicts what this node knows of the file (its verified size): it
    is not used for this download, and distrusted for a while."""


class Disagrees(TransferError):
    """The holder's size contradicts the record's claimed ``file_size`` (only a claim: the
    record may be the forgery): the holder is not used for this download, and that is all."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class RangedDownload:
    def __init__(self, node: Node, entry: CatalogEntry, holders: list[PeerInfo]) -> None:
        self.node = node
        self.entry = entry
        self.file_id = entry.meta.file_id
        self.label = file_label(entry.meta)
        """The file as log lines and errors name it (its name and short id)."""
        self.holders = {p.peer_id: p for p in holders}
        cfg = node.config
        self.chunk_size = cfg.chunk_size or chunk_size_for(size_hint(entry))
        self.max_inflight = cfg.max_inflight
        self.path = node.store.blobs.range_path(self.file_id)
        self.run_id = secrets.token_hex(8)
        """Names this run of the download to its holders (each counts its ranges as one upload)."""
        self.size: int | None = None
        self.frontier: Frontier | None = None
        self.synced: list[int] = []  # per chunk, the bytes recorded in the store
        self.sources: dict[int, set[str]] = {}  # chunk -> holders that sent bytes of it (this run)
        self.failures: Counter[str] = Counter()
        self.backoff: dict[str, float] = {}
        self.excluded: set[str] = set()
        self.handle: TransferHandle | None = None
        self.fd = -1
        self._syncing: asyncio.Task[None] | None = None
        self._hashing: asyncio.Future[hashlib._Hash] | None = None
        self._ending: set[int] = set()  # chunks whose range is in its last TAIL bytes
        self._wake = asyncio.Event()
        self._running: dict[int, tuple[float, int]] = {}  # chunk -> (started, bytes so far)
        self._speed: dict[str, float] = {}  # holder -> bytes/s of its last whole range
        self._not_from: dict[int, str] = {}  # chunk -> the slow holder it was taken from
        self.told_timestamps: dict[str, Timestamp] = {}
        """The timestamp each holder's first answer carried: one per holder, so that a liar's
        answers never crowd out an honest holder's (see ``timestamps``)."""
        self.told_sizes: dict[str, int] = {}
        """Sizes holders said that contradict the record's claimed ``file_size`` (see
        ``_adopt``); once the bytes verify, those that said another size are distrusted."""
        self.resumable = True
        """False once the size is one only holders said, against the record: then no
        resumable state is kept (a crash or a failure starts over)."""
        self.verified: Timestamp | None = None
        """The timestamp the bytes verified under, once they did."""
        self._first_bytes = 0  # bytes of chunk 0 on disk while the size is not known yet
        self._refused = False  # a holder's size was refused in this run (its bytes are not kept)

    @property
    def timestamps(self) -> list[Timestamp]:
        """What the bytes are verified under: the record's timestamp, then those the holders'
        answers carry (a first-seen record may be a forgery; the id commits to the true one)."""
        record = self.entry.meta.file_timestamp
        told = dict.fromkeys(ts for ts in self.told_timestamps.values() if ts != record)
        return [record, *told]

    @property
    def verified_meta(self) -> FileMeta:
        """The record as this node now knows it: with the timestamp the bytes verified under."""
        if self.verified is None:
            return self.entry.meta
        return replace(self.entry.meta, file_timestamp=self.verified)

    @property
    def fetched_bytes(self) -> int:
        """Bytes that came over the network in this run."""
        return self.frontier.received if self.frontier is not None else 0

    def _frontier(self) -> Frontier:
        assert self.frontier is not None
        return self.frontier

    # -- running ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Fetch, verify and store the file, or raise FetchFailed (keeping what can resume).

        A fresh download is recorded before its first byte (size not known yet: 0), so that a
        disk that fills during the first chunk leaves a download that resumes like any other.
        The first answer's size is checked against the catalogue before anything is allocated
        for it; the partial file is sized in a thread."""
        with self.node.store.unit_of_work() as uow:
            saved = uow.downloads.get(self.file_id)
        fresh = saved is None or not self.path.exists()
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if fresh or (saved is not None and saved.size == 0):
                start = 0
                if fresh:
                    self._record(DownloadState(self.file_id, 0, self.chunk_size, frozenset()))
                else:
                    assert saved is not None
                    self.chunk_size = saved.chunk_size
                    start = saved.partial.get(0, 0)
                    start = start if 0 < start < self.chunk_size else 0
                # Visible from its first byte (its size is the record's claim until an answer
                # says it).
                self.handle = self.node.begin_transfer(
                    self.entry.meta, "in", None, size_hint(self.entry) or None, start
                )
                await self._first_chunk(start)
                self._check_room()
                await self._size_partial()
                self._save()
            else:
                assert saved is not None
                self._resume(saved)
                self._check_room()
                await self._size_partial()
            frontier = self._frontier()
            if self.handle is None:
                already = min(frontier.on_disk(), frontier.size)  # resumed: there before
                self.handle = self.node.begin_transfer(
                    self.entry.meta, "in", None, frontier.size, already
                )
            else:
                self.handle.state.bytes_total = frontier.size
            self._report()
            await self._fetch_and_verify()
        except StorageError as exc:
            log.error("download of %s stopped: %s", self.label, exc)
            self._finish_failed(exc)
            await self._keep_resumable()
            raise StorageError(
                f"{exc}; the download of {self.entry.meta.file_name!r} stopped, keeping what "
                "arrived (it goes on by itself once the disk takes it)"
            ) from exc
        except BaseException as exc:
            self._finish_failed(exc)
            if (self.frontier is None and (fresh or self._refused)) or not self.resumable:
                # It never started, or its size is only the holders' word: nothing to resume
                # (and the bytes of a holder whose size was refused are not kept).
                with contextlib.suppress(Exception):
                    self._forget_download()
            raise
        finally:
            if self.frontier is not None:
                self.frontier.close()
            for running in (self._hashing, self._syncing):  # never use a closed descriptor
                if running is not None:
                    with contextlib.suppress(BaseException):
                        await running
            os.close(self.fd)

    async def _size_partial(self) -> None:
        """Give the partial file the file's size (sparse), in a thread: never on the loop."""
        size = self._frontier().size

        def size_it() -> None:
            if os.fstat(self.fd).st_size != size:
                os.ftruncate(self.fd, size)

        try:
            await asyncio.to_thread(size_it)
        except OSError as exc:
            raise StorageError(f"cannot size the partial file: {exc.strerror}") from exc

    async def _keep_resumable(self) -> None:
        """After a StorageError: record what is on disk for good, so that the download goes on
        once there is room. Best effort (the full disk may refuse this record too)."""
        try:
            if not self.resumable:  # start over once there is room: free the disk meanwhile
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(os.ftruncate, self.fd, 0)
                self._record(DownloadState(self.file_id, 0, self.chunk_size, frozenset()))
                return
            if self.frontier is not None:
                self._save()
                return
            kept = 0
            if self._first_bytes > 0:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(os.fdatasync, self.fd)
                    kept = self._first_bytes
            partial = {0: kept} if kept else {}
            self._record(DownloadState(self.file_id, 0, self.chunk_size, frozenset(), partial))
        except Exception as exc:
            log.warning("could not record the download of %s: %s", self.label, exc)

    def _finish_failed(self, exc: BaseException) -> None:
        if self.handle is not None:
            try:
                self.handle.finish(False, str(exc) or type(exc).__name__)
            except Exception:  # a full disk may refuse this record too: keep the first error
                log.exception("recording the failed download of %s failed", self.label)

    def _free(self) -> int:
        return shutil.disk_usage(self.path.parent).free

    def _check_room(self) -> None:
        """Refuse to start when the disk cannot take the rest of the file."""
        frontier = self._frontier()
        need = frontier.size - frontier.on_disk()
        free = self._free()
        if need > free:
            raise StorageError(
                f"not enough disk space: {need} more bytes needed, {free} free in "
                f"{self.path.parent}"
            )

    def _resume(self, saved: DownloadState) -> None:
        self.size, self.chunk_size = saved.size, saved.chunk_size
        have = dict(saved.partial)
        for c in saved.done:
            have[c] = self.chunk_size
        self.frontier = Frontier(saved.size, saved.chunk_size, have)
        self.synced = self.frontier.snapshot()
        if self.frontier.on_disk():
            log.info(
                "resuming %s: %d of %d bytes already here",
                self.label,
                self.frontier.on_disk(),
                self.size,
            )

    async def _first_chunk(self, start: int = 0) -> None:
        """Ask holders for chunk 0 (from ``start``, what is already on disk of it) until one
        answers with a size this node can believe: that answer says the file's size. When every
        one that answers contradicts the record's claimed size, see ``_adopt``."""
        last = "no holder speaks the extension"
        self._first_bytes = start
        latest: tuple[str, RangeAnswer, int] | None = None  # whose bytes of chunk 0 are on disk
        for peer in self._usable():
            got = 0

            def written(n: int) -> None:
                nonlocal got
                got = n
                self._first_bytes = max(self._first_bytes, start + n)

            asked = time.monotonic()
            latest = None  # what a failed request wrote may be on disk now
            try:
                answer = await self._request(
                    peer, start, self.chunk_size - start, self._first_progress, written
                )
                if (elapsed := time.monotonic() - asked) > 0:
                    self._speed[peer.peer_id] = answer.length / elapsed
                latest = (peer.peer_id, answer, got)
                self._believe(answer.size)
            except (TransferError, HolderGone) as exc:
                last = f"{peer.peer_id}: {exc}"
                self._failed(peer.peer_id, exc)
                continue
            if not self.entry.size_bytes and record_agrees(self.entry.meta.file_size, 0) is None:
                self.resumable = False  # the record says nothing: the size is this holder's word
            await self._sized(answer.size, start, peer.peer_id, answer, got)
            return
        size = self._adopt()
        if size is not None:
            log.warning(
                "%s: its record says %r (a claim); %d of its holders say %d bytes: taken, "
                "without resumable state",
                self.label,
                self.entry.meta.file_size,
                sum(1 for s in self.told_sizes.values() if s == size),
                size,
            )
            self.resumable = False
            for peer_id, told in self.told_sizes.items():
                if told == size:  # they said the size taken: usable after all
                    self.excluded.discard(peer_id)
            if latest is not None and latest[1].size == size:
                await self._sized(size, start, *latest)
            else:  # the bytes on disk are another size's: chunk 0 is fetched again
                await self._sized(size, 0, None, None, 0)
            return
        raise FetchFailed(f"could not start {self.label} ({last})")

    async def _sized(
        self, size: int, start: int, peer_id: str | None, answer: RangeAnswer | None, got: int
    ) -> None:
        """The file has ``size`` bytes; ``peer_id`` sent ``answer``, chunk 0 from ``start``."""
        self.size = size
        have = {0: start + answer.length} if answer is not None else {}
        # Sized by a believed size, and built off the loop all the same.
        self.frontier = await asyncio.to_thread(Frontier, size, self.chunk_size, have)
        self.frontier.received = got
        self.synced = [0] * self.frontier.count
        if peer_id is not None:
            self.sources[0] = {peer_id}

    def _believe(self, size: int) -> None:
        """Raise LyingHolder unless ``size`` (a holder's word for the file's size) is the size
        this node verified, when it did. Else raise Disagrees unless it agrees with the record's
        claimed ``file_size`` (see :func:`record_agrees`). When the record does not say, a size
        larger than this disk's free space is not believed either: such a holder is not usable
        (a file the record says is too large is a StorageError, from _check_room)."""
        known = self.entry.size_bytes
        claim = self.entry.meta.file_size
        if known:
            if size != known:
                raise LyingHolder(f"says the file has {size} bytes; it has {known}")
            return
        agrees = record_agrees(claim, size)
        if agrees is False:
            raise Disagrees(
                f"says the file has {size} bytes; its record claims {claim!r} (MB or bytes)", size
            )
        if agrees is None and size > (free := self._free()):
            raise LyingHolder(
                f"says the file has {size} bytes, more than this disk's {free} free, and its "
                "record does not say its size: not usable"
            )

    def _adopt(self) -> int | None:
        """The size to take when every holder that answered contradicts the record's claimed
        size (``told_sizes``): the one a majority of them say, if at least two do; else one no
        larger than what the record claims (the record already bounds what this node would
        allocate; a record of 0 claims at most ``SMALL``). Never more than the free disk."""
        if not self.told_sizes:
            return None
        free = self._free()
        counts = Counter(s for s in self.told_sizes.values() if s <= free)
        bound = max(size_hint(self.entry), SMALL)
        for size, n in counts.most_common():
            if (n >= 2 and 2 * n > len(self.told_sizes)) or size <= bound:
                return size
        return None

    async def _request(
        self,
        peer: PeerInfo,
        offset: int,
        length: int,
        progress: Callable[[int], None] | None,
        written: Callable[[int], None],
    ) -> RangeAnswer:
        answer = await self.node.network.fetch_range(
            peer.host,
            peer.port,
            self.file_id,
            offset,
            length,
            self.fd,
            progress,
            written,
            self.run_id,
        )
        if answer.meta is None:
            raise HolderGone("does not have it")
        if answer.meta.file_id != self.file_id:
            raise TransferError("sent another file")
        # One per holder: bounded by the holders, and a liar's never crowd out the others'.
        self.told_timestamps.setdefault(peer.peer_id, answer.meta.file_timestamp)
        if self.size is not None and answer.size != self.size:
            raise TransferError(f"says the file has {answer.size} bytes, not {self.size}")
        return answer

    async def _fetch(self, peer: PeerInfo, chunk: int) -> RangeAnswer:
        """The rest of ``chunk`` (from where its bytes on disk stop) from ``peer``."""
        frontier = self._frontier()
        begin, length = frontier.span(chunk)
        start = frontier.have[chunk]
        self.sources.setdefault(chunk, set()).add(peer.peer_id)
        self._ending.discard(chunk)
        left = length - start
        started = time.monotonic()
        self._running[chunk] = (started, 0)

        def progress(done: int) -> None:
            self._running[chunk] = (started, done)
            if left - done <= TAIL and chunk not in self._ending:
                self._ending.add(chunk)
                self._wake.set()
            self._progress(done)

        try:
            answer = await self._request(
                peer, begin + start, left, progress, frontier.writer(chunk, start)
            )
        finally:
            self._running.pop(chunk, None)
        if answer.length != length - start:
            raise TransferError("sent a short range")
        elapsed = time.monotonic() - started
        if elapsed > 0 and left > 0:
            self._speed[peer.peer_id] = left / elapsed
        return answer

    def _progress(self, _done: int) -> None:
        self._report()
        self._maybe_checkpoint()

    def _first_progress(self, _done: int) -> None:
        """Progress of chunk 0, before the frontier exists (on the loop)."""
        if self.handle is not None:
            self.handle.update(self._first_bytes)

    def _report(self) -> None:
        if self.handle is not None and self.frontier is not None:
            # The peers this download has taken bytes from so far.
            self.handle.state.peer_id = ", ".join(sorted(self._peers())) or None
            self.handle.update(min(self.frontier.on_disk(), self.frontier.size))

    def _peers(self) -> set[str]:
        return {p for ps in self.sources.values() for p in ps}

    def _usable(self) -> list[PeerInfo]:
        now = time.monotonic()
        return [
            p
            for p in self.holders.values()
            if p.peer_id not in self.excluded and self.backoff.get(p.peer_id, 0) <= now
        ]

    def _failed(self, peer_id: str, exc: BaseException) -> None:
        if isinstance(exc, Disagrees):
            # The record's size is only a claim: which of the two is wrong is not known yet.
            # Not used for this download (unless ``_adopt`` takes its size), nothing more.
            self._refused = True
            self.excluded.add(peer_id)
            self.told_sizes[peer_id] = exc.size
            log.info("holder %s of %s %s; not used for this download", peer_id, self.label, exc)
            return
        if isinstance(exc, LyingHolder):
            # Not this node's disk, not a passing failure: the holder is not used again here.
            self._refused = True
            self.excluded.add(peer_id)
            log.warning("holder %s of %s %s; avoiding it", peer_id, self.label, exc)
            self.node.distrust(peer_id)
            self.node.notify(FileRefused(self.file_id, peer_id, str(exc)))
            return
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
            raise FetchFailed(f"{self.label} was deleted meanwhile")
        for peer in self.node.peers():
            if (
                peer.peer_id in entry.holders
                and RAW_RANGE in (peer.features or ())
                and not self.node.distrusted(peer.peer_id)
            ):
                self.holders[peer.peer_id] = peer

    async def _fetch_chunks(self, wanted: list[int], avoid: str | None = None) -> None:
        """Fetch what is missing of ``wanted`` chunks from the holders (never from ``avoid``),
        a few at a time, in order."""
        frontier = self._frontier()
        pending = deque(wanted)
        inflight: dict[asyncio.Task[RangeAnswer], tuple[int, str]] = {}
        given: Counter[str] = Counter(p for ps in self.sources.values() for p in ps)
        stalled_since: float | None = None
        woken: asyncio.Task[bool] | None = None
        try:
            while pending or inflight:
                usable = [p for p in self._usable() if p.peer_id != avoid]
                per_holder = min(PER_HOLDER, max(1, -(-self.max_inflight // max(1, len(usable)))))
                # What each holder is busy with: its ranges not yet in their last bytes.
                load = Counter(p for c, p in inflight.values() if c not in self._ending)
                # The least busy holder first; among equals, the one given the fewest chunks.
                for peer in sorted(usable, key=lambda p: (load[p.peer_id], given[p.peer_id])):
                    while pending and len(inflight) < self.max_inflight:
                        if load[peer.peer_id] >= per_holder:
                            break
                        alone = all(p.peer_id == peer.peer_id for p in usable)
                        mine = [
                            c for c in pending if alone or self._not_from.get(c) != peer.peer_id
                        ]
                        if not mine:
                            break
                        chunk = mine[0]
                        pending.remove(chunk)
                        task = asyncio.ensure_future(self._fetch(peer, chunk))
                        inflight[task] = (chunk, peer.peer_id)
                        load[peer.peer_id] += 1
                        given[peer.peer_id] += 1
                if not inflight:
                    now = time.monotonic()
                    stalled_since = stalled_since or now
                    if now - stalled_since > self.node.config.stall_timeout:
                        raise FetchFailed(
                            f"no holder of {self.label} answered for "
                            f"{self.node.config.stall_timeout:.0f} s; it can resume later"
                        )
                    await asyncio.sleep(0.2)
                    self._refresh_holders()
                    continue
                stalled_since = None
                if woken is None or woken.done():
                    self._wake.clear()
                    woken = asyncio.ensure_future(self._wake.wait())
                idle = [p for p in usable if not any(q == p.peer_id for _, q in inflight.values())]
                done, _ = await asyncio.wait(
                    [*inflight, woken],
                    # with nothing left to hand out and a holder idle: look at the slow ones
                    timeout=0.25 if idle and not pending else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not pending:
                    self._take_over(inflight, idle)
                finished = [t for t in inflight if t in done or t.cancelled()]
                for task in sorted(finished, key=lambda t: inflight[t][0], reverse=True):
                    if not task.done():
                        continue
                    chunk, peer_id = inflight.pop(task)
                    self._ending.discard(chunk)
                    if task.cancelled():  # taken over: the rest goes to a faster holder
                        if not frontier.complete(chunk):
                            pending.appendleft(chunk)
                        continue
                    try:
                        task.result()
                        if not frontier.complete(chunk):
                            raise TransferError("the range did not reach the disk whole")
                    except (TransferError, HolderGone) as exc:
                        self._failed(peer_id, exc)
                        pending.appendleft(chunk)  # it goes on from where its bytes stop
                self._maybe_checkpoint()
                self._report()
        finally:
            if woken is not None:
                woken.cancel()
            for task in inflight:
                task.cancel()
            if inflight:
                await asyncio.wait(inflight)

    def _take_over(
        self, inflight: dict[asyncio.Task[RangeAnswer], tuple[int, str]], idle: list[PeerInfo]
    ) -> None:
        """A slow holder's range moves to an idle holder that would finish it much sooner: the
        range is cut (its bytes on disk are kept) and the rest of its chunk is asked of the
        idle one. Only once nothing else is left to hand out."""
        frontier = self._frontier()
        fast = [(self._speed[p.peer_id], p) for p in idle if p.peer_id in self._speed]
        if not fast:
            return
        speed, helper = max(fast, key=lambda f: f[0])
        now = time.monotonic()
        for task, (chunk, peer_id) in inflight.items():
            if task.done() or chunk not in self._running or peer_id == helper.peer_id:
                continue
            if self._not_from.get(chunk) == peer_id:  # already being taken over
                continue
            started, done = self._running[chunk]
            if now - started < TAKE_OVER_AFTER:
                continue
            rate = done / (now - started)
            left = frontier.span(chunk)[1] - frontier.have[chunk]
            if left <= 0 or left / max(rate, 1.0) < TAKE_OVER_GAIN * left / speed:
                continue
            log.info(
                "chunk %d of %s: %s sends %.0f KB/s; %s takes over the last %d bytes",
                chunk,
                self.label,
                peer_id,
                rate / 1000,
                helper.peer_id,
                left,
            )
            self._not_from[chunk] = peer_id
            task.cancel()
            return  # one at a time: the helper is busy now

    # -- checkpoints ------------------------------------------------------------------------
    def _maybe_checkpoint(self) -> None:
        """Every ``sync_every`` bytes (at most 1/20 of the file, so that little is ever fetched
        again after a crash), sync the partial file and record what is on disk: in the
        background, one sync at a time, so that the bytes keep coming meanwhile."""
        if self.frontier is None or (self._syncing is not None and not self._syncing.done()):
            return
        every = min(self.node.config.sync_every, max(MIN_SYNC, self.frontier.size // 20))
        if self.frontier.on_disk() - sum(self.synced) >= every:
            self._syncing = asyncio.ensure_future(self._sync(self.frontier.snapshot()))

    async def _sync(self, snapshot: list[int]) -> None:
        """Make the bytes in ``snapshot`` (taken before the sync starts) durable, then record
        them."""
        await asyncio.to_thread(os.fdatasync, self.fd)
        self.synced = snapshot
        self._save()

    async def _checkpoint(self) -> None:
        """Sync and record everything on disk now (waiting for a sync under way)."""
        if self._syncing is not None:
            with contextlib.suppress(Exception):
                await self._syncing
            self._syncing = None
        snapshot = self._frontier().snapshot()
        if snapshot != self.synced:
            await self._sync(snapshot)

    def _save(self) -> None:
        if not self.resumable:  # the size is only the holders' word: it is not recorded
            return
        frontier = self._frontier()
        synced = self.synced or [0] * frontier.count
        done = frozenset(c for c, n in enumerate(synced) if n >= frontier.span(c)[1])
        partial = {c: n for c, n in enumerate(synced) if n > 0 and c not in done}
        self._record(DownloadState(self.file_id, frontier.size, self.chunk_size, done, partial))

    def _record(self, state: DownloadState) -> None:
        """Save ``state`` (``size`` 0: the first chunk has not told the size yet)."""
        with self.node.store.unit_of_work() as uow:  # a full disk: StorageError
            uow.downloads.save(state, time.time())
            uow.commit()

    def _forget_download(self) -> None:
        self.path.unlink(missing_ok=True)
        with self.node.store.unit_of_work() as uow:
            uow.downloads.remove(self.file_id)
            uow.commit()

    # -- verifying --------------------------------------------------------------------------
    async def _fetch_and_verify(self) -> None:
        frontier = self._frontier()
        loop = asyncio.get_running_loop()
        self._hashing = loop.run_in_executor(None, self._hash_following, frontier)
        started = time.monotonic()
        await self._fetch_chunks(frontier.missing())
        arrived = time.monotonic()
        await self._checkpoint()
        digest = await self._hashing
        log.debug(
            "%s: the bytes took %.3f s; syncing and hashing the rest %.3f s more",
            self.label,
            arrived - started,
            time.monotonic() - arrived,
        )
        if not self._matches(digest):
            digest = await self._find_bad_holder()
        await self._commit()

    def _hash_following(self, frontier: Frontier) -> hashlib._Hash:
        """sha256 of the file in order, following the bytes as they land (in a thread)."""
        h = hashlib.sha256()
        buf = bytearray(HASH_BLOCK)
        view = memoryview(buf)
        pos = 0
        while pos < frontier.size:
            ready = frontier.wait_contiguous(pos)
            try:
                n = os.preadv(self.fd, [view[: min(ready, HASH_BLOCK)]], pos)
            except OSError as exc:
                raise StorageError(f"cannot read the partial file: {exc.strerror}") from exc
            if n <= 0:
                raise StorageError("the partial file is shorter than it should be")
            h.update(view[:n])
            pos += n
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
        """Whether the bytes verify under one of ``timestamps`` (remembered in ``verified``)."""
        for ts in self.timestamps:
            if fileid.matches(h, ts, self.file_id):
                self.verified = ts
                return True
        return False

    async def _rehash(self) -> hashlib._Hash:
        h = hashlib.sha256()
        await asyncio.to_thread(self._hash_span, h, 0, self._frontier().size)
        return h

    async def _find_bad_holder(self) -> hashlib._Hash:
        """The bytes do not verify: fetch each holder's chunks again, whole, from the others;
        the holder whose chunks, replaced, make the file verify sent the bad bytes."""
        by_holder = Counter(p for ps in self.sources.values() for p in ps)
        for suspect, _ in by_holder.most_common():
            chunks = sorted(c for c, ps in self.sources.items() if suspect in ps)
            others = [p for p in self._usable() if p.peer_id != suspect]
            if not others:
                continue
            log.warning(
                "%s did not verify; fetching %d chunks that %s sent from other holders",
                self.label,
                len(chunks),
                suspect,
            )
            self._frontier().reset(chunks)
            for c in chunks:
                self.sources[c] = set()
            await self._fetch_chunks(chunks, avoid=suspect)
            digest = await self._rehash()
            if self._matches(digest):
                self._blame(suspect, len(chunks))
                return digest
        await self._discard()
        raise FetchFailed(f"{self.label} did not verify from any set of its holders")

    def _blame(self, peer_id: str, chunks: int) -> None:
        reason = f"sent {chunks} chunks that do not match the file id"
        log.warning("holder %s of %s %s; avoiding it", peer_id, self.label, reason)
        self.node.distrust(peer_id)
        self.node.notify(FileRefused(self.file_id, peer_id, reason))

    async def _discard(self) -> None:
        self._forget_download()

    async def _commit(self) -> None:
        size = self._frontier().size
        assert self.handle is not None
        await asyncio.to_thread(self.node.store.blobs.adopt, self.path, self.file_id)
        with self.node.store.unit_of_work() as uow:
            uow.downloads.remove(self.file_id)
            # A verified fact: the record takes the timestamp and size the bytes verified under.
            uow.files.mark_local(self.verified_meta, size, time.time())
            uow.commit()
        self.handle.update(size)
        self.handle.finish(True)
        for peer_id, told in self.told_sizes.items():
            if told != size:  # the size is a verified fact now: that holder lied
                self._failed(peer_id, LyingHolder(f"said the file has {told} bytes; it has {size}"))
        log.info(
            "fetched %s from %s in %.1f s (%d bytes; %d over the network in this run)",
            self.label,
            ", ".join(sorted(self._peers())) or "this node's partial file",
            time.monotonic() - self.handle.state.started_mono,
            size,
            self.fetched_bytes,
        )
