"""The async driver of a ranged download's passes: it asks holders for the ranges that the
scheduler (:mod:`treedrive.core.scheduler`) picks and tells it how each one ended.

Every decision is the scheduler's: which chunk from which holder, how long a failing holder
waits, when an idle fast holder takes over the rest of a slow one's range, when a download with
no holder left gives up. This module only does I/O: the requests (the transport writes each
range into the partial file from its receiving thread, so nothing here touches the bytes), the
wait for them, the cancel of a range taken over, and the look for new holders while none is left.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from treedrive.core.errors import ClassicAnswer, FetchFailed, TransferError
from treedrive.core.frontier import Frontier
from treedrive.core.model import PeerInfo, Timestamp
from treedrive.core.ports import RangeAnswer, RangeFile
from treedrive.core.scheduler import (
    STALL_POLL,
    Disagrees,
    HolderBook,
    HolderGone,
    LyingHolder,
    Outcome,
    Pass,
    Range,
    Scheduler,
)

if TYPE_CHECKING:
    from treedrive.core.downloadenv import DownloadEnv

log = logging.getLogger(__name__)

Tasks = dict[int, "asyncio.Task[None]"]
"""The request under way of each range in flight, by ticket."""


class Fetcher:
    """The requests of one download of ``file_id`` into ``partial``; ``on_progress`` is called
    on the loop as bytes land and after ranges end (progress reports, checkpoints)."""

    def __init__(
        self,
        env: DownloadEnv,
        file_id: str,
        label: str,
        partial: RangeFile,
        holders: list[PeerInfo],
        on_progress: Callable[[], None],
    ) -> None:
        self.env = env
        self.file_id = file_id
        self.label = label
        self.partial = partial
        self.on_progress = on_progress
        self.holders = {p.peer_id: p for p in holders}
        self.book = HolderBook(self.holders)
        self.sched = Scheduler(self.book, env.max_inflight, env.stall_timeout)
        self.run_id = secrets.token_hex(8)
        """Names this run of the download to its holders (each counts its ranges as one upload)."""
        self.size: int | None = None
        """The file's size, once believed: an answer that says another is refused."""
        self.told_timestamps: dict[str, Timestamp] = {}
        """The timestamp each holder's first answer carried: one per holder, so that a liar's
        answers never crowd out an honest holder's."""
        self.told_sizes: dict[str, int] = {}
        """Sizes holders said that contradict the record's claimed ``file_size``; once the
        bytes verify, those that said another size are distrusted."""
        self.refused_any = False
        """A holder's size was refused in this run (its bytes are not kept)."""
        self._wake = asyncio.Event()

    def usable(self) -> list[PeerInfo]:
        """The holders to ask now, in the order they were given."""
        return [self.holders[p] for p in self.book.usable(time.monotonic())]

    # -- one request ------------------------------------------------------------------------
    async def request(
        self,
        peer: PeerInfo,
        offset: int,
        length: int,
        progress: Callable[[int], None] | None,
        written: Callable[[int], None],
    ) -> RangeAnswer:
        answer = await self.env.network.fetch_range(
            peer.host,
            peer.port,
            self.file_id,
            offset,
            length,
            self.partial,
            progress,
            written,
            self.run_id,
            self.env.secure_key(peer),
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

    async def _fetch(self, frontier: Frontier, p: Pass, r: Range) -> None:
        """The range ``r`` (the rest of its chunk) from its holder."""

        def progress(done: int) -> None:
            if p.progress(r.ticket, done):  # in its last bytes: its holder may take the next
                self._wake.set()
            self.on_progress()

        begin = frontier.span(r.chunk)[0] + r.start
        written = frontier.writer(r.chunk, r.start)
        answer = await self.request(self.holders[r.peer], begin, r.left, progress, written)
        if answer.length != r.left:
            raise TransferError("sent a short range")
        self.sched.observe(r.peer, r.left, time.monotonic() - r.started)

    # -- a pass -----------------------------------------------------------------------------
    async def fetch_chunks(
        self, frontier: Frontier, wanted: list[int], avoid: str | None = None
    ) -> None:
        """Fetch what is missing of ``wanted`` chunks from the holders (never from ``avoid``),
        a few at a time, in order."""
        p = self.sched.begin(wanted, frontier, avoid)
        tasks: Tasks = {}
        woken: asyncio.Task[bool] | None = None
        try:
            while p.busy:
                now = time.monotonic()
                for r in p.assign(self.book.usable(now), now):
                    tasks[r.ticket] = asyncio.ensure_future(self._fetch(frontier, p, r))
                if not tasks:
                    await self._no_holder(p)
                    continue
                if woken is None or woken.done():
                    self._wake.clear()
                    woken = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait(
                    [*tasks.values(), woken],
                    timeout=p.wait_timeout(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                ended = [t for t, task in tasks.items() if task.done()]
                self._take_over(p, tasks, ended)
                p.settle(self._outcomes(frontier, p, tasks, ended))
                self.on_progress()
        finally:
            if woken is not None:
                woken.cancel()
            for task in tasks.values():
                task.cancel()
            if tasks:
                await asyncio.wait(tasks.values())

    async def _no_holder(self, p: Pass) -> None:
        """No range in flight (no holder usable): give up after ``stall_timeout``, else look
        for holders again in a moment."""
        if p.stalled(time.monotonic()):
            raise FetchFailed(
                f"no holder of {self.label} answered for "
                f"{self.env.stall_timeout:.0f} s; it can resume later"
            )
        await asyncio.sleep(STALL_POLL)
        self.refresh()

    def _take_over(self, p: Pass, tasks: Tasks, ended: Collection[int]) -> None:
        cut = p.take_over(time.monotonic(), ended)
        if cut is None:
            return
        log.info(
            "chunk %d of %s: %s sends %.0f KB/s; %s takes over the last %d bytes",
            cut.chunk,
            self.label,
            cut.slow,
            cut.rate / 1000,
            cut.helper,
            cut.left,
        )
        tasks[cut.ticket].cancel()  # its bytes on disk are kept; the rest goes to the helper

    def _outcomes(
        self, frontier: Frontier, p: Pass, tasks: Tasks, ended: list[int]
    ) -> dict[int, Outcome]:
        """How each range in ``ended`` went (a failure counts against its holder)."""
        outcomes: dict[int, Outcome] = {}
        for ticket in sorted(ended, key=lambda t: p.inflight[t].chunk, reverse=True):
            r, task = p.inflight[ticket], tasks.pop(ticket)
            if task.cancelled():  # taken over: the rest goes to a faster holder
                outcomes[ticket] = "cut"
                continue
            try:
                task.result()
                if not frontier.complete(r.chunk):
                    raise TransferError("the range did not reach the disk whole")
                outcomes[ticket] = "ok"
            except (TransferError, HolderGone) as exc:
                self.failed(r.peer, exc)
                outcomes[ticket] = "failed"  # it goes on from where its bytes stop
        return outcomes

    # -- holders ----------------------------------------------------------------------------
    def failed(self, peer_id: str, exc: BaseException) -> None:
        """What a request's failure says of its holder."""
        if isinstance(exc, Disagrees):
            # The record's size is only a claim: which of the two is wrong is not known yet.
            # Not used for this download (unless its size is adopted after all), nothing more.
            self.refused_any = True
            self.book.exclude(peer_id)
            self.told_sizes[peer_id] = exc.size
            log.info("holder %s of %s %s; not used for this download", peer_id, self.label, exc)
        elif isinstance(exc, LyingHolder):
            # Not this node's disk, not a passing failure: the holder is not used again here.
            self.refused_any = True
            self.book.exclude(peer_id)
            log.warning("holder %s of %s %s; avoiding it", peer_id, self.label, exc)
            self.env.distrust(peer_id)
            self.env.refused(self.file_id, peer_id, str(exc))
        elif isinstance(exc, HolderGone | ClassicAnswer):
            # It does not have the file, or speaks only hex: not a holder for this download
            # (the node falls back to the classic GET_FILE for such holders).
            self.book.exclude(peer_id)
        else:
            self.book.back_off(peer_id, time.monotonic())
            log.info("chunk from %s failed (%s); retrying it elsewhere", peer_id, exc)

    def refresh(self) -> None:
        """Holders come and go while we wait: take the catalogue's current view."""
        current = self.env.holders(self.file_id)
        if current is None:
            raise FetchFailed(f"{self.label} was deleted meanwhile")
        for peer in current:
            self.holders[peer.peer_id] = peer
            self.book.add(peer.peer_id)
