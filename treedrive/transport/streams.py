"""Stream helpers around the sans-IO codec: reads under deadlines and a minimum rate, writes
that wait for the reader, streamed FILE_DATA, and writes of received bytes to disk.

Reads are bounded in size (the codec's limits) and in time: a whole control message must arrive
within ``control_timeout``; a file's bytes must keep coming, at most ``idle_timeout`` apart, and
a file pushed to us unasked must also keep ``min_push_rate`` on average. File bytes go straight
from the socket into the sink and from disk into the socket, hex-encoded in chunks: memory stays
flat whatever the file size.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from treedrive.core.errors import StorageError, TransferError
from treedrive.core.messages import FileData
from treedrive.core.model import FileMeta
from treedrive.core.ports import FileSink
from treedrive.transport import codec, wire
from treedrive.transport.admission import ConnState
from treedrive.transport.limits import NetLimits
from treedrive.transport.ratelimit import RateLimiter

READ_SIZE = 1024 * 1024
FILE_CHUNK = 512 * 1024  # raw bytes per write: 1 MiB of hex
WRITE_HIGH_WATER = 4 * 1024 * 1024
REPORT_BYTES = 1024 * 1024  # progress of bytes arriving: every MiB...
REPORT_EVERY = 0.25  # ... or every quarter of a second, whichever comes first

NOT_HERE = {"type": "FILE_DATA", **dict.fromkeys(wire.RECORD_KEYS), "data": None}
"""The answer to a GET_FILE for a file this node does not serve."""


class Unanswered(TransferError):
    """A server closed without sending a byte once it saw our half-close (see
    ``NetLimits.half_close_after``): it is asked again, without the half-close."""


def rate_due(started: float, got: int, rate: float, grace: float) -> float:
    """When a body that began at ``started`` and has ``got`` bytes falls under ``rate`` bytes/s
    on average (not before ``grace`` seconds) if nothing more comes."""
    return started + max(grace, got / rate)


class Reader:
    """Feeds a socket into a parser under the time limits, yielding codec events.

    Until the file bytes of a FILE_DATA begin, the whole message must arrive by ``deadline``;
    then each read must come within ``idle_timeout`` and, with ``min_rate``, the body must keep
    that average rate (after ``grace``, by default ``push_rate_grace``; see :meth:`paused` for
    time that does not count). ``state``, if given, is kept up to date for admission.

    ``nudge``, if set to ``(when, action)``: if no byte at all has come by ``when`` (monotonic),
    ``action`` runs once and the wait goes on under the same deadline (the dialer half-closes
    its side then: some classic servers answer only once they see EOF)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        limits: NetLimits,
        state: ConnState | None = None,
        min_rate: float | None = None,
        grace: float | None = None,
    ) -> None:
        self.reader = reader
        self.limits = limits
        self.parser = codec.MessageParser(limits.codec)
        self.deadline = time.monotonic() + limits.control_timeout
        self.streaming = False
        self.state = state if state is not None else ConnState(time.monotonic())
        self.min_rate = min_rate
        self.grace = limits.push_rate_grace if grace is None else grace
        self.nudge: tuple[float, Callable[[], None]] | None = None

    def paused(self, seconds: float) -> None:
        """``seconds`` of the body's time were this node's doing (its own rate limit): they do
        not count against the peer's rate."""
        if self.state.body_started is not None and seconds > 0:
            self.state.body_started += seconds

    async def first(self) -> bytes:
        """The connection's first bytes, read (under the message's deadline) but not parsed:
        the caller feeds them to :attr:`parser`, or finds a TLS handshake in them."""
        now = time.monotonic()
        timeout = min(self.limits.idle_timeout, self.deadline - now)
        if timeout <= 0:
            raise TimeoutError("the message did not arrive in time")
        try:
            data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
        except TimeoutError:
            raise TimeoutError("the message did not arrive in time") from None
        self.state.received += len(data)
        return data

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
            why = f"nothing came for {timeout:.0f} s"
            now = time.monotonic()
            if not self.streaming:
                if self.deadline - now < timeout:
                    timeout, why = self.deadline - now, "the message did not arrive in time"
            elif self.min_rate and state.body_started is not None:
                due = rate_due(state.body_started, state.body_received, self.min_rate, self.grace)
                if due - now < timeout:
                    timeout, why = due - now, "the file's bytes came too slowly"
            nudging = False
            if self.nudge is not None:
                if state.received:
                    self.nudge = None
                elif self.nudge[0] - now < timeout:
                    timeout, nudging = max(0.0, self.nudge[0] - now), True
            if timeout <= 0 and not nudging:
                raise TimeoutError(why)
            try:
                data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
            except TimeoutError:
                if nudging and self.nudge is not None:
                    action, self.nudge = self.nudge[1], None
                    action()
                    continue
                raise TimeoutError(why) from None
            state.received += len(data)
            if self.streaming:
                state.body_received += len(data)
            self.parser.receive_data(data)


class Reporter:
    """Progress of bytes arriving, passed on to ``update`` at most every ``REPORT_BYTES`` or
    ``REPORT_EVERY`` seconds (a call per chunk would cost the node an event each time);
    :meth:`flush` passes on the last count whatever it is."""

    def __init__(self, update: Callable[[int], None]) -> None:
        self.update = update
        self._reported = 0
        self._at = time.monotonic()

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if done - self._reported >= REPORT_BYTES or now - self._at >= REPORT_EVERY:
            self._reported, self._at = done, now
            self.update(done)

    def flush(self, done: int) -> None:
        self._reported, self._at = done, time.monotonic()
        self.update(done)


async def read_raw(
    stream: Reader,
    sink: FileSink,
    length: int,
    min_rate: float | None,
    download: RateLimiter,
    progress: Callable[[int], None] | None = None,
) -> bytes:
    """The raw bytes of a raw push: exactly ``length``, the first ones already read. They
    must keep coming (``idle_timeout``) and, with ``min_rate``, at that rate on average.
    ``progress`` is called with the bytes in ``sink`` after each write. Returns the bytes
    already read past them (the start of what follows: a streamed push's record)."""
    state = stream.state
    state.body_started, state.body_received = time.monotonic(), 0
    first, after = stream.parser.trailing[:length], stream.parser.trailing[length:]
    if first:
        store(sink.write, first)
        if progress is not None:
            progress(sink.size)
    while sink.size < length:
        timeout = stream.limits.idle_timeout
        why = f"nothing came for {timeout:.0f} s"
        if min_rate:
            due = rate_due(
                state.body_started, state.body_received, min_rate, stream.limits.push_rate_grace
            )
            if due - time.monotonic() < timeout:
                timeout, why = due - time.monotonic(), "the file's bytes came too slowly"
            if timeout <= 0:
                raise TimeoutError(why)
        try:
            data = await asyncio.wait_for(
                stream.reader.read(min(READ_SIZE, length - sink.size)), timeout
            )
        except TimeoutError:
            raise TimeoutError(why) from None
        if not data:
            raise OSError(f"closed after {sink.size} of {length} raw bytes")
        state.received += len(data)
        state.body_received += len(data)
        await download.acquire(len(data))
        store(sink.write, data)
        if progress is not None:
            progress(sink.size)
    return bytes(after)


async def drain(writer: asyncio.StreamWriter, limits: NetLimits) -> None:
    await asyncio.wait_for(writer.drain(), limits.send_timeout)


async def drain_upload(writer: asyncio.StreamWriter, stall: float) -> None:
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


def file_data_answer(fields: Mapping[str, Any]) -> FileData:
    """The answer to a GET_FILE, which must be a FILE_DATA (raises WireError, TransferError)."""
    answer = wire.decode(fields)
    if not isinstance(answer, FileData):
        raise TransferError(f"answered GET_FILE with {fields.get('type')!r}")
    return answer


async def write_file_data(
    writer: asyncio.StreamWriter,
    meta: FileMeta,
    path: Path,
    limits: NetLimits,
    progress: Callable[[int], None] | None = None,
    limiter: RateLimiter | None = None,
) -> int:
    """Write a FILE_DATA for ``meta`` with the bytes at ``path`` hex-encoded; returns the size."""
    writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
    writer.write(codec.encode_file_data_head(wire.encode(FileData(meta))))
    sent = 0
    with path.open("rb") as f:
        while block := f.read(FILE_CHUNK):
            if limiter is not None:
                await limiter.acquire(len(block))
            writer.write(codec.encode_data_chunk(block))
            sent += len(block)
            await drain_upload(writer, limits.upload_stall_timeout)
            if progress is not None:
                progress(sent)
    writer.write(codec.FILE_DATA_TAIL)
    await drain_upload(writer, limits.upload_stall_timeout)
    return sent


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 2)


def store(write: Callable[..., None], *args: Any) -> None:
    """A write of received bytes to this node's disk: its failure is ours, not the peer's."""
    try:
        write(*args)
    except OSError as exc:
        raise StorageError(f"cannot write the file to disk: {exc.strerror or exc}") from exc


def timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1e6))


class Workers:
    """A thread pool started on first use, and the sockets its workers block on: ``close()``
    shuts those sockets down (a blocked ``recv``/``sendfile`` returns at once) and the pool."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self.socks: set[socket.socket] = set()
        self._pool: ThreadPoolExecutor | None = None

    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.size, thread_name_prefix=self.name)
        return self._pool

    def close(self) -> None:
        for sock in list(self.socks):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
