"""Schemathesis against a live ``treedrive run`` (issue 13): every operation of the OpenAPI
document, called with generated valid and invalid input and the API token, never gets a 5xx
answer. Slow (a minute or so): ``pytest -m slow tests/web/test_schemathesis.py``.

The event stream is left out: it never ends, and a test client would wait on it forever (its
parameters are tested in ``test_event_replay.py``)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("schemathesis")

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(600)]


def test_schemathesis_finds_no_server_error(
    node_process: Callable[..., Any], tmp_path: Path
) -> None:
    node = node_process("fuzzed").start()
    base = str(node.info()["http"])
    token = (node.data_dir / "api-token").read_text().strip()
    run = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run", base + "api/v1/openapi.json",
            "--header", f"Authorization: Bearer {token}",
            "--checks", "not_a_server_error",
            "--exclude-path", "/api/v1/events",
            "--max-examples", "40",
            "--workers", "1",
            "--seed", "13",
        ],
        capture_output=True, text=True, timeout=540, check=False,
        cwd=tmp_path,  # its cache folder (.schemathesis) goes there
    )  # fmt: skip
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert "passed" in run.stdout, report
    assert "Traceback" not in node.log.read_text() + (node.data_dir / "node.log").read_text()
