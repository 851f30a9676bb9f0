"""The ranged client of a TCP node: a raw range of a file fetched in a worker thread, with a
blocking socket, straight from ``recv_into`` to ``pwrite`` at the right offset."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any

from treedrive.core.errors import ClassicAnswer, TransferError
from treedrive.core.messages import GetFile
from treedrive.core.ports import RangeAnswer
from treedrive.transport import codec, wire
from treedrive.transport.limits import NetLimits
from treedrive.transport.ratelimit import RateLimiter
from treedrive.transport.streams import Workers, file_data_answer, pwrite_all, store, timeval

RANGE_BUFFER = 1024 * 1024
RANGE_WORKERS = 8
PROGRESS_STEP = 2 * 1024 * 1024
WAITALL = getattr(socket, "MSG_WAITALL", 0)
WAITALL_RATE = 8 * RANGE_BUFFER  # bytes/s: a buffer in 1/8 s


class RangeClient:
    """Fetches raw ranges: owns the pool of receiving workers and their sockets (which
    :meth:`close` shuts down). A fetch waits for a slot of ``dials``, shared with every other
    outbound connection."""

    def __init__(self, limits: NetLimits, download: RateLimiter, dials: asyncio.Semaphore) -> None:
        self.limits = limits
        self.download = download
        self.dials = dials
        self._workers = Workers(RANGE_WORKERS, "range-in")

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
        fd: int,
        progress: Callable[[int], None] | None = None,
        written: Callable[[int], None] | None = None,
        download: str | None = None,
        asker: str | None = None,
    ) -> RangeAnswer:
        """Ranged GET_FILE, done in a worker thread with a blocking socket: ``recv_into`` one
        buffer and ``pwrite`` at the right offset, with no copies and no event-loop overhead.
        ``written`` is called in that thread after every write with the bytes of the range on
        disk so far; ``progress`` on the loop, every few MiB. ``asker``: our peer id, sent along
        so that the holder can name who it serves."""
        loop = asyncio.get_running_loop()

        def report(done: int) -> None:
            if progress is not None:
                loop.call_soon_threadsafe(progress, done)

        holder: dict[str, socket.socket] = {}
        async with self.dials:
            future = loop.run_in_executor(
                self._workers.pool(),
                self._fetch_range_blocking,
                host,
                port,
                file_id,
                offset,
                length,
                fd,
                report,
                holder,
                written,
                download,
                asker,
            )
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                if (sock := holder.get("sock")) is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)  # the worker's recv returns at once
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
        fd: int,
        report: Callable[[int], None],
        holder: dict[str, socket.socket],
        written: Callable[[int], None] | None = None,
        download: str | None = None,
        asker: str | None = None,
    ) -> RangeAnswer:
        try:
            sock = socket.create_connection((host, port), timeout=self.limits.connect_timeout)
        except OSError as exc:
            raise TransferError(f"cannot connect to {host}:{port}: {exc}") from exc
        holder["sock"] = sock
        self._workers.socks.add(sock)
        try:
            # Blocking, with the idle timeout in the kernel (not a poll() before every recv):
            # a fast body is read a whole buffer at a time (MSG_WAITALL).
            sock.settimeout(None)
            idle = timeval(self.limits.idle_timeout)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, idle)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, idle)
            ext: dict[str, Any] = {"raw": True, "offset": offset, "length": length}
            if asker is not None:
                ext["from"] = asker
            if download is not None:
                ext["download"] = download
            sock.sendall(codec.encode_message(wire.encode(GetFile(file_id, {"treedrive": ext}))))
            parser = codec.MessageParser(self.limits.codec)
            while True:
                event = parser.next_event()
                if isinstance(event, codec.NeedData):
                    parser.receive_data(sock.recv(65536))
                elif isinstance(event, codec.DataChunk):
                    raise ClassicAnswer(f"{host}:{port} answered with classic hex")
                elif isinstance(event, codec.ProtocolError):
                    raise TransferError(f"malformed answer: {event.reason}")
                else:
                    break
            answer = file_data_answer(event.fields)
            if answer.meta is None:
                return RangeAnswer(None, 0, offset, 0)
            # Checked before anything is allocated or written: ints in range, offset + length
            # within size (a WireError otherwise); nothing here grows with the claimed size.
            got = wire.range_header(answer.extra)
            if got is None:
                raise ClassicAnswer(f"{host}:{port} answered without raw bytes")
            size, start, count = got.size, got.offset, got.length
            if start != offset:
                raise TransferError(f"answered a range it was not asked for: {got}")
            if length is not None and count > length:
                raise TransferError(f"sent {count} bytes for a range of {length}")
            self._receive_raw(sock, parser.trailing[:count], fd, offset, count, report, written)
            return RangeAnswer(answer.meta, size, offset, count)
        except (TimeoutError, BlockingIOError) as exc:  # SO_RCVTIMEO: EAGAIN
            raise TransferError(f"{host}:{port} timed out") from exc
        except wire.WireError as exc:
            raise TransferError(f"invalid answer: {exc}") from exc
        except OSError as exc:
            raise TransferError(f"connection to {host}:{port} failed: {exc}") from exc
        finally:
            self._workers.socks.discard(sock)
            sock.close()

    def _receive_raw(
        self,
        sock: socket.socket,
        first: bytes,
        fd: int,
        offset: int,
        count: int,
        report: Callable[[int], None],
        written: Callable[[int], None] | None = None,
    ) -> None:
        got = 0
        if first:
            self.download.acquire_blocking(len(first))
            store(pwrite_all, fd, memoryview(first), offset)
            got = len(first)
            if written is not None:
                written(got)
        buf = bytearray(min(RANGE_BUFFER, max(count, 1)))
        view = memoryview(buf)
        reported = 0
        started = reported_at = time.monotonic()
        flags = 0
        while got < count:
            n = sock.recv_into(view, min(len(buf), count - got), flags)
            if n == 0:
                raise TransferError(f"closed after {got} of {count} bytes")
            self.download.acquire_blocking(n)
            store(pwrite_all, fd, view[:n], offset + got)
            got += n
            if written is not None:
                written(got)
            now = time.monotonic()
            if got - reported >= PROGRESS_STEP or got == count or now - reported_at >= 0.25:
                reported, reported_at = got, now
                report(got)
            # Fast enough that a whole buffer takes little time: wait for whole buffers (fewer
            # wake-ups and writes); slower, take what comes, so progress keeps being reported.
            flags = WAITALL if got >= WAITALL_RATE * (now - started) else 0
