"""The GOSSIP reply budget (``core/replies.py``) with real in-process nodes on loopback: a node
that joins through one holding many files gets the whole catalogue at once, although its one
GOSSIP earns far fewer reply bytes than the list takes."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import address, wait_for
from treedrive.core.replies import BURST

QUIET = {"gossip_interval": 30.0, "peer_timeout": 120.0, "download_limit": 0}
"""Nobody gossips again during the test: an address is never proven by time, and the newcomer is
not asked for a GOSSIP_REPLY (which would prove it) before the end."""


async def test_a_newcomer_gets_a_catalogue_larger_than_the_budget_at_once(
    start_node, tmp_path: Path
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
