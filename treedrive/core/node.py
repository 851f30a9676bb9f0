"""The node: a thin composition of its parts, and what the rest of the program calls.

- :mod:`~treedrive.core.context`: what the parts share (identity, store, outbox, plugins, tasks);
- :mod:`~treedrive.core.membership` and :mod:`~treedrive.core.bootstrap`: GOSSIP, peers, joining;
- :mod:`~treedrive.core.catalogue`: who holds which file, deletes and tombstones;
  :mod:`~treedrive.core.deleterelay`: owners' DELETEs passed on to peers that missed them;
- :mod:`~treedrive.core.swimnode`: membership and catalogue by swim, with peers that speak it;
- :mod:`~treedrive.core.dispatch`: each inbound message to the part that handles it;
- :mod:`~treedrive.core.sharing`: pushes, both ways; :mod:`~treedrive.core.fetching`: gets;
- :mod:`~treedrive.core.transfers`: transfers and their progress;
- :mod:`~treedrive.core.recovery`: the store made consistent at start.

Every change goes through one unit of work and its events are published to plugins only after
the commit. Network sends go through the transport's bounded outbox, and longer work runs as
tracked background tasks, so a slow peer never stalls the node. The node implements the
transport's :class:`~treedrive.core.ports.InboundHandler`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from treedrive.core.activity import Activity
from treedrive.core.bootstrap import Joining
from treedrive.core.catalogue import Catalogue
from treedrive.core.config import NodeConfig
from treedrive.core.context import EXTENSION_FEATURES, NodeContext, logged
from treedrive.core.deleterelay import RELAYS_PER_ADDRESS, RELAYS_PER_MESSAGE
from treedrive.core.dispatch import Dispatch
from treedrive.core.events import Event, Notice
from treedrive.core.fetching import Fetching
from treedrive.core.forwarding import Forward
from treedrive.core.gate import Gate
from treedrive.core.identity import NodeKey
from treedrive.core.membership import Membership
from treedrive.core.messages import FileData, Gossip, GossipReply, Message
from treedrive.core.model import CatalogEntry, FileMeta, PeerInfo, Pushed, TransferState
from treedrive.core.plugins import Plugins
from treedrive.core.ports import FileSink, Network, PartialFile, Progress, Store, UnitOfWork
from treedrive.core.reads import Reads
from treedrive.core.recovery import new_peer_id, recover
from treedrive.core.replies import ReplyPolicy
from treedrive.core.sharing import Sharing
from treedrive.core.swimnode import SwimNode
from treedrive.core.transfers import RangeProgress, TransferHandle, Transfers

__all__ = ["RELAYS_PER_ADDRESS", "RELAYS_PER_MESSAGE", "Node", "new_peer_id"]

log = logging.getLogger(__name__)


class Node:
    """One TreeDrive node. Build it with :func:`treedrive.app.build_node`."""

    EXTENSION_FEATURES = EXTENSION_FEATURES

    def __init__(
        self, config: NodeConfig, store: Store, plugins: Plugins, network: Network
    ) -> None:
        self.started_at = time.time()
        self.http_url: str | None = None
        self.ctx = ctx = NodeContext(config, store, plugins, network)
        ctx.hook_node = self
        self.transfers = Transfers(ctx.transaction, ctx.notify, ctx.counters)
        self.membership = Membership(ctx)
        self.joining = Joining(ctx, self.membership)
        self.catalogue = Catalogue(ctx, self.membership)
        self.swim = SwimNode(ctx, self.membership, self.catalogue)
        self.dispatch = Dispatch(ctx, self.membership, self.catalogue, self.swim)
        """Where each inbound message goes."""
        self.sharing = Sharing(ctx, self.catalogue, self.transfers)
        self.fetching = Fetching(ctx, self.catalogue, self.sharing, self.transfers)
        self.reads = Reads(store)
        """Read-only views of the catalogue (for the web layer, the shell and scripts)."""
        self.rate_limits = (config.max_download_rate, config.max_upload_rate)

    # -- identity and state (read by the web layer, the shell and tests) ----------------------
    @property
    def config(self) -> NodeConfig:
        return self.ctx.config

    @property
    def store(self) -> Store:
        return self.ctx.store

    @property
    def plugins(self) -> Plugins:
        return self.ctx.plugins

    @property
    def network(self) -> Network:
        return self.ctx.network

    @property
    def peer_id(self) -> str:
        return self.ctx.peer_id

    @property
    def key(self) -> NodeKey:
        """The node's key pair (its fingerprint is what people compare)."""
        return self.ctx.key

    @property
    def host(self) -> str:
        return self.ctx.host

    @property
    def port(self) -> int:
        return self.ctx.port

    @property
    def features(self) -> frozenset[str]:
        """The extension features the node speaks (empty: classic only)."""
        return self.ctx.features

    @property
    def activity(self) -> Activity:
        return self.ctx.activity

    @property
    def replies(self) -> ReplyPolicy:
        return self.membership.replies

    @property
    def joined(self) -> asyncio.Event:
        """Set once the join-time downloads are done (or skipped)."""
        return self.joining.joined

    @property
    def bootstrap_problem(self) -> str | None:
        """Why the node has not joined through its bootstrap hosts yet (None: it has, or it
        has none)."""
        return self.joining.problem

    @property
    def forged_claims(self) -> int:
        """Remote claims (records, pushes) that this node owns a file it never pushed."""
        return self.ctx.forged_claims

    @property
    def gate(self) -> Gate:
        """What GOSSIPs and GOSSIP_REPLYs pass first (PROTOCOL.md 2.7): ``refused`` counts."""
        return self.membership.gate

    @property
    def _tasks(self) -> set[asyncio.Task[Any]]:
        return self.ctx.tasks

    # -- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        ctx = self.ctx
        self._recover()
        self.network.set_rate_limits(self.config.max_download_rate, self.config.max_upload_rate)
        host, ctx.port = await self.network.start(self)
        ctx.host = self.config.advertise_host or host  # what peers are told (--advertise-host)
        await self.plugins.startup(self)
        told = f" (peers are told {ctx.host})" if ctx.host != host else ""
        log.info("node %s listening on %s:%d%s", self.peer_id, host, self.port, told)
        self.swim.start()
        ctx.spawn(self.joining.gossip_loop(), "gossip")
        ctx.spawn(self.swim.loop(), "swim")
        ctx.spawn(self._cleanup_loop(), "cleanup")
        ctx.spawn(self.fetching.join(self.joining.joined), "join")
        if self.config.bootstrap:
            ctx.spawn(self._bootstrap_loop(), "bootstrap")

    def _recover(self) -> None:
        recover(self.ctx)

    async def _bootstrap_loop(self) -> None:
        await self.joining.bootstrap_loop()

    async def stop(self) -> None:
        ctx = self.ctx
        if not ctx.stopping.is_set():
            log.info("node %s stopping", self.peer_id)
        ctx.stopping.set()
        self.swim.leave()
        self.membership.close()
        await self.plugins.shutdown(self)
        for task in list(ctx.tasks):
            task.cancel()
        if ctx.tasks:
            await asyncio.wait(ctx.tasks, timeout=5)
        await self.network.close()
        self.transfers.close_uploads()

    async def _cleanup_loop(self) -> None:
        while not self.ctx.stopping.is_set():
            await asyncio.sleep(self.config.cleanup_interval)
            with logged("the cleanup sweep"):
                self.expire_peers()
                if self.joined.is_set():
                    self.fetching.retry_downloads()

    # -- store and events ---------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[UnitOfWork]:
        """A unit of work whose events reach plugins once (and only if) it committed."""
        with self.ctx.transaction() as uow:
            yield uow

    def publish(self, events: Sequence[Event]) -> None:
        """Tell plugins of committed changes (:meth:`transaction` does, after its commit)."""
        self.ctx.publish(events)

    def notify(self, notice: Notice) -> None:
        """Tell plugins of something transient (no commit behind it), at once."""
        self.ctx.notify(notice)

    def peers(self) -> list[PeerInfo]:
        return self.ctx.peers()

    def files(
        self, scope: str = "both", offset: int = 0, limit: int | None = None
    ) -> list[CatalogEntry]:
        with self.store.reading() as uow:
            return uow.files.entries(scope, offset=offset, limit=limit)

    def file(self, file_id: str) -> CatalogEntry | None:
        return self.ctx.file(file_id)

    def resolve_id(self, text: str) -> str:
        """The full id of the one file that ``text`` names: its 64 hex characters, or a unique
        prefix of at least 8. NotFound or AmbiguousId (each saying what to type) otherwise."""
        return self.ctx.resolve_id(text)

    def own_files(self) -> frozenset[str]:
        """The ids of the files this node owns and holds (those it pushed)."""
        return self.catalogue.own_files()

    # -- gossip -------------------------------------------------------------------------------
    def new_gossip(self) -> Gossip:
        return self.membership.new_gossip()

    async def gossip_now(self) -> None:
        """Gossip to every tracked address (once each), and to the well-known hosts while we
        know nobody."""
        await self.joining.gossip_now()

    def gossip_reply(self) -> tuple[GossipReply, int]:
        """The GOSSIP_REPLY this node sends and its size on the wire."""
        return self.membership.gossip_reply()

    def expire_peers(self, now: float | None = None) -> list[str]:
        return self.membership.expire(now)

    # -- inbound (InboundHandler) -------------------------------------------------------------
    def pinned_key(self, peer_id: str) -> bytes | None:
        """The key pinned to ``peer_id`` (None: none is)."""
        return self.ctx.pinned_key(peer_id)

    def open_sink(self) -> PartialFile:
        return self.store.blobs.writer()

    def file_to_serve(self, file_id: str) -> tuple[FileMeta, Path] | None:
        entry = self.file(file_id)
        if entry is None or not entry.has_copy or not self.store.blobs.has(file_id):
            return None
        return entry.meta, self.store.blobs.path(file_id)

    async def handle_message(self, message: Message, source: str) -> None:
        self.dispatch.message(message, source)

    def track_push(
        self, meta: FileMeta, source: str, sender: str | None, size: int | None
    ) -> Progress:
        return self.transfers.pushed(meta, source, sender, size)

    async def handle_pushed_file(
        self,
        header: FileData,
        sink: FileSink | None,
        source: str,
        progress: Progress | None = None,
    ) -> None:
        stored = False
        why = "not stored"
        try:
            stored, why = await self.sharing.take_pushed(header, sink, source, progress)
        finally:
            if progress is not None:
                progress.finish(stored, None if stored else why)

    def track_upload(self, meta: FileMeta, peer: str, size: int) -> TransferHandle:
        return self.transfers.upload(meta, peer, size)

    def track_range(
        self, meta: FileMeta, peer: str, download: str | None, size: int
    ) -> RangeProgress:
        return self.transfers.range(meta, peer, download, size)

    # -- commands -----------------------------------------------------------------------------
    async def push(self, path: Path, name: str | None = None, force: bool = False) -> FileMeta:
        return (await self.push_path(path, name, force=force)).meta

    async def push_path(
        self, path: Path, name: str | None = None, *, force: bool = False
    ) -> Pushed:
        """Add the file at ``path`` to the network: store it, FILE_DATA to one random peer,
        ANNOUNCE to all; or, unless ``force``, say that this node already holds its bytes."""
        return await self.sharing.push_path(path, name, force=force)

    async def push_blob(self, writer: PartialFile, name: str, force: bool = False) -> FileMeta:
        """Push the bytes already written to ``writer`` (see :meth:`share`); their record."""
        return (await self.share(writer, name, force=force)).meta

    def held_copy(self, writer: PartialFile) -> FileMeta | None:
        """The record of a file held here with exactly the bytes written to ``writer``."""
        return self.sharing.held_copy(writer)

    def forward(self, writer: PartialFile, size: int | None) -> Forward:
        """Choose where a push whose ``size`` bytes are about to arrive in ``writer`` (from
        :meth:`open_sink`) goes, and stream them there as they arrive when the peer takes it;
        hand the answer to :meth:`share`, which settles it (or call ``call_off()``)."""
        return self.sharing.forward(writer, size)

    async def share(
        self,
        writer: PartialFile,
        name: str,
        *,
        force: bool = False,
        forward: Forward | None = None,
    ) -> Pushed:
        """Push the bytes already written to ``writer`` (from :meth:`open_sink`) as ``name``,
        to the peer ``forward`` chose (see :meth:`forward`; else one chosen now); bytes this
        node already holds are not pushed again (unless ``force``)."""
        return await self.sharing.share(writer, name, force=force, forward=forward)

    async def get(self, file_id: str) -> CatalogEntry:
        """Fetch a file from a holder (the next on failure), verify it, store it, announce it.
        ``file_id`` may be a unique prefix (:meth:`resolve_id`)."""
        return await self.fetching.get(file_id)

    async def delete(self, file_id: str) -> None:
        """Delete a file this node owns, here and (by DELETE to every tracked peer) everywhere.
        ``file_id`` may be a unique prefix (:meth:`resolve_id`)."""
        self.catalogue.delete(self.resolve_id(file_id))

    def forget_key(self, peer_id: str) -> None:
        """Forget the key pinned to ``peer_id`` (see :meth:`Gate.forget`); NotFound if none is."""
        self.membership.gate.forget(peer_id)

    async def resume_downloads(self) -> list[str]:
        """Continue the ranged downloads a stop or crash interrupted."""
        return await self.fetching.resume_downloads()

    async def fetch_selected(self) -> list[str]:
        return await self.fetching.fetch_selected()

    # -- transfers and limits -----------------------------------------------------------------
    def begin_transfer(
        self,
        meta: FileMeta,
        direction: str,
        peer_id: str | None,
        total: int | None,
        done: int = 0,
    ) -> TransferHandle:
        """Record a transfer and track its progress (see :meth:`Transfers.begin`)."""
        return self.transfers.begin(meta, direction, peer_id, total, done)

    @property
    def active_transfers(self) -> dict[int, TransferState]:
        """The transfers under way, by transfer id."""
        return self.transfers.active

    def distrust(self, peer_id: str) -> None:
        """Avoid ``peer_id`` as a holder for a while: it sent bytes that did not verify."""
        self.fetching.distrust(peer_id)

    def distrusted(self, peer_id: str) -> bool:
        return self.fetching.distrusted(peer_id)

    def set_rate_limits(self, download: float | None, upload: float | None) -> None:
        """Bytes per second for all downloads and all uploads (None: no limit)."""
        self.rate_limits = (download, upload)
        self.network.set_rate_limits(download, upload)
