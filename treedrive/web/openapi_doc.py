"""The OpenAPI 3.1 document of the API, made from the route table
(:data:`treedrive.web.routes.ROUTES`) and served at ``/api/v1/openapi.json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from treedrive.web import monitor

if TYPE_CHECKING:
    from treedrive.web.routes import Route

Schema = dict[str, Any]

DOCUMENT: web.AppKey[bytes] = web.AppKey("openapi", bytes)

NULLABLE_RATE: Final = {"type": ["number", "null"], "minimum": 0}
ERROR: Final = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
ERROR_STATUSES: Final = {
    "400": "Bad request (a parameter or the body)",
    "401": "This request needs the node's API token",
    "403": "Foreign Host or Origin, or not this node's file",
    "404": "No such file or peer",
    "409": "The id prefix names more than one file",
    "413": "The upload is over the cap",
    "422": "Push by path: this node cannot read that file (send its bytes instead)",
    "502": "No holder gave the file",
    "507": "This node's disk is full",
}

COMPONENTS: Final[Schema] = {
    "securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer", "description": "The node's API token"},
        "cookie": {"type": "apiKey", "in": "cookie", "name": "treedrive_token"},
    },
    "schemas": {
        "Error": {
            "type": "object",
            "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
            "required": ["error", "status"],
        },
        "Health": {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["ok", "stopping"]},
                "version": {"type": "string"},
                "peer_id": {"type": "string"},
                "uptime_s": {"type": "number"},
            },
            "required": ["status", "version", "peer_id", "uptime_s"],
        },
        "Status": {
            "type": "object",
            "properties": {
                "peer_id": {"type": "string"},
                "counts": {"type": "object"},
                "transfers": {"type": "integer"},
                "authorized": {"type": "boolean"},
            },
            "required": ["peer_id", "counts"],
        },
        "Peer": {
            "type": "object",
            "properties": {
                "peer_id": {"type": "string"},
                "host": {"type": "string"},
                "port": {"type": "integer"},
                "treedrive": {"type": "boolean"},
                "features": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["peer_id", "host", "port"],
        },
        "Peers": {
            "type": "object",
            "properties": {
                "peers": {"type": "array", "items": {"$ref": "#/components/schemas/Peer"}}
            },
            "required": ["peers"],
        },
        "File": {
            "type": "object",
            "properties": {
                "file_id": {"type": "string"},
                "file_name": {"type": "string"},
                "display_name": {"type": "string"},
                "size_bytes": {"type": ["integer", "null"]},
                "file_owner": {"type": "string"},
                "has_copy": {"type": "boolean"},
                "holders": {"type": "array", "items": {"type": "string"}},
                "mine": {"type": "boolean"},
            },
            "required": ["file_id", "file_name", "has_copy"],
        },
        "FilePage": {
            "type": "object",
            "properties": {
                "scope": {"type": "string"},
                "total": {"type": "integer"},
                "offset": {"type": "integer"},
                "limit": {"type": "integer"},
                "files": {"type": "array", "items": {"$ref": "#/components/schemas/File"}},
            },
            "required": ["scope", "total", "offset", "limit", "files"],
        },
        "Stats": {
            "type": "object",
            "properties": {
                "peerId": {"type": "string"},
                "peers": {"type": "array", "items": {"type": "object"}},
                "files": {"type": "array", "items": {"type": "object"}},
            },
            "required": ["peerId", "peers", "files"],
        },
        "Transfers": {
            "type": "object",
            "properties": {
                "active": {"type": "array", "items": {"type": "object"}},
                "recent": {"type": "array", "items": {"type": "object"}},
            },
            "required": ["active", "recent"],
        },
        "PushByPath": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "Absolute path of a regular file"},
                "name": {"type": "string", "description": "Name to share it under"},
                "force": {"type": "boolean", "description": "Push again bytes held here"},
                "id": {
                    "type": "string",
                    "pattern": "^[A-Za-z0-9_-]{1,64}$",
                    "description": "Names the push for GET /pushes/{push_id}",
                },
                "expect": {
                    "type": "object",
                    "description": "The file meant, as stat says: another there is a 422",
                    "properties": {
                        k: {"type": "integer", "minimum": 0}
                        for k in ("dev", "ino", "size", "mtime_ns")
                    },
                    "required": ["dev", "ino", "size", "mtime_ns"],
                },
            },
            "required": ["path"],
        },
        "PushProgress": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "bytes_done": {"type": "integer"},
                "bytes_total": {"type": "integer"},
            },
            "required": ["id", "bytes_done", "bytes_total"],
        },
        "Limits": {
            "type": "object",
            "properties": {"download": NULLABLE_RATE, "upload": NULLABLE_RATE},
        },
    },
}


def _schema(value: Schema | str | None) -> Schema:
    return {"type": "object"} if value is None else value if isinstance(value, dict) else {}


def operation(route: Route) -> Schema:
    status, content_type, schema = route.ok
    op: Schema = {
        "operationId": f"{route.method.lower()}_{route.full_path.strip('/') or 'index'}".replace(
            "/", "_"
        )
        .replace("{", "")
        .replace("}", "")
        .replace(".", "_"),
        "summary": route.summary,
        "tags": [route.tag],
        "responses": {
            str(status): {
                "description": "OK",
                "content": {content_type: {"schema": _schema(schema)}},
            },
            **{
                code: {
                    "description": text,
                    "content": ERROR,
                }
                for code, text in ERROR_STATUSES.items()
            },
        },
    }
    if route.method == "POST" and route.path in ("/files", "/pushes"):
        op["responses"]["200"] = {
            "description": "This node already holds these bytes (existing: true)",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/File"}}},
        }
    if route.path == "/" and not route.versioned:
        op["responses"]["302"] = {"description": "The token became a cookie: go to /"}
    if route.path == "/health":
        op["responses"]["503"] = {
            "description": "The node is stopping",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
        }
    if route.params:
        op["parameters"] = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.required,
                "description": p.description,
                "schema": p.schema,
            }
            for p in route.params
        ]
    if route.body:
        op["requestBody"] = {
            "required": True,
            "content": {kind: {"schema": s} for kind, s in route.body.items()},
        }
    if route.token:
        op["security"] = [{"bearer": []}, {"cookie": []}]
    return op


def document(routes: Sequence[Route]) -> bytes:
    """The OpenAPI 3.1 document of ``routes``, as JSON bytes."""
    paths: dict[str, Schema] = {}
    for route in routes:
        paths.setdefault(route.full_path, {})[route.method.lower()] = operation(route)
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "TreeDrive node API",
            "version": monitor.VERSION,
            "description": (
                "The HTTP API of one TreeDrive node. Reads need no token; a request that "
                "changes state needs the node's API token (Authorization: Bearer …, or the "
                "dashboard's cookie). Every /api/v1/… path is also served at /api/…, its "
                "unversioned alias. Errors are JSON {error, status}."
            ),
        },
        "paths": paths,
        "components": COMPONENTS,
    }
    return json.dumps(doc, indent=1).encode()


async def serve(request: web.Request) -> web.Response:
    return web.Response(body=request.app[DOCUMENT], content_type="application/json")
