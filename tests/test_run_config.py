"""A real ``treedrive run`` process started with only ``--config FILE``: its ports, bootstrap
host, limits and log file come from the file; limits changed through the API survive a restart;
the dashboard's token stays off a terminal that is not one."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.conftest import FAST, NODE_PROCESS_WARNINGS, NodeProcess, free_port, marked
from treedrive.cli import cli

Factory = Callable[..., NodeProcess]
e2e = marked([pytest.mark.e2e, pytest.mark.timeout(90), *NODE_PROCESS_WARNINGS])


def http(node: NodeProcess, method: str, path: str, body: Any = None) -> Any:
    url = node.info()["http"].rstrip("/") + path
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (loopback)
    if method != "GET":
        token = (node.data_dir / "api-token").read_text().strip()
        request.add_header("Authorization", f"Bearer {token}")
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 (loopback)
        return json.loads(resp.read())


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.1)
    return value


@pytest.fixture
def bob(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    """Nodes this test starts itself (ended by their PIDs at the end)."""
    nodes: list[NodeProcess] = []
    yield nodes
    for node in nodes:
        node.kill()


@e2e
def test_a_node_started_with_only_a_config_file(
    tmp_path: Path, node_process: Factory, bob: list[NodeProcess]
) -> None:
    alice = node_process("alice").start()
    port, data = free_port(), tmp_path / "bob-data"
    config = tmp_path / "etc" / "bob.toml"
    config.parent.mkdir()
    config.write_text(
        f"""
peer-id = "bob"
port = {port}
http-port = 0
data-dir = "../bob-data"
bootstrap = ["{alice.address}"]
gossip-interval = {FAST["gossip_interval"]}
peer-timeout = {FAST["peer_timeout"]}
cleanup-interval = {FAST["cleanup_interval"]}
join-delay = {FAST["join_delay"]}
max-download-rate = 100
log-file = "../logs/bob.log"
log-level = "info"

[plugins.web]
http_head_timeout = 20

[plugins.nosuch]
x = 1
"""
    )
    node = NodeProcess("bob", data, port, ["--config", str(config)])
    bob.append(node)
    node.start()
    assert (node.info()["peer_id"], node.info()["port"]) == ("bob", port)
    # joined through the file's bootstrap host
    wait_for(
        lambda: [p for p in http(node, "GET", "/api/peers")["peers"] if p["peer_id"] == "alice"]
    )
    assert http(node, "GET", "/api/limits") == {"download": 100 * 1024, "upload": None}
    # the log file of the file, not node.log; the token never on a terminal that is not one
    wait_for(lambda: "listening on" in (tmp_path / "logs" / "bob.log").read_text())
    assert not (data / "node.log").exists()
    log_file = tmp_path / "logs" / "bob.log"
    wait_for(lambda: "[plugins.nosuch]" in log_file.read_text())
    logged = log_file.read_text()
    assert "[plugins.nosuch] is not a loaded plugin's" in logged  # a misspelt name is said
    assert "[plugins.web]" not in logged
    token = (data / "api-token").read_text().strip()
    terminal = node.log.read_text()
    assert token not in terminal
    assert str(data / "api-token") in terminal

    # the control commands find the node that the config file describes
    status = CliRunner().invoke(cli, ["status", "--json"], env={"TREEDRIVE_CONFIG": str(config)})
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["peer_id"] == "bob"

    # limits changed through the API are kept for the next start, and beat the file
    changed = http(node, "PUT", "/api/limits", {"download": 5000, "upload": 7000})
    assert changed == {"download": 5000, "upload": 7000}
    assert (data / "limits.json").stat().st_mode & 0o777 == 0o600
    assert node.stop() == 0
    node.start()
    assert http(node, "GET", "/api/limits") == {"download": 5000, "upload": 7000}
    http(node, "PUT", "/api/limits", {"upload": None})
    assert node.stop() == 0
    node.start()
    assert http(node, "GET", "/api/limits") == {"download": 5000, "upload": None}
    assert node.stop() == 0
