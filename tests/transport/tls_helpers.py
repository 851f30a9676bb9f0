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
