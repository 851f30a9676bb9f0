"""``Client.push`` (``treedrive push``) against a real node process: over plain http the body
goes with ``sendfile``, and what arrives, the progress told and every error are the same as
when urllib sends it (the path https and proxies take)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import FAST, NODE_PROCESS_WARNINGS, NodeProcess, fill, free_port
from treedrive.client import Client, TreeDriveError
from treedrive.client.http import STEP

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90), *NODE_PROCESS_WARNINGS]

Factory = Callable[..., NodeProcess]
MiB = 1 << 20


def client_of(node: NodeProcess, token: str | None = "") -> Client:
    """A client that sends the bytes (not the path: see ``test_push_by_path.py``)."""
    if token == "":
        token = (node.data_dir / "api-token").read_text().strip()
    return Client(str(node.info()["http"]), token, by_path=False)


def started(node: NodeProcess) -> NodeProcess:
    node.start()
    for _ in range(200):
        if node.info().get("http"):
            return node
        threading.Event().wait(0.1)
    raise AssertionError(f"{node.peer_id}'s node.json never named its API")


def urllib_way(client: Client) -> Client:
    """The same client, sending as it does over https (urllib, 1 MiB reads)."""
    plain = Client(client.url, client.token, by_path=False)
    plain.transport.plain = lambda: None  # type: ignore[method-assign]
    return plain


def both_ways(client: Client) -> list[Client]:
    assert client.transport.plain() is not None  # plain http, no proxy: the sendfile path
    return [client, urllib_way(client)]


def error_of(client: Client, path: Path) -> str:
    with pytest.raises(TreeDriveError) as failed:
        client.push(path, name="x.bin")
    return failed.value.message


def content(client: Client, file_id: str) -> bytes:
    with client.content(file_id) as resp:
        return bytes(resp.read())


def test_a_push_arrives_whole_either_way_and_tells_its_progress(
    node_process: Factory, tmp_path: Path
) -> None:
    client = client_of(started(node_process("alice")))
    for way in both_ways(client):
        src = tmp_path / "big.bin"
        data = os.urandom(2 * STEP + 12345)  # more than one sendfile step, not a whole number
        src.write_bytes(data)
        told: list[int] = []
        answer = way.push(src, name="big.bin", progress=told.append)
        assert sum(told) == len(data)
        assert len(told) > 1
        assert (answer["display_name"], answer["size_bytes"], answer["existing"]) == (
            "big.bin",
            len(data),
            False,
        )
        assert content(client, answer["file_id"]) == data

        # pushed again: the node's answer for bytes it already shares
        again = way.push(src, name="big.bin")
        assert (again["file_id"], again["existing"]) == (answer["file_id"], True)

    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    for way in both_ways(client):
        assert way.push(empty, force=True)["size_bytes"] == 0


def test_the_nodes_refusals_read_the_same_either_way(node_process: Factory, tmp_path: Path) -> None:
    node = started(node_process("alice", "--max-upload", "1"))
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(2 * MiB))
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 100)
    for way in both_ways(client_of(node)):
        assert error_of(way, big) == "upload of 2097152 bytes is over the cap (1048576)"
    for way in both_ways(client_of(node, "not-the-token")):
        assert "wrong API token" in error_of(way, small)
    for way in both_ways(client_of(node, None)):
        assert "needs the node's API token" in error_of(way, small)
    url = str(node.info()["http"]).rstrip("/")
    with urllib.request.urlopen(url + "/api/files", timeout=10) as resp:  # noqa: S310
        assert b'"files": []' in resp.read()


def test_no_node_and_a_node_that_hangs_up_read_the_same_either_way(tmp_path: Path) -> None:
    src = tmp_path / "x.bin"
    src.write_bytes(os.urandom(32 * MiB))
    port = free_port()
    refused = Client(f"http://127.0.0.1:{port}/", "t", by_path=False)
    messages = {error_of(way, src) for way in both_ways(refused)}
    assert messages == {
        f"cannot reach the node at http://127.0.0.1:{port}/ "
        "([Errno 111] Connection refused); is it running?"
    }

    with hangs_up_after(64 * 1024) as url:
        for way in both_ways(Client(url, "t", by_path=False)):
            message = error_of(way, src)
            assert re.fullmatch(
                rf"cannot reach the node at {re.escape(url)} \(.+\); is it running\?", message
            ), message


@contextlib.contextmanager
def hangs_up_after(n: int) -> Iterator[str]:
    """A server that takes ``n`` bytes of each request and closes the connection unanswered."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                with conn:
                    got = 0
                    while got < n and (chunk := conn.recv(n - got)):
                        got += len(chunk)

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        stop.set()
        listener.close()
        worker.join(5)


def test_a_full_disk_reads_the_same_either_way(small_disk: Path, tmp_path: Path) -> None:
    data_dir = small_disk / "alice"
    args = [
        "--peer-id", "alice", "--port", str(free_port()), "--data-dir", str(data_dir),
        "--gossip-interval", str(FAST["gossip_interval"]), "--http-port", "0",
    ]  # fmt: skip
    node = NodeProcess("alice", data_dir, int(args[3]), args)
    node.log = tmp_path / "alice.out"  # not on the disk that fills up
    try:
        client = client_of(started(node))
        src = tmp_path / "x.bin"
        src.write_bytes(os.urandom(2 * MiB))
        fill(small_disk / "filler")
        by_path = Client(client.url, client.token)  # the node reads the file itself
        messages = {error_of(way, src) for way in [*both_ways(client), by_path]}
        assert len(messages) == 1, messages
        assert "No space left on device" in messages.pop()
    finally:
        node.kill()
