"""Where a push goes, chosen when its bytes begin to arrive: one random peer. When that peer is
a TreeDrive node that takes ``stream-push`` (PROTOCOL.md 2.4) and the size is known, the bytes
are sent on to it while they are still arriving (an upload over HTTP), and their record follows
once they are whole, verified and stored here: a push costs little more than its upload. Any
other peer gets the push once the file is stored, as before.

A :class:`Forward` is settled exactly once: :meth:`Forward.send_record` with the stored file's
record, or :meth:`Forward.call_off` (the upload failed, the bytes were already held, the size
was not the one announced); the peer keeps nothing of a push called off.
"""

from __future__ import annotations

import asyncio
import logging
import random

from treedrive.core.activity import file_label, peer_label
from treedrive.core.context import NodeContext
from treedrive.core.messages import STREAM_PUSH
from treedrive.core.model import FileMeta, PeerInfo
from treedrive.core.ports import FileSink, GrowingFile, PartialFile
from treedrive.core.transfers import TransferHandle, Transfers

log = logging.getLogger(__name__)


class Forward:
    """The target of one push and, when streamed, the push under way (see the module)."""

    def __init__(self, target: PeerInfo | None, size: int | None = None) -> None:
        self.target = target
        self.size = size
        """The bytes announced to the peer of a streamed push (None: not streamed)."""
        self.record: asyncio.Future[FileMeta | None] | None = None
        self.task: asyncio.Task[bool] | None = None
        self.transfer: TransferHandle | None = None
        self.sent = 0

    @property
    def streaming(self) -> bool:
        """The bytes are on their way to the target and it still waits for their record."""
        return self.record is not None and not self.record.done()

    def take(self, meta: FileMeta, size: int) -> bool:
        """Whether this streamed push can carry the file ``meta`` of ``size`` bytes (else it
        is called off, and the file must be pushed whole)."""
        if not self.streaming or size != self.size or (self.task and self.task.done()):
            self.call_off()
            return False
        return True

    def send_record(self, meta: FileMeta, transfer: TransferHandle) -> None:
        """The file is stored here: send its record, which the peer verifies the bytes against."""
        self.transfer = transfer
        transfer.update(self.sent)
        if self.record is not None and not self.record.done():
            self.record.set_result(meta)

    def call_off(self) -> None:
        """No record will come: the peer drops what it received (a no-op once settled)."""
        if self.record is not None and not self.record.done():
            self.record.set_result(None)

    def progress(self, done: int) -> None:
        self.sent = done
        if self.transfer is not None:
            self.transfer.update(done)


def choose(ctx: NodeContext, transfers: Transfers, sink: PartialFile, size: int | None) -> Forward:
    """The target of a push whose bytes begin to arrive in ``sink`` (``size`` of them, when
    known), and the streamed push to it when it takes one (see the module)."""
    peers = ctx.peers()
    forward = Forward(random.choice(peers) if peers else None, size)
    target = forward.target
    if (
        target is None
        or size is None
        or STREAM_PUSH not in ctx.features
        or STREAM_PUSH not in (target.features or ())
    ):
        return forward
    forward.record = asyncio.get_running_loop().create_future()
    tail = sink.tail()  # opened now, while the file is surely there
    forward.task = ctx.spawn(_stream(ctx, forward, target, tail, size), "push")
    return forward


async def _stream(
    ctx: NodeContext, forward: Forward, target: PeerInfo, tail: GrowingFile, size: int
) -> bool:
    assert forward.record is not None
    try:
        ok = await ctx.network.push_stream(
            target.host, target.port, tail, size, forward.record, forward.progress,
            ctx.secure_key(target),
        )  # fmt: skip
    finally:
        tail.close()
        forward.call_off()  # a failure before the record: the file is pushed whole instead
    record = forward.record.result()
    if forward.transfer is not None:
        forward.transfer.finish(ok, None if ok else "push failed")
    if not ok and record is not None:
        log.warning(
            "sending %s to %s failed (the connection failed or was cut; --log-level DEBUG "
            "says how); it stays here for peers to fetch",
            file_label(record), peer_label(target.peer_id, f"{target.host}:{target.port}"),
        )  # fmt: skip
    return ok


async def settle(file: FileSink) -> None:
    """The bytes of ``file`` are all in: off the loop, its hasher catches up while what is
    written is synced, so that adopting it (fsync, rename) has little left to write. Both
    threads are awaited; then a disk error of either is raised."""
    outcomes = await asyncio.gather(
        asyncio.to_thread(file.digest), asyncio.to_thread(file.sync), return_exceptions=True
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
