"""The README's "Using TreeDrive from Python": every python block under that heading runs as a
script against real nodes on loopback (ports 0, temp data dirs; alice of the demo is a real
``treedrive run`` process found through ``$XDG_DATA_HOME``), and passes ``mypy --strict`` as a
program outside this repository sees the installed package (which needs ``treedrive/py.typed``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import NODE_PROCESS_WARNINGS, NodeProcess, free_port, node_args

README = Path(__file__).parent.parent / "README.md"
HEADING = "## Using TreeDrive from Python"

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300), *NODE_PROCESS_WARNINGS]


def examples() -> list[str]:
    text = README.read_text()
    start = text.index(HEADING + "\n")
    end = text.find("\n## ", start + len(HEADING))
    section = text[start : end if end != -1 else len(text)]
    return re.findall(r"^```python\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)


def written(tmp_path: Path) -> list[Path]:
    """Each example as a script in a folder of its own."""
    blocks = examples()
    paths = []
    for i, block in enumerate(blocks, 1):
        folder = tmp_path / f"example{i}"
        folder.mkdir()
        paths.append(folder / f"example{i}.py")
        paths[-1].write_text(block)
    return paths


def test_the_examples_use_both_ways_and_stand_alone() -> None:
    blocks = examples()
    assert len(blocks) >= 4
    code = "\n".join(blocks)
    for name in ("running_node", "NodeConfig", "from treedrive.client import", ".events("):
        assert name in code, name
    # one script that uses both, so that mypy checks them together
    assert any("running_node" in b and "treedrive.client" in b for b in blocks)
    for block in blocks:  # each is a whole script: its own imports
        assert block.startswith(("import ", "from ")), block[:80]


def test_the_examples_run_against_real_nodes(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    port = free_port()
    data_dir = xdg / "treedrive" / "alice"  # where Client.find(peer_id="alice") looks
    alice = NodeProcess("alice", data_dir, port, node_args("alice", port, data_dir))
    env = {**os.environ, "XDG_DATA_HOME": str(xdg)}
    try:
        alice.start()
        for script in written(tmp_path):
            done = subprocess.run(
                [sys.executable, script.name],
                cwd=script.parent,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, f"{script.name}:\n{done.stdout}\n{done.stderr}"
            assert "Traceback" not in done.stderr, done.stderr
            assert done.stdout.strip(), f"{script.name} printed nothing"
    finally:
        alice.kill()


def test_the_examples_pass_mypy_strict_as_a_user_program(tmp_path: Path) -> None:
    scripts = written(tmp_path)
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n")  # not this repository's settings: a user's, with --strict
    mypy = [sys.executable, "-m", "mypy", "--strict", "--config-file", str(config)]
    done = subprocess.run(
        [*mypy, "--cache-dir", str(tmp_path / ".mypy_cache"), *map(str, scripts)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout
