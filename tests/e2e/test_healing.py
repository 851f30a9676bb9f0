"""A partition longer than the peer timeout heals (issue 12, point 5): real ``treedrive run``
processes, each in its own network namespace on one bridge (tests/netlab.py). Two groups are
split onto separate bridges for longer than the peer timeout, so each side forgets the other and
the files only the other side held; once the network is whole again, every node knows every
other and lists every file within 3 gossip intervals. Needs root (skips elsewhere)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import wait_until
from tests.netlab import Lab, LabNode

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

INTERVAL = 1.0
TIMEOUT = 3.0
AFTER = 10.0
"""Seconds the split lasts after each side has forgotten the other."""
TIMERS = [
    "--gossip-interval", str(INTERVAL), "--peer-timeout", str(TIMEOUT),
    "--cleanup-interval", "0.25", "--join-delay", "0.5",
]  # fmt: skip


def start_nodes(lab: Lab, tmp_path: Path, n: int) -> list[LabNode]:
    hosts = lab.add(n)
    nodes: list[LabNode] = []
    for i, host in enumerate(hosts):
        extra = [] if i == 0 else ["--bootstrap", nodes[0].address]
        nodes.append(LabNode(lab, host, f"N{i}", tmp_path / f"N{i}", [*TIMERS, *extra]).start())
    return nodes


def names(nodes: list[LabNode]) -> set[str]:
    return {n.peer_id for n in nodes}


def whole(nodes: list[LabNode]) -> bool:
    return all(n.peers() == names(nodes) - {n.peer_id} for n in nodes)


def copies(nodes: list[LabNode], file_id: str) -> int:
    return sum(file_id in n.held() for n in nodes)


def push(node: LabNode, tmp_path: Path, name: str) -> str:
    path = tmp_path / "src" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(os.urandom(20_000))
    return node.push(path)


def test_a_split_longer_than_the_peer_timeout_heals_within_three_intervals(
    lab: Lab, tmp_path: Path
) -> None:
    nodes = start_nodes(lab, tmp_path, 4)
    try:
        wait_until(lambda: whole(nodes), timeout=30, what="a full mesh")
        left, right = nodes[:2], nodes[2:]
        files = {push(n, tmp_path, f"{n.peer_id}.bin") for n in nodes}
        wait_until(lambda: all(files <= n.files() for n in nodes), what="every file listed")
        wait_until(lambda: all(copies(nodes, f) >= 2 for f in files), what="pushed copies")

        lonely = {f for f in files if not any(f in n.held() for n in left)}
        lab.split([n.host for n in right])
        # each side forgets the other (the bootstrap host N0 is on the left)
        wait_until(
            lambda: (
                all(n.peers() == names(left) - {n.peer_id} for n in left)
                and all(n.peers() == names(right) - {n.peer_id} for n in right)
            ),
            timeout=6 * TIMEOUT,
            what="each side knows only itself",
        )
        # ...and the records only the other side held (a file and its pushed copy on one side)
        for n in left:
            assert not lonely & n.files(), f"{n.peer_id} still lists what only the right held"
        # Well past the peer timeout, and past any connection attempted before the cut (its
        # SYNs would heal the split by themselves: a connect gives up after 5 s).
        time.sleep(AFTER)

        lab.rejoin([n.host for n in right])
        mended = time.monotonic()
        wait_until(lambda: whole(nodes), timeout=3 * INTERVAL + 1.0, every=0.05,
                   what="whole again within 3 gossip intervals")  # fmt: skip
        took = time.monotonic() - mended
        wait_until(lambda: all(files <= n.files() for n in nodes), timeout=2 * INTERVAL,
                   what="every file listed again")  # fmt: skip
        assert took <= 3 * INTERVAL + 1.0
        # nothing lost: every file still held somewhere
        assert files <= set().union(*(n.held() for n in nodes))
        # and it stays whole (the dials that failed during the split are not held against it)
        time.sleep(2 * TIMEOUT)
        assert whole(nodes)
    finally:
        for n in nodes:
            n.stop()
