"""Test a TreeDrive plugin (or a script) against real nodes: in-process nodes on loopback with
real SQLite files, and real ``treedrive run`` processes, both with short timers.

Installed with TreeDrive as a pytest plugin (entry point ``pytest11``): its fixtures
``start_node`` and ``node_process`` are in :mod:`treedrive.testing.plugin`; the helpers they use
are here, for tests that build nodes their own way. ``docs/plugins.md`` ("Testing your plugin")
shows them in use. Nothing here imports pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treedrive.core.config import Address, NodeConfig
from treedrive.core.events import Event, Notice, TransferFinished
from treedrive.core.hookspecs import hookimpl
from treedrive.core.model import FileMeta
from treedrive.core.node import Node
from treedrive.core.plugins import LOAD_ENV

__all__ = [
    "FAST",
    "Events",
    "NodeProcess",
    "address",
    "fast_config",
    "free_port",
    "node_args",
    "node_processes",
    "seed",
    "started_nodes",
    "wait_for",
    "watch",
]

FAST = {
    "gossip_interval": 0.5,
    "peer_timeout": 3.0,
    "cleanup_interval": 0.25,
    "join_delay": 0.5,
    "connect_timeout": 2.0,
    "reply_timeout": 5.0,
}
"""The timers of a test's node, in seconds (a node's defaults are 30 s gossip, 3 s join delay)."""

Seed = Mapping[str, bytes] | Iterable[Path]
"""Files a node holds from its start: ``{name: content}``, or paths to push."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fast_config(data_dir: Path, peer_id: str, **overrides: Any) -> NodeConfig:
    """A node config on loopback with short timers and a free port (no dashboard unless
    ``http_port`` is given)."""
    settings: dict[str, Any] = {**FAST, "port": free_port(), "http_port": None}
    settings.update(overrides)
    return NodeConfig(data_dir=data_dir, peer_id=peer_id, **settings)


def address(node: Node) -> Address:
    """Where ``node`` listens for peers (e.g. ``bootstrap=(address(alice),)``)."""
    return Address(node.host, node.port)


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, every: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); raise AssertionError
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(every)


async def seed(node: Node, files: Seed, folder: Path) -> list[FileMeta]:
    """Push each file to ``node`` (``{name: content}`` written to ``folder`` first); their
    records, in order. A node with no peers yet just stores them."""
    return [await node.push(path) for path in _seed_paths(files, folder)]


def _seed_paths(files: Seed, folder: Path) -> list[Path]:
    if not isinstance(files, Mapping):
        return list(files)
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return [folder / name for name in files]


@contextlib.asynccontextmanager
async def started_nodes(root: Path) -> AsyncIterator[Callable[..., Any]]:
    """``start = ...; node = await start("alice", plugins=[mod], seed={...}, **config)``: nodes
    in this event loop, each in ``root/<peer_id>`` (:func:`fast_config`), all stopped when the
    block ends."""
    from treedrive.app import running_node  # the node's whole stack, only when a node starts

    async with contextlib.AsyncExitStack() as stack:

        async def start(
            peer_id: str, *, plugins: Sequence[object] = (), seed: Seed = (), **overrides: Any
        ) -> Node:
            config = fast_config(root / peer_id, peer_id, **overrides)
            node = await stack.enter_async_context(running_node(config, plugins=plugins))
            await _seed(node, seed, root / f"{peer_id}.seed")
            return node

        yield start


_seed = seed


# -- test plugins ----------------------------------------------------------------------------
class Events:
    """A plugin that records every event and notice one node publishes, in order."""

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
        """The TransferFinished events of ``file_id`` in ``direction`` (``ok`` None: any)."""
        return [
            e
            for e in self.seen
            if isinstance(e, TransferFinished)
            and e.transfer.direction == direction
            and e.transfer.file_id == file_id
            and (ok is None or e.ok is ok)
        ]


def watch(node: Node) -> Events:
    """An :class:`Events` plugin registered on a running ``node``."""
    events = Events()
    node.plugins.pm.register(events)
    return events


# -- real node processes ---------------------------------------------------------------------
@dataclass
class NodeProcess:
    """A ``treedrive run`` process (this Python's ``-m treedrive``); ended by its PID only.
    Its output goes to ``<data dir>/../<peer_id>.out``."""

    peer_id: str
    data_dir: Path
    port: int
    args: list[str]
    proc: subprocess.Popen[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Variables set for the process besides this one's (e.g. ``TREEDRIVE_PLUGINS``)."""
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data_dir.parent / f"{self.peer_id}.out"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, shell: bool = False) -> NodeProcess:
        """Start it and wait (20 s at most) until it has written its run file."""
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
                # a stack dump of every thread on SIGABRT: see :meth:`stop`
                env={**os.environ, "PYTHONFAULTHANDLER": "1", **self.env},
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
        """The run file (``node.json``): where the node listens."""
        return dict(json.loads((self.data_dir / "node.json").read_text()))

    def push(self, path: Path) -> dict[str, Any]:
        """``treedrive push --json`` of ``path`` into this running node; the pushed record."""
        where = ["--data-dir", str(self.data_dir)]
        done = subprocess.run(
            [sys.executable, "-m", "treedrive", "push", "--json", *where, str(path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"push of {path} to {self.peer_id} failed: {done.stderr}")
        return dict(json.loads(done.stdout))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=20)

    def stop(self) -> int | None:
        """SIGINT (like Ctrl-C) and wait; returns the exit code. A node that has not exited
        20 s later gets SIGABRT, which makes it print every thread's stack (its
        ``PYTHONFAULTHANDLER``) into its log, and the end of that log is printed here (pytest
        shows it with the failure)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGABRT)
                print(f"node {self.peer_id} did not stop within 20 s of SIGINT; its output ends:")
                print(self.log.read_text(errors="replace")[-8000:])
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


@contextlib.contextmanager
def node_processes(root: Path) -> Iterator[Callable[..., NodeProcess]]:
    """``make = ...; node = make("alice", "--bootstrap", addr, plugins=["my_plugin"])``: node
    processes (not started: call ``.start()``) in ``root/<peer_id>`` with :func:`node_args`;
    ``plugins`` are module names the process imports and registers (``TREEDRIVE_PLUGINS``).
    Every process is killed when the block ends."""
    made: list[NodeProcess] = []

    def make(
        peer_id: str, *extra: str, port: int | None = None, plugins: Sequence[str] = ()
    ) -> NodeProcess:
        port = port or free_port()
        data_dir = root / peer_id
        env = {LOAD_ENV: ",".join(plugins)} if plugins else {}
        args = [*node_args(peer_id, port, data_dir), *extra]
        node = NodeProcess(peer_id, data_dir, port, args, env=env)
        made.append(node)
        return node

    try:
        yield make
    finally:
        for node in made:
            node.kill()
