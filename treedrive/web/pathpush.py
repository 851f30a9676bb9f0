"""Push by path (``POST /api/v1/pushes``): a client on the node's own machine names a file, and the
node reads it itself instead of receiving its bytes over HTTP (``treedrive push`` does so with a
node on 127.0.0.1: neither process copies the file through a socket). The push is then the same
as an upload's: stored, sent on to a peer while it is read, announced.

Who may: a client on this machine (a loopback connection, no proxy's forwarding headers), with the
node's API token in an ``Authorization`` header (never the dashboard's cookie), running as the
node's own user (:mod:`~treedrive.web.peeruser`): the node never reads for anyone a file they could
not read themselves. Which file: an absolute path to a regular file; the client says which file it
means (``expect``: device, inode, size, modification time) and the node takes only that one.

Answers: those of ``POST /api/v1/files`` (201, or 200 with ``existing``), and 403 (not from here,
not this user), 422 (this node cannot read that file, or sees another one there): in both cases
a client may send the bytes instead, as ``treedrive push`` then does; 400 (not absolute, not a
regular file), 409 (the file changed while it was read), 413 (over the upload cap). Nothing of a
refused push is kept. While it runs, ``GET /api/v1/pushes/{id}`` says how far the node has read
(the ``id`` the client chose)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from treedrive.core import localfile
from treedrive.core.localfile import Identity
from treedrive.core.names import safe_name
from treedrive.web import peeruser
from treedrive.web.files import pushed_answer
from treedrive.web.guard import _node, error

MAX_BODY = 64 * 1024
"""Bytes at most of a push by path's JSON body."""
PUSH_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
FORWARDED = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


@dataclass
class Reading:
    """How far the node has read the file of one push by path."""

    total: int
    done: int = 0


PUSHES: web.AppKey[dict[str, Reading]] = web.AppKey("pushes", dict)


@dataclass(frozen=True)
class Ask:
    path: Path
    name: str
    force: bool
    push_id: str | None
    expect: Identity | None


def _ends(request: web.Request) -> tuple[peeruser.Endpoint, peeruser.Endpoint] | None:
    """The client's address and ours (None: not a TCP connection)."""
    transport = request.transport
    if transport is None:
        return None
    peer, ours = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
    if not isinstance(peer, tuple) or not isinstance(ours, tuple):
        return None
    return (str(peer[0]), int(peer[1])), (str(ours[0]), int(ours[1]))


def _from_this_machine(request: web.Request) -> tuple[peeruser.Endpoint, peeruser.Endpoint]:
    """Both ends of a loopback connection that no proxy forwarded, with the token in the
    ``Authorization`` header (the guard checked it); else 403."""
    ends = _ends(request)
    if ends is None or not peeruser.address(ends[0][0]).is_loopback:
        raise error(403, "a push by path is taken only from this machine (send the bytes)")
    if any(h in request.headers for h in FORWARDED):
        raise error(403, "a push by path is not taken through a proxy (send the bytes)")
    if not request.headers.get("Authorization", "").startswith("Bearer "):
        raise error(403, "a push by path needs the token in an Authorization header")
    return ends


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise error(400, f"{key} must be a string")
    return value


def _expect(value: Any) -> Identity | None:
    if value is None:
        return None
    keys = ("dev", "ino", "size", "mtime_ns")
    if not isinstance(value, dict) or not all(
        type(value.get(k)) is int and value[k] >= 0 for k in keys
    ):
        raise error(400, "expect must be {dev, ino, size, mtime_ns}: integers ≥ 0")
    return Identity(*(value[k] for k in keys))


async def _ask(request: web.Request) -> Ask:
    """The request's JSON body, checked (400 otherwise)."""
    if request.content_type != "application/json":
        raise error(400, "a push by path is a JSON body (Content-Type: application/json)")
    if request.content_length is None or request.content_length > MAX_BODY:
        raise error(400, f"a push by path is a JSON body of {MAX_BODY} bytes at most")
    try:
        # read here, not with request.read(): that is capped at the upload cap, which may be
        # smaller than this body
        body = json.loads(await request.content.read())
    except ValueError:
        raise error(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise error(400, "the body must be a JSON object")
    raw = _text(body, "path")
    if not raw or "\x00" in raw or not os.path.isabs(raw):
        raise error(400, "path must be an absolute path")
    path = Path(raw)
    name = _text(body, "name") or path.name
    push_id = _text(body, "id")
    if push_id is not None and not PUSH_ID.fullmatch(push_id):
        raise error(400, "id must be 1-64 letters, digits, - or _")
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise error(400, "force must be true or false")
    return Ask(path, safe_name(name), force, push_id, _expect(body.get("expect")))


async def _same_user(ends: tuple[peeruser.Endpoint, peeruser.Endpoint]) -> None:
    """403 unless the client runs as this node's user (or that cannot be told)."""
    uid = await asyncio.to_thread(peeruser.socket_owner, *ends)
    if uid is None or not hasattr(os, "geteuid") or uid != os.geteuid():
        raise error(403, "a push by path is taken only from the node's own user (send the bytes)")


async def _opened(ask: Ask) -> localfile.Source:
    """The file opened (in a thread); closed there if this handler is cancelled meanwhile."""
    opening = asyncio.ensure_future(asyncio.to_thread(localfile.open_source, ask.path, ask.expect))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:

        def close(done: asyncio.Future[localfile.Source]) -> None:
            if not done.cancelled() and done.exception() is None:
                done.result().close()

        opening.add_done_callback(close)
        raise


async def push(request: web.Request) -> web.Response:
    """Push the file at a path on this machine (see the module)."""
    ends = _from_this_machine(request)
    ask = await _ask(request)
    await _same_user(ends)
    node = _node(request)
    try:
        source = await _opened(ask)
    except (localfile.Unreadable, localfile.NotTheFile) as exc:
        raise error(422, str(exc)) from None
    except localfile.NotRegular as exc:
        raise error(400, str(exc)) from None
    with source:
        cap = node.config.max_upload
        if source.size > cap:
            raise error(413, f"upload of {source.size} bytes is over the cap ({cap})")
        pushes = request.app[PUSHES]
        if ask.push_id is not None and ask.push_id in pushes:
            raise error(409, f"a push with the id {ask.push_id} is under way")
        reading = Reading(source.size)
        key = ask.push_id or secrets.token_hex(8)
        pushes[key] = reading

        def read(done: int) -> None:
            reading.done = done

        try:  # a client that goes away cancels this handler, and so the copy
            pushed = await node.sharing.push_source(
                source, ask.name, force=ask.force, progress=read
            )
        except localfile.Changed as exc:
            raise error(409, str(exc)) from None
        except localfile.SourceError as exc:  # unreadable halfway
            raise error(422, str(exc)) from None
        finally:
            pushes.pop(key, None)
    return pushed_answer(node, pushed)


async def progress(request: web.Request) -> web.Response:
    """How far the node has read the file of the push by path ``{push_id}`` (404: none runs)."""
    push_id = request.match_info["push_id"]
    reading = request.app[PUSHES].get(push_id)
    if reading is None:
        raise error(404, "no push by path with that id is under way")
    return web.json_response(
        {"id": push_id, "bytes_done": reading.done, "bytes_total": reading.total}
    )
