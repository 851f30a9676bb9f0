"""Signed ownership (issue 11, PROTOCOL.md 2.8) with three real ``treedrive run`` processes and a
classic peer (tests/classic_peer.py) on loopback: a DELETE its owner did not sign, and records
that contradict the owner's sealed one, change nothing on any TreeDrive node, and the file stays
fetchable; the owner's own DELETE removes it everywhere, the classic peer included."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.classic_peer import ClassicPeer
from tests.e2e.helpers import Shell, Shells, send_message, wait_until
from treedrive.core.identity import NodeKey, encode_b64
from treedrive.core.model import FileMeta
from treedrive.core.ownership import seal, sign_delete
from treedrive.transport.extension import sealed_record

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

MALLORY = NodeKey.generate()


@pytest.fixture
def classic() -> Iterator[ClassicPeer]:
    peer = ClassicPeer("classic").start()
    yield peer
    peer.stop()


def network(shells: Shells, classic: ClassicPeer) -> tuple[Shell, Shell, Shell]:
    """A (joined through the classic peer), B and C (joined through A): every node knows the
    other two and the classic peer."""
    a = shells("A", "--bootstrap", "{}:{}".format(*classic.address)).start()
    b = shells("B", "--bootstrap", a.address).start()
    c = shells("C", "--bootstrap", a.address).start()
    everyone = {"A", "B", "C", "classic"}
    for me in (a, b, c):
        others = everyone - {me.node.peer_id}
        wait_until(lambda me=me, o=others: o <= me.peers(), what=f"{others} known", timeout=30)
    return a, b, c


def pushed_by_b(b: Shell, others: tuple[Shell, ...], tmp_path: Path) -> tuple[str, bytes]:
    src = tmp_path / "owned.bin"
    src.write_bytes(os.urandom(50_000))
    file_id = b.push(src)
    for node in others:
        wait_until(lambda node=node: file_id in node.files(), what="listed everywhere")
    return file_id, src.read_bytes()


def listed_as_pushed(node: Shell, file_id: str) -> bool:
    rows = node.files()
    return file_id in rows and (rows[file_id]["name"], rows[file_id]["owner"]) == ("owned.bin", "B")


def fetchable(node: Shell, file_id: str, data: bytes) -> None:
    out = node.get(file_id)
    assert out.startswith(("got owned.bin", "owned.bin is already here")), out
    assert node.blob(file_id).read_bytes() == data


def test_an_unsigned_delete_changes_nothing_and_the_owners_delete_reaches_everyone(
    shells: Shells, classic: ClassicPeer, tmp_path: Path
) -> None:
    a, b, c = network(shells, classic)
    file_id, data = pushed_by_b(b, (a, c), tmp_path)
    wait_until(lambda: classic.entry(file_id) is not None, what="the classic peer knows it")

    # DELETEs "from B" that B did not sign, to each TreeDrive node.
    forged: dict[str, Any] = {"type": "DELETE", "from": "B", "file_id": file_id}
    by_mallory = sign_delete(MALLORY, file_id, "B", 1_800_000_000)
    badly_signed = {
        **forged,
        "treedrive": {"ts": 1_800_000_000, "sig": encode_b64(by_mallory.signature)},
    }
    for node in (a, b, c):
        send_message(node.port, forged)
        send_message(node.port, badly_signed)
    for node in (a, c):
        wait_until(
            lambda node=node: f"DELETE of {file_id[:12]} from 'B' refused" in node.log_text(),
            what=f"{node.node.peer_id} refused the forged DELETE",
        )
    wait_until(lambda: "in this node's own name refused" in b.log_text(), what="B refused it")
    for node in (a, b, c):
        assert listed_as_pushed(node, file_id)
        fetchable(node, file_id, data)
        assert "Traceback" not in node.log_text()

    # The owner's delete: signed for the TreeDrive nodes, classic for the classic peer.
    assert b.delete(file_id) == f"deleted owned.bin ({file_id[:12]})"
    for node in (a, b, c):
        wait_until(lambda node=node: file_id not in node.files(), what="deleted everywhere")
        assert not node.blob(file_id).exists()
    wait_until(lambda: classic.entry(file_id) is None, what="the classic peer honoured it")
    assert {"type": "DELETE", "from": "B", "file_id": file_id} in classic.messages("DELETE")


def test_records_contradicting_the_owners_sealed_one_are_refused_everywhere(
    shells: Shells, classic: ClassicPeer, tmp_path: Path
) -> None:
    a, b, c = network(shells, classic)
    file_id, data = pushed_by_b(b, (a, c), tmp_path)
    row = a.files()[file_id]
    assert row["owner"] == "B"
    with_name = FileMeta(file_id, "evil.exe", len(data) / 1048576, "B", 1)
    ts = int(next(m for m in classic.messages("ANNOUNCE", file_id=file_id))["file_timestamp"])
    true = FileMeta(file_id, "owned.bin", len(data) / 1048576, "B", ts)
    contradictions = [
        FileMeta(file_id, "evil.exe", true.file_size, "B", ts),  # other name
        FileMeta(file_id, "owned.bin", true.file_size, "B", ts + 1),  # other timestamp
        FileMeta(file_id, "owned.bin", true.file_size, "mallory", ts),  # other owner
        seal(MALLORY, FileMeta(file_id, "evil.exe", true.file_size, "mallory", ts)),
        with_name,
    ]
    for node in (a, b, c):
        for record in contradictions:
            send_message(
                node.port, {"type": "ANNOUNCE", "from": "mallory", **sealed_record(record)}
            )
        send_message(
            node.port,
            {
                "type": "GOSSIP_REPLY",
                "host": "127.0.0.1",
                "port": classic.port,  # an address that answers, as a real peer's would
                "peerId": "mallory",
                "files": [sealed_record(r) for r in contradictions],
                "treedrive": {"version": 1, "features": []},
            },
        )
    for node in (a, c):
        wait_until(
            lambda node=node: "records from 'mallory' refused" in node.log_text(),
            what=f"{node.node.peer_id} refused the contradicting records",
        )
    for node in (a, b, c):
        assert listed_as_pushed(node, file_id)
        fetchable(node, file_id, data)
        assert "mallory" not in node.files()[file_id]["peers"]
        assert "Traceback" not in node.log_text()
