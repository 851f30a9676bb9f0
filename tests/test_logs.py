"""Logging of ``treedrive run``: the level (any case, ``-v``/``-q``), the log file (``--log-file
PATH|-``), its rotation and privacy, and the dashboard's token only on a terminal."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

import treedrive.cli as cli_module
from tests.isolation import no_settings, root_logging_restored
from treedrive.cli import cli
from treedrive.launch import _banner
from treedrive.logs import LogFile, effective_level, log_to_file


@pytest.fixture(autouse=True)
def _clean_logging(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    no_settings(monkeypatch, tmp_path)
    with root_logging_restored():
        yield


# -- the level ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("level", "verbose", "quiet", "expected"),
    [
        ("INFO", 0, 0, "INFO"),
        ("info", 1, 0, "DEBUG"),
        ("Warning", 0, 0, "WARNING"),
        ("INFO", 0, 1, "WARNING"),
        ("INFO", 0, 2, "ERROR"),
        ("INFO", 0, 9, "ERROR"),  # never quieter than errors
        ("ERROR", 5, 0, "DEBUG"),  # never more verbose than debug
        ("WARNING", 1, 1, "WARNING"),
    ],
)
def test_the_level_with_v_and_q(level: str, verbose: int, quiet: int, expected: str) -> None:
    assert effective_level(level, verbose, quiet) == expected


@pytest.mark.parametrize(
    ("args", "env", "level"),
    [
        ([], {}, "INFO"),
        (["--log-level", "debug"], {}, "DEBUG"),
        (["--log-level", "Warning"], {}, "WARNING"),
        ([], {"TREEDRIVE_LOG_LEVEL": "error"}, "ERROR"),
        (["-v"], {}, "DEBUG"),
        (["-q"], {}, "WARNING"),
        (["-qq"], {}, "ERROR"),
        (["-q", "-q", "--log-level", "debug"], {}, "WARNING"),
        (["-v", "--log-level", "error"], {}, "WARNING"),
        ([], {"TREEDRIVE_QUIET": "1"}, "WARNING"),
    ],
)
def test_run_sets_the_level(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    level: str,
) -> None:
    levels: list[str] = []
    plans: list[LogFile] = []

    async def fake_run(config: Any, with_shell: bool, log_file: LogFile) -> None:
        plans.append(log_file)

    monkeypatch.setattr(cli_module, "_run", fake_run)
    monkeypatch.setattr(cli_module, "setup_logging", lambda lvl, *rest: levels.append(lvl))
    data = ["--data-dir", str(tmp_path), "--no-shell"]
    result = CliRunner().invoke(cli, ["run", *data, *args], env=env)
    assert result.exit_code == 0, result.output
    assert levels == [level]
    assert plans == [LogFile(None, 10 * 1024 * 1024, 5)]  # node.log in the data dir, rotated


# -- the file -------------------------------------------------------------------------------------
def test_the_default_log_file_is_node_log_in_the_data_dir(tmp_path: Path) -> None:
    handler = log_to_file(tmp_path / "data")
    assert handler is not None
    logging.getLogger("treedrive.test").warning("hello")
    handler.flush()
    log = tmp_path / "data" / "node.log"
    assert "hello" in log.read_text()
    assert log.stat().st_mode & 0o777 == 0o600


def test_a_dash_writes_no_file(tmp_path: Path) -> None:
    assert log_to_file(tmp_path / "data", LogFile("-")) is None
    logging.getLogger("treedrive.test").warning("hello")
    assert not (tmp_path / "data" / "node.log").exists()
    assert (tmp_path / "data").is_dir()  # the data dir is still made


def test_a_chosen_log_file_and_its_folder(tmp_path: Path) -> None:
    target = tmp_path / "logs" / "td.log"
    handler = log_to_file(tmp_path / "data", LogFile(str(target)))
    assert handler is not None
    logging.getLogger("treedrive.test").warning("hello")
    handler.flush()
    assert "hello" in target.read_text()
    assert not (tmp_path / "data" / "node.log").exists()


def test_the_log_file_rotates_and_stays_private(tmp_path: Path) -> None:
    handler = log_to_file(tmp_path, LogFile(None, max_bytes=2000, backups=2))
    assert handler is not None
    logger = logging.getLogger("treedrive.test")
    for i in range(200):
        logger.warning("line %03d %s", i, "x" * 40)
    handler.flush()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["node.log", "node.log.1", "node.log.2"]  # at most 2 old files kept
    for name in names:
        path = tmp_path / name
        assert path.stat().st_size <= 2000
        assert path.stat().st_mode & 0o777 == 0o600, name
    assert "line 199" in (tmp_path / "node.log").read_text()
    assert "line 000" not in "".join(p.read_text() for p in tmp_path.iterdir())


def test_a_log_max_size_of_0_never_rotates(tmp_path: Path) -> None:
    handler = log_to_file(tmp_path, LogFile(None, max_bytes=0))
    assert handler is not None
    for i in range(100):
        logging.getLogger("treedrive.test").warning("line %d %s", i, "x" * 40)
    handler.flush()
    assert [p.name for p in tmp_path.iterdir()] == ["node.log"]


# -- the dashboard's token ------------------------------------------------------------------------
def fake_node(data: Path, http_port: int = 8280) -> Any:
    (data / "api-token").write_text("s3cret-token\n")
    config = SimpleNamespace(data_dir=data, http_port=http_port)
    return SimpleNamespace(config=config, http_url=f"http://127.0.0.1:{http_port}/")


@pytest.mark.parametrize("terminal", [True, False])
def test_the_token_is_printed_only_on_a_terminal(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    terminal: bool,
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    _banner(fake_node(tmp_path))
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith("dashboard: http://127.0.0.1:8280/")
    if terminal:
        assert line == f"dashboard: http://127.0.0.1:8280/?token=s3cret-token (data: {tmp_path})"
    else:
        assert "s3cret-token" not in err
        assert str(tmp_path / "api-token") in line  # where to find it
