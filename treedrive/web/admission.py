"""Admission of HTTP connections: a cap on open connections and a deadline for a request head.

aiohttp alone accepts every connection and keeps one that never sends a request for an hour, so
a stranger on the machine holds file descriptors until the node can accept nothing, on either
side. Here every connection goes through a small protocol wrapper that:

- closes a connection that has not sent a complete request head within ``head_timeout`` of
  opening, or of becoming idle again after a request (a keep-alive connection): a head trickled
  a byte at a time does not reset the deadline;
- keeps at most ``max_connections`` open. At the cap, a new connection is admitted and the
  connection that has been idle the longest (no request in progress: never sent a complete head,
  or an idle keep-alive) is closed for it. Long-lived streams (server-sent events, which need no
  token) hold at most half the cap: beyond that, with none idle, the oldest stream is closed for
  the new connection (its client reconnects). The new one is refused only when every open
  connection is in the middle of a request (a download, an upload, a stream within its share).
  Attackers and honest clients share addresses (127.0.0.1, a NAT), so nothing rests on the
  address: the connection that made the least progress gives way.

Closes and refusals are counted and logged at most once a second. So is aiohttp's own log of a
bad request (:class:`BadRequestLog`): one short line, never a traceback nor the request's bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable

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
        self.streams_closed = 0
        self._pending = {"evicted": 0, "refused": 0, "timed_out": 0, "streams_closed": 0}
        self._logged_at = -float("inf")

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self, self.factory())

    # -- bookkeeping ---------------------------------------------------------------------------
    def admit(self, conn: _Guarded) -> bool:
        if len(self.open) >= self.max_connections:
            victim = self._longest_idle()
            if victim is not None:
                self._count("evicted")
            else:
                victim = self._oldest_stream_beyond_share()
                if victim is None:
                    self._count("refused")
                    return False
                self._count("streams_closed")
            victim.close()
        self.open.add(conn)
        return True

    def _oldest_stream_beyond_share(self) -> _Guarded | None:
        """The oldest long-lived stream, if streams hold more than half the cap."""
        streams = [c for c in self.open if c.stream_since is not None]
        if len(streams) <= self.max_connections // 2:
            return None
        return min(streams, key=lambda c: c.stream_since or 0.0)

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
            "%d event streams closed for newer ones (over half the cap), %d refused (all busy), "
            "%d closed without a request head in time",
            self.max_connections,
            self.head_timeout,
            p["evicted"],
            p["streams_closed"],
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
        self.stream_since: float | None = None
        """When it began to answer with a long-lived stream (None: it has not)."""
        self.answered_at = float("-inf")
        """When it last began an answer: a keep-alive connection is idle from then at most."""
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
        # Requests answered between two checks (back to back on a keep-alive connection) are
        # not idle time, though none of them was seen in progress.
        self.idle_since = max(self.idle_since, self.answered_at)
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
        self.stream_since = None
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


STREAM_TYPES = frozenset({"text/event-stream"})
"""Content types of the long-lived responses that hold at most half the cap."""


async def _mark_stream(request: web.Request, response: web.StreamResponse) -> None:
    """An answer begins on a connection: note when (and whether it is a long-lived stream)."""
    if request.transport is None:
        return
    conn = request.transport.get_protocol()
    if isinstance(conn, _Guarded):
        conn.answered_at = time.monotonic()
        if response.content_type in STREAM_TYPES:
            conn.stream_since = conn.answered_at


def mark_streams(app: web.Application) -> None:
    """Let the admission of ``app``'s connections know when they answer, and which answers are
    long-lived streams (call before the app is frozen, i.e. before its runner is set up)."""
    app.on_response_prepare.append(_mark_stream)


REFUSED_BODY_READ = 1024 * 1024
"""Bytes at most of a request body read on after it was refused (401, 403) unread: enough that
an honest client that sends its whole body before it reads the answer (the CLI with a wrong
token) still gets the answer, not a reset."""
REFUSED_BODY_TIME = 1.0
"""Seconds at most spent reading on such a body."""


@web.middleware
async def close_after_refusal(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """A request refused (401, 403) with its body not read: read on a little of it (at most
    :data:`REFUSED_BODY_READ` bytes, :data:`REFUSED_BODY_TIME` seconds), answer, and close the
    connection. aiohttp would otherwise read on a body it did not read for up to 10 s at line
    speed ("lingering"), for a stranger as for anyone. Install it outermost."""
    response = await handler(request)
    if response.status not in (401, 403) or not request.body_exists or request.content.at_eof():
        return response
    with contextlib.suppress(Exception):
        async with asyncio.timeout(REFUSED_BODY_TIME):
            read = 0
            while read < REFUSED_BODY_READ and not request.content.at_eof():
                read += len(await request.content.readany())
    if not request.content.at_eof():
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        request.protocol.force_close()  # the answer is out: no lingering on the rest
    return response


LOG_LINE = 200
"""Characters at most of a line that :class:`BadRequestLog` lets through."""


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class BadRequestLog(logging.Filter):
    """For aiohttp's server logger: what it logs (a malformed request, a client that left...)
    becomes one line of at most :data:`LOG_LINE` characters, control characters escaped, with
    no traceback, and at most one line ``every`` seconds; the lines left out are counted in the
    next one. aiohttp's message and its exception's text carry the request's bytes (a junk
    request line of 300 KB gave a traceback and some 130 KB of them): a stranger must not be
    able to write into the node's log at will. Our own handlers' errors are logged by the API's
    middleware, not here."""

    def __init__(self, every: float = LOG_EVERY) -> None:
        super().__init__()
        self.every = every
        self.left_out = 0
        self._last = -float("inf")
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.every:
                self.left_out += 1
                return False
            self._last, left_out, self.left_out = now, self.left_out, 0
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text += f": {type(exc).__name__}: {str(exc)[: 2 * LOG_LINE]}"
        more = f" (and {left_out} more left out)" if left_out else ""
        text = _printable(text[: 2 * LOG_LINE])
        if len(text) + len(more) > LOG_LINE:
            text = text[: LOG_LINE - len(more) - 1] + "…"
        record.msg, record.args = text + more, None
        record.exc_info = record.exc_text = record.stack_info = None
        return True


def quiet_server_log(logger: logging.Logger | None = None) -> BadRequestLog:
    """Install :class:`BadRequestLog` on aiohttp's server logger (once: later calls return the
    one installed)."""
    logger = logger or logging.getLogger("aiohttp.server")
    for existing in logger.filters:
        if isinstance(existing, BadRequestLog):
            return existing
    installed = BadRequestLog()
    logger.addFilter(installed)
    return installed


class AdmittingSite(web.BaseSite):
    """A TCP site of ``runner`` whose connections go through an :class:`Admission`."""

    __slots__ = ("_admission", "_host", "_listening", "_make", "_port")

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
        self._listening: asyncio.Server | None = None

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
        self._listening = await asyncio.get_running_loop().create_server(
            self._admission, self._host, self._port, reuse_address=True
        )
        self._server = self._listening

    async def stop(self) -> None:
        """Stop accepting first, and let the connections accepted already get their transport
        (one loop iteration: asyncio makes it in a task of its own); then close. asyncio's
        ``Server.close()`` between an accept and that task fails the task (an assertion in
        ``Server._attach``, CPython gh-109564) and the accepted socket is left to the garbage
        collector: a ResourceWarning, seen on Python 3.13 after a connection made just before
        the node stopped. The connections then go as aiohttp's shutdown closes them."""
        if self._listening is not None:
            loop = asyncio.get_running_loop()
            for sock in self._listening.sockets:
                loop.remove_reader(sock.fileno())
            await asyncio.sleep(0)
            self._listening = None
        await super().stop()
