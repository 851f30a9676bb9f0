"""A refused GOSSIP or GOSSIP_REPLY (PROTOCOL.md 2.7) as the dashboard sees it: a ``PeerRefused``
event on the live stream, and ``refused_peers`` (counts by reason) with the latest refusal in
``GET /api/status``. In-process node over real HTTP and a raw socket (the page itself is checked
against real processes in ``tests/e2e/test_bound_names.py``)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp

from tests.conftest import wait_for
from tests.e2e.helpers import send_message
from tests.web.test_api import Starter, next_event, read_events, url, web_node
from treedrive.core.identity import NodeKey, fingerprint
from treedrive.core.node import Node

PINNED = NodeKey.generate().public
REASONS = {"other_key", "unsigned", "bad_signature", "future", "stale"}


async def status_of(http: aiohttp.ClientSession, node: Node) -> dict[str, Any]:
    async with http.get(url(node, "/api/status")) as resp:
        assert resp.status == 200
        data: dict[str, Any] = await resp.json()
        return data


async def test_a_refusal_reaches_the_event_stream_and_the_status(start_node: Starter) -> None:
    node = await web_node(start_node, "alice")
    with node.store.unit_of_work() as uow:
        assert uow.keys.pin("bob", PINNED, 1.0)
        uow.commit()
    forged = {"type": "GOSSIP", "host": "127.0.0.1", "port": 9, "id": str(uuid.uuid4()),
              "peerId": "bob"}  # fmt: skip
    async with aiohttp.ClientSession() as http:
        before = await status_of(http, node)
        assert before["refused_peers"] == dict.fromkeys(REASONS, 0)
        assert before["last_refused_peer"] is None
        async with http.get(url(node, "/api/events")) as resp:
            events = read_events(resp)
            await next_event(events, lambda e: e["type"] == "Hello")
            await asyncio.to_thread(send_message, node.port, forged)
            event = await next_event(events, lambda e: e["type"] == "PeerRefused")
        assert event["peer_id"] == "bob"
        assert event["code"] == "unsigned"
        assert event["source"].startswith("127.0.0.1:")
        assert fingerprint(PINNED) in event["reason"]
        await wait_for(lambda: node.gate.refused["unsigned"] == 1)
        after = await status_of(http, node)
    assert after["refused_peers"] == dict.fromkeys(REASONS, 0) | {"unsigned": 1}
    last = after["last_refused_peer"]
    assert {k: last[k] for k in ("peer_id", "code", "reason")} == {
        k: event[k] for k in ("peer_id", "code", "reason")
    }
    assert node.peers() == []  # the forgery tracked nobody
