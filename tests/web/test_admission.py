"""Admission of HTTP connections (issue 8, THREATS.md): a cap on open connections where the
longest idle gives way to a new one, a deadline for a request head that a trickle cannot reset,
busy connections (event streams) kept, and accept() out of file descriptors logged at most once
a second. Real sockets on loopback against in-process nodes, and one real ``treedrive run``
process under a small open files limit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import free_port, wait_for
from tests.web.test_api import auth, next_event, read_events, url, web_node
from treedrive.core.node import Node
from treedrive.transport import process
from treedrive.web.admission import Admission

pytestmark = pytest.mark.timeout(90)

Starter = Callable[..., Any]
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def http_address(node: Node) -> tuple[str, int]:
    assert node.http_url is not None
    host, port = node.http_url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    return host, int(port)


def closed(conn: Conn) -> bool:
    """Whether the server closed this connection (EOF or reset seen by the client)."""
    reader, _ = conn
    return reader.at_eof() or reader.exception() is not None


async def open_idle(node: Node, n: int) -> list[Conn]:
    host, port = http_address(node)
    return [await asyncio.open_connection(host, port) for _ in range(n)]


def close_all(conns: list[Conn]) -> None:
    for _, writer in conns:
        writer.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def status_ok(http: aiohttp.ClientSession, node: Node) -> None:
    async with asyncio.timeout(5), http.get(url(node, "/api/status")) as resp:
        assert resp.status == 200
        assert (await resp.json())["peer_id"] == node.peer_id


async def open_streams(
    stack: contextlib.AsyncExitStack, http: aiohttp.ClientSession, node: Node, n: int
) -> list[AsyncIterator[dict[str, Any]]]:
    """``n`` event streams of ``node``, each past its Hello; open until ``stack`` closes."""
    streams = []
    for _ in range(n):
        resp = await stack.enter_async_context(http.get(url(node, "/api/events")))
        events = read_events(resp)
        assert (await next_event(events, lambda e: True))["type"] == "Hello"
        streams.append(events)
    return streams


# -- the cap ---------------------------------------------------------------------------------------
async def test_idle_connections_over_the_cap_give_way_oldest_first(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(start_node, "alice", extra={"http_head_timeout": "60"})
    conns = await open_idle(node, 300)
    try:
        # 256 stay open: the 44 opened first (the longest idle) were closed for newer ones
        await wait_for(lambda: sum(map(closed, conns)) >= 44, timeout=10)
        await asyncio.sleep(0.3)
        assert [i for i, c in enumerate(conns) if closed(c)] == list(range(44))

        # a normal API request still gets through, at the cost of the next oldest idle one
        await status_ok(http, node)
        await wait_for(lambda: closed(conns[44]), timeout=5)
        assert sum(map(closed, conns)) == 45
    finally:
        close_all(conns)


async def partial_upload(node: Node) -> Conn:
    """A connection in the middle of an authenticated upload (its body still to come)."""
    host, port = http_address(node)
    conn = await asyncio.open_connection(host, port)
    head = (
        f"POST /api/files?name=slow.bin HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: {auth(node)['Authorization']}\r\nContent-Length: 1000000\r\n\r\n"
    )
    conn[1].write(head.encode() + b"x" * 1000)
    return conn


async def test_busy_connections_are_kept_and_a_new_one_is_refused_only_when_all_are_busy(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    node = await web_node(
        start_node, "alice", extra={"http_max_connections": "4", "http_head_timeout": "60"}
    )
    async with contextlib.AsyncExitStack() as stack:
        # two event streams (half the cap: their share) and two uploads under way
        streams = await open_streams(stack, http, node, 2)
        uploads = [await partial_upload(node) for _ in range(2)]
        await asyncio.sleep(0.3)
        # every connection is in a request: the new one is refused, none of the others goes
        (extra,) = await open_idle(node, 1)
        await wait_for(lambda: closed(extra), timeout=5)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await http.get(url(node, "/api/status"))
        assert not any(map(closed, uploads))
        # the streams are all still there and streaming
        src = node.config.data_dir.parent / "src.txt"
        src.write_bytes(b"pushed while the cap is full")
        meta = await node.push(src)
        for events in streams:
            stored = await next_event(events, lambda e: e["type"] == "FileStored")
            assert stored["file_id"] == meta.file_id
        close_all([extra, *uploads])
    # once they end, there is room again
    await status_ok(http, node)


async def test_event_streams_beyond_half_the_cap_give_way_oldest_first(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    # GET /api/events needs no token: streams alone must not lock the API out.
    node = await web_node(start_node, "alice", extra={"http_max_connections": "4"})
    async with contextlib.AsyncExitStack() as stack:
        streams = await open_streams(stack, http, node, 4)
        await status_ok(http, node)  # the oldest stream gives way to it
        src = node.config.data_dir.parent / "src.txt"
        src.write_bytes(b"pushed after a stream gave way")
        meta = await node.push(src)
        with pytest.raises((AssertionError, aiohttp.ClientPayloadError)):  # ended or cut
            await next_event(streams[0], lambda e: e["type"] == "FileStored")
        for events in streams[1:]:  # the others stream on
            stored = await next_event(events, lambda e: e["type"] == "FileStored")
            assert stored["file_id"] == meta.file_id
        # the connection left idle by the request gives way before a stream
        (extra,) = await open_idle(node, 1)
        await status_ok(http, node)  # on a new connection: the idle one gives way
        await wait_for(lambda: closed(extra), timeout=5)
        src.write_bytes(b"pushed again")
        meta = await node.push(src)
        for events in streams[1:]:
            stored = await next_event(events, lambda e: e["type"] == "FileStored")
            assert stored["file_id"] == meta.file_id
        close_all([extra])


# -- bad requests ---------------------------------------------------------------------------------
async def test_a_bad_request_is_logged_in_one_short_line_at_most_once_a_second(
    start_node: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    node = await web_node(start_node, "alice")
    host, port = http_address(node)

    async def junk() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"G\x1b[2J" * 60_000 + b" / HTTP/1.1\r\nHost: x\r\n\r\n")  # 300 KB
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(reader.read(), 5)
        writer.close()

    def from_aiohttp() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name.startswith("aiohttp")]

    def logged() -> str:
        return "\n".join(caplog.handler.format(r) for r in from_aiohttp())

    caplog.clear()
    await junk()
    deadline = time.monotonic() + 3
    while not from_aiohttp() and time.monotonic() < deadline:
        await asyncio.sleep(1.1)  # the once-a-second budget may be spent by a test before
        await junk()
    (line,) = from_aiohttp()
    assert line.exc_info is None
    assert "Traceback" not in caplog.text + logged()
    assert "BadHttpMethod" in line.getMessage()
    assert "\x1b" not in line.getMessage()  # control characters escaped
    assert len(line.getMessage()) <= 200
    assert len(logged()) < 1024, logged()
    # many more within a second: none logged; the next line a second later counts them
    for _ in range(20):
        await junk()
    assert len(from_aiohttp()) == 1
    await asyncio.sleep(1.1)
    await junk()
    await wait_for(lambda: len(from_aiohttp()) == 2, timeout=5)
    assert "(and 20 more left out)" in from_aiohttp()[1].getMessage()
    assert len(logged()) < 2048, logged()


async def test_an_unread_body_is_not_read_on_after_a_401(start_node: Starter) -> None:
    node = await web_node(start_node, "alice")
    host, port = http_address(node)
    head = f"POST /api/files?name=x HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 4000000000"

    # A client that sent a little and waits: it gets its 401 (within about a second), then EOF.
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(head.encode() + b"\r\n\r\n" + b"x" * 1000)
    started = time.monotonic()
    answer = await asyncio.wait_for(reader.read(), 5)  # to EOF: the node closes
    assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
    assert b"needs the node's API token" in answer
    assert time.monotonic() - started < 2.5  # not after 10 s of reading the body on
    writer.close()

    # A stranger sending at line speed: the node stops reading after a little, not 10 s later.
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(head.encode() + b"\r\n\r\n")
    started = time.monotonic()
    sent = await send_until_cut(writer, within=8)
    assert time.monotonic() - started < 5
    assert sent < 200 * (1 << 20), sent
    writer.close()


async def send_until_cut(writer: asyncio.StreamWriter, within: float) -> int:
    """Write as fast as the peer reads until it closes the connection; the bytes written."""
    started, sent, chunk = time.monotonic(), 0, b"x" * (1 << 20)
    try:
        while time.monotonic() - started < within:
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), 3)
            sent += len(chunk)
    except ConnectionError:
        return sent
    raise AssertionError(f"still open after {within} s and {sent} bytes")


# -- the head deadline -----------------------------------------------------------------------------
async def test_a_keep_alive_connection_in_use_outlives_the_deadline(start_node: Starter) -> None:
    """Requests back to back on one keep-alive connection for several deadlines: its idle time
    starts from its latest answer, so it is never closed while in use (a monitoring client
    polling ``/api/health`` was cut off after one deadline)."""
    deadline = 0.5
    node = await web_node(start_node, "alice", extra={"http_head_timeout": str(deadline)})
    host, port = http_address(node)
    conn = await asyncio.open_connection(host, port)
    reader, writer = conn
    head = f"GET /api/health HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    started = time.monotonic()
    while time.monotonic() - started < 4 * deadline:
        writer.write(head)
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        length = int(answer.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        assert json.loads(await reader.readexactly(length))["status"] == "ok"
        await asyncio.sleep(deadline / 5)
    await wait_for(lambda: closed(conn), 5)  # idle now: closed after one deadline
    close_all([conn])


async def test_a_request_head_has_a_deadline_that_a_trickle_does_not_reset(
    start_node: Starter, http: aiohttp.ClientSession
) -> None:
    deadline = 0.5
    node = await web_node(start_node, "alice", extra={"http_head_timeout": str(deadline)})
    host, port = http_address(node)
    started = time.monotonic()
    idle, trickle, kept_alive = await open_idle(node, 3)

    head = f"GET /api/status HTTP/1.1\r\nHost: {host}:{port}\r\n"

    async def trickling() -> None:
        for ch in head * 100:  # never ends the head
            trickle[1].write(ch.encode())
            await asyncio.sleep(0.02)

    trickler = asyncio.ensure_future(trickling())
    kept_alive[1].write((head + "\r\n").encode())
    answer = await asyncio.wait_for(kept_alive[0].readuntil(b"\r\n\r\n"), 5)
    assert answer.startswith(b"HTTP/1.1 200")
    length = int(answer.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    assert json.loads(await kept_alive[0].readexactly(length))["peer_id"] == "alice"
    answered = time.monotonic()

    async with http.get(url(node, "/api/events")) as stream:
        events = read_events(stream)
        assert (await next_event(events, lambda e: True))["type"] == "Hello"

        await wait_for(lambda: closed(idle) and closed(trickle) and closed(kept_alive), 5)
        took = time.monotonic() - started
        assert deadline <= took < deadline + 3, took
        assert time.monotonic() - answered >= deadline  # idle time counts from the answer
        trickler.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await trickler

        # the event stream is in a request: well past the deadline it still streams
        await asyncio.sleep(3 * deadline)
        async with http.post(
            url(node, "/api/files?name=y.txt"), data=b"y", headers=auth(node)
        ) as resp:
            file_id = (await resp.json())["file_id"]
        stored = await next_event(events, lambda e: e["type"] == "FileStored")
        assert stored["file_id"] == file_id
    close_all([idle, trickle, kept_alive])


async def test_bad_admission_settings_fall_back_to_the_defaults(
    start_node: Starter, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    node = await web_node(
        start_node, "alice", extra={"http_max_connections": "-3", "http_head_timeout": "soon"}
    )
    await status_ok(http, node)
    messages = [r.getMessage() for r in caplog.records]
    assert any("http_max_connections='-3'" in m for m in messages), messages
    assert any("http_head_timeout='soon'" in m for m in messages), messages
    with pytest.raises(ValueError, match="max_connections"):
        Admission(lambda: asyncio.Protocol(), max_connections=0)


# -- out of file descriptors -----------------------------------------------------------------------
def test_accept_errors_for_want_of_descriptors_are_logged_once_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The filter ``running_node`` installs (the transport's): 5,000 failed accepts in one
    second are one line with no traceback; anything else reaches the handler there before."""
    caplog.set_level(logging.DEBUG)
    passed: list[dict[str, Any]] = []
    loop = asyncio.new_event_loop()
    try:
        loop.set_exception_handler(lambda _loop, context: passed.append(context))
        process.filter_accept_errors(loop)
        process.filter_accept_errors(loop)  # once per loop, however many nodes run on it
        handler = loop.get_exception_handler()
        assert handler is not None
        emfile = OSError(24, "Too many open files")
        before = process.accept_errors.totals["accepts failed (out of open files)"]
        for _ in range(5000):
            handler(
                loop, {"message": "socket.accept() out of system resource", "exception": emfile}
            )
        other = {"message": "something else", "exception": ValueError("x")}
        handler(loop, other)
    finally:
        loop.close()
    lines = [r for r in caplog.records if "accept" in r.getMessage()]
    assert 1 <= len(lines) <= 2
    assert all(r.exc_info is None for r in lines)  # lines, never a traceback
    assert process.accept_errors.totals["accepts failed (out of open files)"] == before + 5000
    assert passed == [other]  # anything else goes to the handler that was there before


def node_under_fd_limit(tmp_path: Path, limit: int) -> tuple[subprocess.Popen[str], Path, Path]:
    """A real ``treedrive run`` whose open files limit (soft and hard) is ``limit``."""
    data_dir = tmp_path / "alice"
    out = tmp_path / "alice.out"
    code = (
        "import resource, runpy, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit})); "
        "sys.argv = ['treedrive', *sys.argv[1:]]; "
        "runpy.run_module('treedrive', run_name='__main__')"
    )
    args = ["run", "--peer-id", "alice", "--port", str(free_port()), "--http-port", "0"]
    args += ["--data-dir", str(data_dir), "--no-shell"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREEDRIVE_")}
    with out.open("w") as log_out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdin=subprocess.DEVNULL,
            stdout=log_out,
            stderr=log_out,
            text=True,
            env=env,
        )
    deadline = time.monotonic() + 20
    while not (data_dir / "node.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the node did not start: {out.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, data_dir, out


@contextlib.contextmanager
def ended(proc: subprocess.Popen[str]) -> Iterator[None]:
    try:
        yield
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, 9)
            proc.wait(timeout=20)


async def api_answers(http_url: str, within: float) -> float:
    """Seconds until ``/api/status`` answers 200 (fails after ``within``)."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with asyncio.timeout(2), http.get(http_url + "api/status") as resp:
                    assert resp.status == 200
                    return time.monotonic() - started
            except (aiohttp.ClientError, TimeoutError):
                if time.monotonic() - started > within:
                    raise
                await asyncio.sleep(0.2)


async def flood(host: str, port: int, n: int) -> list[Conn]:
    conns: list[Conn] = []
    for _ in range(n):
        with contextlib.suppress(OSError, TimeoutError):
            conns.append(await asyncio.wait_for(asyncio.open_connection(host, port), 0.2))
    return conns


@pytest.mark.e2e
async def test_a_node_under_a_small_open_files_limit(tmp_path: Path) -> None:
    """With 128 open files at most (soft and hard: it cannot raise them), the HTTP cap shrinks to
    a quarter of the limit, so 300 idle HTTP connections leave the API answering; 300 more on
    the P2P port do run the node out of descriptors: that is logged a line or two a second,
    never a traceback per accept, and the node answers again once they are gone."""
    proc, data_dir, out = node_under_fd_limit(tmp_path, 128)
    with ended(proc):
        info = json.loads((data_dir / "node.json").read_text())
        host, port = info["http"].split("//", 1)[1].rstrip("/").rsplit(":", 1)
        started = time.monotonic()
        conns = await flood(host, int(port), 300)
        try:
            assert await api_answers(info["http"], within=2) < 2  # during the HTTP flood
            conns += await flood("127.0.0.1", info["port"], 300)
            await asyncio.sleep(3)
        finally:
            close_all(conns)
        await api_answers(info["http"], within=15)  # once the idle connections are gone
        elapsed = time.monotonic() - started
        log = (data_dir / "node.log").read_text()
        assert "HTTP connections capped at 32, not 256" in log
        # (the transport installs a filter of its own on the same loop: either may speak)
        words = ("out of file descriptors", "out of open files", "Too many open files")
        lines = [line for line in log.splitlines() if any(w in line for w in words)]
        assert lines, log[-3000:]  # the node did run out: the scenario happened
        assert len(lines) <= 2 * (elapsed + 2), lines  # a line or two a second, not one per try
        assert "Traceback" not in log + out.read_text(), log[-3000:]
        assert len(log) < 20_000, len(log)
