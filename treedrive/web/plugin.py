"""The web plugin: runs the dashboard/API server on the node's own event loop and feeds the
event stream from the node's committed events and its transient notices. Registered through the
``treedrive`` entry-point group, like any third-party plugin."""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from treedrive.core.hookspecs import hookimpl

if TYPE_CHECKING:
    import asyncio

    from aiohttp import web

    from treedrive.core.events import Event, Notice
    from treedrive.core.node import Node
    from treedrive.web.api import EventHub

# asyncio, aiohttp and the app are imported when a node starts its server, so that loading this
# plugin (e.g. for its CLI commands: ``treedrive push`` starts faster) stays cheap.

log = logging.getLogger(__name__)


MAX_CONNECTIONS = "http_max_connections"
"""``NodeConfig.extra`` key: open HTTP connections at most (default 256)."""
HEAD_TIMEOUT = "http_head_timeout"
"""``NodeConfig.extra`` key: seconds a connection may take to send a request head (default 10)."""

T = TypeVar("T", int, float)


def _setting(extra: Mapping[str, Any], key: str, default: T, kind: type[T]) -> T:
    """A positive number from ``NodeConfig.extra``; the default (and a warning) if it is not."""
    raw = extra.get(key)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except (TypeError, ValueError):  # TOML may give a list or a table
        pass
    else:
        if value > 0:
            return value
    log.warning("%s=%r is not a positive number: %s used", key, raw, default)
    return default


@dataclass
class _Server:
    runner: web.AppRunner
    hub: EventHub
    sampler: asyncio.Task[None]


_servers: dict[int, _Server] = {}
_failures: dict[int, OSError] = {}


@hookimpl
async def treedrive_startup(node: Node) -> None:
    port = node.config.http_port
    if port is None:
        return
    import asyncio

    from aiohttp import web

    from treedrive.web import admission
    from treedrive.web.api import HUB, HostPolicy, load_token, make_app
    from treedrive.web.monitor import MONITOR

    token = load_token(node.config.data_dir)
    hosts = HostPolicy()
    app = make_app(node, token, hosts)
    extra = {**node.config.extra, **node.config.plugin_settings("web")}  # [plugins.web]
    cap = _setting(extra, MAX_CONNECTIONS, admission.MAX_CONNECTIONS, int)
    budget = admission.fd_budget()
    if cap > budget:
        log.warning(
            "HTTP connections capped at %d, not %d: a quarter of the open files limit", budget, cap
        )
        cap = budget
    head = _setting(extra, HEAD_TIMEOUT, admission.HEAD_TIMEOUT, float)
    admission.mark_streams(app)  # event streams hold at most half the cap
    admission.quiet_server_log()  # a bad request: one short line a second at most
    app.middlewares.insert(0, admission.close_after_refusal)  # outermost: sees the guard's 401
    # keepalive_timeout: aiohttp's own idle timer, the same deadline (the admission enforces it
    # for heads that never complete, whatever the aiohttp version).
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, keepalive_timeout=head)
    await runner.setup()
    host = node.config.http_host
    failure: OSError | None = None
    for candidate in candidate_ports(port, node.config.http_port_fallback):
        site = admission.AdmittingSite(runner, host, candidate, cap, head)
        try:
            await site.start()
        except OSError as exc:
            await site.stop()  # unregisters it from the runner
            failure = exc
            if exc.errno != errno.EADDRINUSE:
                break
            continue
        failure = None
        break
    if failure is not None:
        _failures[id(node)] = failure  # the node's start says why, in one line
        await runner.cleanup()
        return
    app[MONITOR].admission = site.admission  # its refusals show in /metrics
    bound = runner.addresses[0][1]
    hosts.bind(host, bound)  # the port is known only once bound
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    node.http_url = f"http://{shown}:{bound}/"
    hub = app[HUB]
    _servers[id(node)] = _Server(runner, hub, asyncio.ensure_future(hub.run_sampler()))
    taken = f" (port {port} is taken)" if port and bound != port else ""
    # The CLI prints the address on the terminal (with the token): this line is for the log.
    log.info("dashboard on %s%s", node.http_url, taken, extra={"terminal": False})


FALLBACK_PORTS = 9
"""A default port that is taken: the next ports tried before any free one."""


def candidate_ports(port: int, fallback: bool) -> list[int]:
    """``port``; with ``fallback``, then the next few ports, then 0 (any free port)."""
    if not fallback or port == 0:
        return [port]
    return [port, *range(port + 1, min(port + 1 + FALLBACK_PORTS, 65536)), 0]


def startup_error(node: Node) -> OSError | None:
    """Why the dashboard of ``node`` could not listen (its start then fails), once."""
    return _failures.pop(id(node), None)


@hookimpl
async def treedrive_shutdown(node: Node) -> None:
    server = _servers.pop(id(node), None)
    if server is None:
        return
    import asyncio

    server.sampler.cancel()
    server.hub.close()
    with contextlib.suppress(asyncio.CancelledError):
        await server.sampler
    await server.runner.cleanup()


@hookimpl
def treedrive_on_event(node: Node, event: Event) -> None:
    server = _servers.get(id(node))
    if server is not None:
        server.hub.on_event(event)


@hookimpl
def treedrive_on_notice(node: Node, notice: Notice) -> None:
    server = _servers.get(id(node))
    if server is not None:
        server.hub.on_notice(notice)


@hookimpl
def treedrive_cli_commands() -> Sequence[Any]:
    from treedrive.web.commands import COMMANDS

    return COMMANDS
