"""The control commands as a new user meets them (issue 9), against real ``treedrive run``
processes: short ids, a push of bytes already shared, the progress line in a terminal (a pty),
``-o`` into a folder that does not exist, ``--node`` forms, and the nodes that run elsewhere
when none runs where a command looked."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NODE_PROCESS_WARNINGS, NodeProcess
from tests.web.test_commands import Factory, api, api_files, clean_env, source, started

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90), *NODE_PROCESS_WARNINGS]

MIB = 1 << 20


class Cli:
    """``treedrive …`` with ``$XDG_DATA_HOME`` set so that the data root is the test's folder
    (where ``node_process`` puts every node), as if the nodes ran with their default data dirs."""

    def __init__(self, tmp_path: Path) -> None:
        xdg = tmp_path / "xdg"
        xdg.mkdir(exist_ok=True)
        self.root = xdg / "treedrive"
        if not self.root.exists():
            self.root.symlink_to(tmp_path, target_is_directory=True)
        self.env = {**clean_env(), "XDG_DATA_HOME": str(xdg)}

    def run(self, *args: str, tty: bool = False) -> tuple[int, str, str]:
        """Exit code, stdout, stderr; with ``tty`` stderr is a terminal (a pty), as in a shell."""
        cmd = [sys.executable, "-m", "treedrive", *args]
        if not tty:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=60, env=self.env, check=False
            )
            return done.returncode, done.stdout, done.stderr
        master, slave = pty.openpty()
        with subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=self.env
        ) as proc:
            os.close(slave)
            err = bytearray()
            while True:
                ready, _, _ = select.select([master], [], [], 60)
                if not ready:
                    proc.kill()
                    raise AssertionError(f"{args}: no output for 60 s")
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                err += chunk
            os.close(master)
            assert proc.stdout is not None
            out = proc.stdout.read().decode()
            code = proc.wait(timeout=30)
        return code, out, err.decode()

    def ok(self, *args: str, tty: bool = False) -> tuple[str, str]:
        code, out, err = self.run(*args, tty=tty)
        assert code == 0, f"{args}: exit {code}\n{err}"
        return out, err

    def fails(self, *args: str) -> str:
        code, out, err = self.run(*args)
        assert code != 0, f"{args} succeeded: {out}"
        assert out == ""
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err  # one line that says what to do
        return err.strip()


def test_short_ids_pushes_again_progress_and_where_the_commands_look(
    node_process: Factory, tmp_path: Path
) -> None:
    cli = Cli(tmp_path)
    alice = started(node_process("alice"))
    src = source(tmp_path, "notes.bin", 2 * MIB)

    out, _ = cli.ok("push", str(src), "--peer-id", "alice")
    [(file_id,)] = [tuple(api_files(alice))]
    assert out.strip() == f"pushed notes.bin as {file_id[:12]}"
    out, _ = cli.ok("push", str(src), "--peer-id", "alice")
    assert out.strip() == (
        f"notes.bin is already shared as {file_id[:12]} (use --force to push it anew)"
    )
    again = json.loads(cli.ok("push", str(src), "--peer-id", "alice", "--json")[0])
    assert (again["file_id"], again["existing"]) == (file_id, True)
    assert api_files(alice) == {file_id}

    # bob joins without fetching on join; his downloads are slowed so that one lasts a while
    # (small chunks: a download shows as a transfer only once its first chunk is in)
    bob = started(
        node_process(
            "bob", "--bootstrap", alice.address, "--download-limit", "0",
            "--max-download-rate", "1024", "--chunk-size", "256",
        )
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while file_id not in api_files(bob):
        assert time.monotonic() < deadline, "bob never learnt of alice's file"
        time.sleep(0.1)
    where_they_look(cli, alice)

    out, _ = cli.ok("list", "--peer-id", "bob")
    _header, row = out.splitlines()
    assert row.split()[:2] == [file_id[:12], "notes.bin"]

    # -o into a folder that does not exist: one line, and nothing fetched
    missing = tmp_path / "missing" / "dir" / "x"
    err = cli.fails("get", file_id[:8], "-o", str(missing), "--peer-id", "bob")
    assert f"the folder {missing.parent} does not exist; create it or choose another" in err
    assert api(bob, "/api/transfers") == {"active": [], "recent": []}

    # a get in a terminal: a line of bytes, total, rate and ETA, redrawn in place on stderr
    out, err = cli.ok("get", file_id[:8], "--peer-id", "bob", tty=True)
    assert out.strip() == "got notes.bin (2.0 MiB)"
    drawn = [d for d in err.split("\r") if d.strip("\x1b[K")]
    assert drawn, f"no progress line: {err!r}"
    assert "\n" not in err
    for d in drawn:
        assert re.fullmatch(
            r"get notes\.bin  [\d.]+ (B|KiB|MiB) / 2\.0 MiB  [\d.]+ (B|KiB|MiB)/s  ETA \d+ s"
            r"(\x1b\[K)?",
            d,
        ), d
    assert err.endswith("\r\x1b[K")  # the line is gone before the answer is printed

    # the same file again: already here, no line at all; -o FOLDER saves under its name
    saved = tmp_path / "saved"
    saved.mkdir()
    out, err = cli.ok("get", file_id[:10], "-o", str(saved), "--peer-id", "bob", tty=True)
    assert out.strip() == f"notes.bin is already here (2.0 MiB), saved to {saved / 'notes.bin'}"
    assert err == ""
    assert (saved / "notes.bin").read_bytes() == src.read_bytes()

    # a prefix deletes too
    out, _ = cli.ok("delete", file_id[:8], "--peer-id", "alice")
    assert out.strip() == f"deleted {file_id[:12]}"


def where_they_look(cli: Cli, alice: NodeProcess) -> None:
    """No node runs where a command looks by default: it says so and lists alice and bob."""
    err = cli.fails("status")
    assert err == (
        f"Error: no node is running on {cli.root / 'default'}; "
        "running: alice (--peer-id alice), bob (--peer-id bob)"
    )
    out, _ = cli.ok("status", "--peer-id", "alice")
    assert out.startswith("peer alice  ")

    # --node: a URL, or host:port without the scheme; anything else says the form expected
    port = str(alice.info()["http"]).rstrip("/").rsplit(":", 1)[1]
    for given in (f"http://127.0.0.1:{port}/", f"127.0.0.1:{port}", f" 127.0.0.1:{port}/ "):
        data: dict[str, Any] = json.loads(cli.ok("status", "--node", given, "--json")[0])
        assert data["peer_id"] == "alice"
    for given in ("nonsense", "ftp://127.0.0.1:21/", "http://", "127.0.0.1:99999"):
        err = cli.fails("peers", "--node", given)
        assert "e.g. http://127.0.0.1:8280/" in err, err
