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
import time
from dataclasses import replace

from treedrive.core.activity import file_label
from treedrive.core.checkpoint import Checkpoints
from treedrive.core.downloadenv import DownloadEnv as DownloadEnv
from treedrive.core.downloadenv import raw_holders as raw_holders
from treedrive.core.errors import FetchFailed, StorageError, TransferError
from treedrive.core.fetcher import Fetcher
from treedrive.core.frontier import Frontier
from treedrive.core.messages import RAW_RANGE as RAW_RANGE
from treedrive.core.model import CatalogEntry, DownloadState, FileMeta, PeerInfo
from treedrive.core.ports import RangeAnswer, RangeFile
from treedrive.core.scheduler import HolderGone, LyingHolder, adopt_size, check_size
from treedrive.core.scheduler import chunk_size_for as chunk_size_for
from treedrive.core.sizes import SMALL, record_agrees, size_hint
from treedrive.core.transfers import TransferHandle
from treedrive.core.verify import Verifier

log = logging.getLogger(__name__)


class RangedDownload:
    """One run of the download of ``entry`` from ``holders``: see the module's docstring."""

    def __init__(self, env: DownloadEnv, entry: CatalogEntry, holders: list[PeerInfo]) -> None:
        self.env = env
        self.entry = entry
        self.file_id = entry.meta.file_id
        self.label = file_label(entry.meta)
        """The file as log lines and errors name it (its name and short id)."""
        self.holders = holders
        self.chunk_size = env.chunk_size or chunk_size_for(size_hint(entry))
        self.frontier: Frontier | None = None
        self.handle: TransferHandle | None = None
        self.partial: RangeFile
        self.fetcher: Fetcher
        self.checkpoints: Checkpoints
        self.verifier: Verifier
        self._hashing: asyncio.Future[hashlib._Hash] | None = None
        self._first_bytes = 0  # bytes of chunk 0 on disk while the size is not known yet

    @property
    def verified_meta(self) -> FileMeta:
        """The record as this node now knows it: with the timestamp the bytes verified under."""
        verified = self.verifier.verified
        if verified is None:
            return self.entry.meta
        return replace(self.entry.meta, file_timestamp=verified)

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
        saved = self.env.load_state(self.file_id)
        self.partial, existed = self.env.open_partial(self.file_id)
        fresh = saved is None or not existed
        self.fetcher = Fetcher(
            self.env, self.file_id, self.label, self.partial, self.holders, self._progress
        )
        self.checkpoints = Checkpoints(self.env, self.file_id, self.label, self.partial)
        self.verifier = Verifier(self.env, self.entry.meta, self.label, self.fetcher, self.partial)
        try:
            await self._start(None if fresh else saved)
            await self._fetch_and_verify()
        except StorageError as exc:
            log.error("download of %s stopped: %s", self.label, exc)
            self._finish_failed(exc)
            await self.checkpoints.keep(self.frontier, self.chunk_size, self._first_bytes)
            raise StorageError(
                f"{exc}; the download of {self.entry.meta.file_name!r} stopped, keeping what "
                "arrived (it goes on by itself once the disk takes it)"
            ) from exc
        except BaseException as exc:
            self._finish_failed(exc)
            never = self.frontier is None and (fresh or self.fetcher.refused_any)
            if never or not self.checkpoints.resumable:
                # It never started, or its size is only the holders' word: nothing to resume
                # (and the bytes of a holder whose size was refused are not kept).
                with contextlib.suppress(Exception):
                    self.checkpoints.forget()
            raise
        finally:
            await self._close()

    async def _close(self) -> None:
        if self.frontier is not None:
            self.frontier.close()
        await self.checkpoints.settle()
        if self._hashing is not None:  # never close the file under the hasher
            with contextlib.suppress(BaseException):
                await self._hashing
        if self.checkpoints.dropped:
            self.partial.abort()
        else:
            self.partial.close()

    async def _start(self, saved: DownloadState | None) -> None:
        """Find the file's size (from the first chunk's answer, unless ``saved`` says it), size
        the partial file, and make the download visible as a transfer."""
        if saved is None or saved.size == 0:
            start = 0
            if saved is None:
                self.checkpoints.record_start(self.chunk_size)
            else:
                self.chunk_size = saved.chunk_size
                start = saved.partial.get(0, 0)
                start = start if 0 < start < self.chunk_size else 0
            # Visible from its first byte (its size is the record's claim until an answer
            # says it).
            self.handle = self.env.begin_transfer(
                self.entry.meta, "in", None, size_hint(self.entry) or None, start
            )
            await self._first_chunk(start)
            self._check_room()
            await self._size_partial()
            self.checkpoints.save(self._frontier())
        else:
            self._resume(saved)
            self._check_room()
            await self._size_partial()
        frontier = self._frontier()
        if self.handle is None:
            already = min(frontier.on_disk(), frontier.size)  # resumed: there before
            self.handle = self.env.begin_transfer(
                self.entry.meta, "in", None, frontier.size, already
            )
        else:
            self.handle.state.bytes_total = frontier.size
        self._report()

    async def _size_partial(self) -> None:
        """Give the partial file the file's size (sparse), in a thread: never on the loop."""
        await asyncio.to_thread(self.partial.resize, self._frontier().size)

    def _finish_failed(self, exc: BaseException) -> None:
        if self.handle is not None:
            try:
                self.handle.finish(False, str(exc) or type(exc).__name__)
            except Exception:  # a full disk may refuse this record too: keep the first error
                log.exception("recording the failed download of %s failed", self.label)

    def _check_room(self) -> None:
        """Refuse to start when the disk cannot take the rest of the file."""
        frontier = self._frontier()
        need = frontier.size - frontier.on_disk()
        free = self.env.free_space()
        if need > free:
            raise StorageError(
                f"not enough disk space: {need} more bytes needed, {free} free in "
                f"{self.partial.path.parent}"
            )

    def _resume(self, saved: DownloadState) -> None:
        self.fetcher.size, self.chunk_size = saved.size, saved.chunk_size
        have = dict(saved.partial)
        for c in saved.done:
            have[c] = self.chunk_size
        self.frontier = Frontier(saved.size, saved.chunk_size, have)
        self.checkpoints.synced = self.frontier.snapshot()
        if self.frontier.on_disk():
            log.info(
                "resuming %s: %d of %d bytes already here",
                self.label,
                self.frontier.on_disk(),
                saved.size,
            )

    # -- the size ---------------------------------------------------------------------------
    async def _first_chunk(self, start: int = 0) -> None:
        """Ask holders for chunk 0 (from ``start``, what is already on disk of it) until one
        answers with a size this node can believe: that answer says the file's size. When every
        one that answers contradicts the record's claimed size, see :func:`adopt_size`."""
        last = "no holder speaks the extension"
        self._first_bytes = start
        latest: tuple[str, RangeAnswer, int] | None = None  # whose bytes of chunk 0 are on disk
        for peer in self.fetcher.usable():
            got = 0

            def written(n: int) -> None:
                nonlocal got
                got = n
                self._first_bytes = max(self._first_bytes, start + n)

            asked = time.monotonic()
            latest = None  # what a failed request wrote may be on disk now
            try:
                answer = await self.fetcher.request(
                    peer, start, self.chunk_size - start, self._first_progress, written
                )
                self.fetcher.sched.observe(peer.peer_id, answer.length, time.monotonic() - asked)
                latest = (peer.peer_id, answer, got)
                self._believe(answer.size)
            except (TransferError, HolderGone) as exc:
                last = f"{peer.peer_id}: {exc}"
                self.fetcher.failed(peer.peer_id, exc)
                continue
            if not self.entry.size_bytes and record_agrees(self.entry.meta.file_size, 0) is None:
                self.checkpoints.resumable = False  # the record says nothing: the holder's word
            await self._sized(answer.size, start, peer.peer_id, answer, got)
            return
        await self._adopt(start, latest, last)

    async def _adopt(
        self, start: int, latest: tuple[str, RangeAnswer, int] | None, last: str
    ) -> None:
        """Every holder that answered contradicts the record's claimed size: take the size a
        majority of them say (or one no larger than the claim), without resumable state; or
        raise FetchFailed (``last``: why the last holder failed)."""
        told = self.fetcher.told_sizes
        bound = max(size_hint(self.entry), SMALL)
        size = adopt_size(told, self.env.free_space, bound)
        if size is None:
            raise FetchFailed(f"could not start {self.label} ({last})")
        log.warning(
            "%s: its record says %r (a claim); %d of its holders say %d bytes: taken, "
            "without resumable state",
            self.label,
            self.entry.meta.file_size,
            sum(1 for s in told.values() if s == size),
            size,
        )
        self.checkpoints.resumable = False
        for peer_id, said in told.items():
            if said == size:  # they said the size taken: usable after all
                self.fetcher.book.include(peer_id)
        if latest is not None and latest[1].size == size:
            await self._sized(size, start, *latest)
        else:  # the bytes on disk are another size's: chunk 0 is fetched again
            await self._sized(size, 0, None, None, 0)

    async def _sized(
        self, size: int, start: int, peer_id: str | None, answer: RangeAnswer | None, got: int
    ) -> None:
        """The file has ``size`` bytes; ``peer_id`` sent ``answer``, chunk 0 from ``start``."""
        self.fetcher.size = size
        have = {0: start + answer.length} if answer is not None else {}
        # Sized by a believed size, and built off the loop all the same.
        self.frontier = await asyncio.to_thread(Frontier, size, self.chunk_size, have)
        self.frontier.received = got
        self.checkpoints.synced = [0] * self.frontier.count
        if peer_id is not None:
            self.fetcher.sched.blame.sent(0, peer_id)

    def _believe(self, size: int) -> None:
        """Raise LyingHolder or Disagrees unless ``size`` (a holder's word for the file's size)
        is one this node can believe (see :func:`check_size`)."""
        check_size(size, self.entry.size_bytes, self.entry.meta.file_size, self.env.free_space)

    # -- progress ---------------------------------------------------------------------------
    def _progress(self) -> None:
        self._report()
        self.checkpoints.maybe(self.frontier)

    def _first_progress(self, _done: int) -> None:
        """Progress of chunk 0, before the frontier exists (on the loop)."""
        if self.handle is not None:
            self.handle.update(self._first_bytes)

    def _report(self) -> None:
        if self.handle is not None and self.frontier is not None:
            # The peers this download has taken bytes from so far.
            self.handle.state.peer_id = ", ".join(sorted(self.fetcher.sched.blame.peers())) or None
            self.handle.update(min(self.frontier.on_disk(), self.frontier.size))

    # -- verifying --------------------------------------------------------------------------
    async def _fetch_and_verify(self) -> None:
        frontier = self._frontier()
        loop = asyncio.get_running_loop()
        follow = self.partial.follow
        self._hashing = loop.run_in_executor(None, follow, frontier.wait_contiguous, frontier.size)
        started = time.monotonic()
        await self.fetcher.fetch_chunks(frontier, frontier.missing())
        arrived = time.monotonic()
        await self.checkpoints.flush(frontier)
        digest = await self._hashing
        log.debug(
            "%s: the bytes took %.3f s; syncing and hashing the rest %.3f s more",
            self.label,
            arrived - started,
            time.monotonic() - arrived,
        )
        if not self.verifier.matches(digest) and not await self.verifier.find_bad_holder(frontier):
            self.checkpoints.forget()
            raise FetchFailed(f"{self.label} did not verify from any set of its holders")
        await self._commit()

    async def _commit(self) -> None:
        size = self._frontier().size
        assert self.handle is not None
        await asyncio.to_thread(self.partial.adopt, self.file_id)
        # A verified fact: the record takes the timestamp and size the bytes verified under.
        self.env.stored(self.verified_meta, size)
        self.handle.update(size)
        self.handle.finish(True)
        for peer_id, told in self.fetcher.told_sizes.items():
            if told != size:  # the size is a verified fact now: that holder lied
                lie = LyingHolder(f"said the file has {told} bytes; it has {size}")
                self.fetcher.failed(peer_id, lie)
        log.info(
            "fetched %s from %s in %.1f s (%d bytes; %d over the network in this run)",
            self.label,
            ", ".join(sorted(self.fetcher.sched.blame.peers())) or "this node's partial file",
            time.monotonic() - self.handle.state.started_mono,
            size,
            self.fetched_bytes,
        )
