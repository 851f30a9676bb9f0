"""An upload (``treedrive push``) into a node whose push target is a TreeDrive peer goes on to
that peer while it arrives (a streamed push, PROTOCOL.md 2.4), between real node processes: the
peer holds the verified file, and an upload cut short leaves nothing on either node."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.client.test_push import client_of, content, started
from tests.conftest import NODE_PROCESS_WARNINGS, NodeProcess
from treedrive.client import Client

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90), *NODE_PROCESS_WARNINGS]

Factory = Callable[..., NodeProcess]
MiB = 1 << 20


def eventually(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def pair(node_process: Factory) -> tuple[Client, Client]:
    """alice and bob, each a TreeDrive peer of the other that takes streamed pushes."""
    alice = started(node_process("alice"))
    bob = started(node_process("bob", "--bootstrap", alice.address))
    a, b = client_of(alice), client_of(bob)

    def streams(c: Client, other: str) -> bool:
        return any(p["peer_id"] == other and "stream-push" in p["features"] for p in c.peers())

    eventually(lambda: streams(a, "bob") and streams(b, "alice"))
    return a, b


def test_an_upload_reaches_the_peer_while_it_arrives(node_process: Factory, tmp_path: Path) -> None:
    a, b = pair(node_process)
    src = tmp_path / "big.bin"
    data = os.urandom(24 * MiB + 7)
    src.write_bytes(data)
    answer = a.push(src, name="big.bin")
    file_id = answer["file_id"]

    def bob_holds() -> bool:
        found = b.files("local")
        return any(f["file_id"] == file_id and f["has_copy"] for f in found)

    eventually(bob_holds)
    assert content(b, file_id) == data
    sent = eventually(
        lambda: [
            t for t in a.transfers()["recent"] if t["direction"] == "out" and t["state"] == "done"
        ]
    )
    assert (sent[0]["file_id"], sent[0]["peer_id"], sent[0]["bytes_done"]) == (
        file_id,
        "bob",
        len(data),
    )


def test_an_upload_cut_short_leaves_nothing_on_either_node(
    node_process: Factory, tmp_path: Path
) -> None:
    a, b = pair(node_process)
    size = 64 * MiB
    host, port = a.url.split("//")[1].rstrip("/").split(":")
    request = (
        f"POST /api/files?name=cut.bin HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {a.token}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request + os.urandom(8 * MiB))
        # bob is receiving the bytes already: his partial file grows
        eventually(lambda: any((tmp_path / "bob" / "partial").iterdir()))
    # the client is gone: alice drops the upload and calls off the push; bob keeps nothing
    for node in ("alice", "bob"):
        eventually(lambda node=node: not any((tmp_path / node / "partial").iterdir()))
    for c in (a, b):
        assert c.files() == []
    assert list((tmp_path / "bob" / "blobs").iterdir()) == []
