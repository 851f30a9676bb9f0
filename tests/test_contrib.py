"""The service recipes in the repository: the systemd units pass ``systemd-analyze verify`` and
start ``treedrive run`` with options it has; the Dockerfile (no container engine here) is read:
a slim Python base, a user that is not root, the data volume, the ports, a health check, and an
entry command that ``treedrive run`` accepts."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from treedrive.cli import cli
from treedrive.core.config import DEFAULT_HTTP_PORT, DEFAULT_P2P_PORT

ROOT = Path(__file__).resolve().parent.parent
UNITS = [ROOT / "contrib" / "systemd" / "treedrive.service"]
USER_UNITS = [ROOT / "contrib" / "systemd" / "user" / "treedrive.service"]
RUN = cli.commands["run"]
TREEDRIVE = Path(sys.executable).parent / "treedrive"


def accepts(args: list[str]) -> dict[str, object]:
    """The options ``treedrive run`` makes of ``args`` (a usage error fails the test)."""
    try:
        return dict(RUN.make_context("run", list(args)).params)
    except click.ClickException as exc:  # pragma: no cover - the failure is the message
        raise AssertionError(f"treedrive run refuses {args}: {exc.format_message()}") from None


# -- systemd --------------------------------------------------------------------------------------
def unit_values(path: Path, key: str) -> list[str]:
    return [
        line.partition("=")[2].strip()
        for line in path.read_text().splitlines()
        if line.startswith(f"{key}=")
    ]


def exec_start(path: Path) -> list[str]:
    (line,) = unit_values(path, "ExecStart")
    return shlex.split(line)


@pytest.mark.parametrize("unit", UNITS + USER_UNITS, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_unit_runs_treedrive_run_with_options_it_has(unit: Path, tmp_path: Path) -> None:
    argv = exec_start(unit)
    assert Path(argv[0]).name == "treedrive"
    assert argv[1] == "run"
    assert "--no-shell" in argv
    state, home = str(tmp_path / "state"), str(tmp_path / "home")  # systemd's %S and %h
    args = [a.replace("%S", state).replace("%h", home) for a in argv[2:]]
    params = accepts(args)
    assert params["shell"] is False
    assert unit_values(unit, "Restart") == ["on-failure"]
    assert unit_values(unit, "UMask") == ["0077"]  # the data dir is private


def test_the_system_unit_has_a_user_and_a_state_directory_of_its_own() -> None:
    (unit,) = UNITS
    assert unit_values(unit, "DynamicUser") == ["yes"]
    assert unit_values(unit, "StateDirectory") == ["treedrive"]
    argv = exec_start(unit)
    assert argv[argv.index("--data-dir") + 1] == "%S/treedrive"  # /var/lib/treedrive
    assert unit_values(unit, "Environment") == ["XDG_CONFIG_HOME=%E"]  # /etc/treedrive/...
    assert unit_values(unit, "WantedBy") == ["multi-user.target"]
    assert unit_values(USER_UNITS[0], "WantedBy") == ["default.target"]


def verify(unit: Path, tmp_path: Path, user: bool) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on a copy of ``unit`` whose ExecStart names this machine's
    ``treedrive`` (verify checks that the program exists; the unit names /usr/local/bin)."""
    folder = tmp_path / ("user" if user else "system")
    folder.mkdir()
    copy = folder / unit.name
    argv = exec_start(unit)
    copy.write_text(unit.read_text().replace(argv[0], str(TREEDRIVE)))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    command = ["systemd-analyze", *(["--user"] if user else []), "verify", str(copy)]
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
@pytest.mark.parametrize(
    ("unit", "user"),
    [(u, False) for u in UNITS] + [(u, True) for u in USER_UNITS],
    ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else str(v),
)
def test_systemd_analyze_verify_passes(unit: Path, user: bool, tmp_path: Path) -> None:
    assert TREEDRIVE.exists(), TREEDRIVE
    done = verify(unit, tmp_path, user)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr  # not even a warning (an unknown key, say)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_verify_would_see_a_mistake(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key is reported."""
    broken = tmp_path / "treedrive.service"
    broken.write_text(UNITS[0].read_text().replace("Restart=", "Restrat="))
    done = verify(broken, tmp_path, user=False)
    assert "Restrat" in done.stderr


# -- the Dockerfile -------------------------------------------------------------------------------
def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, comments dropped, continued lines joined."""
    found: list[tuple[str, str]] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        found.append((word.upper(), rest.strip()))
        current = ""
    return found


DOCKERFILE = ROOT / "Dockerfile"


def final_stage() -> list[tuple[str, str]]:
    steps = instructions(DOCKERFILE)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def args_of(steps: list[tuple[str, str]]) -> dict[str, str]:
    return {
        name: value
        for word, rest in steps
        if word == "ARG"
        for name, _, value in [rest.partition("=")]
    }


def test_the_dockerfile_builds_from_a_slim_python() -> None:
    steps = instructions(DOCKERFILE)
    arguments = args_of(steps)
    bases = [rest.split()[0] for word, rest in steps if word == "FROM"]
    assert bases, "no FROM"
    for base in bases:
        for name, value in arguments.items():
            base = base.replace("${" + name + "}", value)
        image, _, tag = base.partition(":")
        assert image == "python", base
        assert tag.endswith("-slim"), base
        assert tuple(int(x) for x in tag.removesuffix("-slim").split(".")) >= (3, 11), base


def test_the_container_runs_as_a_user_that_is_not_root() -> None:
    users = [rest for word, rest in final_stage() if word == "USER"]
    assert users, "no USER: the node would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    # the data volume belongs to that user, and nothing after USER makes root files there
    assert "chown treedrive:treedrive /data" in " ".join(rest for _, rest in final_stage())


def test_the_container_has_a_data_volume_and_exposes_the_ports() -> None:
    steps = final_stage()
    (volume,) = [rest for word, rest in steps if word == "VOLUME"]
    assert json.loads(volume) == ["/data"]
    exposed = {
        int(p.split("/")[0]) for word, rest in steps if word == "EXPOSE" for p in rest.split()
    }
    params = accepts(entrypoint()[2:])
    assert exposed == {params["port"], params["http_port"]}
    assert (params["port"], params["http_port"]) == (DEFAULT_P2P_PORT, DEFAULT_HTTP_PORT)


def entrypoint() -> list[str]:
    (entry,) = [rest for word, rest in final_stage() if word == "ENTRYPOINT"]
    argv = json.loads(entry)  # the exec form: signals reach the node, no shell between
    assert isinstance(argv, list)
    return [str(a) for a in argv]


def test_the_entry_command_is_treedrive_run_with_options_it_has(tmp_path: Path) -> None:
    argv = entrypoint()
    assert argv[:2] == ["treedrive", "run"]
    params = accepts(argv[2:])
    assert params["data_dir"] == Path("/data")
    assert params["shell"] is False
    assert params["host"] == "0.0.0.0"  # reachable through the published ports
    assert params["http_host"] == "0.0.0.0"
    assert params["log_file"] == "-"  # docker logs, not a file in the volume
    # what a user adds after the image name is taken too
    more = accepts(
        [*argv[2:], "--advertise-host", "203.0.113.5", "--bootstrap", "198.51.100.7:8270"]
    )
    assert more["advertise_host"] == "203.0.113.5"
    # and every option it names is one `treedrive run --help` lists
    from click.testing import CliRunner

    help_text = CliRunner().invoke(cli, ["run", "--help"]).output
    for arg in argv[2:]:
        if arg.startswith("--"):
            assert arg in help_text, arg


def test_the_health_check_asks_the_api_on_the_dashboards_port() -> None:
    (check,) = [rest for word, rest in final_stage() if word == "HEALTHCHECK"]
    command = json.loads(check[check.index("CMD") + 3 :].strip())
    assert command[0] == "python"  # no curl in a slim image
    port = accepts(entrypoint()[2:])["http_port"]
    assert f"http://127.0.0.1:{port}/api/health" in command[-1]


def test_the_build_context_leaves_out_what_the_wheel_does_not_need() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "tests", "bench"} <= ignored
    for needed in ("treedrive", "migrations", "pyproject.toml", "README.md"):
        assert needed not in ignored, needed
