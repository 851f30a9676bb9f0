"""Ranged downloads between real ``treedrive run`` processes that get killed: a receiver
SIGKILLed halfway resumes where it stopped, and a download whose sender dies finishes from
another holder. Progress is watched from outside, read-only: the receiver's partial file and its
``downloads`` table, the holders' ``transfers`` tables."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import NodeProcess
from tests.e2e.helpers import Shells, sqlite_ro, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

KiB = 1024
MiB = 1024 * 1024
CHUNK_KIB = 64


def source_file(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "src" / "big.bin"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path, data


def db_of(data_dir: Path) -> Path:
    return data_dir / "treedrive.db"


def synced(data_dir: Path, file_id: str) -> int | None:
    """Bytes the receiver's ``downloads`` row records as on disk; None without a row."""
    db = db_of(data_dir)
    if not db.exists():
        return None
    con = sqlite_ro(db)
    try:
        row = con.execute(
            "SELECT size, chunk_size, done FROM downloads WHERE file_id = ?", (file_id,)
        ).fetchone()
    except Exception:
        return None
    finally:
        con.close()
    if row is None:
        return None
    size, chunk, done = int(row[0]), int(row[1]), bytes(row[2])
    chunks = [i for i in range(len(done) * 8) if done[i // 8] >> (i % 8) & 1]
    return sum(min(chunk, size - c * chunk) for c in chunks)


def arrived(data_dir: Path, file_id: str) -> int:
    """Bytes written into the receiver's partial file so far (it is sparse until written),
    or recorded as synced, whichever says more."""
    path = data_dir / "partial" / f"{file_id}.range"
    try:
        written = os.stat(path).st_blocks * 512
    except FileNotFoundError:
        written = 0
    return max(written, synced(data_dir, file_id) or 0)


def served_out(data_dir: Path, file_id: str, since: float) -> tuple[int, int]:
    """(bytes, transfers still running) of a holder's uploads of ``file_id`` started since."""
    con = sqlite_ro(db_of(data_dir))
    try:
        rows = con.execute(
            "SELECT state, bytes_done FROM transfers "
            "WHERE direction = 'out' AND file_id = ? AND started_at >= ?",
            (file_id, since),
        ).fetchall()
    finally:
        con.close()
    return sum(int(b) for _, b in rows), sum(s == "running" for s, _ in rows)


def put_limits(node: NodeProcess, body: dict[str, float | None]) -> dict[str, object]:
    info = node.info()
    token = (node.data_dir / "api-token").read_text().strip()
    req = urllib.request.Request(  # noqa: S310 (loopback only)
        str(info["http"]).rstrip("/") + "/api/limits",
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (loopback only)
        assert resp.status == 200
        return dict(json.loads(resp.read()))


def blob_of(data_dir: Path, file_id: str) -> Path:
    return data_dir / "blobs" / file_id


def log_of(data_dir: Path) -> str:
    path = data_dir / "node.log"
    return path.read_text(errors="replace") if path.exists() else ""


def got_lines(data_dir: Path, file_id: str) -> list[str]:
    """The receiver's 'fetched …' lines for ``file_id``: logged once the file is committed
    (blob in place, store updated)."""
    return [
        line
        for line in log_of(data_dir).splitlines()
        if "fetched " in line and f"{file_id[:12]})" in line
    ]


def test_receiver_killed_halfway_resumes(
    shells: Shells, node_process: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    size = 8 * MiB
    holder = shells(
        "H", "--chunk-size", str(CHUNK_KIB), "--max-upload-rate", "2048", "--download-limit", "0"
    ).start()
    src, data = source_file(tmp_path, size)
    file_id = holder.push(src)

    receiver = node_process(
        "R",
        "--bootstrap",
        holder.address,
        "--chunk-size",
        str(CHUNK_KIB),
        "--download-limit",
        "1",
    ).start()
    rdir = receiver.data_dir
    wait_until(lambda: arrived(rdir, file_id) >= size * 45 // 100, timeout=20, what="half")
    receiver.kill()  # SIGKILL: no clean stop
    assert not blob_of(rdir, file_id).exists()
    assert (rdir / "partial" / f"{file_id}.range").exists()
    kept = synced(rdir, file_id)
    assert kept is not None, "the downloads row is gone"

    restarted = time.time()
    receiver.start()
    wait_until(lambda: got_lines(rdir, file_id), timeout=30, what="the file committed")
    assert blob_of(rdir, file_id).read_bytes() == data
    assert not (rdir / "partial" / f"{file_id}.range").exists()
    assert synced(rdir, file_id) is None

    hdir = holder.data_dir
    wait_until(lambda: served_out(hdir, file_id, restarted)[1] == 0, what="uploads settle")
    after, _ = served_out(hdir, file_id, restarted)
    assert 0 < after <= size * 60 // 100, (
        f"the holder served {after} of {size} bytes after the restart "
        f"(the receiver had {kept} bytes recorded as synced when it was killed)"
    )


def test_sender_killed_midway_download_completes_from_second_holder(
    shells: Shells, node_process: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    size = 6 * MiB
    chunk = ("--chunk-size", str(CHUNK_KIB))
    first = shells("H1", *chunk, "--download-limit", "0").start()
    src, data = source_file(tmp_path, size)
    file_id = first.push(src)
    second = node_process("H2", "--bootstrap", first.address, *chunk, "--download-limit", "1")
    second.start()
    wait_until(lambda: blob_of(second.data_dir, file_id).exists(), timeout=20, what="H2 has it")
    for holder in (first.node, second):
        assert put_limits(holder, {"upload": 2 * MiB})["upload"] == 2 * MiB

    started = time.time()
    receiver = node_process(
        "R",
        "--bootstrap",
        first.address,
        *chunk,
        "--download-limit",
        "1",
        "--join-delay",
        "1.5",
    ).start()
    rdir = receiver.data_dir
    wait_until(lambda: arrived(rdir, file_id) >= size // 5, timeout=20, what="a fifth")
    assert served_out(first.data_dir, file_id, started) != (0, 0), "H1 never served R"
    first.kill()  # the sender dies mid-transfer

    got = wait_until(lambda: got_lines(rdir, file_id), timeout=30, what="the file committed")
    assert blob_of(rdir, file_id).read_bytes() == data
    assert receiver.proc is not None
    assert receiver.proc.poll() is None
    assert "H2" in got[-1], got
