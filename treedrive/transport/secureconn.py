"""Encrypted extension connections (PROTOCOL.md 2.9) served from the event loop, their
cryptography in worker threads.

The listener tells a TLS connection from a classic one by its first byte (``0x16``: a TLS
handshake record; a classic message starts with ``{`` or white space). The connection's socket is
then taken from asyncio (its reading paused; a duplicate descriptor, non-blocking) and
:class:`SecureConn` drives it: the loop waits for the socket (under the same deadlines as a plain
connection: the handshake and the request within ``control_timeout``), and every step of OpenSSL
(the handshake, decrypting the request, encrypting a header) runs in a small pool of worker
threads, so the cipher never runs on the loop. Bulk bytes move in the upload and push-body
workers (:mod:`~treedrive.transport.uploader`, :func:`SecureConn.read_raw`), as for plain
connections: as the records of :mod:`~treedrive.transport.bulk` when both ends offer them (the
server sends its secret as soon as the handshake is done; a pusher waits for it). A stranger who
sends ``0x16`` and then nothing holds no thread: only the loop waits.

Both ends of a TLS connection set ``TCP_NODELAY``: the handshake's last flight and the request
are small writes in a row, and Nagle's algorithm would hold the second until the first is
acknowledged (a delayed ACK: 40 ms per connection, per range). The bulk writes are large anyway.

The key the client proved is checked by the caller against the key pinned for the peer id the
request claims (:func:`claimed_peer`), before anything is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from treedrive.core.identity import fingerprint
from treedrive.core.ports import FileSink
from treedrive.core.text import printable
from treedrive.transport import codec, tlsstream
from treedrive.transport.extension import claimed_peer
from treedrive.transport.fields import WireError
from treedrive.transport.inbound import buffered, run_body, start_body
from treedrive.transport.limits import NetLimits
from treedrive.transport.ratelimit import RateLimiter
from treedrive.transport.secure import HandshakeError, NodeTLS, key_of_certificate
from treedrive.transport.securestream import SecureStream
from treedrive.transport.streams import Reader, Workers

TLS_HANDSHAKE = 0x16
"""The first byte of a TLS connection (a handshake record: the ClientHello)."""
CRYPTO_WORKERS = 4
"""Threads that run the short OpenSSL steps of connections served (handshakes, headers)."""
READ_PIECE = 64 * 1024
"""Bytes of ciphertext read from the socket by the loop at a time (control messages only)."""

_crypto = Workers(CRYPTO_WORKERS, "tls")
_dial_workers = Workers(8, "tls-dial")
T = TypeVar("T")


def is_tls(first: bytes) -> bool:
    """Whether the first bytes of a connection begin a TLS handshake."""
    return bool(first) and first[0] == TLS_HANDSHAKE


async def crypto(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` (an OpenSSL step) in a crypto worker thread."""
    return await asyncio.get_running_loop().run_in_executor(_crypto.pool(), fn, *args)


def _left(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"{what} did not arrive in time")
    return left


async def _recv(sock: socket.socket, deadline: float, what: str) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(sock, READ_PIECE), _left(deadline, what))


async def _sendall(sock: socket.socket, data: bytes, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(loop.sock_sendall(sock, data), _left(deadline, "the handshake"))


def _step(tls: ssl.SSLObject) -> bool:
    """One step of the handshake with what is received: True when it is done."""
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        return False
    return True


async def accept(
    node: NodeTLS, sock: socket.socket, initial: bytes, deadline: float
) -> SecureStream:
    """The server's side of the handshake on the non-blocking ``sock`` (``initial``: the bytes
    already read), done by ``deadline`` (monotonic); with the record layer, this side's secret
    is sent at once (a pusher waits for it). Raises HandshakeError (also for a timeout); the
    caller closes the socket."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    incoming.write(initial)
    tls = node.server.wrap_bio(incoming, outgoing, server_side=True)
    try:
        while True:
            done = await crypto(_step, tls)
            if outgoing.pending:
                await _sendall(sock, outgoing.read(), deadline)
            if done:
                break
            data = await _recv(sock, deadline, "the handshake")
            if not data:
                raise ConnectionError("closed during the handshake")
            incoming.write(data)
        der = tls.getpeercert(binary_form=True)
        if not der:
            raise HandshakeError("peer presented no certificate")
        key = key_of_certificate(der)
        handover = await crypto(tlsstream.start_handover, tls, node.public_key, key, True)
        if outgoing.pending:
            await _sendall(sock, outgoing.read(), deadline)
    except HandshakeError:
        raise
    except (OSError, ValueError) as exc:  # ssl.SSLError, TimeoutError and resets are OSErrors
        if outgoing.pending:  # the alert that says why
            with contextlib.suppress(OSError):
                sock.send(outgoing.read())
        raise HandshakeError(f"TLS handshake failed: {exc}") from None
    return SecureStream(sock, tls, (incoming, outgoing), key, handover)


async def dial(
    node: NodeTLS, sock: socket.socket, expected: bytes, deadline: float
) -> SecureStream:
    """The client's side of the handshake on the blocking ``sock`` (a connection this node
    made, to a peer it chose, to push a file), in a worker thread, within ``deadline``
    seconds; the peer must prove ``expected``. With the record layer, also the server's
    secret (the pusher seals the file's bytes with it)."""
    loop = asyncio.get_running_loop()
    connect = tlsstream.connect
    return await loop.run_in_executor(
        _dial_workers.pool(), connect, node, sock, expected, deadline, True
    )


def _detach(writer: asyncio.StreamWriter) -> socket.socket:
    """The connection's socket taken from asyncio (its reading paused): a duplicate, with
    ``TCP_NODELAY``."""
    transport: Any = writer.transport
    transport.pause_reading()
    raw = writer.get_extra_info("socket")
    if raw is None:
        raise OSError("the connection has no socket")
    sock = socket.socket(fileno=os.dup(raw.fileno()))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class SecureConn:
    """One TLS connection being served: its stream (on a duplicate of the connection's socket,
    which :meth:`close` closes) and the loop-side reads of its control messages."""

    def __init__(self, stream: SecureStream, limits: NetLimits) -> None:
        self.stream = stream
        self.limits = limits

    @property
    def peer_key(self) -> bytes:
        return self.stream.peer_key

    @property
    def sock(self) -> socket.socket:
        return self.stream.sock

    @classmethod
    async def open(
        cls, node: NodeTLS, writer: asyncio.StreamWriter, first: bytes, reader: Reader
    ) -> SecureConn:
        """Take the connection from asyncio and shake hands (within the message deadline)."""
        sock = _detach(writer)
        initial = first + buffered(reader.reader)
        sock.setblocking(False)
        try:
            stream = await accept(node, sock, initial, reader.deadline)
        except BaseException:
            sock.close()
            raise
        return cls(stream, limits=reader.limits)

    @classmethod
    async def dial(
        cls, node: NodeTLS, writer: asyncio.StreamWriter, peer_key: bytes, limits: NetLimits
    ) -> SecureConn:
        """Take a connection this node just made from asyncio and shake hands as the client
        (within ``control_timeout``): the peer must prove ``peer_key`` (its pinned key). Raises
        OSError (HandshakeError); the caller closes ``writer``."""
        sock = _detach(writer)  # the server's handshake bytes are ours
        sock.setblocking(True)  # (the flag is shared with asyncio's descriptor: reset below)
        try:
            stream = await dial(node, sock, peer_key, limits.control_timeout)
        except BaseException:
            sock.close()  # (if the handshake did not already)
            with contextlib.suppress(OSError, AttributeError):
                os.set_blocking(writer.get_extra_info("socket").fileno(), False)
            raise
        sock.setblocking(False)
        return cls(stream, limits)

    async def read_message(
        self, parser: codec.MessageParser, deadline: float
    ) -> codec.Message | codec.DataChunk | codec.ProtocolError:
        """The next event of ``parser``, decrypting (in a worker) what it needs; the whole
        message by ``deadline``."""
        buf = bytearray(READ_PIECE)
        while True:
            event = parser.next_event()
            if not isinstance(event, codec.NeedData):
                return event
            n = await crypto(self.stream.try_recv_into, buf)
            if n is None:
                self.stream.feed(await _recv(self.sock, deadline, "the message"))
            else:
                parser.receive_data(bytes(buf[:n]))  # 0: the end

    async def send(self, data: bytes, writable: Callable[[socket.socket, str], Any]) -> None:
        """Encrypt ``data`` (a worker) and send it, ``writable`` waiting for room."""
        await crypto(self.stream.queue, data)
        await self.flush(writable)

    async def flush(self, writable: Callable[[socket.socket, str], Any]) -> None:
        while not self.stream.flush_some():
            await writable(self.sock, "a TLS record")

    async def read_raw(
        self,
        reader: Reader,
        sink: FileSink,
        length: int,
        min_rate: float | None,
        download: RateLimiter,
        progress: Callable[[int], None] | None = None,
    ) -> bytes:
        """The body of a raw push, ``length`` bytes (the first ones already decrypted, in
        ``reader.parser``), into ``sink``, decrypted in a worker thread under the same limits
        as a plain body (:class:`~treedrive.transport.inbound.Body`, in the same workers).
        Returns the bytes already decrypted past it (the worker never reads past it)."""
        body = start_body(reader, sink, length, min_rate, download, progress)
        ahead = reader.parser.trailing
        try:
            await run_body(body, self.sock, ahead[:length], self.stream)
        finally:
            with contextlib.suppress(OSError):
                self.sock.setblocking(False)
        if progress is not None:
            progress(sink.size)
        return bytes(ahead[length:])

    def close(self) -> None:
        """``close_notify`` (best effort) and close the duplicate socket."""
        with contextlib.suppress(OSError):
            self.sock.setblocking(False)
        self.stream.close()


def refusal(
    fields: Mapping[str, Any], proved: bytes, pinned_of: Callable[[str], bytes | None]
) -> str | None:
    """Why the request ``fields``, on a TLS connection whose client proved the key ``proved``,
    is refused; None when it may be served: an extension request (:func:`claimed_peer`) from a
    peer id pinned to that very key. ``pinned_of`` gives the key pinned to a peer id."""
    try:
        claimed = claimed_peer(fields)
    except WireError as exc:
        return f"invalid: {exc}"
    if claimed is None:
        return "not an extension request that names its sender ('from')"
    pinned = pinned_of(claimed)
    who = printable(claimed[:64])
    if pinned is None:
        return f"peer {who!r} has no pinned key (key {fingerprint(proved)})"
    if not secrets.compare_digest(pinned, proved):
        return (
            f"the client proved key {fingerprint(proved)}, but peer {who!r} is pinned to "
            f"{fingerprint(pinned)}"
        )
    return None
