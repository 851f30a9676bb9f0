"""What tests of the ``treedrive`` command share to start clean: no ``TREEDRIVE_*`` variable and
no config file of the user's, and the root logger's handlers as they were."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest


def no_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Remove every ``TREEDRIVE_*`` variable and point ``XDG_CONFIG_HOME`` at a folder of the
    test's own (returned; empty: no config file)."""
    for name in list(os.environ):
        if name.startswith("TREEDRIVE_"):
            monkeypatch.delenv(name)
    home = tmp_path / "config-home"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


@contextlib.contextmanager
def root_logging_restored() -> Iterator[None]:
    """``treedrive run`` adds handlers to the root logger (CliRunner runs it in this process):
    those added in the block are removed and closed, and the level put back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
