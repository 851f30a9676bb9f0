"""The aiohttp application: dashboard, ``/stats.json``, the JSON API and the event stream.

Safety: it listens on 127.0.0.1 unless told otherwise; a request whose ``Host`` is not this
server's (DNS rebinding) or whose ``Origin`` is foreign is refused; every request that changes
state needs the node's API token (header ``Authorization: Bearer …``, or the cookie the dashboard
gets from ``/?token=…``); uploads are capped; errors are JSON ``{"error": …, "status": …}``
(507 when this node's disk is full, 500 with the details in the log for anything unexpected).
The file routes are in :mod:`treedrive.web.files`, that guard and the request helpers in
:mod:`treedrive.web.guard`, the event hub in :mod:`treedrive.web.hub`; this module holds the
other routes and the route table (:func:`make_app`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from pathlib import Path
from typing import Any

from aiohttp import web

from treedrive.core.node import Node
from treedrive.web import views
from treedrive.web.files import (
    MAX_PAGE,
    content,
    content_disposition,
    fetch,
    files,
    one_file,
    remove,
    upload,
)
from treedrive.web.guard import (
    COOKIE,
    HOSTS,
    HUB,
    NODE,
    SAFE_METHODS,
    TOKEN,
    TOKEN_FILE,
    ApiError,
    HostPolicy,
    _int,
    _node,
    error,
    guard,
    load_token,
)
from treedrive.web.hub import EventHub

__all__ = [  # what moved out of this module is still importable from it
    "COOKIE",
    "HOSTS",
    "HUB",
    "MAX_PAGE",
    "NODE",
    "SAFE_METHODS",
    "TOKEN",
    "TOKEN_FILE",
    "ApiError",
    "EventHub",
    "HostPolicy",
    "content",
    "content_disposition",
    "error",
    "fetch",
    "files",
    "guard",
    "load_token",
    "make_app",
    "one_file",
    "remove",
    "upload",
]

STATIC = Path(__file__).parent / "static"
QUEUE_SIZE = 1000
HEARTBEAT = 15.0


# -- pages -------------------------------------------------------------------------------------
async def index(request: web.Request) -> web.StreamResponse:
    token = request.query.get("token")
    if token is not None:
        if not hmac.compare_digest(token.encode(), request.app[TOKEN].encode()):
            raise error(401, "wrong API token")
        # Trade the token in the URL for a cookie and drop it from the address bar.
        found = web.HTTPFound("/")
        found.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
        raise found
    page = web.FileResponse(STATIC / "index.html")
    page.headers["Cache-Control"] = "no-store"
    return page


async def stats(request: web.Request) -> web.Response:
    # The whole catalogue: built in a worker thread so the node keeps serving meanwhile.
    body = await asyncio.to_thread(lambda: json.dumps(views.stats_json(_node(request))))
    return web.Response(text=body, content_type="application/json")


# -- API ---------------------------------------------------------------------------------------
async def status(request: web.Request) -> web.Response:
    data = views.status_json(_node(request))
    given = request.headers.get("Authorization", "")
    token = given[7:] if given.startswith("Bearer ") else request.cookies.get(COOKIE, "")
    data["authorized"] = hmac.compare_digest(token.encode(), request.app[TOKEN].encode())
    return web.json_response(data)


async def peers(request: web.Request) -> web.Response:
    """The tracked peers by id: all of them, or ``limit`` from ``offset``; ``total`` counts all."""
    offset = _int(request, "offset", 0, 0, 10**9)
    limit = _int(request, "limit", 0, 1, 10**6) if "limit" in request.query else None
    total, page = _node(request).reads.peers(offset, limit)
    return web.json_response({"peers": [views.peer_json(p) for p in page], "total": total})


async def forget_key(request: web.Request) -> web.Response:
    """Forget the key pinned to a peer id (the user accepts its new key on purpose)."""
    peer_id = request.match_info["peer_id"]
    _node(request).forget_key(peer_id)
    return web.json_response({"peer_id": peer_id, "forgotten": True})


async def transfers(request: web.Request) -> web.Response:
    node = _node(request)
    recent = [
        {
            "transfer_id": t.id,
            "file_id": t.file_id,
            "direction": t.direction,
            "peer_id": t.peer_id,
            "state": t.state,
            "bytes_done": t.bytes_done,
            "bytes_total": t.bytes_total,
            "started_at": t.started_at,
            "updated_at": t.updated_at,
            "error": t.error,
        }
        for t in node.reads.recent_transfers()
    ]
    active = [views.transfer_json(t) for t in node.active_transfers.values()]
    return web.json_response({"active": active, "recent": recent})


async def limits(request: web.Request) -> web.Response:
    """The rate limits (bytes per second, null: none); PUT changes them."""
    node = _node(request)
    if request.method == "PUT":
        try:
            body = await request.json()
        except ValueError:
            raise error(400, "the body must be JSON") from None
        if not isinstance(body, dict):
            raise error(400, "the body must be a JSON object")
        current = dict(zip(("download", "upload"), node.rate_limits, strict=True))
        for key in ("download", "upload"):
            if key in body:
                value = body[key]
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, int | float) or value < 0
                ):
                    raise error(400, f"{key} must be bytes per second (a number ≥ 0) or null")
                current[key] = value or None
        node.set_rate_limits(current["download"], current["upload"])
    download, upload = node.rate_limits
    return web.json_response({"download": download, "upload": upload})


async def throughput(request: web.Request) -> web.Response:
    return web.json_response({"samples": list(request.app[HUB].throughput)})


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: every committed change, as JSON, as it happens."""
    hub = request.app[HUB]
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUE_SIZE)
    hub.clients.add(queue)
    try:
        await resp.write(b"retry: 2000\n\n")
        hello = {"type": "Hello", "status": views.status_json(hub.node)}
        await resp.write(f"data: {json.dumps(hello)}\n\n".encode())
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), HEARTBEAT)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            if item is None:
                break
            await resp.write(f"data: {json.dumps(item)}\n\n".encode())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        hub.clients.discard(queue)
    return resp


def make_app(node: Node, token: str, hosts: HostPolicy) -> web.Application:
    """The app; ``hosts`` (``host:port`` names it answers to) may be filled in after binding."""
    app = web.Application(middlewares=[guard], client_max_size=node.config.max_upload + 1)
    app[NODE] = node
    app[HUB] = EventHub(node)
    app[TOKEN] = token
    app[HOSTS] = hosts
    app.router.add_get("/", index)
    app.router.add_get("/stats.json", stats)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/peers", peers)
    app.router.add_delete("/api/peers/{peer_id}/key", forget_key)
    app.router.add_get("/api/files", files)
    app.router.add_post("/api/files", upload)
    app.router.add_get("/api/files/{file_id}", one_file)
    app.router.add_delete("/api/files/{file_id}", remove)
    app.router.add_post("/api/files/{file_id}/fetch", fetch)
    app.router.add_get("/api/files/{file_id}/content", content)
    app.router.add_get("/api/transfers", transfers)
    app.router.add_get("/api/throughput", throughput)
    app.router.add_get("/api/limits", limits)
    app.router.add_put("/api/limits", limits)
    app.router.add_get("/api/events", events)
    app.router.add_static("/static/", STATIC)
    return app
