"""What every request passes through: the app's keys, the API token, the ``Host``/``Origin``
policy, the ``guard`` middleware that turns errors into JSON answers, and the helpers that read a
request's query and route."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from treedrive.core.errors import (
    AmbiguousId,
    FetchFailed,
    NodeError,
    NotFound,
    NotOwner,
    StorageError,
)
from treedrive.core.node import Node
from treedrive.web.hub import EventHub

log = logging.getLogger("treedrive.web.api")  # the name its log lines had before this module

TOKEN_FILE = "api-token"  # noqa: S105 (a file name, not a secret)
COOKIE = "treedrive_token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

NODE: web.AppKey[Node] = web.AppKey("node", Node)
HUB: web.AppKey[EventHub] = web.AppKey("hub")
TOKEN: web.AppKey[str] = web.AppKey("token", str)
HOSTS: web.AppKey[HostPolicy] = web.AppKey("hosts")


def load_token(data_dir: Path) -> str:
    """The node's API token, made at first start (readable by its owner only)."""
    path = data_dir / TOKEN_FILE
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


class HostPolicy:
    """Which ``Host`` (and ``Origin``) names the server answers to: its own address, loopback
    names, and when it listens on every interface, any IP literal. Names that are not this
    server's (a DNS-rebinding page, say) are refused."""

    def __init__(self) -> None:
        self.port: int | None = None
        self.names: set[str] = set()
        self.any_ip = False

    def bind(self, host: str, port: int) -> None:
        self.port = port
        self.any_ip = host in ("0.0.0.0", "::", "")
        self.names = {"127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host}

    def allows(self, value: str) -> bool:
        name, sep, port = value.rpartition(":")
        if not sep or port != str(self.port):
            return False
        if name in self.names:
            return True
        if self.any_ip:
            try:
                ipaddress.ip_address(name.strip("[]"))
            except ValueError:
                return False
            return True
        return False


class ApiError(Exception):
    """An error answer: JSON ``{"error": message, "status": status}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error(status: int, message: str) -> ApiError:
    return ApiError(status, message)


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


def _admit(request: web.Request) -> None:
    """Host/Origin checks, the token for state changes, a multipart body's boundary."""
    app = request.app
    host = request.headers.get("Host", "")
    if not app[HOSTS].allows(host):
        raise error(403, f"foreign Host {host!r} refused")
    origin = request.headers.get("Origin")
    if origin is not None and not app[HOSTS].allows(origin.split("://", 1)[-1]):
        raise error(403, f"foreign Origin {origin!r} refused")
    if request.method not in SAFE_METHODS:
        given = request.headers.get("Authorization", "")
        token = given[7:] if given.startswith("Bearer ") else request.cookies.get(COOKIE, "")
        if not token:
            raise error(401, "this request needs the node's API token")
        if not hmac.compare_digest(token.encode(), app[TOKEN].encode()):
            raise error(401, "wrong API token")
    if request.content_type.startswith("multipart/") and "boundary=" not in (
        request.headers.get("Content-Type", "").lower()
    ):
        raise error(400, "a multipart body needs a boundary (Content-Type: …; boundary=…)")


def _failure(request: web.Request, exc: Exception) -> web.Response:
    """The JSON answer to what a handler raised (500, logged, for the unexpected)."""
    if isinstance(exc, ApiError):
        return _json_error(exc.status, exc.message)
    if isinstance(exc, NotFound):
        return _json_error(404, str(exc))
    if isinstance(exc, AmbiguousId):
        return _json_error(409, str(exc))
    if isinstance(exc, NotOwner):
        return _json_error(403, str(exc))
    if isinstance(exc, FetchFailed):
        return _json_error(502, str(exc))
    if isinstance(exc, StorageError):
        return _json_error(507, str(exc))
    if isinstance(exc, NodeError):
        # this node's disk refused a write: 507
        return _json_error(507 if isinstance(exc.__cause__, OSError) else 400, str(exc))
    if isinstance(exc, HttpProcessingError):  # a malformed body part, read by a handler
        return _json_error(400, f"malformed request body ({type(exc).__name__})")
    if isinstance(exc, ValueError) and request.content_type.startswith("multipart/"):
        # aiohttp's multipart reader says "no starting boundary" and the like with ValueError
        return _json_error(400, "malformed multipart body")
    log.exception("%s %s failed", request.method, request.path, exc_info=exc)
    return _json_error(500, "internal error (see the node's log)")


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host/Origin checks, the token for state changes, JSON errors."""
    try:
        _admit(request)
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        answer = _json_error(exc.status, exc.reason)
        if "Allow" in exc.headers:  # a 405 says which methods the path takes (RFC 9110 15.5.6)
            answer.headers["Allow"] = exc.headers["Allow"]
        return answer
    except ConnectionError:
        raise  # the client left: nothing to answer, nothing to log
    except Exception as exc:
        return _failure(request, exc)


def _node(request: web.Request) -> Node:
    return request.app[NODE]


def _int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise error(400, f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise error(400, f"{name} must be between {lo} and {hi}")
    return value


def _file_id(request: web.Request) -> str:
    """The full id named by the route's ``{file_id}``: all 64 hex characters or a unique prefix
    of 8 or more (NotFound: 404, AmbiguousId: 409, each saying what to type)."""
    return _node(request).resolve_id(request.match_info["file_id"])


def _entry(node: Node, file_id: str) -> Any:
    entry = node.file(file_id)
    if entry is None:
        raise error(404, f"no file {file_id[:12]}… in the catalogue")
    return entry


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise error(400, f"{name} must be 1 or 0")
