"""TLS 1.3 handshakes over a blocking socket through memory BIOs, bound to both nodes' keys
(as :mod:`treedrive.transport.secure`), each giving a
:class:`~treedrive.transport.securestream.SecureStream`.

When both ends offer the bulk record layer (ALPN, :mod:`treedrive.transport.bulk`), each side
sends its secret as its first TLS plaintext right after the handshake, once the peer's key is
checked.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time

from treedrive.transport import bulk
from treedrive.transport.secure import HANDSHAKE_TIMEOUT, HandshakeError, NodeTLS, check_key
from treedrive.transport.secure import key_of_certificate as _key_of
from treedrive.transport.securestream import SecureStream


def start_handover(
    tls: ssl.SSLObject, own_key: bytes, peer_key: bytes, server_side: bool
) -> bulk.Handover | None:
    """After the handshake: if both ends chose the record layer (ALPN), this side's secret,
    written to ``tls`` as its first plaintext (the caller sends it); else None."""
    if tls.selected_alpn_protocol() != bulk.ALPN:
        return None
    handover = bulk.Handover(server_side, own_key, peer_key)
    tls.write(handover.secret)
    return handover


def _shake(
    node: NodeTLS,
    sock: socket.socket,
    server_side: bool,
    timeout: float,
    initial: bytes,
    expected_key: bytes | None,
    wait_secret: bool = False,
) -> SecureStream:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    incoming.write(initial)
    ctx = node.server if server_side else node.client
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
        der = tls.getpeercert(binary_form=True)
        if not der:
            raise HandshakeError("peer presented no certificate")
        key = _key_of(der)
        if expected_key is not None:
            check_key(key, expected_key)  # before this side sends anything of its own
        handover = start_handover(tls, node.public_key, key, server_side)
        if outgoing.pending:  # this side's secret
            sock.sendall(outgoing.read())
        stream = SecureStream(sock, tls, (incoming, outgoing), key, handover)
        if wait_secret and handover is not None:
            stream.wait_secret(deadline)
        sock.settimeout(before)
    except HandshakeError:
        sock.close()
        raise
    except (OSError, ValueError) as exc:  # ssl.SSLError, TimeoutError and resets are OSErrors
        _send_alert(sock, outgoing)
        sock.close()
        raise HandshakeError(f"TLS handshake failed: {exc}") from None
    return stream


def _send_alert(sock: socket.socket, outgoing: ssl.MemoryBIO) -> None:
    """Tell the peer why (OpenSSL left an alert in ``outgoing``), if the socket still takes it."""
    if outgoing.pending:
        with contextlib.suppress(OSError):
            sock.settimeout(0)
            sock.send(outgoing.read())


def connect(
    node: NodeTLS,
    sock: socket.socket,
    expected_key: bytes,
    timeout: float = HANDSHAKE_TIMEOUT,
    wait_secret: bool = False,
) -> SecureStream:
    """Client side: as :func:`treedrive.transport.secure.connect`, returning a stream. With
    ``wait_secret``, also waits (within ``timeout``) for the server's secret when the record
    layer is on: a client that sends a file's bytes (a push) needs it first."""
    return _shake(node, sock, False, timeout, b"", expected_key, wait_secret)


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
    return _shake(node, sock, True, timeout, initial, expected_key)
