"""The composition root: builds a node from its parts. The CLI and the tests both use it."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import stat
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

from treedrive.core.config import NodeConfig
from treedrive.core.node import Node
from treedrive.core.plugins import Plugins, make_plugin_manager
from treedrive.store import Store
from treedrive.transport.net import NetLimits, TcpNetwork
from treedrive.transport.process import filter_accept_errors, raise_open_files_limit

log = logging.getLogger(__name__)

RUN_FILE = "node.json"
LOCK_FILE = "lock"
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


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


def _tree(root: Path) -> Iterator[tuple[Path, bool]]:
    """Every dir and regular file under ``root`` (symlinks are neither followed nor changed)."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in dirnames:
            if not (here / name).is_symlink():
                yield here / name, True
        for name in filenames:
            path = here / name
            if not path.is_symlink():
                yield path, False


def make_private(data_dir: Path) -> list[Path]:
    """Keep the data dir to its owner (THREATS.md: private stays private): files this process
    creates from now on are owner-only (umask 077), the dir is made 0700 if missing, and an
    existing dir, its sub-dirs (0700) and its files (0600) are tightened if they are not so
    already. Logs once if it had to tighten anything; returns what it changed."""
    os.umask(0o077)
    data_dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    changed: list[Path] = []
    for path, is_dir in [(data_dir, True), *_tree(data_dir)]:
        want = PRIVATE_DIR if is_dir else PRIVATE_FILE
        try:
            if stat.S_IMODE(path.stat().st_mode) != want:
                path.chmod(want)
                changed.append(path)
        except FileNotFoundError:
            continue  # removed meanwhile (a temp file)
    if changed:
        shown = ", ".join(str(p.relative_to(data_dir)) for p in changed[:5])
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        log.warning(
            "the data dir %s was readable by others: made %d paths private to the owner (%s%s)",
            data_dir,
            len(changed),
            shown,
            more,
        )
    return changed


def build_node(config: NodeConfig, plugins: Plugins | None = None) -> Node:
    """A node with its store (schema upgraded), plugins and TCP transport, not yet started."""
    store = Store(config.data_dir)
    try:
        store.upgrade()
        store.node_key()  # made or read now: a key file that cannot be used stops the start
    except BaseException:
        store.close()
        raise
    if plugins is None:
        plugins = Plugins(make_plugin_manager())
    bootstrap = frozenset((a.host, a.port) for a in config.bootstrap)
    limits = NetLimits(
        connect_timeout=config.connect_timeout,
        idle_timeout=config.reply_timeout,
        max_connections=config.max_connections,
    )
    return Node(config, store, plugins, TcpNetwork(config.host, config.port, limits, bootstrap))


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
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(info))
    tmp.replace(path)
    return path


class StartFailed(RuntimeError):
    """A part of the node could not listen: ``what`` ("P2P" or "dashboard") on ``host:port``,
    and why (``errno``). One line for the user, never a traceback."""

    def __init__(self, what: str, host: str, port: int, exc: OSError) -> None:
        self.what, self.host, self.port, self.errno = what, host, port, exc.errno
        super().__init__(f"the {what} port {host}:{port} {_why(exc)}")

    @property
    def in_use(self) -> bool:
        return self.errno == errno.EADDRINUSE


LISTEN_ERRORS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL})
"""What only a listening socket fails with (a disk never does)."""


def _why(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "is in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "cannot be used: no such address on this machine"
    if exc.errno == errno.EACCES:
        return "needs privileges (ports below 1024)"
    return f"cannot be used: {exc.strerror or exc}"


@contextlib.asynccontextmanager
async def running_node(
    config: NodeConfig,
    *,
    on_locked: Callable[[], object] | None = None,
    plugins: Sequence[object] = (),
) -> AsyncIterator[Node]:
    """Start a node for the length of the block; stop it cleanly after.

    The data dir is locked first (a second node on it is refused before it writes anything
    there); ``on_locked`` then runs (the CLI starts its log file there). Before anything
    listens: the data dir is made private to its owner, the open files soft limit is raised to
    the hard limit, and accept errors for want of file descriptors are logged at most once a
    second instead of a traceback each. A port that cannot be listened on raises
    :class:`StartFailed`. ``plugins`` (modules or objects with hook implementations) are
    registered besides the installed ones."""
    config.data_dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    fd = lock_data_dir(config.data_dir)
    try:
        if on_locked is not None:
            on_locked()
        make_private(config.data_dir)
        raise_open_files_limit()
        filter_accept_errors(asyncio.get_running_loop())  # once per loop (nodes in tests)
        async with _started_node(config, plugins) as node:
            yield node
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def _started_node(config: NodeConfig, extra: Sequence[object]) -> AsyncIterator[Node]:
    plugins = Plugins(make_plugin_manager(plugins=extra))
    _probe_ports(config, plugins)
    node = build_node(config, plugins)
    try:
        await node.start()
        _check_dashboard(node)
    except OSError as exc:
        if exc.errno not in LISTEN_ERRORS:
            await _abandon(node, started=True)
            raise
        await _abandon(node, started=False)  # the transport did not listen: nothing started
        raise StartFailed("P2P", config.host, config.port, exc) from None
    except BaseException:
        await _abandon(node, started=True)
        raise
    run_file = write_run_file(node)
    try:
        yield node
    finally:
        run_file.unlink(missing_ok=True)
        await node.stop()
        node.store.close()
        log.info("node %s stopped", node.peer_id)


async def _abandon(node: Node, started: bool) -> None:
    """Undo a start that failed half-way."""
    with contextlib.suppress(Exception):
        await (node.stop() if started else node.network.close())
    node.store.close()


def _probe_ports(config: NodeConfig, plugins: Plugins) -> None:
    """A port that is taken fails the start before anything is opened or written (a node would
    find out only once its store is ready, or for the dashboard, once the P2P listener is up):
    the P2P port, and the dashboard's if the user chose it (a default one falls back)."""
    _probe("P2P", config.host, config.port)
    if config.http_port and not config.http_port_fallback and plugins.pm.has_plugin("web"):
        _probe("dashboard", config.http_host, config.http_port)


def _probe(what: str, host: str, port: int) -> None:
    if not port:
        return  # any free port
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return  # the listener says what is wrong with the host
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listeners do
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno in LISTEN_ERRORS:
                    raise StartFailed(what, host, port, exc) from None


def _check_dashboard(node: Node) -> None:
    """The web plugin did not listen where it had to: why, as :class:`StartFailed`."""
    config = node.config
    if config.http_port is None or node.http_url is not None:
        return
    if not node.plugins.pm.has_plugin("web"):
        return  # disabled (TREEDRIVE_DISABLE_PLUGINS): no dashboard was asked of anyone
    from treedrive.web.plugin import startup_error

    exc = startup_error(node) or OSError(f"the dashboard did not start on {config.http_port}")
    raise StartFailed("dashboard", config.http_host, config.http_port, exc)


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGINT and SIGTERM set ``stop`` (the node then stops cleanly)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def serve_until_stopped(node: Node, stop: asyncio.Event) -> None:
    stop_on_signals(stop)
    await stop.wait()
