"""Pages of ``/api/files`` by cursor and of ``/api/peers`` (issue 12, point 6), over real HTTP
on loopback against an in-process node whose store was filled directly (real SQLite)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.web.test_api import Starter, url, web_node
from treedrive.core.model import FileMeta
from treedrive.core.node import Node

pytestmark = pytest.mark.timeout(60)

FILES = 130
PEERS = 30


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def fill(node: Node) -> None:
    later = time.time() + 3600  # not expired while the test runs
    with node.store.unit_of_work() as uow:
        for i in range(PEERS):  # one address for all: the node's gossip costs one message
            uow.peers.upsert(f"peer-{i:03d}", "127.0.0.1", 9, later, None)
        for i in range(FILES):
            file_id = hashlib.sha256(b"%d" % i).hexdigest()
            meta = FileMeta(file_id, f"f{i}.bin", 0.1, "peer-000", 1_700_000_000 + i // 4)
            uow.files.advertise("peer-000", [meta], 1.0)
        uow.commit()


async def get(http: aiohttp.ClientSession, node: Node, path: str) -> tuple[int, Any]:
    async with http.get(url(node, path)) as resp:
        return resp.status, await resp.json()


async def test_files_walked_by_cursor_are_the_offset_pages(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice")
    fill(node)
    status, whole = await get(http, node, "/api/files?limit=500")
    assert status == 200
    assert whole["next"] is None  # the last page: no cursor
    everything = [f["file_id"] for f in whole["files"]]
    assert len(everything) == FILES
    walked: list[str] = []
    after = ""
    while True:
        status, page = await get(http, node, f"/api/files?limit=40{after}")
        assert status == 200
        assert page["total"] == FILES
        walked += [f["file_id"] for f in page["files"]]
        if page["next"] is None:
            break
        assert page["next"] == page["files"][-1]["file_id"]
        after = f"&after={page['next']}"
    assert walked == everything
    status, body = await get(http, node, f"/api/files?after={'0' * 64}")
    assert status == 400
    assert "after" in body["error"]


async def test_peers_in_pages_and_all_at_once(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice")
    fill(node)
    status, page = await get(http, node, "/api/peers?limit=10&offset=5")
    assert status == 200
    assert page["total"] == PEERS
    assert [p["peer_id"] for p in page["peers"]] == [f"peer-{i:03d}" for i in range(5, 15)]
    status, everyone = await get(http, node, "/api/peers")
    assert (everyone["total"], len(everyone["peers"])) == (PEERS, PEERS)
    _, st = await get(http, node, "/api/status")
    assert st["counts"]["peers"] == PEERS
    status, _ = await get(http, node, "/api/peers?limit=0")
    assert status == 400
