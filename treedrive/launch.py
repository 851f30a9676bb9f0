"""Starting a node from the ``treedrive`` command: where its data is, the address it gives
peers, the rate limits kept from the API, the start and what to say when it fails, and the
banner with the dashboard's address."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import sys
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from treedrive.core.config import NodeConfig, default_data_root, is_wildcard
from treedrive.core.errors import StorageError
from treedrive.logs import LogFile, log_to_file
from treedrive.persisted import LIMITS_FILE, RateLimits, load_limits

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


def advertised_host(host: str, advertise: str | None) -> str | None:
    """The address to give peers when it is not ``host`` (None: ``host`` itself). A node that
    listens on every interface gives its address on the default route, or refuses to start
    when there is none: peers cannot dial 0.0.0.0."""
    if advertise is not None:
        if is_wildcard(advertise) or not _dialable(advertise):
            raise click.BadParameter(
                f"{advertise!r} is not an address peers can dial: give a host name or an IP "
                "address of this machine",
                param_hint="--advertise-host",
            )
        return advertise
    if not is_wildcard(host):
        return None
    found = default_route_address(ipv6=":" in host)
    if found is None:
        raise click.UsageError(
            f"--host {host} listens on every interface: say which address peers reach this node "
            "at with --advertise-host HOST (this machine has no default route to take it from)"
        )
    return found


def _dialable(host: str) -> bool:
    from treedrive.transport.fields import WireError
    from treedrive.transport.fields import host as wire_host

    try:
        wire_host({"host": host})
    except WireError:
        return False
    return True


def default_route_address(ipv6: bool = False) -> str | None:
    """This machine's source address towards the internet (a UDP socket is connected to a
    documentation address: no packet is sent); None when there is no such route."""
    family, target = (socket.AF_INET6, "2001:db8::1") if ipv6 else (socket.AF_INET, "192.0.2.1")
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((target, 9))
            address = str(probe.getsockname()[0])
    except OSError:
        return None
    return None if is_wildcard(address) or address.startswith(("127.", "::1")) else address


LOW_SOURCES = (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
"""Where a setting comes from when the user did not choose it for this start (the default, or
the config file)."""


def kept_rates(
    ctx: click.Context, data_dir: Path, download_kib: float, upload_kib: float
) -> tuple[RateLimits, list[str]]:
    """The rate limits in bytes per second: a limit set by an option or its variable, else the
    one kept from the API (``limits.json``), else the config file's or the default. Also what
    to log: a kept limit that differs from the config file's."""
    kept = load_limits(data_dir)
    chosen = RateLimits(download_kib * 1024 or None, upload_kib * 1024 or None)
    if kept is None:
        return chosen, []
    notes: list[str] = []
    rates: dict[str, float | None] = {}
    for which, name in (("download", "max_download_rate"), ("upload", "max_upload_rate")):
        mine, theirs = getattr(chosen, which), getattr(kept, which)
        if ctx.get_parameter_source(name) not in (
            ParameterSource.DEFAULT,
            ParameterSource.DEFAULT_MAP,
        ):
            rates[which] = mine
            continue
        rates[which] = theirs
        if theirs != mine:
            notes.append(
                f"{which} rate limit {_rate(theirs)} kept from the API ({LIMITS_FILE}), not "
                f"{_rate(mine)}: PUT /api/limits to change it, or set --{name.replace('_', '-')}"
            )
    return RateLimits(**rates), notes


def _rate(value: float | None) -> str:
    return "none" if value is None else f"{value / 1024:g} KiB/s"


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


async def run_node(config: NodeConfig, with_shell: bool, log_file: LogFile | None = None) -> None:
    import asyncio

    from treedrive.app import AlreadyRunning, running_node, serve_until_stopped, stop_on_signals

    stop = asyncio.Event()
    # From the start: a signal while the node starts (its node.json may already be written) must
    # stop it cleanly once it is up, not cancel the start half-way (asyncio.run's own handler).
    stop_on_signals(stop)
    plan = log_file or LogFile()
    async with contextlib.AsyncExitStack() as stack:
        try:
            node = await stack.enter_async_context(
                running_node(config, on_locked=lambda: log_to_file(config.data_dir, plan))
            )
        except (AlreadyRunning, OSError, RuntimeError, StorageError) as exc:
            said = start_failure(exc)
            if said is None:
                raise
            if not isinstance(exc, AlreadyRunning):  # the log is this node's: say it there too
                log.error("the node did not start: %s", said, extra={"terminal": False})
            raise StartRefused(said) from None
        _banner(node)
        _unknown_plugin_tables(node)
        if with_shell:
            from treedrive.terminal import Console

            console = Console(node, stop, history=config.data_dir / "shell-history")
            console.start()
            stack.push_async_callback(console.close)  # before the node stops
        await serve_until_stopped(node, stop)


def _unknown_plugin_tables(node: Node) -> None:
    """One log line per ``[plugins.<name>]`` table of the config file that no loaded plugin is
    registered as (a misspelt name, a plugin not installed or disabled)."""
    loaded = {name for name, _ in node.plugins.names()}
    for name in sorted(set(node.config.extra) - loaded):
        if isinstance(node.config.extra[name], dict):
            log.warning(
                "config file: [plugins.%s] is not a loaded plugin's (treedrive plugins lists "
                "them): its settings are unused",
                name,
            )


def _banner(node: Node) -> None:
    """The dashboard's address, and where the node's data is (its log said where it listens).
    With the node's token only on a terminal: never into a journal or a log file, which say
    where the token is instead (``api-token`` in the data dir, readable by its owner only)."""
    config = node.config
    where = f"data: {config.data_dir}"
    if not node.http_url:
        click.echo(where, err=True)
        return
    bound = urllib.parse.urlsplit(node.http_url).port
    if config.http_port and bound != config.http_port:
        where = f"port {config.http_port} is taken; {where}"
    if not sys.stderr.isatty():
        token_file = config.data_dir / "api-token"
        click.echo(
            f"dashboard: {node.http_url} ({where}); log in with ?token= and {token_file}",
            err=True,
        )
        return
    token = (config.data_dir / "api-token").read_text().strip()
    click.echo(f"dashboard: {node.http_url}?token={token} ({where})", err=True)
