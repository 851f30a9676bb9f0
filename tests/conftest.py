"""Shared fixtures: in-process nodes (real sockets on loopback, real SQLite files) and real
``treedrive run`` processes for end-to-end tests, from ``treedrive.testing`` (shipped for
plugins' tests); test plugins and a small disk of our own. Timers are short so tests stay fast."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netlab import Lab, available
from treedrive.core.hookspecs import hookimpl
from treedrive.core.model import CatalogEntry, PeerInfo
from treedrive.core.node import Node

# The helpers and fixtures shipped for plugins' tests (treedrive.testing), re-exported here for
# the tests that import them from this module; the fixtures also come through the pytest11 entry
# point when TreeDrive is installed, and these imports make them present when it is not.
from treedrive.testing import (
    FAST,
    Events,
    NodeProcess,
    address,
    fast_config,
    free_port,
    node_args,
    wait_for,
    watch,
)
from treedrive.testing.plugin import node_process, start_node

__all__ = [
    "FAST",
    "NODE_PROCESS_WARNINGS",
    "Events",
    "HoldersInOrder",
    "NodeProcess",
    "address",
    "fast_config",
    "fill",
    "free_port",
    "marked",
    "node_args",
    "node_process",
    "small_disk",
    "start_node",
    "wait_for",
    "watch",
]


# -- test plugins ----------------------------------------------------------------------------------
class HoldersInOrder:
    """A test plugin: ask the holders in this order (any other holder after them)."""

    def __init__(self, *order: str) -> None:
        self.order = order

    @hookimpl
    def treedrive_order_holders(
        self, node: Node, entry: CatalogEntry, holders: list[PeerInfo]
    ) -> list[PeerInfo]:
        rank = {name: i for i, name in enumerate(self.order)}
        return sorted(holders, key=lambda p: rank.get(p.peer_id, len(rank)))


# -- a full disk -----------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 12 MiB file system (tmpfs) for a node's data dir. Mounting needs root, which CI
    has; elsewhere the test skips."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path, block: int = 64 * 1024) -> None:
    """Write ``path``, ``block`` bytes a write, until the disk is full."""
    data = b"\0" * block
    with contextlib.suppress(OSError), path.open("wb", buffering=0) as f:
        while True:
            f.write(data)


# -- real node processes -------------------------------------------------------------------------
# NodeProcess.start leaves the parent's handle on <peer>.out open; with filterwarnings=error its
# ResourceWarning would fail the test at GC. These marks ignore only that.
NODE_PROCESS_WARNINGS = [
    pytest.mark.filterwarnings(r"ignore:unclosed file <_io.TextIOWrapper name='[^']*\.out'"),
    pytest.mark.filterwarnings(
        r"ignore:Exception ignored in. <_io.FileIO name='[^']*\.out'"
        ":pytest.PytestUnraisableExceptionWarning"
    ),
]


def marked(marks: list[Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator that puts every one of ``marks`` on a test, in order."""

    def apply(test: Callable[..., Any]) -> Callable[..., Any]:
        for mark in reversed(marks):
            test = mark(test)
        return test

    return apply


@pytest.fixture
def lab() -> Iterator[Lab]:
    """Hosts in network namespaces on a bridge (tests/netlab.py), all removed at the end; the
    test is skipped where namespaces cannot be made (not root, no ``ip``)."""
    why = available()
    if why is not None:
        pytest.skip(why)
    made = Lab()
    try:
        yield made
    finally:
        made.close()
