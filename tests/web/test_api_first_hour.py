"""The API as a new user meets it (issue 9), over real HTTP on loopback against in-process nodes:
short ids, a push of bytes already shared, a download's file name for ``curl -OJ``, the seed's
types in ``/stats.json``, a bootstrap problem in ``/api/status``, a push received shown as a
transfer, and a resumed transfer's rate and chart that count only the bytes of this run."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import free_port
from tests.web.test_api import (
    Starter,
    assert_error,
    auth,
    holder_and_fetcher,
    joined_pair,
    json_of,
    url,
    web_node,
)
from treedrive.core.config import Address
from treedrive.core.events import TransferFinished
from treedrive.core.model import FileMeta, TransferState
from treedrive.core.node import Node
from treedrive.web import views
from treedrive.web.api import EventHub, content_disposition
from treedrive.web.commands import status_lines

pytestmark = pytest.mark.timeout(60)
MIB = 1 << 20


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def push(http: aiohttp.ClientSession, node: Node, data: bytes, query: str) -> Any:
    async with http.post(url(node, f"/api/files?{query}"), data=data, headers=auth(node)) as r:
        body = await json_of(r)
        return r.status, body


async def eventually(probe: Callable[[], Awaitable[Any]], timeout: float = 15) -> Any:
    """What ``probe`` answers once it answers something truthy (the test fails after
    ``timeout`` s)."""
    async with asyncio.timeout(timeout):
        while True:
            if value := await probe():
                return value
            await asyncio.sleep(0.1)


def claim(node: Node, file_id: str, timestamp: Any = 1_700_000_000, name: str = "x") -> None:
    """A remote record in the node's real store, as a peer's gossip would leave it."""
    meta = FileMeta(file_id, name, 0.5, "someone", timestamp)
    with node.store.unit_of_work() as uow:
        uow.files.merge(meta, time.time())
        uow.commit()


# -- short ids -------------------------------------------------------------------------------------
async def test_a_unique_prefix_names_the_file_in_every_route(
    start_node: Starter, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    data = os.urandom(30_000)
    alice, bob, file_id = await holder_and_fetcher(start_node, tmp_path, data, "notes.txt")
    prefix = file_id[:8]
    async with http.get(url(bob, f"/api/files/{prefix.upper()}")) as resp:
        assert resp.status == 200
        assert (await json_of(resp))["file_id"] == file_id
    async with http.post(url(bob, f"/api/files/{prefix}/fetch"), headers=auth(bob)) as resp:
        assert resp.status == 200, await resp.text()
        assert (await json_of(resp))["file_id"] == file_id
    async with http.get(url(bob, f"/api/files/{file_id[:12]}/content")) as resp:
        assert resp.status == 200
        assert await resp.read() == data
    async with http.delete(url(alice, f"/api/files/{prefix}"), headers=auth(alice)) as resp:
        assert resp.status == 200
        assert await json_of(resp) == {"deleted": file_id}  # the full id it resolved to
    assert alice.file(file_id) is None


async def test_a_short_or_ambiguous_prefix_is_refused_with_what_to_type(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice", cleanup_interval=3600)
    first, second = "abcdef0123" + "1" * 54, "abcdef0123" + "2" * 54
    claim(node, first)
    claim(node, second)
    async with http.get(url(node, "/api/files/abcdef0")) as resp:  # 7 characters
        body = await assert_error(resp, 404)
    assert "at least 8" in body["error"]
    for route in ("/api/files/abcdef01", "/api/files/abcdef0123/content"):
        async with http.get(url(node, route)) as resp:
            body = await assert_error(resp, 409)
        assert first[:12] in body["error"]
        assert second[:12] in body["error"]
    async with http.post(url(node, "/api/files/abcdef01/fetch"), headers=auth(node)) as resp:
        await assert_error(resp, 409)
    async with http.get(url(node, f"/api/files/{second[:11]}")) as resp:
        assert (await json_of(resp))["file_id"] == second
    async with http.get(url(node, "/api/files/not-hex-at-all")) as resp:
        await assert_error(resp, 404)


# -- a push of bytes already shared ----------------------------------------------------------------
async def test_pushing_the_same_bytes_again_answers_with_the_existing_record(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice")
    data = os.urandom(10_000)
    status, first = await push(http, node, data, "name=notes.txt")
    assert (status, first["existing"]) == (201, False)
    status, again = await push(http, node, data, "name=other-name.txt")
    assert (status, again["existing"]) == (200, True)
    assert again["file_id"] == first["file_id"]
    assert again["file_name"] == "notes.txt"  # the record it has
    assert len(node.files()) == 1

    async with http.post(
        url(node, "/api/files?name=x&force=maybe"), data=data, headers=auth(node)
    ) as resp:
        await assert_error(resp, 400)

    # --force pushes anew: a new id (the id includes the push time, in seconds)
    await asyncio.sleep(max(0.0, first["file_timestamp"] + 1 - time.time()))
    status, forced = await push(http, node, data, "name=notes.txt&force=1")
    assert (status, forced["existing"]) == (201, False)
    assert forced["file_id"] != first["file_id"]
    assert len(node.files()) == 2


# -- the download's name ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "fallback"),
    [
        ("notes.txt", "notes.txt"),
        ('résumé "final".txt', "r_sum_ _final_.txt"),
        ("../../etc/.passwd", "passwd"),
        ("a;b%c.txt", "a_b_c.txt"),
        ("日本.txt", "__.txt"),
        ("..", "file"),
    ],
)
def test_content_disposition_has_an_ascii_fallback_and_the_real_name(
    name: str, fallback: str
) -> None:
    value = content_disposition(name)
    assert value.startswith(f"attachment; filename=\"{fallback}\"; filename*=UTF-8''")
    assert value.isascii()
    assert value.count('"') == 2
    assert "/" not in value
    assert all(32 <= ord(ch) < 127 for ch in value)


async def test_curl_remote_header_name_saves_the_files_name(
    start_node: Starter, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    node = await web_node(start_node, "alice")
    data = os.urandom(5000)
    _, pushed = await push(http, node, data, "name=r%C3%A9sum%C3%A9%202024.txt")
    async with http.get(url(node, f"/api/files/{pushed['file_id'][:10]}/content")) as resp:
        assert resp.content_disposition is not None
        assert resp.content_disposition.filename == "résumé 2024.txt"  # filename* wins
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    where = tmp_path / "downloads"
    where.mkdir()
    done = await asyncio.to_thread(
        subprocess.run,
        [curl, "-sS", "-OJ", url(node, f"/api/files/{pushed['file_id']}/content")],
        cwd=where,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    [saved] = list(where.iterdir())
    assert saved.name != "content"
    assert saved.name.endswith(" 2024.txt")
    assert saved.read_bytes() == data


# -- /stats.json as the seed serves it -------------------------------------------------------------
async def test_stats_json_has_the_seeds_types(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice", cleanup_interval=3600)
    _, held = await push(http, node, os.urandom(3000), "name=held.bin")
    claim(node, "c" * 64, timestamp="1700000001")  # a numeric string, as one peer sends
    claim(node, "d" * 64, timestamp=1_700_000_002.5)
    async with http.get(url(node, "/stats.json")) as resp:
        stats = await json_of(resp)
    files = {f["file_id"]: f for f in stats["files"]}
    for f in files.values():
        assert type(f["has_copy"]) is bool
        assert type(f["file_size"]) in (int, float)
        assert type(f["file_timestamp"]) in (int, float)
    # the seed's page shows `file.has_copy ? 'Yes' : 'No'`: truthiness must be the fact
    assert files[held["file_id"]]["has_copy"] is True
    assert files["c" * 64]["has_copy"] is False
    assert files["c" * 64]["file_timestamp"] == 1_700_000_001
    assert files["d" * 64]["file_timestamp"] == 1_700_000_002.5


def test_number_keeps_what_is_no_number() -> None:
    assert views.number("  42 ") == 42
    assert views.number("4.5") == 4.5
    assert views.number("yesterday") == "yesterday"
    assert views.number("nan") == "nan"
    assert views.number(7) == 7


# -- the bootstrap problem -------------------------------------------------------------------------
async def test_status_says_why_the_node_has_not_joined(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    fine = await web_node(start_node, "alice")
    async with http.get(url(fine, "/api/status")) as resp:
        assert (await json_of(resp))["bootstrap_problem"] is None
    nobody = Address("127.0.0.1", free_port())  # nothing listens there
    lonely = await web_node(start_node, "bob", bootstrap=(nobody,))

    async def problem() -> Any:
        async with http.get(url(lonely, "/api/status")) as resp:
            return (await json_of(resp))["bootstrap_problem"]

    why = await eventually(problem)
    assert isinstance(why, str)
    assert f"{nobody.host}:{nobody.port}" in why
    async with http.get(url(lonely, "/api/status")) as resp:
        text = status_lines(await json_of(resp))
    assert text.splitlines()[-1] == f"warning: {why}"


# -- a push received is a transfer -----------------------------------------------------------------
async def test_a_push_received_shows_in_the_receivers_transfers(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    alice, bob = await joined_pair(start_node)
    _, pushed = await push(http, alice, os.urandom(200_000), "name=arriving.bin")

    async def received() -> list[dict[str, Any]]:
        async with http.get(url(bob, "/api/transfers")) as resp:
            rows = (await json_of(resp))["recent"]
        mine = [r for r in rows if r["file_id"] == pushed["file_id"] and r["direction"] == "in"]
        return [] if any(r["state"] == "running" for r in mine) else mine  # listed as it starts

    rows = await eventually(received)
    [row] = rows
    assert (row["peer_id"], row["state"], row["bytes_done"]) == ("alice", "done", 200_000)


# -- rate, ETA and the chart after a resume --------------------------------------------------------
def resumed(on_disk: int, moved: int, seconds: float, total: int) -> TransferState:
    """A download that found ``on_disk`` bytes at its start and moved ``moved`` in ``seconds``."""
    return TransferState(
        7,
        "e" * 64,
        "big.bin",
        "in",
        "bob",
        total,
        bytes_done=on_disk + moved,
        started_mono=time.monotonic() - seconds,
        bytes_at_start=on_disk,
    )


def test_a_resumed_transfers_rate_and_eta_count_only_this_run() -> None:
    t = resumed(on_disk=400 * MIB, moved=20 * MIB, seconds=1.0, total=600 * MIB)
    data = views.transfer_json(t)
    assert data["bytes_at_start"] == 400 * MIB
    assert data["bytes_done"] == 420 * MIB
    assert data["rate"] == pytest.approx(20 * MIB, rel=0.2)  # not 420 MiB/s
    assert data["eta"] == pytest.approx(9, rel=0.2)  # 180 MiB left at 20 MiB/s


async def test_the_chart_does_not_count_a_resumes_bytes_on_disk(start_node: Starter) -> None:
    node: Node = await start_node("alice")
    hub = EventHub(node)
    hub.sample()
    running = resumed(on_disk=300 * MIB, moved=2 * MIB, seconds=0.5, total=600 * MIB)
    node.active_transfers[running.transfer_id] = running
    first = hub.sample()
    assert first["in_bytes"] == 2 * MIB
    running.bytes_done += MIB
    assert hub.sample()["in_bytes"] == MIB
    del node.active_transfers[running.transfer_id]

    # one that began and ended between two samples also counts from where it started
    brief = resumed(on_disk=100 * MIB, moved=3 * MIB, seconds=0.2, total=103 * MIB)
    brief.transfer_id = 8
    hub.on_event(TransferFinished(brief, True))
    assert hub.sample()["in_bytes"] == 3 * MIB
