"""The control commands end to end: real ``treedrive run`` processes (web API on a free port),
driven by the real CLI as a subprocess (``python -m treedrive <cmd> --data-dir DIR --json``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NODE_PROCESS_WARNINGS, NodeProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(90),
    *NODE_PROCESS_WARNINGS,
]

Factory = Callable[..., NodeProcess]


# -- helpers -------------------------------------------------------------------------------------
def clean_env() -> dict[str, str]:
    """The test's environment without TREEDRIVE_* settings that would redirect the commands."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TREEDRIVE_")}


def treedrive(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "treedrive", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
        check=False,
    )


def ok(*args: str) -> subprocess.CompletedProcess[str]:
    done = treedrive(*args)
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stderr}"
    return done


def cmd_json(node: NodeProcess, *args: str) -> Any:
    """``treedrive <args> --data-dir <node> --json``, parsed; the command must succeed."""
    return json.loads(ok(*args, "--data-dir", str(node.data_dir), "--json").stdout)


def fails(node: NodeProcess | None, *args: str) -> str:
    """Run a command that must fail; its stderr."""
    where = ["--data-dir", str(node.data_dir)] if node is not None else []
    done = treedrive(*args, *where, "--json")
    assert done.returncode != 0, f"{args} succeeded: {done.stdout}"
    assert done.stdout == ""
    return done.stderr


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {timeout} s: {what}")
        time.sleep(0.2)


def started(node: NodeProcess) -> NodeProcess:
    node.start()
    wait_until(lambda: node.info().get("http"), 20, f"{node.peer_id}'s node.json names its API")
    return node


def api(node: NodeProcess, path: str) -> Any:
    """A GET on the node's API straight from the test (cheaper than a command for polling)."""
    url = str(node.info()["http"]).rstrip("/") + path
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (the node's loopback URL)
        return json.loads(resp.read())


def api_peers(node: NodeProcess) -> set[str]:
    return {p["peer_id"] for p in api(node, "/api/peers")["peers"]}


def api_files(node: NodeProcess) -> set[str]:
    return {f["file_id"] for f in api(node, "/api/files?limit=500")["files"]}


def listed(node: NodeProcess, scope: str = "both") -> dict[str, dict[str, Any]]:
    """``treedrive list SCOPE --json``: file_id -> record."""
    data = cmd_json(node, "list", scope)
    assert data["scope"] == scope
    assert data["total"] == len(data["files"])
    return {f["file_id"]: f for f in data["files"]}


def joined(node_process: Factory, *bob_args: str) -> tuple[NodeProcess, NodeProcess]:
    alice = started(node_process("alice"))
    bob = started(node_process("bob", "--bootstrap", alice.address, *bob_args))
    wait_until(lambda: api_peers(alice) == {"bob"}, what="alice tracks bob")
    wait_until(lambda: api_peers(bob) == {"alice"}, what="bob tracks alice")
    return alice, bob


def source(tmp_path: Path, name: str, size: int) -> Path:
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(os.urandom(size))
    return path


# -- tests ---------------------------------------------------------------------------------------
def test_status_peers_push_and_list_on_two_joined_nodes(
    node_process: Factory, tmp_path: Path
) -> None:
    alice, bob = joined(node_process)
    info = alice.info()
    status = cmd_json(alice, "status")
    assert status["peer_id"] == "alice"
    assert status["port"] == alice.port
    assert status["http"] == info["http"]
    assert status["counts"]["peers"] == 1
    assert status["counts"]["files"] == 0

    [peer] = cmd_json(bob, "peers")["peers"]
    assert (peer["peer_id"], peer["host"], peer["port"]) == ("alice", "127.0.0.1", alice.port)
    assert peer["treedrive"] is True

    # human output: a table with the ids
    header, *rows = ok("peers", "--data-dir", str(alice.data_dir)).stdout.splitlines()
    assert header.split()[:2] == ["peer", "address"]
    assert [row.split()[0] for row in rows] == ["bob"]
    assert f"127.0.0.1:{bob.port}" in rows[0]
    human = ok("status", "--data-dir", str(alice.data_dir)).stdout
    assert "alice" in human
    assert str(info["http"]) in human

    # push on bob (under another name) reaches alice's catalogue
    src = source(tmp_path, "shared.txt", 4000)
    pushed = cmd_json(bob, "push", str(src), "--name", "renamed.txt")
    file_id = pushed["file_id"]
    assert (pushed["file_name"], pushed["file_owner"], pushed["size_bytes"]) == (
        "renamed.txt",
        "bob",
        4000,
    )
    assert (bob.data_dir / "blobs" / file_id).read_bytes() == src.read_bytes()
    wait_until(lambda: file_id in api_files(alice), what="alice lists bob's push")
    entry = listed(alice)[file_id]
    assert (entry["file_name"], entry["file_owner"], entry["mine"]) == ("renamed.txt", "bob", False)
    header, *rows = ok("list", "--data-dir", str(alice.data_dir)).stdout.splitlines()
    assert header.split()[:2] == ["file_id", "name"]
    assert [row.split()[0] for row in rows] == [file_id[:12]]  # short ids in tables
    assert "renamed.txt" in rows[0]


def test_push_get_and_delete(node_process: Factory, tmp_path: Path) -> None:
    # alice pushes while alone (no copy goes anywhere); bob joins without fetching on join, so
    # bob's get really fetches from alice.
    alice = started(node_process("alice"))
    src = source(tmp_path, "notes.bin", 250_000)
    pushed = cmd_json(alice, "push", str(src))
    file_id = pushed["file_id"]
    assert (pushed["file_name"], pushed["size_bytes"], pushed["file_owner"]) == (
        "notes.bin",
        src.stat().st_size,
        "alice",
    )
    assert (alice.data_dir / "blobs" / file_id).read_bytes() == src.read_bytes()
    mine = listed(alice, "local")
    assert set(mine) == {file_id}
    assert mine[file_id]["has_copy"] is True

    bob = started(node_process("bob", "--bootstrap", alice.address, "--download-limit", "0"))
    wait_until(lambda: file_id in api_files(bob), what="bob lists alice's file")
    remote = listed(bob, "remote")
    assert set(remote) == {file_id}
    assert (remote[file_id]["file_owner"], remote[file_id]["has_copy"]) == ("alice", False)

    # get with -o: into the node and to PATH, byte-identical, no temp file left beside it
    out = tmp_path / "out" / "copy.bin"
    out.parent.mkdir()
    got = cmd_json(bob, "get", file_id, "-o", str(out))
    assert (got["file_id"], got["has_copy"], got["saved_to"]) == (file_id, True, str(out))
    assert out.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["copy.bin"]
    assert (bob.data_dir / "blobs" / file_id).read_bytes() == src.read_bytes()
    assert set(listed(bob, "local")) == {file_id}
    # -o FOLDER saves under the file's name
    got = cmd_json(bob, "get", file_id, "-o", str(out.parent))
    assert got["saved_to"] == str(out.parent / "notes.bin")
    assert (out.parent / "notes.bin").read_bytes() == src.read_bytes()

    # delete by a node that does not own it: refused, with a clear message
    err = fails(bob, "delete", file_id)
    assert "only its owner can delete it" in err
    assert file_id in api_files(bob)
    assert file_id in api_files(alice)

    # the owner's delete removes it everywhere
    assert cmd_json(alice, "delete", file_id) == {"deleted": file_id}
    assert listed(alice) == {}
    wait_until(lambda: file_id not in api_files(bob), what="gone from bob")
    assert not (bob.data_dir / "blobs" / file_id).exists()

    # get of an unknown id fails with the node's message
    assert "no file" in fails(bob, "get", file_id)


def test_commands_without_a_running_node(node_process: Factory, tmp_path: Path) -> None:
    empty = tmp_path / "nobody"
    empty.mkdir()
    for args in (["status"], ["delete", "0" * 64]):
        done = treedrive(*args, "--data-dir", str(empty), "--json")
        assert done.returncode != 0
        assert "no node is running" in done.stderr
        assert str(empty) in done.stderr

    # a killed node leaves node.json behind: its process is gone, so no node is running there
    node = started(node_process("alice"))
    node.kill()
    assert (node.data_dir / "node.json").exists()
    err = fails(node, "list")
    assert "no node is running" in err
    assert "has stopped" in err
    assert "Traceback" not in err


def test_node_url_with_a_wrong_or_missing_token_and_an_upload_over_the_cap(
    node_process: Factory, tmp_path: Path
) -> None:
    node = started(node_process("alice", "--max-upload", "1"))
    url = str(node.info()["http"])
    src = source(tmp_path, "x.bin", 100)
    for args in (
        ["push", str(src), "--node", url, "--token", "not-the-token"],
        ["delete", "0" * 64, "--node", url, "--token", "not-the-token"],
    ):
        done = treedrive(*args, "--json")
        assert done.returncode != 0, args
        assert "wrong API token" in done.stderr
        assert done.stdout == ""
    done = treedrive("push", str(src), "--node", url, "--json")
    assert done.returncode != 0
    assert "needs the node's API token" in done.stderr
    assert api_files(node) == set()

    # the right token with --node works
    token = (node.data_dir / "api-token").read_text().strip()
    done = ok("push", str(src), "--node", url, "--token", token, "--json")
    assert api_files(node) == {json.loads(done.stdout)["file_id"]}

    # a push over the node's cap (1 MiB) is refused with the node's message, nothing stored
    big = source(tmp_path, "big.bin", 2 * 1024 * 1024)
    err = fails(node, "push", str(big))
    assert "over the cap" in err
    assert len(api_files(node)) == 1
    assert list((node.data_dir / "partial").iterdir()) == []
