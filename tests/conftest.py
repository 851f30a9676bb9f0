"""Shared fixtures: in-process nodes (real sockets on loopback, real SQLite files) and real
``treedrive run`` processes for end-to-end tests. Timers are short so tests stay fast."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from treedrive.app import running_node
from treedrive.core.config import Address, NodeConfig
from treedrive.core.events import Event, Notice, TransferFinished
from treedrive.core.hookspecs import hookimpl
from treedrive.core.model import CatalogEntry, PeerInfo
from treedrive.core.node import Node

FAST = {
    "gossip_interval": 0.5,
    "peer_timeout": 3.0,
    "cleanup_interval": 0.25,
    "join_delay": 0.5,
    "connect_timeout": 2.0,
    "reply_timeout": 5.0,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fast_config(data_dir: Path, peer_id: str, **overrides: Any) -> NodeConfig:
    """A node config on loopback with short timers and a free port."""
    settings: dict[str, Any] = {**FAST, "port": free_port(), "http_port": None}
    settings.update(overrides)
    return NodeConfig(data_dir=data_dir, peer_id=peer_id, **settings)


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, every: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(every)


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``node = await start_node("alice", bootstrap=(addr,), **config)``: an in-process node on
    this test's event loop, stopped at the end of the test."""
    stack = contextlib.AsyncExitStack()

    async def start(peer_id: str, **overrides: Any) -> Node:
        config = fast_config(tmp_path / peer_id, peer_id, **overrides)
        return await stack.enter_async_context(running_node(config))

    async with stack:
        yield start


def address(node: Node) -> Address:
    return Address(node.host, node.port)


# -- test plugins ----------------------------------------------------------------------------------
class Events:
    """A test plugin: every event and notice one node publishes, in order."""

    def __init__(self) -> None:
        self.seen: list[Event | Notice] = []

    @hookimpl
    def treedrive_on_event(self, node: Node, event: Event) -> None:
        self.seen.append(event)

    @hookimpl
    def treedrive_on_notice(self, node: Node, notice: Notice) -> None:
        self.seen.append(notice)

    def clear(self) -> None:
        self.seen.clear()

    def finished(self, direction: str, file_id: str, ok: bool | None = True) -> list[Any]:
        return [
            e
            for e in self.seen
            if isinstance(e, TransferFinished)
            and e.transfer.direction == direction
            and e.transfer.file_id == file_id
            and (ok is None or e.ok is ok)
        ]


def watch(node: Node) -> Events:
    """An :class:`Events` plugin registered on ``node``."""
    events = Events()
    node.plugins.pm.register(events)
    return events


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


@dataclass
class NodeProcess:
    """A ``treedrive run`` process started by a test; ended by its PID only."""

    peer_id: str
    data_dir: Path
    port: int
    args: list[str]
    proc: subprocess.Popen[str] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data_dir.parent / f"{self.peer_id}.out"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, shell: bool = False) -> NodeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "node.json").unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "treedrive", "run", *self.args]
        cmd.append("--shell" if shell else "--no-shell")
        with self.log.open("a") as out:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE if shell else subprocess.DEVNULL,
                stdout=subprocess.PIPE if shell else out,
                stderr=out,
                text=True,
                bufsize=1,
            )
        deadline = time.monotonic() + 20
        while not (self.data_dir / "node.json").exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.peer_id} exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.peer_id} did not start")
            time.sleep(0.05)
        return self

    def info(self) -> dict[str, Any]:
        return dict(json.loads((self.data_dir / "node.json").read_text()))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=20)

    def stop(self) -> int | None:
        """SIGINT (like Ctrl-C) and wait; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


def node_args(peer_id: str, port: int, data_dir: Path) -> list[str]:
    """The options of ``treedrive run`` for a test's node process: its name, port and data dir,
    the fast timers, a dashboard on a free port."""
    return [
        "--peer-id", peer_id,
        "--port", str(port),
        "--data-dir", str(data_dir),
        "--gossip-interval", str(FAST["gossip_interval"]),
        "--peer-timeout", str(FAST["peer_timeout"]),
        "--cleanup-interval", str(FAST["cleanup_interval"]),
        "--join-delay", str(FAST["join_delay"]),
        "--http-port", "0",
    ]  # fmt: skip


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """``node_process("alice", "--bootstrap", addr, ...)``: a real node process with fast timers
    (not started: call ``.start()``). Every process is ended at the end of the test."""
    started: list[NodeProcess] = []

    def make(peer_id: str, *extra: str, port: int | None = None) -> NodeProcess:
        port = port or free_port()
        data_dir = tmp_path / peer_id
        node = NodeProcess(peer_id, data_dir, port, [*node_args(peer_id, port, data_dir), *extra])
        started.append(node)
        return node

    yield make
    for node in started:
        node.kill()
