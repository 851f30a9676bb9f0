"""asyncio TCP around the sans-IO codec: the listener, the dialer, streamed FILE_DATA.

One message per connection. Reads are bounded in size (the codec's limits) and in time (a whole
control message must arrive within ``control_timeout``; a file's bytes must keep coming, at most
``idle_timeout`` apart, and a file pushed to us unasked must also keep ``min_push_rate`` on
average). File bytes go straight from the socket into the sink and from disk into the socket,
hex-encoded in chunks: memory stays flat whatever the file size.

Admission (see :mod:`treedrive.transport.admission`): at ``max_connections``, the open connection
that has made the least progress gives way to a new one (the new one is refused only when every
open one is protected: a whole message being handled, an upload, a fast body); uploads whose
reader stalls for ``upload_stall_timeout`` are closed, and hold no thread while they wait.
Outbound messages go through a bounded outbox (:meth:`TcpNetwork.post`), and an address that
refuses is dialed at most a few times a minute. Refusals, evictions, drops and failed
connections are counted; the log gets a few detail lines and one summary line a second at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
import struct
import time
from collections import Counter
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
from treedrive.transport.admission import PROBE, ConnState, DialBackoff, Tally, choose_victim
from treedrive.transport.outbox import EncodeCache, Outbox
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
SEND_WORKERS = 32  # raw uploads moving bytes at once (a stalled one waits on the loop)
MAX_WAITING = 4  # dials waiting for the outcome of a probe to their address; more are dropped
OPEN_FILES_CAP = 1 << 20
ACCEPT_OUT_OF_RESOURCES = "socket.accept() out of system resource"
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
    """Inbound connections served at once; at the cap, the one with the least progress gives way
    to a new one (or, if every open one is protected, the new one is closed)."""
    admission_grace: float = 0.5
    """A connection younger than this gives way only when no older one may (then the oldest of
    them: under a flood of new connections, a new one is never refused for want of old ones)."""
    min_push_rate: float = 64 * 1024
    """Bytes/s on average that the body of a file pushed to us unasked must keep (and the rate
    at which a body counts as a transfer that never gives way)."""
    push_rate_grace: float = 5.0
    """Seconds from the start of a pushed body before ``min_push_rate`` applies."""
    upload_stall_timeout: float = 10.0
    """An upload whose reader takes nothing for this long is closed."""
    max_dials: int = 64
    """Outbound connections open at once; more wait. Also the number of outbox senders."""
    outbox_size: int = 1024
    """Messages posted and not yet sent; when full, the oldest is dropped."""
    codec: codec.Limits = field(default_factory=codec.Limits)


def _rate_due(started: float, got: int, rate: float, grace: float) -> float:
    """When a body that began at ``started`` and has ``got`` bytes falls under ``rate`` bytes/s
    on average (not before ``grace`` seconds) if nothing more comes."""
    return started + max(grace, got / rate)


class _Reader:
    """Feeds a socket into a parser under the time limits, yielding codec events.

    Until the file bytes of a FILE_DATA begin, the whole message must arrive by ``deadline``;
    then each read must come within ``idle_timeout`` and, with ``min_rate``, the body must keep
    that average rate (after ``grace``). ``state``, if given, is kept up to date for admission."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        limits: NetLimits,
        state: ConnState | None = None,
        min_rate: float | None = None,
    ) -> None:
        self.reader = reader
        self.limits = limits
        self.parser = codec.MessageParser(limits.codec)
        self.deadline = time.monotonic() + limits.control_timeout
        self.streaming = False
        self.state = state if state is not None else ConnState(time.monotonic())
        self.min_rate = min_rate

    async def next(self) -> codec.DataChunk | codec.Message | codec.ProtocolError:
        state = self.state
        while True:
            event = self.parser.next_event()
            if not isinstance(event, codec.NeedData):
                if isinstance(event, codec.DataChunk) and not self.streaming:
                    self.streaming = True
                    state.body_started, state.body_received = time.monotonic(), 0
                return event
            timeout = self.limits.idle_timeout
            now = time.monotonic()
            if not self.streaming:
                timeout = min(timeout, self.deadline - now)
                if timeout <= 0:
                    raise TimeoutError("the message did not arrive in time")
            elif self.min_rate and state.body_started is not None:
                due = _rate_due(
                    state.body_started,
                    state.body_received,
                    self.min_rate,
                    self.limits.push_rate_grace,
                )
                timeout = min(timeout, due - now)
                if timeout <= 0:
                    raise TimeoutError("the file's bytes came too slowly")
            data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
            state.received += len(data)
            if self.streaming:
                state.body_received += len(data)
            self.parser.receive_data(data)


async def _drain(writer: asyncio.StreamWriter, limits: NetLimits) -> None:
    await asyncio.wait_for(writer.drain(), limits.send_timeout)


async def _drain_upload(writer: asyncio.StreamWriter, stall: float) -> None:
    """Wait until the write buffer is low again; fail only if the reader takes nothing at all
    for ``stall`` seconds (a slow reader is not a stalled one)."""
    while True:
        before = writer.transport.get_write_buffer_size()
        try:
            await asyncio.wait_for(writer.drain(), stall)
            return
        except TimeoutError:
            if writer.transport.get_write_buffer_size() >= before:
                raise TimeoutError("the peer stopped reading") from None


def _file_data_answer(fields: Mapping[str, Any]) -> FileData:
    """The answer to a GET_FILE, which must be a FILE_DATA (raises WireError, TransferError)."""
    answer = wire.decode(fields)
    if not isinstance(answer, FileData):
        raise TransferError(f"answered GET_FILE with {fields.get('type')!r}")
    return answer


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
            await _drain_upload(writer, limits.upload_stall_timeout)
            if progress is not None:
                progress(sent)
    writer.write(codec.FILE_DATA_TAIL)
    await _drain_upload(writer, limits.upload_stall_timeout)
    return sent


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 2)


@dataclass(slots=True)
class _Upload:
    """A raw upload under way: where it stands, and rate-limit budget taken but not yet sent."""

    offset: int
    length: int
    sent: int = 0
    credit: int = 0


_accept_errors = Tally(every=1.0, detail=1)
"""accept() failures for lack of file descriptors, in this process (the loop retries a second
later on its own): counted, and logged one line a second at most, with no traceback."""


def _filter_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Route the loop's "socket.accept() out of system resource" reports (one, with a traceback,
    per failed accept of every server on the loop) to :data:`_accept_errors`; everything else goes
    where it went before."""
    previous = loop.get_exception_handler()
    if getattr(previous, "treedrive_accept_filter", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") == ACCEPT_OUT_OF_RESOURCES or (
            isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)
        ):
            now = time.monotonic()
            if _accept_errors.note("accepts failed (out of open files)", now):
                log.warning("cannot accept a connection: %s (retrying in a second)", exc)
            if (line := _accept_errors.summary(now)) is not None:
                log.warning("since the last line: %s", line)
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.treedrive_accept_filter = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


@dataclass(frozen=True, slots=True)
class _Post:
    host: str
    port: int
    message: Message


def _encode(message: Message) -> bytes:
    return codec.encode_message(wire.encode(message))


def raise_open_files_limit(cap: int = OPEN_FILES_CAP) -> int:
    """Raise this process's soft limit of open files to its hard limit (at most ``cap``);
    returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, exc)
        return soft
    return target


class TcpNetwork:
    """The :class:`treedrive.core.ports.Network` over asyncio TCP.

    Counters for benchmarks and the node: :meth:`stats` (and ``events.totals``, per kind)."""

    def __init__(self, host: str, port: int, limits: NetLimits | None = None) -> None:
        self.host = host
        self.port = port
        self.limits = limits or NetLimits()
        self._server: asyncio.Server | None = None
        self._handler: InboundHandler | None = None
        self._conns: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        """Every connection task not yet ended (close() ends them all)."""
        self._live: dict[asyncio.Task[None], ConnState] = {}
        """The connections that count against the cap (not those evicted and ending)."""
        self._closing = False
        self.download = RateLimiter()
        self.upload = RateLimiter()
        self._pool: ThreadPoolExecutor | None = None
        self._send_pool: ThreadPoolExecutor | None = None
        self._range_socks: set[socket.socket] = set()
        self._dials = asyncio.Semaphore(self.limits.max_dials)
        self._outbox: Outbox[_Post] = Outbox(self.limits.outbox_size)
        self._encodings: EncodeCache[Message] = EncodeCache(_encode, size=8)
        self._senders_tasks: list[asyncio.Task[None]] = []
        self._backoff = DialBackoff()
        self._probes: dict[tuple[str, int], asyncio.Future[bool]] = {}
        self._waiting: Counter[tuple[str, int]] = Counter()
        self.events = Tally(every=1.0, detail=0)
        """Admission and outbound events (refused, evicted, dropped...): one summary a second."""
        self.problems = Tally(every=1.0, detail=3)
        """Failed inbound connections: a few detail lines a second, then a summary."""
        self._housekeeping: asyncio.Task[None] | None = None
        self._old_exception_handler: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.bytes_sent = 0
        """Bytes of messages sent by send() and post() (not file uploads)."""
        self.bytes_uploaded = 0
        """Bytes of files sent (answers to GET_FILE, ranges and pushes)."""
        self.open_files_limit: int | None = None

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
            "outbox": len(self._outbox),
        }

    def _event(self, kind: str, n: int = 1) -> None:
        """Count an admission or outbound event; a summary line at most once a second."""
        self.events.note(kind, time.monotonic(), n)
        self._flush_events()

    def _flush_events(self) -> None:
        now = time.monotonic()
        if (line := self.events.summary(now)) is not None:
            log.warning("connections and messages, last second or so: %s", line)
        if (line := self.problems.summary(now)) is not None:
            log.warning("inbound connections that failed, not logged one by one: %s", line)

    def _problem(self, kind: str, level: int, msg: str, *args: Any, exc: bool = False) -> None:
        """A failed inbound connection: its own line if few came lately, else only counted."""
        if self.problems.note(kind, time.monotonic()):
            log.log(level, msg, *args, exc_info=exc)
        else:
            log.debug(msg, *args)
        self._flush_events()

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
        self.open_files_limit = raise_open_files_limit()
        _filter_accept_errors(asyncio.get_running_loop())
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
            self._flush_events()

    async def close(self) -> None:
        self._closing = True
        for task in [*self._senders_tasks, self._housekeeping]:
            if task is not None:
                task.cancel()
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
        if self._closing:
            writer.transport.abort()
            return
        now = time.monotonic()
        if len(self._live) >= self.limits.max_connections:
            victim = choose_victim(
                self._live.items(),
                now,
                self.limits.admission_grace,
                self.limits.min_push_rate,
            )
            if victim is None:
                writer.transport.abort()  # no FIN handshake to wait for, no socket kept
                self._event("connections refused at the cap")
                return
            self._evict(victim)
            self._event("slow connections closed for new ones")
        state = ConnState(now)
        task = asyncio.ensure_future(self._connection(reader, writer, state))
        self._conns[task] = writer
        self._live[task] = state
        task.add_done_callback(self._ended)

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

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: ConnState
    ) -> None:
        peer = writer.get_extra_info("peername")
        source = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        try:
            await self._serve_connection(reader, writer, source, state)
        except StorageError as exc:
            self._problem(
                "pushes dropped", logging.ERROR, "%s: a pushed file was dropped: %s", source, exc
            )
        except TimeoutError as exc:
            self._problem(
                "timed out",
                logging.WARNING,
                "%s: timed out (%s); dropped",
                source,
                exc or "no progress",
            )
        except (OSError, asyncio.IncompleteReadError) as exc:
            self._problem("failed", logging.WARNING, "%s: connection failed: %s", source, exc)
        except Exception:
            self._problem(
                "errors", logging.ERROR, "%s: error while handling a message", source, exc=True
            )
        finally:
            await _close(writer)

    def _push_min_rate(self) -> float | None:
        """The average rate an unasked-for body must keep: ``min_push_rate``, or half the
        download limit if that is lower (the limit itself slows the body down)."""
        rate = self.limits.min_push_rate or None
        if rate is not None and self.download.rate is not None:
            rate = min(rate, self.download.rate / 2)
        return rate

    async def _serve_connection(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        source: str,
        state: ConnState | None = None,
    ) -> None:
        handler = self._handler
        assert handler is not None
        stream = _Reader(reader, self.limits, state, self._push_min_rate())
        state = stream.state
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
                        self._problem(
                            "malformed",
                            logging.WARNING,
                            "%s: malformed message dropped: %s",
                            source,
                            event.reason,
                        )
                    return
                break
            # The message is whole: what is left is our work (a handler, an upload), and its
            # connection never gives way to a new one (an upload's stall timeout bounds it).
            state.protected = True
            try:
                message = wire.decode(event.fields)
            except wire.WireError as exc:
                self._problem(
                    "invalid", logging.WARNING, "%s: invalid message dropped: %s", source, exc
                )
                if event.fields.get("type") == "GET_FILE":
                    # Never leave a GET_FILE silent: the asker moves on to another holder.
                    writer.write(codec.encode_message(NOT_HERE))
                    await _drain(writer, self.limits)
                return
            if isinstance(message, GetFile):
                if "raw-range" not in handler.features:
                    await self._answer_get(writer, message, source)
                    return
                try:
                    wanted = wire.range_request(message.extra)
                except wire.WireError as exc:
                    self._problem(
                        "invalid", logging.WARNING, "%s: bad range dropped: %s", source, exc
                    )
                    writer.write(codec.encode_message(NOT_HERE))
                    await _drain(writer, self.limits)
                    return
                if wanted is None:
                    await self._answer_get(writer, message, source)
                else:
                    await self._answer_raw(writer, message, wanted, source)
            elif isinstance(message, FileData):
                try:
                    raw = wire.range_header(message.extra)
                except wire.WireError as exc:
                    self._problem(
                        "invalid", logging.WARNING, "%s: bad raw push dropped: %s", source, exc
                    )
                    return
                if sink is None and raw is not None and message.meta is not None:
                    sink = handler.open_sink()  # a raw push: the bytes follow the header
                    state.protected = False
                    await self._read_raw(stream, sink, raw.length)
                    state.protected = True
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
        self.bytes_uploaded += size
        progress.finish(True)
        log.info("served %s (%d bytes) to %s", meta.file_id[:12], size, source)

    async def _answer_raw(
        self,
        writer: asyncio.StreamWriter,
        request: GetFile,
        wanted: wire.RangeRequest,
        source: str,
    ) -> None:
        """A ranged GET_FILE: one JSON header, then exactly ``length`` raw bytes (sendfile)."""
        assert self._handler is not None
        found = self._handler.file_to_serve(request.file_id)
        if found is None:
            writer.write(codec.encode_message(NOT_HERE))
            await _drain(writer, self.limits)
            return
        meta, path = found
        size = path.stat().st_size
        offset = min(wanted.offset, size)
        length = size - offset if wanted.length is None else min(wanted.length, size - offset)
        ext_out = {"raw": True, "offset": offset, "length": length, "size": size}
        header = {"type": "FILE_DATA", **meta.wire(), "data": None, "treedrive": ext_out}
        writer.write(codec.encode_message(header))
        progress = self._handler.track_range(meta, wanted.asker or source, wanted.download, size)
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
        socket down). When the reader's buffer is full the worker returns, and the loop (not a
        thread) waits for room, at most ``upload_stall_timeout``: a reader that stops reading
        holds no thread, and its upload ends."""
        loop = asyncio.get_running_loop()
        await _drain_upload(writer, self.limits.upload_stall_timeout)
        raw = writer.get_extra_info("socket")
        if raw is None:
            raise OSError("the connection has no socket")
        sock = socket.socket(fileno=os.dup(raw.fileno()))
        self._range_socks.add(sock)

        def report(done: int) -> None:
            if progress is not None:
                loop.call_soon_threadsafe(progress, done)

        upload = _Upload(offset, length)
        try:
            with path.open("rb") as f:
                while True:
                    before = upload.sent
                    await loop.run_in_executor(
                        self._senders(), self._sendfile_some, sock, f.fileno(), upload, report
                    )
                    self.bytes_uploaded += upload.sent - before
                    if upload.sent >= length:
                        return
                    await self._writable(sock, path)
        finally:
            self._range_socks.discard(sock)
            sock.close()  # the duplicate; the transport closes the original

    async def _writable(self, sock: socket.socket, path: Path) -> None:
        """Wait until ``sock`` takes bytes again, at most ``upload_stall_timeout``."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        fd = sock.fileno()
        loop.add_writer(fd, wake)
        try:
            await asyncio.wait_for(ready, self.limits.upload_stall_timeout)
        except TimeoutError:
            raise TimeoutError(f"the peer stopped reading {path.name}") from None
        finally:
            loop.remove_writer(fd)

    def _sendfile_some(
        self, sock: socket.socket, fd: int, upload: _Upload, report: Callable[[int], None]
    ) -> None:
        """Send what the socket takes now (in a worker thread); return when it is full (EAGAIN)
        or the upload is done. The rate limit is taken a piece at a time, and kept in
        ``upload.credit`` across returns."""
        rate = self.upload.rate
        # Under a limit, about a tenth of a second's worth at a time: the bytes flow evenly.
        piece = max(MIN_PIECE, min(LIMITED_PIECE, int(rate / 10))) if rate else SEND_PIECE
        while upload.sent < upload.length:
            if upload.credit == 0:
                n = min(piece, upload.length - upload.sent)
                self.upload.acquire_blocking(n)
                upload.credit = n
            try:
                k = os.sendfile(sock.fileno(), fd, upload.offset + upload.sent, upload.credit)
            except BlockingIOError:
                return
            if k == 0:
                left = upload.length - upload.sent
                raise OSError(f"the file ended before its last {left} bytes")
            upload.sent += k
            upload.credit -= k
            if upload.credit == 0:
                report(upload.sent)

    async def _read_raw(self, stream: _Reader, sink: FileSink, length: int) -> None:
        """The raw bytes of a raw push: exactly ``length``, the first ones already read. They
        must keep coming (``idle_timeout``) and at ``min_push_rate`` on average."""
        state = stream.state
        state.body_started, state.body_received = time.monotonic(), 0
        first = stream.parser.trailing[:length]
        if first:
            _store(sink.write, first)
        min_rate = self._push_min_rate()
        while sink.size < length:
            timeout = self.limits.idle_timeout
            if min_rate:
                due = _rate_due(
                    state.body_started, state.body_received, min_rate, self.limits.push_rate_grace
                )
                timeout = min(timeout, due - time.monotonic())
                if timeout <= 0:
                    raise TimeoutError("the file's bytes came too slowly")
            data = await asyncio.wait_for(
                stream.reader.read(min(READ_SIZE, length - sink.size)), timeout
            )
            if not data:
                raise OSError(f"closed after {sink.size} of {length} raw bytes")
            state.received += len(data)
            state.body_received += len(data)
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
        """Deliver one message now (waiting for a dial slot); False if it was not delivered,
        also when ``host:port`` refused lately and is backing off."""
        async with self._dials:
            return await self._deliver(host, port, message)

    def post(self, host: str, port: int, message: Message) -> None:
        """Queue one message for delivery, without waiting (see ``Network.post``)."""
        if self._closing:
            return
        if not self._senders_tasks:
            self._senders_tasks = [
                asyncio.ensure_future(self._sender()) for _ in range(self.limits.max_dials)
            ]
        self.events.totals["posted"] += 1
        if self._outbox.put(_Post(host, port, message)) is not None:
            self._event("messages dropped (outbox full)")

    async def _sender(self) -> None:
        while True:
            post = await self._outbox.get()
            if not self._backoff.allowed((post.host, post.port), time.monotonic()) and not (
                self._backoff.probing((post.host, post.port))
            ):
                self._event("messages dropped (address refused lately)")
                continue
            async with self._dials:
                await self._deliver(post.host, post.port, post.message)

    async def _may_dial(self, address: tuple[str, int]) -> str | None:
        """Whether to dial ``address`` (see :class:`DialBackoff`): a probe, a free dial, or
        None. While a probe to it is out, a few dials wait for its outcome; the rest are not
        made."""
        while True:
            decision = self._backoff.take(address, time.monotonic())
            if decision is not None:
                if decision == PROBE:
                    self._probes[address] = asyncio.get_running_loop().create_future()
                return decision
            probe = self._probes.get(address)
            if probe is None or self._waiting[address] >= MAX_WAITING:
                return None
            self._waiting[address] += 1
            try:
                if not await asyncio.shield(probe):
                    return None
            finally:
                self._waiting[address] -= 1
                if not self._waiting[address]:
                    del self._waiting[address]

    def _probed(self, address: tuple[str, int], ok: bool) -> None:
        now = time.monotonic()
        if ok:
            self._backoff.succeeded(address)
        else:
            self._backoff.failed(address, now)
        probe = self._probes.pop(address, None)
        if probe is not None and not probe.done():
            probe.set_result(ok)

    async def _deliver(self, host: str, port: int, message: Message) -> bool:
        """Dial, write, close; under a dial slot. The message is encoded only now (and once for
        the same object posted to several addresses)."""
        address = (host, port)
        decision = await self._may_dial(address)
        if decision is None:
            self._event("messages dropped (address refused lately)")
            return False
        try:
            try:
                data = self._encodings.get(message)
            except (wire.WireError, ValueError, TypeError) as exc:
                log.error("cannot encode a %s for %s: %s", type(message).__name__, host, exc)
                return False
            try:
                _, writer = await self._connect(host, port)
            except (OSError, TimeoutError) as exc:
                self._probed(address, False)
                self._event("dials failed")
                log.debug("cannot reach %s:%d: %s", host, port, exc)
                return False
            self._probed(address, True)
        finally:
            if address in self._probes and self._backoff.probing(address):
                self._probed(address, False)  # cancelled, or could not encode: let others try
        try:
            writer.write(data)
            await _drain(writer, self.limits)
            self.bytes_sent += len(data)
            self.events.totals["sent"] += 1
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
                    self.bytes_uploaded += await _write_file_data(
                        writer, meta, path, self.limits, progress, self.upload
                    )
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
