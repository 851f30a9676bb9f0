"""The node's key from the outside: made at the first start (``node.key``, 0600) and kept across
restarts, shown in ``/api/status`` and ``treedrive status``; a pin forgotten through
``DELETE /api/peers/{peer_id}/key`` and ``treedrive peers forget-key``. In-process nodes over real
HTTP on loopback, real SQLite (the dashboard's line is checked in ``test_dashboard.py``)."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from click.testing import CliRunner

from tests.conftest import fast_config
from treedrive.app import running_node
from treedrive.cli import cli
from treedrive.core.identity import NodeKey, decode_key, fingerprint
from treedrive.core.node import Node
from treedrive.store.keys import KEY_FILE, KeyFileError, load

pytestmark = pytest.mark.timeout(60)

Starter = Callable[..., Any]
OTHER = NodeKey.generate().public


def token_of(node: Node) -> str:
    return (node.config.data_dir / "api-token").read_text().strip()


def url(node: Node, path: str) -> str:
    assert node.http_url is not None
    return node.http_url.rstrip("/") + path


def pin(node: Node, peer_id: str, key: bytes) -> None:
    with node.store.unit_of_work() as uow:
        assert uow.keys.pin(peer_id, key, 1.0)
        uow.commit()


def pinned(node: Node, peer_id: str) -> bytes | None:
    with node.store.reading() as uow:
        got = uow.keys.get(peer_id)
    return None if got is None else got.public_key


async def status_of(node: Node) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(url(node, "/api/status")) as resp:
        assert resp.status == 200
        data: dict[str, Any] = await resp.json()
        return data


async def test_the_status_shows_the_key_the_data_dir_keeps_across_restarts(
    tmp_path: Path,
) -> None:
    config = fast_config(tmp_path / "alice", "alice", http_port=0)
    async with running_node(config) as node:
        path = config.data_dir / KEY_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        key = load(path)
        assert node.key.public == key.public
        first = await status_of(node)
        assert first["fingerprint"] == key.fingerprint
        assert decode_key(first["public_key"]) == key.public
        assert fingerprint(decode_key(first["public_key"]) or b"") == first["fingerprint"]
    config = fast_config(tmp_path / "alice", "alice", http_port=0)
    async with running_node(config) as node:
        again = await status_of(node)
    assert again["fingerprint"] == first["fingerprint"]
    assert again["public_key"] == first["public_key"]


async def test_two_nodes_have_two_keys(start_node: Starter) -> None:
    alice = await start_node("alice", http_port=0)
    bob = await start_node("bob", http_port=0)
    assert (await status_of(alice))["fingerprint"] != (await status_of(bob))["fingerprint"]


async def test_a_corrupt_key_file_stops_the_start_and_stays(tmp_path: Path) -> None:
    config = fast_config(tmp_path / "alice", "alice")
    config.data_dir.mkdir(mode=0o700)
    (config.data_dir / KEY_FILE).write_bytes(b"not a key")
    with pytest.raises(KeyFileError, match="cannot be used"):
        async with running_node(config):
            pass
    assert (config.data_dir / KEY_FILE).read_bytes() == b"not a key"


def test_a_corrupt_key_file_is_one_line_from_treedrive_run(tmp_path: Path) -> None:
    data_dir = tmp_path / "alice"
    data_dir.mkdir(mode=0o700)
    (data_dir / KEY_FILE).write_bytes(b"not a key")
    result = CliRunner().invoke(
        cli,
        ["run", "--peer-id", "alice", "--data-dir", str(data_dir), "--port", "0", "--no-shell"],
    )
    assert result.exit_code != 0
    assert "cannot start the node" in result.output
    assert "node.key" in result.output
    assert "Traceback" not in result.output
    assert (data_dir / KEY_FILE).read_bytes() == b"not a key"


async def test_treedrive_status_prints_the_fingerprint(start_node: Starter) -> None:
    node = await start_node("alice", http_port=0)
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["status", "--node", url(node, "/"), "--token", token_of(node)]
    )
    assert result.exit_code == 0, result.output
    assert f"key {node.key.fingerprint}" in result.output


async def test_forgetting_a_key_needs_the_token_and_a_pin(start_node: Starter) -> None:
    node = await start_node("alice", http_port=0)
    pin(node, "bob", OTHER)
    async with aiohttp.ClientSession() as s:
        async with s.delete(url(node, "/api/peers/bob/key")) as resp:
            assert resp.status == 401
        assert pinned(node, "bob") == OTHER
        auth = {"Authorization": f"Bearer {token_of(node)}"}
        async with s.delete(url(node, "/api/peers/carol/key"), headers=auth) as resp:
            assert resp.status == 404
            assert "no key is pinned to peer carol" in (await resp.json())["error"]
        async with s.delete(url(node, "/api/peers/bob/key"), headers=auth) as resp:
            assert resp.status == 200
            assert await resp.json() == {"peer_id": "bob", "forgotten": True}
        assert pinned(node, "bob") is None
        async with s.delete(url(node, "/api/peers/bob/key"), headers=auth) as resp:
            assert resp.status == 404  # forgotten already


async def test_a_peer_id_with_odd_characters_is_forgotten_by_its_escaped_form(
    start_node: Starter,
) -> None:
    node = await start_node("alice", http_port=0)
    odd = "bob the 2nd ü?#%"
    pin(node, odd, OTHER)
    pin(node, "bob", OTHER)
    auth = {"Authorization": f"Bearer {token_of(node)}"}
    async with (
        aiohttp.ClientSession() as s,
        s.delete(url(node, f"/api/peers/{quote(odd, safe='')}/key"), headers=auth) as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["peer_id"] == odd
    assert pinned(node, odd) is None
    assert pinned(node, "bob") == OTHER


async def test_treedrive_peers_forget_key_forgets_the_pin(start_node: Starter) -> None:
    node = await start_node("alice", http_port=0)
    pin(node, "bob", OTHER)
    where = ["--node", url(node, "/"), "--token", token_of(node)]
    runner = CliRunner()
    done = await asyncio.to_thread(runner.invoke, cli, ["peers", "forget-key", "bob", *where])
    assert done.exit_code == 0, done.output
    assert "forgot the key of peer bob" in done.output
    assert pinned(node, "bob") is None
    again = await asyncio.to_thread(runner.invoke, cli, ["peers", "forget-key", "bob", *where])
    assert again.exit_code != 0
    assert "no key is pinned to peer bob" in again.output
    # the group's own options reach the sub-command too, and --json prints the answer
    pin(node, "bob", OTHER)
    done = await asyncio.to_thread(
        runner.invoke, cli, ["peers", *where, "--json", "forget-key", "bob"]
    )
    assert done.exit_code == 0, done.output
    assert '"forgotten": true' in done.output
    assert pinned(node, "bob") is None
    # and plain `treedrive peers` still lists the peers
    listed = await asyncio.to_thread(runner.invoke, cli, ["peers", *where])
    assert listed.exit_code == 0, listed.output
    assert listed.output.strip() == "no peers"
