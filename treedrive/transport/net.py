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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from treedrive.core.errors import TransferError
from treedrive.core.messages import FileData, GetFile, Message
from treedrive.core.model import FileMeta
from treedrive.core.ports import FileSink, InboundHandler
from treedrive.transport import codec, wire

log = logging.getLogger(__name__)

READ_SIZE = 1024 * 1024
FILE_CHUNK = 512 * 1024  # raw bytes per write: 1 MiB of hex
WRITE_HIGH_WATER = 4 * 1024 * 1024

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


async def _write_file_data(
    writer: asyncio.StreamWriter,
    meta: FileMeta,
    path: Path,
    limits: NetLimits,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write a FILE_DATA for ``meta`` with the bytes at ``path`` hex-encoded; returns the size."""
    writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
    writer.write(codec.encode_file_data_head({"type": "FILE_DATA", **meta.wire()}))
    sent = 0
    with path.open("rb") as f:
        while block := f.read(FILE_CHUNK):
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
        self._dials = asyncio.Semaphore(self.limits.max_dials)

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
            self._server.close()
        for task, writer in list(self._conns.items()):
            task.cancel()
            writer.close()
        if self._conns:
            await asyncio.wait(list(self._conns), timeout=5)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)

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
                    sink.write(event.data)
                    continue
                if isinstance(event, codec.ProtocolError):
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
                await self._answer_get(writer, message, source)
            elif isinstance(message, FileData):
                if sink is None and event.fields.get("data") is True:
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
            size = await _write_file_data(writer, meta, path, self.limits, progress.update)
        except BaseException as exc:
            progress.finish(False, str(exc) or type(exc).__name__)
            raise
        progress.finish(True)
        log.info("served %s (%d bytes) to %s", meta.file_id[:12], size, source)

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
    ) -> bool:
        async with self._dials:
            try:
                _, writer = await self._connect(host, port)
            except (OSError, TimeoutError) as exc:
                log.warning("cannot push to %s:%d: %s", host, port, exc)
                return False
            try:
                await _write_file_data(writer, meta, path, self.limits, progress)
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
                        sink.write(event.data)
                        if progress is not None:
                            progress(sink.size)
                    elif isinstance(event, codec.ProtocolError):
                        raise TransferError(f"malformed answer: {event.reason}")
                    else:
                        # Stop at the end of the object: never wait for the peer to close.
                        break
                answer = wire.decode(event.fields)
                if not isinstance(answer, FileData):
                    raise TransferError(f"answered GET_FILE with {event.fields.get('type')!r}")
                return answer
            except wire.WireError as exc:
                raise TransferError(f"invalid answer: {exc}") from exc
            except TimeoutError as exc:
                raise TransferError("timed out waiting for the file's bytes") from exc
            except OSError as exc:
                raise TransferError(f"connection failed: {exc}") from exc
            finally:
                await _close(writer)
