"""The composition root: builds a node from its parts. The CLI and the tests both use it."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from treedrive.core.config import NodeConfig
from treedrive.core.node import Node
from treedrive.core.plugins import Plugins, make_plugin_manager
from treedrive.store import Store
from treedrive.transport.net import NetLimits, TcpNetwork

log = logging.getLogger(__name__)

RUN_FILE = "node.json"
LOCK_FILE = "lock"


class AlreadyRunning(RuntimeError):
    pass


def tune_malloc() -> None:
    """Keep freed transfer buffers in the process (glibc): by default glibc hands every freed
    block of a few hundred KiB back to the kernel, so each read of a file's bytes faults fresh
    pages in; measured, that was a third of a receiving node's CPU. Memory use stays the same."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: nothing to tune
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 4 * 1024 * 1024)
    libc.mallopt(m_trim_threshold, 16 * 1024 * 1024)


def build_node(config: NodeConfig, plugins: Plugins | None = None) -> Node:
    """A node with its store (schema upgraded), plugins and TCP transport, not yet started."""
    store = Store(config.data_dir)
    store.upgrade()
    if plugins is None:
        plugins = Plugins(make_plugin_manager())
    limits = NetLimits(
        connect_timeout=config.connect_timeout,
        idle_timeout=config.reply_timeout,
        max_connections=config.max_connections,
    )
    return Node(config, store, plugins, TcpNetwork(config.host, config.port, limits))


def lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data dir for the life of the process."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(f"another node is running on {data_dir}") from None
    return fd


def write_run_file(node: Node) -> Path:
    """Say where the running node listens (the control commands read it)."""
    path = node.config.data_dir / RUN_FILE
    info = {
        "pid": os.getpid(),
        "peer_id": node.peer_id,
        "host": node.host,
        "port": node.port,
        "http": node.http_url,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(path)
    return path


@contextlib.asynccontextmanager
async def running_node(config: NodeConfig) -> AsyncIterator[Node]:
    """Start a node for the length of the block; stop it cleanly after."""
    fd = lock_data_dir(config.data_dir)
    try:
        node = build_node(config)
        await node.start()
        if (
            config.http_port is not None
            and node.http_url is None
            and node.plugins.pm.has_plugin("web")
        ):
            await node.stop()
            node.store.close()
            raise OSError(
                f"the dashboard could not listen on port {config.http_port} (see the log)"
            )
        run_file = write_run_file(node)
        try:
            yield node
        finally:
            run_file.unlink(missing_ok=True)
            await node.stop()
            node.store.close()
    finally:
        os.close(fd)


async def serve_until_stopped(node: Node, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
