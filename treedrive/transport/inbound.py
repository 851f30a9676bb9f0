"""The raw bytes of a raw push, received off the event loop.

Once the header of a raw push is parsed, the connection's socket is taken away from asyncio (its
reading paused) and a worker thread moves the body from the socket into the sink in the kernel (the
store's partial file: ``append_from``, spliced, hashed by its own thread, synced in the
background), as a ranged get does. The bytes asyncio had already read come first. The event loop
only hears of the progress every few MiB; the body keeps the same limits as on the loop
(``idle_timeout`` between reads, ``min_push_rate`` on average after the grace, this node's download
rate limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from treedrive.core.ports import FileSink
from treedrive.transport import streams
from treedrive.transport.limits import NetLimits
from treedrive.transport.ratelimit import RateLimiter
from treedrive.transport.securestream import SecureStream
from treedrive.transport.streams import Reader, Workers, rate_due, store, timeval

PROGRESS_STEP = 2 * 1024 * 1024
PROGRESS_EVERY = 0.25
RECV_PIECE = 1024 * 1024
"""Bytes decrypted at a time from a TLS body, at most (written to the sink, as splice cannot):
a record (transport/bulk.py) is written whole, as it was opened."""

_workers = Workers(8, "push-in")


def buffered(reader: asyncio.StreamReader) -> bytes:
    """Take the bytes asyncio has read from the socket but nobody has read from the reader
    (its buffer is not public: without it, the body is received on the loop)."""
    buf = getattr(reader, "_buffer", None)
    if not isinstance(buf, bytearray):
        raise LookupError("no access to the stream's buffer")
    data = bytes(buf)
    del buf[:]
    return data


def detachable(stream: Reader, writer: asyncio.StreamWriter) -> socket.socket | None:
    """The plain TCP socket under ``writer`` if the body can be received off the loop."""
    if writer.get_extra_info("sslcontext") is not None:
        return None
    sock = writer.get_extra_info("socket")
    if sock is None or not isinstance(getattr(stream.reader, "_buffer", None), bytearray):
        return None
    return socket.socket(fileno=os.dup(sock.fileno()))


class Body:
    """The state of one body being received in a worker thread."""

    def __init__(
        self,
        stream: Reader,
        sink: FileSink,
        length: int,
        min_rate: float | None,
        download: RateLimiter,
        report: Callable[[int], None],
    ) -> None:
        self.stream = stream
        self.sink = sink
        self.length = length
        self.min_rate = min_rate
        self.download = download
        self.report = report
        self.cancelled = threading.Event()

    def _count(self, n: int) -> None:
        state = self.stream.state
        state.received += n
        state.body_received += n

    def _deadline(self, now: float) -> tuple[float, str]:
        """How long the next read may wait, and what it means if nothing comes by then."""
        limits: NetLimits = self.stream.limits
        state = self.stream.state
        wait, why = limits.idle_timeout, f"nothing came for {limits.idle_timeout:.0f} s"
        if self.min_rate and state.body_started is not None:
            due = rate_due(
                state.body_started, state.body_received, self.min_rate, limits.push_rate_grace
            )
            if due - now < wait:
                wait, why = due - now, "the file's bytes came too slowly"
        if wait <= 0:
            raise TimeoutError(why)
        return wait, why

    def run(self, sock: socket.socket, first: bytes, secure: SecureStream | None = None) -> None:
        """Receive until ``length`` bytes are in the sink (blocking; a worker thread). With
        ``secure``, the TLS stream on ``sock``: decrypted into a buffer, then written."""
        if first:
            self.download.acquire_blocking(len(first))
            store(self.sink.write, first)
            self._count(len(first))
        sock.setblocking(True)
        fd = sock.fileno()
        reported, reported_at, timeout = 0, time.monotonic(), 0.0
        while self.sink.size < self.length:
            if self.cancelled.is_set():
                raise OSError("the connection was closed")
            wait, why = self._deadline(time.monotonic())
            if abs(wait - timeout) > 0.05:  # SO_RCVTIMEO: a wait with a deadline, no poll
                timeout = wait
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(max(wait, 0.01)))
            try:
                if secure is None:
                    n = self.sink.append_from(fd, self.length - self.sink.size)
                else:
                    n = self._decrypt(secure)
            except (BlockingIOError, TimeoutError):  # SO_RCVTIMEO: EAGAIN
                raise TimeoutError(why) from None
            if n == 0:
                raise OSError(f"closed after {self.sink.size} of {self.length} raw bytes")
            waited = time.monotonic()
            self.download.acquire_blocking(n)
            self.stream.paused(time.monotonic() - waited)
            self._count(n)
            done, now = self.sink.size, time.monotonic()
            if done - reported >= PROGRESS_STEP or now - reported_at >= PROGRESS_EVERY:
                reported, reported_at = done, now
                self.report(done)

    def _decrypt(self, secure: SecureStream) -> int:
        """One read of a TLS body: decrypted (into the stream's buffer), written to the sink."""
        view = secure.recv_view(min(RECV_PIECE, self.length - self.sink.size))
        if view:
            store(self.sink.write, view)
        return len(view)


def start_body(
    stream: Reader,
    sink: FileSink,
    length: int,
    min_rate: float | None,
    download: RateLimiter,
    progress: Callable[[int], None] | None,
) -> Body:
    """A body about to be received: its clock started, its progress called on the loop."""
    loop = asyncio.get_running_loop()
    state = stream.state
    state.body_started, state.body_received = time.monotonic(), 0

    def report(done: int) -> None:
        if progress is not None:
            loop.call_soon_threadsafe(progress, done)

    return Body(stream, sink, length, min_rate, download, report)


async def run_body(
    body: Body, sock: socket.socket, first: bytes, secure: SecureStream | None = None
) -> None:
    """``body.run`` in a worker; if cancelled, the worker is stopped (``sock`` shut down for
    reading) and awaited before the cancellation goes on."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(_workers.pool(), body.run, sock, first, secure)
    try:
        await asyncio.shield(future)
    except asyncio.CancelledError:
        body.cancelled.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)
        with contextlib.suppress(Exception):
            await future
        raise


async def read_raw_off_loop(
    stream: Reader,
    writer: asyncio.StreamWriter,
    sock: socket.socket,
    sink: FileSink,
    length: int,
    min_rate: float | None,
    download: RateLimiter,
    progress: Callable[[int], None] | None = None,
) -> bytes:
    """The body of a raw push: exactly ``length`` bytes, the first ones already parsed, into
    ``sink`` from a worker thread that reads ``sock`` (a duplicate of the connection's socket,
    from :func:`detachable`, closed here). ``progress`` is called on the loop. Returns the bytes
    already read past the body (the worker never reads past it)."""
    body = start_body(stream, sink, length, min_rate, download, progress)
    transport: Any = writer.transport
    transport.pause_reading()
    try:
        ahead = stream.parser.trailing + buffered(stream.reader)
        after = ahead[length:]
        await run_body(body, sock, ahead[:length])
    finally:
        with contextlib.suppress(OSError):
            sock.setblocking(False)  # the flag is shared with asyncio's own descriptor
        sock.close()
        if not transport.is_closing():
            transport.resume_reading()
    if progress is not None:
        progress(sink.size)
    return bytes(after)


async def read_raw(
    stream: Reader,
    writer: asyncio.StreamWriter,
    sink: FileSink,
    length: int,
    min_rate: float | None,
    download: RateLimiter,
    progress: Callable[[int], None] | None = None,
) -> bytes:
    """The body of a raw push into ``sink``: off the loop when the socket can be taken from
    asyncio (plain TCP), else read on the loop (:func:`streams.read_raw`). Returns the bytes
    already read past it."""
    sock = detachable(stream, writer)
    if sock is None:
        return await streams.read_raw(stream, sink, length, min_rate, download, progress)
    return await read_raw_off_loop(stream, writer, sock, sink, length, min_rate, download, progress)
