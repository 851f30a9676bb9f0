"""Transient notices (progress, refusals) reach the dashboard's live event stream through the
web plugin's ``treedrive_on_notice``, in the same shape as before they had a hook of their own."""

from __future__ import annotations

import aiohttp

from tests.web.test_api import Starter, next_event, read_events, url, web_node
from treedrive.core.events import FileRefused, TransferProgress
from treedrive.core.model import TransferState


async def test_progress_and_refusals_reach_the_event_stream(start_node: Starter) -> None:
    node = await web_node(start_node, "alice")
    async with aiohttp.ClientSession() as http, http.get(url(node, "/api/events")) as resp:
        events = read_events(resp)
        await next_event(events, lambda e: e["type"] == "Hello")

        state = TransferState(7, "ab" * 32, "big.bin", "in", "bob", 1000, bytes_done=250)
        node.notify(TransferProgress(state.snapshot()))
        progress = await next_event(events, lambda e: e["type"] == "TransferProgress")
        assert progress["transfer"]["transfer_id"] == 7
        assert progress["transfer"]["file_name"] == "big.bin"
        assert (progress["transfer"]["bytes_done"], progress["transfer"]["bytes_total"]) == (
            250,
            1000,
        )
        assert progress["transfer"]["percent"] == 25.0

        node.notify(FileRefused("cd" * 32, "liar", "its bytes do not match its id"))
        refused = await next_event(events, lambda e: e["type"] == "FileRefused")
        assert {k: refused[k] for k in ("file_id", "peer_id", "reason")} == {
            "file_id": "cd" * 32,
            "peer_id": "liar",
            "reason": "its bytes do not match its id",
        }
