"""The file routes of the JSON API: list, one file, upload (push), fetch, content, delete."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

from aiohttp import BodyPartReader, web

from treedrive.core.errors import StorageError
from treedrive.core.model import Pushed
from treedrive.core.names import safe_name
from treedrive.core.node import Node
from treedrive.web import views
from treedrive.web.body import OverCap, detachable, receive_raw, write_chunks
from treedrive.web.guard import _entry, _file_id, _flag, _int, _node, error

MAX_PAGE = 500


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


async def files(request: web.Request) -> web.Response:
    node = _node(request)
    scope = request.query.get("scope", "both")
    if scope not in ("local", "remote", "both"):
        raise error(400, "scope must be local, remote or both")
    offset = _int(request, "offset", 0, 0, 10**9)
    limit = _int(request, "limit", 50, 1, MAX_PAGE)
    after = request.query.get("after")  # a keyset page: the entries after this id
    try:
        page = node.reads.page(scope, offset, limit, after)
    except KeyError:
        raise error(400, "after: no such file in the catalogue (start from the top)") from None
    full = len(page.entries) == limit
    return web.json_response(
        {
            "scope": scope,
            "total": page.total,
            "offset": offset,
            "limit": limit,
            "files": [views.file_json(e, node) for e in page.entries],
            "next": page.entries[-1].meta.file_id if full else None,
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
    forward = None
    try:
        # Written off the event loop: straight from the socket if the body is raw, else a few
        # MiB at a time as aiohttp reads them. A raw body's size is known: it goes on to the
        # peer it is pushed to while it arrives, when that peer takes it so.
        sock = None if multipart else detachable(request)
        if sock is not None:
            forward = node.forward(sink, request.content_length)
            await receive_raw(request, sock, sink)
        else:
            await write_chunks(chunks, sink, cap)
        if sink.size > cap:
            raise OverCap(sink.size)
        pushed = await node.share(sink, safe_name(name), force=force, forward=forward)
    except OverCap:
        raise error(413, f"upload is over the cap ({cap} bytes)") from None
    finally:
        if forward is not None:
            forward.call_off()  # a no-op once pushed
        sink.abort()  # a no-op once pushed
    return pushed_answer(node, pushed)


def pushed_answer(node: Node, pushed: Pushed) -> web.Response:
    """The answer to a push: 201 and the new file's record, or 200 and the record of the file
    that already had these bytes (``existing``)."""
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
