"""The upload side of a TCP node: answers to GET_FILE (hex-encoded, or a raw range) and the
bytes of a file it pushes.

Raw bytes go out with ``sendfile`` in worker threads, on a duplicate of the socket, so that the
event loop takes no part in moving them. A worker returns as soon as the reader's buffer is
full, and the loop (not a thread) waits for room, at most ``upload_stall_timeout``: a reader
that stops reading holds no thread, and its upload ends."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from treedrive.core.messages import GetFile
from treedrive.core.model import FileMeta
from treedrive.core.ports import GrowingFile, InboundHandler
from treedrive.transport import codec
from treedrive.transport.extension import (
    RangeHeader,
    RangeRequest,
    push_trailer,
    raw_file_data,
    stream_push,
)
from treedrive.transport.filereader import FileReader, ReadAt
from treedrive.transport.limits import NetLimits
from treedrive.transport.ratelimit import RateLimiter
from treedrive.transport.secureconn import SecureConn, crypto
from treedrive.transport.securestream import SecureStream
from treedrive.transport.streams import NOT_HERE, Workers, drain, drain_upload, write_file_data

log = logging.getLogger(__name__)

SEND_PIECE = 4 * 1024 * 1024  # raw bytes per sendfile call (progress and rate-limit steps)
LIMITED_PIECE = 256 * 1024  # at most this when a rate limit is set
MIN_PIECE = 16 * 1024
SEND_WORKERS = 32  # raw uploads moving bytes at once (a stalled one waits on the loop)


FULL_WAIT = 0.05
"""Seconds a TLS upload's worker waits for room in a full socket before it hands the wait back
to the loop: the encryption goes on as soon as the reader takes bytes, without a trip through
the loop (with ``sendfile`` the kernel moves the bytes, and that trip costs little)."""
STARVED_WAIT = 0.25
"""Seconds a worker waits for more bytes of a file still being written before it hands the
wait back to the loop."""


@dataclass(slots=True)
class Upload:
    """A raw upload under way: where it stands, and rate-limit budget taken but not yet sent.
    ``source``: the file is still being written (a streamed push): bytes are sent as they land."""

    offset: int
    length: int
    sent: int = 0
    credit: int = 0
    source: GrowingFile | None = None
    starved: bool = False
    """The worker returned because no new bytes were written for a while."""


class Uploader:
    """Sends files: owns the pool of sendfile workers and the sockets they write to (which
    :meth:`close` shuts down), and counts the bytes of files sent in ``bytes_uploaded``."""

    def __init__(self, limits: NetLimits, upload: RateLimiter) -> None:
        self.limits = limits
        self.upload = upload
        self.bytes_uploaded = 0
        """Bytes of files sent (answers to GET_FILE, ranges and pushes)."""
        self._workers = Workers(SEND_WORKERS, "range-out")

    def close(self) -> None:
        """Cut off the raw uploads under way (their workers return at once)."""
        self._workers.close()

    async def answer_get(
        self,
        writer: asyncio.StreamWriter,
        handler: InboundHandler,
        request: GetFile,
        source: str,
    ) -> None:
        """A classic GET_FILE: a FILE_DATA with the file's bytes hex-encoded, or "not here"."""
        found = handler.file_to_serve(request.file_id)
        if found is None:
            writer.write(codec.encode_message(NOT_HERE))
            await drain(writer, self.limits)
            return
        meta, path = found
        progress = handler.track_upload(meta, source, path.stat().st_size)
        try:
            size = await write_file_data(
                writer, meta, path, self.limits, progress.update, self.upload
            )
        except BaseException as exc:
            progress.finish(False, str(exc) or type(exc).__name__)
            raise
        self.bytes_uploaded += size
        progress.finish(True)
        log.info("served %s (%d bytes) to %s", meta.file_id[:12], size, source)

    async def answer_raw(
        self,
        writer: asyncio.StreamWriter,
        handler: InboundHandler,
        request: GetFile,
        wanted: RangeRequest,
        source: str,
        secure: SecureConn | None = None,
    ) -> None:
        """A ranged GET_FILE: one JSON header, then exactly ``length`` raw bytes (sendfile;
        over TLS, ``secure``: encrypted in the workers)."""
        found = handler.file_to_serve(request.file_id)
        if found is None:
            await self.say(writer, codec.encode_message(NOT_HERE), secure)
            return
        meta, path = found
        size = path.stat().st_size
        offset = min(wanted.offset, size)
        length = size - offset if wanted.length is None else min(wanted.length, size - offset)
        header = codec.encode_message(raw_file_data(meta, RangeHeader(offset, length, size)))
        if secure is None:
            writer.write(header)
        else:
            await crypto(secure.stream.queue, header)
        progress = handler.track_range(meta, wanted.asker or source, wanted.download, size)
        try:
            await self.send_raw(writer, path, offset, length, progress.update, secure)
        except BaseException as exc:
            progress.finish(False, str(exc) or type(exc).__name__)
            raise
        progress.finish(True)

    async def say(
        self, writer: asyncio.StreamWriter, data: bytes, secure: SecureConn | None
    ) -> None:
        """Send a control message (over TLS: encrypted in a worker)."""
        if secure is None:
            writer.write(data)
            await drain(writer, self.limits)
        else:
            await secure.send(data, self._writable)

    async def push(
        self,
        writer: asyncio.StreamWriter,
        meta: FileMeta,
        path: Path,
        progress: Callable[[int], None] | None,
        raw: bool,
        sender: str | None = None,
        secure: SecureConn | None = None,
    ) -> None:
        """Push a file unasked on a connection just made: a raw header (naming ``sender``, our
        peer id, for the receiver's display) and the raw bytes (over TLS with ``secure``), or a
        classic hex-encoded FILE_DATA."""
        if raw:
            size = os.stat(path).st_size
            header = codec.encode_message(raw_file_data(meta, RangeHeader(0, size, size, sender)))
            if secure is None:
                writer.write(header)
            else:
                await crypto(secure.stream.queue, header)
            await self.send_raw(writer, path, 0, size, progress, secure)
        else:
            self.bytes_uploaded += await write_file_data(
                writer, meta, path, self.limits, progress, self.upload
            )

    async def push_stream(
        self,
        writer: asyncio.StreamWriter,
        source: GrowingFile,
        size: int,
        record: Awaitable[FileMeta | None],
        progress: Callable[[int], None] | None,
        sender: str | None = None,
        secure: SecureConn | None = None,
    ) -> bool:
        """A streamed push (PROTOCOL.md 2.4) on a connection just made: the header, the bytes
        of ``source`` as they are written, then the record ``record`` gives (None: called off,
        the connection is closed without it; False). Over TLS with ``secure``."""
        record = asyncio.ensure_future(record)
        header = codec.encode_message(stream_push(RangeHeader(0, size, size, sender, stream=True)))
        if secure is None:
            writer.write(header)
        else:
            await crypto(secure.stream.queue, header)
        upload = Upload(0, size, source=source)
        called_off = lambda: _called_off(record)  # noqa: E731
        await self._send(
            writer, (source.fileno(), source.read_into), upload, progress, called_off, secure
        )
        meta = await record
        if meta is None:
            return False
        await self.say(writer, codec.encode_message(push_trailer(meta)), secure)
        return True

    async def send_raw(
        self,
        writer: asyncio.StreamWriter,
        path: Path,
        offset: int,
        length: int,
        progress: Callable[[int], None] | None,
        secure: SecureConn | None = None,
    ) -> None:
        """``length`` bytes of ``path`` from ``offset`` on, after what ``writer`` already holds:
        ``sendfile`` in a worker thread, on a duplicate of the socket, so that the event loop
        takes no part in moving the bytes (and ``close()`` can cut it off by shutting the
        socket down). When the reader's buffer is full the worker returns, and the loop (not a
        thread) waits for room, at most ``upload_stall_timeout``: a reader that stops reading
        holds no thread, and its upload ends. Over TLS (``secure``) the worker encrypts
        (``SecureStream.send_file_some``) in place of ``sendfile``, the same way."""
        with FileReader(path) as f:
            upload = Upload(offset, length)
            await self._send(writer, (f.fileno(), f), upload, progress, path.name, secure)

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        file: tuple[int, ReadAt],
        upload: Upload,
        progress: Callable[[int], None] | None,
        name: str | Callable[[], str | None],
        secure: SecureConn | None = None,
    ) -> None:
        """:meth:`send_raw` of an open file (its descriptor for ``sendfile``, and its reader
        when the bytes are encrypted). ``name``: the file's, for errors; or, for a file
        still being written, a function that says why to stop waiting for it (None: wait on)."""
        loop = asyncio.get_running_loop()
        await drain_upload(writer, self.limits.upload_stall_timeout)
        raw = writer.get_extra_info("socket")
        if secure is not None:
            sock = secure.sock  # its own duplicate, closed with it
        elif raw is None:
            raise OSError("the connection has no socket")
        else:
            sock = socket.socket(fileno=os.dup(raw.fileno()))
        self._workers.socks.add(sock)
        stream = None if secure is None else secure.stream

        def report(done: int) -> None:
            if progress is not None:
                loop.call_soon_threadsafe(progress, done)

        try:
            while True:
                before = upload.sent
                await loop.run_in_executor(
                    self._workers.pool(), self._sendfile_some, sock, file, upload, report, stream
                )
                self.bytes_uploaded += upload.sent - before
                if upload.sent >= upload.length and (stream is None or not stream.unsent):
                    return
                if not upload.starved:
                    await self._writable(sock, name if isinstance(name, str) else "a push")
                elif not isinstance(name, str) and (why := name()) is not None:
                    raise OSError(why)
        finally:
            self._workers.socks.discard(sock)
            if secure is None:
                sock.close()  # the duplicate; the transport closes the original

    async def _writable(self, sock: socket.socket, name: str) -> None:
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
            raise TimeoutError(f"the peer stopped reading {name}") from None
        finally:
            loop.remove_writer(fd)

    def _sendfile_some(
        self,
        sock: socket.socket,
        file: tuple[int, ReadAt],
        upload: Upload,
        report: Callable[[int], None],
        stream: SecureStream | None = None,
    ) -> None:
        """Send what the socket takes now (in a worker thread); return when it is full (EAGAIN)
        or the upload is done. The rate limit is taken a piece at a time, and kept in
        ``upload.credit`` across returns. Over TLS (``stream``), encrypted and sent by
        ``send_file_some`` (what the socket does not take waits in ``stream.unsent``)."""
        if stream is not None and not _flushed(stream):
            return
        rate = self.upload.rate
        # Under a limit, about a tenth of a second's worth at a time: the bytes flow evenly.
        piece = max(MIN_PIECE, min(LIMITED_PIECE, int(rate / 10))) if rate else SEND_PIECE
        upload.starved = False
        while upload.sent < upload.length:
            count = upload.length - upload.sent
            if upload.source is not None:  # only what is written so far
                written = upload.source.ready(upload.offset + upload.sent + 1, STARVED_WAIT)
                count = min(count, written - upload.offset - upload.sent)
                if count <= 0:
                    upload.starved = True
                    return
            if upload.credit == 0:
                n = min(piece, upload.length - upload.sent)
                self.upload.acquire_blocking(n)
                upload.credit = n
            if stream is not None:
                k = stream.send_file_some(
                    file[1], upload.offset + upload.sent, min(upload.credit, count)
                )
                if k == 0:  # the socket is full
                    if not _flushed(stream):  # and stays full: the loop waits on
                        return
                    continue
            else:
                try:
                    k = os.sendfile(
                        sock.fileno(),
                        file[0],
                        upload.offset + upload.sent,
                        min(upload.credit, count),
                    )
                except BlockingIOError:
                    return
            if k == 0:
                left = upload.length - upload.sent
                raise OSError(f"the file ended before its last {left} bytes")
            upload.sent += k
            upload.credit -= k
            if upload.credit == 0:
                report(upload.sent)


def _flushed(stream: SecureStream) -> bool:
    """Send the ciphertext kept back, waiting for room up to :data:`FULL_WAIT` seconds at a time
    (a worker); False if the socket stays full that long (the loop waits on)."""
    poller = select.poll()
    poller.register(stream.sock.fileno(), select.POLLOUT)
    while not stream.flush_some():
        if not poller.poll(int(FULL_WAIT * 1000)):
            return False
    return True


def _called_off(record: asyncio.Future[FileMeta | None]) -> str | None:
    """Why a streamed push stops before its bytes are all written: its record will never come."""
    if not record.done():
        return None
    if record.cancelled() or record.exception() is not None or record.result() is None:
        return "the push was called off before its bytes were all written"
    return None
