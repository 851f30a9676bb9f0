"""Starting a node from the ``treedrive`` command: where its data is, the start and what to say
when it fails, and the banner with the dashboard's address."""

from __future__ import annotations

import contextlib
import errno
import logging
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

import click

from treedrive.core.config import NodeConfig, default_data_root
from treedrive.core.errors import StorageError
from treedrive.logs import log_to_file

if TYPE_CHECKING:
    from treedrive.core.node import Node

log = logging.getLogger("treedrive")


def env(name: str) -> str:
    return f"TREEDRIVE_{name}"


def resolve_data_dir(data_dir: Path | None, peer_id: str | None) -> Path:
    """The data dir: given, or one per peer id under the user's data folder."""
    if data_dir is not None:
        return data_dir
    return default_data_root() / (peer_id or "default")


class StartRefused(Exception):
    """The node did not start; the message (one line) says why and what to do."""


def start_failure(exc: BaseException) -> str | None:
    """What to tell the user when the node could not start (None: not a start problem)."""
    from treedrive.app import AlreadyRunning, StartFailed

    if isinstance(exc, AlreadyRunning):
        return f"{exc}: stop it first, or give this node another --data-dir or --peer-id"
    if isinstance(exc, StartFailed):
        option = "--port" if exc.what == "P2P" else "--http-port"
        if exc.in_use:
            return f"{exc}: choose another with {option} PORT, or {option} 0 for any free one"
        if exc.errno == errno.EADDRNOTAVAIL:
            return f"{exc}: check {'--host' if exc.what == 'P2P' else '--http-host'}"
        return f"{exc}: choose another with {option}"
    if isinstance(exc, OSError | StorageError):  # a key file that cannot be used, say
        return f"cannot start the node: {exc}"
    return None


async def run_node(config: NodeConfig, with_shell: bool) -> None:
    import asyncio

    from treedrive.app import AlreadyRunning, running_node, serve_until_stopped, stop_on_signals

    stop = asyncio.Event()
    # From the start: a signal while the node starts (its node.json may already be written) must
    # stop it cleanly once it is up, not cancel the start half-way (asyncio.run's own handler).
    stop_on_signals(stop)
    async with contextlib.AsyncExitStack() as stack:
        try:
            node = await stack.enter_async_context(
                running_node(config, on_locked=lambda: log_to_file(config.data_dir))
            )
        except (AlreadyRunning, OSError, RuntimeError, StorageError) as exc:
            said = start_failure(exc)
            if said is None:
                raise
            if not isinstance(exc, AlreadyRunning):  # the log is this node's: say it there too
                log.error("the node did not start: %s", said, extra={"terminal": False})
            raise StartRefused(said) from None
        _banner(node)
        if with_shell:
            from treedrive.terminal import Console

            console = Console(node, stop, history=config.data_dir / "shell-history")
            console.start()
            stack.push_async_callback(console.close)  # before the node stops
        await serve_until_stopped(node, stop)


def _banner(node: Node) -> None:
    """The dashboard's address with the node's token, and where its data is (the node's log
    said where it listens)."""
    config = node.config
    where = f"data: {config.data_dir}"
    if not node.http_url:
        click.echo(where, err=True)
        return
    token = (config.data_dir / "api-token").read_text().strip()
    bound = urllib.parse.urlsplit(node.http_url).port
    if config.http_port and bound != config.http_port:
        where = f"port {config.http_port} is taken; {where}"
    click.echo(f"dashboard: {node.http_url}?token={token} ({where})", err=True)
