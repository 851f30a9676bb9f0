"""The route table: every route of the app, with what its OpenAPI description needs. The app
(:func:`build_app`) and the document (:mod:`treedrive.web.openapi`) are both made from it, so
they cannot drift apart.

API routes live under ``/api/v1``; each is also served at its unversioned path (``/api/…``), the
paths the API had before it had a version (kept as aliases, not in the document). ``/``,
``/stats.json`` and ``/metrics`` are not versioned (the seed and Prometheus name them).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from treedrive.core.node import Node
from treedrive.web import api, files, monitor, openapi_doc, pathpush, stream
from treedrive.web.guard import HOSTS, HUB, NODE, SAFE_METHODS, TOKEN, Handler, HostPolicy, guard
from treedrive.web.hub import EventHub

V1: Final = "/api/v1"
ALIAS: Final = "/api"

Schema = dict[str, Any]


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "query", "path" or "header"
    schema: Schema
    description: str
    required: bool = False


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    """Under ``/api/v1`` for an API route (``versioned``), else the whole path."""
    handler: Handler
    summary: str
    ok: tuple[int, str, Schema | None] = (200, "application/json", None)
    """The success answer: status, content type, schema (a ``$ref`` name or a schema)."""
    params: tuple[Param, ...] = ()
    body: dict[str, Schema] = field(default_factory=dict)
    """The request body's schema by content type (none: no body)."""
    versioned: bool = True
    tag: str = "api"

    @property
    def token(self) -> bool:
        """Whether the route needs the node's API token (it changes state)."""
        return self.method not in SAFE_METHODS

    @property
    def full_path(self) -> str:
        return V1 + self.path if self.versioned else self.path

    @property
    def paths(self) -> list[str]:
        """Every path the app serves this route at (the versioned one first)."""
        return [self.full_path, ALIAS + self.path] if self.versioned else [self.path]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


FILE_ID = Param(
    "file_id",
    "path",
    {"type": "string"},
    "The file's id: its 64 hex characters, or a unique prefix of 8 or more.",
    required=True,
)
SCOPE = Param(
    "scope",
    "query",
    {"type": "string", "enum": ["local", "remote", "both"], "default": "both"},
    "Which files: held here (local), known elsewhere only (remote), or both.",
)
OFFSET = Param(
    "offset",
    "query",
    {"type": "integer", "minimum": 0, "maximum": 10**9, "default": 0},
    "Entries to skip.",
)
LIMIT = Param(
    "limit",
    "query",
    {"type": "integer", "minimum": 1, "maximum": files.MAX_PAGE, "default": 50},
    "Entries at most.",
)
FLAG = {"type": "string", "enum": ["0", "1", "true", "false", "yes", "no"]}

ROUTES: Final = (
    Route(
        "GET",
        "/",
        api.index,
        "The dashboard (HTML); ?token= trades the token for a cookie.",
        ok=(200, "text/html", {"type": "string"}),
        versioned=False,
        tag="dashboard",
        params=(Param("token", "query", {"type": "string"}, "The API token, once."),),
    ),
    Route(
        "GET",
        "/stats.json",
        api.stats,
        "The whole catalogue and the peers (the seed's shape).",
        ok=(200, "application/json", ref("Stats")),
        versioned=False,
        tag="seed",
    ),
    Route(
        "GET",
        "/metrics",
        monitor.metrics,
        "Prometheus metrics (text format 0.0.4); no token.",
        ok=(200, "text/plain", {"type": "string"}),
        versioned=False,
        tag="monitoring",
    ),
    Route(
        "GET",
        "/health",
        monitor.health,
        "Alive and serving (no token, no database access).",
        ok=(200, "application/json", ref("Health")),
        tag="monitoring",
    ),
    Route(
        "GET",
        "/openapi.json",
        openapi_doc.serve,
        "This document (OpenAPI 3.1).",
        ok=(200, "application/json", {"type": "object"}),
        tag="monitoring",
    ),
    Route(
        "GET",
        "/status",
        api.status,
        "The node: identity, counts, problems.",
        ok=(200, "application/json", ref("Status")),
    ),
    Route(
        "GET",
        "/peers",
        api.peers,
        "The peers this node tracks.",
        ok=(200, "application/json", ref("Peers")),
    ),
    Route(
        "DELETE",
        "/peers/{peer_id}/key",
        api.forget_key,
        "Forget the key pinned to a peer id (the owner accepts its new key).",
        params=(Param("peer_id", "path", {"type": "string"}, "The peer id.", required=True),),
        ok=(200, "application/json", {"type": "object"}),
    ),
    Route(
        "GET",
        "/files",
        files.files,
        "One page of the catalogue.",
        ok=(200, "application/json", ref("FilePage")),
        params=(SCOPE, OFFSET, LIMIT),
    ),
    Route(
        "POST",
        "/files",
        files.upload,
        "Push a file: the raw body with ?name=, or a multipart form's 'file' field (201; 200 "
        "with existing: true if this node already holds these bytes, unless ?force=1).",
        ok=(201, "application/json", ref("File")),
        params=(
            Param("name", "query", {"type": "string"}, "The file's name (raw body)."),
            Param("force", "query", FLAG, "Push again bytes this node already holds."),
        ),
        body={
            "application/octet-stream": {"type": "string", "format": "binary"},
            "multipart/form-data": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            },
        },
    ),
    Route(
        "POST",
        "/pushes",
        pathpush.push,
        "Push a file on the node's own machine by its path: the node reads it itself (only from "
        "a loopback client running as the node's user, token in the Authorization header). "
        "Answers as POST /files; 403 or 422: the node cannot take it so, send the bytes instead; "
        "409: the file changed while it was read.",
        ok=(201, "application/json", ref("File")),
        body={"application/json": ref("PushByPath")},
    ),
    Route(
        "GET",
        "/pushes/{push_id}",
        pathpush.progress,
        "How far the node has read the file of a push by path under way (404: none runs).",
        ok=(200, "application/json", ref("PushProgress")),
        params=(
            Param(
                "push_id",
                "path",
                {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                "The id the push by path was given.",
                required=True,
            ),
        ),
    ),
    Route(
        "GET",
        "/files/{file_id}",
        files.one_file,
        "One catalogue entry.",
        ok=(200, "application/json", ref("File")),
        params=(FILE_ID,),
    ),
    Route(
        "DELETE",
        "/files/{file_id}",
        files.remove,
        "Delete a file this node owns, here and everywhere.",
        ok=(200, "application/json", {"type": "object"}),
        params=(FILE_ID,),
    ),
    Route(
        "POST",
        "/files/{file_id}/fetch",
        files.fetch,
        "Fetch a file from a holder, verify and store it.",
        ok=(200, "application/json", ref("File")),
        params=(FILE_ID,),
    ),
    Route(
        "GET",
        "/files/{file_id}/content",
        files.content,
        "The bytes of a file held here.",
        ok=(200, "application/octet-stream", {"type": "string", "format": "binary"}),
        params=(FILE_ID,),
    ),
    Route(
        "GET",
        "/transfers",
        api.transfers,
        "Transfers under way and the latest ones.",
        ok=(200, "application/json", ref("Transfers")),
    ),
    Route(
        "GET",
        "/throughput",
        api.throughput,
        "Bytes per second, one sample a second.",
        ok=(200, "application/json", {"type": "object"}),
    ),
    Route(
        "GET",
        "/limits",
        api.limits,
        "The rate limits (bytes per second; null: none).",
        ok=(200, "application/json", ref("Limits")),
    ),
    Route(
        "PUT",
        "/limits",
        api.limits,
        "Change the rate limits (the keys given).",
        ok=(200, "application/json", ref("Limits")),
        body={"application/json": ref("Limits")},
    ),
    Route(
        "GET",
        "/events",
        stream.events,
        "Server-sent events: id:, event: (the type) and data: (JSON) lines; resumes after "
        "Last-Event-ID.",
        ok=(200, "text/event-stream", {"type": "string"}),
        params=(
            Param(
                "types",
                "query",
                {"type": "string"},
                "Only these event types, comma-separated (Hello and Resync always come).",
            ),
            Param(
                "Last-Event-ID",
                "header",
                {"type": "string", "pattern": "^[0-9]{1,20}$"},
                "Resume after this event id (EventSource sends it by itself).",
            ),
            Param(
                "last_event_id",
                "query",
                {"type": "string", "pattern": "^[0-9]{1,20}$"},
                "The same as Last-Event-ID, for clients that cannot set headers.",
            ),
        ),
        tag="events",
    ),
)


def build_app(node: Node, token: str, hosts: HostPolicy) -> web.Application:
    """The app; ``hosts`` (``host:port`` names it answers to) may be filled in after binding."""
    app = web.Application(middlewares=[guard], client_max_size=node.config.max_upload + 1)
    app[NODE] = node
    app[HUB] = EventHub(node)
    app[TOKEN] = token
    app[HOSTS] = hosts
    app[monitor.MONITOR] = monitor.Monitor()
    app[api.STATS_SLOTS] = asyncio.Semaphore(2)
    app[pathpush.PUSHES] = {}
    app[openapi_doc.DOCUMENT] = openapi_doc.document(ROUTES)
    for route in ROUTES:
        for path in route.paths:
            if route.method == "GET":
                app.router.add_get(path, route.handler)  # and HEAD
            else:
                app.router.add_route(route.method, path, route.handler)
    app.router.add_static("/static/", api.STATIC)
    return app
