"""Who runs the other end of a loopback connection (``web/peeruser.py``): the uid of the client's
socket in the kernel's table, read from lines as ``/proc/net/tcp`` and ``tcp6`` print them, and
from the real tables for a real connection."""

from __future__ import annotations

import os
import socket
import struct
import sys

import pytest

from treedrive.web import peeruser

HEAD = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  inode"


def v4(host: str, port: int) -> str:
    (word,) = struct.unpack("=I", socket.inet_aton(host))
    return f"{word:08X}:{port:04X}"


def v6(host: str, port: int) -> str:
    raw = socket.inet_pton(socket.AF_INET6, host)
    words = struct.unpack("=4I", raw)
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def row(n: int, local: str, remote: str, uid: int) -> str:
    return f"{n:4}: {local} {remote} 01 00000000:00000000 00:00000000 00000000 {uid:5} 0 {n}"


def test_the_row_of_the_clients_end_gives_its_uid() -> None:
    table = [
        HEAD,
        row(0, v4("127.0.0.1", 8280), v4("0.0.0.0", 0), 0),  # the listener
        row(1, v4("127.0.0.1", 8280), v4("127.0.0.1", 40000), 0),  # the node's end
        row(2, v4("127.0.0.1", 40000), v4("127.0.0.1", 8280), 1000),  # the client's end
        row(3, v4("127.0.0.1", 40001), v4("127.0.0.1", 8280), 33),
    ]
    assert peeruser.owner_in(table, ("127.0.0.1", 40000), ("127.0.0.1", 8280)) == 1000
    assert peeruser.owner_in(table, ("127.0.0.1", 40001), ("127.0.0.1", 8280)) == 33
    assert peeruser.owner_in(table, ("127.0.0.1", 40002), ("127.0.0.1", 8280)) is None
    # a node listening on :: sees an IPv4 client as ::ffff:127.0.0.1
    assert peeruser.owner_in(table, ("::ffff:127.0.0.1", 40000), ("::ffff:127.0.0.1", 8280)) == 1000


def test_ipv6_rows_and_garbage() -> None:
    table = [
        HEAD,
        "garbage",
        row(0, "zz:zz", "zz:zz", 5),
        row(1, v6("::1", 50000), v6("::1", 8280), 1001),
        row(2, v6("::ffff:127.0.0.1", 50001), v6("::ffff:127.0.0.1", 8280), 1002),
    ]
    assert peeruser.owner_in(table, ("::1", 50000), ("::1", 8280)) == 1001
    assert peeruser.owner_in(table, ("127.0.0.1", 50001), ("127.0.0.1", 8280)) == 1002


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/net/tcp is Linux's")
def test_a_real_connection_is_this_processs() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        conn, peer = server.accept()
        with client, conn:
            ours = conn.getsockname()
            assert peeruser.socket_owner(peer, ours) == os.geteuid()
            assert peeruser.socket_owner(ours, peer) == os.geteuid()  # the node's own end
            assert peeruser.socket_owner(("127.0.0.1", 1), ours) is None
