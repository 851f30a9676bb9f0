"""The control commands start fast: ``treedrive push`` is part of every push's time (issue 10),
so finding it loads no event loop machinery and no web server."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import click
from treedrive.cli import cli
command = cli.get_command(click.Context(cli), "push")
assert command is not None and command.name == "push", command
print(",".join(sorted(m for m in ("asyncio", "aiohttp", "sqlalchemy") if m in sys.modules)))
"""


def test_finding_push_imports_no_asyncio_aiohttp_or_sqlalchemy() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
