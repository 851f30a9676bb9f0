"""The web plugin: runs the dashboard/API server on the node's own event loop and feeds the
event stream from the node's committed events. Registered through the ``treedrive`` entry-point
group, like any third-party plugin."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from treedrive.core.hookspecs import hookimpl

if TYPE_CHECKING:
    from aiohttp import web

    from treedrive.core.events import Event
    from treedrive.core.node import Node
    from treedrive.web.api import EventHub

# aiohttp and the app are imported when a node starts its server, so that loading this plugin
# (e.g. for its CLI commands) stays cheap.

log = logging.getLogger(__name__)


@dataclass
class _Server:
    runner: web.AppRunner
    hub: EventHub
    sampler: asyncio.Task[None]


_servers: dict[int, _Server] = {}


@hookimpl
async def treedrive_startup(node: Node) -> None:
    port = node.config.http_port
    if port is None:
        return
    from aiohttp import web

    from treedrive.web.api import HUB, HostPolicy, load_token, make_app

    token = load_token(node.config.data_dir)
    hosts = HostPolicy()
    app = make_app(node, token, hosts)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, node.config.http_host, port).start()
    except OSError:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    host = node.config.http_host
    hosts.bind(host, bound)  # the port is known only once bound
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    node.http_url = f"http://{shown}:{bound}/"
    hub = app[HUB]
    _servers[id(node)] = _Server(runner, hub, asyncio.ensure_future(hub.run_sampler()))
    log.info("dashboard on %s", node.http_url)


@hookimpl
async def treedrive_shutdown(node: Node) -> None:
    server = _servers.pop(id(node), None)
    if server is None:
        return
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
def treedrive_cli_commands() -> Sequence[Any]:
    from treedrive.web.commands import COMMANDS

    return COMMANDS
