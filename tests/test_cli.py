"""The ``treedrive`` command through click's CliRunner: help, argument validation, environment
variables, and the ``db`` commands on a real SQLite file."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from alembic.script import ScriptDirectory
from click.testing import CliRunner, Result

from tests.isolation import no_settings
from treedrive.cli import cli
from treedrive.store import Store
from treedrive.store.db import alembic_config

RUN = cli.commands["run"]
RUN_OPTIONS = [p for p in RUN.params if isinstance(p, click.Option)]

# A valid, non-default value for every `run` option, as an environment variable would carry it,
# and the value the command then receives. A new option must be added here (and so be tested).
ENV_SAMPLES: dict[str, tuple[str, Any]] = {
    "peer_id": ("zed", "zed"),
    "host": ("127.0.0.2", "127.0.0.2"),
    "port": ("9123", 9123),
    "http_port": ("9124", 9124),
    "http_host": ("127.0.0.3", "127.0.0.3"),
    "max_upload": ("12", 12),
    "bootstrap": ("127.0.0.1:9001 127.0.0.1:9002", ("127.0.0.1:9001", "127.0.0.1:9002")),
    "data_dir": ("/tmp/treedrive-env-test", Path("/tmp/treedrive-env-test")),
    "gossip_interval": ("1.5", 1.5),
    "peer_timeout": ("7.5", 7.5),
    "cleanup_interval": ("0.5", 0.5),
    "join_delay": ("0.25", 0.25),
    "download_limit": ("5", 5),
    "max_download_rate": ("512", 512.0),
    "max_upload_rate": ("256.5", 256.5),
    "chunk_size": ("64", 64),
    "max_inflight": ("2", 2),
    "max_peers": ("50", 50),
    "extension": ("false", False),
    "encryption": ("false", False),
    "swim": ("false", False),
    "shell": ("false", False),
    "log_level": ("DEBUG", "DEBUG"),
    "config": ("/dev/null", Path("/dev/null")),  # an empty TOML file
    "advertise_host": ("192.0.2.7", "192.0.2.7"),
    "verbose": ("2", 2),
    "quiet": ("1", 1),
    "log_file": ("-", "-"),
    "log_max_size": ("20", 20),
    "log_backups": ("3", 3),
}

# A value each validated option must refuse, with a word the error shows.
ENV_INVALID: dict[str, str] = {
    "port": "notaport",
    "http_port": "70000",
    "max_upload": "0",
    "max_download_rate": "-1",
    "chunk_size": "1",
    "max_inflight": "100",
    "max_peers": "0",
    "gossip_interval": "soon",
    "peer_timeout": "-1",
    "cleanup_interval": "0",
    "join_delay": "-0.5",
    "download_limit": "-1",
    "shell": "perhaps",
    "log_level": "LOUD",
    "log_max_size": "-1",
    "log_backups": "0",
    "verbose": "many",
}


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


@pytest.fixture
def locked_dir(tmp_path: Path) -> Iterator[Path]:
    """A data dir whose lock we hold: if validation ever let `run` through, it would fail at
    once with "another node is running" (exit 1) instead of starting a node."""
    data = tmp_path / "locked"
    data.mkdir()
    fd = os.open(data / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        yield data
    finally:
        os.close(fd)


@pytest.fixture(autouse=True)
def _no_treedrive_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Start every test from a clean environment: no TREEDRIVE_* settings leak in, nor the
    user's config file."""
    no_settings(monkeypatch, tmp_path)


# -- help -----------------------------------------------------------------------------------------
def test_help_lists_the_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    assert "peer-to-peer" in result.output
    for command in ("run", "db", "plugins"):
        assert f"  {command} " in result.output
    assert invoke("-h").output == result.output


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0, result.output
    assert "0.1.0" in result.output


def test_run_help_shows_options_and_environment_variables() -> None:
    result = invoke("run", "--help")
    assert result.exit_code == 0, result.output
    assert "PEER_ID [HOST [P2P_PORT [HTTP_PORT]]]" in result.output
    text = " ".join(result.output.split())  # help wraps lines
    for option in RUN_OPTIONS:
        assert option.opts[0] in text
        assert isinstance(option.envvar, str)
        assert option.envvar in text, option.name
    assert "TREEDRIVE_PEER_ID" in text
    assert "127.0.0.1" in text  # the default host


# -- validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["nohost", "127.0.0.1:", ":8270", "host:port", "host:70000"])
def test_bad_bootstrap_is_a_usage_error(locked_dir: Path, bad: str) -> None:
    result = invoke("run", "--bootstrap", bad, "--data-dir", str(locked_dir), "--no-shell")
    assert result.exit_code == 2, result.output
    assert "--bootstrap" in result.output
    assert "HOST:PORT" in result.output
    assert repr(bad) in result.output


def test_bad_bootstrap_from_the_environment(locked_dir: Path) -> None:
    env = {"TREEDRIVE_BOOTSTRAP": "nohost", "TREEDRIVE_DATA_DIR": str(locked_dir)}
    result = invoke("run", "--no-shell", env=env)
    assert result.exit_code == 2, result.output
    assert "--bootstrap" in result.output
    assert "'nohost'" in result.output


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["alice", "127.0.0.1", "notaport"], "P2P port"),
        (["alice", "127.0.0.1", "99999"], "P2P port"),
        (["alice", "127.0.0.1", "8270", "http"], "HTTP port"),
        (["alice", "127.0.0.1", "8270", "70000"], "HTTP port"),
    ],
)
def test_bad_positional_port_is_a_usage_error(locked_dir: Path, args: list[str], hint: str) -> None:
    result = invoke("run", *args, "--data-dir", str(locked_dir), "--no-shell")
    assert result.exit_code == 2, result.output
    assert f"Invalid value for {hint}" in result.output
    assert args[-1] in result.output


def test_too_many_positional_arguments(locked_dir: Path) -> None:
    result = invoke("run", "a", "127.0.0.1", "1", "2", "3", "--data-dir", str(locked_dir))
    assert result.exit_code == 2, result.output
    assert "at most PEER_ID HOST P2P_PORT HTTP_PORT" in result.output


def test_bad_port_option_is_a_usage_error(locked_dir: Path) -> None:
    result = invoke("run", "--port", "65536", "--data-dir", str(locked_dir), "--no-shell")
    assert result.exit_code == 2, result.output
    assert "'--port'" in result.output


def test_a_running_node_on_the_data_dir_is_reported(locked_dir: Path) -> None:
    """The guard the tests above rely on: a locked data dir stops `run` with a clear error."""
    result = invoke("run", "--data-dir", str(locked_dir), "--no-shell", "--port", "0")
    assert result.exit_code == 1, result.output
    assert "another node is running" in result.output


# -- environment variables ------------------------------------------------------------------------
def test_every_run_option_has_its_environment_variable() -> None:
    names = {o.name for o in RUN_OPTIONS if o.name != "help"}
    assert names == set(ENV_SAMPLES), "give each new option a sample value in ENV_SAMPLES"
    for option in RUN_OPTIONS:
        if option.name == "help":
            continue
        assert option.name is not None
        assert option.envvar == f"TREEDRIVE_{option.name.upper()}"
        assert option.show_envvar


def test_every_run_option_is_settable_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = RUN.make_context("run", []).params
    for name, (raw, _) in ENV_SAMPLES.items():
        monkeypatch.setenv(f"TREEDRIVE_{name.upper()}", raw)
    params = RUN.make_context("run", []).params
    for name, (_, expected) in ENV_SAMPLES.items():
        got = params[name]
        if isinstance(got, tuple | list):
            got = tuple(got)
        assert got == expected, name
        assert got != defaults[name], f"{name}: the sample must differ from the default"


def test_command_line_beats_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TREEDRIVE_PORT", "9123")
    monkeypatch.setenv("TREEDRIVE_PEER_ID", "from-env")
    params = RUN.make_context("run", ["--port", "9200"]).params
    assert params["port"] == 9200
    assert params["peer_id"] == "from-env"


@pytest.mark.parametrize("name", sorted(ENV_INVALID))
def test_invalid_environment_value_names_the_variable(locked_dir: Path, name: str) -> None:
    var = f"TREEDRIVE_{name.upper()}"
    env = {var: ENV_INVALID[name], "TREEDRIVE_DATA_DIR": str(locked_dir)}
    if name != "shell":
        env["TREEDRIVE_SHELL"] = "false"
    result = invoke("run", env=env)
    assert result.exit_code == 2, result.output
    assert "Invalid value for" in result.output
    assert var in result.output
    assert "--" + name.replace("_", "-") in result.output


def test_treedrive_port_notaport(locked_dir: Path) -> None:
    env = {"TREEDRIVE_PORT": "notaport", "TREEDRIVE_DATA_DIR": str(locked_dir)}
    result = invoke("run", "--no-shell", env=env)
    assert result.exit_code == 2, result.output
    assert "TREEDRIVE_PORT" in result.output
    assert "'notaport'" in result.output


# -- db -------------------------------------------------------------------------------------------
def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


def test_db_upgrade_current_on_a_fresh_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "node"
    result = invoke("db", "current", "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    assert "(empty)" in result.output
    assert f"behind (head is {head()})" in result.output

    result = invoke("db", "upgrade", "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    assert f"(empty) -> {head()}" in result.output
    assert (data / "treedrive.db").is_file()

    result = invoke("db", "current", "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    assert f"{head()} — up to date" in result.output

    result = invoke("db", "upgrade", "--data-dir", str(data))  # again: nothing to do
    assert result.exit_code == 0, result.output
    assert f"{head()} -> {head()}" in result.output
    assert not list(data.glob("treedrive.db.*.bak"))


def test_db_commands_read_the_data_dir_from_the_environment(tmp_path: Path) -> None:
    data = tmp_path / "from-env"
    result = invoke("db", "upgrade", env={"TREEDRIVE_DATA_DIR": str(data)})
    assert result.exit_code == 0, result.output
    assert (data / "treedrive.db").is_file()
    store = Store(data)
    try:
        assert store.current_revision() == store.head_revision()
    finally:
        store.close()


def test_db_history_lists_the_migrations() -> None:
    result = invoke("db", "history")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines
    assert lines[0].startswith(f"{head()}  ")
    assert any(line.startswith("0001  initial schema") for line in lines)


def test_db_help() -> None:
    result = invoke("db", "--help")
    assert result.exit_code == 0, result.output
    for command in ("upgrade", "current", "history"):
        assert command in result.output


def test_run_passes_its_settings_to_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import treedrive.cli as cli_module
    from treedrive.core.config import NodeConfig

    seen: list[NodeConfig] = []

    async def fake_run(config: NodeConfig, with_shell: bool, *_: Any) -> None:
        seen.append(config)

    monkeypatch.setattr(cli_module, "_run", fake_run)
    monkeypatch.setattr(cli_module, "setup_logging", lambda *args: None)
    data = tmp_path / "node"
    result = invoke("run", "--data-dir", str(data), "--no-shell", "--max-peers", "7")
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert config.max_peers == 7
    assert config.data_dir == data
    result = invoke("run", "--data-dir", str(data), "--no-shell")
    assert result.exit_code == 0, result.output
    assert seen[1].max_peers == 1000


@pytest.mark.parametrize(
    ("args", "env", "fallback"),
    [
        ([], {}, True),  # the default port: another may be taken instead
        (["--http-port", "8280"], {}, False),  # chosen, even if it is the default's number
        ([], {"TREEDRIVE_HTTP_PORT": "9000"}, False),
        (["zed", "127.0.0.1", "8270"], {}, True),  # the seed's form without an HTTP port
        (["zed", "127.0.0.1", "8270", "9000"], {}, False),
    ],
)
def test_only_a_default_http_port_may_fall_back(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    fallback: bool,
) -> None:
    import treedrive.cli as cli_module
    from treedrive.core.config import NodeConfig

    seen: list[NodeConfig] = []

    async def fake_run(config: NodeConfig, with_shell: bool, *_: Any) -> None:
        seen.append(config)

    monkeypatch.setattr(cli_module, "_run", fake_run)
    monkeypatch.setattr(cli_module, "setup_logging", lambda *args: None)
    result = invoke("run", *args, "--data-dir", str(tmp_path), "--no-shell", env=env)
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert config.http_port_fallback is fallback
