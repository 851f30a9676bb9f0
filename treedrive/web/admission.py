"""Admission of HTTP connections: a cap on open connections and a deadline for a request head.

aiohttp alone accepts every connection and keeps one that never sends a request for an hour, so
a stranger on the machine holds file descriptors until the node can accept nothing, on either
side. Here every connection goes through a small protocol wrapper that:

- closes a connection that has not sent a complete request head within ``head_timeout`` of
  opening, or of becoming idle again after a request (a keep-alive connection): a head trickled
  a byte at a time does not reset the deadline;
- keeps at most ``max_connections`` open. At the cap, a new connection is admitted and the
  connection that has been idle the longest (no request in progress: never sent a complete head,
  or an idle keep-alive) is closed for it; the new one is refused only when every open
  connection is in the middle of a request (an event stream, a download, an upload). Attackers
  and honest clients share addresses (127.0.0.1, a NAT), so nothing rests on the address: the
  connection that made the least progress gives way.

Closes and refusals are counted and logged at most once a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 256
"""Open HTTP connections at most (idle keep-alive connections count)."""
HEAD_TIMEOUT = 10.0
"""Seconds a connection may take to send a complete request head."""
LOG_EVERY = 1.0


def fd_budget() -> int:
    """HTTP connections at most under this process's open files limit: a quarter of it (the
    P2P side, the database and the files being moved need the rest), and never below 8."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(8, soft // 4)


def _busy(handler: asyncio.BaseProtocol) -> bool:
    """Whether aiohttp's handler is answering a request (head received, response not finished).
    Its flags are private; read defensively (an unknown version looks idle, never busy)."""
    return bool(getattr(handler, "_request_in_progress", False)) or bool(
        getattr(handler, "_messages", None)
    )


class Admission:
    """Wraps the server's protocol factory; one per listening site."""

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        max_connections: int = MAX_CONNECTIONS,
        head_timeout: float = HEAD_TIMEOUT,
    ) -> None:
        if max_connections < 1 or head_timeout <= 0:
            raise ValueError("max_connections must be ≥ 1 and head_timeout > 0")
        self.factory = factory
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.open: set[_Guarded] = set()
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0
        self._pending = {"evicted": 0, "refused": 0, "timed_out": 0}
        self._logged_at = -float("inf")

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self, self.factory())

    # -- bookkeeping ---------------------------------------------------------------------------
    def admit(self, conn: _Guarded) -> bool:
        if len(self.open) >= self.max_connections:
            victim = self._longest_idle()
            if victim is None:
                self._count("refused")
                return False
            self._count("evicted")
            victim.close()
        self.open.add(conn)
        return True

    def _longest_idle(self) -> _Guarded | None:
        oldest: _Guarded | None = None
        for conn in self.open:
            if conn.busy():
                continue
            if oldest is None or conn.idle_since < oldest.idle_since:
                oldest = conn
        return oldest

    def forget(self, conn: _Guarded) -> None:
        self.open.discard(conn)

    def _count(self, what: str) -> None:
        setattr(self, what, getattr(self, what) + 1)
        self._pending[what] += 1
        now = time.monotonic()
        if now - self._logged_at < LOG_EVERY:
            return
        self._logged_at = now
        p = self._pending
        log.warning(
            "HTTP connections (cap %d, head deadline %.3g s): %d idle closed for newer ones, "
            "%d refused (all busy), %d closed without a request head in time",
            self.max_connections,
            self.head_timeout,
            p["evicted"],
            p["refused"],
            p["timed_out"],
        )
        self._pending = dict.fromkeys(p, 0)


class _Guarded(asyncio.Protocol):
    """One connection: forwards everything to aiohttp's handler, and enforces the deadline."""

    def __init__(self, admission: Admission, inner: asyncio.Protocol) -> None:
        self.admission = admission
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.admitted = False
        self.idle_since = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None

    def busy(self) -> bool:
        return _busy(self.inner)

    def close(self) -> None:
        """Drop the connection now (nothing of a request is pending on it)."""
        self.admission.forget(self)
        if self.transport is not None:
            self.transport.abort()

    # -- the deadline --------------------------------------------------------------------------
    def _arm(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(delay, self._check)

    def _check(self) -> None:
        self._timer = None
        if self.transport is None or self.transport.is_closing():
            return
        now = time.monotonic()
        timeout = self.admission.head_timeout
        if self.busy():
            # In a request: look again soon; its idle time starts when it is seen idle.
            self.idle_since = float("inf")
            self._arm(min(timeout, 1.0))
            return
        if self.idle_since == float("inf"):
            self.idle_since = now
        if now - self.idle_since >= timeout:
            self.admission._count("timed_out")
            self.close()
            return
        self._arm(self.idle_since + timeout - now)

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.admission.admit(self):
            transport.abort()
            return
        self.admitted = True
        self.inner.connection_made(transport)
        self._arm(self.admission.head_timeout)

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.admission.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.admitted:
            self.inner.connection_lost(exc)
        self.transport = None

    def pause_writing(self) -> None:
        if self.admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.inner.resume_writing()


class AdmittingSite(web.BaseSite):
    """A TCP site of ``runner`` whose connections go through an :class:`Admission`."""

    __slots__ = ("_admission", "_host", "_make", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        max_connections: int = MAX_CONNECTIONS,
        head_timeout: float = HEAD_TIMEOUT,
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._make = (max_connections, head_timeout)
        self._admission: Admission | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def admission(self) -> Admission:
        assert self._admission is not None, "the site is not started"
        return self._admission

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._admission = Admission(server, *self._make)
        self._server = await asyncio.get_running_loop().create_server(
            self._admission, self._host, self._port, reuse_address=True
        )
