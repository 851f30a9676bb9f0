"""A push whose peer cannot be reached goes to another (issue 12, point 5): real ``treedrive run``
processes on loopback; three of A's four peers are killed (A still tracks them: the peer timeout
is long), and every file A pushes ends up on the live one, B."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.helpers import Shells, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SLOW_EXPIRY = ("--peer-timeout", "60")
DEAD = ("C", "D", "E")


def test_a_push_to_a_dead_peer_is_retried_with_a_live_one(shells: Shells, tmp_path: Path) -> None:
    a = shells("A", *SLOW_EXPIRY).start()
    b = shells("B", "--bootstrap", a.address, *SLOW_EXPIRY).start()
    dead = [shells(name, "--bootstrap", a.address, *SLOW_EXPIRY).start() for name in DEAD]
    wait_until(lambda: {"B", *DEAD} <= a.peers(), timeout=30, what="A knows all four")
    for node in dead:
        node.kill()

    pushed: list[str] = []
    went_dead = 0
    for i in range(12):  # until a push's first target was a dead peer, a few times
        src = tmp_path / f"new-{i}.bin"
        src.write_bytes(os.urandom(50_000))
        pushed.append(a.push(src))
        went_dead = sum(a.log_text().count(f"sending it to {name}") for name in DEAD)
        if went_dead >= 2:
            break
    assert went_dead >= 1, "no push went first to a dead peer (4^-12 odds): retry not exercised"
    for file_id in pushed:
        wait_until(lambda file_id=file_id: b.blob(file_id).exists(), timeout=30,
                   what=f"{file_id[:12]} has its second copy on B")  # fmt: skip
    assert a.peers() >= {"B"}
