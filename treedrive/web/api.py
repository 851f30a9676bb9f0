"""The aiohttp application: dashboard, ``/stats.json``, the JSON API and the event stream.

Safety: it listens on 127.0.0.1 unless told otherwise; a request whose ``Host`` is not this
server's (DNS rebinding) or whose ``Origin`` is foreign is refused; every request that changes
state needs the node's API token (header ``Authorization: Bearer …``, or the cookie the dashboard
gets from ``/?token=…``); uploads are capped; errors are JSON ``{"error": …, "status": …}``
(507 when this node's disk is full, 500 with the details in the log for anything unexpected).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import BodyPartReader, web

from treedrive.core.errors import (
    AmbiguousId,
    FetchFailed,
    NodeError,
    NotFound,
    NotOwner,
    StorageError,
)
from treedrive.core.events import Event, Notice, TransferFinished
from treedrive.core.names import safe_name
from treedrive.core.node import Node
from treedrive.web import views
from treedrive.web.body import OverCap, detachable, receive_raw, write_chunks

log = logging.getLogger(__name__)

TOKEN_FILE = "api-token"  # noqa: S105 (a file name, not a secret)
COOKIE = "treedrive_token"
STATIC = Path(__file__).parent / "static"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
MAX_PAGE = 500
QUEUE_SIZE = 1000
HEARTBEAT = 15.0

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


class EventHub:
    """Fans committed events and transient notices (progress, refusals) out to the event-stream
    clients; keeps a throughput history."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.clients: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.throughput: deque[dict[str, float]] = deque(maxlen=300)
        self._last: dict[int, int] = {}
        self._finished = {"in": 0, "out": 0}
        self._sampled = time.monotonic()

    def publish(self, data: dict[str, Any]) -> None:
        for queue in list(self.clients):
            try:
                queue.put_nowait(data)
            except asyncio.QueueFull:
                # A client that fell behind (a burst of thousands of records) skips what it
                # missed and is told to reload its view instead.
                self._flush(queue, {"type": "Resync", "time": time.time()})

    @staticmethod
    def _flush(queue: asyncio.Queue[dict[str, Any] | None], last: dict[str, Any] | None) -> None:
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(last)

    def on_event(self, event: Event) -> None:
        if isinstance(event, TransferFinished):
            # Bytes moved since the last sample still count in the next one.
            t = event.transfer
            start = self._last.pop(t.transfer_id, t.bytes_at_start)
            self._finished[t.direction] += max(0, t.bytes_done - start)
        if self.clients:
            self.publish(views.event_json(self.node, event))

    def on_notice(self, notice: Notice) -> None:
        if self.clients:
            self.publish(views.event_json(self.node, notice))

    def sample(self) -> dict[str, float]:
        """Bytes per second moved since the last sample, per direction."""
        now = time.monotonic()
        moved = dict(self._finished)
        self._finished = {"in": 0, "out": 0}
        seen = {}
        for tid, t in self.node.active_transfers.items():
            # A transfer not seen before counts from where this run began: the bytes a resumed
            # download found on disk did not move now (they made a false spike on the chart).
            moved[t.direction] += max(0, t.bytes_done - self._last.get(tid, t.bytes_at_start))
            seen[tid] = t.bytes_done
        self._last = seen
        elapsed = max(1e-3, now - self._sampled)
        self._sampled = now
        point = {
            "t": time.time(),
            "in": moved["in"] / elapsed,  # bytes per second
            "out": moved["out"] / elapsed,
            "in_bytes": moved["in"],  # bytes since the previous sample
            "out_bytes": moved["out"],
        }
        self.throughput.append(point)
        return point

    async def run_sampler(self, every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every)
            point = self.sample()
            if self.clients:
                self.publish({"type": "Throughput", **point})

    def close(self) -> None:
        for queue in list(self.clients):
            self._flush(queue, None)
        self.clients.clear()


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


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host/Origin checks, the token for state changes, JSON errors."""
    app = request.app
    try:
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
        return await handler(request)
    except ApiError as exc:
        return _json_error(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _json_error(exc.status, exc.reason)
    except NotFound as exc:
        return _json_error(404, str(exc))
    except AmbiguousId as exc:
        return _json_error(409, str(exc))
    except NotOwner as exc:
        return _json_error(403, str(exc))
    except FetchFailed as exc:
        return _json_error(502, str(exc))
    except StorageError as exc:
        return _json_error(507, str(exc))
    except NodeError as exc:
        if isinstance(exc.__cause__, OSError):  # this node's disk refused a write
            return _json_error(507, str(exc))
        return _json_error(400, str(exc))
    except ConnectionError:
        raise  # the client left: nothing to answer, nothing to log
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _json_error(500, "internal error (see the node's log)")


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


def content_disposition(name: str) -> str:
    """``attachment`` with both forms of the name (RFC 6266): ``filename="…"``, an ASCII-only
    fallback for clients that read only it (``curl -OJ``), and ``filename*=UTF-8''…`` with the
    real name. The name comes from a stranger: no path, no control characters, no quotes."""
    name = safe_name(name)
    fallback = (
        "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\/%;' else "_" for ch in name).strip()
        or "file"
    )
    if fallback.startswith("."):
        fallback = "_" + fallback[1:]
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


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
    return web.json_response({"peers": [views.peer_json(p) for p in _node(request).peers()]})


async def files(request: web.Request) -> web.Response:
    node = _node(request)
    scope = request.query.get("scope", "both")
    if scope not in ("local", "remote", "both"):
        raise error(400, "scope must be local, remote or both")
    offset = _int(request, "offset", 0, 0, 10**9)
    limit = _int(request, "limit", 50, 1, MAX_PAGE)
    page = node.reads.page(scope, offset, limit)
    return web.json_response(
        {
            "scope": scope,
            "total": page.total,
            "offset": offset,
            "limit": limit,
            "files": [views.file_json(e, node) for e in page.entries],
        }
    )


async def one_file(request: web.Request) -> web.Response:
    node = _node(request)
    return web.json_response(views.file_json(_entry(node, _file_id(request)), node))


async def upload(request: web.Request) -> web.Response:
    """Push: the body (raw, with ``?name=``) or a multipart form's ``file`` field. Bytes this
    node already holds are not pushed again (unless ``?force=1``): the answer is then 200 with
    the record it has and ``"existing": true`` (201 and ``false`` for a new push)."""
    node = _node(request)
    force = _flag(request, "force")
    cap = node.config.max_upload
    multipart = request.content_type.startswith("multipart/")
    if not multipart and request.content_length is not None and request.content_length > cap:
        raise error(413, f"upload of {request.content_length} bytes is over the cap ({cap})")
    name = request.query.get("name", "")
    chunks: AsyncIterator[bytes]
    if multipart:
        reader = await request.multipart()
        part = await reader.next()
        while part is not None and getattr(part, "name", None) != "file":
            part = await reader.next()
        if not isinstance(part, BodyPartReader):
            raise error(400, "the form has no 'file' field")
        name = name or part.filename or ""
        chunks = _part_chunks(part)
    else:
        chunks = request.content.iter_chunked(1 << 20)
    if not name:
        raise error(400, "the file needs a name (?name=…)")
    try:
        sink = node.open_sink()
    except OSError as exc:
        raise StorageError(f"cannot store the upload: {exc.strerror or exc}") from exc
    try:
        # Written off the event loop: straight from the socket if the body is raw, else a few
        # MiB at a time as aiohttp reads them.
        sock = None if multipart else detachable(request)
        if sock is not None:
            await receive_raw(request, sock, sink)
        else:
            await write_chunks(chunks, sink, cap)
        if sink.size > cap:
            raise OverCap(sink.size)
        pushed = await node.share(sink, safe_name(name), force=force)
    except OverCap:
        raise error(413, f"upload is over the cap ({cap} bytes)") from None
    finally:
        sink.abort()  # a no-op once pushed
    entry = node.file(pushed.meta.file_id)
    if entry is None:  # deleted in the meantime
        raise error(404, f"{pushed.meta.file_id[:12]}… was deleted meanwhile")
    body = {**views.file_json(entry, node), "existing": pushed.existing}
    return web.json_response(body, status=200 if pushed.existing else 201)


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(1 << 20):
        yield bytes(chunk)


async def fetch(request: web.Request) -> web.Response:
    node = _node(request)
    entry = await node.get(_file_id(request))
    return web.json_response(views.file_json(entry, node))


async def content(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    entry = _entry(node, _file_id(request))
    path = node.reads.blob(entry)
    if path is None:
        raise error(404, "this node holds no copy of that file; fetch it first")
    resp = web.FileResponse(path)
    resp.headers["Content-Type"] = "application/octet-stream"
    resp.headers["Content-Disposition"] = content_disposition(entry.meta.file_name)
    return resp


async def remove(request: web.Request) -> web.Response:
    node = _node(request)
    file_id = _file_id(request)
    await node.delete(file_id)
    return web.json_response({"deleted": file_id})


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
