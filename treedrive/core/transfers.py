"""Transfers and their progress: every file moving in or out of this node is one row of the
store's transfer log while it runs, with its progress in memory (what the dashboard, the shell
and the events show). The ranges one download of a peer asks of this node add up to one upload.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from treedrive.core.events import Notice, TransferFinished, TransferProgress
from treedrive.core.metrics import Counters
from treedrive.core.model import FileMeta, TransferState

log = logging.getLogger(__name__)

PROGRESS_EVERY = 0.25
"""Seconds between progress events of one transfer."""
UPLOAD_LINGER = 1.0
"""Seconds an upload made of ranges stays open after its last range ended (the next range of
the same download usually follows at once)."""

Transaction = Callable[[], AbstractContextManager[Any]]
"""Opens a unit of work (the store's, through the core's port)."""
Notify = Callable[[Notice], None]


class Transfers:
    """The transfers under way (``active``, by transfer id) and the uploads made of ranges."""

    def __init__(
        self, transaction: Transaction, notify: Notify, counters: Counters | None = None
    ) -> None:
        self._transaction = transaction
        self._notify = notify
        self._counters = counters or Counters()
        self.active: dict[int, TransferState] = {}
        self._uploads: dict[tuple[str, str, str], RangedUpload] = {}

    def begin(
        self,
        meta: FileMeta,
        direction: str,
        peer_id: str | None,
        total: int | None,
        done: int = 0,
    ) -> TransferHandle:
        """Record a transfer (``direction`` "in" or "out") and track its progress; ``done``:
        the bytes already there (a resumed download), not counted in its rate."""
        with self._transaction() as uow:
            tid = uow.transfers.start(meta.file_id, direction, peer_id, total, time.time())
            uow.commit()
        state = TransferState(
            tid, meta.file_id, meta.file_name, direction, peer_id, total,
            bytes_done=done, bytes_at_start=done,
        )  # fmt: skip
        self.active[tid] = state
        return TransferHandle(self, state)

    def finish(self, transfer: TransferState, ok: bool, error: str | None = None) -> None:
        if self.active.pop(transfer.transfer_id, None) is None:
            return  # finished already
        if ok:
            transfer.bytes_total = transfer.bytes_done
        moved = transfer.bytes_done - transfer.bytes_at_start
        self._counters.transfer_ended(transfer.direction, moved, ok)
        with self._transaction() as uow:
            uow.transfers.finish(
                transfer.transfer_id, ok, transfer.bytes_done, time.time(), error, transfer.peer_id
            )
            uow.emit(TransferFinished(transfer.snapshot(), ok, error))
            uow.commit()

    def progressed(self, state: TransferState) -> None:
        """A transient notification of progress (no commit behind it)."""
        self._notify(TransferProgress(state.snapshot()))

    def record(self, state: TransferState) -> None:
        """Write the bytes done so far to the store (the transfer goes on)."""
        with self._transaction() as uow:
            uow.transfers.progress(state.transfer_id, state.bytes_done, time.time())
            uow.commit()

    def upload(self, meta: FileMeta, peer: str, size: int) -> TransferHandle:
        """We are about to send ``size`` bytes of ``meta`` to ``peer`` (a GET_FILE answer)."""
        return self.begin(meta, "out", peer, size)

    def pushed(
        self, meta: FileMeta, source: str, sender: str | None, size: int | None
    ) -> TransferHandle:
        """A file pushed to this node is arriving: one incoming transfer, named after the
        sender if it said who it is (a claim, for display), else its address."""
        return self.begin(meta, "in", (sender or source)[:256], size)

    def range(self, meta: FileMeta, peer: str, download: str | None, size: int) -> RangeProgress:
        """One range of an upload: the ranges of one download (same asker, same ``download``
        id) add up to one transfer, finished ``UPLOAD_LINGER`` s after its last range."""
        key = (meta.file_id, peer, download[:64] if download else secrets.token_hex(8))
        upload = self._uploads.get(key)
        if upload is None:
            handle = self.begin(meta, "out", peer[:256], size)
            upload = self._uploads[key] = RangedUpload(handle, lambda: self._uploads.pop(key, None))
        return upload.range()

    def close_uploads(self) -> None:
        for upload in list(self._uploads.values()):
            upload.close()


class TransferHandle:
    """Progress of one transfer: ``update(bytes_done)`` as bytes move (events at most every
    ``PROGRESS_EVERY``), then ``finish(ok, error)`` once."""

    def __init__(self, transfers: Transfers, state: TransferState) -> None:
        self.transfers = transfers
        self.state = state
        self._last = 0.0

    def update(self, done: int) -> None:
        self.state.bytes_done = done
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY:
            self._last = now
            self.transfers.progressed(self.state)

    def record(self) -> None:
        """Write the bytes done so far to the store (the transfer goes on)."""
        self.transfers.record(self.state)

    def finish(self, ok: bool, error: str | None = None) -> None:
        self.transfers.finish(self.state, ok, error)


class RangedUpload:
    """The ranges one download asks of this node, as one upload: bytes add up over the ranges;
    it finishes ``UPLOAD_LINGER`` s after its last range ended (ok if that range was whole)."""

    def __init__(self, handle: TransferHandle, forget: Callable[[], object]) -> None:
        self.handle = handle
        self.forget = forget
        self.done = 0  # bytes of the ranges that ended
        self.running: dict[int, int] = {}  # range -> its bytes so far
        self.error: str | None = None
        self._next = 0
        self._closing: asyncio.TimerHandle | None = None

    def range(self) -> RangeProgress:
        if self._closing is not None:
            self._closing.cancel()
            self._closing = None
        self._next += 1
        self.running[self._next] = 0
        return RangeProgress(self, self._next)

    def update(self, rid: int, done: int) -> None:
        self.running[rid] = done
        self.handle.update(self.done + sum(self.running.values()))

    def end(self, rid: int, ok: bool, error: str | None) -> None:
        self.done += self.running.pop(rid, 0)
        self.error = None if ok else error or "failed"
        self.handle.update(self.done + sum(self.running.values()))
        try:
            self.handle.record()  # what was sent so far survives a crash of this node
        except Exception as exc:  # a full disk, say: the upload goes on, counted in memory
            log.warning("could not record the upload of %s: %s", self.handle.state.file_id, exc)
        if not self.running:
            loop = asyncio.get_running_loop()
            self._closing = loop.call_later(UPLOAD_LINGER, self.close)

    def close(self) -> None:
        if self._closing is not None:
            self._closing.cancel()
            self._closing = None
        if self.running:  # closed with ranges still going: the node is stopping
            self.error = self.error or "interrupted"
        self.forget()
        self.handle.finish(self.error is None, self.error)


class RangeProgress:
    """The :class:`~treedrive.core.ports.Progress` of one range of a :class:`RangedUpload`."""

    def __init__(self, upload: RangedUpload, rid: int) -> None:
        self.upload = upload
        self.rid = rid

    def update(self, done: int) -> None:
        self.upload.update(self.rid, done)

    def finish(self, ok: bool, error: str | None = None) -> None:
        self.upload.end(self.rid, ok, error)
