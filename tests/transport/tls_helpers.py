"""Loopback helpers for the TLS tests: connected pairs, and a relay that records the wire."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable


def pair() -> tuple[socket.socket, socket.socket]:
    """(client, server): a connected loopback TCP pair."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        client = socket.create_connection(srv.getsockname())
        server, _ = srv.accept()
    return client, server


def hung_up(sock: socket.socket) -> bool:
    """The peer closed (or reset, or sent a TLS alert) without sending a byte."""
    try:
        return sock.recv(1) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def read_all(sock: socket.socket | ssl.SSLSocket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def relay_pipe(src: socket.socket, dst: socket.socket, record: bytearray) -> None:
    with contextlib.suppress(OSError):  # an end that hangs up with unread bytes resets
        while chunk := src.recv(65536):
            record += chunk
            dst.sendall(chunk)
        dst.shutdown(socket.SHUT_WR)


def forwarder(target: socket.socket) -> tuple[socket.socket, bytearray, Callable[[], None]]:
    """A relay that forwards raw bytes both ways and records them: returns the client's end, the
    record, and a function that waits for both directions to end and closes the relay's sockets."""
    client, relay_in = pair()
    record = bytearray()
    threads = [
        threading.Thread(target=relay_pipe, args=(relay_in, target, record), daemon=True),
        threading.Thread(target=relay_pipe, args=(target, relay_in, record), daemon=True),
    ]
    for t in threads:
        t.start()

    def finish() -> None:
        for t in threads:
            t.join(timeout=10)
        relay_in.close()
        target.close()

    return client, record, finish


TLS_TYPES = {20, 21, 22, 23}  # change_cipher_spec, alert, handshake, application_data


def _tls_end(stream: bytes | bytearray, pos: int = 0) -> tuple[int, bool]:
    """Where the whole TLS records from ``pos`` end, and whether bytes that are not TLS follow."""
    while pos + 5 <= len(stream):
        if stream[pos] not in TLS_TYPES or stream[pos + 1 : pos + 3] != b"\3\3":
            return pos, True
        end = pos + 5 + int.from_bytes(stream[pos + 3 : pos + 5], "big")
        if end > len(stream):
            break
        pos = end
    return pos, False


def split_wire(stream: bytes) -> tuple[bytes, list[bytes]]:
    """One direction of a connection: its TLS records (bytes), then its bulk records
    (transport/bulk.py), each whole; whatever follows a cut record is its last element."""
    pos, _ = _tls_end(stream)
    tls, records = stream[:pos], []
    while pos < len(stream):
        n = int.from_bytes(stream[pos : pos + 4], "big") & 0x7FFFFFFF
        records.append(stream[pos : pos + 4 + n + 16])
        pos += 4 + n + 16
    return tls, records


def downstream_relay(
    target: socket.socket, change: Callable[[list[bytes]], list[bytes]]
) -> tuple[socket.socket, Callable[[], bytes]]:
    """A relay that forwards what the client sends as it comes, and the server's TLS records
    too, but holds the bulk records that follow them until the server hangs up, then sends
    ``change(records)`` on and hangs up too. Returns the client's end and a function that waits
    for the relay and gives what the server sent."""
    client, relay_in = pair()
    down = bytearray()

    def run_down() -> None:
        sent, holding = 0, False
        with contextlib.suppress(OSError):
            while chunk := target.recv(65536):
                down.extend(chunk)
                if not holding:
                    end, holding = _tls_end(down, sent)
                    relay_in.sendall(down[sent:end])
                    sent = end
            _, records = split_wire(bytes(down))
            relay_in.sendall(b"".join(change(records)))
        with contextlib.suppress(OSError):
            relay_in.shutdown(socket.SHUT_WR)

    threads = [
        threading.Thread(target=relay_pipe, args=(relay_in, target, bytearray()), daemon=True),
        threading.Thread(target=run_down, daemon=True),
    ]
    for t in threads:
        t.start()

    def finish() -> bytes:
        threads[1].join(timeout=10)
        relay_in.close()
        target.close()
        return bytes(down)

    return client, finish
