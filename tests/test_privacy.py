"""Private stays private; a stranger's strings never reach the terminal raw (issue 8, THREATS.md):

- the data dir is 0700 and every file in it 0600 (database, its -wal/-shm, node.log, node.json,
  the token, blobs), both when made and when an existing dir was left open to others;
- peer ids, hosts, names and owners printed by ``treedrive peers/list/status`` and the shell
  have ESC, BEL, other C0/C1 controls, DEL and lone surrogates shown as visible escapes.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NODE_PROCESS_WARNINGS, NodeProcess, marked
from treedrive.cli import PrintableFormatter
from treedrive.core.model import CatalogEntry, FileMeta, PeerInfo
from treedrive.core.text import printable, printable_lines
from treedrive.shell import Shell, table
from treedrive.store import Store
from treedrive.web.commands import _files_table, status_lines
from treedrive.web.peer_commands import _peers_table

Factory = Callable[..., NodeProcess]
EVIL = "evil\x1b]0;owned\x07\x1b[2J\x9b31m\x7f\r\u202e"
RAW = ("\x1b", "\x07", "\x9b", "\x7f", "\r", "\u202e")

E2E = [
    pytest.mark.e2e,
    pytest.mark.timeout(90),
    *NODE_PROCESS_WARNINGS,
]


e2e = marked(E2E)


def modes(root: Path) -> dict[str, int]:
    """Every path under ``root`` (and root itself, as ".") with its permission bits."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def not_private(root: Path) -> dict[str, str]:
    wrong = {}
    for name, mode in modes(root).items():
        want = 0o700 if (root / name).is_dir() else 0o600
        if mode != want:
            wrong[name] = oct(mode)
    return wrong


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Run with the common umask 022 (files 0644 unless made otherwise)."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TREEDRIVE_")}


def treedrive(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "treedrive", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        input=stdin,
        check=False,
    )


def api(node: NodeProcess, method: str, path: str, body: bytes | None = None) -> Any:
    token = (node.data_dir / "api-token").read_text().strip()
    req = urllib.request.Request(  # noqa: S310 (the node's own http:// URL)
        node.info()["http"].rstrip("/") + path,
        data=body,
        method=method,
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        return json.loads(resp.read())


def send_gossip(port: int, peer_id: str) -> None:
    message = {"type": "GOSSIP", "host": "127.0.0.1", "port": 9, "id": "g-evil", "peerId": peer_id}
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(json.dumps(message).encode())


# -- file modes ------------------------------------------------------------------------------------
@pytest.mark.usefixtures("open_umask")
def test_a_new_store_is_private_whatever_the_umask(tmp_path: Path) -> None:
    root = tmp_path / "fresh" / "node"
    store = Store(root)
    try:
        store.upgrade()  # writes: the -wal and -shm files exist while it is open
        assert (root / "treedrive.db-wal").exists()
        with store.blobs.writer() as writer:  # a blob's temp file, then the blob
            writer.write(b"bytes")
            writer.commit(writer.content_id(1), 1)
        assert not_private(root) == {}
        assert {"treedrive.db", "treedrive.db-wal", "treedrive.db-shm", "blobs", "partial"} <= set(
            modes(root)
        )
    finally:
        store.close()


@pytest.mark.usefixtures("open_umask")
def test_the_log_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    import logging

    from treedrive.cli import setup_logging

    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        setup_logging("INFO", tmp_path / "node")
    finally:
        for handler in root.handlers[len(handlers) :]:
            handler.close()
        root.handlers[:] = handlers
    assert modes(tmp_path / "node") == {".": 0o700, "node.log": 0o600}


@e2e
def test_a_running_node_keeps_its_data_dir_private(node_process: Factory) -> None:
    node = node_process("alice")
    data = node.data_dir
    # a data dir left open to others, as an older version made it
    data.mkdir(parents=True)
    data.chmod(0o755)
    (data / "node.log").write_text("an old line\n")
    (data / "node.log").chmod(0o644)
    node.start()
    try:
        pushed = api(node, "POST", "/api/files?name=secret.txt", b"nobody else reads this")
        assert (data / "blobs" / pushed["file_id"]).exists()
        wrong = not_private(data)
        assert wrong == {}, wrong
        names = set(modes(data))
        expected = {"treedrive.db", "node.log", "node.json", "api-token", "lock", "blobs"}
        assert expected <= names, names
        assert {"treedrive.db-wal", "treedrive.db-shm"} <= names, names
        log = (data / "node.log").read_text()
        assert "was readable by others" in log  # said once, at start
        assert log.count("was readable by others") == 1
    finally:
        assert node.stop() == 0
    assert not_private(data) == {}


# -- escaping --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain id", "plain id"),
        ("\x1b[2J", "\\x1b[2J"),
        ("bell\x07", "bell\\x07"),
        ("nul\x00tab\tnl\ncr\r", "nul\\x00tab\\x09nl\\x0acr\\x0d"),
        ("del\x7f", "del\\x7f"),
        ("c1\x9b\x85", "c1\\x9b\\x85"),
        ("lone\ud800surrogate\udfff", "lone\\ud800surrogate\\udfff"),
        ("bidi\u202eexe.txt", "bidi\\u202eexe.txt"),
        ("ünïcødé ✓ 日本", "ünïcødé ✓ 日本"),
        ("back\\slash", "back\\slash"),
    ],
)
def test_printable_escapes_control_characters(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert printable(printable(raw)) == shown  # idempotent
    printable(raw).encode("utf-8")  # always encodable (no lone surrogates left)


def test_printable_lines_keeps_line_breaks_only() -> None:
    assert printable_lines("a\x1b\nb\x07") == "a\\x1b\nb\\x07"
    assert printable(42) == "42"


def assert_safe(text: str) -> None:
    for ch in RAW:
        assert ch not in text, (ch, text)
    text.encode("utf-8")


def test_tables_of_peers_and_files_show_escapes() -> None:
    out = table(["peer"], [[EVIL]])
    assert_safe(out)
    assert "evil\\x1b]0;owned\\x07" in out
    now = time.time()
    peers = [{"peer_id": EVIL, "host": "h\x1b", "port": 1, "last_seen": now, "treedrive": False}]
    out = _peers_table(peers, now)
    assert_safe(out)
    assert "h\\x1b:1" in out
    record = {
        "file_id": "f" * 64,
        "display_name": "name\x07",
        "size_bytes": 10,
        "file_size": 0.0,
        "file_owner": EVIL,
        "has_copy": False,
        "holders": [EVIL, "ok"],
    }
    out = _files_table([record])
    assert_safe(out)
    assert "evil\\x1b" in out
    status = {
        "peer_id": EVIL,
        "host": "127.0.0.1\x1b[31m",
        "port": 1,
        "http": None,
        "uptime": 1.0,
        "counts": {"peers": 1, "files": 1, "local": 0, "remote": 1},
        "transfers": 0,
    }
    out = status_lines(status)
    assert_safe(out)
    assert out.count("\n") == 1


class FakeNode:
    """What the shell reads of a node: peers and files."""

    peer_id = "me"

    def peers(self) -> list[PeerInfo]:
        return [PeerInfo(EVIL, "host\x1b[1m", 9, time.time())]

    def files(self, scope: str) -> list[CatalogEntry]:
        meta = FileMeta("a" * 64, "x\x1b.txt", 0.1, EVIL, 1)
        return [CatalogEntry(meta, has_copy=True, size_bytes=5, holders=(EVIL,))]


async def test_the_shell_prints_escapes() -> None:
    shell = Shell(FakeNode())  # type: ignore[arg-type]
    for line in ("peers", "list", "list remote", "ls", "bogus\x1b[2J", "delete"):
        out = await shell.execute(line)
        assert_safe(out)
    assert "evil\\x1b" in await shell.execute("peers")
    assert "evil\\x1b" in await shell.execute("list")


def test_log_lines_show_escapes() -> None:
    import logging

    record = logging.LogRecord("t", logging.INFO, __file__, 1, "peer %s seen", (EVIL,), None)
    out = PrintableFormatter("%(message)s").format(record)
    assert_safe(out)
    assert out == "peer " + printable(EVIL) + " seen"


def plant(data_dir: Path, peer_id: str) -> str:
    """Put a peer and a file it owns and holds straight into a stopped node's catalogue (what a
    wire layer that let such strings through would have stored); returns the file id."""
    store = Store(data_dir)
    try:
        store.upgrade()
        meta = FileMeta("b" * 64, "name\x1b[5m.txt", 0.5, peer_id, 1_700_000_000)
        with store.unit_of_work() as uow:
            uow.peers.upsert(peer_id, "127.0.0.1", 9, time.time(), None)
            uow.files.merge(meta, time.time())
            uow.files.add_holder(meta.file_id, peer_id, time.time())
            uow.commit()
    finally:
        store.close()
    return meta.file_id


@e2e
def test_a_peer_id_with_esc_and_bel_is_never_printed_raw(node_process: Factory) -> None:
    """A real GOSSIP names a peer with ESC and BEL in its id (the wire layer may refuse such an
    id: then it is never tracked). A catalogue that holds such a peer and a file it owns (put
    there directly) is shown escaped by every human output: the commands and the shell."""
    evil = "evil\x1b]0;owned\x07\x1b[2J"
    shown = "evil\\x1b]0;owned\\x07\\x1b[2J"
    node = node_process("alice", "--peer-timeout", "60", "--cleanup-interval", "10")
    file_id = plant(node.data_dir, evil)
    node.start(shell=True)  # noqa: S604 (the node's interactive shell, not a system shell)
    try:
        send_gossip(node.port, evil + "-via-gossip")
        time.sleep(0.5)
        peers = api(node, "GET", "/api/peers")["peers"]
        assert evil in {p["peer_id"] for p in peers}
        where = ["--data-dir", str(node.data_dir)]
        outputs = {}
        for command in ("peers", "status", "list"):
            done = treedrive(command, *where)
            assert done.returncode == 0, done.stderr
            assert_safe(done.stdout)
            outputs[command] = done.stdout
        assert shown in outputs["peers"]
        assert shown in outputs["list"]
        assert file_id[:12] in outputs["list"]
        assert node.proc is not None
        out, _ = node.proc.communicate("peers\nlist\nexit\n", timeout=30)
        assert_safe(out)
        assert out.count(shown) >= 3  # the peer, the file's owner and its holder
    finally:
        node.kill()
    assert_safe((node.data_dir / "node.log").read_text())
