"""Membership by swim and catalogue sync by deltas between real ``treedrive run`` processes on
loopback (PROTOCOL.md 2.10): they find each other and each other's files, a killed node is found
dead, a push and an owner's delete reach everyone; a classic peer in the same network still gets
the classic GOSSIP each interval (never a swim message) and sees the nodes' files, and they see
its files."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.classic_peer import ClassicPeer
from tests.conftest import FAST
from tests.e2e.helpers import Shell, Shells, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

INTERVAL = FAST["gossip_interval"]


def source(tmp_path: Path, name: str, size: int = 20_000) -> Path:
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(os.urandom(size))
    return path


def mesh(nodes: list[Shell]) -> bool:
    names = {n.node.peer_id for n in nodes}
    return all(n.peers() == names - {n.node.peer_id} for n in nodes)


def test_nodes_share_members_files_deaths_and_deletes(shells: Shells, tmp_path: Path) -> None:
    a = shells("A").start()
    nodes = [a] + [shells(name, "--bootstrap", a.address).start() for name in "BCD"]
    wait_until(lambda: mesh(nodes), timeout=30, what="every node knows every other")

    # a file pushed on each node is listed everywhere
    ids = {n.node.peer_id: n.push(source(tmp_path, f"{n.node.peer_id}.bin")) for n in nodes}
    for n in nodes:
        wait_until(lambda n=n: all(i in n.files() for i in ids.values()), timeout=20,
                   what=f"{n.node.peer_id} lists every file")  # fmt: skip

    # a killed node is found dead by the others (no message from it is needed)
    d = nodes.pop()
    d.kill()
    for n in nodes:
        wait_until(lambda n=n: "D" not in n.peers(), timeout=30, what=f"{n.node.peer_id}: D dead")
    assert mesh(nodes)

    # the owner's delete reaches everyone, and stays
    b = nodes[1]
    assert b.delete(ids["B"]).startswith("deleted B.bin")
    for n in nodes:
        wait_until(lambda n=n: ids["B"] not in n.files(), timeout=20,
                   what=f"{n.node.peer_id} dropped B.bin")  # fmt: skip
    # ...and a file pushed now reaches everyone still there
    late = b.push(source(tmp_path, "late.bin"))
    for n in nodes:
        wait_until(lambda n=n: late in n.files(), timeout=20, what=f"{n.node.peer_id}: late.bin")
    for n in nodes:
        assert ids["B"] not in n.files()


@pytest.fixture
def bob() -> Iterator[ClassicPeer]:
    """A classic peer that gossips to every peer it tracks each interval, as classic peers do."""
    peer = ClassicPeer("bob").start()
    stop = threading.Event()

    def gossip_rounds() -> None:
        while not stop.wait(INTERVAL):
            for address in list(peer.tracked().values()):
                with contextlib.suppress(OSError):
                    peer.send_gossip(address)

    thread = threading.Thread(target=gossip_rounds, daemon=True)
    thread.start()
    yield peer
    stop.set()
    thread.join(timeout=5)
    peer.stop()


def test_a_classic_peer_in_a_swim_network_works_both_ways(
    shells: Shells, bob: ClassicPeer, tmp_path: Path
) -> None:
    theirs = bob.add_file("bobs.txt", b"bob's own notes\n" * 50, 1_750_000_000, owner="bob")
    bob_address = f"{bob.host}:{bob.port}"
    a = shells("A", "--bootstrap", bob_address).start()
    b = shells("B", "--bootstrap", a.address).start()
    c = shells("C", "--bootstrap", a.address).start()
    nodes = [a, b, c]
    for n in nodes:
        wait_until(lambda n=n: n.peers() == {"A", "B", "C", "bob"} - {n.node.peer_id},
                   timeout=30, what=f"{n.node.peer_id} knows everyone")  # fmt: skip
        wait_until(lambda n=n: theirs["file_id"] in n.files(), timeout=20,
                   what=f"{n.node.peer_id} lists bob's file")  # fmt: skip
    wait_until(lambda: set(bob.tracked()) >= {"A", "B", "C"}, what="bob tracks every node")

    # a file pushed on a node reaches the classic peer's catalogue
    pushed = c.push(source(tmp_path, "c.bin"))
    wait_until(lambda: bob.entry(pushed) is not None, timeout=20, what="bob lists C's file")

    # bob keeps getting the classic GOSSIP from every node each interval, never a swim one
    before = {n: len(bob.messages("GOSSIP", peerId=n)) for n in "ABC"}
    wait_until(
        lambda: all(len(bob.messages("GOSSIP", peerId=n)) >= before[n] + 3 for n in "ABC"),
        timeout=10 * INTERVAL + 5, what="a classic GOSSIP from every node each interval",
    )  # fmt: skip
    to_bob = bob.messages("GOSSIP") + bob.messages("GOSSIP_REPLY")
    assert to_bob
    assert not [m for m in to_bob if "swim" in (m.get("treedrive") or {})]
    # the nodes' replies to bob list what they hold (the classic full list); a reply waits for
    # its spacing and for bob's credit (the reply policy), so it may come a while later
    wait_until(
        lambda: any(
            pushed in {r["file_id"] for r in m["files"]}
            for m in bob.messages("GOSSIP_REPLY", peerId="C")
        ),
        timeout=20, what="C's GOSSIP_REPLY to bob lists its file",
    )  # fmt: skip


def test_a_node_without_swim_and_swim_nodes_work_both_ways(shells: Shells, tmp_path: Path) -> None:
    """Swim is on by default; a TreeDrive node run with ``--no-swim`` (or one older than swim)
    gossips the classic way, and the others answer it so: all know each other and each other's
    files, and an owner's delete reaches it."""
    a = shells("A").start()
    b = shells("B", "--bootstrap", a.address).start()
    old = shells("O", "--no-swim", "--bootstrap", a.address).start()
    nodes = [a, b, old]
    wait_until(lambda: mesh(nodes), timeout=30, what="every node knows every other")
    ids = {n.node.peer_id: n.push(source(tmp_path, f"{n.node.peer_id}.bin")) for n in nodes}
    for n in nodes:
        wait_until(lambda n=n: all(i in n.files() for i in ids.values()), timeout=20,
                   what=f"{n.node.peer_id} lists every file")  # fmt: skip
    assert b.delete(ids["B"]).startswith("deleted B.bin")
    wait_until(lambda: ids["B"] not in old.files(), timeout=20, what="O dropped B.bin")
    wait_until(lambda: ids["O"] in b.files(), timeout=5, what="B still lists O's file")
