"""The HTTP under :class:`treedrive.client.Client`: the standard library's client (quick to
import), the node's token on every request, and every failure one :mod:`errors` exception.

A push (:meth:`Http.post_file`) over plain http goes from the file to the socket with
``sendfile``: this process never copies the bytes (on a small machine the node hashing and
writing them needs the CPU more). Over https, or through a proxy, urllib sends it, a block at a
time: either way the file is never read into memory whole."""

from __future__ import annotations

import enum
import http.client
import ipaddress
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import SplitResult, urlsplit

from treedrive.client.discovery import node_url
from treedrive.client.errors import (
    BadNodeAddress,
    LocalFileError,
    NodeUnreachable,
    ProtocolError,
    api_error,
)

BLOCK = 1 << 20
"""Bytes read at a time for an upload urllib sends."""
STEP = 4 << 20
"""Bytes handed to ``sendfile`` at a time (the progress is told between steps)."""


class Default(enum.Enum):
    TIMEOUT = "the client's timeout"


CLIENT_TIMEOUT = Default.TIMEOUT
"""A request's ``timeout`` when it takes the client's."""

Progress = Callable[[int], None]
"""Told the number of bytes just moved."""


def no_progress(n: int) -> None:
    """A :data:`Progress` that is told nothing."""


class Http:
    """Requests to the node at ``url`` (``http(s)://host:port/`` or ``host:port``), with
    ``token`` if given; ``timeout`` seconds for each connect and read (None: none)."""

    def __init__(self, url: str, token: str | None = None, timeout: float | None = 30.0) -> None:
        self.url = node_url(url)
        self.token = token
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | Default | None = CLIENT_TIMEOUT,
    ) -> http.client.HTTPResponse:
        """The answer to ``method path`` (close it, or use it in a ``with``); ``timeout`` in
        seconds for the connect and each read (None: none; default: the client's). An error
        answer raises its :class:`~errors.ApiError`; no answer, :class:`~errors.NodeUnreachable`."""
        try:
            req = urllib.request.Request(  # noqa: S310 (node_url allows http(s) only)
                self.url.rstrip("/") + path, data=body, method=method, headers=headers or {}
            )
        except ValueError:
            raise BadNodeAddress(self.url) from None
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        wait = self.timeout if isinstance(timeout, Default) else timeout
        try:
            opened = urllib.request.urlopen(req, timeout=wait)  # noqa: S310
        except urllib.error.HTTPError as exc:
            raise api_error(exc.code, exc.reason, exc.read()) from None
        except (urllib.error.URLError, OSError) as exc:
            raise self.unreachable(getattr(exc, "reason", exc)) from None
        return cast(http.client.HTTPResponse, opened)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON the node answers ``method path`` with (``kwargs``: see :meth:`request`)."""
        with self.request(method, path, **kwargs) as resp:
            return self.read_json(resp)

    def read_json(self, resp: http.client.HTTPResponse) -> Any:
        try:
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self.unreachable(exc) from None
        return self.parse(body)

    def parse(self, body: bytes) -> Any:
        try:
            return json.loads(body)
        except ValueError:
            raise ProtocolError(f"the node at {self.url} answered with no JSON") from None

    def unreachable(self, reason: object) -> NodeUnreachable:
        return NodeUnreachable(self.url, reason)

    def post_file(self, path: Path, target: str, progress: Progress = no_progress) -> Any:
        """POST the file at ``path`` raw to ``target``: the node's answer (JSON).
        ``progress`` is told each step's bytes as they go."""
        try:
            f = path.open("rb")
        except OSError as exc:
            raise LocalFileError(f"cannot read {path}: {exc.strerror or exc}") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            plain = self.plain()
            if plain is None:
                body = _blocks(f, progress)
                return self.json("POST", target, body=body, headers=headers, timeout=None)
            return self.send_file(plain, target, headers, f, size, progress)

    def plain(self) -> SplitResult | None:
        """The node's URL if a push can go straight to its socket: plain http, no proxy."""
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname or _proxied(parts):
            return None
        return parts

    def local(self) -> bool:
        """Whether the node is on this machine: a loopback address (or ``localhost``), reached
        without a proxy. (A node in a container, or behind a tunnel, may still be elsewhere.)"""
        parts = urlsplit(self.url)
        host = parts.hostname
        if not host or _proxied(parts):
            return False
        if host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def send_file(
        self,
        url: SplitResult,
        target: str,
        headers: dict[str, str],
        f: IO[bytes],
        size: int,
        progress: Progress,
    ) -> Any:
        """The request with ``sendfile`` for its body, then the answer as :meth:`request`
        gives it (the node's error on a 4xx/5xx; "cannot reach" when the connection fails)."""
        conn = http.client.HTTPConnection(url.hostname or "", url.port or 80)
        try:
            try:
                conn.putrequest("POST", url.path.rstrip("/") + target)
                for name, value in {**headers, "Connection": "close"}.items():
                    conn.putheader(name, value)
                if self.token:
                    conn.putheader("Authorization", f"Bearer {self.token}")
                conn.endheaders()
            except OSError as exc:
                raise self.unreachable(exc) from None
            # A node that answers before it has the whole body (over its cap) may close the
            # connection as it does: its answer, if it came, says more than the send's error.
            failed = _send(conn, f, size, progress)
            try:
                with conn.getresponse() as resp:
                    status, reason, body = resp.status, resp.reason, resp.read()
            except (OSError, http.client.HTTPException) as exc:
                raise self.unreachable(failed or exc) from None
        finally:
            conn.close()
        if not 200 <= status < 300:
            raise api_error(status, reason, body)
        return self.parse(body)


def _proxied(url: SplitResult) -> bool:
    """Whether requests to ``url`` go through a proxy (the environment's)."""
    return bool(urllib.request.getproxies().get(url.scheme)) and not urllib.request.proxy_bypass(
        url.netloc
    )


def _blocks(f: IO[bytes], progress: Progress) -> Iterator[bytes]:
    while block := f.read(BLOCK):
        progress(len(block))
        yield block


def _send(
    conn: http.client.HTTPConnection, f: IO[bytes], size: int, progress: Progress
) -> OSError | None:
    """``size`` bytes of ``f`` to the connection's socket, ``STEP`` at a time; the error that
    stopped it, if one did."""
    sock = conn.sock
    done = 0
    try:
        while done < size:
            sent = sock.sendfile(f, done, min(STEP, size - done))
            if not sent:
                name = getattr(f, "name", "the file")
                raise LocalFileError(f"{name} got shorter while it was pushed; push it again")
            done += sent
            progress(sent)
    except OSError as exc:
        return exc
    return None
