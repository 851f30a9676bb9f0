"""The web plugin's HTTP surface, over real HTTP on loopback against in-process nodes (real
sockets, real SQLite): the dashboard, ``/stats.json``, every ``/api/`` endpoint, the event
stream, and the refusals (token, Host, Origin, upload cap)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from tests.conftest import address, fast_config, wait_for
from treedrive.app import running_node
from treedrive.core.names import safe_name
from treedrive.core.node import Node
from treedrive.web import api as web_api
from treedrive.web import plugin as web_plugin

pytestmark = pytest.mark.timeout(60)

Starter = Callable[..., Any]
SEED_FILE_KEYS = {
    "file_name",
    "file_size",
    "file_id",
    "file_owner",
    "file_timestamp",
    "has_copy",
    "peers_with_file",
}


# -- helpers -------------------------------------------------------------------------------------
def token_of(node: Node) -> str:
    return (node.config.data_dir / "api-token").read_text().strip()


def url(node: Node, path: str) -> str:
    assert node.http_url is not None
    return node.http_url.rstrip("/") + path


def auth(node: Node) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_of(node)}"}


def blobs(node: Node) -> list[Path]:
    return sorted((node.config.data_dir / "blobs").iterdir())


def partials(node: Node) -> list[Path]:
    return sorted((node.config.data_dir / "partial").iterdir())


def file_id_of(data: bytes, ts: int) -> str:
    return hashlib.sha256(data + str(ts).encode()).hexdigest()


async def web_node(start_node: Starter, peer_id: str, **config: Any) -> Node:
    node: Node = await start_node(peer_id, http_port=0, **config)
    assert node.http_url is not None
    return node


async def joined_pair(start_node: Starter, **bob_config: Any) -> tuple[Node, Node]:
    """alice, and bob bootstrapped through her; each tracks the other."""
    alice = await web_node(start_node, "alice")
    bob = await web_node(start_node, "bob", bootstrap=(address(alice),), **bob_config)
    await wait_for(lambda: {p.peer_id for p in alice.peers()} == {"bob"})
    await wait_for(lambda: {p.peer_id for p in bob.peers()} == {"alice"})
    return alice, bob


async def holder_and_fetcher(
    start_node: Starter, tmp_path: Path, data: bytes, name: str
) -> tuple[Node, Node, str]:
    """alice pushes ``data`` while alone (so no copy is pushed to anyone), then bob joins without
    fetching on join: bob knows the file as remote only. Returns (alice, bob, file_id)."""
    alice = await web_node(start_node, "alice")
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    meta = await alice.push(src, name)
    bob = await web_node(start_node, "bob", bootstrap=(address(alice),), download_limit=0)
    await wait_for(lambda: bob.file(meta.file_id) is not None)
    await bob.joined.wait()
    entry = bob.file(meta.file_id)
    assert entry is not None
    assert not entry.has_copy
    return alice, bob, meta.file_id


async def json_of(resp: aiohttp.ClientResponse) -> Any:
    assert resp.content_type == "application/json", resp.content_type
    return await resp.json()


async def assert_error(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert resp.status == status, (resp.status, await resp.text())
    body = await json_of(resp)
    assert body["status"] == status
    assert isinstance(body["error"], str)
    assert body["error"]
    return dict(body)


def multipart_form(fields: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body as browsers write it: (name, filename or None, bytes)."""
    boundary = "----treedrive-test-" + os.urandom(8).hex()
    out = bytearray()
    for name, filename, value in fields:
        out += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"Content-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + value + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe=True: keep cookies that a server on an IP address (127.0.0.1) sets.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


# -- the dashboard and the login -----------------------------------------------------------------
async def test_index_serves_the_dashboard(start_node: Starter, http: aiohttp.ClientSession) -> None:
    node = await web_node(start_node, "alice")
    async with http.get(url(node, "/")) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        assert resp.headers["Cache-Control"] == "no-store"
        page = await resp.text()
    assert "<html" in page
    assert "TreeDrive" in page
    assert "Set-Cookie" not in resp.headers


async def test_login_with_the_token_sets_the_cookie_and_redirects(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice")
    token = token_of(node)
    async with http.get(url(node, "/api/status")) as resp:
        assert (await json_of(resp))["authorized"] is False
    async with http.get(url(node, f"/?token={token}"), allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/"
        cookie = resp.cookies["treedrive_token"]
        assert cookie.value == token
        assert cookie["httponly"]
        assert cookie["samesite"] == "Strict"
        assert cookie["path"] == "/"
    jar = {c.key: c.value for c in http.cookie_jar}
    assert jar == {"treedrive_token": token}
    async with http.get(url(node, "/api/status")) as resp:
        assert (await json_of(resp))["authorized"] is True
    # a state-changing request with only the cookie (no Authorization header) is accepted
    async with http.post(url(node, "/api/files?name=by-cookie.txt"), data=b"cookie bytes") as resp:
        assert resp.status == 201, await resp.text()
        file_id = (await json_of(resp))["file_id"]
    entry = node.file(file_id)
    assert entry is not None
    assert entry.has_copy
    async with http.delete(url(node, f"/api/files/{file_id}")) as resp:
        assert resp.status == 200
    assert node.file(file_id) is None


async def test_login_follows_the_redirect_to_the_page(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice")
    async with http.get(url(node, f"/?token={token_of(node)}")) as resp:
        assert resp.status == 200
        assert resp.url.query.get("token") is None  # the token left the address bar
        assert "<html" in await resp.text()


async def test_login_with_a_bad_token_is_refused(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice")
    async with http.get(url(node, "/?token=not-the-token"), allow_redirects=False) as resp:
        await assert_error(resp, 401)
        assert "treedrive_token" not in resp.cookies
    assert not list(http.cookie_jar)
    async with http.get(url(node, "/?token="), allow_redirects=False) as resp:
        await assert_error(resp, 401)


async def test_the_token_file_is_private_and_stable(start_node: Starter) -> None:
    node = await web_node(start_node, "alice")
    path = node.config.data_dir / "api-token"
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(token_of(node)) >= 32


# -- /stats.json ----------------------------------------------------------------------------------
async def test_stats_json_has_the_seed_shape(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    alice, bob = await joined_pair(start_node)
    data = os.urandom(3000)
    async with http.post(
        url(alice, "/api/files?name=stats.bin"), data=data, headers=auth(alice)
    ) as resp:
        assert resp.status == 201
        file_id = (await resp.json())["file_id"]
    await wait_for(lambda: bob.file(file_id) is not None)

    async with http.get(url(alice, "/stats.json")) as resp:
        assert resp.status == 200
        stats = await json_of(resp)
    assert set(stats) == {"peerId", "peers", "files"}
    assert stats["peerId"] == "alice"
    assert len(stats["peers"]) == 1
    peer = stats["peers"][0]
    assert set(peer) == {"peerId", "host", "port", "last_seen"}
    assert (peer["peerId"], peer["host"], peer["port"]) == ("bob", bob.host, bob.port)
    assert isinstance(peer["last_seen"], int | float)
    [f] = stats["files"]
    assert set(f) == SEED_FILE_KEYS
    assert f["file_id"] == file_id
    assert f["file_name"] == "stats.bin"
    assert f["file_owner"] == "alice"
    assert f["file_size"] == pytest.approx(len(data) / 1024 / 1024)
    assert isinstance(f["file_timestamp"], int | float)
    assert file_id_of(data, int(f["file_timestamp"])) == file_id
    assert f["has_copy"] is True  # a JSON boolean, as the seed serves it
    assert "alice" in f["peers_with_file"]

    async with http.get(url(bob, "/stats.json")) as resp:
        stats = await json_of(resp)
    assert stats["peerId"] == "bob"
    assert [p["peerId"] for p in stats["peers"]] == ["alice"]
    [f] = stats["files"]
    assert set(f) == SEED_FILE_KEYS
    assert f["file_id"] == file_id
    assert f["file_owner"] == "alice"
    assert isinstance(f["has_copy"], bool)
    assert "alice" in f["peers_with_file"]


# -- /api/status, /api/peers ---------------------------------------------------------------------
async def test_status(start_node: Starter, http: aiohttp.ClientSession) -> None:
    node = await web_node(start_node, "alice")
    async with http.get(url(node, "/api/status")) as resp:
        assert resp.status == 200
        status = await json_of(resp)
    assert status["peer_id"] == "alice"
    assert (status["host"], status["port"]) == (node.host, node.port)
    assert status["http"] == node.http_url
    assert status["counts"] == {"peers": 0, "files": 0, "local": 0, "remote": 0}
    assert status["transfers"] == 0
    assert status["uptime"] >= 0
    assert isinstance(status["features"], list)
    assert status["authorized"] is False


async def test_peers_lists_the_other_node(start_node: Starter, http: aiohttp.ClientSession) -> None:
    alice, bob = await joined_pair(start_node)
    for me, other in ((alice, bob), (bob, alice)):
        async with http.get(url(me, "/api/peers")) as resp:
            assert resp.status == 200
            body = await json_of(resp)
        [peer] = body["peers"]
        assert peer["peer_id"] == other.peer_id
        assert (peer["host"], peer["port"]) == (other.host, other.port)
        assert isinstance(peer["last_seen"], int | float)
        assert peer["treedrive"] is True
        assert isinstance(peer["features"], list)
    async with http.get(url(alice, "/api/status")) as resp:
        assert (await resp.json())["counts"]["peers"] == 1


# -- /api/files -----------------------------------------------------------------------------------
async def test_files_scopes_and_pagination(
    start_node: Starter, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    alice = await web_node(start_node, "alice")
    remote_ids = set()
    for i in range(3):
        src = tmp_path / f"a{i}.bin"
        src.write_bytes(os.urandom(100 + i))
        remote_ids.add((await alice.push(src)).file_id)
    bob = await web_node(start_node, "bob", bootstrap=(address(alice),), download_limit=0)
    await wait_for(lambda: all(bob.file(i) is not None for i in remote_ids))
    await bob.joined.wait()
    local_ids = set()
    for i in range(2):
        async with http.post(
            url(bob, f"/api/files?name=b{i}.bin"), data=os.urandom(200 + i), headers=auth(bob)
        ) as resp:
            assert resp.status == 201
            local_ids.add((await resp.json())["file_id"])

    async def listing(query: str) -> dict[str, Any]:
        async with http.get(url(bob, f"/api/files?{query}")) as resp:
            assert resp.status == 200, await resp.text()
            return dict(await json_of(resp))

    default = await listing("")
    assert (default["scope"], default["total"], default["offset"]) == ("both", 5, 0)
    for scope, expected in (
        ("local", local_ids),
        ("remote", remote_ids),
        ("both", local_ids | remote_ids),
    ):
        page = await listing(f"scope={scope}")
        assert page["scope"] == scope
        assert page["total"] == len(expected)
        assert {f["file_id"] for f in page["files"]} == expected
        for f in page["files"]:
            assert f["has_copy"] is (f["file_id"] in local_ids)
            assert f["mine"] is (f["file_id"] in local_ids)
            assert f["file_owner"] == ("bob" if f["file_id"] in local_ids else "alice")

    # pages of 2: every file exactly once, the total on every page
    seen: list[str] = []
    for offset in (0, 2, 4, 6):
        page = await listing(f"scope=both&offset={offset}&limit=2")
        assert (page["total"], page["offset"], page["limit"]) == (5, offset, 2)
        assert len(page["files"]) == max(0, min(2, 5 - offset))
        seen += [f["file_id"] for f in page["files"]]
    assert len(seen) == 5
    assert set(seen) == local_ids | remote_ids
    page = await listing("scope=remote&offset=1&limit=500")
    assert page["total"] == 3
    assert len(page["files"]) == 2


@pytest.mark.parametrize(
    "query",
    [
        "scope=mine",
        "scope=",
        "limit=0",
        "limit=501",
        "limit=ten",
        "offset=-1",
        "offset=1.5",
    ],
)
async def test_files_refuses_bad_queries(
    start_node: Starter, http: aiohttp.ClientSession, query: str
) -> None:
    node = await web_node(start_node, "alice")
    async with http.get(url(node, f"/api/files?{query}")) as resp:
        body = await assert_error(resp, 400)
    name = query.split("=", 1)[0]
    assert name in body["error"]


async def test_one_file_and_an_unknown_one(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice")
    data = b"one file" * 100
    async with http.post(url(node, "/api/files?name=one.txt"), data=data, headers=auth(node)) as r:
        created = await json_of(r)
    file_id = created["file_id"]
    async with http.get(url(node, f"/api/files/{file_id}")) as resp:
        assert resp.status == 200
        f = await json_of(resp)
    assert created.pop("existing") is False  # a new push (201) says so
    assert f == created
    assert f["file_name"] == f["display_name"] == "one.txt"
    assert f["size_bytes"] == len(data)
    assert (f["file_owner"], f["mine"], f["has_copy"], f["holders"]) == ("alice", True, True, [])
    unknown = "0" * 64
    async with http.get(url(node, f"/api/files/{unknown}")) as resp:
        body = await assert_error(resp, 404)
    assert unknown[:12] in body["error"]


# -- upload (push) --------------------------------------------------------------------------------
async def test_raw_upload_is_pushed_to_the_other_node(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    alice, bob = await joined_pair(start_node)
    data = os.urandom(70_000)
    async with http.post(
        url(alice, "/api/files?name=report.pdf"),
        data=data,
        headers={**auth(alice), "Content-Type": "application/octet-stream"},
    ) as resp:
        assert resp.status == 201, await resp.text()
        f = await json_of(resp)
    file_id = f["file_id"]
    assert file_id == file_id_of(data, int(f["file_timestamp"]))
    assert (f["file_name"], f["size_bytes"], f["file_owner"]) == ("report.pdf", len(data), "alice")
    assert f["has_copy"] is True
    assert f["mine"] is True
    assert (alice.config.data_dir / "blobs" / file_id).read_bytes() == data
    assert partials(alice) == []

    # the file reaches bob's catalogue (ANNOUNCE, and the copy pushed to the only peer)
    async def on_bob() -> dict[str, Any] | None:
        async with http.get(url(bob, f"/api/files/{file_id}")) as r:
            return dict(await r.json()) if r.status == 200 else None

    for _ in range(200):
        if (seen := await on_bob()) is not None:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the pushed file never reached bob")
    assert (seen["file_owner"], seen["file_name"], seen["mine"]) == ("alice", "report.pdf", False)


async def test_multipart_upload_is_pushed_and_its_name_made_safe(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    alice, bob = await joined_pair(start_node)
    data = os.urandom(5000)
    # as a browser sends it (aiohttp's FormData would percent-encode the name)
    form, content_type = multipart_form(
        [("comment", None, b"not the file"), ("file", "../../etc/..passwd", data)]
    )
    headers = {**auth(alice), "Content-Type": content_type}
    async with http.post(url(alice, "/api/files"), data=form, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        f = await json_of(resp)
    assert f["file_name"] == "passwd" == safe_name("../../etc/..passwd")
    assert f["size_bytes"] == len(data)
    assert (alice.config.data_dir / "blobs" / f["file_id"]).read_bytes() == data
    await wait_for(lambda: bob.file(f["file_id"]) is not None)
    entry = bob.file(f["file_id"])
    assert entry is not None
    assert entry.meta.file_owner == "alice"
    assert entry.meta.file_name == "passwd"


async def test_upload_without_a_name_or_a_file_field_is_refused(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice")
    async with http.post(url(node, "/api/files"), data=b"nameless", headers=auth(node)) as resp:
        await assert_error(resp, 400)
    form = aiohttp.FormData()
    form.add_field("other", b"x" * 10, filename="x.bin")
    async with http.post(url(node, "/api/files"), data=form, headers=auth(node)) as resp:
        await assert_error(resp, 400)
    assert node.files() == []
    assert blobs(node) == []
    assert partials(node) == []


# -- fetch (get) and content ---------------------------------------------------------------------
async def test_fetch_brings_the_other_nodes_file(
    start_node: Starter, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    data = os.urandom(300_000)
    _alice, bob, file_id = await holder_and_fetcher(start_node, tmp_path, data, "big.bin")
    # not held yet: no content
    async with http.get(url(bob, f"/api/files/{file_id}/content")) as resp:
        await assert_error(resp, 404)
    async with http.post(url(bob, f"/api/files/{file_id}/fetch"), headers=auth(bob)) as resp:
        assert resp.status == 200, await resp.text()
        f = await json_of(resp)
    assert (f["file_id"], f["has_copy"], f["size_bytes"], f["mine"]) == (
        file_id,
        True,
        len(data),
        False,
    )
    assert (bob.config.data_dir / "blobs" / file_id).read_bytes() == data
    async with http.get(url(bob, f"/api/files/{file_id}/content")) as resp:
        assert resp.status == 200
        assert await resp.read() == data
    # fetching a file already held answers at once
    async with http.post(url(bob, f"/api/files/{file_id}/fetch"), headers=auth(bob)) as resp:
        assert resp.status == 200
        assert (await resp.json())["has_copy"] is True
    # the transfer is recorded
    async with http.get(url(bob, "/api/transfers")) as resp:
        assert resp.status == 200
        transfers = await json_of(resp)
    assert transfers["active"] == []
    [t] = [t for t in transfers["recent"] if t["file_id"] == file_id]
    assert (t["direction"], t["peer_id"], t["state"], t["bytes_done"]) == (
        "in",
        "alice",
        "done",
        len(data),
    )
    assert t["error"] is None


async def test_fetch_of_an_unknown_file_is_404(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice")
    async with http.post(url(node, f"/api/files/{'a' * 64}/fetch"), headers=auth(node)) as resp:
        await assert_error(resp, 404)
    async with http.post(url(node, "/api/files/nonsense/fetch"), headers=auth(node)) as resp:
        await assert_error(resp, 404)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("../../secret/..evil.txt", "evil.txt"), ("résumé 2024.txt", "résumé 2024.txt")],
)
async def test_content_is_the_bytes_under_the_safe_name(
    start_node: Starter,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    name: str,
    expected: str,
) -> None:
    data = os.urandom(20_000)
    _alice, bob, file_id = await holder_and_fetcher(start_node, tmp_path, data, name)
    async with http.post(url(bob, f"/api/files/{file_id}/fetch"), headers=auth(bob)) as resp:
        assert resp.status == 200, await resp.text()
    async with http.get(url(bob, f"/api/files/{file_id}/content")) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/octet-stream"
        disposition = resp.headers["Content-Disposition"]
        body = await resp.read()
    assert body == data
    assert disposition.startswith("attachment;")
    assert f"filename*=UTF-8''{quote(expected)}" in disposition
    assert "/" not in disposition.split("''", 1)[1]
    assert resp.content_disposition is not None
    assert resp.content_disposition.filename == expected


async def test_content_of_an_unknown_file_is_404(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice")
    async with http.get(url(node, f"/api/files/{'b' * 64}/content")) as resp:
        await assert_error(resp, 404)


# -- delete ---------------------------------------------------------------------------------------
async def test_delete_by_the_owner_removes_it_everywhere(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    alice, bob = await joined_pair(start_node)
    async with http.post(
        url(alice, "/api/files?name=doomed.bin"), data=os.urandom(4000), headers=auth(alice)
    ) as resp:
        file_id = (await resp.json())["file_id"]
    await wait_for(lambda: bob.file(file_id) is not None)

    # bob is not the owner
    async with http.delete(url(bob, f"/api/files/{file_id}"), headers=auth(bob)) as resp:
        body = await assert_error(resp, 403)
    assert "owner" in body["error"]
    assert bob.file(file_id) is not None
    assert alice.file(file_id) is not None

    async with http.delete(url(alice, f"/api/files/{file_id}"), headers=auth(alice)) as resp:
        assert resp.status == 200
        assert await json_of(resp) == {"deleted": file_id}
    assert alice.file(file_id) is None
    assert not (alice.config.data_dir / "blobs" / file_id).exists()
    async with http.get(url(alice, f"/api/files/{file_id}")) as resp:
        await assert_error(resp, 404)
    await wait_for(lambda: bob.file(file_id) is None)
    assert not (bob.config.data_dir / "blobs" / file_id).exists()
    async with http.get(url(bob, f"/api/files/{file_id}")) as resp:
        await assert_error(resp, 404)

    # deleting it again: unknown
    async with http.delete(url(alice, f"/api/files/{file_id}"), headers=auth(alice)) as resp:
        await assert_error(resp, 404)


# -- transfers, throughput -----------------------------------------------------------------------
async def test_transfers_and_throughput_shapes(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice")
    async with http.get(url(node, "/api/transfers")) as resp:
        assert resp.status == 200
        assert await json_of(resp) == {"active": [], "recent": []}

    async def samples() -> list[dict[str, Any]]:
        async with http.get(url(node, "/api/throughput")) as resp:
            assert resp.status == 200
            return list((await json_of(resp))["samples"])

    got: list[dict[str, Any]] = []
    for _ in range(100):  # the sampler takes one sample a second
        if got := await samples():
            break
        await asyncio.sleep(0.05)
    assert got, "no throughput sample"
    assert set(got[0]) == {"t", "in", "out", "in_bytes", "out_bytes"}
    assert got[0]["in"] == got[0]["out"] == 0


# -- the event stream -----------------------------------------------------------------------------
async def read_events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The ``data:`` payloads of a server-sent event stream."""
    while True:
        line = await resp.content.readline()
        if not line:
            return
        text = line.decode().rstrip("\n")
        if text.startswith("data: "):
            yield json.loads(text[len("data: ") :])


async def next_event(
    events: AsyncIterator[dict[str, Any]], wanted: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    async with asyncio.timeout(15):
        async for event in events:
            if wanted(event):
                return event
    raise AssertionError("the stream ended")


async def test_event_stream_says_hello_then_streams_changes(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    alice = await web_node(start_node, "alice")
    async with http.get(url(alice, "/api/events")) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        events = read_events(resp)
        hello = await next_event(events, lambda e: True)
        assert hello["type"] == "Hello"
        assert hello["status"]["peer_id"] == "alice"

        bob = await web_node(start_node, "bob", bootstrap=(address(alice),))
        seen = await next_event(events, lambda e: e["type"] == "PeerSeen")
        assert seen["peer"]["peer_id"] == "bob"
        assert seen["new"] is True

        async with http.post(
            url(alice, "/api/files?name=live.txt"), data=b"live" * 50, headers=auth(alice)
        ) as r:
            file_id = (await r.json())["file_id"]
        stored = await next_event(events, lambda e: e["type"] == "FileStored")
        assert stored["file_id"] == file_id
        assert stored["file"]["file_name"] == "live.txt"
        assert stored["file"]["has_copy"] is True
        await wait_for(lambda: bob.file(file_id) is not None)

        async with http.delete(url(alice, f"/api/files/{file_id}"), headers=auth(alice)) as r:
            assert r.status == 200
        deleted = await next_event(events, lambda e: e["type"] == "FileDeleted")
        assert deleted["file_id"] == file_id


# -- refusals -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/files?name=x.txt"),
        ("POST", "/api/files/{id}/fetch"),
        ("DELETE", "/api/files/{id}"),
    ],
)
@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"headers": {"Authorization": "Bearer wrong-token"}},
        {"headers": {"Authorization": "Bearer "}},
        {"cookies": {"treedrive_token": "wrong-token"}},
    ],
    ids=["none", "bad-bearer", "empty-bearer", "bad-cookie"],
)
async def test_state_changes_need_the_token(
    start_node: Starter,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    credentials: dict[str, Any],
) -> None:
    node = await web_node(start_node, "alice")
    async with http.post(
        url(node, "/api/files?name=keep.txt"), data=b"keep", headers=auth(node)
    ) as r:
        file_id = (await r.json())["file_id"]
    if "cookies" in credentials:
        http.cookie_jar.update_cookies(credentials["cookies"], URL(url(node, "/")))
    async with http.request(
        method,
        url(node, path.format(id=file_id)),
        data=b"sneaky",
        headers=credentials.get("headers"),
    ) as resp:
        body = await assert_error(resp, 401)
    assert "token" in body["error"]
    assert [e.meta.file_id for e in node.files()] == [file_id]
    assert [p.name for p in blobs(node)] == [file_id]


async def test_reads_need_no_token(start_node: Starter, http: aiohttp.ClientSession) -> None:
    node = await web_node(start_node, "alice")
    for path in ("/api/status", "/api/peers", "/api/files", "/api/transfers", "/stats.json"):
        async with http.get(url(node, path)) as resp:
            assert resp.status == 200, path


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1:1", "attacker"])
@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/"), ("GET", "/api/status"), ("POST", "/api/files?name=x")]
)
async def test_a_foreign_host_header_is_refused(
    start_node: Starter, http: aiohttp.ClientSession, host: str, method: str, path: str
) -> None:
    node = await web_node(start_node, "alice")
    async with http.request(
        method, url(node, path), data=b"x", headers={**auth(node), "Host": host}
    ) as resp:
        body = await assert_error(resp, 403)
    assert "Host" in body["error"]
    assert node.files() == []


async def test_every_local_host_name_is_accepted(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice")
    assert node.http_url is not None
    port = URL(node.http_url).port
    for name in ("127.0.0.1", "localhost"):
        async with http.get(url(node, "/api/status"), headers={"Host": f"{name}:{port}"}) as resp:
            assert resp.status == 200, name


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "https://evil.example:443", "null", "http://127.0.0.1:1"]
)
@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/api/status"), ("POST", "/api/files?name=x")]
)
async def test_a_foreign_origin_is_refused(
    start_node: Starter, http: aiohttp.ClientSession, origin: str, method: str, path: str
) -> None:
    node = await web_node(start_node, "alice")
    async with http.request(
        method, url(node, path), data=b"x", headers={**auth(node), "Origin": origin}
    ) as resp:
        body = await assert_error(resp, 403)
    assert "Origin" in body["error"]
    assert node.files() == []


async def test_the_nodes_own_origin_is_accepted(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice")
    assert node.http_url is not None
    origin = node.http_url.rstrip("/")
    async with http.post(
        url(node, "/api/files?name=same-origin.txt"),
        data=b"same origin",
        headers={**auth(node), "Origin": origin},
    ) as resp:
        assert resp.status == 201, await resp.text()


async def upload_chunks(data: bytes, size: int = 512) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
        await asyncio.sleep(0)


@pytest.mark.parametrize("how", ["content-length", "chunked", "multipart"])
async def test_an_upload_over_the_cap_is_refused_and_leaves_nothing(
    start_node: Starter, http: aiohttp.ClientSession, how: str
) -> None:
    node = await web_node(start_node, "alice", max_upload=1024)
    data = os.urandom(4096)
    body: Any
    if how == "content-length":
        body = data
    elif how == "chunked":
        body = upload_chunks(data)
    else:
        body = aiohttp.FormData()
        body.add_field("file", data, filename="big.bin")
    async with http.post(url(node, "/api/files?name=big.bin"), data=body, headers=auth(node)) as r:
        await assert_error(r, 413)
    assert node.files() == []
    assert blobs(node) == []
    assert partials(node) == []
    # under the cap is fine
    async with http.post(
        url(node, "/api/files?name=small.bin"), data=data[:1000], headers=auth(node)
    ) as r:
        assert r.status == 201
    assert len(node.files()) == 1
    assert partials(node) == []


async def test_unknown_routes_and_methods_answer_json_errors(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice")
    async with http.get(url(node, "/api/nothing-here")) as resp:
        await assert_error(resp, 404)
    async with http.put(url(node, "/api/files"), headers=auth(node)) as resp:
        await assert_error(resp, 405)


# -- more edges -----------------------------------------------------------------------------------
async def test_an_upload_of_exactly_the_cap_is_accepted(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice", max_upload=1024)
    data = os.urandom(1025)
    async with http.post(url(node, "/api/files?name=over.bin"), data=data, headers=auth(node)) as r:
        await assert_error(r, 413)
    async with http.post(
        url(node, "/api/files?name=at.bin"), data=data[:1024], headers=auth(node)
    ) as r:
        assert r.status == 201
        assert (await r.json())["size_bytes"] == 1024


async def test_a_multipart_upload_of_a_file_at_the_cap_is_accepted(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    """The cap is on the file, not on the form around it (a browser's upload of a file of
    exactly ``max_upload`` bytes must not be refused for the form's boundary lines)."""
    node = await web_node(start_node, "alice", max_upload=1024)
    data = os.urandom(1024)
    form, content_type = multipart_form([("file", "at-cap.bin", data)])
    headers = {**auth(node), "Content-Type": content_type}
    async with http.post(url(node, "/api/files"), data=form, headers=headers) as r:
        assert r.status == 201, await r.text()
        assert (await r.json())["size_bytes"] == 1024


async def test_an_upload_the_client_abandons_leaves_no_partial_file(
    start_node: Starter,
) -> None:
    node = await web_node(start_node, "alice")
    assert node.http_url is not None
    port = URL(node.http_url).port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        "POST /api/files?name=half.bin HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token_of(node)}\r\n"
        "Content-Type: application/octet-stream\r\n"
        "Content-Length: 1000000\r\n\r\n"
    )
    writer.write(head.encode() + os.urandom(300_000))
    await writer.drain()
    await wait_for(lambda: partials(node))  # the upload is being written
    writer.close()
    await writer.wait_closed()
    del reader
    await wait_for(lambda: not partials(node))
    assert blobs(node) == []
    assert node.files() == []


async def test_a_fetch_that_cannot_reach_a_holder_is_a_502(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    # the ghost never gossips: it must not expire (and its file go) before the last request
    node = await web_node(start_node, "alice", peer_timeout=60.0)
    data = b"ghost bytes"
    ts = 1_700_000_000
    file_id = file_id_of(data, ts)
    announce = {
        "type": "ANNOUNCE",
        "from": "ghost",
        "file_name": "ghost.txt",
        "file_size": len(data) / 1048576,
        "file_id": file_id,
        "file_owner": "ghost",
        "file_timestamp": ts,
    }
    _r, w = await asyncio.open_connection(node.host, node.port)
    w.write(json.dumps(announce).encode())
    await w.drain()
    w.close()
    await w.wait_closed()
    await wait_for(lambda: node.file(file_id) is not None)
    async with http.post(url(node, f"/api/files/{file_id}/fetch"), headers=auth(node)) as resp:
        body = await assert_error(resp, 502)
    assert file_id[:12] in body["error"]
    async with http.get(url(node, f"/api/files/{file_id}/content")) as resp:
        await assert_error(resp, 404)
    async with http.delete(url(node, f"/api/files/{file_id}"), headers=auth(node)) as resp:
        await assert_error(resp, 403)


async def test_an_event_stream_client_that_leaves_is_forgotten(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice")
    hub = web_plugin._servers[id(node)].hub
    async with http.get(url(node, "/api/events")) as resp:
        assert (await next_event(read_events(resp), lambda e: True))["type"] == "Hello"
        assert len(hub.clients) == 1
    await wait_for(lambda: not hub.clients)
    # the node still streams to the next client
    async with http.get(url(node, "/api/events")) as resp:
        events = read_events(resp)
        assert (await next_event(events, lambda e: True))["type"] == "Hello"
        async with http.post(
            url(node, "/api/files?name=after.txt"), data=b"after", headers=auth(node)
        ) as r:
            file_id = (await r.json())["file_id"]
        assert (await next_event(events, lambda e: e["type"] == "FileStored"))["file_id"] == file_id


async def test_stopping_the_node_ends_its_event_streams(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    config = fast_config(tmp_path / "alice", "alice", http_port=0)
    async with running_node(config) as node:
        resp = await http.get(url(node, "/api/events"))
        events = read_events(resp)
        assert (await next_event(events, lambda e: True))["type"] == "Hello"
    # the node stopped with the stream open: the stream ends, and the server is gone
    async with asyncio.timeout(10):
        rest = [e async for e in events]
    resp.release()
    assert rest == []
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.get(url(node, "/api/status"))


async def test_a_stream_client_that_falls_behind_is_told_to_resync(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    """A client whose queue overflows (a burst of thousands of records) skips what it missed and
    gets a Resync event, so the page reloads its view; its stream stays open and live."""
    node = await web_node(start_node, "alice")
    hub = web_plugin._servers[id(node)].hub
    async with http.get(url(node, "/api/events")) as resp:
        events = read_events(resp)
        assert (await next_event(events, lambda e: True))["type"] == "Hello"
        # a burst larger than the client's queue, with no chance to drain it in between
        for i in range(web_api.QUEUE_SIZE + 10):
            hub.publish({"type": "Burst", "n": i})
        assert len(hub.clients) == 1  # still subscribed
        first = await next_event(events, lambda e: True)
        assert first["type"] == "Resync"
        # and later events still arrive on the same stream
        async with http.post(
            url(node, "/api/files?name=after.txt"), data=b"after", headers=auth(node)
        ) as r:
            file_id = (await r.json())["file_id"]
        assert (await next_event(events, lambda e: e["type"] == "FileStored"))["file_id"] == file_id
