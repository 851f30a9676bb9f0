"""Files coming into the network: the user's push (store, FILE_DATA to one random peer, ANNOUNCE
to all), and the pushes other peers send this node (PROTOCOL.md 1.5), verified before they are
kept. A push that does not reach its peer is tried again with another
(:mod:`~treedrive.core.pushretry`), so a new file gets its second copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from treedrive.core import forwarding, localfile, ownership
from treedrive.core.activity import file_label, peer_label
from treedrive.core.catalogue import Catalogue
from treedrive.core.context import NodeContext
from treedrive.core.errors import NodeError, VerificationError
from treedrive.core.events import FileRefused, FileStored
from treedrive.core.forwarding import Forward
from treedrive.core.localfile import Source
from treedrive.core.messages import RAW_PUSH, Announce, FileData
from treedrive.core.model import MEGABYTE, FileMeta, PeerInfo, Pushed, Timestamp
from treedrive.core.ports import FileSink, PartialFile, Progress
from treedrive.core.pushretry import PushRetry
from treedrive.core.text import label
from treedrive.core.transfers import TransferHandle, Transfers

log = logging.getLogger(__name__)


class Sharing:
    """Pushes, both ways (see the module's docstring)."""

    def __init__(self, ctx: NodeContext, catalogue: Catalogue, transfers: Transfers) -> None:
        self.ctx = ctx
        self.catalogue = catalogue
        self.transfers = transfers

    # -- the user's push ----------------------------------------------------------------------
    async def push_path(
        self, path: Path, name: str | None = None, *, force: bool = False
    ) -> Pushed:
        """Add the file at ``path`` to the network: store it, FILE_DATA to one random peer,
        ANNOUNCE to all; or, unless ``force``, say that this node already holds its bytes.
        A :class:`~treedrive.core.localfile.SourceError` if it cannot (see there)."""
        source = await asyncio.to_thread(localfile.open_source, path)
        with source:
            return await self.push_source(source, name or path.name, force=force)

    async def push_source(
        self,
        source: Source,
        name: str,
        *,
        force: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> Pushed:
        """Push the opened file ``source`` as ``name`` (see :meth:`push_path`): its bytes are
        copied into a partial file (off the loop; ``progress`` told the bytes copied so far),
        sent on to the peer while they are (a streamed push: its size is known), and pushed as
        they were hashed. A file that changed meanwhile is refused
        (:class:`~treedrive.core.localfile.Changed`), and so is a push cancelled (its caller
        gone): the copy stops at its next block, and nothing of it is kept."""
        writer = self.ctx.store.blobs.writer()
        forward = self.forward(writer, source.size)
        stop = threading.Event()
        copying = asyncio.ensure_future(
            asyncio.to_thread(source.copy_into, writer, progress, stop.is_set)
        )
        try:
            await asyncio.shield(copying)
        except BaseException:
            stop.set()
            with contextlib.suppress(BaseException):
                await copying  # the partial file is dropped only once no thread writes to it
            forward.call_off()
            writer.abort()
            raise
        return await self.share(writer, name, force=force, forward=forward)

    def forward(self, writer: PartialFile, size: int | None) -> Forward:
        """Choose the peer a push whose bytes are about to arrive in ``writer`` goes to, and
        send them on while they arrive when it can (see :mod:`~treedrive.core.forwarding`).
        Hand the answer to :meth:`share`."""
        return forwarding.choose(self.ctx, self.transfers, writer, size)

    def held_copy(self, writer: PartialFile) -> FileMeta | None:
        """The record of a file held here with exactly the bytes written to ``writer``: a file
        of the same size whose id those bytes give under its own timestamp."""
        with self.ctx.store.reading() as uow:
            same_size = uow.files.held_of_size(writer.size)
        return next((m for m in same_size if writer.matches(m.file_id, m.file_timestamp)), None)

    async def share(
        self,
        writer: PartialFile,
        name: str,
        *,
        force: bool = False,
        forward: Forward | None = None,
    ) -> Pushed:
        """Push the bytes already written to ``writer`` (from ``open_sink``) as ``name``, to
        the peer ``forward`` chose when they began to arrive (else one chosen now). Bytes this
        node already holds are not pushed again (unless ``force``): the answer is the record it
        has, marked ``existing``."""
        try:
            return await self._share(writer, name, force, forward)
        finally:
            if forward is not None:
                forward.call_off()  # a no-op once its record is sent

    async def _share(
        self, writer: PartialFile, name: str, force: bool, forward: Forward | None
    ) -> Pushed:
        ctx = self.ctx
        await forwarding.settle(writer)  # the commit below (before a record is sent) is quick
        if not force:
            existing = self.held_copy(writer)
            if existing is not None:
                writer.abort()
                ctx.activity.already_shared(existing)
                return Pushed(existing, existing=True)
        ts = int(time.time())
        file_id = writer.content_id(ts)
        meta = FileMeta(
            file_id=file_id,
            file_name=label(name),
            file_size=writer.size / MEGABYTE,
            file_owner=ctx.peer_id,
            file_timestamp=ts,
        )
        if ctx.config.extension:
            # Sealed by this node's key, over the name as every node reads it (PROTOCOL.md 2.8).
            meta = ownership.seal(ctx.key, meta)
        held = ctx.file(file_id)
        if held is not None and held.has_copy:
            writer.abort()  # the same bytes forced again within the same second: the same id
            return Pushed(held.meta, existing=True)
        try:
            await asyncio.to_thread(writer.commit, file_id, ts)
        except OSError as exc:
            raise NodeError(f"cannot store {name}: {exc.strerror or exc}") from exc
        try:
            with ctx.transaction() as uow:
                uow.files.mark_local(meta, writer.size, time.time())
                uow.emit(FileStored(meta, writer.size, "push"))
                uow.commit()
        except Exception:
            self.catalogue.drop_unrecorded_blob(file_id)
            raise
        if forward is None:
            forward = self.forward(writer, None)
        target = forward.target
        if target is not None and forward.take(meta, writer.size):
            forward.send_record(
                meta, self.transfers.begin(meta, "out", target.peer_id, writer.size)
            )
            ctx.spawn(self._after_stream(forward, target, meta, writer.size), "push")
        elif target is not None:
            ctx.spawn(self._push_until_sent(target, meta, writer.size), "push")
        ctx.send_to_all(Announce(from_peer=ctx.peer_id, meta=meta))
        ctx.activity.pushed(meta, writer.size, peer_label(target.peer_id) if target else None)
        return Pushed(meta)

    async def _after_stream(
        self, forward: Forward, target: PeerInfo, meta: FileMeta, size: int
    ) -> None:
        """A streamed push that failed after all is tried again with other peers."""
        if forward.task is not None and not await forward.task:
            await self._push_until_sent(target, meta, size, first_failed=True)

    async def _push_until_sent(
        self, target: PeerInfo, meta: FileMeta, size: int, *, first_failed: bool = False
    ) -> bool:
        """Push ``meta`` to ``target`` (``first_failed``: that was tried already, and failed)
        and, if that fails, to other peers with back-off (:class:`PushRetry`) until one takes
        it, another peer holds it, it is gone here, or the node has tried enough."""
        ctx = self.ctx
        retry = PushRetry(ctx.config.gossip_interval)
        peer: PeerInfo | None = target
        while True:
            if peer is not None and not first_failed and await self._push_to(peer, meta, size):
                return True
            first_failed = False
            wait = retry.failed(None if peer is None else peer.peer_id)
            if wait is None:
                break
            await asyncio.sleep(wait)
            entry = ctx.file(meta.file_id)
            if ctx.stopping.is_set() or entry is None or not entry.has_copy:
                return False
            if entry.holders:
                return True  # a peer has a copy already (it fetched the file)
            peer = retry.next_target(ctx.peers(), entry.holders)
        log.warning(
            "%s was not pushed to any peer (%d tried); it stays here for peers to fetch",
            file_label(meta), len(retry.tried),
        )  # fmt: skip
        return False

    async def _push_to(self, peer: PeerInfo, meta: FileMeta, size: int) -> bool:
        """Send a FILE_DATA with our copy of ``meta`` to ``peer``: raw bytes to a TreeDrive
        peer that takes them, hex (the classic push) to anyone else."""
        ctx = self.ctx
        transfer = self.transfers.begin(meta, "out", peer.peer_id, size)
        raw = RAW_PUSH in (peer.features or ()) and RAW_PUSH in ctx.features
        ok = await ctx.network.push_file(
            peer.host,
            peer.port,
            meta,
            ctx.store.blobs.path(meta.file_id),
            transfer.update,
            raw=raw,
            peer_key=ctx.secure_key(peer) if raw else None,
        )
        transfer.finish(ok, None if ok else "push failed")
        if not ok:
            log.warning(
                "sending %s to %s failed (the connection failed or was cut; --log-level DEBUG "
                "says how); it stays here for peers to fetch",
                file_label(meta), peer_label(peer.peer_id, f"{peer.host}:{peer.port}"),
            )  # fmt: skip
        return ok

    # -- pushes that come in ------------------------------------------------------------------
    async def take_pushed(
        self, header: FileData, sink: FileSink | None, source: str, progress: Progress | None
    ) -> tuple[bool, str]:
        """An unsolicited FILE_DATA, whole: keep it if it is welcome and its bytes verify.
        (Stored or not, and why not.)"""
        ctx = self.ctx
        meta = header.meta
        if meta is None or sink is None:
            if sink is not None:
                sink.abort()
            ctx.log_limited(
                "push-empty", logging.WARNING, "FILE_DATA without a file from %s dropped", source
            )
            return False, "no file in it"
        sink = cast(PartialFile, sink)  # the node's own (``open_sink``), handed back
        if progress is not None:
            progress.update(sink.size)
        sender = source
        if isinstance(progress, TransferHandle) and progress.state.peer_id not in (None, source):
            sender = peer_label(progress.state.peer_id, source)
        reason = self._unwelcome(meta)
        if reason is None:  # welcome: is its record one to keep (PROTOCOL.md 2.8)?
            taken, reason = self.catalogue.judge_pushed(meta, sender)
            meta = taken or meta
        if reason:
            sink.abort()
            ctx.log_limited(
                "push-refused", logging.INFO, "pushed file %s from %s not stored: %s",
                file_label(meta), sender, reason,
            )  # fmt: skip
            return False, reason
        if not await self.commit_blob(sink, meta.file_id, meta.file_timestamp, source):
            return False, "its bytes do not match its id"
        self.catalogue.stored(meta, sink.size, "received")
        ctx.activity.received(meta, sink.size, sender)
        return True, ""

    def _unwelcome(self, meta: FileMeta) -> str | None:
        """Why a pushed file is not kept (None: it is welcome)."""
        ctx = self.ctx
        with ctx.store.reading() as uow:
            tombstoned = uow.tombstones.owner(meta.file_id) is not None
            entry = uow.files.get(meta.file_id)
        if tombstoned:
            return "its owner deleted it"
        if entry is not None and entry.has_copy:
            return "already held"
        if meta.file_owner == ctx.peer_id:
            # Only a push makes files owned by this node, and this node never needs its own
            # file pushed to it: whatever the record says (a stranger's claim may have made
            # it), a push in this node's name is a forgery.
            ctx.forged_claims += 1
            return "it claims to be this node's own file"
        accepted = ctx.plugins.accept_file(ctx.hook_node, meta, None)
        return "refused by policy" if accepted is False else None

    async def commit_blob(
        self, sink: PartialFile, file_id: str, ts: Timestamp, source: str | None
    ) -> bool:
        """Verify the bytes against the id and publish the blob; on a mismatch, refuse them."""
        try:
            # fsync of a large file takes a while: off the event loop.
            await asyncio.to_thread(sink.commit, file_id, ts)
        except VerificationError as exc:
            self.ctx.log_limited(
                "bad-bytes", logging.WARNING, "file %s from %s refused: %s",
                file_id[:12], source, exc,
            )  # fmt: skip
            self.ctx.counters.refused["bytes"] += 1
            self.ctx.notify(FileRefused(file_id, source, str(exc)))
            return False
        return True
