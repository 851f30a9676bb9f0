"""The outbound side of a TCP node: messages sent now or posted to a bounded outbox, files
pushed, files fetched whole (hex-encoded).

Every outbound connection takes a slot of ``max_dials`` while it connects (a message: until it is
delivered; a transfer gives its slot back once connected, so that slow transfers never hold up
gossip). Posted messages wait in an
:class:`~treedrive.transport.outbox.Outbox` (when full, the oldest is dropped) for one of
``max_dials`` senders; each is encoded only when sent, and once for the same object posted to
several addresses. An address that refuses is dialed at most a few times a minute
(:class:`~treedrive.transport.admission.DialBackoff`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from treedrive.core.errors import StorageError, TransferError
from treedrive.core.messages import FileData, GetFile, Message
from treedrive.core.model import FileMeta
from treedrive.core.ports import FileSink, GrowingFile
from treedrive.transport import codec, wire
from treedrive.transport.admission import FREE, PROBE, DialBackoff
from treedrive.transport.counters import Counters
from treedrive.transport.limits import NetLimits
from treedrive.transport.outbox import EncodeCache, Outbox
from treedrive.transport.ratelimit import RateLimiter
from treedrive.transport.secure import NodeTLS
from treedrive.transport.secureconn import SecureConn
from treedrive.transport.streams import (
    READ_SIZE,
    Reader,
    Unanswered,
    close_writer,
    drain,
    file_data_answer,
    store,
)
from treedrive.transport.uploader import Uploader

log = logging.getLogger(__name__)

MAX_WAITING = 4  # dials waiting for the outcome of a probe to their address; more are dropped


@dataclass(frozen=True, slots=True)
class Post:
    host: str
    port: int
    message: Message


def encode(message: Message) -> bytes:
    return codec.encode_message(wire.encode(message))


class Dialer:
    """Outbound connections: ``dials`` (shared with the ranged client) bounds how many are
    being made at once (transfers hold a slot only while they connect). Counts ``posted``,
    ``sent`` and drops in ``counters``, and the bytes of messages sent in ``bytes_sent``."""

    def __init__(
        self,
        limits: NetLimits,
        counters: Counters,
        uploader: Uploader,
        download: RateLimiter,
        chosen: frozenset[tuple[str, int]] = frozenset(),
    ) -> None:
        self.limits = limits
        self.chosen = chosen
        """Addresses the node's owner configured (the bootstrap hosts): dialed whenever the
        node asks, without the back-off that keeps strangers from aiming the node's dials at an
        address (the node retries them on its own schedule and reports their failures)."""
        self.counters = counters
        self.uploader = uploader
        self.download = download
        self.dials = asyncio.Semaphore(limits.max_dials)
        self.outbox: Outbox[Post] = Outbox(limits.outbox_size)
        self.encodings: EncodeCache[Message] = EncodeCache(encode, size=8)
        self._senders_tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._backoff = DialBackoff()
        self._probes: dict[tuple[str, int], asyncio.Future[bool]] = {}
        self._waiting: Counter[tuple[str, int]] = Counter()
        self.bytes_sent = 0
        """Bytes of messages sent by send() and post() (not file uploads)."""
        self.tls: NodeTLS | None = None
        """The node's TLS contexts when it pushes over TLS (set at the start)."""

    def heard(self, address: tuple[str, int]) -> None:
        """See :meth:`DialBackoff.heard` (``Network.reachable``)."""
        self._backoff.heard(address)

    def close(self) -> None:
        """Post nothing more, and stop the senders (what is still in the outbox is dropped)."""
        self._closing = True
        for task in self._senders_tasks:
            task.cancel()

    async def connect(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=READ_SIZE), self.limits.connect_timeout
        )

    async def send(self, host: str, port: int, message: Message) -> bool:
        """Deliver one message now (waiting for a dial slot); False if it was not delivered,
        also when ``host:port`` refused lately and is backing off."""
        async with self.dials:
            return await self._deliver(host, port, message)

    def post(self, host: str, port: int, message: Message) -> None:
        """Queue one message for delivery, without waiting (see ``Network.post``)."""
        if self._closing:
            return
        if not self._senders_tasks:
            self._senders_tasks = [
                asyncio.ensure_future(self._sender()) for _ in range(self.limits.max_dials)
            ]
        self.counters.events.totals["posted"] += 1
        if self.outbox.put(Post(host, port, message)) is not None:
            self.counters.event("messages dropped (outbox full)")

    async def _sender(self) -> None:
        while True:
            post = await self.outbox.get()
            address = (post.host, post.port)
            if (
                address not in self.chosen
                and not self._backoff.allowed(address, time.monotonic())
                and not self._backoff.probing(address)
            ):
                self.counters.event("messages dropped (address refused lately)")
                continue
            async with self.dials:
                await self._deliver(post.host, post.port, post.message)

    async def _may_dial(self, address: tuple[str, int]) -> str | None:
        """Whether to dial ``address`` (see :class:`DialBackoff`): a probe, a free dial, or
        None. While a probe to it is out, a few dials wait for its outcome; the rest are not
        made."""
        if address in self.chosen:
            return FREE
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
            self.counters.event("messages dropped (address refused lately)")
            return False
        try:
            try:
                data = self.encodings.get(message)
            except (wire.WireError, ValueError, TypeError) as exc:
                log.error("cannot encode a %s for %s: %s", type(message).__name__, host, exc)
                return False
            try:
                _, writer = await self.connect(host, port)
            except (OSError, TimeoutError) as exc:
                self._probed(address, False)
                if address not in self.chosen:  # the node reports its bootstrap hosts itself
                    self.counters.event("dials failed")
                log.debug("cannot reach %s:%d: %s", host, port, exc)
                return False
            self._probed(address, True)
        finally:
            if address in self._probes and self._backoff.probing(address):
                self._probed(address, False)  # cancelled, or could not encode: let others try
        try:
            writer.write(data)
            await drain(writer, self.limits)
            self.bytes_sent += len(data)
            self.counters.events.totals["sent"] += 1
            return True
        except (OSError, TimeoutError) as exc:
            log.debug("sending to %s:%d failed: %s", host, port, exc)
            return False
        finally:
            await close_writer(writer)

    async def push_file(
        self,
        host: str,
        port: int,
        meta: FileMeta,
        path: Path,
        progress: Callable[[int], None] | None = None,
        raw: bool = False,
        sender: str | None = None,
        peer_key: bytes | None = None,
    ) -> bool:
        """Push ``meta``'s bytes at ``path`` (raw: with ``sender``, our peer id, in the header;
        with ``peer_key`` too, over TLS to the peer that proves that key)."""
        try:
            async with self._pushing(host, port, peer_key if raw else None) as conn:
                if conn is None:
                    return False
                writer, secure = conn
                await self.uploader.push(writer, meta, path, progress, raw, sender, secure)
                return True
        except (OSError, TimeoutError) as exc:
            log.debug("push of %s to %s:%d failed: %s", meta.file_id[:12], host, port, exc)
            return False

    async def push_stream(
        self,
        host: str,
        port: int,
        source: GrowingFile,
        size: int,
        record: Awaitable[FileMeta | None],
        progress: Callable[[int], None] | None = None,
        sender: str | None = None,
        peer_key: bytes | None = None,
    ) -> bool:
        """A streamed push (see ``Network.push_stream``); False if it failed or was called off.
        With ``peer_key``, over TLS (as :meth:`push_file`)."""
        try:
            async with self._pushing(host, port, peer_key) as conn:
                if conn is None:
                    return False
                writer, secure = conn
                return await self.uploader.push_stream(
                    writer, source, size, record, progress, sender, secure
                )
        except (OSError, TimeoutError, StorageError) as exc:
            log.debug("streamed push to %s:%d failed: %s", host, port, exc)
            return False

    @contextlib.asynccontextmanager
    async def _pushing(
        self, host: str, port: int, peer_key: bytes | None
    ) -> AsyncIterator[tuple[asyncio.StreamWriter, SecureConn | None] | None]:
        """The connection of a push (None: it could not be made), over TLS with ``peer_key``
        when this node speaks it; a dial slot is held only while connecting (a push may take
        long). Closed at the end."""
        try:
            async with self.dials:
                _, writer = await self.connect(host, port)
        except (OSError, TimeoutError) as exc:
            log.debug("cannot push to %s:%d: %s", host, port, exc)  # the node says to whom
            yield None
            return
        secure: SecureConn | None = None
        try:
            if peer_key is not None and self.tls is not None:
                secure = await SecureConn.dial(self.tls, writer, peer_key, self.limits)
            yield writer, secure
        finally:
            if secure is not None:
                secure.close()
            await close_writer(writer)

    async def fetch_file(
        self,
        host: str,
        port: int,
        file_id: str,
        sink: FileSink,
        progress: Callable[[int], None] | None = None,
        max_bytes: int | None = None,
    ) -> FileData:
        """GET_FILE, the answer's bytes written to ``sink``. The answer's header must arrive
        within ``idle_timeout``; its bytes must keep coming (``idle_timeout`` apart) and, after
        ``fetch_rate_grace``, keep ``min_fetch_rate`` on average; with ``max_bytes``, more file
        bytes than that end it before they are written. Each a TransferError.

        Classic servers differ about EOF: a server that has sent nothing ``half_close_after``
        the request has our sending side half-closed (some read a request until EOF before
        they answer); one that then closes without sending a byte (others close as soon as they
        see EOF, before answering) is asked once more on a new connection, without it."""
        try:
            return await self._fetch(host, port, file_id, sink, progress, max_bytes, True)
        except Unanswered:
            log.debug("%s:%d closed on our half-close; asking again without it", host, port)
            return await self._fetch(host, port, file_id, sink, progress, max_bytes, False)

    async def _fetch(
        self,
        host: str,
        port: int,
        file_id: str,
        sink: FileSink,
        progress: Callable[[int], None] | None,
        max_bytes: int | None,
        half_close: bool,
    ) -> FileData:
        try:
            async with self.dials:  # only while connecting: the transfer may take long
                reader, writer = await self.connect(host, port)
        except (OSError, TimeoutError) as exc:
            raise TransferError(f"cannot connect to {host}:{port}: {exc}") from exc
        half_closed = False
        stream: Reader | None = None

        def close_sending_side() -> None:
            nonlocal half_closed
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()
                    half_closed = True

        try:
            writer.write(codec.encode_message(wire.encode(GetFile(file_id))))
            await drain(writer, self.limits)
            stream = Reader(
                reader,
                self.limits,
                None,
                self.limits.min_fetch_rate or None,
                self.limits.fetch_rate_grace,
            )
            stream.deadline = time.monotonic() + self.limits.idle_timeout
            wait = self.limits.half_close_after
            if half_close and wait is not None:
                stream.nudge = (time.monotonic() + wait, close_sending_side)
            got = 0
            while True:
                event = await stream.next()
                if isinstance(event, codec.DataChunk):
                    got += len(event.data)
                    if max_bytes is not None and got > max_bytes:
                        raise TransferError(
                            f"sent more than {max_bytes} bytes, more than the file can have"
                        )
                    waited = time.monotonic()
                    await self.download.acquire(len(event.data))
                    stream.paused(time.monotonic() - waited)
                    store(sink.write, event.data)
                    if progress is not None:
                        progress(sink.size)
                elif isinstance(event, codec.ProtocolError):
                    if half_closed and stream.parser.bytes_received == 0:
                        raise Unanswered(f"{host}:{port} closed on EOF without answering")
                    raise TransferError(f"malformed answer: {event.reason}")
                else:
                    # Stop at the end of the object: never wait for the peer to close.
                    break
            return file_data_answer(event.fields)
        except wire.WireError as exc:
            raise TransferError(f"invalid answer: {exc}") from exc
        except TimeoutError as exc:
            raise TransferError(f"{host}:{port} timed out sending the file: {exc}") from exc
        except OSError as exc:
            if half_closed and stream is not None and stream.parser.bytes_received == 0:
                raise Unanswered(f"{host}:{port} closed on EOF without answering") from exc
            raise TransferError(f"connection failed: {exc}") from exc
        finally:
            await close_writer(writer)
