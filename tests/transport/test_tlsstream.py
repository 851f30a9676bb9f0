"""TLS over memory BIOs (transport/tlsstream.py), over real loopback sockets."""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.transport.tls_helpers import downstream_relay, forwarder, hung_up, pair, split_wire
from treedrive.transport import bulk, secure, tlsstream
from treedrive.transport.filereader import FileReader
from treedrive.transport.secure import HandshakeError, KeyMismatch, NodeTLS
from treedrive.transport.securestream import SecureStream

SIZE = 3 * 1024 * 1024 + 12345  # not a multiple of any piece or record size


def serve(
    pool: ThreadPoolExecutor, node: NodeTLS, sock: socket.socket, expected: bytes | None = None
) -> Future[SecureStream]:
    return pool.submit(tlsstream.accept, node, sock, expected, 5.0)


def test_streams_learn_each_others_keys_and_move_bytes(
    pool: ThreadPoolExecutor, alice: NodeTLS, bob: NodeTLS
) -> None:
    c, s = pair()
    server = serve(pool, bob, s, alice.public_key)
    client = tlsstream.connect(alice, c, bob.public_key, 5.0)
    with client, server.result(timeout=10) as srv:
        assert client.peer_key == bob.public_key
        assert srv.peer_key == alice.public_key
        assert client.tls.version() == "TLSv1.3"
        client.sendall(b"ping")
        head = bytearray(4)
        srv.recv_exactly(head)
        assert head == b"ping"
        srv.sendall(b"pong!")
        buf = bytearray(100)
        assert client.recv_into(buf) == 5  # what is there, without waiting for 100
        assert buf[:5] == b"pong!"


def test_stream_and_sslsocket_speak_the_same_tls(pool: ThreadPoolExecutor, bob: NodeTLS) -> None:
    """An SSLSocket speaks TLS only (it cannot switch to records): its contexts offer no record
    layer, and the stream on the other end speaks TLS all the way."""
    alice = NodeTLS.from_private_key(Ed25519PrivateKey.generate(), records=False)
    c, s = pair()
    server = serve(pool, bob, s, alice.public_key)
    tls = secure.connect(alice, c, bob.public_key, timeout=5.0)
    with tls, server.result(timeout=10) as srv:
        tls.sendall(b"x" * 70000)
        got = bytearray(70000)
        srv.recv_exactly(got)
        assert got == b"x" * 70000


def pushed(
    pool: ThreadPoolExecutor, sender: SecureStream, receiver: SecureStream, path: Path, at: int
) -> bytes:
    """What ``receiver`` gets of the ``SIZE`` bytes of ``path`` from ``at`` that ``sender``
    sends (from a thread), 100,000 at a time."""
    with FileReader(path) as f:
        sent = pool.submit(sender.send_file, f, at, SIZE, 100_000)
        got = bytearray(SIZE)
        receiver.recv_exactly(got)
        sent.result(timeout=10)
    return bytes(got)


def test_send_file_arrives_whole_and_not_in_clear(
    pool: ThreadPoolExecutor, alice: NodeTLS, bob: NodeTLS, tmp_path: Path
) -> None:
    data = os.urandom(SIZE)
    path = tmp_path / "blob"
    path.write_bytes(b"head" + data)
    relay_out, s = pair()
    c, record, finish = forwarder(relay_out)
    server = serve(pool, bob, s, alice.public_key)
    client = tlsstream.connect(alice, c, bob.public_key, 5.0)
    srv = server.result(timeout=10)
    assert pushed(pool, client, srv, path, 4) == data
    client.close()  # close_notify: the other side reads its end, not an error
    assert srv.recv_into(bytearray(1)) == 0
    srv.close()
    finish()
    assert len(record) > SIZE
    assert data[5000:5032] not in record
    assert data[-32:] not in record


def test_send_file_refuses_a_short_file(
    pool: ThreadPoolExecutor, alice: NodeTLS, bob: NodeTLS, tmp_path: Path
) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"abc")
    c, s = pair()
    server = serve(pool, bob, s)
    with (
        tlsstream.connect(alice, c, bob.public_key, 5.0) as client,
        server.result(10),
        FileReader(path) as f,
        pytest.raises(EOFError),
    ):
        client.send_file(f, 0, 10)


def test_a_cut_without_close_notify_is_an_error(
    pool: ThreadPoolExecutor, alice: NodeTLS, bob: NodeTLS
) -> None:
    """A relay that drops the end of a stream cannot pass it off as the end of the data."""
    c, s = pair()
    server = serve(pool, bob, s)
    client = tlsstream.connect(alice, c, bob.public_key, 5.0)
    with server.result(timeout=10) as srv:
        client.sendall(b"partial")
        client.wait_secret()  # read what the server sent, or the close below is a reset
        client.sock.close()  # no close_notify
        buf = bytearray(7)
        srv.recv_exactly(buf)
        with pytest.raises(ConnectionError, match="close_notify"):
            srv.recv_into(bytearray(10))


def test_keys_are_checked_on_both_sides(
    pool: ThreadPoolExecutor, alice: NodeTLS, bob: NodeTLS, mallory: NodeTLS
) -> None:
    c, s = pair()
    server = serve(pool, mallory, s)
    with pytest.raises(KeyMismatch):
        tlsstream.connect(alice, c, bob.public_key, 5.0)
    server.result(timeout=10).close()
    c, s = pair()
    server = serve(pool, bob, s, alice.public_key)
    with tlsstream.connect(mallory, c, bob.public_key, 5.0) as client:
        with pytest.raises(KeyMismatch):
            server.result(timeout=10)
        assert hung_up(client.sock)


def test_stream_handshake_has_a_deadline(alice: NodeTLS) -> None:
    c, s = pair()
    with c, pytest.raises(HandshakeError, match="timed out"):
        tlsstream.accept(alice, s, timeout=0.3)


def test_server_takes_the_bytes_already_read(
    pool: ThreadPoolExecutor, alice: NodeTLS, bob: NodeTLS
) -> None:
    """A listener that peeked at the first bytes (a ClientHello starts with 0x16) hands them on."""
    c, s = pair()
    client = pool.submit(tlsstream.connect, alice, c, bob.public_key, 5.0)
    first = s.recv(3)
    assert first[:1] == b"\x16"
    srv = tlsstream.accept(bob, s, alice.public_key, 5.0, initial=first)
    with srv, client.result(timeout=10) as cli:
        cli.sendall(b"hi")
        got = bytearray(2)
        srv.recv_exactly(got)
        assert got == b"hi"


def test_send_file_some_returns_when_the_socket_is_full(
    pool: ThreadPoolExecutor, alice: NodeTLS, bob: NodeTLS, tmp_path: Path
) -> None:
    """Non-blocking, as the uploader sends: a reader that does not read holds no thread."""
    data = os.urandom(SIZE)
    path = tmp_path / "blob"
    path.write_bytes(data)
    c, s = pair()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # fills long before SIZE
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    server = serve(pool, bob, s, alice.public_key)
    client = tlsstream.connect(alice, c, bob.public_key, 5.0, wait_secret=True)  # as a pusher
    srv = server.result(timeout=10)
    f = FileReader(path)
    try:
        c.setblocking(False)
        first = client.send_file_some(f, 0, SIZE, 100_000)
        assert 0 < first < SIZE  # the socket filled up before the end: back to the caller
        assert client.unsent > 0
        got = pool.submit(lambda: (buf := bytearray(SIZE), srv.recv_exactly(buf))[0])
        sent = first
        while sent < SIZE or client.unsent:
            select.select([], [c], [], 5.0)
            sent += client.send_file_some(f, sent, SIZE - sent, 100_000)
        assert got.result(timeout=10) == data
    finally:
        f.close()
        client.close()
        srv.close()


# -- the record layer (transport/bulk.py) ----------------------------------------------------------
def serve_file(
    pool: ThreadPoolExecutor, node: NodeTLS, sock: socket.socket, path: Path, expected: bytes
) -> Future[SecureStream]:
    """A holder: reads a request, answers a header in TLS, then the file (as records, when
    both ends offer them), then ends its stream."""

    def run() -> SecureStream:
        with tlsstream.accept(node, sock, expected, 5.0) as srv:
            assert srv.recv(100) == b"GET"
            srv.sendall(b"HEADER")
            with FileReader(path) as f:
                srv.send_file(f, 0, SIZE)
            return srv

    return pool.submit(run)


def fetch(node: NodeTLS, sock: socket.socket, peer: bytes) -> tuple[SecureStream, bytes]:
    """A fetcher: asks, reads the header and then the file (as the ranged client does)."""
    client = tlsstream.connect(node, sock, peer, 5.0)
    try:
        return client, read_answer(client)
    except BaseException:
        client.close()
        raise


def read_answer(client: SecureStream) -> bytes:
    client.sendall(b"GET")
    head = bytearray(6)
    client.recv_exactly(head)
    assert head == b"HEADER"
    got = bytearray()
    while len(got) < SIZE:
        view = client.recv_view(min(1 << 20, SIZE - len(got)))
        if not view:
            raise ConnectionError(f"ended after {len(got)} bytes")
        got += view
    return bytes(got)


def read_to_end(client: SecureStream, got: bytearray) -> None:
    while view := client.recv_view(1 << 20):
        got += view


@pytest.fixture
def blob(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(SIZE)
    path = tmp_path / "blob"
    path.write_bytes(data)
    return path, data


def test_current_nodes_move_a_file_as_records_after_tls(
    pool: ThreadPoolExecutor, alice: NodeTLS, bob: NodeTLS, blob: tuple[Path, bytes]
) -> None:
    path, data = blob
    relay_out, s = pair()
    c, finish = downstream_relay(relay_out, lambda records: records)
    holder = serve_file(pool, bob, s, path, alice.public_key)
    client, got = fetch(alice, c, bob.public_key)
    with client:
        assert got == data
        assert client.recv_into(bytearray(1)) == 0  # the final record: the end
        srv = holder.result(timeout=10)
        assert srv.handover is not None
        assert srv.sealed
        assert client.handover is not None
        assert not client.sealed  # it sent no file
    tls, records = split_wire(finish())
    assert len(records) == -(-SIZE // bulk.RECORD) + 1  # the file's, and the final one
    assert bulk.HEADER.unpack(records[-1][:4])[0] == bulk.FINAL
    assert len(tls) < 16 * 1024  # the handshake, the secret, the header, close_notify
    wire = tls + b"".join(records)
    assert data[5000:5032] not in wire
    assert data[-32:] not in wire


@pytest.mark.parametrize(("old_client", "old_server"), [(True, False), (False, True)])
def test_an_older_node_on_either_end_gets_tls_all_the_way(
    pool: ThreadPoolExecutor, blob: tuple[Path, bytes], old_client: bool, old_server: bool
) -> None:
    """A node that does not offer the record layer (one before it): the other speaks TLS to it,
    as before, in both directions."""
    path, data = blob
    client_tls = NodeTLS.from_private_key(Ed25519PrivateKey.generate(), records=not old_client)
    server_tls = NodeTLS.from_private_key(Ed25519PrivateKey.generate(), records=not old_server)
    c, s = pair()
    holder = serve_file(pool, server_tls, s, path, client_tls.public_key)
    client, got = fetch(client_tls, c, server_tls.public_key)
    with client:
        assert got == data
        assert client.handover is None
        assert holder.result(timeout=10).handover is None
    c, s = pair()  # and a push, from the client
    receiver = pool.submit(tlsstream.accept, server_tls, s, client_tls.public_key, 5.0)
    with tlsstream.connect(client_tls, c, server_tls.public_key, 5.0) as pusher:
        srv = receiver.result(timeout=10)
        assert pushed(pool, pusher, srv, path, 0) == data
        assert not pusher.sealed
        srv.close()


def flip(at: int) -> Callable[[list[bytes]], list[bytes]]:
    def change(records: list[bytes]) -> list[bytes]:
        record = bytearray(records[1])
        record[at] ^= 0x20
        return [records[0], bytes(record), *records[2:]]

    return change


CHANGES: dict[str, Callable[[list[bytes]], list[bytes]]] = {
    "a byte of a record changed": flip(100),
    "a header changed": flip(1),
    "a record dropped": lambda r: [r[0], *r[2:]],
    "a record replayed": lambda r: [r[0], r[1], r[1], *r[2:]],
    "two records swapped": lambda r: [r[1], r[0], *r[2:]],
    "cut in a record": lambda r: [r[0], r[1][:1000]],
    "cut after a record": lambda r: r[:2],
}


@pytest.mark.parametrize("how", list(CHANGES))
def test_records_changed_in_the_middle_are_refused(
    pool: ThreadPoolExecutor, alice: NodeTLS, bob: NodeTLS, blob: tuple[Path, bytes], how: str
) -> None:
    """A node in the middle that forwards the bytes but changes, drops, repeats, swaps or cuts
    records: the fetcher gets an error, never a byte that is not the file's."""
    path, data = blob

    relay_out, s = pair()
    c, finish = downstream_relay(relay_out, CHANGES[how])
    holder = serve_file(pool, bob, s, path, alice.public_key)
    client = tlsstream.connect(alice, c, bob.public_key, 5.0)
    with client:
        client.sendall(b"GET")
        head = bytearray(6)
        client.recv_exactly(head)
        got = bytearray()
        with pytest.raises(ConnectionError):
            read_to_end(client, got)
        assert got == data[: len(got)]
        assert len(got) < SIZE
    holder.result(timeout=10)
    finish()


def test_records_of_another_connection_are_refused(
    pool: ThreadPoolExecutor, alice: NodeTLS, bob: NodeTLS, blob: tuple[Path, bytes]
) -> None:
    """The same file, the same request, the same header: a relay that sends the records of an
    earlier connection in place of this one's is refused (each connection has its own keys)."""
    path, data = blob
    relay_out, s = pair()
    c, finish = downstream_relay(relay_out, lambda records: records)
    holder = serve_file(pool, bob, s, path, alice.public_key)
    first, got = fetch(alice, c, bob.public_key)
    first.close()
    holder.result(timeout=10)
    _, earlier = split_wire(finish())
    assert got == data

    def replay(records: list[bytes]) -> list[bytes]:
        assert len(records) == len(earlier)
        return earlier

    relay_out, s = pair()
    c, finish = downstream_relay(relay_out, replay)
    holder = serve_file(pool, bob, s, path, alice.public_key)
    with pytest.raises(ConnectionError, match="authentication"):
        fetch(alice, c, bob.public_key)
    holder.result(timeout=10)
    finish()
