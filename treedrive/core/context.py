"""What the parts of a node share: its identity (peer id and key) and address, the store and
the unit of work whose events reach plugins after the commit, the network's outbox, the plugins,
background tasks, rate-limited log lines and the owner's activity log.

The node (:mod:`treedrive.core.node`) builds one :class:`NodeContext` and hands it to each part
(membership, catalogue, sharing, fetching); the parts never reach for the node itself. Hooks
receive the node object (``hook_node``), as their specs say.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from treedrive.core import ids
from treedrive.core.activity import Activity
from treedrive.core.bounded import Throttle
from treedrive.core.config import NodeConfig
from treedrive.core.errors import StorageError
from treedrive.core.events import Event, FileDeleted, FileStored, Notice, TransferFinished
from treedrive.core.identity import NodeKey
from treedrive.core.messages import RAW_PUSH, RAW_RANGE, STREAM_PUSH, SWIM, TLS, Message
from treedrive.core.metrics import Counters
from treedrive.core.model import CatalogEntry, PeerInfo
from treedrive.core.plugins import Plugins
from treedrive.core.ports import Network, Store, UnitOfWork
from treedrive.core.replies import Address, distinct_addresses

log = logging.getLogger(__name__)
node_log = logging.getLogger("treedrive.core.node")
"""The node's logger: lines about what peers did, whichever part of the node writes them."""

EXTENSION_FEATURES = frozenset({RAW_RANGE, RAW_PUSH, STREAM_PUSH, SWIM, TLS})


def features_for(config: NodeConfig) -> frozenset[str]:
    """The extension features a node with ``config`` speaks: none without the extension, all
    but ``tls`` without encryption, ``swim`` unless turned off."""
    if not config.extension:
        return frozenset()
    off = ({TLS} if not config.encryption else set()) | ({SWIM} if not config.swim else set())
    return EXTENSION_FEATURES - off


class NodeContext:
    """The services and the little state the parts of one node share."""

    def __init__(
        self, config: NodeConfig, store: Store, plugins: Plugins, network: Network
    ) -> None:
        self.config = config
        self.store = store
        self.plugins = plugins
        self.network = network
        self.peer_id = config.peer_id or ""
        self.key: NodeKey = store.node_key()
        """The node's key pair (its identity between TreeDrive nodes), kept in its data dir."""
        self.host = config.host
        self.port = config.port
        self.features = features_for(config)
        """The extension features the node speaks (empty: classic only)."""
        self.hook_node: Any = None
        """The node object, as hooks receive it (set by the node)."""
        self.activity = Activity()
        self.stopping = asyncio.Event()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.local_version = 0
        """Bumped whenever the files this node holds change (cached replies are rebuilt)."""
        self.forged_claims = 0
        """Remote claims (records, pushes) that this node owns a file it never pushed."""
        self.counters = Counters()
        """What the node counts as things happen (its ``/metrics``)."""
        self._throttles: dict[str, Throttle] = {}

    # -- store and events ---------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[UnitOfWork]:
        """A unit of work whose events reach plugins once (and only if) it committed."""
        with self.store.unit_of_work() as uow:
            yield uow
        self.publish(uow.published)

    def publish(self, events: Sequence[Event]) -> None:
        for event in events:
            if isinstance(event, FileStored | FileDeleted):
                self.local_version += 1
            if not isinstance(event, TransferFinished):
                self.counters.changes += 1
            self.plugins.on_event(self.hook_node, event)

    def notify(self, notice: Notice) -> None:
        """Tell plugins of something transient (no commit behind it), at once."""
        self.plugins.on_notice(self.hook_node, notice)

    def peers(self) -> list[PeerInfo]:
        with self.store.reading() as uow:
            return uow.peers.all()

    def secure_key(self, peer: PeerInfo) -> bytes | None:
        """The key an extension connection to ``peer`` must be bound to (PROTOCOL.md 2.9): its
        pinned key when both nodes advertise ``tls`` and its key is pinned; None: in clear."""
        if TLS not in self.features or TLS not in (peer.features or ()):
            return None
        return self.pinned_key(peer.peer_id)

    def pinned_key(self, peer_id: str) -> bytes | None:
        """The key pinned to ``peer_id`` (None: none is)."""
        with self.store.reading() as uow:
            pinned = uow.keys.get(peer_id)
        return None if pinned is None else pinned.public_key

    def file(self, file_id: str) -> CatalogEntry | None:
        with self.store.reading() as uow:
            return uow.files.get(file_id)

    def resolve_id(self, text: str) -> str:
        """The full id of the one file that ``text`` names: its 64 hex characters, or a unique
        prefix of at least 8. NotFound or AmbiguousId (each saying what to type) otherwise."""

        def candidates(prefix: str, limit: int) -> list[str]:
            with self.store.reading() as uow:
                return uow.files.ids_with_prefix(prefix, limit)

        return ids.resolve(text, candidates)

    # -- sending ------------------------------------------------------------------------------
    def send(self, host: str, port: int, message: Message) -> None:
        """Hand ``message`` to the transport's bounded outbox (it never waits, and drops the
        oldest work when full): peer input never makes the node spawn unbounded tasks."""
        self.counters.message_sent(message)
        self.network.post(host, port, message)

    def own_address(self) -> frozenset[Address]:
        return frozenset({(self.host, self.port)})

    def addresses(self, exclude: Sequence[str] = ()) -> list[Address]:
        """The tracked peers' addresses, each once and never our own: a hundred peer ids that
        name one address (forged or stale) cost one message, not a hundred."""
        return distinct_addresses(
            [(p.host, p.port) for p in self.peers() if p.peer_id not in exclude],
            exclude=self.own_address(),
        )

    def send_to_all(self, message: Message, exclude: Sequence[str] = ()) -> int:
        addresses = self.addresses(exclude)
        for host, port in addresses:
            self.send(host, port, message)
        return len(addresses)

    # -- tasks and logs -----------------------------------------------------------------------
    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task %s failed", task.get_name(), exc_info=exc)

    def log_limited(self, key: str, level: int, text: str, *args: Any) -> None:
        """One log line per ``key`` per second at most; the next says how many were left out."""
        throttle = self._throttles.setdefault(key, Throttle(1.0))
        if throttle.ready(time.monotonic()):
            more = throttle.take_suppressed()
            suffix = f" (and {more} more like it)" if more else ""
            node_log.log(level, text + suffix, *args)


@contextmanager
def logged(what: str) -> Iterator[None]:
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
