"""Helpers for end-to-end tests: drive a real ``treedrive run`` process through its shell over
pipes, speak the classic protocol to it over raw sockets, and watch its files.

Nothing here mocks anything: the processes, sockets and SQLite files are real.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import queue
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import NodeProcess

Predicate = Callable[[], Any]


def wait_until(
    predicate: Predicate, timeout: float = 15.0, every: float = 0.1, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {timeout} s: {what or predicate}")
        time.sleep(every)


def file_id_of(data: bytes, ts: int) -> str:
    return hashlib.sha256(data + str(ts).encode()).hexdigest()


# -- the shell over pipes ------------------------------------------------------------------------


class ByShortId(dict[str, dict[str, str]]):
    """Rows keyed by the 12-character ids that tables show; a full id finds its row too."""

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key[:12])

    def __getitem__(self, key: str) -> dict[str, str]:
        return super().__getitem__(key[:12])


class Shell:
    """A node process started with ``--shell``; :meth:`run` sends one command and returns its
    output. After each command a unique unknown command is sent as a sentinel: the shell answers
    commands in order, so its "unknown command" line marks the end of the real one's output."""

    _count = itertools.count()

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None

    # life cycle
    def start(self) -> Shell:
        self.node.start(shell=True)  # noqa: S604 (the node's shell, not /bin/sh)
        proc = self.node.proc
        assert proc is not None
        assert proc.stdout is not None
        self._lines = queue.Queue()
        self._reader = threading.Thread(
            target=self._read, args=(proc.stdout, self._lines), daemon=True
        )
        self._reader.start()
        return self

    @staticmethod
    def _read(stream: Any, lines: queue.Queue[str | None]) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in stream:
                lines.put(line.rstrip("\n"))
        lines.put(None)

    @property
    def proc(self) -> subprocess.Popen[str]:
        assert self.node.proc is not None
        return self.node.proc

    @property
    def data_dir(self) -> Path:
        return self.node.data_dir

    @property
    def port(self) -> int:
        return self.node.port

    @property
    def address(self) -> str:
        return self.node.address

    @property
    def peer_id(self) -> str:
        return str(self.node.info()["peer_id"])

    def running(self) -> bool:
        return self.node.proc is not None and self.node.proc.poll() is None

    def _close_pipes(self) -> None:
        proc = self.node.proc
        if proc is None:
            return
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError, ValueError):
                    pipe.close()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def stop(self) -> int | None:
        """SIGINT; returns the exit code."""
        code = self.node.stop()
        self._close_pipes()
        return code

    def kill(self) -> None:
        self.node.kill()
        self._close_pipes()

    def exit(self, timeout: float = 20) -> int:
        """The shell's ``exit`` command; returns the exit code."""
        self._write("exit\n")
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self.node.kill()
            self._close_pipes()
        return code

    # commands
    def _write(self, text: str) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(text)
        stdin.flush()

    def run(self, command: str, timeout: float = 30.0) -> str:
        sentinel = f"__end_{next(self._count)}__"
        self._write(f"{command}\n{sentinel}\n")
        end = f"unknown command {sentinel!r}; type 'help'"
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{command!r}: no complete answer in {timeout} s: {out}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"{command!r}: the shell ended; output so far: {out}")
            if line == end:
                return "\n".join(out)
            out.append(line)

    @staticmethod
    def _rows(text: str) -> list[list[str]]:
        lines = text.splitlines()
        if not lines or lines[0].split()[:1] not in (["peer"], ["file_id"]):
            return []
        return [line.split() for line in lines[1:] if line.strip()]

    def peers(self) -> set[str]:
        return {row[0] for row in self._rows(self.run("peers"))}

    def files(self, scope: str = "both") -> ByShortId:
        """file_id -> {name, owner, local, peers} as the shell's ``list`` shows them (by the
        short ids its table shows; a full id finds its row too)."""
        out = ByShortId()
        for row in self._rows(self.run(f"list {scope}")):
            # file_id name size(2 words) owner local peers
            file_id, name, owner, local, holders = row[0], row[1], row[-3], row[-2], row[-1]
            out[file_id] = {"name": name, "owner": owner, "local": local, "peers": holders}
        return out

    def push(self, path: Path) -> str:
        out = self.run(f"push {path}")
        assert out.startswith("pushed "), out
        return out.rsplit(" ", 1)[-1]

    def get(self, file_id: str) -> str:
        return self.run(f"get {file_id}", timeout=40)

    def delete(self, file_id: str) -> str:
        return self.run(f"delete {file_id}")

    # files on disk
    def blob(self, file_id: str) -> Path:
        return self.data_dir / "blobs" / file_id

    def partials(self) -> list[Path]:
        return sorted((self.data_dir / "partial").glob("*"))

    def log_text(self) -> str:
        path = self.data_dir / "node.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Shells:
    """Makes :class:`Shell` nodes from the ``node_process`` factory; closes their pipes."""

    def __init__(self, node_process: Callable[..., NodeProcess]) -> None:
        self._factory = node_process
        self._made: list[Shell] = []

    def __call__(self, peer_id: str, *extra: str, port: int | None = None) -> Shell:
        sh = Shell(self._factory(peer_id, *extra, port=port))
        self._made.append(sh)
        return sh

    def close(self) -> None:
        for sh in self._made:
            sh.kill()


# -- the classic protocol over raw sockets -------------------------------------------------------
def send_raw(port: int, data: bytes, timeout: float = 5.0) -> None:
    """Connect, write ``data``, close (one message per connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)


def send_message(port: int, message: dict[str, Any]) -> None:
    send_raw(port, json.dumps(message).encode())


def read_object(s: socket.socket, timeout: float = 15.0) -> dict[str, Any] | None:
    """Read one JSON object from ``s`` (stop as soon as it is complete); None if the peer closed
    without sending one."""
    s.settimeout(timeout)
    buf = bytearray()
    decoder = json.JSONDecoder()
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            if not buf.strip():
                return None
            raise AssertionError(f"connection closed mid-object: {bytes(buf[:200])!r}")
        buf += chunk
        if buf.rstrip().endswith(b"}"):
            try:
                obj, _ = decoder.raw_decode(buf.decode())
            except ValueError:
                continue
            assert isinstance(obj, dict)
            return obj


def get_file(port: int, file_id: str, timeout: float = 15.0) -> dict[str, Any] | None:
    """A GET_FILE on its own connection; the FILE_DATA answer (None if the node just closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(json.dumps({"type": "GET_FILE", "file_id": file_id}).encode())
        return read_object(s, timeout)


def file_data(data: bytes, name: str, ts: int, owner: str, file_id: str | None = None) -> bytes:
    record = {
        "type": "FILE_DATA",
        "file_name": name,
        "file_size": len(data) / 1048576,
        "file_id": file_id or file_id_of(data, ts),
        "file_owner": owner,
        "file_timestamp": ts,
        "data": data.hex(),
    }
    return json.dumps(record).encode()


class Server:
    """A real listening socket on 127.0.0.1 (a free port): a thread accepts every connection and
    hands it to :meth:`handle`, which owns it. A subclass sets up what ``handle`` uses before it
    calls ``super().__init__()``, which starts the thread. :meth:`close` ends it."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = int(self._server.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            self.handle(conn)

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()


class Listener(Server):
    """A classic peer's listening side: every message sent to ``port`` lands in a queue."""

    def __init__(self) -> None:
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, AssertionError, ValueError):
            obj = read_object(conn, timeout=5)
            if obj is not None:
                self.messages.put(obj)

    def wait(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching message within {timeout} s")
            try:
                msg = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            if predicate(msg):
                return msg

    def gossip_to(self, port: int, peer_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """Send a GOSSIP (fresh id) to the node on ``port`` and return its GOSSIP_REPLY."""
        gossip_id = str(uuid.uuid4())
        send_message(
            port,
            {
                "type": "GOSSIP",
                "host": "127.0.0.1",
                "port": self.port,
                "id": gossip_id,
                "peerId": peer_id,
            },
        )
        return self.wait(lambda m: m.get("type") == "GOSSIP_REPLY", timeout)


# -- the data dir ---------------------------------------------------------------------------------
def tree(root: Path) -> set[str]:
    """Every path under ``root``, relative."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def sqlite_ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


def integrity_check(db: Path) -> str:
    con = sqlite_ro(db)
    try:
        return str(con.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        con.close()
