"""TLS 1.3 over a blocking socket through memory BIOs: the fast path for bulk transfers.

An ``ssl.SSLSocket`` lets OpenSSL read the socket itself, one record (16 KiB at most) at a time,
with two ``read`` syscalls each (header, then body): about 130,000 syscalls per GiB received, and
65,000 ``write``s per GiB sent. Here the socket is read and written by us in big pieces (up to
:data:`SOCKET_BUFFER` and :data:`SEND_PIECE`), and OpenSSL only encrypts and decrypts in memory
(``SSLContext.wrap_bio``): a few thousand syscalls per GiB. The cryptography is OpenSSL's, with
the same contexts and key checks as :mod:`treedrive.transport.secure`; ``bench/tls_probe.py``
measures both ways.

A stream is for one thread at a time (an ``SSLObject`` is not safe to use from two threads at
once). Reads and writes wait as the socket does (blocking, its timeout or ``SO_RCVTIMEO``).
"""

from __future__ import annotations

import contextlib
import io
import socket
import ssl
import time
from typing import cast

from treedrive.transport.secure import HANDSHAKE_TIMEOUT, HandshakeError, NodeTLS, check_key
from treedrive.transport.secure import key_of_certificate as _key_of

SOCKET_BUFFER = 1024 * 1024
"""Bytes of ciphertext read from the socket at a time."""
SEND_PIECE = 256 * 1024
"""Plaintext encrypted, then written to the socket, at a time (bounds the outgoing buffer)."""


class SecureStream:
    """A TLS 1.3 connection, after its handshake, whose peer proved :attr:`peer_key`."""

    def __init__(
        self,
        sock: socket.socket,
        tls: ssl.SSLObject,
        bios: tuple[ssl.MemoryBIO, ssl.MemoryBIO],
        peer_key: bytes,
    ) -> None:
        self.sock, self.tls, self.peer_key = sock, tls, peer_key
        self._in, self._out = bios
        self._raw = memoryview(b"")  # ciphertext read from the socket (made on the first read)
        self._plain = memoryview(b"")  # file bytes to encrypt (made on the first file sent)
        self._unsent = memoryview(b"")  # ciphertext a non-blocking socket did not take yet

    def _piece(self, piece: int, count: int) -> memoryview:
        """A buffer for ``min(piece, count)`` bytes of a file, the same for every call (an
        allocation of the whole piece, zeroed, for each call cost a memset per socket-full
        wait)."""
        want = max(1, min(piece, count))
        if len(self._plain) < want:
            self._plain = memoryview(bytearray(max(want, min(piece, SEND_PIECE))))
        return self._plain[:want]

    def _flush(self) -> None:
        if self._out.pending:
            self.sock.sendall(self._out.read())

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), SEND_PIECE):
            self.tls.write(view[start : start + SEND_PIECE])
            self._flush()

    def send_file(self, fd: int, offset: int, count: int, piece: int = SEND_PIECE) -> None:
        """Send ``count`` bytes of the file ``fd`` from ``offset`` (the TLS ``sendfile``), read
        and encrypted ``piece`` bytes at a time."""
        buf = self._piece(piece, count)
        end = offset + count
        while offset < end:
            n = _read_at(fd, buf[: min(len(buf), end - offset)], offset)
            if n == 0:
                raise EOFError(f"file ends {end - offset} bytes short")
            self.tls.write(buf[:n])
            self._flush()
            offset += n

    @property
    def unsent(self) -> int:
        """Bytes of ciphertext made but not yet taken by a non-blocking socket."""
        return len(self._unsent)

    def _push(self) -> bool:
        """Send the ciphertext kept back; False when the socket is full."""
        while self._unsent:
            try:
                k = self.sock.send(self._unsent)
            except BlockingIOError:
                return False
            self._unsent = self._unsent[k:]
        return True

    def send_file_some(self, fd: int, offset: int, count: int, piece: int = SEND_PIECE) -> int:
        """Encrypt and send up to ``count`` bytes of the file ``fd`` from ``offset``, for a
        non-blocking socket (the uploader's way: a reader that stops reading holds no thread).
        Returns how many bytes of the file were encrypted, when the socket is full or all are
        sent; ciphertext the socket did not take is kept (:attr:`unsent`) and goes first on the
        next call (``count`` 0 just sends it). The transfer is over when the bytes are all
        encrypted and ``unsent`` is 0."""
        done = 0
        while self._push() and done < count:
            buf = self._piece(piece, count - done)
            n = _read_at(fd, buf, offset + done)
            if n == 0:
                raise EOFError(f"file ends {count - done} bytes short")
            self.tls.write(buf[:n])
            self._unsent = memoryview(self._out.read())
            done += n
        return done

    def queue(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` behind what is :attr:`unsent` (for a non-blocking socket: sent by
        the next :meth:`flush_some` or :meth:`send_file_some`)."""
        self.tls.write(data)
        self._unsent = memoryview(bytes(self._unsent) + self._out.read())

    def flush_some(self) -> bool:
        """Send what is :attr:`unsent` as far as the socket takes it; True when all is sent."""
        return self._push()

    def try_recv_into(self, buffer: bytearray | memoryview) -> int | None:
        """Decrypt into ``buffer`` what is already received, without reading the socket: how
        many bytes (0: the peer closed the TLS session), None when more ciphertext is needed
        (:meth:`feed` it)."""
        try:
            return cast(int, self.tls.read(len(buffer), memoryview(buffer).cast("B")))
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLEOFError:
            raise ConnectionError("connection closed without TLS close_notify") from None

    def feed(self, data: bytes) -> None:
        """Ciphertext read from the socket by the caller (``b""``: the socket is at its end)."""
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()

    def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes (at least one, waiting as :meth:`recv_into`); b"" at the end."""
        buf = bytearray(n)
        got = self.recv_into(buf)
        return bytes(buf[:got])

    def recv_into(self, buffer: bytearray | memoryview) -> int:
        """At least one byte into ``buffer`` (as many as are decrypted and fit), waiting for the
        socket if needed; 0 when the peer closed the TLS session (``close_notify``). A
        connection cut without ``close_notify`` (possibly truncated) raises ConnectionError."""
        view = memoryview(buffer).cast("B")
        if not view:
            return 0
        got = 0
        while got < len(view):
            try:
                # with a buffer, read() returns a count (typeshed says bytes)
                n = cast(int, self.tls.read(len(view) - got, view[got:]))
            except ssl.SSLWantReadError:
                if got:  # what is decrypted now; do not wait for more
                    return got
                self._fill()
                continue
            except ssl.SSLEOFError:
                raise ConnectionError("connection closed without TLS close_notify") from None
            if n == 0:
                return got
            got += n
        return got

    def recv_exactly(self, buffer: bytearray | memoryview) -> None:
        """Fill all of ``buffer``; ConnectionError if the peer closes first."""
        view = memoryview(buffer).cast("B")
        got = 0
        while got < len(view):
            n = self.recv_into(view[got:])
            if n == 0:
                raise ConnectionError(f"closed after {got} of {len(view)} bytes")
            got += n

    def _fill(self) -> None:
        if not self._raw:
            self._raw = memoryview(bytearray(SOCKET_BUFFER))
        n = self.sock.recv_into(self._raw)
        if n == 0:
            self._in.write_eof()
        else:
            self._in.write(self._raw[:n])

    def close(self) -> None:
        """Send ``close_notify`` (best effort) and close the socket."""
        with contextlib.suppress(OSError):  # SSLWantReadError: the peer's reply is not awaited
            self.tls.unwrap()
        with contextlib.suppress(OSError):
            self._flush()
        self.sock.close()

    def __enter__(self) -> SecureStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shake(
    ctx: ssl.SSLContext, sock: socket.socket, server_side: bool, timeout: float, initial: bytes
) -> SecureStream:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    incoming.write(initial)
    tls = ctx.wrap_bio(incoming, outgoing, server_side=server_side)
    before, deadline = sock.gettimeout(), time.monotonic() + timeout
    raw = bytearray(64 * 1024)
    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("handshake timed out") from None
                sock.settimeout(remaining)
                n = sock.recv_into(raw)
                if n == 0:
                    raise ConnectionError("closed during the handshake") from None
                incoming.write(memoryview(raw)[:n])
        if outgoing.pending:  # the client's last flight (its certificate and Finished)
            sock.sendall(outgoing.read())
        sock.settimeout(before)
        der = tls.getpeercert(binary_form=True)
        if not der:
            raise HandshakeError("peer presented no certificate")
        key = _key_of(der)
    except HandshakeError:
        sock.close()
        raise
    except (OSError, ValueError) as exc:  # ssl.SSLError, TimeoutError and resets are OSErrors
        _send_alert(sock, outgoing)
        sock.close()
        raise HandshakeError(f"TLS handshake failed: {exc}") from None
    return SecureStream(sock, tls, (incoming, outgoing), key)


def _send_alert(sock: socket.socket, outgoing: ssl.MemoryBIO) -> None:
    """Tell the peer why (OpenSSL left an alert in ``outgoing``), if the socket still takes it."""
    if outgoing.pending:
        with contextlib.suppress(OSError):
            sock.settimeout(0)
            sock.send(outgoing.read())


def connect(
    node: NodeTLS, sock: socket.socket, expected_key: bytes, timeout: float = HANDSHAKE_TIMEOUT
) -> SecureStream:
    """Client side: as :func:`treedrive.transport.secure.connect`, returning a stream."""
    stream = _shake(node.client, sock, False, timeout, b"")
    _check(stream, expected_key)
    return stream


def accept(
    node: NodeTLS,
    sock: socket.socket,
    expected_key: bytes | None = None,
    timeout: float = HANDSHAKE_TIMEOUT,
    initial: bytes = b"",
) -> SecureStream:
    """Server side: as :func:`treedrive.transport.secure.accept`; the key is ``.peer_key``.

    ``initial``: bytes the caller already read from the socket (say, the first bytes it peeked
    at to tell a TLS ClientHello, ``0x16``, from a classic JSON message)."""
    stream = _shake(node.server, sock, True, timeout, initial)
    if expected_key is not None:
        _check(stream, expected_key)
    return stream


def _check(stream: SecureStream, expected_key: bytes) -> None:
    try:
        check_key(stream.peer_key, expected_key)
    except HandshakeError:
        stream.sock.close()
        raise


def _read_at(fd: int, view: memoryview, offset: int) -> int:
    """Read a file to send into ``view`` from ``offset`` (what ``sendfile`` does in the kernel
    for a plain connection). The file is read through a file object of its own descriptor: the
    store alone writes, syncs and reads back partial files at offsets."""
    with io.FileIO(fd, "rb", closefd=False) as f:
        f.seek(offset)
        return f.readinto(view) or 0
