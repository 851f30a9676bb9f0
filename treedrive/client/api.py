"""The typed client of a running node's HTTP API (see :mod:`treedrive.client`)."""

from __future__ import annotations

import enum
import http.client
import json
import os
import secrets
import stat
from collections.abc import Collection
from pathlib import Path
from urllib.parse import quote, urlencode

from treedrive.client.background import meanwhile
from treedrive.client.discovery import locate
from treedrive.client.errors import (
    ApiError,
    CannotReadThere,
    Forbidden,
    LocalFileError,
    NotFound,
    TreeDriveError,
)
from treedrive.client.events import EventStream
from treedrive.client.http import Http, Progress, no_progress
from treedrive.client.types import (
    Deleted,
    FileRecord,
    FilesPage,
    Health,
    KeyForgotten,
    Limits,
    Peer,
    PushResult,
    Scope,
    Status,
    ThroughputSample,
    Transfers,
)

PAGE = 500
"""Records per request when :meth:`Client.files` reads the whole catalogue (the node's most)."""
CHUNK = 1 << 20
POLL = 0.25
"""Seconds between the questions how far a push by path has got."""
POLL_TIMEOUT = 5.0
EVENTS_TIMEOUT = 60.0
"""Seconds of silence after which an event stream is taken for broken (the node sends a
keep-alive every 15 s)."""


class Keep(enum.Enum):
    KEEP = "keep"


KEEP = Keep.KEEP
"""For :meth:`Client.set_limits`: leave this limit as it is."""


def _id(file_id: str) -> str:
    return quote(file_id.strip(), safe="")


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except OSError as exc:
        raise LocalFileError(f"cannot read {path}: {exc.strerror or exc}") from None


class Client:
    """A running node's HTTP API: ``Client("http://127.0.0.1:8280/", token)`` (or
    ``"127.0.0.1:8280"``), or :meth:`find` to find it from its data dir. Reading needs no
    token; changing anything does. ``timeout``: seconds for each connect and read (a push, a
    fetch and a download wait as long as they take). Safe to use from several threads."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float | None = 30.0,
        by_path: bool = True,
    ) -> None:
        self.transport = Http(url, token, timeout)
        """The HTTP underneath: ``transport.request(...)`` for what has no method here."""
        self.by_path = by_path
        """Whether :meth:`push` gives a node on this machine the file's path to read."""

    @classmethod
    def find(
        cls,
        data_dir: Path | None = None,
        *,
        peer_id: str | None = None,
        url: str | None = None,
        token: str | None = None,
    ) -> Client:
        """The node running on ``data_dir`` (default: the data root's folder for ``peer_id``,
        ``default`` without one), with the token found there; or at ``url``, with ``token`` (or
        the token in ``data_dir``). :class:`~errors.NodeNotRunning` if none runs there."""
        found, found_token = locate(data_dir, peer_id, url, token)
        return cls(found, found_token)

    @property
    def url(self) -> str:
        return self.transport.url

    @property
    def token(self) -> str | None:
        return self.transport.token

    def __repr__(self) -> str:  # never the token
        return f"Client({self.url!r})"

    # -- the node and its peers -------------------------------------------------------------
    def health(self) -> Health:
        """Whether the node is up (``status`` "ok"; a stopping node answers 503, an
        :class:`~errors.ApiError`). Needs no token and never waits on the node's store."""
        data: Health = self.transport.json("GET", "/api/v1/health")
        return data

    def metrics(self) -> str:
        """The node's metrics in the Prometheus text format (``GET /metrics``)."""
        with self.transport.request("GET", "/metrics") as resp:
            try:
                return resp.read().decode("utf-8", "replace")
            except (OSError, http.client.HTTPException) as exc:
                raise self.transport.unreachable(exc) from None

    def status(self) -> Status:
        """The node: id, addresses, uptime, counts, key fingerprint, bootstrap problem."""
        data: Status = self.transport.json("GET", "/api/v1/status")
        return data

    def peers(self) -> list[Peer]:
        """The peers the node tracks."""
        data: list[Peer] = self.transport.json("GET", "/api/v1/peers")["peers"]
        return data

    def forget_key(self, peer_id: str) -> KeyForgotten:
        """Forget the key pinned to ``peer_id``, accepting on purpose that it now signs with
        another; :class:`~errors.NotFound` if none is pinned."""
        data: KeyForgotten = self.transport.json("DELETE", f"/api/v1/peers/{_id(peer_id)}/key")
        return data

    def limits(self) -> Limits:
        """The rate limits, bytes per second (None: none)."""
        data: Limits = self.transport.json("GET", "/api/v1/limits")
        return data

    def set_limits(
        self,
        *,
        download: float | Keep | None = KEEP,
        upload: float | Keep | None = KEEP,
    ) -> Limits:
        """Change the rate limits (bytes per second; None: no limit); the limits then."""
        changes = {
            key: value
            for key, value in (("download", download), ("upload", upload))
            if not isinstance(value, Keep)
        }
        body = json.dumps(changes).encode()
        data: Limits = self.transport.json(
            "PUT", "/api/v1/limits", body=body, headers={"Content-Type": "application/json"}
        )
        return data

    def transfers(self) -> Transfers:
        """Transfers under way (``active``) and the last ones recorded (``recent``)."""
        data: Transfers = self.transport.json("GET", "/api/v1/transfers")
        return data

    def throughput(self) -> list[ThroughputSample]:
        """Bytes per second in and out, a sample a second (the last five minutes)."""
        data: list[ThroughputSample] = self.transport.json("GET", "/api/v1/throughput")["samples"]
        return data

    def events(
        self,
        *,
        types: Collection[str] | None = None,
        last_event_id: str | None = None,
        timeout: float | None = EVENTS_TIMEOUT,
    ) -> EventStream:
        """The live event stream (see :mod:`treedrive.client.events`); ``types``: only these;
        ``last_event_id``: resume after it."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        resp = self.transport.request("GET", "/api/v1/events", headers=headers, timeout=timeout)
        return EventStream(resp, self.url, types)

    # -- files ------------------------------------------------------------------------------
    def files_page(self, scope: Scope = "both", offset: int = 0, limit: int = 50) -> FilesPage:
        """``limit`` records (500 at most) of the catalogue from ``offset``, and the total."""
        query = urlencode({"scope": scope, "offset": offset, "limit": limit})
        data: FilesPage = self.transport.json("GET", f"/api/v1/files?{query}")
        return data

    def files(self, scope: Scope = "both") -> list[FileRecord]:
        """The whole catalogue (``local``: held here, ``remote``: held by peers only)."""
        files: list[FileRecord] = []
        while True:
            page = self.files_page(scope, len(files), PAGE)
            files.extend(page["files"])
            if not page["files"] or len(files) >= page["total"]:
                return files

    def file(self, file_id: str) -> FileRecord:
        """One file's record; ``file_id`` may be a unique prefix of 8 or more hex characters
        (:class:`~errors.NotFound`, :class:`~errors.Conflict` when several start with it)."""
        data: FileRecord = self.transport.json("GET", f"/api/v1/files/{_id(file_id)}")
        return data

    def push(
        self,
        path: Path | str,
        *,
        name: str | None = None,
        force: bool = False,
        progress: Progress = no_progress,
    ) -> PushResult:
        """Push the file at ``path`` into the network through the node (as ``name``; default
        its own). Bytes the node already shares are not pushed again unless ``force``: the
        answer is then their record, with ``existing`` true. ``progress`` is told the bytes
        sent (or read by the node) as they go.

        A node on this machine (a loopback address; unless ``by_path`` is off) is given the
        file's path and reads the file itself (:meth:`push_path`); if it cannot (it runs as
        another user, in a container, ...), or elsewhere, the bytes are streamed to it from
        disk."""
        path = Path(path)
        name = name or path.name
        if self.by_path and self.transport.local():
            found = _stat(path)
            if stat.S_ISREG(found.st_mode):  # else sent as before
                try:
                    return self._push_path(path, found, name, force, progress)
                except (Forbidden, CannotReadThere, NotFound):
                    pass  # not from here, not by this user, not that file: send the bytes
                except ApiError as exc:
                    if exc.status != 405:  # 404 or 405: a node from before pushes by path
                        raise
        query = urlencode({"name": name, **({"force": "1"} if force else {})})
        data: PushResult = self.transport.post_file(path, f"/api/v1/files?{query}", progress)
        return data

    def push_path(
        self,
        path: Path | str,
        *,
        name: str | None = None,
        force: bool = False,
        progress: Progress = no_progress,
    ) -> PushResult:
        """Push the file at ``path`` as :meth:`push` does, through a node on this machine that
        reads the file itself (``POST /api/v1/pushes``); ``progress`` is told the bytes it has
        read, a few times a second. :class:`~errors.Forbidden` (not from this machine, or not
        as the node's user) or :class:`~errors.CannotReadThere` (the node cannot read it, or
        sees another file there) when it cannot: :meth:`push` then sends the bytes."""
        path = Path(os.path.abspath(path))
        return self._push_path(path, _stat(path), name or path.name, force, progress)

    def _push_path(
        self, path: Path, found: os.stat_result, name: str, force: bool, progress: Progress
    ) -> PushResult:
        push_id = secrets.token_urlsafe(12)
        expect = {
            "dev": found.st_dev,
            "ino": found.st_ino,
            "size": found.st_size,
            "mtime_ns": found.st_mtime_ns,
        }
        ask = {"path": str(path.absolute()), "name": name, "force": force, "id": push_id}
        body = json.dumps({**ask, "expect": expect}).encode()

        def post() -> PushResult:
            data: PushResult = self.transport.json(
                "POST",
                "/api/v1/pushes",
                body=body,
                headers={"Content-Type": "application/json"},
                timeout=None,
            )
            return data

        if progress is no_progress:
            return post()
        told = 0

        def poll() -> None:
            nonlocal told
            try:
                done = self.transport.json("GET", f"/api/v1/pushes/{push_id}", timeout=POLL_TIMEOUT)
            except TreeDriveError:
                return  # not begun yet, or over: the answer says
            if isinstance(done.get("bytes_done"), int) and done["bytes_done"] > told:
                progress(done["bytes_done"] - told)
                told = done["bytes_done"]

        data = meanwhile(post, poll, POLL)
        if found.st_size > told:
            progress(found.st_size - told)
        return data

    def get(self, file_id: str) -> FileRecord:
        """Have the node fetch the file from the peers that hold it (if it holds no copy yet)
        and verify it; its record then. Waits as long as the fetch takes
        (:class:`~errors.FetchFailed` when no holder could give it)."""
        data: FileRecord = self.transport.json(
            "POST", f"/api/v1/files/{_id(file_id)}/fetch", timeout=None
        )
        return data

    def content(self, file_id: str) -> http.client.HTTPResponse:
        """The bytes of a file the node holds, to read as they come (close it, or use it in a
        ``with``); ``Content-Length`` is their size."""
        return self.transport.request("GET", f"/api/v1/files/{_id(file_id)}/content", timeout=None)

    def download(
        self, file_id: str, target: Path | str, *, progress: Progress = no_progress
    ) -> Path:
        """Save the bytes of a file the node holds as ``target``: written beside it and renamed
        once whole, so ``target`` is never a partial file. ``progress`` is told the bytes
        written as they go."""
        target = Path(target)
        tmp = target.with_name(f".{target.name}.part")
        with self.content(file_id) as resp:
            try:
                with tmp.open("wb") as f:
                    while block := self._read(resp):
                        f.write(block)
                        progress(len(block))
                tmp.replace(target)
            except OSError as exc:
                raise LocalFileError(f"cannot save to {target}: {exc.strerror or exc}") from None
            finally:
                tmp.unlink(missing_ok=True)
        return target

    def _read(self, resp: http.client.HTTPResponse) -> bytes:
        try:
            return resp.read(CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            raise self.transport.unreachable(exc) from None

    def delete(self, file_id: str) -> Deleted:
        """Delete a file this node owns, here and everywhere (:class:`~errors.Forbidden` for
        another's)."""
        data: Deleted = self.transport.json("DELETE", f"/api/v1/files/{_id(file_id)}")
        return data
