"""The config file of ``treedrive run``: where it is found, that every option can be set there,
the precedence (option > environment > file > default), plugins' tables, the limits kept from
the API, and one clear line for a file that cannot be used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

import treedrive.cli as cli_module
from tests.isolation import no_settings
from treedrive.cli import cli
from treedrive.configfile import NOT_IN_FILE, file_key
from treedrive.core.config import Address, NodeConfig
from treedrive.persisted import RateLimits, load_limits, save_limits

RUN = cli.commands["run"]
FILE_OPTIONS = [p for p in RUN.params if isinstance(p, click.Option) and p.name not in NOT_IN_FILE]

# A valid, non-default value for every option the file can set, as TOML, and the value the
# command then receives. A new option must be added here (and so be tested).
FILE_SAMPLES: dict[str, tuple[str, Any]] = {
    "peer-id": ('"zed"', "zed"),
    "host": ('"127.0.0.2"', "127.0.0.2"),
    "advertise-host": ('"node.example"', "node.example"),
    "port": ("9123", 9123),
    "http-port": ("9124", 9124),
    "http-host": ('"127.0.0.3"', "127.0.0.3"),
    "max-upload": ("12", 12),
    "bootstrap": ('["127.0.0.1:9001", "127.0.0.1:9002"]', ("127.0.0.1:9001", "127.0.0.1:9002")),
    "data-dir": ('"/srv/treedrive"', Path("/srv/treedrive")),
    "gossip-interval": ("1.5", 1.5),
    "peer-timeout": ("7", 7.0),
    "cleanup-interval": ("0.5", 0.5),
    "join-delay": ("0.25", 0.25),
    "download-limit": ("5", 5),
    "max-download-rate": ("512", 512.0),
    "max-upload-rate": ("256.5", 256.5),
    "chunk-size": ("64", 64),
    "max-inflight": ("2", 2),
    "max-peers": ("50", 50),
    "extension": ("false", False),
    "encryption": ("false", False),
    "swim": ("false", False),
    "shell": ("false", False),
    "log-level": ('"debug"', "DEBUG"),
    "log-file": ('"/var/log/treedrive.log"', "/var/log/treedrive.log"),
    "log-max-size": ("20", 20),
    "log-backups": ("3", 3),
}


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def config_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A clean environment: no TREEDRIVE_* settings, and a config home of this test's own."""
    return no_settings(monkeypatch, tmp_path)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[tuple[NodeConfig, Any]]:
    """What ``treedrive run`` would start (the config, the log file), without starting it."""
    seen: list[tuple[NodeConfig, Any]] = []

    async def fake_run(config: NodeConfig, with_shell: bool, log_file: Any = None) -> None:
        seen.append((config, log_file))

    monkeypatch.setattr(cli_module, "_run", fake_run)
    monkeypatch.setattr(cli_module, "setup_logging", lambda *args: None)
    return seen


def params(*args: str) -> dict[str, Any]:
    return dict(RUN.make_context("run", list(args)).params)


# -- every option, and the precedence -------------------------------------------------------------
def test_every_run_option_can_be_set_in_the_file(tmp_path: Path) -> None:
    keys = {file_key(o) for o in FILE_OPTIONS}
    assert keys == set(FILE_SAMPLES), "give each new option a sample value in FILE_SAMPLES"
    defaults = params()
    config = write(
        tmp_path / "all.toml", "".join(f"{k} = {v}\n" for k, (v, _) in FILE_SAMPLES.items())
    )
    got = params("--config", str(config))
    for option in FILE_OPTIONS:
        assert option.name is not None
        value, (_, expected) = got[option.name], FILE_SAMPLES[file_key(option)]
        value = tuple(value) if isinstance(value, list | tuple) else value
        assert value == expected, option.name
        assert value != defaults[option.name], f"{option.name}: the sample must not be the default"


def test_an_option_beats_the_environment_which_beats_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(
        tmp_path / "c.toml",
        'port = 9001\nhttp-port = 9002\nbootstrap = ["10.0.0.1:8270"]\nextension = false\n',
    )
    monkeypatch.setenv("TREEDRIVE_CONFIG", str(config))
    assert params()["port"] == 9001  # the file beats the default
    assert params()["gossip_interval"] == 30.0  # the default where the file says nothing
    monkeypatch.setenv("TREEDRIVE_PORT", "9101")
    monkeypatch.setenv("TREEDRIVE_BOOTSTRAP", "10.0.0.2:8270")
    got = params("--http-port", "9202", "--extension")
    assert got["port"] == 9101  # the environment beats the file
    assert tuple(got["bootstrap"]) == ("10.0.0.2:8270",)
    assert got["http_port"] == 9202  # an option beats the file
    assert got["extension"] is True
    assert params("--port", "9301")["port"] == 9301  # an option beats the environment


def test_where_the_file_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config_home: Path
) -> None:
    assert params()["port"] == 8270  # no default file: no file
    write(config_home / "treedrive" / "config.toml", "port = 9001\n")
    assert params()["port"] == 9001  # $XDG_CONFIG_HOME/treedrive/config.toml
    env_file = write(tmp_path / "env.toml", "port = 9002\n")
    monkeypatch.setenv("TREEDRIVE_CONFIG", str(env_file))
    assert params()["port"] == 9002  # TREEDRIVE_CONFIG instead of the default
    flag_file = write(tmp_path / "flag.toml", "port = 9003\n")
    assert params("--config", str(flag_file))["port"] == 9003  # --config beats both
    assert params(f"--config={flag_file}")["port"] == 9003
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.delenv("TREEDRIVE_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write(tmp_path / "home" / ".config" / "treedrive" / "config.toml", "port = 9004\n")
    assert params()["port"] == 9004  # ~/.config without XDG_CONFIG_HOME


def test_paths_in_the_file_are_relative_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = write(tmp_path / "etc" / "c.toml", 'data-dir = "data"\nlog-file = "~/td.log"\n')
    got = params("--config", str(config))
    assert got["data_dir"] == tmp_path / "etc" / "data"
    assert got["log_file"] == str(tmp_path / "home" / "td.log")
    assert (
        params("--config", str(write(tmp_path / "d.toml", 'log-file = "-"\n')))["log_file"] == "-"
    )


def test_help_shows_the_files_values_as_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "c.toml", 'http-port = 9124\ndata-dir = "/srv/td"\n')
    config = "c.toml"
    result = invoke("run", "--config", config, "--help")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "default: 9124" in text
    assert "default: /srv/td" in text
    assert f"default: {config}" in text  # which file it is
    plain = " ".join(invoke("run", "--help").output.split())
    assert "default: 8280" in plain
    assert "TREEDRIVE_CONFIG" in plain


# -- what reaches the node ------------------------------------------------------------------------
def test_a_node_gets_its_settings_and_plugin_tables_from_the_file(
    tmp_path: Path, started: list[tuple[NodeConfig, Any]]
) -> None:
    config = write(
        tmp_path / "c.toml",
        f"""
peer-id = "zed"
port = 9301
http-port = 9302
data-dir = "{tmp_path / "data"}"
bootstrap = ["10.0.0.1:8270", "node.example:8271"]
max-download-rate = 100
log-file = "-"
log-max-size = 1
log-backups = 2
shell = false

[plugins.rarest]
window = 5
names = ["a", "b"]

[plugins.web]
http_head_timeout = 20
""",
    )
    result = invoke("run", "--config", str(config))
    assert result.exit_code == 0, result.output
    ((node, log_file),) = started
    assert (node.peer_id, node.port, node.http_port) == ("zed", 9301, 9302)
    assert node.http_port_fallback is False  # a port the user chose, in the file
    assert node.data_dir == tmp_path / "data"
    assert node.bootstrap == (Address("10.0.0.1", 8270), Address("node.example", 8271))
    assert node.max_download_rate == 100 * 1024
    assert node.max_upload_rate is None
    assert node.plugin_settings("rarest") == {"window": 5, "names": ["a", "b"]}
    assert node.plugin_settings("web") == {"http_head_timeout": 20}
    assert node.plugin_settings("absent") == {}
    assert (log_file.path, log_file.max_bytes, log_file.backups) == ("-", 1024 * 1024, 2)


def test_limits_kept_from_the_api_beat_the_file_but_not_an_option(
    tmp_path: Path, started: list[tuple[NodeConfig, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    config = write(
        tmp_path / "c.toml",
        f'data-dir = "{data}"\nmax-download-rate = 100\nmax-upload-rate = 50\nshell = false\n',
    )
    save_limits(data, RateLimits(download=2048.0, upload=None))
    assert load_limits(data) == RateLimits(2048.0, None)
    assert (data / "limits.json").stat().st_mode & 0o777 == 0o600
    with caplog.at_level("INFO"):
        assert invoke("run", "--config", str(config)).exit_code == 0
    node = started[-1][0]
    assert (node.max_download_rate, node.max_upload_rate) == (2048.0, None)
    said = [r.getMessage() for r in caplog.records if "kept from the API" in r.getMessage()]
    assert len(said) == 2, said  # both differ from the file's: each said once
    result = invoke("run", "--config", str(config), "--max-download-rate", "10")
    assert result.exit_code == 0, result.output
    assert started[-1][0].max_download_rate == 10 * 1024  # the option of this start wins
    env = {"TREEDRIVE_MAX_UPLOAD_RATE": "7"}
    assert invoke("run", "--config", str(config), env=env).exit_code == 0
    assert started[-1][0].max_upload_rate == 7 * 1024
    assert started[-1][0].max_download_rate == 2048.0


@pytest.mark.parametrize("content", ["not json", '{"download": -1}', '{"upload": "fast"}', "[]"])
def test_a_broken_limits_file_is_ignored(tmp_path: Path, content: str) -> None:
    (tmp_path / "limits.json").write_text(content)
    assert load_limits(tmp_path) is None
    assert load_limits(tmp_path / "none") is None


# -- a file that cannot be used -------------------------------------------------------------------
BAD_FILES = [
    ("http_port = 1\n", "unknown key 'http_port' (did you mean 'http-port'?)"),
    ("colour = 1\n", "unknown key 'colour' (known keys: peer-id, host, advertise-host"),
    ('port = "8270"\n', "'port': expected an integer from 0 to 65535, got '8270'"),
    ("port = 70000\n", "'port': expected an integer from 0 to 65535, got 70000"),
    ("port = true\n", "'port': expected an integer from 0 to 65535, got True"),
    ("gossip-interval = 0\n", "'gossip-interval': expected a number of 0.01 or more, got 0"),
    ("extension = 1\n", "'extension': expected true or false, got 1"),
    ('bootstrap = "10.0.0.1:8270"\n', "'bootstrap': expected a list of HOST:PORT strings"),
    ('bootstrap = ["10.0.0.1"]\n', "('10.0.0.1' is not HOST:PORT)"),
    ('log-level = "loud"\n', "'log-level': expected one of 'DEBUG', 'INFO', 'WARNING', 'ERROR'"),
    ("chunk-size = 3\n", "'chunk-size': 3 KiB is too small"),
    ("verbose = 2\n", "unknown key 'verbose'"),
    ("plugins = 3\n", "'plugins': expected tables [plugins.<name>], got 3"),
    ("[plugins]\nrarest = 3\n", "'plugins.rarest': expected a table [plugins.rarest], got 3"),
    ("port = \n", "not valid TOML: Invalid value (at line 1, column 8)"),
]


@pytest.mark.parametrize(("content", "said"), BAD_FILES)
def test_a_bad_file_is_one_line_naming_the_file_and_key(
    tmp_path: Path, content: str, said: str
) -> None:
    config = write(tmp_path / "c.toml", content)
    for args, env in ((["--config", str(config)], None), ([], {"TREEDRIVE_CONFIG": str(config)})):
        result = invoke("run", "--no-shell", *args, env=env)
        assert result.exit_code == 2, result.output
        assert result.output.splitlines() == [result.output.strip()], result.output  # one line
        assert result.output.startswith(f"Error: {config}: "), result.output
        assert said in result.output
        assert "Traceback" not in result.output


def test_a_named_file_must_exist(tmp_path: Path) -> None:
    result = invoke("run", "--config", str(tmp_path / "none.toml"))
    assert result.exit_code == 2
    assert result.output == f"Error: {tmp_path / 'none.toml'}: no such config file\n"


def test_control_commands_look_where_the_config_file_says(
    tmp_path: Path, config_home: Path
) -> None:
    data = tmp_path / "srv-node"
    write(config_home / "treedrive" / "config.toml", f'data-dir = "{data}"\n')
    result = invoke("status")
    assert result.exit_code == 1, result.output
    assert f"no node is running on {data}" in result.output
    other = tmp_path / "other"
    result = invoke("status", "--data-dir", str(other))  # an option still beats the file
    assert f"no node is running on {other}" in result.output
    write(config_home / "treedrive" / "config.toml", "port = true\n")
    result = invoke("status")
    assert result.exit_code == 2, result.output
    assert "'port': expected an integer" in result.output


def test_the_readme_plugin_reads_its_settings() -> None:
    """The README's plugin example reads its [plugins.largest-first] table as documented."""
    from types import SimpleNamespace

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("# largest_first.py")
    code = readme[start : readme.index("```", start)]
    namespace: dict[str, Any] = {}
    exec(compile(code, "largest_first.py", "exec"), namespace)  # noqa: S102 (our README)
    select = namespace["treedrive_select_downloads"]

    def entry(file_id: str, size: int) -> Any:
        return SimpleNamespace(meta=SimpleNamespace(file_id=file_id, file_size=size))

    files = [entry("small", 10), entry("big", 5000), entry("mid", 2000)]
    plain = SimpleNamespace(config=NodeConfig(Path("d")))
    assert select(plain, files, 2) == ["big", "mid"]
    tuned = SimpleNamespace(
        config=NodeConfig(Path("d"), extra={"largest-first": {"min-size": 3000}})
    )
    assert select(tuned, files, 2) == ["big"]
