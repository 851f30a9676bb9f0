"""asyncio TCP around the sans-IO codec: the Network port, the listener and admission.

One message per connection. :class:`TcpNetwork` composes the parts:

- :mod:`~treedrive.transport.limits`: :class:`NetLimits`, every limit in one place;
- :mod:`~treedrive.transport.serving`: serving one incoming connection (read its message,
  answer a GET_FILE, take a push);
- :mod:`~treedrive.transport.streams`: reads under deadlines and a minimum rate, streamed
  FILE_DATA, writes that wait for the reader;
- :mod:`~treedrive.transport.uploader`: answers to GET_FILE and pushed files (raw bytes with
  ``sendfile`` in worker threads);
- :mod:`~treedrive.transport.dialer`: the outbound side (send, the outbox, dial backoff, push,
  fetch a whole file);
- :mod:`~treedrive.transport.ranges`: the ranged client (a raw range in a worker thread);
- :mod:`~treedrive.transport.progress`: what the node is told of uploads and of pushes arriving
  (a push is tracked from its first bytes);
- :mod:`~treedrive.transport.counters` and :mod:`~treedrive.transport.process`: what is counted
  and logged, the open files limit, failed accepts.

Admission (see :mod:`treedrive.transport.admission`): at ``max_connections``, the open connection
that has made the least progress gives way to a new one (the new one is refused only when every
open one is protected: a whole message being handled, an upload, a fast body). Uploads are
protected up to half the cap: beyond it, the upload whose reader has taken the fewest bytes per
second gives way, so that readers that never read cannot keep control messages out. Uploads
whose reader stalls for ``upload_stall_timeout`` are closed, and hold no thread while they wait.
Outbound messages go through a bounded outbox (:meth:`TcpNetwork.post`), and an address that
refuses is dialed at most a few times a minute. Refusals, evictions, drops and failed
connections are counted; the log gets a few detail lines and one summary line a second at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from treedrive.core.messages import TLS, FileData, Message
from treedrive.core.model import FileMeta
from treedrive.core.ports import FileSink, GrowingFile, InboundHandler, RangeAnswer, RangeFile
from treedrive.transport.admission import ConnState, Tally, choose_victim
from treedrive.transport.counters import Counters
from treedrive.transport.dialer import Dialer
from treedrive.transport.limits import NetLimits
from treedrive.transport.process import filter_accept_errors, raise_open_files_limit
from treedrive.transport.ranges import RangeClient
from treedrive.transport.ratelimit import RateLimiter
from treedrive.transport.secure import NodeTLS
from treedrive.transport.serving import Serving
from treedrive.transport.streams import READ_SIZE
from treedrive.transport.uploader import Uploader

__all__ = ["NetLimits", "TcpNetwork", "raise_open_files_limit"]

_TCP_INFO = getattr(socket, "TCP_INFO", None)
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_AT = 120
"""Offset of ``tcpi_bytes_acked`` in Linux's ``struct tcp_info`` (since Linux 4.1)."""


def bytes_acked(writer: asyncio.StreamWriter) -> int | None:
    """Bytes the peer has acknowledged on this connection (what its reader took, near enough),
    from the kernel; None where that is not known (not Linux, an old kernel)."""
    if _TCP_INFO is None:
        return None
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256)
    except OSError:
        return None
    if len(info) < _BYTES_ACKED_AT + _BYTES_ACKED.size:
        return None
    return int(_BYTES_ACKED.unpack_from(info, _BYTES_ACKED_AT)[0])


class TcpNetwork:
    """The :class:`treedrive.core.ports.Network` over asyncio TCP.

    Counters for benchmarks and the node: :meth:`stats` (and ``events.totals``, per kind)."""

    def __init__(
        self,
        host: str,
        port: int,
        limits: NetLimits | None = None,
        chosen: frozenset[tuple[str, int]] = frozenset(),
    ) -> None:
        """``chosen``: addresses the owner configured (the bootstrap hosts), dialed without
        the back-off that strangers' addresses get (see ``Dialer.chosen``)."""
        self.host = host
        self.port = port
        limits = limits or NetLimits()
        self._server: asyncio.Server | None = None
        self._handler: InboundHandler | None = None
        self._conns: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        """Every connection task not yet ended (close() ends them all)."""
        self._live: dict[asyncio.Task[None], ConnState] = {}
        """The connections that count against the cap (not those evicted and ending)."""
        self._closing = False
        self.download = RateLimiter()
        self.upload = RateLimiter()
        self.counters = Counters()
        self.uploader = Uploader(limits, self.upload)
        self.dialer = Dialer(limits, self.counters, self.uploader, self.download, chosen)
        self.ranges = RangeClient(limits, self.download, self.dialer.dials)
        self.serving = Serving(limits, self.counters, self.uploader, self.download)
        self.limits = limits
        self._housekeeping: asyncio.Task[None] | None = None
        self.open_files_limit: int | None = None

    @property
    def limits(self) -> NetLimits:
        return self._limits

    @limits.setter
    def limits(self, limits: NetLimits) -> None:
        """Replace the limits, in every part (the number of dial slots and the outbox size stay
        as they were built)."""
        self._limits = limits
        self.uploader.limits = self.dialer.limits = self.ranges.limits = limits
        self.serving.limits = limits

    @property
    def events(self) -> Tally:
        """Admission and outbound events (refused, evicted, dropped...): one summary a second."""
        return self.counters.events

    @property
    def problems(self) -> Tally:
        """Failed inbound connections: a few detail lines a second, then a summary."""
        return self.counters.problems

    @property
    def bytes_sent(self) -> int:
        """Bytes of messages sent by send() and post() (not file uploads)."""
        return self.dialer.bytes_sent

    @property
    def bytes_uploaded(self) -> int:
        """Bytes of files sent (answers to GET_FILE, ranges and pushes)."""
        return self.uploader.bytes_uploaded

    def stats(self) -> dict[str, int]:
        """Counts since the start: posted, sent, dropped (outbox full), backoff (posts dropped to
        an address that refuses), dial_failed, refused and evicted connections, accept_errors,
        timeouts..., plus bytes_sent, bytes_uploaded and the connections open now."""
        return {
            **self.events.totals,
            **self.problems.totals,
            "bytes_sent": self.bytes_sent,
            "bytes_uploaded": self.bytes_uploaded,
            "connections": len(self._live),
            "outbox": len(self.dialer.outbox),
        }

    def reachable(self, host: str, port: int) -> None:
        self.dialer.heard((host, port))

    def set_rate_limits(self, download: float | None, upload: float | None) -> None:
        self.download.set_rate(download)
        self.upload.set_rate(upload)

    # -- listening ---------------------------------------------------------------------------
    async def start(self, handler: InboundHandler) -> tuple[str, int]:
        self._handler = self.serving.handler = handler
        if TLS in handler.features:  # encrypted extension connections (PROTOCOL.md 2.9)
            tls = NodeTLS.from_private_key(handler.key.private_key)
            self.serving.tls = self.ranges.tls = self.dialer.tls = tls
        self.open_files_limit = raise_open_files_limit()
        filter_accept_errors(asyncio.get_running_loop())
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, limit=READ_SIZE, reuse_address=True
        )
        self._housekeeping = asyncio.ensure_future(self._housekeep())
        sockname = self._server.sockets[0].getsockname()
        return self.host, int(sockname[1])

    async def _housekeep(self) -> None:
        """Log the counts not yet logged, once a second (events stop; their sums still show)."""
        while True:
            await asyncio.sleep(1.0)
            self.counters.flush()

    async def close(self) -> None:
        self._closing = True
        self.dialer.close()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        if self._server is not None:
            # Stop accepting first, and let accepts already under way reach _accept (which now
            # closes them): a connection set up after Server.close() would leak its socket.
            loop = asyncio.get_running_loop()
            for sock in self._server.sockets:
                loop.remove_reader(sock.fileno())
            await asyncio.sleep(0)
            self._server.close()
        for task, writer in list(self._conns.items()):
            task.cancel()
            # abort, not close: close() waits for unsent bytes to drain to a peer that may
            # never read them, and the socket would outlive the node.
            writer.transport.abort()
        if self._conns:
            await asyncio.wait(list(self._conns), timeout=5)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        self.ranges.close()
        self.uploader.close()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, not a coroutine: the connection is recorded at once, so close()
        # always finds (and closes) it, even before its task first runs.
        if self._closing:
            writer.transport.abort()
            return
        now = time.monotonic()
        if len(self._live) >= self.limits.max_connections:
            self._count_sent()
            victim = choose_victim(
                self._live.items(),
                now,
                self.limits.admission_grace,
                self.limits.min_push_rate,
                max_uploads=self.limits.max_connections // 2,
                upload_grace=self.limits.upload_grace,
            )
            if victim is None:
                writer.transport.abort()  # no FIN handshake to wait for, no socket kept
                self.counters.event("connections refused at the cap")
                return
            self._evict(victim)
            self.counters.event("slow connections closed for new ones")
        state = ConnState(now)
        task = asyncio.ensure_future(self.serving.serve(reader, writer, state))
        self._conns[task] = writer
        self._live[task] = state
        task.add_done_callback(self._ended)

    def _count_sent(self) -> None:
        """Bring the bytes sent by each upload up to date (from the kernel, where it tells)."""
        for task, state in self._live.items():
            if state.upload_started is None:
                continue
            writer = self._conns.get(task)
            acked = None if writer is None else bytes_acked(writer)
            if acked is not None:
                state.sent = max(state.sent, acked)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._conns.pop(task, None)
        self._live.pop(task, None)

    def _evict(self, task: asyncio.Task[None]) -> None:
        """Close a connection at once to make room (its task ends, dropping what it read)."""
        self._live.pop(task, None)
        writer = self._conns.get(task)
        if writer is not None:
            writer.transport.abort()
        task.cancel()

    # -- dialing (see Dialer and RangeClient) ------------------------------------------------
    async def send(self, host: str, port: int, message: Message) -> bool:
        """Deliver one message now (waiting for a dial slot); False if it was not delivered,
        also when ``host:port`` refused lately and is backing off."""
        return await self.dialer.send(host, port, message)

    def post(self, host: str, port: int, message: Message) -> None:
        """Queue one message for delivery, without waiting (see ``Network.post``)."""
        self.dialer.post(host, port, message)

    async def push_file(
        self,
        host: str,
        port: int,
        meta: FileMeta,
        path: Path,
        progress: Callable[[int], None] | None = None,
        raw: bool = False,
        peer_key: bytes | None = None,
    ) -> bool:
        sender = self._handler.peer_id if self._handler is not None else None
        return await self.dialer.push_file(host, port, meta, path, progress, raw, sender, peer_key)

    async def push_stream(
        self,
        host: str,
        port: int,
        source: GrowingFile,
        size: int,
        record: Awaitable[FileMeta | None],
        progress: Callable[[int], None] | None = None,
        peer_key: bytes | None = None,
    ) -> bool:
        sender = self._handler.peer_id if self._handler is not None else None
        return await self.dialer.push_stream(
            host, port, source, size, record, progress, sender, peer_key
        )

    async def fetch_file(
        self,
        host: str,
        port: int,
        file_id: str,
        sink: FileSink,
        progress: Callable[[int], None] | None = None,
        max_bytes: int | None = None,
    ) -> FileData:
        return await self.dialer.fetch_file(host, port, file_id, sink, progress, max_bytes)

    async def fetch_range(
        self,
        host: str,
        port: int,
        file_id: str,
        offset: int,
        length: int | None,
        partial: RangeFile,
        progress: Callable[[int], None] | None = None,
        written: Callable[[int], None] | None = None,
        download: str | None = None,
        peer_key: bytes | None = None,
    ) -> RangeAnswer:
        """Ranged GET_FILE, done in a worker thread (see :meth:`RangeClient.fetch_range`)."""
        asker = self._handler.peer_id if self._handler is not None else None
        return await self.ranges.fetch_range(
            host, port, file_id, offset, length, partial, progress, written, download, asker,
            peer_key,
        )  # fmt: skip
