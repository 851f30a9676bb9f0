"""The node: the classic protocol's behaviour (PROTOCOL.md part 1) and the user's commands.

Every change goes through one unit of work and its events are published to plugins only after
the commit. Network sends run as tracked background tasks so a slow peer never stalls the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from treedrive.core import ids
from treedrive.core.activity import Activity, file_label, peer_label
from treedrive.core.backoff import Backoff
from treedrive.core.bounded import Bounded, Reused, Throttle, TokenBucket
from treedrive.core.config import NodeConfig
from treedrive.core.download import RangedDownload
from treedrive.core.errors import (
    FetchFailed,
    NodeError,
    NotFound,
    NotOwner,
    StorageError,
    TransferError,
)
from treedrive.core.events import (
    Event,
    FileAdvertised,
    FileDeleted,
    FileRefused,
    FileStored,
    PeerExpired,
    PeerSeen,
)
from treedrive.core.messages import (
    RAW_PUSH,
    RAW_RANGE,
    Announce,
    Delete,
    Extension,
    FileData,
    Gossip,
    GossipReply,
    Message,
)
from treedrive.core.model import (
    MEGABYTE,
    CatalogEntry,
    FileMeta,
    PeerInfo,
    Pushed,
    Timestamp,
    TransferState,
)
from treedrive.core.plugins import Plugins
from treedrive.core.ports import FileSink, Network, Progress
from treedrive.core.replies import (
    FORWARDS_PER_SECOND,
    MAX_ADDRESSES,
    Address,
    ReplyPolicy,
    Verdict,
    distinct_addresses,
    gossip_size,
    reply_size,
    source_ip,
)
from treedrive.core.sizes import classic_cap, size_hint
from treedrive.core.transfers import RangeProgress, TransferHandle, Transfers
from treedrive.store import BlobWriter, Store, VerificationError
from treedrive.store.uow import UnitOfWork

log = logging.getLogger(__name__)

DISTRUST_FOR = 600.0  # seconds a holder that sent bad bytes is avoided
SEEN_IDS = 10_000
RELAY_DELETE_EVERY = 30.0  # seconds before re-telling one address about one deleted file
RELAYS_PER_MESSAGE = 8
"""DELETEs relayed for one message that advertises deleted files (a GOSSIP_REPLY may list 300)."""
RELAYS_PER_ADDRESS = 8
"""DELETEs relayed to one address per gossip interval, whatever peer id it goes by."""
KEEP_FOR = 1.0
"""Seconds the set of proven peers (kept when the peer table is full) is reused."""
FORWARD_TARGETS_FOR = 1.0
"""Seconds the tracked addresses that GOSSIPs are forwarded to are reused before they are read
again (a flood must not make the node read its whole peer table per GOSSIP)."""
BOOTSTRAP_FIRST_WAIT = 2.0
"""Seconds after the start before a node that still knows no peer says its bootstrap hosts have
not answered (and tries them again, with back-off)."""
BOOTSTRAP_FIRST_RETRY = 1.0
"""Seconds before the first retry of unanswered bootstrap hosts (doubling after each)."""
BOOTSTRAP_ANSWER_WAIT = 2.0
"""Seconds a bootstrap host that took our GOSSIP has to answer before it counts as silent."""
BOOTSTRAP_MAX_WAIT = 60.0
"""The longest pause between tries of bootstrap hosts while no peer is known."""


def new_peer_id() -> str:
    return f"td-{secrets.token_hex(4)}"


class Node:
    """One TreeDrive node. Build it with :func:`treedrive.app.build_node`."""

    EXTENSION_FEATURES = frozenset({RAW_RANGE, RAW_PUSH})

    def __init__(
        self, config: NodeConfig, store: Store, plugins: Plugins, network: Network
    ) -> None:
        self.config = config
        self.store = store
        self.plugins = plugins
        self.network = network
        self.peer_id = config.peer_id or ""
        self.host = config.host
        self.port = config.port
        self.started_at = time.time()
        self.http_url: str | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._fetching: dict[str, asyncio.Future[CatalogEntry]] = {}
        self._relayed: Bounded[tuple[Address, str], float] = Bounded(SEEN_IDS)
        """(address, file id) -> when that address was last told the file was deleted."""
        self._relay_windows: Bounded[Address, tuple[float, int]] = Bounded(MAX_ADDRESSES)
        """address -> (start of its current interval, DELETEs relayed to it in it)."""
        self._stopping = asyncio.Event()
        self.transfers = Transfers(self.transaction, self.publish)
        self._distrusted: dict[str, float] = {}
        self.rate_limits = (config.max_download_rate, config.max_upload_rate)
        self.features = self.EXTENSION_FEATURES if config.extension else frozenset()
        self.joined = asyncio.Event()
        """Set once the join-time downloads are done (or skipped)."""
        self.replies = ReplyPolicy(config.gossip_interval)
        self._reply: Reused[tuple[GossipReply, int]] = Reused(config.gossip_interval)
        self._local_version = 0
        """Bumped whenever the files this node holds change (the reply is rebuilt)."""
        self._pending_replies: dict[Address, tuple[str, asyncio.TimerHandle]] = {}
        self._forwards = TokenBucket(FORWARDS_PER_SECOND, FORWARDS_PER_SECOND)
        self._forward_targets: Reused[list[tuple[str, Address]]] = Reused(FORWARD_TARGETS_FOR)
        self._throttles: dict[str, Throttle] = {}
        self._own: Reused[frozenset[str]] = Reused(config.gossip_interval)
        self._keep: Reused[frozenset[str]] = Reused(KEEP_FOR)
        self._proofs = 0
        """Bumped when a peer proves itself (the set of kept peers is read again)."""
        self.forged_claims = 0
        """Remote claims (records, pushes) that this node owns a file it never pushed."""
        self.activity = Activity()
        self.bootstrap_problem: str | None = None
        """Why the node has not joined through its bootstrap hosts yet (None: it has, or it
        has none); shown on the terminal, in the log and on the dashboard."""

    # -- life cycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self._recover()
        self.network.set_rate_limits(self.config.max_download_rate, self.config.max_upload_rate)
        self.host, self.port = await self.network.start(self)
        await self.plugins.notify("treedrive_startup", within=30, node=self)
        log.info("node %s listening on %s:%d", self.peer_id, self.host, self.port)
        self._spawn(self._gossip_loop(), "gossip")
        self._spawn(self._cleanup_loop(), "cleanup")
        self._spawn(self._join(), "join")
        if self.config.bootstrap:
            self._spawn(self._bootstrap_loop(), "bootstrap")

    def _recover(self) -> None:
        """Make the store consistent after whatever stopped the node last time."""
        now = time.time()
        with self.store.unit_of_work() as uow:
            resumable = {d.file_id for d in uow.downloads.all()}
        removed = self.store.blobs.clean_partials(keep=frozenset(resumable))
        with self.transaction() as uow:
            for file_id in resumable:
                if not self.store.blobs.range_path(file_id).exists():
                    uow.downloads.remove(file_id)
            stored = self.config.peer_id
            known = uow.identity.get()
            if stored is None:
                stored = known or new_peer_id()
            elif known is not None and known != stored:
                log.warning("data dir belonged to peer %r; now peer %r", known, stored)
            uow.identity.set(stored, now)
            self.peer_id = stored
            interrupted = uow.transfers.abandon_running(now)
            blobs = self.store.blobs.ids()
            for entry in uow.files.entries("local"):
                if entry.meta.file_id not in blobs:
                    log.warning("local copy of %s is missing; now remote", entry.meta.file_id)
                    uow.files.unmark_local(entry.meta.file_id)
            local = {m.file_id for m in uow.files.local_metas()}
            uow.commit()
        for orphan in blobs - local:
            # A crash between publishing a blob and committing its record leaves the blob alone.
            self.store.blobs.delete(orphan)
        if removed or interrupted:
            log.info(
                "recovered: %d partial files removed, %d transfers interrupted",
                removed,
                interrupted,
            )

    async def stop(self) -> None:
        if not self._stopping.is_set():
            log.info("node %s stopping", self.peer_id)
        self._stopping.set()
        for _, timer in self._pending_replies.values():
            timer.cancel()
        self._pending_replies.clear()
        await self.plugins.notify("treedrive_shutdown", within=5, node=self)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await self.network.close()
        self.transfers.close_uploads()

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task %s failed", task.get_name(), exc_info=exc)

    # -- store and events --------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[UnitOfWork]:
        """A unit of work whose events reach plugins once (and only if) it committed."""
        with self.store.unit_of_work() as uow:
            yield uow
        self.publish(uow.published)

    def publish(self, events: Sequence[Event]) -> None:
        for event in events:
            if isinstance(event, FileStored | FileDeleted):
                self._local_version += 1
            self.plugins.notify_soon("treedrive_on_event", node=self, event=event)

    def peers(self) -> list[PeerInfo]:
        with self.store.unit_of_work() as uow:
            return uow.peers.all()

    def files(
        self, scope: str = "both", offset: int = 0, limit: int | None = None
    ) -> list[CatalogEntry]:
        with self.store.unit_of_work() as uow:
            return uow.files.entries(scope, offset=offset, limit=limit)

    def file(self, file_id: str) -> CatalogEntry | None:
        with self.store.unit_of_work() as uow:
            return uow.files.get(file_id)

    def resolve_id(self, text: str) -> str:
        """The full id of the one file that ``text`` names: its 64 hex characters, or a unique
        prefix of at least 8. NotFound or AmbiguousId (each saying what to type) otherwise."""

        def candidates(prefix: str, limit: int) -> list[str]:
            with self.store.unit_of_work() as uow:
                return uow.files.ids_with_prefix(prefix, limit)

        return ids.resolve(text, candidates)

    # -- sending -----------------------------------------------------------------------------
    def _gossip_extra(self, message_type: str) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        for result in self.plugins.collect(
            "treedrive_gossip_extra", node=self, message_type=message_type
        ):
            if isinstance(result, dict):
                extra.update(result)
        return extra

    def _extension(self) -> Extension | None:
        """What this node's GOSSIP and GOSSIP_REPLY say of the extension (None: it speaks
        only the classic protocol)."""
        return Extension(self.features) if self.config.extension else None

    def _send(self, host: str, port: int, message: Message) -> None:
        """Hand ``message`` to the transport's bounded outbox (it never waits, and drops the
        oldest work when full): peer input never makes the node spawn unbounded tasks."""
        self.network.post(host, port, message)

    def _addresses(self, exclude: Sequence[str] = ()) -> list[Address]:
        """The tracked peers' addresses, each once and never our own: a hundred peer ids that
        name one address (forged or stale) cost one message, not a hundred."""
        return distinct_addresses(
            [(p.host, p.port) for p in self.peers() if p.peer_id not in exclude],
            exclude=frozenset({(self.host, self.port)}),
        )

    def _send_to_all(self, message: Message, exclude: Sequence[str] = ()) -> int:
        addresses = self._addresses(exclude)
        for host, port in addresses:
            self._send(host, port, message)
        return len(addresses)

    def _log_limited(self, key: str, level: int, text: str, *args: Any) -> None:
        """One log line per ``key`` per second at most; the next says how many were left out."""
        throttle = self._throttles.setdefault(key, Throttle(1.0))
        if throttle.ready(time.monotonic()):
            more = throttle.take_suppressed()
            suffix = f" (and {more} more like it)" if more else ""
            log.log(level, text + suffix, *args)

    def new_gossip(self) -> Gossip:
        gossip = Gossip(
            host=self.host,
            port=self.port,
            id=str(uuid.uuid4()),
            peer_id=self.peer_id,
            extra=self._gossip_extra("GOSSIP"),
            extension=self._extension(),
        )
        self._remember(gossip.id)
        return gossip

    def _remember(self, gossip_id: str) -> bool:
        """Record a gossip id; False if it was already seen."""
        if gossip_id in self._seen:
            return False
        self._seen[gossip_id] = None
        if len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        return True

    async def gossip_now(self) -> None:
        """Gossip to every tracked address (once each), and to the well-known hosts while we
        know nobody."""
        gossip = self.new_gossip()
        addresses = self._addresses()
        if not addresses or not self.joined.is_set():
            addresses = distinct_addresses(
                addresses + [(a.host, a.port) for a in self.config.bootstrap],
                exclude=frozenset({(self.host, self.port)}),
            )
        now = time.monotonic()
        for host, port in addresses:
            self.replies.gossiped((host, port), now)  # a GOSSIP_REPLY from there answers it
            self._send(host, port, gossip)

    async def _bootstrap_loop(self) -> None:
        """While the node knows no peer, try its bootstrap hosts again with back-off, and say
        why it has not joined (``bootstrap_problem``: terminal, log, dashboard) until a peer
        answers. If every peer goes, it starts over."""
        hosts = distinct_addresses(
            [(a.host, a.port) for a in self.config.bootstrap],
            exclude=frozenset({(self.host, self.port)}),
        )
        if not hosts:
            return
        first = BOOTSTRAP_FIRST_RETRY
        backoff = Backoff(first, max(first, min(BOOTSTRAP_MAX_WAIT, self.config.gossip_interval)))
        await asyncio.sleep(BOOTSTRAP_FIRST_WAIT)
        while not self._stopping.is_set():
            peers = self.peers()
            if peers:
                if self.bootstrap_problem is not None:
                    log.info("joined the network: %d peers known", len(peers))
                self.bootstrap_problem = None
                backoff.succeeded()
                await asyncio.sleep(self.config.cleanup_interval)
                continue
            gossip = self.new_gossip()
            now = time.monotonic()
            for address in hosts:
                self.replies.gossiped(address, now)
            sent = await asyncio.gather(*(self.network.send(h, p, gossip) for h, p in hosts))
            if any(sent) and await self._peer_within(BOOTSTRAP_ANSWER_WAIT):
                continue  # answered: joined
            delay = backoff.failed()
            names = ", ".join(f"{h}:{p}" for h, p in hosts[:4])
            if any(sent):
                why = f"the bootstrap host {names} took our GOSSIP but no peer has answered"
            else:
                plural = "s" if len(hosts) > 1 else ""
                why = f"cannot reach the bootstrap host{plural} {names} (no connection)"
            self.bootstrap_problem = f"{why}; retrying in {delay:.{0 if delay >= 1 else 1}f} s"
            if backoff.failures & (backoff.failures - 1) == 0:  # the 1st, 2nd, 4th, 8th… try
                log.warning("%s (try %d)", self.bootstrap_problem, backoff.failures)
            await self._peer_within(delay)

    async def _peer_within(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for some peer to be known (a GOSSIP or reply came in)."""
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set():
            if self.peers():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(0.25, left))
        return False

    async def _gossip_loop(self) -> None:
        while not self._stopping.is_set():
            with _logged("gossip"):
                await self.gossip_now()
            await asyncio.sleep(self.config.gossip_interval)

    async def _cleanup_loop(self) -> None:
        while not self._stopping.is_set():
            await asyncio.sleep(self.config.cleanup_interval)
            with _logged("the cleanup sweep"):
                self.expire_peers()
                if self.joined.is_set():
                    self._retry_downloads()

    def _retry_downloads(self) -> None:
        """Interrupted downloads whose holders are (back) in reach continue by themselves."""
        with self.store.unit_of_work() as uow:
            pending = [d.file_id for d in uow.downloads.all() if d.file_id not in self._fetching]
            tracked = {p.peer_id for p in uow.peers.all()}
            ready = [
                f
                for f in pending
                if (e := uow.files.get(f)) is not None and tracked.intersection(e.holders)
            ]
        for file_id in ready:
            self._spawn(self._quiet_get(file_id), f"resume {file_id[:12]}")

    async def _quiet_get(self, file_id: str) -> None:
        try:
            await self.get(file_id)
        except NodeError as exc:
            log.info("download of %s not finished yet: %s", file_id[:12], exc)

    def expire_peers(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        with self.transaction() as uow:
            gone = uow.peers.expired(now - self.config.peer_timeout)
            uow.peers.remove(gone)
            for peer_id in gone:
                uow.emit(PeerExpired(peer_id))
            uow.files.drop_untracked_holders()
            forgotten = uow.files.remove_orphans()
            uow.commit()
        if gone:
            # Peer ids are claims: a thousand forged ones make a few short lines.
            self.activity.left(gone, len(forgotten))
        return gone

    # -- inbound (InboundHandler) --------------------------------------------------------------
    def open_sink(self) -> FileSink:
        return self.store.blobs.writer()

    def file_to_serve(self, file_id: str) -> tuple[FileMeta, Path] | None:
        entry = self.file(file_id)
        if entry is None or not entry.has_copy or not self.store.blobs.has(file_id):
            return None
        return entry.meta, self.store.blobs.path(file_id)

    async def handle_message(self, message: Message, source: str) -> None:
        try:
            if isinstance(message, Gossip):
                self._on_gossip(message, source)
            elif isinstance(message, GossipReply):
                self._on_gossip_reply(message, source)
            elif isinstance(message, Announce):
                self._on_announce(message)
            elif isinstance(message, Delete):
                self._on_delete(message)
            else:
                self._log_limited(
                    "unexpected", logging.WARNING, "unexpected %s from %s dropped",
                    type(message).__name__, source,
                )  # fmt: skip
        except Exception as exc:
            if not storage_failure(exc):
                raise
            self._log_limited(
                "storage", logging.ERROR, "%s from %s not recorded: %s",
                type(message).__name__, source, exc,
            )  # fmt: skip

    def _track(
        self, uow: UnitOfWork, peer_id: str, host: str, port: int, ext: Extension | None
    ) -> None:
        """Track or refresh a peer, within ``max_peers``: the longest silent make room, but the
        peers that answer this node's GOSSIPs go last (a flood of new peer ids must not push
        them out)."""
        peers = uow.peers
        peer, new = peers.upsert(
            peer_id, host, port, time.time(), None if ext is None else ext.features,
            max_peers=self.config.max_peers, keep=self._proven_peers(),
        )  # fmt: skip
        for gone in peers.evicted:
            uow.emit(PeerExpired(gone))
        if peers.evicted:
            self._log_limited(
                "evicted", logging.INFO, "%d peers tracked at most: %d longest silent forgotten",
                self.config.max_peers, len(peers.evicted),
            )  # fmt: skip
        uow.emit(PeerSeen(peer, new))
        if new:
            self.activity.joined(peer)

    def _proven_peers(self) -> frozenset[str]:
        now = time.monotonic()
        kept = self._keep.get(self._proofs, now)
        if kept is None:
            kept = self._keep.put(self.replies.proven_peers(now), self._proofs, now)
        return kept

    def own_files(self) -> frozenset[str]:
        """The ids of the files this node owns and holds: those it pushed (only
        :meth:`push_blob` makes a file owned by this node). Reused until they change."""
        now = time.monotonic()
        own = self._own.get(self._local_version, now)
        if own is None:
            version = self._local_version
            with self.store.unit_of_work() as uow:
                metas = uow.files.local_metas()
            own = frozenset(m.file_id for m in metas if m.file_owner == self.peer_id)
            self._own.put(own, version, now)
        return own

    def _not_forged(self, metas: Sequence[FileMeta], peer_id: str) -> list[FileMeta]:
        """``metas`` without the records that claim this node owns a file it never pushed (a
        stranger's record would make this node the owner of a file it did not push, and give
        it the right to DELETE it); those are counted and logged."""
        if not any(m.file_owner == self.peer_id for m in metas):
            return list(metas)
        own = self.own_files()
        kept = [m for m in metas if m.file_owner != self.peer_id or m.file_id in own]
        skipped = len(metas) - len(kept)
        if skipped:
            self.forged_claims += skipped
            self._log_limited(
                "forged-owner", logging.WARNING,
                "%d records from %r skipped: they say this node owns files it never pushed "
                "(%d such claims so far)",
                skipped, peer_id[:64], self.forged_claims,
            )  # fmt: skip
        return kept

    def _on_gossip(self, g: Gossip, source: str) -> None:
        if not self._remember(g.id) or g.peer_id == self.peer_id:
            return
        ip = source_ip(source)
        self.replies.gossip_received((g.host, g.port), ip, gossip_size(g), time.monotonic())
        try:
            with self.transaction() as uow:
                self._track(uow, g.peer_id, g.host, g.port, g.extension)
                uow.commit()
        except Exception as exc:
            # A full disk must not silence the node: peers that hear nothing drop it. The reply
            # needs no write.
            if not storage_failure(exc):
                raise
            self._log_limited(
                "storage", logging.ERROR, "GOSSIP from %s not recorded: %s", g.peer_id, exc
            )
        self._extension_keys("GOSSIP", g.peer_id, g.extra)
        self._answer((g.host, g.port), ip)
        self._forward(g)

    def gossip_reply(self) -> tuple[GossipReply, int]:
        """The GOSSIP_REPLY this node sends and its size on the wire: one object, reused until
        the files held here change (or an interval passes), so the transport encodes it once."""
        now = time.monotonic()
        cached = self._reply.get(self._local_version, now)
        if cached is not None:
            return cached
        version = self._local_version
        with self.store.unit_of_work() as uow:  # a read: works on a full disk too
            files = uow.files.local_metas()
        reply = GossipReply(
            host=self.host,
            port=self.port,
            peer_id=self.peer_id,
            files=tuple(files),
            extra=self._gossip_extra("GOSSIP_REPLY"),
            extension=self._extension(),
        )
        return self._reply.put((reply, reply_size(reply)), version, now)

    def _answer(self, address: Address, ip: str) -> None:
        """Reply to ``address`` as the reply policy says: now, once its interval is over, or
        (a stranger that has not earned the bytes) not at all."""
        reply, size = self.gossip_reply()
        decision = self.replies.decide(address, ip, size, time.monotonic())
        if decision.verdict is Verdict.SEND:
            self._send(*address, reply)
        elif decision.verdict is Verdict.LATER:
            pending = self._pending_replies.get(address)
            if pending is not None:
                self._pending_replies[address] = (ip, pending[1])
            elif len(self._pending_replies) < self.replies._addresses.size:
                delay = max(0.0, decision.at - time.monotonic())
                timer = asyncio.get_running_loop().call_later(delay, self._answer_later, address)
                self._pending_replies[address] = (ip, timer)
        else:
            self._log_limited(
                "budget", logging.INFO,
                "GOSSIP_REPLY to %s:%d not sent: its source %s has not sent enough to earn "
                "%d bytes (%d refused so far)",
                address[0], address[1], ip, size, self.replies.refused,
            )  # fmt: skip

    def _answer_later(self, address: Address) -> None:
        pending = self._pending_replies.pop(address, None)
        if pending is None or self._stopping.is_set():
            return
        try:
            self._answer(address, pending[0])
        except Exception:
            log.exception("a deferred GOSSIP_REPLY to %s:%d failed", *address)

    def _forward(self, g: Gossip) -> None:
        """Pass a new GOSSIP on to up to ``fanout`` other addresses, within the overall rate."""
        if self.config.fanout <= 0 or not self._forwards.take(time.monotonic()):
            return
        now = time.monotonic()
        targets = self._forward_targets.get(0, now)
        if targets is None:
            tracked = [(p.peer_id, (p.host, p.port)) for p in self.peers()]
            targets = self._forward_targets.put(tracked, 0, now)
        origin = (g.host, g.port)
        others = distinct_addresses(
            [a for peer_id, a in targets if peer_id != g.peer_id and a != origin],
            exclude=frozenset({(self.host, self.port)}),
        )
        for host, port in random.sample(others, min(self.config.fanout, len(others))):
            self.replies.gossiped((host, port), now)
            self._send(host, port, g)

    def _extension_keys(self, message_type: str, peer_id: str, extra: Mapping[str, Any]) -> None:
        if extra:
            self.plugins.collect(
                "treedrive_gossip_received",
                node=self,
                message_type=message_type,
                peer_id=peer_id,
                extra=dict(extra),
            )

    def _on_gossip_reply(self, r: GossipReply, source: str = "") -> None:
        if r.peer_id == self.peer_id:
            return
        now = time.time()
        if self.replies.answered_us(
            (r.host, r.port), source_ip(source), time.monotonic(), r.peer_id
        ):
            self._proofs += 1
        files = self._not_forged(r.files, r.peer_id)
        with self.transaction() as uow:
            self._track(uow, r.peer_id, r.host, r.port, r.extension)
            peer = uow.peers.get(r.peer_id)
            assert peer is not None
            deleted = uow.tombstones.owners([m.file_id for m in files])
            stale = [(m.file_id, deleted[m.file_id]) for m in files if m.file_id in deleted]
            live = [m for m in files if m.file_id not in deleted]
            for meta, is_new in uow.files.advertise(r.peer_id, live, now, complete=True):
                uow.emit(FileAdvertised(meta, r.peer_id, is_new))
            uow.commit()
        if r.skipped:
            self._log_limited(
                "malformed-records", logging.WARNING, "%d malformed file records from %r skipped",
                r.skipped, r.peer_id[:64],
            )  # fmt: skip
        self._extension_keys("GOSSIP_REPLY", r.peer_id, r.extra)
        if stale:
            self._relay_deletes(peer, stale)

    def _relay_deletes(self, peer: PeerInfo, stale: Sequence[tuple[str, str]]) -> None:
        """A peer still advertises files their owners deleted (it missed the DELETEs): pass the
        owners' DELETEs on to its address. Bounded: each (address, file) at most once per
        ``RELAY_DELETE_EVERY``, at most ``RELAYS_PER_MESSAGE`` for one message and
        ``RELAYS_PER_ADDRESS`` per interval to one address (a stranger names any address, with
        a fresh peer id each time); one log line (rate-limited) says how many."""
        address = (peer.host, peer.port)
        if peer.peer_id == self.peer_id or address == (self.host, self.port):
            return  # a DELETE in this node's own name is a forgery
        now = time.monotonic()
        window = self._relay_windows.get(address)
        if window is None or now - window[0] >= self.config.gossip_interval:
            window = (now, 0)
        start, count = window
        sent = held_back = 0
        for file_id, owner in stale:
            if owner == peer.peer_id:
                continue  # the owner knows what it deleted
            last = self._relayed.get((address, file_id))
            if last is not None and now - last < RELAY_DELETE_EVERY:
                continue
            if sent >= RELAYS_PER_MESSAGE or count >= RELAYS_PER_ADDRESS:
                held_back += 1
                continue
            self._relayed.put((address, file_id), now)
            sent += 1
            count += 1
            self._send(*address, Delete(from_peer=owner, file_id=file_id))
        self._relay_windows.put(address, (start, count))
        if sent or held_back:
            self._log_limited(
                "relay-delete", logging.INFO,
                "told %s:%d (%r) that %d files were deleted by their owners (%d more not now)",
                address[0][:64], address[1], peer.peer_id[:64], sent, held_back,
            )  # fmt: skip

    def _on_announce(self, a: Announce) -> None:
        if a.from_peer == self.peer_id:
            return
        if not self._not_forged([a.meta], a.from_peer):
            return
        now = time.time()
        with self.transaction() as uow:
            owner = uow.tombstones.owner(a.meta.file_id)
            peer = uow.peers.get(a.from_peer)
            if owner is None:
                for meta, is_new in uow.files.advertise(a.from_peer, [a.meta], now, announced=True):
                    uow.emit(FileAdvertised(meta, a.from_peer, is_new))
                uow.commit()
        if owner is not None and peer is not None:
            self._relay_deletes(peer, [(a.meta.file_id, owner)])

    def _on_delete(self, d: Delete) -> None:
        if d.from_peer == self.peer_id:
            # This node never sends itself a DELETE: one in its name is a forgery.
            self._log_limited(
                "forged", logging.WARNING,
                "DELETE of %s in this node's own name refused: it did not send it",
                d.file_id[:12],
            )  # fmt: skip
            return
        with self.transaction() as uow:
            entry = uow.files.get(d.file_id)
            if entry is None:
                self._log_limited(
                    "delete-unknown", logging.INFO, "DELETE of unknown file %s from %r ignored",
                    d.file_id[:12], d.from_peer,
                )  # fmt: skip
                return
            if entry.meta.file_owner != d.from_peer:
                self._log_limited(
                    "delete-not-owner", logging.WARNING,
                    "DELETE of %s from %r ignored: the owner is %r",
                    d.file_id[:12], d.from_peer, entry.meta.file_owner,
                )  # fmt: skip
                return
            self._forget(uow, entry)
            uow.commit()
        self.store.blobs.delete(d.file_id)
        self.store.blobs.range_path(d.file_id).unlink(missing_ok=True)
        self.activity.deleted(entry.meta, by=d.from_peer)

    def _forget(self, uow: UnitOfWork, entry: CatalogEntry) -> None:
        uow.files.remove(entry.meta.file_id)
        uow.downloads.remove(entry.meta.file_id)
        uow.tombstones.add(entry.meta.file_id, entry.meta.file_owner, time.time())
        uow.emit(FileDeleted(entry.meta.file_id, entry.meta.file_owner))

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
            stored, why = await self._take_pushed(header, sink, source, progress)
        finally:
            if progress is not None:
                progress.finish(stored, None if stored else why)

    async def _take_pushed(
        self, header: FileData, sink: FileSink | None, source: str, progress: Progress | None
    ) -> tuple[bool, str]:
        meta = header.meta
        if meta is None or sink is None:
            if sink is not None:
                sink.abort()
            self._log_limited(
                "push-empty", logging.WARNING, "FILE_DATA without a file from %s dropped", source
            )
            return False, "no file in it"
        assert isinstance(sink, BlobWriter)
        if progress is not None:
            progress.update(sink.size)
        sender = source
        if isinstance(progress, TransferHandle) and progress.state.peer_id not in (None, source):
            sender = peer_label(progress.state.peer_id, source)
        with self.store.unit_of_work() as uow:
            tombstoned = uow.tombstones.owner(meta.file_id) is not None
            entry = uow.files.get(meta.file_id)
        reason = None
        if tombstoned:
            reason = "its owner deleted it"
        elif entry is not None and entry.has_copy:
            reason = "already held"
        elif meta.file_owner == self.peer_id:
            # Only push_blob makes files owned by this node, and this node never needs its own
            # file pushed to it: whatever the record says (a stranger's claim may have made
            # it), a push in this node's name is a forgery.
            self.forged_claims += 1
            reason = "it claims to be this node's own file"
        elif (
            self.plugins.first("treedrive_accept_file", node=self, meta=meta, peer_id=None) is False
        ):
            reason = "refused by policy"
        if reason is not None:
            sink.abort()
            self._log_limited(
                "push-refused", logging.INFO, "pushed file %s from %s not stored: %s",
                file_label(meta), sender, reason,
            )  # fmt: skip
            return False, reason
        if not await self._commit_blob(sink, meta.file_id, meta.file_timestamp, source):
            return False, "its bytes do not match its id"
        self._stored(meta, sink.size, "received")
        self.activity.received(meta, sink.size, sender)
        return True, ""

    async def _commit_blob(
        self, sink: BlobWriter, file_id: str, ts: Timestamp, source: str | None
    ) -> bool:
        """Verify the bytes against the id and publish the blob; on a mismatch, refuse them."""
        try:
            # fsync of a large file takes a while: off the event loop.
            await asyncio.to_thread(sink.commit, file_id, ts)
        except VerificationError as exc:
            self._log_limited(
                "bad-bytes", logging.WARNING, "file %s from %s refused: %s",
                file_id[:12], source, exc,
            )  # fmt: skip
            self.publish([FileRefused(file_id, source, str(exc))])
            return False
        return True

    def _stored(self, meta: FileMeta, size: int, how: str) -> None:
        """Record a blob just committed as held here, and announce it. If the record cannot be
        written (a full disk), the blob goes too: no blob is ever left without its row."""
        try:
            with self.transaction() as uow:
                uow.files.mark_local(meta, size, time.time())
                uow.emit(FileStored(meta, size, how))
                uow.commit()
        except Exception:
            self._drop_unrecorded_blob(meta.file_id)
            raise
        self._send_to_all(Announce(from_peer=self.peer_id, meta=meta))

    def _drop_unrecorded_blob(self, file_id: str) -> None:
        with contextlib.suppress(Exception):
            entry = self.file(file_id)
            if entry is not None and entry.has_copy:
                return  # recorded earlier (a ranged download records its own commit)
        self.store.blobs.delete(file_id)

    # -- commands ----------------------------------------------------------------------------
    async def push(self, path: Path, name: str | None = None, force: bool = False) -> FileMeta:
        """Add a file to the network (see :meth:`push_path`); its record."""
        return (await self.push_path(path, name, force=force)).meta

    async def push_path(
        self, path: Path, name: str | None = None, *, force: bool = False
    ) -> Pushed:
        """Add the file at ``path`` to the network: store it, FILE_DATA to one random peer,
        ANNOUNCE to all; or, unless ``force``, say that this node already holds its bytes."""
        writer = self.store.blobs.writer()
        try:
            await asyncio.to_thread(self._copy_in, path, writer)
        except OSError as exc:
            writer.abort()
            raise NodeError(f"cannot read {path}: {exc.strerror or exc}") from exc
        return await self.share(writer, name or path.name, force=force)

    async def push_blob(self, writer: FileSink, name: str, force: bool = False) -> FileMeta:
        """Push the bytes already written to ``writer`` (see :meth:`share`); their record."""
        return (await self.share(writer, name, force=force)).meta

    def held_copy(self, writer: FileSink) -> FileMeta | None:
        """The record of a file held here with exactly the bytes written to ``writer``: a file
        of the same size whose id those bytes give under its own timestamp."""
        assert isinstance(writer, BlobWriter)
        with self.store.unit_of_work() as uow:
            same_size = uow.files.held_of_size(writer.size)
        return next((m for m in same_size if writer.matches(m.file_id, m.file_timestamp)), None)

    async def share(self, writer: FileSink, name: str, *, force: bool = False) -> Pushed:
        """Push the bytes already written to ``writer`` (from :meth:`open_sink`) as ``name``.
        Bytes this node already holds are not pushed again (unless ``force``): the answer is
        the record it has, marked ``existing``."""
        assert isinstance(writer, BlobWriter)
        await asyncio.to_thread(writer.digest)  # the hasher catches up off the loop
        if not force:
            existing = self.held_copy(writer)
            if existing is not None:
                writer.abort()
                self.activity.already_shared(existing)
                return Pushed(existing, existing=True)
        ts = int(time.time())
        file_id = writer.content_id(ts)
        meta = FileMeta(
            file_id=file_id,
            file_name=name,
            file_size=writer.size / MEGABYTE,
            file_owner=self.peer_id,
            file_timestamp=ts,
        )
        held = self.file(file_id)
        if held is not None and held.has_copy:
            writer.abort()  # the same bytes forced again within the same second: the same id
            return Pushed(held.meta, existing=True)
        try:
            await asyncio.to_thread(writer.commit, file_id, ts)
        except OSError as exc:
            raise NodeError(f"cannot store {name}: {exc.strerror or exc}") from exc
        try:
            with self.transaction() as uow:
                uow.files.mark_local(meta, writer.size, time.time())
                uow.emit(FileStored(meta, writer.size, "push"))
                uow.commit()
        except Exception:
            self._drop_unrecorded_blob(file_id)
            raise
        peers = self.peers()
        target = random.choice(peers) if peers else None
        if target is not None:
            self._spawn(self._push_to(target, meta, writer.size), "push")
        self._send_to_all(Announce(from_peer=self.peer_id, meta=meta))
        self.activity.pushed(meta, writer.size, peer_label(target.peer_id) if target else None)
        return Pushed(meta)

    async def _push_to(self, peer: PeerInfo, meta: FileMeta, size: int) -> bool:
        """Send a FILE_DATA with our copy of ``meta`` to ``peer``: raw bytes to a TreeDrive
        peer that takes them, hex (the classic push) to anyone else."""
        transfer = self.begin_transfer(meta, "out", peer.peer_id, size)
        ok = await self.network.push_file(
            peer.host,
            peer.port,
            meta,
            self.store.blobs.path(meta.file_id),
            transfer.update,
            raw=RAW_PUSH in (peer.features or ()) and RAW_PUSH in self.features,
        )
        transfer.finish(ok, None if ok else "push failed")
        if not ok:
            log.warning(
                "sending %s to %s failed (the connection failed or was cut; --log-level DEBUG "
                "says how); it stays here for peers to fetch",
                file_label(meta), peer_label(peer.peer_id, f"{peer.host}:{peer.port}"),
            )  # fmt: skip
        return ok

    @staticmethod
    def _copy_in(path: Path, writer: BlobWriter) -> None:
        with path.open("rb") as f:
            while block := f.read(1024 * 1024):
                writer.write(block)

    async def get(self, file_id: str) -> CatalogEntry:
        """Fetch a file from a holder (the next on failure), verify it, store it, announce it.
        ``file_id`` may be a unique prefix (:meth:`resolve_id`)."""
        file_id = self.resolve_id(file_id)
        running = self._fetching.get(file_id)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[CatalogEntry] = asyncio.get_running_loop().create_future()
        self._fetching[file_id] = future
        try:
            result = await self._get(file_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters, if any, re-raise it
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._fetching[file_id]

    async def _get(self, file_id: str) -> CatalogEntry:
        with self.store.unit_of_work() as uow:
            entry = uow.files.get(file_id)
            tracked = {p.peer_id: p for p in uow.peers.all()}
        if entry is None:
            raise NotFound(f"no file {file_id!r} in the catalogue")
        if entry.has_copy:
            return entry
        holders = [tracked[h] for h in entry.holders if h in tracked]
        if holders:
            self.activity.fetching(entry.meta, entry.size_bytes, [h.peer_id for h in holders])
        trusted = [p for p in holders if not self.distrusted(p.peer_id)] or holders
        ordered = list(
            self.plugins.first("treedrive_order_holders", node=self, entry=entry, holders=trusted)
            or []
        )
        errors = []
        extension = [p for p in ordered if RAW_RANGE in (p.features or ())]
        if RAW_RANGE not in self.features:
            extension = []
        if extension:
            try:
                download = RangedDownload(self, entry, extension)
                await download.run()
            except FetchFailed as exc:
                errors.append(str(exc))
                extension = []  # they may still answer a classic GET_FILE
            else:
                self._stored(download.verified_meta, self.store.blobs.size(file_id), "get")
                stored = self.file(file_id)
                assert stored is not None
                return stored
        for peer in [p for p in ordered if p not in extension]:
            ok, why = await self._fetch_from(entry, peer)
            if ok:
                stored = self.file(file_id)
                assert stored is not None
                return stored
            errors.append(f"{peer.peer_id}: {why}")
        if not holders:
            raise FetchFailed(f"no tracked peer holds {file_label(entry.meta)}")
        raise FetchFailed(f"could not fetch {file_label(entry.meta)}: {'; '.join(errors)}")

    async def _fetch_from(self, entry: CatalogEntry, peer: PeerInfo) -> tuple[bool, str]:
        meta = entry.meta
        # Classic peers do not say the size before the bytes: estimate it from the record.
        total = size_hint(entry) or None
        transfer = self.begin_transfer(meta, "in", peer.peer_id, total)
        writer = self.store.blobs.writer()
        why = ""
        try:
            header = await self.network.fetch_file(
                peer.host,
                peer.port,
                meta.file_id,
                writer,
                transfer.update,
                max_bytes=classic_cap(entry),
            )
        except TransferError as exc:
            why = str(exc)
        except StorageError as exc:
            log.error("fetching %s stopped: %s", file_label(meta), exc)
            with contextlib.suppress(Exception):  # the disk may refuse this record too
                transfer.finish(False, str(exc))
            raise
        else:
            transfer.update(writer.size)
            if header.meta is None:
                why = "does not have it"
                with self.transaction() as uow:
                    uow.files.remove_holder(meta.file_id, peer.peer_id)
                    uow.commit()
            elif header.meta.file_id != meta.file_id:
                why = f"sent another file ({header.meta.file_id[:12]}…)"
            else:
                # Verify under the timestamp the holder sent, else under the one we recorded.
                ts = header.meta.file_timestamp
                await asyncio.to_thread(writer.digest)  # the hasher catches up off the loop
                if not writer.matches(meta.file_id, ts):
                    ts = meta.file_timestamp
                if await self._commit_blob(writer, meta.file_id, ts, peer.peer_id):
                    transfer.finish(True)
                    self._stored(replace(meta, file_timestamp=ts), writer.size, "get")
                    self.activity.fetched(
                        meta, writer.size, peer_label(peer.peer_id),
                        time.monotonic() - transfer.state.started_mono,
                    )  # fmt: skip
                    return True, ""
                why = "sent bytes that do not match the file id"
                self.distrust(peer.peer_id)  # verified under neither its timestamp nor ours
        finally:
            writer.abort()  # a no-op once committed
        log.warning(
            "fetching %s from %s failed: %s", file_label(meta), peer_label(peer.peer_id), why
        )
        transfer.finish(False, why)
        return False, why

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

    # -- uploads (InboundHandler) ---------------------------------------------------------------
    def track_upload(self, meta: FileMeta, peer: str, size: int) -> TransferHandle:
        return self.transfers.upload(meta, peer, size)

    def track_range(
        self, meta: FileMeta, peer: str, download: str | None, size: int
    ) -> RangeProgress:
        return self.transfers.range(meta, peer, download, size)

    async def delete(self, file_id: str) -> None:
        """Delete a file this node owns, here and (by DELETE to every tracked peer) everywhere.
        ``file_id`` may be a unique prefix (:meth:`resolve_id`)."""
        file_id = self.resolve_id(file_id)
        with self.transaction() as uow:
            entry = uow.files.get(file_id)
            if entry is None:
                raise NotFound(f"no file {file_id!r} in the catalogue")
            if entry.meta.file_owner != self.peer_id:
                raise NotOwner(
                    f"{file_label(entry.meta)} belongs to {entry.meta.file_owner!r}; "
                    "only its owner can delete it"
                )
            self._forget(uow, entry)
            uow.commit()
        self.store.blobs.delete(file_id)
        self.store.blobs.range_path(file_id).unlink(missing_ok=True)
        self._send_to_all(Delete(from_peer=self.peer_id, file_id=file_id))
        self.activity.deleted(entry.meta)

    async def _join(self) -> None:
        """After the first replies settle, finish interrupted downloads, then fetch what the
        download selector picks."""
        try:
            await asyncio.sleep(self.config.join_delay)
            await self.resume_downloads()
            await self.fetch_selected()
        finally:
            self.joined.set()

    async def resume_downloads(self) -> list[str]:
        """Continue the ranged downloads a stop or crash interrupted."""
        with self.store.unit_of_work() as uow:
            pending = [d.file_id for d in uow.downloads.all()]
        done = []
        for file_id in pending:
            try:
                await self.get(file_id)
                done.append(file_id)
            except NodeError as exc:
                log.warning("resuming the download of %s failed: %s", file_id[:12], exc)
        return done

    def distrust(self, peer_id: str) -> None:
        """Avoid ``peer_id`` as a holder for a while: it sent bytes that did not verify."""
        self._distrusted[peer_id] = time.monotonic() + DISTRUST_FOR

    def distrusted(self, peer_id: str) -> bool:
        return self._distrusted.get(peer_id, 0.0) > time.monotonic()

    def set_rate_limits(self, download: float | None, upload: float | None) -> None:
        """Bytes per second for all downloads and all uploads (None: no limit)."""
        self.rate_limits = (download, upload)
        self.network.set_rate_limits(download, upload)

    async def fetch_selected(self) -> list[str]:
        with self.store.unit_of_work() as uow:
            tracked = {p.peer_id for p in uow.peers.all()}
            remote = uow.files.entries("remote")
        candidates = [e for e in remote if any(h in tracked for h in e.holders)]
        if not candidates:
            return []
        chosen = self.plugins.first(
            "treedrive_select_downloads",
            node=self,
            candidates=candidates,
            limit=self.config.download_limit,
        )
        got = []
        for file_id in list(chosen or [])[: self.config.download_limit]:
            try:
                await self.get(file_id)
                got.append(file_id)
            except NodeError as exc:
                log.warning("join download of %s failed: %s", file_id[:12], exc)
        return got


@contextmanager
def _logged(what: str) -> Iterator[None]:
    """One round of a periodic task: a failure (a full disk, say) is logged and the next round
    comes as usual."""
    try:
        yield
    except Exception:
        log.exception("%s failed; trying again at the next round", what)


def storage_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the disk or the database refusing a write (a full disk, say)."""
    if isinstance(exc, StorageError):  # the store says so of SQLite's "disk is full" too
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO)
