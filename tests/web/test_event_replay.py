"""The event stream's ``id:`` and ``event:`` lines, its replay after ``Last-Event-ID`` and its
``types=`` filter (issue 13), over real HTTP against in-process nodes; and the hub's bounded
replay buffer on its own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.web.test_api import Starter, assert_error, auth, url, web_node
from treedrive.core.node import Node
from treedrive.web import plugin as web_plugin
from treedrive.web.hub import EventHub

pytestmark = pytest.mark.timeout(60)


@dataclass
class Sse:
    id: int | None
    type: str | None
    data: dict[str, Any]


async def sse(resp: aiohttp.ClientResponse) -> AsyncIterator[Sse]:
    """The events of a server-sent event stream, with their id and type lines."""
    fields: dict[str, str] = {}
    while True:
        line = await resp.content.readline()
        if not line:
            return
        text = line.decode().rstrip("\n")
        if text == "":
            if "data" in fields:
                raw_id = fields.get("id")
                yield Sse(
                    int(raw_id) if raw_id else None, fields.get("event"), json.loads(fields["data"])
                )
            fields = {}
        elif not text.startswith(":"):
            name, _, value = text.partition(": ")
            fields[name] = value


async def until(events: AsyncIterator[Sse], wanted: Callable[[Sse], bool]) -> list[Sse]:
    """Every event up to and including the first that ``wanted`` takes."""
    got = []
    async with asyncio.timeout(15):
        async for e in events:
            got.append(e)
            if wanted(e):
                return got
    raise AssertionError("the stream ended")


async def push(http: aiohttp.ClientSession, node: Node, name: str) -> str:
    async with http.post(
        url(node, f"/api/v1/files?name={name}"), data=name.encode() * 10, headers=auth(node)
    ) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["file_id"])


def stored(file_id: str) -> Callable[[Sse], bool]:
    return lambda e: e.type == "FileStored" and e.data["file_id"] == file_id


async def test_a_resumed_stream_gets_exactly_the_events_it_missed(start_node: Starter) -> None:
    node = await web_node(start_node, "alice")
    async with aiohttp.ClientSession() as http, http.get(url(node, "/api/v1/events")) as watch:
        watcher = sse(watch)  # open throughout: what the stream sent, in order
        hello = (await until(watcher, lambda e: True))[0]
        assert (hello.type, hello.id) == ("Hello", None)  # for this client only: no id

        async with http.get(url(node, "/api/v1/events")) as first:
            reader = sse(first)
            first_id = await push(http, node, "one.txt")
            seen = await until(reader, stored(first_id))
        last_id = [e.id for e in seen if e.id is not None][-1]

        # missed while away: two pushes (each a FileStored and its transfer's events)
        missed_ids = [await push(http, node, "two.txt"), await push(http, node, "three.txt")]
        sent = await until(watcher, stored(missed_ids[-1]))
        sent = [e for e in sent if e.id is not None]
        for e in sent:
            assert e.type == e.data["type"]  # the event: line names the type
        ids = [e.id for e in sent if e.id is not None]
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # one more each time
        expected = [(e.id, e.type, e.data) for e in sent if e.id is not None and e.id > last_id]
        assert {e[1] for e in expected} >= {"FileStored"}

        headers = {"Last-Event-ID": str(last_id)}
        async with http.get(url(node, "/api/v1/events"), headers=headers) as again:
            replay = sse(again)
            got = await until(replay, stored(missed_ids[-1]))
            assert got[0].type == "Hello"
            resumed = [(e.id, e.type, e.data) for e in got[1:] if e.id is not None]
            assert resumed == expected
            # and it goes on live
            live_id = await push(http, node, "four.txt")
            assert (await until(replay, stored(live_id)))[-1].data["file_id"] == live_id


@pytest.mark.parametrize("last", ["1", "99999999999999999999"])
@pytest.mark.parametrize("how", ["header", "query"])
async def test_an_id_no_longer_kept_is_told_with_a_resync(
    start_node: Starter, last: str, how: str
) -> None:
    """An id older than the kept events (or from an earlier run, or never given) gets a Resync
    first: the client reloads its view."""
    node = await web_node(start_node, "alice")
    async with aiohttp.ClientSession() as http:
        await push(http, node, "kept.txt")
        async with http.get(url(node, "/api/v1/events"), headers={"Last-Event-ID": last}) as resp:
            events = sse(resp)
            first, second = [await anext(events), await anext(events)]
    assert first.type == "Hello"
    assert second.type == "Resync"
    assert second.id is None
    assert last in second.data["reason"]


async def test_the_types_filter(start_node: Starter) -> None:
    node = await web_node(start_node, "alice")
    async with aiohttp.ClientSession() as http:
        query = "/api/v1/events?types=FileStored,FileDeleted"
        async with http.get(url(node, query)) as resp:
            events = sse(resp)
            file_id = await push(http, node, "f.txt")
            async with http.delete(url(node, f"/api/v1/files/{file_id}"), headers=auth(node)) as r:
                assert r.status == 200
            got = await until(events, lambda e: e.type == "FileDeleted")
        assert [e.type for e in got] == ["Hello", "FileStored", "FileDeleted"]
        for bad in ("types=", "types=a%20b", "types=" + ",".join(["A"] * 33)):
            async with http.get(url(node, f"/api/v1/events?{bad}")) as resp:
                await assert_error(resp, 400)
        async with http.get(url(node, "/api/v1/events"), headers={"Last-Event-ID": "x"}) as resp:
            await assert_error(resp, 400)


async def test_the_replay_buffer_is_bounded(start_node: Starter) -> None:
    node = await start_node("alice")
    hub = EventHub(node, replay=3)
    start = hub.next_id
    for n in range(5):
        hub.publish({"type": "Burst", "n": n})
    assert [s.data["n"] for s in hub.recent] == [2, 3, 4]
    assert [s.data["n"] for s in hub.since(start + 2) or []] == [3, 4]
    assert [s.data["n"] for s in hub.since(start + 1) or []] == [2, 3, 4]
    assert hub.since(start + 4) == []
    assert hub.since(start) is None  # event start + 1 is no longer kept
    assert hub.since(start + 5) is None  # never given


async def test_the_dashboard_hub_keeps_what_it_sent(start_node: Starter) -> None:
    """Events are kept for replay whether or not a client is connected."""
    node = await web_node(start_node, "alice")
    hub = web_plugin._servers[id(node)].hub
    assert not hub.clients
    async with aiohttp.ClientSession() as http:
        file_id = await push(http, node, "alone.txt")
    assert any(s.type == "FileStored" and s.data["file_id"] == file_id for s in hub.recent)
