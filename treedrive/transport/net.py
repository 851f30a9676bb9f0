"""asyncio TCP around the sans-IO codec: the listener, the dialer, streamed FILE_DATA.

One message per connection. Reads are bounded in size (the codec's limits) and in time (a whole
control message must arrive within ``control_timeout``; a file's bytes must keep coming, at most
``idle_timeout`` apart). File bytes go straight from the socket into the sink and from disk into
the socket, hex-encoded in chunks: memory stays flat whatever the file size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treedrive.core.errors import ClassicAnswer, StorageError, TransferError
from treedrive.core.messages import FileData, GetFile, Message
from treedrive.core.model import FileMeta
from treedrive.core.ports import FileSink, InboundHandler, RangeAnswer
from treedrive.transport import codec, wire
from treedrive.transport.ratelimit import RateLimiter

log = logging.getLogger(__name__)

READ_SIZE = 1024 * 1024
FILE_CHUNK = 512 * 1024  # raw bytes per write: 1 MiB of hex
WRITE_HIGH_WATER = 4 * 1024 * 1024
SEND_PIECE = 4 * 1024 * 1024  # raw bytes per sendfile call (progress and rate-limit steps)
LIMITED_PIECE = 256 * 1024  # at most this when a rate limit is set
MIN_PIECE = 16 * 1024
RANGE_BUFFER = 1024 * 1024
RANGE_WORKERS = 8
SEND_WORKERS = 32  # raw uploads at once; more wait for a thread
PROGRESS_STEP = 2 * 1024 * 1024
WAITALL = getattr(socket, "MSG_WAITALL", 0)
WAITALL_RATE = 8 * RANGE_BUFFER  # bytes/s: a buffer in 1/8 s

NOT_HERE = {"type": "FILE_DATA", **dict.fromkeys(wire.RECORD_KEYS), "data": None}


@dataclass(frozen=True, slots=True)
class NetLimits:
    connect_timeout: float = 5.0
    """Dialing a peer (the classic peers' value)."""
    send_timeout: float = 5.0
    """A write that makes no progress for this long fails."""
    control_timeout: float = 30.0
    """A whole control message must arrive within this."""
    idle_timeout: float = 30.0
    """The bytes of a file must keep coming at most this far apart (and a FILE_DATA answer)."""
    max_connections: int = 256
    """Inbound connections served at once; more are closed at once."""
    max_dials: int = 64
    """Outbound connections open at once; more wait."""
    codec: codec.Limits = field(default_factory=codec.Limits)


class _Reader:
    """Feeds a socket into a parser under the time limits, yielding codec events."""

    def __init__(self, reader: asyncio.StreamReader, limits: NetLimits) -> None:
        self.reader = reader
        self.limits = limits
        self.parser = codec.MessageParser(limits.codec)
        self.deadline = time.monotonic() + limits.control_timeout
        self.streaming = False

    async def next(self) -> codec.DataChunk | codec.Message | codec.ProtocolError:
        while True:
            event = self.parser.next_event()
            if not isinstance(event, codec.NeedData):
                if isinstance(event, codec.DataChunk):
                    self.streaming = True
                return event
            timeout = self.limits.idle_timeout
            if not self.streaming:
                timeout = min(timeout, self.deadline - time.monotonic())
                if timeout <= 0:
                    raise TimeoutError("the message did not arrive in time")
            data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
            self.parser.receive_data(data)


async def _drain(writer: asyncio.StreamWriter, limits: NetLimits) -> None:
    await asyncio.wait_for(writer.drain(), limits.send_timeout)


def _raw_ext(extra: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The extension's ``treedrive`` object when it asks for (or announces) raw bytes."""
    ext = extra.get("treedrive")
    return ext if isinstance(ext, Mapping) and ext.get("raw") is True else None


def _file_data_answer(fields: Mapping[str, Any]) -> FileData:
    """The answer to a GET_FILE, which must be a FILE_DATA (raises WireError, TransferError)."""
    answer = wire.decode(fields)
    if not isinstance(answer, FileData):
        raise TransferError(f"answered GET_FILE with {fields.get('type')!r}")
    return answer


def _nonneg(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


async def _write_file_data(
    writer: asyncio.StreamWriter,
    meta: FileMeta,
    path: Path,
    limits: NetLimits,
    progress: Callable[[int], None] | None = None,
    limiter: RateLimiter | None = None,
) -> int:
    """Write a FILE_DATA for ``meta`` with the bytes at ``path`` hex-encoded; returns the size."""
    writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
    writer.write(codec.encode_file_data_head({"type": "FILE_DATA", **meta.wire()}))
    sent = 0
    with path.open("rb") as f:
        while block := f.read(FILE_CHUNK):
            if limiter is not None:
                await limiter.acquire(len(block))
            writer.write(codec.encode_data_chunk(block))
            sent += len(block)
            await _drain(writer, limits)
            if progress is not None:
                progress(sent)
    writer.write(codec.FILE_DATA_TAIL)
    await _drain(writer, limits)
    return sent


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 2)


class TcpNetwork:
    """The :class:`treedrive.core.ports.Network` over asyncio TCP."""

    def __init__(self, host: str, port: int, limits: NetLimits | None = None) -> None:
        self.host = host
        self.port = port
        self.limits = limits or NetLimits()
        self._server: asyncio.Server | None = None
        self._handler: InboundHandler | None = None
        self._conns: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._closing = False
        self.download = RateLimiter()
        self.upload = RateLimiter()
        self._pool: ThreadPoolExecutor | None = None
        self._send_pool: ThreadPoolExecutor | None = None
        self._range_socks: set[socket.socket] = set()
        self._dials = asyncio.Semaphore(self.limits.max_dials)

    def _receivers(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(RANGE_WORKERS, thread_name_prefix="range-in")
        return self._pool

    def _senders(self) -> ThreadPoolExecutor:
        if self._send_pool is None:
            self._send_pool = ThreadPoolExecutor(SEND_WORKERS, thread_name_prefix="range-out")
        return self._send_pool

    def set_rate_limits(self, download: float | None, upload: float | None) -> None:
        self.download.set_rate(download)
        self.upload.set_rate(upload)

    # -- listening ---------------------------------------------------------------------------
    async def start(self, handler: InboundHandler) -> tuple[str, int]:
        self._handler = handler
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, limit=READ_SIZE, reuse_address=True
        )
        sockname = self._server.sockets[0].getsockname()
        return self.host, int(sockname[1])

    async def close(self) -> None:
        self._closing = True
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
        for sock in list(self._range_socks):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for pool in (self._pool, self._send_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, not a coroutine: the connection is recorded at once, so close()
        # always finds (and closes) it, even before its task first runs.
        if self._closing or len(self._conns) >= self.limits.max_connections:
            if not self._closing:
                log.warning(
                    "connection limit (%d) reached; connection closed",
                    self.limits.max_connections,
                )
            writer.close()
            return
        task = asyncio.ensure_future(self._connection(reader, writer))
        self._conns[task] = writer
        task.add_done_callback(self._conns.pop)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        try:
            await self._serve_connection(reader, writer, source)
        except StorageError as exc:
            log.error("%s: a pushed file was dropped: %s", source, exc)
        except TimeoutError as exc:
            log.warning("%s: timed out (%s); dropped", source, exc or "no progress")
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.warning("%s: connection failed: %s", source, exc)
        except Exception:
            log.exception("%s: error while handling a message", source)
        finally:
            await _close(writer)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str
    ) -> None:
        handler = self._handler
        assert handler is not None
        stream = _Reader(reader, self.limits)
        sink: FileSink | None = None
        try:
            while True:
                event = await stream.next()
                if isinstance(event, codec.DataChunk):
                    if sink is None:
                        sink = handler.open_sink()
                    _store(sink.write, event.data)
                    continue
                if isinstance(event, codec.ProtocolError):
                    if stream.parser.bytes_received == 0:
                        log.debug("%s: closed without sending anything", source)
                    else:
                        log.warning("%s: malformed message dropped: %s", source, event.reason)
                    return
                break
            try:
                message = wire.decode(event.fields)
            except wire.WireError as exc:
                log.warning("%s: invalid message dropped: %s", source, exc)
                if event.fields.get("type") == "GET_FILE":
                    # Never leave a GET_FILE silent: the asker moves on to another holder.
                    writer.write(codec.encode_message(NOT_HERE))
                    await _drain(writer, self.limits)
                return
            if isinstance(message, GetFile):
                ext = _raw_ext(message.extra)
                if ext is not None and "raw-range" in handler.features:
                    await self._answer_raw(writer, message, ext, source)
                else:
                    await self._answer_get(writer, message, source)
            elif isinstance(message, FileData):
                ext = _raw_ext(message.extra)
                if sink is None and ext is not None and message.meta is not None:
                    sink = handler.open_sink()  # a raw push: the bytes follow the header
                    await self._read_raw(stream, sink, _nonneg(ext.get("length")) or 0)
                elif sink is None and event.fields.get("data") is True:
                    sink = handler.open_sink()  # an empty file
                pushed, sink = sink, None
                await handler.handle_pushed_file(message, pushed, source)
            else:
                await handler.handle_message(message, source)
        finally:
            if sink is not None:
                sink.abort()

    async def _answer_get(
        self, writer: asyncio.StreamWriter, request: GetFile, source: str
    ) -> None:
        assert self._handler is not None
        found = self._handler.file_to_serve(request.file_id)
        if found is None:
            writer.write(codec.encode_message(NOT_HERE))
            await _drain(writer, self.limits)
            return
        meta, path = found
        progress = self._handler.track_upload(meta, source, path.stat().st_size)
        try:
            size = await _write_file_data(
                writer, meta, path, self.limits, progress.update, self.upload
            )
        except BaseException as exc:
            progress.finish(False, str(exc) or type(exc).__name__)
            raise
        progress.finish(True)
        log.info("served %s (%d bytes) to %s", meta.file_id[:12], size, source)

    async def _answer_raw(
        self, writer: asyncio.StreamWriter, request: GetFile, ext: Mapping[str, Any], source: str
    ) -> None:
        """A ranged GET_FILE: one JSON header, then exactly ``length`` raw bytes (sendfile)."""
        assert self._handler is not None
        found = self._handler.file_to_serve(request.file_id)
        offset, length = _nonneg(ext.get("offset", 0)), ext.get("length")
        if found is None or offset is None or (length is not None and _nonneg(length) is None):
            if found is not None:
                log.warning("%s: bad range %r dropped", source, dict(ext))
            writer.write(codec.encode_message(NOT_HERE))
            await _drain(writer, self.limits)
            return
        meta, path = found
        size = path.stat().st_size
        offset = min(offset, size)
        length = size - offset if length is None else min(int(length), size - offset)
        ext_out = {"raw": True, "offset": offset, "length": length, "size": size}
        header = {"type": "FILE_DATA", **meta.wire(), "data": None, "treedrive": ext_out}
        writer.write(codec.encode_message(header))
        asker, download = ext.get("from"), ext.get("download")
        progress = self._handler.track_range(
            meta,
            asker if isinstance(asker, str) and asker else source,
            download if isinstance(download, str) and download else None,
            size,
        )
        try:
            await self._send_raw(writer, path, offset, length, progress.update)
        except BaseException as exc:
            progress.finish(False, str(exc) or type(exc).__name__)
            raise
        progress.finish(True)

    async def _send_raw(
        self,
        writer: asyncio.StreamWriter,
        path: Path,
        offset: int,
        length: int,
        progress: Callable[[int], None] | None,
    ) -> None:
        """``length`` bytes of ``path`` from ``offset`` on, after what ``writer`` already holds:
        ``sendfile`` in a worker thread, on a duplicate of the socket, so that the event loop
        takes no part in moving the bytes (and ``close()`` can cut it off by shutting the
        socket down)."""
        loop = asyncio.get_running_loop()
        await _drain(writer, self.limits)
        raw = writer.get_extra_info("socket")
        if raw is None:
            raise OSError("the connection has no socket")
        sock = socket.socket(fileno=os.dup(raw.fileno()))
        self._range_socks.add(sock)

        def report(done: int) -> None:
            if progress is not None:
                loop.call_soon_threadsafe(progress, done)

        try:
            await loop.run_in_executor(
                self._senders(), self._sendfile_blocking, sock, path, offset, length, report
            )
        finally:
            self._range_socks.discard(sock)
            sock.close()  # the duplicate; the transport closes the original

    def _sendfile_blocking(
        self,
        sock: socket.socket,
        path: Path,
        offset: int,
        length: int,
        report: Callable[[int], None],
    ) -> None:
        rate = self.upload.rate
        # Under a limit, about a tenth of a second's worth at a time: the bytes flow evenly.
        piece = max(MIN_PIECE, min(LIMITED_PIECE, int(rate / 10))) if rate else SEND_PIECE
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLOUT)
        idle_ms = int(self.limits.idle_timeout * 1000)
        sent = 0
        with path.open("rb") as f:
            while sent < length:
                n = min(piece, length - sent)
                self.upload.acquire_blocking(n)
                done = 0
                while done < n:
                    try:
                        k = os.sendfile(sock.fileno(), f.fileno(), offset + sent + done, n - done)
                    except BlockingIOError:
                        if not poller.poll(idle_ms):
                            raise TimeoutError("the peer stopped reading") from None
                        continue
                    if k == 0:
                        raise OSError(f"{path.name} ended before its last {length - sent} bytes")
                    done += k
                sent += n
                report(sent)

    async def _read_raw(self, stream: _Reader, sink: FileSink, length: int) -> None:
        """The raw bytes of a raw push: exactly ``length``, the first ones already read."""
        first = stream.parser.trailing[:length]
        if first:
            _store(sink.write, first)
        while sink.size < length:
            data = await asyncio.wait_for(
                stream.reader.read(min(READ_SIZE, length - sink.size)), self.limits.idle_timeout
            )
            if not data:
                raise OSError(f"closed after {sink.size} of {length} raw bytes")
            await self.download.acquire(len(data))
            _store(sink.write, data)

    # -- dialing -----------------------------------------------------------------------------
    async def _connect(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=READ_SIZE), self.limits.connect_timeout
        )

    async def send(self, host: str, port: int, message: Message) -> bool:
        data = codec.encode_message(wire.encode(message))
        async with self._dials:
            try:
                _, writer = await self._connect(host, port)
            except (OSError, TimeoutError) as exc:
                log.debug("cannot reach %s:%d: %s", host, port, exc)
                return False
            try:
                writer.write(data)
                await _drain(writer, self.limits)
                return True
            except (OSError, TimeoutError) as exc:
                log.debug("sending to %s:%d failed: %s", host, port, exc)
                return False
            finally:
                await _close(writer)

    async def push_file(
        self,
        host: str,
        port: int,
        meta: FileMeta,
        path: Path,
        progress: Callable[[int], None] | None = None,
        raw: bool = False,
    ) -> bool:
        async with self._dials:
            try:
                _, writer = await self._connect(host, port)
            except (OSError, TimeoutError) as exc:
                log.warning("cannot push to %s:%d: %s", host, port, exc)
                return False
            try:
                if raw:
                    size = os.stat(path).st_size
                    ext = {"raw": True, "offset": 0, "length": size, "size": size}
                    header = {"type": "FILE_DATA", **meta.wire(), "data": None, "treedrive": ext}
                    writer.write(codec.encode_message(header))
                    await self._send_raw(writer, path, 0, size, progress)
                else:
                    await _write_file_data(writer, meta, path, self.limits, progress, self.upload)
                return True
            except (OSError, TimeoutError) as exc:
                log.warning("push of %s to %s:%d failed: %s", meta.file_id[:12], host, port, exc)
                return False
            finally:
                await _close(writer)

    async def fetch_file(
        self,
        host: str,
        port: int,
        file_id: str,
        sink: FileSink,
        progress: Callable[[int], None] | None = None,
    ) -> FileData:
        async with self._dials:
            try:
                reader, writer = await self._connect(host, port)
            except (OSError, TimeoutError) as exc:
                raise TransferError(f"cannot connect to {host}:{port}: {exc}") from exc
            try:
                writer.write(codec.encode_message(wire.encode(GetFile(file_id))))
                await _drain(writer, self.limits)
                stream = _Reader(reader, self.limits)
                stream.deadline = time.monotonic() + self.limits.idle_timeout
                while True:
                    event = await stream.next()
                    if isinstance(event, codec.DataChunk):
                        await self.download.acquire(len(event.data))
                        _store(sink.write, event.data)
                        if progress is not None:
                            progress(sink.size)
                    elif isinstance(event, codec.ProtocolError):
                        raise TransferError(f"malformed answer: {event.reason}")
                    else:
                        # Stop at the end of the object: never wait for the peer to close.
                        break
                return _file_data_answer(event.fields)
            except wire.WireError as exc:
                raise TransferError(f"invalid answer: {exc}") from exc
            except TimeoutError as exc:
                raise TransferError("timed out waiting for the file's bytes") from exc
            except OSError as exc:
                raise TransferError(f"connection failed: {exc}") from exc
            finally:
                await _close(writer)

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
    ) -> RangeAnswer:
        """Ranged GET_FILE, done in a worker thread with a blocking socket: ``recv_into`` one
        buffer and ``pwrite`` at the right offset, with no copies and no event-loop overhead.
        ``written`` is called in that thread after every write with the bytes of the range on
        disk so far; ``progress`` on the loop, every few MiB."""
        loop = asyncio.get_running_loop()

        def report(done: int) -> None:
            if progress is not None:
                loop.call_soon_threadsafe(progress, done)

        holder: dict[str, socket.socket] = {}
        async with self._dials:
            future = loop.run_in_executor(
                self._receivers(),
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
    ) -> RangeAnswer:
        try:
            sock = socket.create_connection((host, port), timeout=self.limits.connect_timeout)
        except OSError as exc:
            raise TransferError(f"cannot connect to {host}:{port}: {exc}") from exc
        holder["sock"] = sock
        self._range_socks.add(sock)
        try:
            # Blocking, with the idle timeout in the kernel (not a poll() before every recv):
            # a fast body is read a whole buffer at a time (MSG_WAITALL).
            sock.settimeout(None)
            idle = _timeval(self.limits.idle_timeout)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, idle)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, idle)
            ext: dict[str, Any] = {"raw": True, "offset": offset, "length": length}
            if self._handler is not None:
                ext["from"] = self._handler.peer_id
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
            answer = _file_data_answer(event.fields)
            if answer.meta is None:
                return RangeAnswer(None, 0, offset, 0)
            got_ext = _raw_ext(answer.extra)
            if got_ext is None:
                raise ClassicAnswer(f"{host}:{port} answered without raw bytes")
            size, start, count = (_nonneg(got_ext.get(k)) for k in ("size", "offset", "length"))
            if size is None or start != offset or count is None or start + count > size:
                raise TransferError(f"answered a range it was not asked for: {dict(got_ext)}")
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
            self._range_socks.discard(sock)
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
            _store(_pwrite_all, fd, memoryview(first), offset)
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
            _store(_pwrite_all, fd, view[:n], offset + got)
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


def _store(write: Callable[..., None], *args: Any) -> None:
    """A write of received bytes to this node's disk: its failure is ours, not the peer's."""
    try:
        write(*args)
    except OSError as exc:
        raise StorageError(f"cannot write the file to disk: {exc.strerror or exc}") from exc


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1e6))


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n
