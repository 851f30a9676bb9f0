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


# -- real node processes -------------------------------------------------------------------------
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


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """``node_process("alice", "--bootstrap", addr, ...)``: a real node process with fast timers
    (not started: call ``.start()``). Every process is ended at the end of the test."""
    started: list[NodeProcess] = []

    def make(peer_id: str, *extra: str, port: int | None = None) -> NodeProcess:
        port = port or free_port()
        data_dir = tmp_path / peer_id
        args = [
            "--peer-id", peer_id,
            "--port", str(port),
            "--data-dir", str(data_dir),
            "--gossip-interval", str(FAST["gossip_interval"]),
            "--peer-timeout", str(FAST["peer_timeout"]),
            "--cleanup-interval", str(FAST["cleanup_interval"]),
            "--join-delay", str(FAST["join_delay"]),
            "--http-port", "0",
            *extra,
        ]  # fmt: skip
        node = NodeProcess(peer_id, data_dir, port, args)
        started.append(node)
        return node

    yield make
    for node in started:
        node.kill()
