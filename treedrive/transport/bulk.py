"""The bulk record layer of encrypted extension connections (PROTOCOL.md 2.9): I/O-free.

TLS 1.3 authenticates both nodes and carries the control messages; the bytes of a file then move
as large AES-GCM records of our own, keyed from secrets the two ends exchanged inside that TLS
session (the system's OpenSSL encrypts TLS records of 16 KiB at about 0.3 CPU s per GiB, plus
the copies through its memory BIOs; ``cryptography``'s AES-GCM seals 256 KiB at a time at about
a third of that, into a buffer used again, and releases the GIL while it does). Nothing here is
a cipher of our own: HKDF and AES-256-GCM are ``cryptography``'s.

**Negotiation.** Both ends offer the ALPN protocol :data:`ALPN` in their TLS handshake; an older
node offers or accepts none, and the connection stays TLS all the way, as before. ALPN is part
of the handshake transcript, so a relay cannot remove it without breaking the handshake.

**Secrets and keys.** With :data:`ALPN`, the first :data:`SECRET_BYTES` bytes each side sends in
TLS are a fresh random secret (:class:`Handover`). Each direction then goes on in TLS for as long
as its sender likes (a request, a header), and leaves TLS with a ``close_notify``: what its
sender sends after that is records. The key of a direction is HKDF-SHA256 (:func:`derive_key`)
of the client's and the server's secrets, with both nodes' Ed25519 keys (those proved in the
handshake), the direction, and the sha256 of everything the direction carried in TLS after its
secret (the request or header that says what the records are) in its ``info``: only the two ends
know it, it is new in every connection, and it is bound to both keys and to the request.

**Records.** A record is a 4-byte header, then ciphertext and a 16-byte tag: the header's top
bit is the *final* flag, its other 31 bits the plaintext's length (at most :data:`MAX_RECORD`;
only a final record may be empty). AES-256-GCM under the direction's key, the nonce 4 zero bytes
and the record's number in its direction (8 bytes, big-endian, from 0), the associated data
:data:`LABEL`, the header and the offset of the record's first byte among the bytes its
direction carried as records (8 bytes). A record that was changed, dropped, repeated, moved, or
taken from another connection or the other direction fails its tag; a stream that ends without
a final record (a cut connection) is an error, not an end; nothing after the final record is
read.
"""

from __future__ import annotations

import hashlib
import secrets
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ALPN = "treedrive-bulk/1"
"""The ALPN protocol name that turns the record layer on (version 1 of it)."""
LABEL = b"treedrive bulk v1"
SECRET_BYTES = 32
KEY_BYTES = 32
"""AES-256."""
HEADER = struct.Struct(">I")
FINAL = 1 << 31
TAG_BYTES = 16
MAX_RECORD = 1024 * 1024
"""The most plaintext a record may carry (a limit for the receiver: a header claiming more ends
the connection)."""
RECORD = 256 * 1024
"""The plaintext this node puts in a record of a file's bytes."""
MAX_RECORDS = 1 << 32
"""Records a direction may carry (4 PiB of file at most; AES-GCM's limits are far beyond)."""
CLIENT_TO_SERVER = b"client to server"
SERVER_TO_CLIENT = b"server to client"


Bytes = bytes | bytearray | memoryview


class RecordError(ConnectionError):
    """A record that does not authenticate or breaks a limit, or a stream cut before its end."""


def derive_key(
    client_secret: bytes,
    server_secret: bytes,
    client_key: bytes,
    server_key: bytes,
    direction: bytes,
    transcript: bytes,
) -> bytes:
    """The key of one direction (see the module's docstring). ``transcript``: the sha256 of what
    the direction carried in TLS after its secret."""
    if len(client_secret) != SECRET_BYTES or len(server_secret) != SECRET_BYTES:
        raise ValueError("each secret is 32 bytes")
    info = LABEL + b" " + direction + client_key + server_key + transcript
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=LABEL, info=info)
    return hkdf.derive(client_secret + server_secret)


def _nonce(seq: int) -> bytes:
    return b"\0\0\0\0" + seq.to_bytes(8, "big")


def _aad(header: Bytes, offset: int) -> bytes:
    return LABEL + bytes(header) + offset.to_bytes(8, "big")


def wire_size(n: int) -> int:
    """The bytes on the wire of a record that carries ``n``."""
    return HEADER.size + n + TAG_BYTES


_INTO = hasattr(AESGCM, "encrypt_into")
"""Whether ``cryptography`` seals into a buffer given (recent versions): else each record is
sealed into a new object, and copied."""


def _encrypt(aead: AESGCM, nonce: bytes, data: Bytes, aad: bytes, out: memoryview) -> None:
    if _INTO:
        aead.encrypt_into(nonce, data, aad, out)
    else:
        out[:] = aead.encrypt(nonce, bytes(data), aad)


def _decrypt(aead: AESGCM, nonce: bytes, data: Bytes, aad: bytes, out: memoryview) -> None:
    if _INTO:
        aead.decrypt_into(nonce, data, aad, out)
    else:
        out[:] = aead.decrypt(nonce, bytes(data), aad)


class Sealer:
    """The sending end of a direction: makes its records in order."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.seq = 0
        self.offset = 0
        """Plaintext bytes sealed so far."""
        self.ended = False

    def seal_into(self, out: memoryview, data: Bytes, final: bool = False) -> int:
        """Write the next record, carrying ``data`` (at most :data:`MAX_RECORD` bytes; empty
        only if ``final``), to the start of ``out``; its length (:func:`wire_size`)."""
        n = len(memoryview(data))
        if self.ended:
            raise ValueError("the stream has ended")
        if n > MAX_RECORD or (n == 0 and not final):
            raise ValueError(f"a record carries 1 to {MAX_RECORD} bytes (a final one 0 too)")
        if self.seq >= MAX_RECORDS:
            raise ValueError("too many records in one direction")
        header = HEADER.pack(n | (FINAL if final else 0))
        total = wire_size(n)
        out[: HEADER.size] = header
        body = out[HEADER.size : total]
        _encrypt(self._aead, _nonce(self.seq), data, _aad(header, self.offset), body)
        self.seq += 1
        self.offset += n
        self.ended = final
        return total

    def seal(self, data: Bytes, final: bool = False) -> bytearray:
        """The next record (as :meth:`seal_into`), in a buffer of its own."""
        out = bytearray(wire_size(len(memoryview(data))))
        self.seal_into(memoryview(out), data, final)
        return out

    def seal_all(self, data: Bytes, record: int = RECORD) -> list[bytearray]:
        """``data`` (not empty) as records of at most ``record`` bytes."""
        view = memoryview(data).cast("B")
        return [self.seal(view[start : start + record]) for start in range(0, len(view), record)]

    def end(self) -> bytearray:
        """The final record (empty): the authenticated end of the stream."""
        return self.seal(b"", final=True)


class Opener:
    """The receiving end of a direction: takes ciphertext (:meth:`feed`, or read straight into
    :meth:`space`) and opens records in order (:meth:`next`).

    Memory: what is fed is kept until a whole record is there, so a peer holds no more of it than
    it sent; :meth:`space` (for a blocking reader, once the peer is accepted) makes room for the
    whole record its header announces, at most :data:`MAX_RECORD`."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.seq = 0
        self.offset = 0
        """Plaintext bytes opened so far."""
        self.ended = False
        """The final record was opened."""
        self._backlog = bytearray()  # fed, not yet moved into the record buffer
        self._rec = bytearray(HEADER.size)  # the record being received
        self._have = 0  # bytes of it received
        self._eof = False  # the connection ended
        self._plain = bytearray()  # the record opened last (a buffer used again and again)

    def feed(self, data: Bytes) -> None:
        """Ciphertext received (empty: the connection ended)."""
        if len(memoryview(data)):
            self._backlog += data
        else:
            self._eof = True

    def _total(self) -> int | None:
        """The whole current record's length, once its header is in (checked)."""
        if self._have < HEADER.size:
            return None
        word: int = HEADER.unpack_from(self._rec)[0]
        n = word & ~FINAL
        if n > MAX_RECORD:
            raise RecordError(f"a record of {n} bytes, more than {MAX_RECORD}")
        if n == 0 and not word & FINAL:
            raise RecordError("an empty record that is not the last")
        return HEADER.size + n + TAG_BYTES

    def _need(self) -> int:
        total = self._total()
        return (HEADER.size if total is None else total) - self._have

    def _move(self, count: int) -> None:
        """Move ``count`` bytes of the backlog into the record buffer."""
        end = self._have + count
        self._room(end)
        self._rec[self._have : end] = self._backlog[:count]
        del self._backlog[:count]
        self._have = end

    def space(self) -> memoryview:
        """Where the next bytes of the current record go, for a reader that reads the socket
        straight into it (:meth:`received`); the backlog is used up first (then empty). Once the
        header is in, and says the record is not the last, the next record's header too (a read
        a record, not two)."""
        while self._backlog and self._need():
            self._move(min(len(self._backlog), self._need()))
        end = self._have + self._need()
        if end > HEADER.size and not self._rec[0] & FINAL >> 24:
            end += HEADER.size
        self._room(end)
        return memoryview(self._rec)[self._have : end]

    def _room(self, size: int) -> None:
        """A record buffer of at least ``size`` bytes (a new one, with what is received: never
        resized under a view a caller may still hold)."""
        if len(self._rec) < size:
            rec = bytearray(max(size, min(2 * len(self._rec), wire_size(MAX_RECORD))))
            rec[: self._have] = self._rec[: self._have]
            self._rec = rec

    def received(self, n: int) -> None:
        """``n`` bytes were read into :meth:`space` (0: the connection ended)."""
        if n == 0:
            self._eof = True
        self._have += n

    def next(self) -> memoryview | None:
        """The plaintext of the next record, once it is whole (empty at the end: after the
        final record), in a buffer of the opener's, valid until the next call; None if more
        ciphertext is needed. RecordError if it does not authenticate, breaks a limit, or the
        connection ended before the final record."""
        if self.ended:
            if self._backlog:
                raise RecordError("bytes after the final record")
            return memoryview(b"")
        if self._have < HEADER.size and self._backlog:
            self._move(min(len(self._backlog), HEADER.size - self._have))
        total = self._total()
        if total is not None and 0 < total - self._have <= len(self._backlog):
            self._move(total - self._have)  # only a whole record leaves the backlog
        if total is None or self._have < total:
            if self._eof:
                raise RecordError("the connection ended before its final record")
            return None
        return self._open(total)

    def _open(self, total: int) -> memoryview:
        if self.seq >= MAX_RECORDS:
            raise RecordError("too many records in one direction")
        header = bytes(self._rec[: HEADER.size])
        n = total - wire_size(0)
        if len(self._plain) < n:  # a new one: the last may still be viewed
            self._plain = bytearray(max(n, min(2 * len(self._plain), MAX_RECORD)))
        plain = memoryview(self._plain)[:n]
        with memoryview(self._rec)[HEADER.size : total] as body:
            try:
                _decrypt(self._aead, _nonce(self.seq), body, _aad(header, self.offset), plain)
            except InvalidTag:
                raise RecordError("a record failed authentication") from None
        self.seq += 1
        self.offset += n
        self._have -= total  # the start of the next record read with it (space)
        self._rec[: self._have] = self._rec[total : total + self._have]
        self.ended = bool(HEADER.unpack(header)[0] & FINAL)
        return plain


class Handover:
    """One connection's switch from TLS to records: this side's secret, the peer's as it arrives
    (the first :data:`SECRET_BYTES` of the plaintext it sends in TLS), and what each direction
    carried in TLS after its secret."""

    def __init__(self, server_side: bool, own_key: bytes, peer_key: bytes) -> None:
        self.server_side = server_side
        self.secret = secrets.token_bytes(SECRET_BYTES)
        self.peer_secret = b""
        self._keys = (peer_key, own_key) if server_side else (own_key, peer_key)
        self._sent = hashlib.sha256()
        self._got = hashlib.sha256()

    @property
    def ready(self) -> bool:
        """Whether the peer's secret is all in (this side may then leave TLS)."""
        return len(self.peer_secret) == SECRET_BYTES

    def take(self, plain: memoryview) -> int:
        """Plaintext received in TLS: how many of its first bytes are the peer's secret (taken);
        the rest is the caller's (and counted in the transcript)."""
        k = min(SECRET_BYTES - len(self.peer_secret), len(plain))
        self.peer_secret += bytes(plain[:k])
        self._got.update(plain[k:])
        return k

    def sent(self, plain: Bytes) -> None:
        """Plaintext this side sent in TLS after its secret."""
        self._sent.update(plain)

    def _key(self, sending: bool, transcript: bytes) -> bytes:
        if not self.ready:
            raise RecordError("the peer's secret did not come before the records")
        own, peer = self.secret, self.peer_secret
        client, server = (peer, own) if self.server_side else (own, peer)
        from_client = sending != self.server_side
        direction = CLIENT_TO_SERVER if from_client else SERVER_TO_CLIENT
        return derive_key(client, server, *self._keys, direction, transcript)

    def sealer(self) -> Sealer:
        """The records this side sends, once it left TLS."""
        return Sealer(self._key(True, self._sent.digest()))

    def opener(self) -> Opener:
        """The records the peer sends, once its ``close_notify`` came."""
        return Opener(self._key(False, self._got.digest()))
