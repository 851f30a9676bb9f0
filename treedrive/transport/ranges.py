"""The ranged client of a TCP node: a raw range of a file fetched in a worker thread, with a
blocking socket, moved from the socket to the download's partial file at the right offset in the
kernel (``RangeFile.splice_from``: no copy through user space)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from treedrive.core.errors import ClassicAnswer, TransferError
from treedrive.core.ports import RangeAnswer, RangeFile
from treedrive.transport import codec, tlsstream, wire
from treedrive.transport.extension import RangeRequest, range_header, ranged_get
from treedrive.transport.limits import NetLimits
from treedrive.transport.ratelimit import RateLimiter
from treedrive.transport.secure import HandshakeError, NodeTLS
from treedrive.transport.securestream import SecureStream
from treedrive.transport.streams import (
    Unanswered,
    Workers,
    file_data_answer,
    store,
    timeval,
)

RANGE_WORKERS = 8
RECV_PIECE = 1024 * 1024
"""Bytes decrypted at a time from a TLS range, at most (then written at its offset): a record
(transport/bulk.py) is written whole, as it was opened."""
PROGRESS_STEP = 2 * 1024 * 1024


class Holder:
    """The socket of a fetch in a worker thread, and whether the fetch was cancelled: either
    the canceller finds the socket (and shuts it down: the worker's recv returns at once) or
    the worker finds the fetch cancelled once connected (and stops), whichever comes second."""

    def __init__(self, on_connect: Callable[[], None]) -> None:
        self.connected = on_connect
        """Called by the worker once its connection is made or has failed."""
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._cancelled = False

    def attach(self, sock: socket.socket) -> bool:
        """The worker connected ``sock``; False: the fetch was cancelled meanwhile."""
        with self._lock:
            self._sock = sock
            return not self._cancelled

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class RangeClient:
    """Fetches raw ranges: owns the pool of receiving workers and their sockets (which
    :meth:`close` shuts down). A fetch connects under a slot of ``dials``, shared with every
    other outbound connection, and gives it back once connected."""

    def __init__(self, limits: NetLimits, download: RateLimiter, dials: asyncio.Semaphore) -> None:
        self.limits = limits
        self.download = download
        self.dials = dials
        self._workers = Workers(RANGE_WORKERS, "range-in")
        self.tls: NodeTLS | None = None
        """The node's TLS contexts when it dials encrypted connections (set at the start)."""

    def close(self) -> None:
        """Cut off the fetches under way (their workers' reads return at once)."""
        self._workers.close()

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
        asker: str | None = None,
        peer_key: bytes | None = None,
    ) -> RangeAnswer:
        """Ranged GET_FILE, done in a worker thread with a blocking socket: the bytes go from the
        socket to the right offset of ``partial`` in the kernel (``partial.splice_from``), with
        no copy through user space and no event-loop overhead.
        ``written`` is called in that thread after every move with the bytes of the range on
        disk so far; ``progress`` on the loop, every few MiB. ``asker``: our peer id, sent along
        so that the holder can name who it serves.

        The answer's header must arrive within ``control_timeout``; the bytes must keep coming
        (``idle_timeout`` apart) and, after ``fetch_rate_grace``, at ``min_fetch_rate`` on
        average. The slot of ``dials`` is held only until the worker has connected.

        With ``peer_key`` (and this node's TLS), over TLS 1.3 to a holder that proves that key
        (PROTOCOL.md 2.9): the bytes are decrypted into a buffer and written (``write_at``)."""
        loop = asyncio.get_running_loop()
        connected = asyncio.Event()

        def report(done: int) -> None:
            if progress is not None:
                loop.call_soon_threadsafe(progress, done)

        def on_connect() -> None:
            loop.call_soon_threadsafe(connected.set)

        holder = Holder(on_connect)
        future: asyncio.Future[RangeAnswer] | None = None
        try:
            async with self.dials:
                future = loop.run_in_executor(
                    self._workers.pool(),
                    self._fetch_range_blocking,
                    host,
                    port,
                    file_id,
                    offset,
                    length,
                    partial,
                    report,
                    holder,
                    written,
                    download,
                    asker,
                    peer_key,
                )
                waiter = asyncio.ensure_future(connected.wait())
                try:
                    either: list[asyncio.Future[Any]] = [future, waiter]
                    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if future is not None:
                holder.cancel()  # the worker's recv returns at once, or it stops once connected
                with contextlib.suppress(Exception):
                    await future
            raise

    def _fetch_range_blocking(
        self,
        host: str,
        port: int,
        file_id: str,
        offset: int,
        length: int | None,
        partial: RangeFile,
        report: Callable[[int], None],
        holder: Holder,
        written: Callable[[int], None] | None = None,
        download: str | None = None,
        asker: str | None = None,
        peer_key: bytes | None = None,
    ) -> RangeAnswer:
        # A server that closes on our half-close without a byte is asked once more, without it
        # (a TLS server is a TreeDrive node: never half-closed).
        secure = peer_key if self.tls is not None else None
        for half_close in (True, False) if secure is None else (False,):
            try:
                sock = socket.create_connection((host, port), timeout=self.limits.connect_timeout)
            except OSError as exc:
                raise TransferError(f"cannot connect to {host}:{port}: {exc}") from exc
            finally:
                holder.connected()
            self._workers.socks.add(sock)
            try:
                if not holder.attach(sock):
                    raise TransferError("cancelled")
                return self._exchange(
                    sock,
                    host,
                    port,
                    file_id,
                    offset,
                    length,
                    partial,
                    report,
                    written,
                    download,
                    asker,
                    half_close,
                    secure,
                )
            except Unanswered:
                if not half_close:
                    raise
            except (TimeoutError, BlockingIOError) as exc:  # SO_RCVTIMEO: EAGAIN
                raise TransferError(f"{host}:{port} timed out") from exc
            except wire.WireError as exc:
                raise TransferError(f"invalid answer: {exc}") from exc
            except HandshakeError as exc:
                raise TransferError(f"{host}:{port}: {exc}") from exc
            except OSError as exc:
                raise TransferError(f"connection to {host}:{port} failed: {exc}") from exc
            finally:
                self._workers.socks.discard(sock)
                sock.close()
        raise AssertionError("unreachable")  # pragma: no cover

    def _exchange(
        self,
        sock: socket.socket,
        host: str,
        port: int,
        file_id: str,
        offset: int,
        length: int | None,
        partial: RangeFile,
        report: Callable[[int], None],
        written: Callable[[int], None] | None,
        download: str | None,
        asker: str | None,
        half_close: bool,
        peer_key: bytes | None = None,
    ) -> RangeAnswer:
        stream = None
        if peer_key is not None and self.tls is not None:  # the handshake, by its deadline
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # see secureconn
            stream = tlsstream.connect(self.tls, sock, peer_key, self.limits.control_timeout)
        # Blocking, with the idle timeout in the kernel (not a poll() before every read).
        sock.settimeout(None)
        idle = timeval(self.limits.idle_timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, idle)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, idle)
        ask = RangeRequest(offset, length, asker, download)
        request = codec.encode_message(ranged_get(file_id, ask))
        if stream is None:
            sock.sendall(request)
        else:
            stream.sendall(request)
        parser = codec.MessageParser(self.limits.codec)
        event = self._read_header(sock, parser, half_close, stream)
        if isinstance(event, codec.DataChunk):
            raise ClassicAnswer(f"{host}:{port} answered with classic hex")
        answer = file_data_answer(event.fields)
        if answer.meta is None:
            return RangeAnswer(None, 0, offset, 0)
        # Checked before anything is allocated or written: ints in range, offset + length
        # within size (a WireError otherwise); nothing here grows with the claimed size.
        got = range_header(event.fields)
        if got is None:
            raise ClassicAnswer(f"{host}:{port} answered without raw bytes")
        size, start, count = got.size, got.offset, got.length
        sock.settimeout(None)  # the body: blocking, SO_RCVTIMEO as set above
        if start != offset:
            raise TransferError(f"answered a range it was not asked for: {got}")
        if length is not None and count > length:
            raise TransferError(f"sent {count} bytes for a range of {length}")
        first = parser.trailing[:count]
        self._receive_raw(sock, first, partial, offset, count, report, written, stream)
        return RangeAnswer(answer.meta, size, offset, count)

    def _read_header(
        self,
        sock: socket.socket,
        parser: codec.MessageParser,
        half_close: bool,
        stream: SecureStream | None = None,
    ) -> codec.Message | codec.DataChunk:
        """The answer's header (or its first classic hex), whole within ``control_timeout``
        however its bytes trickle in. With ``half_close``, a server that sends nothing for
        ``half_close_after`` has our sending side shut down (some classic servers answer only
        after EOF); if it then closes without a byte, Unanswered."""
        deadline = time.monotonic() + self.limits.control_timeout
        wait = self.limits.half_close_after
        nudge_at = time.monotonic() + wait if half_close and wait is not None else None
        half_closed = False
        while True:
            event = parser.next_event()
            if isinstance(event, codec.Message | codec.DataChunk):
                return event
            if isinstance(event, codec.ProtocolError):
                if half_closed and parser.bytes_received == 0:
                    raise Unanswered("closed on EOF without answering")
                raise TransferError(f"malformed answer: {event.reason}")
            now = time.monotonic()
            left = min(deadline - now, self.limits.idle_timeout)
            if left <= 0:
                raise TimeoutError("the answer's header did not arrive in time")
            nudging = nudge_at is not None and parser.bytes_received == 0 and nudge_at - now < left
            if nudging and nudge_at is not None:
                left = max(nudge_at - now, 0.001)
            sock.settimeout(left)
            try:
                data = sock.recv(65536) if stream is None else stream.recv(65536)
            except TimeoutError:
                if not nudging:
                    raise
                nudge_at = None
                sock.shutdown(socket.SHUT_WR)
                half_closed = True
                continue
            except OSError:
                if half_closed and parser.bytes_received == 0:
                    raise Unanswered("closed on EOF without answering") from None
                raise
            parser.receive_data(data)

    def _receive_raw(
        self,
        sock: socket.socket,
        first: bytes,
        partial: RangeFile,
        offset: int,
        count: int,
        report: Callable[[int], None],
        written: Callable[[int], None] | None = None,
        stream: SecureStream | None = None,
    ) -> None:
        got = 0
        if first:
            self.download.acquire_blocking(len(first))
            store(partial.write_at, offset, memoryview(first))
            got = len(first)
            if written is not None:
                written(got)
        reported = 0
        started = reported_at = time.monotonic()
        paused = 0.0  # seconds spent on this node's own download limit: not the holder's doing
        min_rate, grace = self.limits.min_fetch_rate, self.limits.fetch_rate_grace
        fd = sock.fileno()
        while got < count:
            if stream is None:
                n = partial.splice_from(fd, offset + got, count - got)
            else:  # decrypted into the stream's buffer, then written (no splice)
                view = stream.recv_view(min(RECV_PIECE, count - got))
                n = len(view)
                store(partial.write_at, offset + got, view)
            if n == 0:
                raise TransferError(f"closed after {got} of {count} bytes")
            got += n
            if min_rate:
                spent = time.monotonic() - started - paused
                if spent > grace and got < min_rate * spent:
                    raise TransferError(
                        f"sent {got} bytes in {spent:.0f} s, under {min_rate:.0f} bytes/s"
                    )
            if written is not None:
                written(got)
            waited = time.monotonic()
            self.download.acquire_blocking(n)
            now = time.monotonic()
            paused += now - waited
            if got - reported >= PROGRESS_STEP or got == count or now - reported_at >= 0.25:
                reported, reported_at = got, now
                report(got)
