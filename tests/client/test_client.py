"""``treedrive.client`` against in-process nodes over real HTTP on loopback (real sockets, real
SQLite): every method, the errors each refusal becomes, the event stream, finding a node from its
data dir. The client blocks, so the tests call it from a worker thread while the nodes run."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import address, free_port, wait_for
from treedrive.client import (
    AuthError,
    BadNodeAddress,
    BadRequest,
    Client,
    Forbidden,
    LocalFileError,
    NodeEvent,
    NodeNotRunning,
    NodeUnreachable,
    NotFound,
    TooLarge,
)
from treedrive.core.node import Node

pytestmark = pytest.mark.timeout(60)

Starter = Callable[..., Any]
T = TypeVar("T")


async def run(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(call, *args, **kwargs)


def client_of(node: Node, token: str | None = "") -> Client:
    assert node.http_url is not None
    if token == "":
        token = (node.config.data_dir / "api-token").read_text().strip()
    return Client(node.http_url, token)


async def pair(start_node: Starter) -> tuple[Node, Node]:
    alice: Node = await start_node("alice", http_port=0)
    bob: Node = await start_node("bob", http_port=0, bootstrap=(address(alice),))
    await wait_for(lambda: {p.peer_id for p in alice.peers()} == {"bob"})
    await wait_for(lambda: {p.peer_id for p in bob.peers()} == {"alice"})
    return alice, bob


async def test_every_method_against_two_nodes(start_node: Starter, tmp_path: Path) -> None:
    alice, bob = await pair(start_node)
    a, b = client_of(alice), client_of(bob)
    src = tmp_path / "notes.bin"
    data = os.urandom(3 * (1 << 20) + 5)
    src.write_bytes(data)

    told: list[int] = []
    pushed = await run(b.push, src, name="shared.bin", progress=told.append)
    file_id = pushed["file_id"]
    assert (pushed["display_name"], pushed["size_bytes"], pushed["existing"]) == (
        "shared.bin",
        len(data),
        False,
    )
    assert (pushed["file_owner"], pushed["mine"], pushed["has_copy"]) == ("bob", True, True)
    assert sum(told) == len(data)
    again = await run(b.push, str(src), name="shared.bin")
    assert (again["file_id"], again["existing"]) == (file_id, True)

    assert (await run(b.file, file_id[:8]))["file_id"] == file_id  # a prefix will do
    assert [f["file_id"] for f in await run(b.files, "local")] == [file_id]
    page = await run(b.files_page, "both", 0, 1)
    assert (page["total"], page["limit"], len(page["files"])) == (1, 1, 1)

    await wait_for(lambda: alice.file(file_id) is not None)
    got = await run(a.get, file_id)  # alice may hold it already (a push goes to one peer)
    assert (got["file_id"], got["has_copy"]) == (file_id, True)
    out = tmp_path / "out"
    out.mkdir()
    saved = await run(a.download, file_id, out / "copy.bin")
    assert saved.read_bytes() == data
    assert [p.name for p in out.iterdir()] == ["copy.bin"]  # no partial file left beside it
    with await run(a.content, file_id) as resp:
        assert int(resp.headers["Content-Length"]) == len(data)

    status = await run(b.status)
    assert (status["peer_id"], status["port"], status["http"]) == ("bob", bob.port, bob.http_url)
    assert (status["counts"]["peers"], status["counts"]["local"], status["authorized"]) == (
        1,
        1,
        True,
    )
    assert status["fingerprint"] == bob.key.fingerprint
    assert [(p["peer_id"], p["port"], p["treedrive"]) for p in await run(b.peers)] == [
        ("alice", alice.port, True)
    ]
    assert "recent" in await run(b.transfers)
    assert isinstance(await run(b.throughput), list)

    assert await run(b.limits) == {"download": None, "upload": None}
    assert await run(b.set_limits, download=1e6) == {"download": 1e6, "upload": None}
    assert await run(b.set_limits, upload=2048) == {"download": 1e6, "upload": 2048}
    assert await run(b.set_limits, download=None) == {"download": None, "upload": 2048}
    assert bob.rate_limits == (None, 2048)

    assert await run(b.forget_key, "alice") == {"peer_id": "alice", "forgotten": True}
    assert await run(b.delete, file_id[:10]) == {"deleted": file_id}
    await wait_for(lambda: alice.file(file_id) is None)


async def test_each_refusal_is_its_own_error_with_the_nodes_message(
    start_node: Starter, tmp_path: Path
) -> None:
    alice, bob = await pair(start_node)
    a, b = client_of(alice), client_of(bob)
    src = tmp_path / "x.bin"
    src.write_bytes(b"x" * 100)
    pushed = await run(b.push, src)
    await wait_for(lambda: alice.file(pushed["file_id"]) is not None)

    async def refusal(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with pytest.raises(Exception) as raised:  # noqa: PT011 (the type is checked below)
            await run(call, *args, **kwargs)
        return raised.value

    no_token = await refusal(client_of(alice, None).push, src)
    assert isinstance(no_token, AuthError)
    assert (no_token.status, no_token.message) == (401, "this request needs the node's API token")
    wrong = await refusal(client_of(alice, "not-it").delete, pushed["file_id"])
    assert (type(wrong), wrong.message) == (AuthError, "wrong API token")

    missing = await refusal(a.file, "deadbeefdeadbeef")
    assert (type(missing), missing.status) == (NotFound, 404)
    assert "deadbeef" in missing.message
    assert isinstance(await refusal(a.forget_key, "nobody"), NotFound)
    others = await refusal(a.delete, pushed["file_id"])
    assert (type(others), others.status) == (Forbidden, 403)
    bad = await refusal(a.set_limits, download=-1)
    assert (type(bad), bad.message) == (
        BadRequest,
        "download must be bytes per second (a number ≥ 0) or null",
    )
    assert str(bad) == bad.message

    with pytest.raises(LocalFileError) as unread:
        await run(a.push, tmp_path / "missing.bin")
    assert (
        unread.value.message == f"cannot read {tmp_path / 'missing.bin'}: No such file or directory"
    )
    await run(a.get, pushed["file_id"])
    nowhere = tmp_path / "no-such-folder" / "x.bin"
    with pytest.raises(LocalFileError) as unsaved:
        await run(a.download, pushed["file_id"], nowhere)
    assert unsaved.value.message == f"cannot save to {nowhere}: No such file or directory"

    capped: Node = await start_node("carol", http_port=0, max_upload=10)
    big = await refusal(client_of(capped).push, src)
    assert (type(big), big.message) == (TooLarge, "upload of 100 bytes is over the cap (10)")


def test_an_address_that_does_not_answer_or_is_none(tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(NodeUnreachable) as raised:
        Client(f"127.0.0.1:{port}").status()
    assert raised.value.message == (
        f"cannot reach the node at http://127.0.0.1:{port} "
        "([Errno 111] Connection refused); is it running?"
    )
    assert raised.value.url == f"http://127.0.0.1:{port}"
    for given in ("nonsense", "ftp://host:21/", "http://host:99999/", "host:port"):
        with pytest.raises(BadNodeAddress) as bad:
            Client(given)
        assert bad.value.message.startswith(f"{given!r} is not a node's address")
        assert isinstance(bad.value, ValueError)
    assert repr(Client("127.0.0.1:8280", "secret-token")) == "Client('http://127.0.0.1:8280')"


async def test_a_node_is_found_from_its_data_dir(start_node: Starter, tmp_path: Path) -> None:
    node: Node = await start_node("alice", http_port=0)
    found = Client.find(node.config.data_dir)
    assert (found.url, found.token) == (node.http_url, client_of(node).token)
    assert (await run(found.status))["peer_id"] == "alice"
    given = Client.find(node.config.data_dir, url="127.0.0.1:1")
    assert (given.url, given.token) == ("http://127.0.0.1:1", found.token)
    with pytest.raises(NodeNotRunning, match="no node is running on"):
        Client.find(tmp_path / "nobody")


async def test_the_event_stream_says_hello_then_what_happens(
    start_node: Starter, tmp_path: Path
) -> None:
    node: Node = await start_node("alice", http_port=0)
    client = client_of(node)
    hello = threading.Event()
    seen: list[NodeEvent] = []

    def listen() -> None:
        with client.events() as stream:
            for event in stream:
                seen.append(event)
                hello.set()
                if event.type == "FileStored":
                    break
            assert stream.last_id is not None  # the node numbers its events: a resume point
            assert stream.last_id == event.id
            assert stream.retry == 2.0

    listening = asyncio.ensure_future(asyncio.to_thread(listen))
    await wait_for(hello.is_set)
    src = tmp_path / "x.bin"
    src.write_bytes(b"hello")
    pushed = await run(client.push, src)
    await asyncio.wait_for(listening, 20)
    assert seen[0].type == "Hello"
    assert seen[0].data["status"]["peer_id"] == "alice"
    stored = seen[-1]
    assert (stored.type, stored.data["file_id"]) == ("FileStored", pushed["file_id"])
    assert stored.id is not None
    assert seen[0].id is None  # Hello is not numbered (not replayed)

    only: list[str] = []

    def filtered() -> None:
        with client.events(types={"FileDeleted"}) as stream:
            hello.clear()
            for event in stream:
                only.append(event.type)
                break

    hello.clear()
    listening = asyncio.ensure_future(asyncio.to_thread(filtered))
    await asyncio.sleep(0.5)  # the stream is open (its Hello was filtered out)
    await run(client.delete, pushed["file_id"])
    await asyncio.wait_for(listening, 20)
    assert only == ["FileDeleted"]


async def test_health_needs_no_token_and_metrics_count_a_push(
    start_node: Starter, tmp_path: Path
) -> None:
    node: Node = await start_node("alice", http_port=0)
    anonymous = client_of(node, token=None)
    health = await run(anonymous.health)
    assert (health["status"], health["peer_id"]) == ("ok", "alice")
    with pytest.raises(AuthError):
        await run(anonymous.set_limits, download=None)  # a change still wants the token

    def pushed_files(text: str) -> float:
        for line in text.splitlines():
            if line.startswith("treedrive_files{") and 'scope="local"' in line:
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no local file count in {text[:500]!r}")

    client = client_of(node)
    before = pushed_files(await run(client.metrics))
    src = tmp_path / "m.bin"
    src.write_bytes(b"metrics")
    await run(client.push, src)
    await wait_for(lambda: bool(node.files()))
    assert await eventually_more(client, pushed_files, before)


async def eventually_more(client: Client, read: Callable[[str], float], before: float) -> bool:
    for _ in range(100):  # the counts are cached until the next committed change
        if read(await run(client.metrics)) > before:
            return True
        await asyncio.sleep(0.1)
    return False
