"""A TLS 1.3 connection after its handshake, over a socket we read and write ourselves: the
fast path for bulk transfers (the handshakes: :mod:`treedrive.transport.tlsstream`).

An ``ssl.SSLSocket`` lets OpenSSL read the socket itself, one record (16 KiB at most) at a time,
with two ``read`` syscalls each (header, then body): about 130,000 syscalls per GiB received, and
65,000 ``write``s per GiB sent. Here the socket is read and written by us in big pieces (up to
:data:`SOCKET_BUFFER` and :data:`SEND_PIECE`), and OpenSSL only encrypts and decrypts in memory
(``SSLContext.wrap_bio``): a few thousand syscalls per GiB. Between nodes that both offer it, a
file's bytes do not go through TLS at all but as the large records of
:mod:`treedrive.transport.bulk`, sealed and opened in buffers used again and again, after each
side's secret and the control messages went in TLS.

A stream is for one thread at a time (an ``SSLObject`` is not safe to use from two threads at
once). Reads and writes wait as the socket does (blocking, its timeout or ``SO_RCVTIMEO``).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from typing import cast

from treedrive.transport import bulk
from treedrive.transport.filereader import ReadAt

SOCKET_BUFFER = 1024 * 1024
"""Bytes of ciphertext read from the socket at a time."""
SEND_PIECE = 256 * 1024
"""Plaintext encrypted, then written to the socket, at a time (bounds the outgoing buffer)."""


class SecureStream:
    """A TLS 1.3 connection, after its handshake, whose peer proved :attr:`peer_key`.

    With the record layer (``handover``: both ends offered :data:`~treedrive.transport.bulk.ALPN`;
    :mod:`~treedrive.transport.bulk`), each side first sends its secret in TLS; each direction
    leaves TLS when its sender first sends a file's bytes (:meth:`send_file_some`), and carries
    records from then on; the reading side follows at the peer's ``close_notify``. The caller
    sees one stream of plaintext either way."""

    def __init__(
        self,
        sock: socket.socket,
        tls: ssl.SSLObject,
        bios: tuple[ssl.MemoryBIO, ssl.MemoryBIO],
        peer_key: bytes,
        handover: bulk.Handover | None = None,
    ) -> None:
        self.sock, self.tls, self.peer_key = sock, tls, peer_key
        self.handover = handover
        self._in, self._out = bios
        self._in_ended = False  # the socket's end was written to the incoming BIO
        self._raw = memoryview(b"")  # ciphertext read from the socket (made on the first read)
        self._plain = memoryview(b"")  # file bytes to encrypt (made on the first file sent)
        self._sealed = memoryview(b"")  # a record of them, sealed
        self._got = memoryview(b"")  # a TLS read for recv_view (made on the first)
        self._unsent: list[memoryview] = []  # what a non-blocking socket did not take yet
        self._sealer: bulk.Sealer | None = None  # records sent, once this side left TLS
        self._opener: bulk.Opener | None = None  # records read, once the peer left TLS
        self._opened = memoryview(b"")  # plaintext of the record opened last, not yet taken

    @property
    def sealed(self) -> bool:
        """Whether this side sends records (it left TLS)."""
        return self._sealer is not None

    # -- sending ------------------------------------------------------------------------------
    def _piece(self, piece: int, count: int) -> memoryview:
        """A buffer for ``min(piece, count)`` bytes of a file, the same for every call (an
        allocation of the whole piece, zeroed, for each call cost a memset per socket-full
        wait)."""
        want = max(1, min(piece, count))
        if len(self._plain) < want:
            self._plain = memoryview(bytearray(max(want, min(piece, SEND_PIECE))))
        return self._plain[:want]

    def _wire(self, size: int) -> memoryview:
        """The buffer records of a file are sealed into, at least ``size`` bytes."""
        if len(self._sealed) < size:
            self._sealed = memoryview(bytearray(size))
        return self._sealed

    def _take_tls_output(self) -> None:
        if self._out.pending:
            self._unsent.append(memoryview(self._out.read()))

    def _seal_from_now(self) -> bulk.Sealer | None:
        """The records this side sends from now on (None: TLS all the way, an older peer). The
        first call leaves TLS: ``close_notify``, then records."""
        if self._sealer is None and self.handover is not None:
            sealer = self.handover.sealer()  # RecordError until the peer's secret is in
            self._close_notify()
            self._sealer = sealer
        return self._sealer

    def _close_notify(self) -> None:
        """Queue a ``close_notify``. The incoming ciphertext is held back meanwhile: after
        sending its own, ``unwrap`` reads on for the peer's, and would drop (with an error) the
        peer's data still to be read."""
        held = self._in.read()
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # the peer's close_notify is not here: it need not be
        finally:
            if held:
                self._in.write(held)
        self._take_tls_output()

    def queue(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` behind what is :attr:`unsent` (for a non-blocking socket: sent by
        the next :meth:`flush_some` or :meth:`send_file_some`). In TLS, until this side sends a
        file's bytes; then as records."""
        if self._sealer is not None:
            self._unsent += map(memoryview, self._sealer.seal_all(data))
            return
        self.tls.write(data)
        if self.handover is not None:
            self.handover.sent(data)
        self._take_tls_output()

    @property
    def unsent(self) -> int:
        """Bytes of ciphertext made but not yet taken by a non-blocking socket."""
        return sum(map(len, self._unsent))

    def flush_some(self) -> bool:
        """Send what is :attr:`unsent` as far as the socket takes it; True when all is sent."""
        while self._unsent:
            try:
                k = self.sock.sendmsg(self._unsent)
            except BlockingIOError:
                return False
            while self._unsent and k >= len(self._unsent[0]):
                k -= len(self._unsent.pop(0))
            if k:
                self._unsent[0] = self._unsent[0][k:]
        return True

    def _flush(self) -> None:
        """Send all that is unsent (a blocking socket; BlockingIOError on a full non-blocking
        one)."""
        if not self.flush_some():
            raise BlockingIOError("the socket is full")

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), SEND_PIECE):
            self.queue(view[start : start + SEND_PIECE])
            self._flush()

    def send_file(self, read_at: ReadAt, offset: int, count: int, piece: int = SEND_PIECE) -> None:
        """Send ``count`` bytes of a file from ``offset`` (the TLS ``sendfile``; ``read_at``
        reads the file: :class:`FileReader`, or the store's reader of a growing file), read
        and encrypted ``piece`` bytes at a time (a blocking socket; with the record layer, once
        the peer's secret came)."""
        self.wait_secret()
        done = 0
        while done < count or self._unsent:
            done += self.send_file_some(read_at, offset + done, count - done, piece)
            self._flush()

    def send_file_some(
        self, read_at: ReadAt, offset: int, count: int, piece: int = SEND_PIECE
    ) -> int:
        """Encrypt and send up to ``count`` bytes of a file from ``offset`` (read by ``read_at``),
        for a
        non-blocking socket (the uploader's way: a reader that stops reading holds no thread).
        Returns how many bytes of the file were encrypted, when the socket is full or all are
        sent; ciphertext the socket did not take is kept (:attr:`unsent`) and goes first on the
        next call (``count`` 0 just sends it). The transfer is over when the bytes are all
        encrypted and ``unsent`` is 0. With the record layer, a record per ``piece`` (at most
        :data:`~treedrive.transport.bulk.MAX_RECORD`)."""
        sealer = self._seal_from_now()
        done = 0
        while self.flush_some() and done < count:
            buf = self._piece(min(piece, bulk.MAX_RECORD), count - done)
            n = read_at(buf, offset + done)
            if n == 0:
                raise EOFError(f"file ends {count - done} bytes short")
            if sealer is None:
                self.tls.write(buf[:n])
                self._take_tls_output()
            else:  # into a buffer used again and again: nothing unsent is left in it
                wire = self._wire(bulk.wire_size(n))
                self._unsent.append(wire[: sealer.seal_into(wire, buf[:n])])
            done += n
        return done

    # -- receiving ----------------------------------------------------------------------------
    def _take_secret(self) -> None:
        """Read the peer's secret, the first bytes it sends in TLS (raises SSLWantReadError)."""
        handover = self.handover
        while handover is not None and not handover.ready:
            try:
                data = self.tls.read(bulk.SECRET_BYTES - len(handover.peer_secret))
            except ssl.SSLZeroReturnError:
                data = b""
            except ssl.SSLEOFError:
                raise ConnectionError("connection closed without TLS close_notify") from None
            if not data:
                raise bulk.RecordError("TLS ended before the peer's secret")
            handover.take(memoryview(data))

    def _tls_read(self, view: memoryview) -> int:
        """Plaintext of the TLS phase into ``view``: how many bytes (0: the peer's
        ``close_notify``); SSLWantReadError when more ciphertext is needed."""
        self._take_secret()
        try:
            n = cast(int, self.tls.read(len(view), view))  # with a buffer: a count
        except ssl.SSLZeroReturnError:  # close_notify, after ours was sent
            return 0
        except ssl.SSLEOFError:
            raise ConnectionError("connection closed without TLS close_notify") from None
        if self.handover is not None:
            self.handover.take(view[:n])
        return n

    def _follow_into_records(self) -> None:
        """The peer left TLS: what follows its ``close_notify`` are records."""
        assert self.handover is not None
        self._opener = self.handover.opener()
        if rest := self._in.read():
            self._opener.feed(rest)
        if self._in_ended:
            self._opener.feed(b"")

    def _opened_into(self, view: memoryview) -> int | None:
        """Plaintext of records into ``view`` (0: the end), None if more ciphertext is needed."""
        taken = self._take_opened(len(view))
        if taken is None:
            return None
        n = len(taken)
        view[:n] = taken
        return n

    def _take_opened(self, n: int) -> memoryview | None:
        """Up to ``n`` bytes of record plaintext (empty: the end), None if more is needed."""
        assert self._opener is not None
        if not self._opened:
            self._opened = memoryview(b"")  # (a view of the opener's buffer: let it go)
            plain = self._opener.next()
            if plain is None:
                return None
            self._opened = plain
        taken, self._opened = self._opened[:n], self._opened[n:]
        return taken

    def try_recv_into(self, buffer: bytearray | memoryview) -> int | None:
        """Decrypt into ``buffer`` what is already received, without reading the socket: how
        many bytes (0: the peer ended the stream), None when more ciphertext is needed
        (:meth:`feed` it)."""
        view = memoryview(buffer).cast("B")
        if self._opener is None:
            try:
                n = self._tls_read(view)
            except ssl.SSLWantReadError:
                return None
            if n or self.handover is None:
                return n
            self._follow_into_records()
        return self._opened_into(view)

    def feed(self, data: bytes) -> None:
        """Ciphertext read from the socket by the caller (``b""``: the socket is at its end)."""
        if self._opener is not None:
            self._opener.feed(data)
        elif data:
            self._in.write(data)
        else:
            self._in_ended = True
            self._in.write_eof()

    def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes (at least one, waiting as :meth:`recv_into`); b"" at the end."""
        buf = bytearray(n)
        got = self.recv_into(buf)
        return bytes(buf[:got])

    def recv_into(self, buffer: bytearray | memoryview) -> int:
        """At least one byte into ``buffer`` (as many as are decrypted and fit), waiting for the
        socket if needed; 0 when the peer ended the stream (``close_notify``, or the final
        record). A connection cut before that (possibly truncated) raises ConnectionError."""
        view = memoryview(buffer).cast("B")
        if not view:
            return 0
        if self._opener is None:
            got = self._recv_tls(view)
            if got is not None:
                return got
        while (n := self._opened_into(view)) is None:
            self._fill_records()
        return n

    def recv_view(self, n: int) -> memoryview:
        """As :meth:`recv_into`, but up to ``n`` bytes in a buffer of the stream's, valid until
        the next call (records are not copied again); empty at the end."""
        if self._opener is None:  # TLS: decrypted into a buffer of its own (a piece at most)
            piece = min(n, SEND_PIECE)
            if len(self._got) < piece:
                self._got = memoryview(bytearray(piece))
            got = self._recv_tls(self._got[:piece])
            if got is not None:
                return self._got[:got]
        while (taken := self._take_opened(n)) is None:
            self._fill_records()
        return taken

    def _recv_tls(self, view: memoryview) -> int | None:
        """:meth:`recv_into` in TLS; None once the peer left TLS for records."""
        got = 0
        while got < len(view):
            try:
                n = self._tls_read(view[got:])
            except ssl.SSLWantReadError:
                if got:  # what is decrypted now; do not wait for more
                    return got
                self._fill()
                continue
            if n == 0:
                if got or self.handover is None:
                    return got
                self._follow_into_records()
                return None
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
            self._in_ended = True
            self._in.write_eof()
        else:
            self._in.write(self._raw[:n])

    def _fill_records(self) -> None:
        """Read the socket straight into the record being received."""
        assert self._opener is not None
        self._opener.received(self.sock.recv_into(self._opener.space()))

    def wait_secret(self, deadline: float | None = None) -> None:
        """Wait (blocking) until the peer's secret is in (no wait without the record layer), by
        ``deadline`` (monotonic; None: as long as the socket waits)."""
        while True:
            try:
                self._take_secret()
                return
            except ssl.SSLWantReadError:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("the peer's secret did not come in time") from None
                    self.sock.settimeout(left)
                self._fill()

    def close(self) -> None:
        """End the stream (``close_notify``, or the final record), best effort, and close the
        socket."""
        with contextlib.suppress(OSError, ValueError):
            if self._sealer is None:
                self._close_notify()
            elif not self._sealer.ended:
                self._unsent.append(memoryview(self._sealer.end()))
            self.flush_some()
        self.sock.close()

    def __enter__(self) -> SecureStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
