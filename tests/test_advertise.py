"""``--advertise-host``: the address a node gives peers, apart from the one it listens on. A
node listening on every interface never tells peers 0.0.0.0."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import treedrive.cli as cli_module
import treedrive.launch as launch
from tests.conftest import address, wait_for
from tests.isolation import no_settings
from treedrive.cli import cli
from treedrive.core.config import NodeConfig, is_wildcard


@pytest.fixture(autouse=True)
def _no_treedrive_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    no_settings(monkeypatch, tmp_path)


async def test_peers_are_told_the_advertised_address(start_node: Any) -> None:
    """bob listens on every interface and advertises "localhost": alice records him there (and
    can reach him there: she answers his gossip)."""
    alice = await start_node("alice")
    bob = await start_node(
        "bob", host="0.0.0.0", advertise_host="localhost", bootstrap=(address(alice),)
    )
    assert bob.host == "localhost"
    assert json.loads((bob.config.data_dir / "node.json").read_text())["host"] == "localhost"
    seen = await wait_for(lambda: [p for p in alice.peers() if p.peer_id == "bob"])
    assert (seen[0].host, seen[0].port) == ("localhost", bob.port)
    await wait_for(lambda: [p for p in bob.peers() if p.peer_id == "alice"])


async def test_without_advertise_host_peers_are_told_the_listen_address(start_node: Any) -> None:
    alice = await start_node("alice")
    assert alice.host == "127.0.0.1"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", ""])
def test_wildcards(host: str) -> None:
    assert is_wildcard(host)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "10.0.0.5", "node.example"])
def test_not_wildcards(host: str) -> None:
    assert not is_wildcard(host)


def test_advertised_host_of_a_config() -> None:
    assert NodeConfig(Path("d")).advertised_host == "127.0.0.1"
    assert NodeConfig(Path("d"), host="0.0.0.0", advertise_host="a.example").advertised_host == (
        "a.example"
    )


def test_the_default_route_address_is_never_a_wildcard_or_loopback() -> None:
    found = launch.default_route_address()
    if found is not None:  # None: this machine has no default route
        ip = ipaddress.ip_address(found)
        assert not ip.is_loopback
        assert not ip.is_unspecified


# -- the command ----------------------------------------------------------------------------------
@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[NodeConfig]:
    seen: list[NodeConfig] = []

    async def fake_run(config: NodeConfig, with_shell: bool, *_: Any) -> None:
        seen.append(config)

    monkeypatch.setattr(cli_module, "_run", fake_run)
    monkeypatch.setattr(cli_module, "setup_logging", lambda *args: None)
    return seen


def run(tmp_path: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["run", "--data-dir", str(tmp_path), "--no-shell", *args])


def test_listening_everywhere_advertises_the_default_route_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: list[NodeConfig]
) -> None:
    monkeypatch.setattr(launch, "default_route_address", lambda ipv6=False: "192.0.2.44")
    result = run(tmp_path, "--host", "0.0.0.0")
    assert result.exit_code == 0, result.output
    assert (started[0].host, started[0].advertise_host) == ("0.0.0.0", "192.0.2.44")
    result = run(tmp_path, "--host", "0.0.0.0", "--advertise-host", "node.example")
    assert result.exit_code == 0, result.output
    assert started[1].advertise_host == "node.example"
    assert run(tmp_path, "--host", "127.0.0.1").exit_code == 0
    assert started[2].advertise_host is None  # the listen address itself


def test_listening_everywhere_without_a_route_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: list[NodeConfig]
) -> None:
    monkeypatch.setattr(launch, "default_route_address", lambda ipv6=False: None)
    result = run(tmp_path, "--host", "0.0.0.0")
    assert result.exit_code == 2, result.output
    assert "--host 0.0.0.0 listens on every interface" in result.output
    assert "--advertise-host HOST" in result.output
    assert not started


@pytest.mark.parametrize("bad", ["0.0.0.0", "::", "a host", "x" * 300])
def test_an_advertise_host_peers_cannot_dial_is_refused(
    tmp_path: Path, started: list[NodeConfig], bad: str
) -> None:
    result = run(tmp_path, "--advertise-host", bad)
    assert result.exit_code == 2, result.output
    assert "Invalid value for --advertise-host" in result.output
    assert "not an address peers can dial" in result.output
    assert not started
