"""The aiohttp application: dashboard, ``/stats.json``, the JSON API and the event stream.

Safety: it listens on 127.0.0.1 unless told otherwise; a request whose ``Host`` is not this
server's (DNS rebinding) or whose ``Origin`` is foreign is refused; every request that changes
state needs the node's API token (header ``Authorization: Bearer …``, or the cookie the dashboard
gets from ``/?token=…``); uploads are capped; errors are JSON ``{"error": …, "status": …}``
(507 when this node's disk is full, 500 with the details in the log for anything unexpected).
The file routes are in :mod:`treedrive.web.files`, that guard and the request helpers in
:mod:`treedrive.web.guard`, the event hub in :mod:`treedrive.web.hub` and the stream in
:mod:`treedrive.web.stream`, health and metrics in :mod:`treedrive.web.monitor`, the route table
in :mod:`treedrive.web.routes`; this module holds the other routes.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from pathlib import Path

from aiohttp import web

from treedrive.core.node import Node
from treedrive.persisted import keep_limits
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
from treedrive.web.stream import HEARTBEAT, QUEUE_SIZE, events

__all__ = [  # what moved out of this module is still importable from it
    "COOKIE",
    "HEARTBEAT",
    "HOSTS",
    "HUB",
    "MAX_PAGE",
    "NODE",
    "QUEUE_SIZE",
    "SAFE_METHODS",
    "TOKEN",
    "TOKEN_FILE",
    "ApiError",
    "EventHub",
    "HostPolicy",
    "content",
    "content_disposition",
    "error",
    "events",
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


STATS_PAGE = 200
"""Catalogue entries read and written out at a time for ``/stats.json``."""
STATS_SLOTS: web.AppKey[asyncio.Semaphore] = web.AppKey("stats_slots", asyncio.Semaphore)
"""``/stats.json`` answers built at once (each holds a database snapshot and a worker thread)."""


def stats_body(node: Node) -> bytes:
    """``/stats.json`` from one snapshot, read and written out a page at a time: no single step
    holds the GIL for long (one ``json.dumps`` of the whole catalogue held it for tens of ms, and
    the event loop, answering ``/api/health``, waited for it)."""
    with node.reads.paged(STATS_PAGE) as (peers, pages):
        head = {"peerId": node.peer_id, "peers": [views.stats_peer(p) for p in peers]}
        parts = [json.dumps(head)[:-1], ', "files": [']
        for page in pages:
            if len(parts) > 2:
                parts.append(", ")
            parts.append(", ".join(json.dumps(views.stats_file(node, e)) for e in page))
    parts.append("]}")
    return "".join(parts).encode()


async def stats(request: web.Request) -> web.Response:
    """The whole catalogue, built in a worker thread so the node keeps serving meanwhile."""
    node = _node(request)
    async with request.app[STATS_SLOTS]:
        body = await asyncio.to_thread(stats_body, node)
    return web.Response(body=body, content_type="application/json")


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
        keep_limits(node.config.data_dir, *node.rate_limits)  # for the next start
    download, upload = node.rate_limits
    return web.json_response({"download": download, "upload": upload})


async def throughput(request: web.Request) -> web.Response:
    return web.json_response({"samples": list(request.app[HUB].throughput)})


def make_app(node: Node, token: str, hosts: HostPolicy) -> web.Application:
    """The app (built from the route table, :mod:`treedrive.web.routes`); ``hosts``
    (``host:port`` names it answers to) may be filled in after binding."""
    from treedrive.web.routes import build_app  # the table names this module's handlers

    return build_app(node, token, hosts)
