"""The GOSSIP reply budget (``core/replies.py``) with real in-process nodes on loopback: a node
that joins through one holding many files gets the whole catalogue at once, although its one
GOSSIP earns far fewer reply bytes than the list takes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import address, wait_for
from tests.e2e.helpers import Server, read_object, send_message
from treedrive.core.replies import BURST

QUIET = {"gossip_interval": 30.0, "peer_timeout": 120.0, "download_limit": 0}
"""Nobody gossips again during the test: an address is never proven by time, and the newcomer is
not asked for a GOSSIP_REPLY (which would prove it) before the end."""


async def test_a_newcomer_gets_a_catalogue_larger_than_the_budget_at_once(
    start_node: Callable[..., Any], tmp_path: Path
) -> None:
    alice = await start_node("alice", **QUIET)
    for i in range(300):
        source = tmp_path / f"f{i}.txt"
        source.write_bytes(f"file number {i}".encode())
        await alice.push(source)
    reply, size = alice.gossip_reply()
    assert len(reply.files) == 300
    assert size > 3 * BURST  # far more than one GOSSIP earns (8 x 121 bytes + the burst)

    bob = await start_node("bob", bootstrap=(address(alice),), **QUIET)
    await wait_for(lambda: len(bob.files("remote")) == 300, timeout=5)
    assert {e.holders for e in bob.files("remote")} == {("alice",)}


class Peer(Server):
    """A classic peer's listening side that counts the GOSSIP_REPLYs ``node`` sends it and, if
    ``answers``, answers the node's GOSSIPs with a GOSSIP_REPLY (no files) as a real peer does
    (the GOSSIPs the node forwards name others: a real peer would answer them, not the node)."""

    def __init__(self, node: str, answers: bool) -> None:
        self.node = node
        self.answers = answers
        self.replies = 0
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, AssertionError, ValueError):
            obj = read_object(conn, timeout=5)
            if obj is None:
                return
            if obj.get("type") == "GOSSIP_REPLY" and obj.get("peerId") == self.node:
                self.replies += 1
            elif obj.get("type") == "GOSSIP" and obj.get("peerId") == self.node and self.answers:
                send_message(int(obj["port"]), {
                    "type": "GOSSIP_REPLY", "host": "127.0.0.1", "port": self.port,
                    "peerId": f"peer-{self.port}", "files": [],
                })  # fmt: skip

    def gossip(self, port: int, peer_id: str) -> None:
        send_message(port, {"type": "GOSSIP", "host": "127.0.0.1", "port": self.port,
                            "id": str(uuid.uuid4()), "peerId": peer_id})  # fmt: skip


@pytest.mark.parametrize("forged_reply", [True, False], ids=["forged reply", "by age"])
async def test_neither_a_forged_reply_nor_time_makes_an_address_exempt(
    start_node: Callable[..., Any], tmp_path: Path, forged_reply: bool
) -> None:
    """The reviewer's attacks: one empty GOSSIP_REPLY claiming the victim's address (x269), or
    naming the victim once and waiting an interval (x263); then one GOSSIP naming it per
    interval (not a flood). The victim gets a welcome, not a 60 kB reply per interval; a real
    peer that answers alice's GOSSIPs is answered every time."""
    interval = 0.5
    alice = await start_node("alice", gossip_interval=interval, peer_timeout=30.0,
                             download_limit=0)  # fmt: skip
    for i in range(300):
        source = tmp_path / f"f{i}.txt"
        source.write_bytes(f"file number {i}".encode())
        await alice.push(source)
    victim, honest = Peer("alice", answers=False), Peer("alice", answers=True)
    try:
        if forged_reply:
            await asyncio.to_thread(send_message, alice.port, {
                "type": "GOSSIP_REPLY", "host": "127.0.0.1", "port": victim.port,
                "peerId": "mallory", "files": [],
            })  # fmt: skip
        await asyncio.to_thread(honest.gossip, alice.port, "honest")
        await asyncio.to_thread(victim.gossip, alice.port, "mallory-0")
        await asyncio.sleep(1.5 * interval)
        for i in range(1, 13):
            await asyncio.to_thread(victim.gossip, alice.port, f"mallory-{i}")
            await asyncio.to_thread(honest.gossip, alice.port, "honest")
            await asyncio.sleep(1.05 * interval)
        await asyncio.sleep(interval)
        assert victim.replies <= 2  # welcomes (WELCOMES per 30 s)
        assert honest.replies >= 8
    finally:
        victim.close()
        honest.close()
