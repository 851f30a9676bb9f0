"""The body of an upload (``POST /api/files``), written to the partial file off the event loop.

A raw body with a ``Content-Length`` on plain TCP is taken from the socket itself: aiohttp's
reading is paused, the bytes it has parsed come first, and a worker thread moves the rest from the
socket into the sink in the kernel (the store's partial file: ``append_from``, spliced, hashed by
its own thread, synced in the background), as a pushed file is received. aiohttp's parser never
sees those bytes, so that connection ends with this answer. When nothing comes for a moment the
worker returns and the loop waits for the socket (a client that pauses holds no thread).

Any other body (a multipart form, chunked, compressed, TLS) is read by aiohttp on the loop, and
its bytes are written a few MiB at a time by a worker thread while the next ones arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from treedrive.core.errors import StorageError
from treedrive.core.ports import FileSink

BATCH = 4 * 1024 * 1024
"""Bytes of a body read by aiohttp that are handed to a worker thread at once."""
PAUSE = 0.05
"""Seconds a worker waits for more bytes before it hands the wait back to the loop."""
WORKERS = 4

_pool: ThreadPoolExecutor | None = None


def _workers() -> ThreadPoolExecutor:
    global _pool  # one pool per process, made when first needed
    if _pool is None:
        _pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="upload-in")
    return _pool


def _store(sink: FileSink, data: bytes | memoryview) -> None:
    try:
        sink.write(data)
    except OSError as exc:  # the disk is full (or read-only): this node's error
        raise StorageError(f"cannot store the upload: {exc.strerror or exc}") from exc


def detachable(request: web.Request) -> socket.socket | None:
    """A duplicate of the connection's socket if the body can be received from it raw: a body
    of known length, neither chunked nor compressed, over plain TCP (else None)."""
    headers = request.headers
    if request.content_length is None or "Transfer-Encoding" in headers:
        return None
    if headers.get("Content-Encoding", "identity").lower() != "identity":
        return None
    transport = request.transport
    if transport is None or transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(request, "_message"):
        return None
    return socket.socket(fileno=os.dup(sock.fileno()))


def _receive_some(sock: socket.socket, sink: FileSink, left: int, first: bytes) -> int:
    """Receive up to ``left`` bytes into ``sink`` (blocking: a worker thread), ``first`` before
    them; return how many are still to come when nothing came for :data:`PAUSE` s (0: done)."""
    if first:
        _store(sink, first)
    sock.setblocking(True)
    sec = int(PAUSE)
    sock.setsockopt(
        socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", sec, int((PAUSE - sec) * 1e6))
    )
    fd = sock.fileno()
    while left > 0:
        try:
            n = sink.append_from(fd, left)
        except (BlockingIOError, TimeoutError):  # nothing for PAUSE s (SO_RCVTIMEO)
            return left
        if n == 0:
            raise ConnectionResetError("the client closed the connection before the end")
        left -= n
    return 0


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


async def _shielded(work: Awaitable[Any], sock: socket.socket) -> Any:
    """Await a worker's ``work``; if cancelled, cut the socket so that it returns, then wait."""
    future = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)
        with contextlib.suppress(Exception):
            await future
        raise


async def receive_raw(request: web.Request, sock: socket.socket, sink: FileSink) -> None:
    """The whole body (``Content-Length`` bytes) into ``sink`` from ``sock`` (a duplicate from
    :func:`detachable`, closed here), off the loop. The connection closes after the answer."""
    loop = asyncio.get_running_loop()
    transport: Any = request.transport
    content = request.content
    # What aiohttp has parsed already (reading it may resume the transport's reading, which
    # happens on the loop's next turn: the pause right after comes first).
    first = content.read_nowait(-1)
    transport.pause_reading()
    # aiohttp's parser never sees the rest of the body: this connection cannot carry another.
    request._message = request._message._replace(should_close=True)
    try:
        left = (request.content_length or 0) - content.total_bytes
        while True:
            left = await _shielded(
                loop.run_in_executor(_workers(), _receive_some, sock, sink, left, first), sock
            )
            first = b""
            if left <= 0:
                break
            await _readable(sock)
        content.feed_eof()
    finally:
        with contextlib.suppress(OSError):
            sock.setblocking(False)  # the flag is shared with asyncio's own descriptor
        sock.close()
        if not transport.is_closing():
            transport.resume_reading()


class OverCap(Exception):
    """The body is longer than the upload cap."""


async def write_chunks(chunks: AsyncIterator[bytes], sink: FileSink, cap: int) -> None:
    """A body read by aiohttp into ``sink``: batches of :data:`BATCH` bytes written by a worker
    thread while the next batch arrives. Raises :class:`OverCap` past ``cap`` bytes."""
    loop = asyncio.get_running_loop()
    writing: asyncio.Future[None] | None = None
    batch = bytearray()
    total = 0
    try:
        async for chunk in chunks:
            total += len(chunk)
            if total > cap:
                raise OverCap(total)
            batch += chunk
            if len(batch) >= BATCH:
                if writing is not None:
                    await writing
                writing = loop.run_in_executor(_workers(), _store, sink, memoryview(batch))
                batch = bytearray()
        if writing is not None:
            await writing
            writing = None
        if batch:
            await loop.run_in_executor(_workers(), _store, sink, memoryview(batch))
    finally:
        if writing is not None:  # an error meanwhile: let the write end before the abort
            with contextlib.suppress(BaseException):
                await asyncio.shield(writing)
