"""TLS 1.3 bound to node keys (transport/secure.py), over real loopback sockets."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from tests.transport.tls_helpers import forwarder, hung_up, pair, read_all
from treedrive.transport import secure
from treedrive.transport.secure import HandshakeError, KeyMismatch, NodeTLS

PAYLOAD = os.urandom(256 * 1024) + b"treedrive-secret-marker" + os.urandom(256 * 1024)


def serve(
    pool: ThreadPoolExecutor, node: NodeTLS, sock: socket.socket, expected: bytes | None = None
) -> Future[tuple[ssl.SSLSocket, bytes]]:
    return pool.submit(secure.accept, node, sock, expected, 5.0)


def test_right_keys_shake_hands_and_learn_each_other(
    pool: ThreadPoolExecutor, alice: NodeTLS, bob: NodeTLS
) -> None:
    c, s = pair()
    server = serve(pool, bob, s, alice.public_key)
    tls = secure.connect(alice, c, bob.public_key, timeout=5.0)
    server_tls, client_key = server.result(timeout=10)
    with tls, server_tls:
        assert client_key == alice.public_key
        assert secure.peer_key(tls) == bob.public_key
        assert secure.peer_key(server_tls) == alice.public_key
        assert tls.version() == "TLSv1.3"
        tls.sendall(b"ping")
        assert read_all(server_tls, 4) == b"ping"
        server_tls.sendall(b"pong")
        assert read_all(tls, 4) == b"pong"
        assert tls.gettimeout() is None  # back to blocking, as the socket was


def test_client_refuses_a_server_with_another_key(
    pool: ThreadPoolExecutor, alice: NodeTLS, bob: NodeTLS, mallory: NodeTLS
) -> None:
    c, s = pair()
    server = serve(pool, mallory, s)
    with pytest.raises(KeyMismatch):
        secure.connect(alice, c, bob.public_key, timeout=5.0)
    assert c.fileno() == -1  # wrapped and closed: nothing can be sent on it
    server_tls, _ = server.result(timeout=10)
    with server_tls:  # the server finished its side, then the client hung up
        assert server_tls.recv(1) == b""


def test_server_refuses_a_client_with_an_unpinned_key(
    pool: ThreadPoolExecutor, alice: NodeTLS, bob: NodeTLS, mallory: NodeTLS
) -> None:
    c, s = pair()
    server = serve(pool, bob, s, alice.public_key)
    tls = secure.connect(mallory, c, bob.public_key, timeout=5.0)
    with pytest.raises(KeyMismatch):
        server.result(timeout=10)
    with tls:
        assert hung_up(tls)


def client_context(chain: tuple[x509.Certificate, Any] | None) -> ssl.SSLContext:
    """A TLS 1.3 client that trusts any server and presents ``chain`` (certificate, key)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if chain is not None:
        cert, key = chain
        with tempfile.TemporaryDirectory() as tmp:
            cert_path, key_path = Path(tmp, "c.pem"), Path(tmp, "k.pem")
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            key_path.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            ctx.load_cert_chain(cert_path, key_path)
    return ctx


def self_signed(key: Any, name: str = "self") -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(9999, 1, 1, tzinfo=datetime.UTC))
        .sign(key, None if isinstance(key, Ed25519PrivateKey) else hashes.SHA256())
    )


@pytest.mark.parametrize(
    ("chain", "why"),
    [
        pytest.param(lambda: None, "did not return a certificate", id="no-certificate"),
        pytest.param(
            lambda: (self_signed(k := Ed25519PrivateKey.generate()), k),
            "self-signed certificate",
            id="self-signed",
        ),
    ],
)
def test_server_refuses_a_client_that_proves_no_key(
    pool: ThreadPoolExecutor,
    bob: NodeTLS,
    chain: Callable[[], tuple[x509.Certificate, Any] | None],
    why: str,
) -> None:
    """No certificate, or one outside the open issuer (why node certificates are not self-signed:
    OpenSSL refuses a self-signed client certificate and Python has no verify callback)."""
    c, s = pair()
    server = serve(pool, bob, s)
    tls = client_context(chain()).wrap_socket(c)  # TLS 1.3: the client finishes first
    with pytest.raises(HandshakeError, match=why):
        server.result(timeout=10)
    with tls:
        assert hung_up(tls)


def test_a_certificate_cannot_be_presented_without_its_private_key(bob: NodeTLS) -> None:
    """A stranger can issue a certificate for a victim's key under the open issuer, but TLS needs
    the matching private key to sign the handshake: OpenSSL will not even load the pair."""
    victim, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    with pytest.raises(ssl.SSLError, match="mismatch"):
        client_context((secure.node_certificate(victim), stranger))


@pytest.mark.parametrize("encrypted", [True, False])
def test_bytes_are_not_in_clear_on_the_wire(
    pool: ThreadPoolExecutor, alice: NodeTLS, bob: NodeTLS, encrypted: bool
) -> None:
    relay_out, s = pair()
    c, record, finish = forwarder(relay_out)
    if encrypted:
        server = serve(pool, bob, s, alice.public_key)
        sender: socket.socket = secure.connect(alice, c, bob.public_key, timeout=5.0)
        receiver: socket.socket = server.result(timeout=10)[0]
    else:  # the control: the same relay sees a plain payload
        sender, receiver = c, s
    got = pool.submit(read_all, receiver, len(PAYLOAD))
    sender.sendall(PAYLOAD)
    assert got.result(timeout=10) == PAYLOAD
    sender.close()
    receiver.close()
    finish()
    assert len(record) >= len(PAYLOAD)
    found = b"treedrive-secret-marker" in record or PAYLOAD[1000:1032] in record
    assert found is not encrypted


def test_relay_with_its_own_key_is_refused_by_both_ends(
    pool: ThreadPoolExecutor, alice: NodeTLS, bob: NodeTLS, mallory: NodeTLS
) -> None:
    """Mallory terminates TLS on both sides: towards alice as 'bob', towards bob as 'alice'."""
    to_bob, at_bob = pair()
    bob_side = serve(pool, bob, at_bob, alice.public_key)  # bob pinned alice
    mallory_out = pool.submit(secure.connect, mallory, to_bob, bob.public_key, 5.0)
    to_mallory, at_mallory = pair()
    mallory_in = serve(pool, mallory, at_mallory)  # mallory takes any client
    with pytest.raises(KeyMismatch):  # alice pinned bob
        secure.connect(alice, to_mallory, bob.public_key, timeout=5.0)
    with pytest.raises(KeyMismatch):
        bob_side.result(timeout=10)
    for done in (mallory_out.result(timeout=10), mallory_in.result(timeout=10)[0]):
        with done:  # mallory's own handshakes completed, and then both ends hung up on her
            assert hung_up(done)


def test_handshake_has_a_deadline(alice: NodeTLS) -> None:
    c, s = pair()
    with c, pytest.raises(HandshakeError, match="timed out"):
        secure.accept(alice, s, timeout=0.3)  # the client never speaks


def test_node_certificate_is_deterministic_and_carries_the_key() -> None:
    key = Ed25519PrivateKey.generate()
    der = secure.node_certificate(key).public_bytes(serialization.Encoding.DER)
    assert secure.node_certificate(key).public_bytes(serialization.Encoding.DER) == der
    assert secure.key_of_certificate(der) == secure.raw_public_key(key)
    assert len(secure.raw_public_key(key)) == secure.KEY_BYTES


def test_only_ed25519_certificates_give_a_key() -> None:
    other = self_signed(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(HandshakeError, match="Ed25519"):
        secure.key_of_certificate(other.public_bytes(serialization.Encoding.DER))
    with pytest.raises(HandshakeError, match="unreadable"):
        secure.key_of_certificate(b"\x30\x03junk")


def test_check_key() -> None:
    a, b = os.urandom(32), os.urandom(32)
    secure.check_key(a, a)
    with pytest.raises(KeyMismatch):
        secure.check_key(a, b)
