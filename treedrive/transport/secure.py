"""TLS 1.3 for extension connections, bound to both nodes' Ed25519 keys (blocking: worker threads).

Each node has one X.509 certificate that carries its node public key (Ed25519) and nothing else of
meaning. Both ends present their certificate; each end reads the other's key from the handshake
(:func:`peer_key`) and compares it with the key it pinned for that peer id (:func:`check_key`). A
different key, or no certificate, ends the connection before any byte of the transfer moves.

**Why the certificates are issued by an "open issuer".** A TLS server authenticates a client only
if the client sends a certificate, and it asks for one only when ``verify_mode`` is
``CERT_OPTIONAL`` or ``CERT_REQUIRED``; Python's ``ssl`` then always verifies the client's chain
(there is no verify callback), and OpenSSL refuses a self-signed client certificate ("certificate
verify failed: self-signed certificate", tested in ``tests/transport/test_secure.py``). So each
node certificate is signed not by its own key but by the *open issuer*: an Ed25519 CA key derived
from a public constant (:data:`OPEN_ISSUER_SEED`), which every node trusts and nothing else.
Anyone can issue a certificate under it, for any key: the issuer confers no trust at all, it only
lets OpenSSL's chain check pass (in trust terms the certificate is as good as self-signed). What
authenticates a peer is TLS 1.3 itself: in its ``CertificateVerify`` message each side signs the
hash of the whole handshake (both ephemeral key shares, both hellos, its certificate) with the
private key of the certificate it presented, and the other side checks that signature; then the
key in that certificate is compared with the pinned one. Client authentication is therefore the
standard TLS mechanism, inside the handshake, with no extra round trip and no message of our own.
(The alternative, an in-band proof after the handshake in which the client signs the server's
key, a fresh server nonce and the channel binding, works too, but is a protocol of our own and
costs a round trip.)

**Why a relay that swaps in its own key is refused.** A relay between A (client) and B (server)
either forwards the TLS bytes unread (then it sees only ciphertext and cannot change a byte without
breaking the record MACs), or it terminates TLS on both sides. To terminate A's connection it must
present a certificate and sign A's handshake transcript with that certificate's private key: with
its own key, A finds a key other than B's pinned key and refuses; with a certificate for B's key it
cannot produce the signature. Towards B the same holds with roles swapped: B's server asks for a
client certificate (``CERT_REQUIRED``) and gets either the relay's key (not A's pinned key: refused)
or a certificate for A's key without A's signature over *this* transcript (handshake fails). A
signature A made in another session does not help: it covers that session's transcript, with other
ephemeral keys.

**Limits.** Only TLS 1.3; no session tickets or resumption (every connection does a full
handshake and presents certificates); OpenSSL caps the peer's certificate list (100 KiB); the
handshake has a deadline (``timeout``). The cipher suite is OpenSSL's default choice
(TLS_AES_256_GCM_SHA384: the client's first choice, which the server follows); Python 3.11 cannot
set TLS 1.3 suites per context (``set_ciphers`` is for TLS 1.2 and older, and there is no
``set_ciphersuites``), only process-wide through an OpenSSL configuration file named by
``OPENSSL_CONF`` (``Ciphersuites`` under ``system_default``), read when OpenSSL starts.

**The record layer.** The contexts offer the ALPN protocol of :mod:`treedrive.transport.bulk`
(``records=False``: they do not, as nodes before it did not): when both ends offer it, a file's
bytes leave TLS for large records keyed from secrets exchanged inside it.

This module gives TLS sockets (``ssl.SSLSocket``: simple, for small exchanges; TLS only, they do
not speak the record layer: give them contexts made with ``records=False`` to talk to a stream);
:mod:`treedrive.transport.tlsstream` gives the same handshake and checks over memory BIOs, with
far fewer syscalls, and the record layer, for bulk transfers.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import secrets
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from treedrive.transport.bulk import ALPN as BULK_ALPN

OPEN_ISSUER_SEED = hashlib.sha256(b"treedrive open tls issuer v1").digest()
"""Seed of the open issuer's Ed25519 key. Public on purpose: see the module docstring."""
KEY_BYTES = 32
"""Length of a raw Ed25519 public key."""
HANDSHAKE_TIMEOUT = 10.0
"""Default seconds a handshake may take, from the first byte to both certificates checked."""

_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
_ISSUER_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "treedrive open issuer")])


class HandshakeError(ConnectionError):
    """The secure handshake failed: TLS error, timeout, closed connection, no usable certificate."""


class KeyMismatch(HandshakeError):
    """The peer proved a key, but not the one pinned for it."""


def _open_issuer() -> tuple[Ed25519PrivateKey, x509.Certificate]:
    key = Ed25519PrivateKey.from_private_bytes(OPEN_ISSUER_SEED)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_ISSUER_NAME)
        .issuer_name(_ISSUER_NAME)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, None)
    )
    return key, cert


def raw_public_key(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes_raw()


def node_certificate(private_key: Ed25519PrivateKey) -> x509.Certificate:
    """The node's certificate: its public key, named by its hex, signed by the open issuer.

    Deterministic (Ed25519 signatures are), so the same key always gives the same bytes."""
    raw = raw_public_key(private_key)
    issuer_key, _ = _open_issuer()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, raw.hex())])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(_ISSUER_NAME)
        .public_key(private_key.public_key())
        .serial_number(int.from_bytes(hashlib.sha256(raw).digest()[:16], "big") | 1)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(issuer_key, None)
    )


def key_of_certificate(der: bytes) -> bytes:
    """The raw Ed25519 public key in a DER certificate; HandshakeError for any other key type."""
    try:
        key = x509.load_der_x509_certificate(der).public_key()
    except ValueError as exc:
        raise HandshakeError(f"unreadable peer certificate: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise HandshakeError("peer certificate does not hold an Ed25519 key")
    return key.public_bytes_raw()


def check_key(actual: bytes, expected: bytes) -> None:
    """Refuse (KeyMismatch) unless the key the peer proved is the pinned one."""
    if not secrets.compare_digest(actual, expected):
        raise KeyMismatch(f"peer key {actual.hex()[:16]}… is not the pinned {expected.hex()[:16]}…")


def _context(purpose: int, private_key: Ed25519PrivateKey, records: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION
    ctx.check_hostname = False  # peers are named by key, not by host
    ctx.verify_mode = ssl.CERT_REQUIRED  # both sides: a certificate, checked by CertificateVerify
    _, issuer = _open_issuer()
    ctx.load_verify_locations(cadata=issuer.public_bytes(serialization.Encoding.DER))
    if purpose == ssl.PROTOCOL_TLS_SERVER:
        ctx.num_tickets = 0  # TLS 1.3 sends tickets even with OP_NO_TICKET; none are resumed
    if records:  # the bulk record layer (transport/bulk.py): chosen when both ends offer it
        ctx.set_alpn_protocols([BULK_ALPN])
    _load_chain(ctx, private_key)
    return ctx


def _load_chain(ctx: ssl.SSLContext, private_key: Ed25519PrivateKey) -> None:
    """``load_cert_chain`` reads files only: write them to a private temporary directory, the key
    encrypted under a one-time password, and remove them at once."""
    password = secrets.token_bytes(32)
    cert = node_certificate(private_key).public_bytes(serialization.Encoding.PEM)
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    with tempfile.TemporaryDirectory(prefix="treedrive-tls-") as tmp:  # mode 0700
        cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        for path, data in ((cert_path, cert), (key_path, pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(cert_path, key_path, password=password)


@dataclass(frozen=True)
class NodeTLS:
    """A node's two TLS contexts (made once, shared by every connection and thread).

    ``records``: whether they offer the bulk record layer (:mod:`treedrive.transport.bulk`);
    without, the node speaks TLS all the way, as nodes before it did."""

    public_key: bytes
    server: ssl.SSLContext
    client: ssl.SSLContext

    @classmethod
    def from_private_key(cls, private_key: Ed25519PrivateKey, records: bool = True) -> NodeTLS:
        return cls(
            public_key=raw_public_key(private_key),
            server=_context(ssl.PROTOCOL_TLS_SERVER, private_key, records),
            client=_context(ssl.PROTOCOL_TLS_CLIENT, private_key, records),
        )


def peer_key(tls: ssl.SSLSocket) -> bytes:
    """The Ed25519 key the peer proved in this connection's handshake."""
    der = tls.getpeercert(binary_form=True)
    if not der:
        raise HandshakeError("peer presented no certificate")
    return key_of_certificate(der)


def _handshake(
    ctx: ssl.SSLContext, sock: socket.socket, server_side: bool, timeout: float
) -> tuple[ssl.SSLSocket, bytes]:
    """Wrap ``sock`` (which the TLS socket takes over), shake hands within ``timeout`` seconds, and
    read the peer's key. Afterwards the socket is back in the blocking mode it had."""
    before = sock.gettimeout()
    tls = ctx.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False)
    try:
        tls.settimeout(timeout)
        tls.do_handshake()
        key = peer_key(tls)
        tls.settimeout(before)
    except HandshakeError:
        tls.close()
        raise
    except (OSError, ValueError) as exc:  # ssl.SSLError, TimeoutError and resets are OSErrors
        tls.close()
        raise HandshakeError(f"TLS handshake failed: {exc}") from None
    return tls, key


def _checked(tls: ssl.SSLSocket, key: bytes, expected_key: bytes | None) -> None:
    if expected_key is not None:
        try:
            check_key(key, expected_key)
        except KeyMismatch:
            tls.close()
            raise


def connect(
    node: NodeTLS, sock: socket.socket, expected_key: bytes, timeout: float = HANDSHAKE_TIMEOUT
) -> ssl.SSLSocket:
    """Client side, on a connected socket: the server must prove ``expected_key`` (the pinned key
    of the peer dialled). Raises HandshakeError or KeyMismatch (the socket is then closed)."""
    tls, key = _handshake(node.client, sock, False, timeout)
    _checked(tls, key, expected_key)
    return tls


def accept(
    node: NodeTLS,
    sock: socket.socket,
    expected_key: bytes | None = None,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> tuple[ssl.SSLSocket, bytes]:
    """Server side, on an accepted socket: returns the TLS socket and the key the client proved.

    With ``expected_key`` the key must be that one. Without, the caller compares the key
    (:func:`check_key`) with the key pinned for the peer id the client claims next, before it
    serves anything. Raises HandshakeError or KeyMismatch (the socket is then closed)."""
    tls, key = _handshake(node.server, sock, True, timeout)
    _checked(tls, key, expected_key)
    return tls, key
