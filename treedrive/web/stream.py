"""The event stream (``GET /api/v1/events``): server-sent events, each with an ``id:`` (increasing
over the node's run), an ``event:`` line (its type) and its JSON ``data:``.

A client that comes back with ``Last-Event-ID`` (the header ``EventSource`` sends by itself on a
reconnection, or ``?last_event_id=``) first gets the events it missed, from the hub's
:data:`~treedrive.web.hub.REPLAY` latest; if some of them are no longer kept (or the id is from
an earlier run of the node), a ``Resync`` event says so first, and the client reloads its view.
``?types=A,B`` sends only events of those types (``Hello`` and ``Resync`` always come).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Final

from aiohttp import web

from treedrive.web import views
from treedrive.web.guard import HUB, error
from treedrive.web.hub import Queue, Sent, control

QUEUE_SIZE: Final = 1000
HEARTBEAT: Final = 15.0
ALWAYS: Final = frozenset({"Hello", "Resync"})
"""Sent whatever ``types=`` says: they concern the stream itself."""
MAX_TYPES: Final = 32
TYPE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


def wanted_types(request: web.Request) -> frozenset[str] | None:
    """The ``types=`` filter (None: every type); 400 for a malformed one."""
    raw = request.query.get("types")
    if raw is None:
        return None
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if not names or len(names) > MAX_TYPES or not all(TYPE_NAME.fullmatch(n) for n in names):
        raise error(400, f"types must be 1 to {MAX_TYPES} event type names, comma-separated")
    return frozenset(names)


def last_event_id(request: web.Request) -> int | None:
    """``Last-Event-ID`` (the header, else ``?last_event_id=``); None if neither is given."""
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 20:
        raise error(400, "Last-Event-ID must be an event id (a non-negative integer)")
    return int(raw)


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: every committed change and notice, as it happens."""
    hub = request.app[HUB]
    types = wanted_types(request)
    last = last_event_id(request)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    queue: Queue = asyncio.Queue(QUEUE_SIZE)
    # Subscribed and the missed events taken in the same step of the loop: none falls between.
    hub.clients.add(queue)
    missed = [] if last is None else hub.since(last)

    def wanted(sent: Sent) -> bool:
        return types is None or sent.type in types or sent.type in ALWAYS

    try:
        await resp.write(b"retry: 2000\n\n")
        hello = {"type": "Hello", "status": views.status_json(hub.node)}
        await resp.write(control(hello).frame())
        if missed is None:
            gap = {
                "type": "Resync",
                "time": time.time(),
                "reason": f"events after {last} are no longer kept: reload the view",
                "oldest_id": hub.recent[0].id if hub.recent else None,
            }
            await resp.write(control(gap).frame())
            missed = []
        for sent in missed:
            if wanted(sent):
                await resp.write(sent.frame())
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), HEARTBEAT)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            if item is None:
                break
            if wanted(item):
                await resp.write(item.frame())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        hub.clients.discard(queue)
    return resp
