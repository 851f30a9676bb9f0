"""``treedrive run`` as a user meets it: a taken HTTP port (a default one falls back and says
which; a chosen one is a one-line error), a taken P2P port, how much a start logs, a second node
refused on a data dir, and the stop. Real sockets, real SQLite files, real node processes where
the terminal's output is the point."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from tests.conftest import NODE_PROCESS_WARNINGS, NodeProcess, fast_config, marked
from tests.isolation import no_settings, root_logging_restored
from treedrive.app import StartFailed, running_node
from treedrive.cli import cli

Factory = Callable[..., NodeProcess]
e2e = marked([pytest.mark.e2e, pytest.mark.timeout(90), *NODE_PROCESS_WARNINGS])


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _clean_logging(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No TREEDRIVE_* settings nor the user's config file leak in; the log handlers that `run`
    adds are removed after each test."""
    no_settings(monkeypatch, tmp_path)
    with root_logging_restored():
        yield


def treedrive_run(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "treedrive", "run", "--no-shell", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


# -- the HTTP port --------------------------------------------------------------------------------
async def test_a_taken_default_http_port_falls_back_to_a_free_one(
    tmp_path: Path, held_port: int
) -> None:
    """bob's default port is taken (alice's dashboard, here a socket): he takes another, and
    node.json says which. The same port chosen by the user fails the start instead."""
    config = fast_config(tmp_path / "bob", "bob", http_port=held_port, http_port_fallback=True)
    async with running_node(config) as bob:
        assert bob.http_url is not None
        port = int(bob.http_url.rsplit(":", 1)[1].rstrip("/"))
        assert port != held_port
        assert json.loads((config.data_dir / "node.json").read_text())["http"] == bob.http_url
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # it listens there
    chosen = fast_config(tmp_path / "carol", "carol", http_port=held_port)
    with pytest.raises(StartFailed) as failed:
        async with running_node(chosen):
            raise AssertionError("started on a taken port")
    assert failed.value.in_use
    assert str(failed.value) == f"the dashboard port 127.0.0.1:{held_port} is in use"
    assert not (chosen.data_dir / "node.json").exists()


def test_the_terminal_says_which_port_the_dashboard_took(
    tmp_path: Path, held_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default HTTP port (made ``held_port`` here, as 8280 is when alice runs) is taken:
    the dashboard line shows the port really used and says why."""
    (option,) = [p for p in cli.commands["run"].params if p.name == "http_port"]
    assert isinstance(option, click.Option)
    monkeypatch.setattr(option, "default", held_port)

    async def started(node: Any, stop: Any) -> None:
        return None  # stop as soon as the node is up

    monkeypatch.setattr("treedrive.app.serve_until_stopped", started)
    data = tmp_path / "bob"
    args = ["run", "bob", "127.0.0.1", "0", "--data-dir", str(data), "--no-shell"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("dashboard: ")]
    assert f":{held_port}/" not in line
    assert line.startswith("dashboard: http://127.0.0.1:")
    assert f"(port {held_port} is taken; data: {data})" in line


@e2e
def test_a_chosen_http_port_that_is_taken_is_one_line(tmp_path: Path, held_port: int) -> None:
    data = tmp_path / "node"
    done = treedrive_run("--port", "0", "--http-port", str(held_port), "--data-dir", str(data))
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.splitlines() == [
        f"Error: the dashboard port 127.0.0.1:{held_port} is in use: choose another with "
        "--http-port PORT, or --http-port 0 for any free one"
    ]
    # the failed start is in the node's log once, with the reason
    logged = (data / "node.log").read_text().splitlines()
    assert len(logged) == 1, logged
    assert "the node did not start: the dashboard port" in logged[0]


@pytest.mark.parametrize("how", ["env", "positional"])
def test_a_chosen_http_port_from_the_environment_or_position_does_not_fall_back(
    tmp_path: Path, held_port: int, how: str
) -> None:
    data = ["--data-dir", str(tmp_path / "node"), "--no-shell"]
    if how == "env":
        args, env = ["run", "--port", "0", *data], {"TREEDRIVE_HTTP_PORT": str(held_port)}
    else:
        args, env = ["run", "zed", "127.0.0.1", "0", str(held_port), *data], {}
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 1, result.output
    assert f"the dashboard port 127.0.0.1:{held_port} is in use" in result.output
    assert "--http-port 0" in result.output


@e2e
def test_a_taken_p2p_port_is_one_line(tmp_path: Path, held_port: int) -> None:
    done = treedrive_run("--port", str(held_port), "--http-port", "0", "--data-dir", str(tmp_path))
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.splitlines() == [
        f"Error: the P2P port 127.0.0.1:{held_port} is in use: choose another with --port PORT, "
        "or --port 0 for any free one"
    ]


# -- what a start, a refused start and a stop log -------------------------------------------------
def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@e2e
def test_a_start_logs_at_most_three_lines(node_process: Factory) -> None:
    node = node_process("alice").start()
    terminal, logged = lines(node.log), lines(node.data_dir / "node.log")
    assert len(terminal) <= 3, terminal
    assert len(logged) <= 3, logged
    assert not [x for x in terminal + logged if "alembic" in x]
    assert [x for x in logged if "database created at" in x]  # a fresh node: one line for it
    assert [x for x in terminal if x.startswith("dashboard: http://127.0.0.1:")]

    # a second node on the same data dir is refused on the terminal, and writes nothing into
    # the running node's log
    second = treedrive_run(*node.args)
    assert second.returncode == 1, second
    assert second.stderr.splitlines() == [
        f"Error: another node is running on {node.data_dir}: stop it first, or give this node "
        "another --data-dir or --peer-id"
    ]
    assert lines(node.data_dir / "node.log") == logged

    assert node.stop() == 0
    stopped = lines(node.data_dir / "node.log")[len(logged) :]
    assert [x.split(": ", 1)[1] for x in stopped] == ["node alice stopping", "node alice stopped"]

    # an existing node: no database line at all
    node.log.unlink()
    node.start()
    terminal, logged_again = lines(node.log), lines(node.data_dir / "node.log")
    new = logged_again[len(logged) + len(stopped) :]
    assert len(terminal) <= 3, terminal
    assert len(new) <= 3, new
    assert not [x for x in terminal + new if "database" in x or "alembic" in x]
    assert node.stop() == 0


# -- the schema at start --------------------------------------------------------------------------
def test_a_schema_upgrade_is_one_line_and_a_current_schema_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from alembic import command
    from alembic.script import ScriptDirectory

    from treedrive.store import Store
    from treedrive.store.db import alembic_config

    caplog.set_level(logging.DEBUG)
    store = Store(tmp_path / "node")
    try:
        revisions = [
            r.revision for r in ScriptDirectory.from_config(alembic_config()).walk_revisions()
        ]
        head, older = revisions[0], revisions[1]
        command.upgrade(alembic_config(store.engine), older)  # a database of an older version
        caplog.clear()
        said = store.upgrade()
        assert [r.getMessage() for r in caplog.records] == [said]
        assert said == (
            f"database upgraded from {older} to {head} "
            f"(backup at {store.db_path.with_name(f'treedrive.db.{older}.bak')})"
        )
        caplog.clear()
        assert store.upgrade() is None
        assert caplog.records == []
    finally:
        store.close()
