"""What a ranged download keeps across a crash or a full disk.

Every so often the partial file is synced and what is on disk of each chunk (a prefix of it) is
recorded as a :class:`~treedrive.core.model.DownloadState`, so that a crash costs at most what
arrived since the last sync. The syncs run in the background, one at a time, so that the bytes
keep coming meanwhile. A download whose size is only what its holders said (against the record)
keeps no resumable state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from treedrive.core.errors import StorageError
from treedrive.core.frontier import Frontier
from treedrive.core.model import DownloadState
from treedrive.core.ports import RangeFile

if TYPE_CHECKING:
    from treedrive.core.downloadenv import DownloadEnv

log = logging.getLogger(__name__)

MIN_SYNC = 256 * 1024
"""The least a checkpoint waits for (see :meth:`Checkpoints.maybe`)."""


class Checkpoints:
    """The resumable state of one download of ``file_id`` and the syncs of its partial file."""

    def __init__(self, env: DownloadEnv, file_id: str, label: str, partial: RangeFile) -> None:
        self.env = env
        self.file_id = file_id
        self.label = label
        self.partial = partial
        self.synced: list[int] = []
        """Per chunk, the bytes recorded in the store."""
        self.resumable = True
        """False once the size is one only holders said, against the record: then no
        resumable state is kept (a crash or a failure starts over)."""
        self.dropped = False
        """The download was forgotten: its partial file goes once nothing uses it any more."""
        self._syncing: asyncio.Task[None] | None = None

    def record(self, state: DownloadState) -> None:
        """Save ``state`` (``size`` 0: the first chunk has not told the size yet)."""
        self.env.save_state(state)  # a full disk: StorageError

    def record_start(self, chunk_size: int, first: int = 0) -> None:
        """The download before its size is known, with ``first`` bytes of chunk 0 on disk."""
        partial = {0: first} if first else {}
        self.record(DownloadState(self.file_id, 0, chunk_size, frozenset(), partial))

    def save(self, frontier: Frontier) -> None:
        """Record what the last sync made durable (``synced``)."""
        if not self.resumable:  # the size is only the holders' word: it is not recorded
            return
        synced = self.synced or [0] * frontier.count
        done = frozenset(c for c, n in enumerate(synced) if n >= frontier.span(c)[1])
        partial = {c: n for c, n in enumerate(synced) if n > 0 and c not in done}
        state = DownloadState(self.file_id, frontier.size, frontier.chunk_size, done, partial)
        self.record(state)

    def maybe(self, frontier: Frontier | None) -> None:
        """Every ``sync_every`` bytes (at most 1/20 of the file, so that little is ever fetched
        again after a crash), sync the partial file and record what is on disk: in the
        background, one sync at a time, so that the bytes keep coming meanwhile."""
        if frontier is None or (self._syncing is not None and not self._syncing.done()):
            return
        every = min(self.env.sync_every, max(MIN_SYNC, frontier.size // 20))
        if frontier.on_disk() - sum(self.synced) >= every:
            self._syncing = asyncio.ensure_future(self._sync(frontier, frontier.snapshot()))

    async def _sync(self, frontier: Frontier, snapshot: list[int]) -> None:
        """Make the bytes in ``snapshot`` (taken before the sync starts) durable, then record
        them."""
        await asyncio.to_thread(self.partial.sync)
        self.synced = snapshot
        self.save(frontier)

    async def flush(self, frontier: Frontier) -> None:
        """Sync and record everything on disk now (waiting for a sync under way)."""
        await self.settle()
        snapshot = frontier.snapshot()
        if snapshot != self.synced:
            await self._sync(frontier, snapshot)

    async def settle(self) -> None:
        """Wait for a sync under way, whatever its end (before the file is closed)."""
        if self._syncing is not None:
            with contextlib.suppress(BaseException):
                await self._syncing
            self._syncing = None

    def forget(self) -> None:
        """Nothing to resume: the state goes now, the partial file once it is closed."""
        self.dropped = True
        self.env.drop_state(self.file_id)

    async def keep(self, frontier: Frontier | None, chunk_size: int, first_bytes: int) -> None:
        """After a StorageError: record what is on disk for good, so that the download goes on
        once there is room (``first_bytes``: of chunk 0, while the size is not known). Best
        effort (the full disk may refuse this record too)."""
        try:
            if not self.resumable:  # start over once there is room: free the disk meanwhile
                with contextlib.suppress(StorageError):
                    await asyncio.to_thread(self.partial.resize, 0)
                self.record_start(chunk_size)
                return
            if frontier is not None:
                self.save(frontier)
                return
            kept = 0
            if first_bytes > 0:
                with contextlib.suppress(StorageError):
                    await asyncio.to_thread(self.partial.sync)
                    kept = first_bytes
            self.record_start(chunk_size, kept)
        except Exception as exc:
            log.warning("could not record the download of %s: %s", self.label, exc)
