"""Uploads whose body is received off the event loop (treedrive/web/body.py): big raw bodies sent
in pieces with pauses, and forms and chunked bodies written in batches."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from yarl import URL

from tests.web.test_api import Starter, auth, blobs, http, partials, token_of, url, web_node
from treedrive.web import body

pytestmark = pytest.mark.timeout(60)
__all__ = ["http"]  # the fixture


def held_bytes(node: Any, file_id: str) -> bytes:
    return bytes((node.config.data_dir / "blobs" / file_id).read_bytes())


async def raw_post(port: int, token: str, data: bytes, pieces: int, pause: float) -> bytes:
    """POST ``data`` as a raw body over a plain socket: the head, then ``pieces`` parts with a
    pause between them (longer than the worker's wait: the loop takes the wait over)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        "POST /api/files?name=big.bin HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    writer.write(head.encode())
    step = -(-len(data) // pieces)
    for i in range(0, len(data), step):
        writer.write(data[i : i + step])
        await writer.drain()
        await asyncio.sleep(pause)
    answer = await reader.read()  # the node closes the connection after its answer
    writer.close()
    await writer.wait_closed()
    return answer


async def test_a_big_raw_upload_sent_with_pauses_arrives_whole(start_node: Starter) -> None:
    node = await web_node(start_node, "alice")
    port = URL(node.http_url).port
    assert port is not None
    data = os.urandom(9 * 1024 * 1024 + 123)
    answer = await raw_post(port, token_of(node), data, pieces=5, pause=3 * body.PAUSE)
    assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
    assert b"Connection: close" in answer
    (entry,) = node.files()
    assert held_bytes(node, entry.meta.file_id) == data
    assert entry.size_bytes == len(data)
    assert partials(node) == []


async def test_the_connection_after_a_raw_upload_is_closed_and_the_next_works(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice")
    first, second = os.urandom(3 * 1024 * 1024), os.urandom(2 * 1024 * 1024)
    for i, data in enumerate((first, second)):
        async with http.post(
            url(node, f"/api/files?name=f{i}.bin"), data=io.BytesIO(data), headers=auth(node)
        ) as r:
            assert r.status == 201, await r.text()
            file_id = (await r.json())["file_id"]
        assert held_bytes(node, file_id) == data
    async with http.get(url(node, "/api/status")) as r:
        assert r.status == 200
    assert len(blobs(node)) == 2


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
        await asyncio.sleep(0)


@pytest.mark.parametrize("how", ["chunked", "multipart"])
async def test_bodies_read_by_aiohttp_are_written_whole_in_batches(
    start_node: Starter, http: aiohttp.ClientSession, how: str
) -> None:
    node = await web_node(start_node, "alice")
    data = os.urandom(2 * body.BATCH + 4567)  # more than one batch, and a last short one
    payload: Any
    if how == "chunked":
        payload = _chunks(data, 300_000)
    else:
        payload = aiohttp.FormData()
        payload.add_field("file", io.BytesIO(data), filename="form.bin")
    async with http.post(url(node, "/api/files?name=b.bin"), data=payload, headers=auth(node)) as r:
        assert r.status == 201, await r.text()
        answer = await r.json()
    assert held_bytes(node, answer["file_id"]) == data
    ts = answer["file_timestamp"]
    assert answer["file_id"] == hashlib.sha256(data + str(ts).encode()).hexdigest()
    assert partials(node) == []
