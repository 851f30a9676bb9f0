"""The API on a full disk (issue 8): an upload answers JSON 507 in the API's error shape, leaves
no partial file or blob behind, and the node takes uploads again once there is room. A real
12 MiB tmpfs holds the node's data dir (mounting needs root: elsewhere these tests skip)."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import fast_config, fill
from tests.web.test_api import assert_error, auth, multipart_form, url
from treedrive.app import running_node
from treedrive.core.node import Node

pytestmark = pytest.mark.timeout(60)

KiB = 1024
MiB = 1024 * KiB


@pytest.fixture
async def node_on_small_disk(small_disk: Path) -> AsyncIterator[Node]:
    config = fast_config(small_disk / "alice", "alice", http_port=0)
    async with running_node(config) as node:
        yield node


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def leftovers(node: Node) -> list[str]:
    data = node.config.data_dir
    return sorted(p.name for d in ("blobs", "partial") for p in (data / d).iterdir())


Upload = Callable[[Node, aiohttp.ClientSession, bytes], Any]


async def raw_upload(node: Node, http: aiohttp.ClientSession, data: bytes) -> Any:
    return http.post(
        url(node, "/api/files?name=big.bin"), data=io.BytesIO(data), headers=auth(node)
    )


async def multipart_upload(node: Node, http: aiohttp.ClientSession, data: bytes) -> Any:
    body, content_type = multipart_form([("file", "big.bin", data)])
    headers = {**auth(node), "Content-Type": content_type}
    return http.post(url(node, "/api/files"), data=io.BytesIO(body), headers=headers)


@pytest.mark.parametrize("upload", [raw_upload, multipart_upload], ids=["raw", "multipart"])
async def test_an_upload_on_a_full_disk_is_a_json_507_and_leaves_nothing(
    node_on_small_disk: Node, http: aiohttp.ClientSession, small_disk: Path, upload: Upload
) -> None:
    node = node_on_small_disk
    data = os.urandom(2 * MiB)
    filler = small_disk / "filler"
    fill(filler)  # something else takes the whole disk
    try:
        async with await upload(node, http, data) as resp:
            body = await assert_error(resp, 507)
        assert "No space left on device" in body["error"], body
        assert leftovers(node) == []  # no partial file, no blob
        assert node.files("local") == []

        # the node keeps serving, and takes the same upload once there is room
        async with http.get(url(node, "/api/status")) as resp:
            assert resp.status == 200
    finally:
        filler.unlink()
    async with await upload(node, http, data) as resp:
        assert resp.status == 201, await resp.text()
        file_id = (await resp.json())["file_id"]
    assert (node.config.data_dir / "blobs" / file_id).read_bytes() == data
