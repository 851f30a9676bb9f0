"""Serving one incoming connection: read its one message, then answer it.

A GET_FILE is answered by the :class:`~treedrive.transport.uploader.Uploader` (whole, or a raw
range); a FILE_DATA unasked (a push) is read, its raw body too, into a sink of the handler's and
handed to it; any other message goes to the handler. Reads are bounded in size (the codec's
limits) and in time (see :mod:`treedrive.transport.streams`). A connection's
:class:`~treedrive.transport.admission.ConnState` tells admission how far it got: protected once
its message is whole, except while a raw push body arrives. A connection that fails is counted
and logged (see :class:`~treedrive.transport.counters.Counters`), never raised.

The listener and admission are :class:`treedrive.transport.net.TcpNetwork`'s, which owns one
:class:`Serving`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from treedrive.core.errors import StorageError
from treedrive.core.forwarding import settle
from treedrive.core.messages import RAW_RANGE, FileData, GetFile, Message
from treedrive.core.model import FileMeta
from treedrive.core.ports import FileSink, InboundHandler
from treedrive.transport import codec, inbound, wire
from treedrive.transport.admission import ConnState
from treedrive.transport.counters import Counters
from treedrive.transport.extension import push_header, range_request
from treedrive.transport.limits import NetLimits
from treedrive.transport.progress import Arriving, UploadReports, push_failure
from treedrive.transport.ratelimit import RateLimiter
from treedrive.transport.secure import NodeTLS
from treedrive.transport.secureconn import SecureConn, is_tls, refusal
from treedrive.transport.streams import NOT_HERE, Reader, Reporter, close_writer
from treedrive.transport.uploader import Uploader

__all__ = ["Serving"]

log = logging.getLogger(__name__)


class Serving:
    """Serves incoming connections, one message each, for the handler given at start."""

    def __init__(
        self, limits: NetLimits, counters: Counters, uploader: Uploader, download: RateLimiter
    ) -> None:
        self.limits = limits
        """Replaced with the network's (see ``TcpNetwork.limits``)."""
        self.counters = counters
        self.uploader = uploader
        self.download = download
        self.handler: InboundHandler | None = None
        """Set when the network starts, before any connection is served."""
        self.tls: NodeTLS | None = None
        """The node's TLS contexts when it takes encrypted connections (set at the start)."""

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: ConnState
    ) -> None:
        """Serve one connection, then close it; its failures are counted and logged."""
        peer = writer.get_extra_info("peername")
        source = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        problem = self.counters.problem
        try:
            await self._serve_connection(reader, writer, source, state)
        except StorageError as exc:
            problem(
                "pushes dropped", logging.ERROR, "%s: a pushed file was dropped: %s", source, exc
            )
        except TimeoutError as exc:
            problem(
                "timed out",
                logging.WARNING,
                "%s: timed out (%s); dropped",
                source,
                exc or "no progress",
            )
        except (OSError, asyncio.IncompleteReadError) as exc:
            problem("failed", logging.WARNING, "%s: connection failed: %s", source, exc)
        except Exception:
            problem("errors", logging.ERROR, "%s: error while handling a message", source, exc=True)
        finally:
            await close_writer(writer)

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
        handler = self.handler
        assert handler is not None
        stream = Reader(reader, self.limits, state, self._push_min_rate())
        secure: SecureConn | None = None
        if self.tls is not None:  # a TLS connection (PROTOCOL.md 2.9), told by its first byte
            first = await stream.first()
            if is_tls(first):
                secure = await SecureConn.open(self.tls, writer, first, stream)
            else:
                stream.parser.receive_data(first)
        # A push's sink and progress (see InboundHandler.track_push): failed here if the body
        # is not whole, else handed to the handler with the file, which finishes it.
        push = Arriving()
        try:
            if secure is None:
                event = await self._read_message(stream, handler, push, source)
            else:
                event = await self._read_secure(secure, stream, handler, source)
            if event is None:
                return
            # The message is whole: what is left is our work (a handler, an upload), and its
            # connection never gives way to a new one (an upload's stall timeout bounds it).
            stream.state.protected = True
            message = await self._decode(event.fields, writer, push, source, secure)
            if isinstance(message, GetFile):
                await self._answer_get(
                    writer, handler, message, event.fields, stream, source, secure
                )
            elif isinstance(message, FileData):
                await self._take_push(
                    writer, handler, message, event.fields, stream, push, source, secure
                )
            elif message is not None:
                await handler.handle_message(message, source)
        except BaseException as exc:
            push.why = push_failure(exc)
            raise
        finally:
            push.end(source)
            if secure is not None:
                secure.close()

    async def _read_secure(
        self, secure: SecureConn, stream: Reader, handler: InboundHandler, source: str
    ) -> codec.Message | None:
        """The one message of a TLS connection, if it is an extension request (a ranged
        GET_FILE, a raw or streamed push) whose claimed peer id (``from``) is pinned to the key
        the client proved; else None (one rate-limited log line)."""
        event = await secure.read_message(stream.parser, stream.deadline)
        why: str | None = "not one message"
        if isinstance(event, codec.ProtocolError):
            why = f"malformed: {event.reason}"
        elif isinstance(event, codec.Message):
            why = refusal(event.fields, secure.peer_key, handler.pinned_key)
        if why is None and isinstance(event, codec.Message):
            self.counters.events.totals["tls served"] += 1
            return event
        self.counters.problem(
            "refused over TLS", logging.WARNING, "%s: TLS connection refused: %s", source, why
        )
        return None

    async def _read_message(
        self, stream: Reader, handler: InboundHandler, push: Arriving, source: str
    ) -> codec.Message | None:
        """The whole message (a classic push's bytes go to ``push`` as they come); None if it
        is malformed (logged)."""
        while True:
            event = await stream.next()
            if isinstance(event, codec.DataChunk):
                push.hex_chunk(handler, stream.parser, source, event.data)
            elif isinstance(event, codec.ProtocolError):
                push.why = f"malformed: {event.reason}"
                if stream.parser.bytes_received == 0:
                    log.debug("%s: closed without sending anything", source)
                else:
                    self.counters.problem(
                        "malformed",
                        logging.WARNING,
                        "%s: malformed message dropped: %s",
                        source,
                        event.reason,
                    )
                return None
            else:
                return event

    async def _decode(
        self,
        fields: dict[str, Any],
        writer: asyncio.StreamWriter,
        push: Arriving,
        source: str,
        secure: SecureConn | None = None,
    ) -> Message | None:
        """The message, or None if it is invalid (logged; a GET_FILE is told "not here")."""
        try:
            return wire.decode(fields)
        except wire.WireError as exc:
            push.why = f"invalid: {exc}"
            self.counters.problem(
                "invalid", logging.WARNING, "%s: invalid message dropped: %s", source, exc
            )
            if fields.get("type") == "GET_FILE":
                # Never leave a GET_FILE silent: the asker moves on to another holder.
                await self.uploader.say(writer, codec.encode_message(NOT_HERE), secure)
            return None

    async def _answer_get(
        self,
        writer: asyncio.StreamWriter,
        handler: InboundHandler,
        message: GetFile,
        fields: dict[str, Any],
        stream: Reader,
        source: str,
        secure: SecureConn | None = None,
    ) -> None:
        """An upload: protected only up to a share of the cap (then the slowest gives way)."""
        stream.state.upload_started = time.monotonic()
        handler = UploadReports(handler, stream.state)
        try:
            wanted = range_request(fields) if RAW_RANGE in handler.features else None
        except wire.WireError as exc:
            self.counters.problem(
                "invalid", logging.WARNING, "%s: bad range dropped: %s", source, exc
            )
            await self.uploader.say(writer, codec.encode_message(NOT_HERE), secure)
            return
        if wanted is None:
            await self.uploader.answer_get(writer, handler, message, source)
        else:
            await self.uploader.answer_raw(writer, handler, message, wanted, source, secure)

    async def _take_push(
        self,
        writer: asyncio.StreamWriter,
        handler: InboundHandler,
        message: FileData,
        fields: dict[str, Any],
        stream: Reader,
        push: Arriving,
        source: str,
        secure: SecureConn | None = None,
    ) -> None:
        """A FILE_DATA unasked: its raw body, if it has one, is read now; then the file (or
        "not here") is the handler's."""
        try:
            raw = push_header(fields)
        except wire.WireError as exc:
            push.why = f"invalid: {exc}"
            self.counters.problem(
                "invalid", logging.WARNING, "%s: bad raw push dropped: %s", source, exc
            )
            return
        if push.sink is None and raw is not None and raw.stream and message.meta is None:
            # A streamed push (PROTOCOL.md 2.4): the bytes, then their record.
            push.sink = handler.open_sink()
            stream.state.protected = False
            rate = self._push_min_rate()
            if secure is None:
                after = await inbound.read_raw(
                    stream, writer, push.sink, raw.length, rate, self.download
                )
            else:
                after = await secure.read_raw(stream, push.sink, raw.length, rate, self.download)
            async with _settling(push.sink):
                record = await self._trailer(stream, after, push, source, secure)
            stream.state.protected = True
            if record is None:
                return
            message = FileData(meta=record)
            push.progress = handler.track_push(record, source, raw.sender, push.sink.size)
        elif push.sink is None and raw is not None and message.meta is not None:
            push.sink = handler.open_sink()  # a raw push: the bytes follow the header
            push.progress = handler.track_push(message.meta, source, raw.sender, raw.length)
            push.report = Reporter(push.progress.update)
            stream.state.protected = False
            if secure is None:
                await inbound.read_raw(
                    stream, writer, push.sink, raw.length, self._push_min_rate(), self.download,
                    push.report,
                )  # fmt: skip
            else:
                await secure.read_raw(
                    stream, push.sink, raw.length, self._push_min_rate(), self.download,
                    push.report,
                )  # fmt: skip
            stream.state.protected = True
        elif push.sink is None and fields.get("data") is True:
            push.sink = handler.open_sink()  # an empty file
        if push.sink is not None and message.meta is not None:
            if push.progress is None:
                # Not tracked while it arrived (its record did not come before its bytes, or
                # it had none): tracked now, whole, so that it is seen.
                push.progress = handler.track_push(message.meta, source, None, push.sink.size)
            push.progress.update(push.sink.size)
        pushed, progress = push.handed()
        await handler.handle_pushed_file(message, pushed, source, progress)

    async def _trailer(
        self,
        body: Reader,
        after: bytes,
        push: Arriving,
        source: str,
        secure: SecureConn | None = None,
    ) -> FileMeta | None:
        """The record that ends a streamed push, read after its bytes (``after``: those of
        it already read); None if it never comes or is not a record (logged)."""
        stream = Reader(body.reader, self.limits, body.state)
        if after:
            stream.parser.receive_data(after)
        if secure is None:
            event = await stream.next()
        else:
            event = await secure.read_message(stream.parser, stream.deadline)
        if isinstance(event, codec.ProtocolError) and stream.parser.bytes_received == 0:
            push.why = "the pusher called it off"
            log.debug("%s: a streamed push was called off before its record", source)
            return None
        try:
            if isinstance(event, codec.ProtocolError):
                raise wire.WireError(f"malformed: {event.reason}")
            if isinstance(event, codec.DataChunk):
                raise wire.WireError("the record of a streamed push carries data")
            return wire.trailer_record(event.fields)
        except wire.WireError as exc:
            push.why = f"invalid: {exc}"
            self.counters.problem(
                "invalid", logging.WARNING, "%s: bad streamed push dropped: %s", source, exc
            )
            return None


@contextlib.asynccontextmanager
async def _settling(sink: FileSink) -> AsyncIterator[None]:
    """While the record of a streamed push is awaited, threads finish hashing its bytes and
    sync them (:func:`~treedrive.core.forwarding.settle`): once the record comes, verifying and
    adopting them has little left to do (the pusher, which hashes the same bytes, sends it
    once its own hash is done). They are always waited for, so that the sink is never dropped
    under them; a disk error drops the push."""
    job = asyncio.ensure_future(settle(sink))
    try:
        yield
    finally:
        await _join(job)
    job.result()  # a disk error, if there was one


async def _join(job: asyncio.Future[None]) -> None:
    """Wait until ``job`` (threads') is done, through cancellations too (it ends by itself,
    soon: the bytes it hashes are all in), then go on with the cancellation if there was one.
    Its outcome is read, so never reported as unread."""
    cancelled = False
    while not job.done():
        try:
            await asyncio.wait([job])
        except asyncio.CancelledError:
            cancelled = True
    if not job.cancelled():
        job.exception()
    if cancelled:
        raise asyncio.CancelledError
