"""Benchmark: a node under hostile input, floods, slow connections and stalled readers.

Every scenario starts fresh, real ``python -m treedrive run --no-shell`` processes on 127.0.0.1
(own scratch data dirs, free ports, ``--gossip-interval 2``, ``--download-limit 0``), attacks them
from this process over raw sockets, and prints ONE line of figures with PASS/FAIL against the
targets of issue 8 ("Done when"), then a few indented details. It always exits 0 (it is a
benchmark); the summary at the end lists what failed.

1. ``fuzz``: at least 100,000 fuzzed and mutated P2P messages (random bytes; GOSSIP, GOSSIP_REPLY,
   ANNOUNCE, DELETE, FILE_DATA and GET_FILE with lone surrogates as ``\\ud800`` escapes and as raw
   CESU bytes, 401-digit numbers, ``1e308``, ``NaN``, a port of ``"²"`` or full-width digits, wrong
   types, truncations, flipped bytes, nesting up to 100,000 deep; unsolicited FILE_DATA pushes whose
   bytes match their id but whose metadata is hostile), many at once over many connections. Then:
   unhandled exceptions in the node's output (``Traceback``, ``error while handling``, ``Task
   exception was never retrieved``, ``Exception in callback``), orphan blobs (files in
   ``blobs/`` without a ``files`` row that has ``has_copy``), VmRSS before and after, and the
   time a legitimate GOSSIP takes to be answered (its GOSSIP_REPLY on a new connection) right
   after. Targets: 0 exceptions, 0 orphans, RSS within +50 MiB, reply < 2 s.
2. ``amplification``: the node holds 1,000 small files (``POST /api/files``); an established
   legitimate peer gossips with it every 1.1 intervals (and answers its GOSSIPs, as a real peer
   does: its proof of being one); then 2,000 GOSSIPs (~121 bytes, unique ids, varied peerIds)
   naming 16 listeners of this script and 16 closed ports (bound, never listening). Reply bytes
   (GOSSIP_REPLY delivered to the listeners, until 3 s pass without a reply) / GOSSIP bytes
   sent; the other bytes delivered (forwards, the node's own gossip rounds) are shown too.
   Targets: reply bytes ≤ 10x, RSS within +50 MiB, every legitimate GOSSIP answered within 2 s
   during the flood.
3. ``slow``: for 20 s, 500 slow connections a second (each sends a FILE_DATA header and then
   trickles its ``"data"`` string, two hex digits every 3 s, until the end) and 1,000 short ones
   a second (connect, send 0-8 bytes, close), while 4 legitimate peers gossip every 2.5 s and a
   client sends a GET_FILE for a held 256 KiB file every 2 s. Targets: ≥ 90% of GOSSIPs answered
   within 2 s, every GET_FILE complete within 5 s, node.log < 10 lines a second during the attack.
4. ``stalled``: a holder takes a 64 MiB file; a first receiver node fetches it (API
   ``POST /api/files/{id}/fetch``, raw ranges) as the baseline; then 40 ranged GET_FILEs (raw
   extension, offset 0, to the end) from sockets with a 4 KiB receive buffer that never read;
   then a second receiver fetches the same file. Target: the second fetch is less than 1 s
   slower than the baseline.
5. ``fds``: a node started under a soft limit of 1,024 open files (a preamble sets it before the
   node's code runs; raising it to the hard limit at start is the intended fix), 1,100 idle
   connections to its HTTP port (half of them send a partial request head), held for 40 s; every
   5 s a GOSSIP (reply within 2 s) and ``GET /api/status`` (answer within 2 s). Targets: every
   check answered, node.log grows < 1 MiB over the window.

This script raises its own soft limit of open files to the hard one. All node processes are
ended by PID at the end, also on Ctrl-C or a scenario's timeout; the scratch dir is removed
(``--keep`` keeps it: node logs and data dirs).

    python bench/hostile.py                   # the full run (the sizes of issue 8), ~8 minutes
    python bench/hostile.py --quick           # smaller sizes and shorter windows, ~2 minutes
    python bench/hostile.py --only fuzz       # one scenario (repeatable)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import http.client
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transfer import MIB, TIMERS, ApiError, Node, cpu_seconds, make_payload, status_kib

HOST = "127.0.0.1"
GOSSIP_INTERVAL = 2.0
TARGET_RSS_MIB = 50
TARGET_REPLY_S = 2.0
TARGET_AMPLIFICATION = 10.0
TARGET_GOSSIP_SHARE = 0.90
TARGET_GET_S = 5.0
TARGET_LOG_LINES_S = 10.0
TARGET_STALL_DELAY_S = 1.0
TARGET_LOG_GROWTH = 1 * MIB
EXCEPTION_MARKERS = (
    "Traceback (most recent call last)",
    "error while handling",
    "Task exception was never retrieved",
    "Exception in callback",
)
SCENARIOS = ("fuzz", "amplification", "slow", "stalled", "fds")


class ScenarioTimeout(Exception):
    pass


# -- the node processes --------------------------------------------------------------------------
NODES: list[Node] = []


def start_node(tmp: Path, name: str, *extra: str, preamble: str = "") -> Node:
    timers = dict(TIMERS)
    timers["gossip-interval"] = str(GOSSIP_INTERVAL)
    node = Node(name, tmp / name, ["--download-limit", "0", *extra], timers=timers)
    node.preamble = preamble
    NODES.append(node)
    node.start()
    return node


def kill_all() -> None:
    """SIGKILL every node this script started, by PID."""
    for node in NODES:
        with contextlib.suppress(Exception):
            node.kill()
    NODES.clear()


def rss_mib(node: Node) -> float:
    kib = status_kib(node.pid, "VmRSS") if node.alive() else None
    return (kib or 0) / 1024


class RssPeak(threading.Thread):
    def __init__(self, node: Node, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.node, self.every, self.peak = node, every, 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every):
            self.peak = max(self.peak, rss_mib(self.node))

    def stop(self) -> float:
        self._halt.set()
        self.join(2)
        return max(self.peak, rss_mib(self.node))


def out_path(node: Node) -> Path:
    """The node's stdout+stderr: every log line (the stderr handler) and anything printed
    outside logging (an exception in a thread)."""
    return node.data_dir.parent / f"{node.name}.out"


def exceptions_in(path: Path) -> tuple[int, collections.Counter[str]]:
    """Unhandled exceptions in a node's output: the number, and the exception types seen."""
    kinds: collections.Counter[str] = collections.Counter()
    tracebacks = markers = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return 0, kinds
    for i, line in enumerate(lines):
        if any(m in line for m in EXCEPTION_MARKERS[1:]):
            markers += 1
        if "Traceback (most recent call last)" not in line:
            continue
        tracebacks += 1
        for later in lines[i + 1 : i + 200]:
            if (
                not later
                or later[0].isspace()
                or later.startswith(("Traceback", "During ", "The "))
            ):
                continue
            kinds[later.split(":", 1)[0][:60]] += 1
            break
    return max(tracebacks, markers), kinds


def orphans(node: Node) -> tuple[int, int, int]:
    """(blobs without a held catalogue row, held rows without a blob, files left in partial/)."""
    blob_dir = node.data_dir / "blobs"
    blobs = {p.name for p in blob_dir.iterdir() if re.fullmatch(r"[0-9a-f]{64}", p.name)}
    con = sqlite3.connect(f"file:{node.data_dir / 'treedrive.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = {r[0] for r in con.execute("SELECT file_id FROM files WHERE has_copy")}
    finally:
        con.close()
    partial = len(list((node.data_dir / "partial").glob("*")))
    return len(blobs - rows), len(rows - blobs), partial


def log_size(node: Node) -> int:
    try:
        return node.log_path.stat().st_size
    except OSError:
        return 0


def log_lines_between(node: Node, start: int, end: int) -> tuple[int, int]:
    """(lines, the most in one wall-clock second) of node.log between two byte offsets."""
    with node.log_path.open("rb") as f:
        f.seek(start)
        chunk = f.read(max(0, end - start))
    per_second: collections.Counter[bytes] = collections.Counter()
    for line in chunk.splitlines():
        if len(line) >= 19 and line[:2] == b"20":
            per_second[line[:19]] += 1
    return chunk.count(b"\n"), max(per_second.values(), default=0)


def soft_nofile(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return line.split()[3]
    except OSError:
        pass
    return "?"


def push_bytes(node: Node, name: str, data: bytes) -> str:
    answer = node.request(
        "POST",
        f"/api/files?name={name}",
        body=data,
        timeout=60,
        headers={"Content-Type": "application/octet-stream"},
    )
    return str(answer["file_id"])


# -- the legitimate side (threads, blocking sockets) ---------------------------------------------
TYPE_RE = re.compile(rb'"type"\s*:\s*"([A-Za-z_]+)"')


def message_type(head: bytes) -> str:
    m = TYPE_RE.search(head)
    return m.group(1).decode() if m else "(no type)"


class Inbox:
    """A listening socket served by threads: every connection is read to its end (5 s at most);
    the arrival time, type and size of each message are kept."""

    def __init__(self) -> None:
        self.server = socket.create_server((HOST, 0), backlog=512)
        self.server.settimeout(0.2)
        self.port = int(self.server.getsockname()[1])
        self.arrivals: list[tuple[float, str, int]] = []
        self._cond = threading.Condition()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._halt.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buf = bytearray()
        conn.settimeout(5)
        with conn, contextlib.suppress(OSError):
            while chunk := conn.recv(1 << 18):
                buf += chunk
                if buf.rstrip().endswith(b"}") and self._complete(buf):
                    break
        with self._cond:
            self.arrivals.append((time.monotonic(), message_type(bytes(buf[:300])), len(buf)))
            self._cond.notify_all()

    @staticmethod
    def _complete(buf: bytearray) -> bool:
        try:
            json.JSONDecoder().raw_decode(buf.decode())
        except ValueError:
            return False
        return True

    def wait_reply(self, after: float, skip: int, timeout: float) -> tuple[float | None, int]:
        """The arrival time of the first GOSSIP_REPLY after ``after`` beyond the first ``skip``
        ones; and how many there are so far."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                replies = [t for t, kind, _ in self.arrivals if kind == "GOSSIP_REPLY"]
                fresh = [t for t in replies[skip:] if t >= after]
                if fresh:
                    return fresh[0], replies.index(fresh[0]) + 1
                left = deadline - time.monotonic()
                if left <= 0:
                    return None, len(replies)
                self._cond.wait(left)

    def close(self) -> None:
        self._halt.set()
        self._thread.join(2)
        self.server.close()


def gossip_message(port: int, peer_id: str, gossip_id: str | None = None) -> bytes:
    message = {
        "type": "GOSSIP",
        "host": HOST,
        "port": port,
        "id": gossip_id or str(uuid.uuid4()),
        "peerId": peer_id,
    }
    return json.dumps(message).encode()


def send_blocking(port: int, data: bytes, timeout: float = 5.0) -> None:
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(data)


class AnsweringInbox(Inbox):
    """An :class:`Inbox` that also answers the node's own GOSSIPs (those naming ``node_port``)
    with a GOSSIP_REPLY (no files), as a real classic peer does: that is how a peer proves
    itself to the node. GOSSIPs the node forwards name other addresses: a real peer would
    answer those, not the node, and this script would count its replies as the node's."""

    def __init__(self, node_port: int, peer_id: str) -> None:
        self.node_port, self.peer_id = node_port, peer_id
        super().__init__()

    def _read(self, conn: socket.socket) -> None:
        buf = bytearray()
        conn.settimeout(5)
        with conn, contextlib.suppress(OSError):
            while chunk := conn.recv(1 << 18):
                buf += chunk
                if buf.rstrip().endswith(b"}") and self._complete(buf):
                    break
        with self._cond:
            self.arrivals.append((time.monotonic(), message_type(bytes(buf[:300])), len(buf)))
            self._cond.notify_all()
        with contextlib.suppress(ValueError, OSError):
            message = json.loads(bytes(buf))
            if message.get("type") == "GOSSIP" and message.get("port") == self.node_port:
                answer = {"type": "GOSSIP_REPLY", "host": HOST, "port": self.port,
                          "peerId": self.peer_id, "files": []}  # fmt: skip
                send_blocking(self.node_port, json.dumps(answer).encode())


class Prober(threading.Thread):
    """A legitimate peer: gossips to the node every ``every`` s from its own listener and notes
    how long each GOSSIP_REPLY takes (None: none within ``wait`` s, or the send failed).
    ``answers``: it also answers the node's GOSSIPs, as a real peer does."""

    def __init__(
        self, node_port: int, peer_id: str, every: float, wait: float = 6.0, answers: bool = False
    ) -> None:
        super().__init__(daemon=True)
        self.node_port, self.peer_id, self.every, self.wait = node_port, peer_id, every, wait
        self.inbox = AnsweringInbox(node_port, peer_id) if answers else Inbox()
        self.results: list[tuple[float, float | None]] = []
        self.send_failed: list[float] = []
        self._seen = 0
        self._halt = threading.Event()

    def probe(self) -> float | None:
        t0 = time.monotonic()
        try:
            send_blocking(self.node_port, gossip_message(self.inbox.port, self.peer_id))
        except OSError:
            self.results.append((t0, None))
            self.send_failed.append(t0)
            return None
        arrived, self._seen = self.inbox.wait_reply(t0, self._seen, self.wait)
        latency = None if arrived is None else arrived - t0
        self.results.append((t0, latency))
        return latency

    def run(self) -> None:
        while not self._halt.is_set():
            t0 = time.monotonic()
            self.probe()
            self._halt.wait(max(0.0, t0 + self.every - time.monotonic()))

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(self.wait + 6)
        self.inbox.close()

    def between(self, start: float, end: float) -> list[float | None]:
        return [lat for t, lat in self.results if start <= t <= end]


GET_FAILURES: collections.Counter[str] = collections.Counter()


def get_file_time(port: int, file_id: str, timeout: float = 10.0) -> float | None:
    """A classic GET_FILE: seconds until the whole FILE_DATA arrived with data (None: failed,
    the reason counted in GET_FAILURES)."""
    t0 = time.monotonic()
    buf = bytearray()
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(json.dumps({"type": "GET_FILE", "file_id": file_id}).encode())
            while time.monotonic() - t0 < timeout:
                s.settimeout(max(0.01, timeout - (time.monotonic() - t0)))
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
                if buf.rstrip().endswith(b"}") and Inbox._complete(buf):
                    break
    except OSError as exc:
        GET_FAILURES[type(exc).__name__] += 1
        return None
    try:
        answer = json.loads(buf)
    except ValueError:
        GET_FAILURES["no answer" if not buf else f"cut after {len(buf)} bytes"] += 1
        return None
    if answer.get("file_id") != file_id or not answer.get("data"):
        GET_FAILURES["not here"] += 1
        return None
    return time.monotonic() - t0


def http_status_time(node: Node, timeout: float = 5.0) -> float | None:
    t0 = time.monotonic()
    try:
        node.request("GET", "/api/status", timeout=timeout)
    except (OSError, ApiError, http.client.HTTPException):
        return None
    return time.monotonic() - t0


# -- the attacker's side (asyncio) ---------------------------------------------------------------
class Sink:
    """An attacker's listener: counts the bytes the node delivers to it, by message type."""

    def __init__(self) -> None:
        self.bytes: collections.Counter[str] = collections.Counter()
        self.messages: collections.Counter[str] = collections.Counter()
        self.last_reply = 0.0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Sink:
        self.server = await asyncio.start_server(self._conn, HOST, 0, backlog=1024)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = b""
        size = 0
        try:
            while True:
                chunk = await asyncio.wait_for(reader.read(1 << 20), 10)
                if not chunk:
                    break
                if len(head) < 300:
                    head += chunk[:300]
                size += len(chunk)
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()
        kind = message_type(head)
        self.bytes[kind] += size
        self.messages[kind] += 1
        if kind == "GOSSIP_REPLY":
            self.last_reply = time.monotonic()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def closed_ports(n: int) -> list[socket.socket]:
    """Sockets bound to a port and never listening: a connection to one is refused, and no other
    process can take the port meanwhile."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((HOST, 0))
        socks.append(s)
    return socks


def quiet_loop(loop: asyncio.AbstractEventLoop) -> None:
    loop.set_exception_handler(lambda _loop, _ctx: None)


async def send_one(
    port: int, data: bytes, stats: collections.Counter[str], read: bool = False, limit: float = 5
) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), limit)
    except (OSError, TimeoutError):
        stats["connect failed"] += 1
        return
    try:
        if data:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), limit)
        if read:
            if writer.can_write_eof():
                writer.write_eof()  # a cut message ends here: the node must not wait for more
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(1 << 16), 2)
        stats["sent"] += 1
    except (OSError, TimeoutError):
        stats["reset"] += 1
    finally:
        writer.transport.abort() if read else writer.close()


# -- the fuzzer -----------------------------------------------------------------------------------
LONE = ["\ud800", "\udfff", "a\ud800b", "\udbff", "x\udc00\ud800y"]
HUGE = [10**400, -(10**400), 2**63, 2**64, -1, 0, -(2**63) - 1, 1e308, -1e308, 5e-324, 1.5, -0.0]
RAW_NUMBERS = [
    "1" * 401, "-" + "9" * 401, "1e308", "1e999", "-1e999", "NaN", "Infinity", "-Infinity",
    "1E+308", "0.1e-999", "1" * 5000,
]  # fmt: skip
TEXTS = ["", "²", "١٢٣", "\x00", "\x1b[2J\x07", "../../etc/passwd", "a/b\\c", "\u202e", "x" * 300,
         "\U0001d518\U0001d52b", "\ufeff", "<script>", "null", "0"]  # fmt: skip
WRONG: list[Any] = [None, True, False, [], {}, [1, 2], {"a": {"b": 1}}, [[[]]], 1, 0.5, "x"]
SAFE_HOSTS: list[Any] = [HOST, "localhost", "127.1", "", "127.0.0.1\x00", "\ud800", "a\udfffb"]
TYPES = ["GOSSIP", "GOSSIP_REPLY", "ANNOUNCE", "DELETE", "FILE_DATA", "GET_FILE"]


class Fuzzer:
    """Makes fuzzed P2P messages. Every host it names is loopback (or cannot be resolved
    without a lookup), and every valid port it names is this script's: the node is never made to
    dial anything else."""

    def __init__(self, rng: random.Random, ports: list[int], held: list[str], node_id: str) -> None:
        self.rng, self.ports, self.held, self.node_id = rng, ports, held, node_id
        self.kinds: collections.Counter[str] = collections.Counter()

    # values
    def port(self) -> Any:
        r, p = self.rng, self.rng.choice(self.ports)
        return r.choice(
            [p, p, p, str(p), float(p), p + 0.5, "²", "".join(chr(0xFF10 + int(c)) for c in str(p)),
             0, 65536, -1, 10**400, 1e308, True, None, [p], {"p": p}]
        )  # fmt: skip

    def peer_id(self) -> Any:
        r = self.rng
        pick = r.random()
        if pick < 0.5:
            return f"fz-{r.randrange(10**6)}"
        if pick < 0.6:
            return self.node_id
        return self.hostile()

    def file_id(self) -> Any:
        r = self.rng
        pick = r.random()
        if pick < 0.3 and self.held:
            return r.choice(self.held)
        if pick < 0.7:
            return os.urandom(32).hex()
        return r.choice([self.hostile(), os.urandom(32).hex().upper(), "0" * 63, "g" * 64])

    def hostile(self) -> Any:
        r = self.rng
        pick = r.random()
        if pick < 0.3:
            return r.choice(LONE)
        if pick < 0.55:
            return r.choice(HUGE)
        if pick < 0.8:
            return r.choice(TEXTS)
        return r.choice(WRONG)

    def record(self) -> dict[str, Any]:
        r = self.rng
        rec: dict[str, Any] = {
            "file_name": f"f{r.randrange(1000)}.txt",
            "file_size": r.random(),
            "file_id": self.file_id(),
            "file_owner": self.peer_id(),
            "file_timestamp": int(time.time()) - r.randrange(10**6),
        }
        return rec

    # messages
    def base(self, kind: str) -> dict[str, Any]:
        r = self.rng
        if kind == "GOSSIP":
            return {"type": kind, "host": HOST, "port": r.choice(self.ports),
                    "id": str(uuid.uuid4()), "peerId": self.peer_id()}  # fmt: skip
        if kind == "GOSSIP_REPLY":
            files = [self.record() for _ in range(r.choice([0, 1, 2, 3, 5]))]
            return {"type": kind, "host": HOST, "port": r.choice(self.ports),
                    "peerId": self.peer_id(), "files": files}  # fmt: skip
        if kind == "ANNOUNCE":
            return {"type": kind, "from": self.peer_id(), **self.record()}
        if kind == "DELETE":
            return {"type": kind, "from": self.peer_id(), "file_id": self.file_id()}
        if kind == "FILE_DATA":
            data = os.urandom(r.randrange(0, 64))
            rec = self.record()
            return {"type": kind, **rec, "data": data.hex()}
        message: dict[str, Any] = {"type": "GET_FILE", "file_id": self.file_id()}
        if r.random() < 0.4:
            message["treedrive"] = {"raw": True, "offset": r.choice([0, 0, 1, -1, 10**400, 1e308]),
                                    "length": r.choice([None, 0, 10, -5, 2**63, "x"])}  # fmt: skip
        return message

    def mutate_fields(self, message: dict[str, Any], raw: dict[str, str]) -> None:
        r = self.rng
        for _ in range(r.choice([1, 1, 2, 3])):
            key = r.choice([*message, "extra", "treedrive"])
            op = r.random()
            if key == "type" and op < 0.7:
                message[key] = r.choice(["gossip", "GOSSIP\x00", "FILE_DATA ", 1, None, "\ud800"])
            elif op < 0.1:
                message.pop(key, None)
            elif key == "host":
                message[key] = r.choice(SAFE_HOSTS + WRONG)
            elif key == "port":
                message[key] = self.port()
            elif key == "files" and op < 0.5:
                message[key] = r.choice(
                    [None, {}, "x", [None, 1, "a"], [self.record() | {"file_size": "x" * 10}]]
                )
            elif key == "files":
                recs = message.get("files")
                if isinstance(recs, list) and recs and isinstance(rec := r.choice(recs), dict):
                    rec[r.choice(list(rec))] = self.hostile()
            elif op < 0.35:
                token = f"@@RAW{len(raw)}@@"
                raw[token] = r.choice(RAW_NUMBERS)
                message[key] = token
            else:
                message[key] = self.hostile()

    def encode(self, message: dict[str, Any], raw: dict[str, str]) -> bytes:
        r = self.rng
        if r.random() < 0.05:
            text = json.dumps(message, ensure_ascii=False)
            data = text.encode("utf-8", "surrogatepass")  # lone surrogates as raw CESU bytes
        else:
            data = json.dumps(message).encode()
        for token, value in raw.items():
            data = data.replace(f'"{token}"'.encode(), value.encode())
        return data

    def mangle(self, data: bytes) -> bytes:
        r = self.rng
        op = r.randrange(8)
        n = len(data)
        if op == 0 and n:
            return data[: r.randrange(n)]
        if op == 1 and n:
            b = bytearray(data)
            for _ in range(r.randrange(1, 5)):
                b[r.randrange(n)] = r.randrange(256)
            return bytes(b)
        if op == 2:
            i = r.randrange(n + 1)
            return data[:i] + os.urandom(r.randrange(1, 16)) + data[i:]
        if op == 3:
            return data + r.choice([b"\n", b"garbage", b"}", b'{"type":"GOSSIP"}', data])
        if op == 4:
            return r.choice([b"\xef\xbb\xbf", b"[", b" " * 100, b"\x00"]) + data
        if op == 5:
            return data.replace(b'"', b"'", r.randrange(1, 4))
        if op == 6:
            return data.replace(b":", b"::", 1)
        return data.replace(b"}", b",}", 1)

    def nesting(self) -> bytes:
        r = self.rng
        depth = r.choice([64, 1000, 1000, 20000, 20000, 100000])
        opener, closer = r.choice([(b"[", b"]"), (b'{"a":', b"}")])
        inner = opener * depth + b"1" + closer * depth
        if r.random() < 0.3:
            inner = opener * depth  # never closed
        head = gossip_message(self.rng.choice(self.ports), "nest")[:-1]
        return head + b', "x": ' + inner + b"}"

    def valid_push(self) -> bytes:
        """An unsolicited FILE_DATA whose bytes match its id, with hostile metadata: the bytes
        verify, so only a check of the metadata before the blob is committed keeps it out."""
        r = self.rng
        data = os.urandom(r.randrange(1, 200))
        ts: Any = r.choice([10**400, 1e308, 2**63, 2**64, -5, int(time.time()), 1.5e9])
        ts_text = str(int(ts)) if isinstance(ts, float) else str(ts)
        file_id = hashlib.sha256(data + ts_text.encode()).hexdigest()
        message = {
            "type": "FILE_DATA",
            "file_name": r.choice(LONE + TEXTS + ["ok.bin"]),
            "file_size": r.choice([len(data) / MIB, 1e308, 10**400, "x", -1]),
            "file_id": file_id,
            "file_owner": r.choice([*LONE, self.node_id, "pusher", "\x1b]0;x\x07", 10**400]),
            "file_timestamp": ts,
            "data": data.hex(),
        }
        return self.encode(message, {})

    def next(self) -> tuple[str, bytes]:
        r = self.rng
        pick = r.random()
        if pick < 0.05:
            return "random", os.urandom(r.randrange(0, 256))
        if pick < 0.08:
            return "nesting", self.nesting()
        if pick < 0.13:
            return "push", self.valid_push()
        kind = r.choice(TYPES)
        message = self.base(kind)
        if pick < 0.16:
            return kind, self.encode(message, {})
        raw: dict[str, str] = {}
        self.mutate_fields(message, raw)
        data = self.encode(message, raw)
        if r.random() < 0.3:
            data = self.mangle(data)
        if r.random() < 0.002:
            data = data[:-1] + b', "big": "' + b"ab" * 500_000 + b'"}'
        return kind, data


# -- the scenarios --------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    line: str
    passed: bool
    details: list[str] = field(default_factory=list)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def mib_delta(before: float, after: float, peak: float) -> str:
    return f"RSS {before:.0f}->{after:.0f} MiB ({after - before:+.0f}, peak {peak:.0f})"


def fmt_s(value: float | None) -> str:
    return "none" if value is None else f"{value:.2f} s"


def scenario_fuzz(args: argparse.Namespace, tmp: Path) -> Result:
    total = 10_000 if args.quick else args.fuzz_count
    node = start_node(tmp, "fuzz")
    held = [push_bytes(node, f"held{i}.txt", os.urandom(100 + i)) for i in range(5)]
    rng = random.Random(args.seed)
    socks = closed_ports(4)
    stats: collections.Counter[str] = collections.Counter()
    # A legitimate peer, as in the amplification scenario: it answers the node's gossip, so it
    # has proven its address by the time the fuzz ends (a newcomer from the fuzzer's own address
    # is a stranger the reply budget treats like the fuzzer; its figure is a detail line).
    prober = Prober(node.port, "legit-after-fuzz", every=GOSSIP_INTERVAL, wait=30, answers=True)
    prober.probe()
    time.sleep(GOSSIP_INTERVAL * 2.2)
    time.sleep(1)
    rss0 = rss_mib(node)
    cpu0 = cpu_seconds(node.pid) or 0.0
    sampler = RssPeak(node)
    sampler.start()

    async def attack() -> tuple[float, Fuzzer, list[Sink]]:
        quiet_loop(asyncio.get_running_loop())
        sinks = [await Sink().start() for _ in range(4)]
        ports = [s.port for s in sinks] + [int(s.getsockname()[1]) for s in socks]
        fuzzer = Fuzzer(rng, ports, held, node.name)
        sem = asyncio.Semaphore(args.conns)
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.monotonic()

        async def one(kind: str, data: bytes) -> None:
            try:
                await send_one(node.port, data, stats, read=kind == "GET_FILE")
            finally:
                sem.release()

        for _ in range(total):
            kind, data = fuzzer.next()
            fuzzer.kinds[kind] += 1
            await sem.acquire()
            task = asyncio.ensure_future(one(kind, data))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        elapsed = time.monotonic() - t0
        await asyncio.sleep(1)
        for s in sinks:
            s.close()
        return elapsed, fuzzer, sinks

    try:
        elapsed, fuzzer, _sinks = asyncio.run(attack())
        node_cpu = (cpu_seconds(node.pid) or 0.0) - cpu0
    finally:
        for s in socks:
            s.close()
    alive = node.alive()
    reply = prober.probe() if alive else None
    prober.stop()
    newcomer = Prober(node.port, "newcomer-after-fuzz", every=GOSSIP_INTERVAL, wait=5)
    fresh = newcomer.probe() if alive else None
    newcomer.stop()
    time.sleep(1)
    rss1, peak = rss_mib(node), sampler.stop()
    node.stop()
    n_exc, kinds = exceptions_in(out_path(node))
    orphan, missing, partial = orphans(node)
    ok = (
        alive
        and n_exc == 0
        and orphan == 0
        and rss1 - rss0 <= TARGET_RSS_MIB
        and reply is not None
        and reply < TARGET_REPLY_S
    )
    line = (
        f"fuzz: {total} msgs in {elapsed:.1f} s ({total / elapsed:.0f}/s), {n_exc} exceptions, "
        f"{orphan} orphan blobs, {mib_delta(rss0, rss1, peak)}, GOSSIP reply {fmt_s(reply)}"
        f"{'' if alive else ', NODE DIED'}  {verdict(ok)}"
    )
    details = [
        "messages: " + ", ".join(f"{k} {v}" for k, v in sorted(fuzzer.kinds.items())),
        "connections: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())),
        f"held rows without a blob {missing}, files left in partial/ {partial}, "
        f"node.log {log_size(node) / MIB:.1f} MiB, node CPU during the fuzz {node_cpu:.1f} s",
        f"the legitimate peer gossips from its proven address; a newcomer at 127.0.0.1 right "
        f"after (a stranger like the fuzzer, under the reply budget): reply {fmt_s(fresh)}",
    ]
    if kinds:
        details.append("exception types: " + ", ".join(f"{k} {v}" for k, v in kinds.most_common(8)))
    return Result("fuzz", line, ok, details)


def scenario_amplification(args: argparse.Namespace, tmp: Path) -> Result:
    n_files = 200 if args.quick else 1000
    n_gossip = 2000
    node = start_node(tmp, "amp")
    t_push = time.monotonic()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: push_bytes(node, f"f{i:04d}.txt", os.urandom(64)), range(n_files)))
    t_push = time.monotonic() - t_push
    socks = closed_ports(16)
    # A real classic peer: it also answers the node's GOSSIPs (its proof of being a peer).
    legit = Prober(node.port, "legit-peer", every=GOSSIP_INTERVAL * 1.1, answers=True)
    legit.start()
    # established: it has gossiped, and answered at least one of the node's gossip rounds
    time.sleep(GOSSIP_INTERVAL * 2.2)
    rss0 = rss_mib(node)
    sampler = RssPeak(node)
    sampler.start()
    stats: collections.Counter[str] = collections.Counter()

    async def attack() -> tuple[float, float, float, int, list[Sink]]:
        quiet_loop(asyncio.get_running_loop())
        sinks = [await Sink().start() for _ in range(16)]
        targets = [s.port for s in sinks] + [int(s.getsockname()[1]) for s in socks]
        sem = asyncio.Semaphore(32)
        tasks: set[asyncio.Task[None]] = set()
        sent_bytes = 0
        t0 = time.monotonic()
        per = args.flood_seconds / n_gossip

        async def one(data: bytes) -> None:
            try:
                await send_one(node.port, data, stats)
            finally:
                sem.release()

        for i in range(n_gossip):
            peer = f"atk-{i % 700:03d}"
            data = gossip_message(targets[i % len(targets)], peer)
            sent_bytes += len(data)
            await sem.acquire()
            task = asyncio.ensure_future(one(data))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            delay = t0 + (i + 1) * per - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        flood_end = time.monotonic()
        limit = flood_end + (30 if args.quick else 60)
        while time.monotonic() < limit:
            await asyncio.sleep(0.5)
            last = max(s.last_reply for s in sinks)
            if time.monotonic() - max(last, flood_end) > 3:
                break
        end = time.monotonic()
        for s in sinks:
            s.close()
        return t0, flood_end, end, sent_bytes, sinks

    try:
        t0, flood_end, end, sent_bytes, sinks = asyncio.run(attack())
    finally:
        for s in socks:
            s.close()
    legit.stop()
    time.sleep(1)
    rss1, peak = rss_mib(node), sampler.stop()
    alive = node.alive()
    node.stop()
    by_kind: collections.Counter[str] = collections.Counter()
    msgs: collections.Counter[str] = collections.Counter()
    for sink in sinks:
        by_kind.update(sink.bytes)
        msgs.update(sink.messages)
    reply_bytes = by_kind["GOSSIP_REPLY"]
    other = sum(by_kind.values()) - reply_bytes
    ratio = reply_bytes / max(1, sent_bytes)
    during = legit.between(t0, end)
    before = [lat for lat in legit.between(0, t0) if lat is not None and lat < TARGET_REPLY_S]
    answered = [lat for lat in during if lat is not None and lat < TARGET_REPLY_S]
    worst = max((lat for lat in during if lat is not None), default=None)
    ok = (
        alive
        and ratio <= TARGET_AMPLIFICATION
        and rss1 - rss0 <= TARGET_RSS_MIB
        and bool(during)
        and len(answered) == len(during)
    )
    n_exc, kinds = exceptions_in(out_path(node))
    line = (
        f"amplification: {n_gossip} GOSSIPs ({sent_bytes / 1e3:.0f} kB, "
        f"{sent_bytes / n_gossip:.0f} B each) in {flood_end - t0:.1f} s against {n_files} files: "
        f"{reply_bytes / 1e6:.2f} MB of replies (x{ratio:.1f}) + {other / 1e6:.2f} MB other, "
        f"{mib_delta(rss0, rss1, peak)}, legit replies {len(answered)}/{len(during)} < 2 s "
        f"(worst {fmt_s(worst)}){'' if alive else ', NODE DIED'}  {verdict(ok)}"
    )
    details = [
        f"pushing {n_files} files took {t_push:.1f} s; the window ran {end - t0:.1f} s "
        f"(until 3 s without a GOSSIP_REPLY); the legitimate peer before the flood: "
        f"{len(before)}/{len(legit.between(0, t0))} answered < 2 s, during: latencies "
        + " ".join(fmt_s(lat) for lat in during),
        "delivered to the listeners: "
        + ", ".join(f"{k} {msgs[k]} msgs {by_kind[k] / 1e6:.2f} MB" for k in sorted(msgs)),
        "flood connections: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())),
        f"exceptions in the node's output: {n_exc}"
        + (" (" + ", ".join(f"{k} {v}" for k, v in kinds.most_common(4)) + ")" if kinds else ""),
    ]
    return Result("amplification", line, ok, details)


SLOW_HEAD = (
    b'{"type": "FILE_DATA", "file_name": "slow.bin", "file_size": 1.0, "file_id": "%s", '
    b'"file_owner": "slowpoke", "file_timestamp": 1700000000, "data": "'
)


def scenario_slow(args: argparse.Namespace, tmp: Path) -> Result:
    seconds = 8.0 if args.quick else args.slow_seconds
    slow_rate, short_rate = 500, 1000
    node = start_node(tmp, "slow")
    file_id = push_bytes(node, "legit.bin", os.urandom(256 * 1024))
    probers = [
        Prober(node.port, f"legit-{i}", every=GOSSIP_INTERVAL * 1.25, wait=6) for i in range(4)
    ]
    gets: list[tuple[float, float | None]] = []
    halt = threading.Event()

    def getter() -> None:
        while not halt.is_set():
            t0 = time.monotonic()
            gets.append((t0, get_file_time(node.port, file_id, timeout=10)))
            halt.wait(max(0.0, t0 + 2 - time.monotonic()))

    stats: collections.Counter[str] = collections.Counter()
    live = [0, 0]  # slow connections open now, most at once
    addr = (HOST, node.port)

    async def connect(limit: float) -> socket.socket | None:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, addr), limit)
        except (OSError, TimeoutError):
            sock.close()
            return None
        return sock

    async def short_conn() -> None:
        sock = await connect(2)
        if sock is None:
            stats["short connect failed"] += 1
            return
        with contextlib.suppress(OSError):
            data = os.urandom(random.choice([0, 0, 1, 3, 8]))
            if data:
                sock.send(data)
        sock.close()
        stats["short done"] += 1

    # slow connections: (next trickle due, socket), in due order (all trickle every 3 s)
    trickling: collections.deque[tuple[float, socket.socket]] = collections.deque()

    async def slow_conn() -> None:
        sock = await connect(3)
        if sock is None:
            stats["slow connect failed"] += 1
            return
        try:
            sock.send(SLOW_HEAD % os.urandom(32).hex().encode())
        except OSError:
            stats["slow closed by the node"] += 1
            sock.close()
            return
        stats["slow opened"] += 1
        live[0] += 1
        live[1] = max(live[1], live[0])
        trickling.append((time.monotonic() + 3, sock))

    def ended(sock: socket.socket) -> bool:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def trickle(now: float) -> None:
        while trickling and trickling[0][0] <= now:
            _due, sock = trickling.popleft()
            try:
                if ended(sock):
                    raise ConnectionResetError
                sock.send(b"ab")
            except OSError:
                stats["slow closed by the node"] += 1
                live[0] -= 1
                sock.close()
                continue
            trickling.append((now + 3, sock))

    async def attack() -> tuple[float, float]:
        quiet_loop(asyncio.get_running_loop())
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.monotonic()
        stop_at = t0 + seconds
        launched_slow = launched_short = 0
        while (now := time.monotonic()) < stop_at:
            due_slow = int((now - t0) * slow_rate)
            due_short = int((now - t0) * short_rate)
            for _ in range(due_slow - launched_slow):
                task = asyncio.ensure_future(slow_conn())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            for _ in range(due_short - launched_short):
                task = asyncio.ensure_future(short_conn())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            launched_slow, launched_short = due_slow, due_short
            trickle(now)
            await asyncio.sleep(0.01)
        stats["slow launched"], stats["short launched"] = launched_slow, launched_short
        end = time.monotonic()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for task in tasks:
            task.cancel()
        stats["slow held to the end"] = sum(1 for _, sock in trickling if not ended(sock))
        for _, sock in trickling:
            sock.close()
        return t0, end

    getter_thread = threading.Thread(target=getter, daemon=True)
    for p in probers:
        p.start()
    getter_thread.start()
    time.sleep(GOSSIP_INTERVAL)
    log0 = log_size(node)
    t_start_wall = time.time()
    t0, end = asyncio.run(attack())
    log1 = log_size(node)
    t_end_wall = time.time()
    halt.set()
    for p in probers:
        p.stop()
    getter_thread.join(15)
    alive = node.alive()
    node.stop()
    lines, busiest = log_lines_between(node, log0, log1)
    lines_s = lines / max(0.1, t_end_wall - t_start_wall)
    during = [lat for p in probers for lat in p.between(t0, end)]
    answered = [lat for lat in during if lat is not None and lat < TARGET_REPLY_S]
    share = len(answered) / max(1, len(during))
    get_during = [lat for t, lat in gets if t0 <= t <= end]
    get_ok = [lat for lat in get_during if lat is not None and lat < TARGET_GET_S]
    worst_get = max((lat for lat in get_during if lat is not None), default=None)
    ok = (
        alive
        and bool(during)
        and share >= TARGET_GOSSIP_SHARE
        and bool(get_during)
        and len(get_ok) == len(get_during)
        and lines_s < TARGET_LOG_LINES_S
    )
    elapsed = end - t0
    line = (
        f"slow: {stats['slow launched'] / elapsed:.0f} slow + "
        f"{stats['short launched'] / elapsed:.0f} short conns/s for {elapsed:.0f} s: "
        f"GOSSIP answered < 2 s {len(answered)}/{len(during)} ({share:.0%}), "
        f"GET_FILE < 5 s {len(get_ok)}/{len(get_during)} (worst {fmt_s(worst_get)}), "
        f"log {lines_s:.0f} lines/s (max {busiest} in 1 s)"
        f"{'' if alive else ', NODE DIED'}  {verdict(ok)}"
    )
    lat = sorted(x for x in during if x is not None)
    failed_sends = sum(1 for p in probers for t in p.send_failed if t0 <= t <= end)
    before = [x for p in probers for x in p.between(0, t0)]
    details = [
        "connections: "
        + ", ".join(f"{k} {v}" for k, v in sorted(stats.items()))
        + f"; slow ones open at once: at most {live[1]}",
        f"GOSSIP latencies: median {fmt_s(lat[len(lat) // 2] if lat else None)}, "
        f"worst {fmt_s(lat[-1] if lat else None)}, unanswered {len(during) - len(lat)} "
        f"(of which the GOSSIP could not be sent: {failed_sends}); before the attack "
        f"{sum(1 for x in before if x is not None)}/{len(before)} answered",
        "failed GET_FILEs: "
        + (", ".join(f"{k} {v}" for k, v in sorted(GET_FAILURES.items())) or "none"),
    ]
    return Result("slow", line, ok, details)


def scenario_stalled(args: argparse.Namespace, tmp: Path) -> Result:
    size_mib = 16 if args.quick else 64
    n_stalled = 40
    payload = tmp / "payload.bin"
    make_payload(payload, size_mib * MIB)
    holder = start_node(tmp, "holder")
    file_id = holder.push(payload, timeout=120)
    payload.unlink()

    def joined(receiver: Node) -> Node:
        deadline = time.monotonic() + 30
        while not receiver.knows(file_id, {holder.name}, extension=True):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{receiver.name} did not learn the file within 30 s")
            time.sleep(0.2)
        return receiver

    def timed_fetch(receiver: Node) -> tuple[float | None, str]:
        t0 = time.monotonic()
        try:
            receiver.fetch(file_id, timeout=120)
        except (OSError, ApiError, http.client.HTTPException) as exc:
            return None, str(exc)[:120]
        return time.monotonic() - t0, ""

    base = joined(start_node(tmp, "recv-base", "--bootstrap", holder.address))
    baseline, err0 = timed_fetch(base)
    # base now holds the file too: stopped before the second receiver starts, so that the holder
    # with the stalled readers is the only one that second receiver can fetch from.
    base.stop()
    late = joined(start_node(tmp, "recv-stall", "--bootstrap", holder.address))
    stalled: list[socket.socket] = []
    request = {
        "type": "GET_FILE",
        "file_id": file_id,
        "treedrive": {"raw": True, "offset": 0, "length": None},
    }
    opened = 0
    try:
        for _ in range(n_stalled):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(5)
            try:
                s.connect((HOST, holder.port))
                s.sendall(json.dumps(request).encode())
                opened += 1
            except OSError:
                pass
            stalled.append(s)
        time.sleep(2)
        with_stalls, err1 = timed_fetch(late)
        still = 0
        for s in stalled:
            with contextlib.suppress(OSError):
                s.setblocking(False)
                # the node still holds it if nothing says it ended: no EOF, no reset
                try:
                    peek = s.recv(1, socket.MSG_PEEK)
                    still += 1 if peek else 0
                except BlockingIOError:
                    still += 1
    finally:
        for s in stalled:
            s.close()
    alive = holder.alive()
    for n in (late, base, holder):
        n.stop()
    delay = None if baseline is None or with_stalls is None else with_stalls - baseline
    ok = alive and delay is not None and delay < TARGET_STALL_DELAY_S
    line = (
        f"stalled: {size_mib} MiB fetch {fmt_s(baseline)} alone, {fmt_s(with_stalls)} with "
        f"{opened} stalled ranged readers: delay "
        f"{'-' if delay is None else f'{delay:+.2f} s'}"
        f"{'' if alive else ', HOLDER DIED'}  {verdict(ok)}"
    )
    details = [f"stalled readers still connected after the fetch: {still}/{opened}"]
    if err0 or err1:
        details.append(f"fetch errors: {err0 or '-'} / {err1 or '-'}")
    return Result("stalled", line, ok, details)


FD_PREAMBLE = (
    "import resource as _r\n"
    "_s, _h = _r.getrlimit(_r.RLIMIT_NOFILE)\n"
    "_r.setrlimit(_r.RLIMIT_NOFILE, (min(1024, _h), _h))\n"
)


def scenario_fds(args: argparse.Namespace, tmp: Path) -> Result:
    n_conns = 1100
    window = 10.0 if args.quick else 40.0
    node = start_node(tmp, "fds", preamble=FD_PREAMBLE)
    limit = soft_nofile(node.pid)
    prober = Prober(node.port, "legit-fds", every=5, wait=5)
    checks: list[tuple[float | None, float | None]] = []
    counts: collections.Counter[str] = collections.Counter()

    async def hold() -> tuple[int, int]:
        quiet_loop(asyncio.get_running_loop())
        sem = asyncio.Semaphore(200)
        writers: list[asyncio.StreamWriter] = []

        async def one(i: int) -> None:
            async with sem:
                try:
                    _r, w = await asyncio.wait_for(asyncio.open_connection(*node.http), 3)
                except (OSError, TimeoutError):
                    counts["connect failed"] += 1
                    return
                if i % 2:
                    w.write(f"GET /api/status HTTP/1.1\r\nHost: {node.http[0]}\r\n".encode())
                writers.append(w)
                counts["connected"] += 1

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n_conns))), 60)
        size0 = log_size(node)
        t0 = time.monotonic()
        while time.monotonic() - t0 < window:
            await asyncio.sleep(min(5.0, max(0.0, t0 + window - time.monotonic())))
            gossip = await asyncio.to_thread(prober.probe)
            status = await asyncio.to_thread(http_status_time, node, 5)
            checks.append((gossip, status))
        size1 = log_size(node)
        closed_by_node = sum(1 for w in writers if w.transport.is_closing())
        counts["closed by the node"] = closed_by_node
        for w in writers:
            w.transport.abort()
        return size0, size1

    size0, size1 = asyncio.run(hold())
    prober.stop()
    alive = node.alive()
    node.stop()
    p2p_ok = [g for g, _ in checks if g is not None and g < TARGET_REPLY_S]
    http_ok = [h for _, h in checks if h is not None and h < TARGET_REPLY_S]
    growth = size1 - size0
    ok = (
        alive
        and bool(checks)
        and len(p2p_ok) == len(checks)
        and len(http_ok) == len(checks)
        and growth < TARGET_LOG_GROWTH
    )
    n_exc, kinds = exceptions_in(out_path(node))
    line = (
        f"fds: soft limit 1024 -> {limit} in the node, {counts['connected']}/{n_conns} idle HTTP "
        f"conns: P2P answered {len(p2p_ok)}/{len(checks)}, HTTP answered "
        f"{len(http_ok)}/{len(checks)}, log +{growth / 1e3:.0f} kB in {window:.0f} s"
        f"{'' if alive else ', NODE DIED'}  {verdict(ok)}"
    )
    details = [
        "connections: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
        "checks (GOSSIP reply, HTTP status): "
        + " ".join(f"({fmt_s(g)}, {fmt_s(h)})" for g, h in checks),
        f"exceptions in the node's output: {n_exc}"
        + (" (" + ", ".join(f"{k} {v}" for k, v in kinds.most_common(4)) + ")" if kinds else ""),
    ]
    return Result("fds", line, ok, details)


RUNNERS: dict[str, Callable[[argparse.Namespace, Path], Result]] = {
    "fuzz": scenario_fuzz,
    "amplification": scenario_amplification,
    "slow": scenario_slow,
    "stalled": scenario_stalled,
    "fds": scenario_fds,
}


# -- main -----------------------------------------------------------------------------------------
def commit_label() -> str:
    repo = Path(__file__).resolve().parent.parent

    def git(*cmd: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *cmd], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@contextlib.contextmanager
def scratch(parent: str | None, keep: bool) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="hostile-", dir=parent))
    try:
        yield tmp
    finally:
        kill_all()
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def on_alarm(_signum: int, _frame: Any) -> None:
    raise ScenarioTimeout


def on_term(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def run_one(name: str, args: argparse.Namespace, tmp: Path) -> Result:
    budget = args.timeout if args.timeout else (300 if args.quick else 900)
    signal.alarm(int(budget))
    t0 = time.monotonic()
    try:
        result = RUNNERS[name](args, tmp / name)
    except ScenarioTimeout:
        result = Result(name, f"{name}: did not finish within {budget} s  FAIL", False)
    except Exception as exc:  # a benchmark reports and goes on
        where = traceback.format_exc().strip().splitlines()[-3:-1]
        result = Result(name, f"{name}: error {type(exc).__name__}: {exc}  FAIL", False, where)
    finally:
        signal.alarm(0)
        kill_all()
    result.details.append(f"scenario took {time.monotonic() - t0:.0f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="run only this one")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes and windows (10,000 fuzz msgs, 200 files, 8 s of slow connections, "
        "16 MiB, 10 s of idle HTTP); the default is the full run of issue 8",
    )
    parser.add_argument("--fuzz-count", type=int, default=100_000, help="fuzz messages (full run)")
    parser.add_argument("--conns", type=int, default=128, help="fuzz connections at once")
    parser.add_argument(
        "--flood-seconds", type=float, default=4.0, help="the GOSSIP flood's length"
    )
    parser.add_argument("--slow-seconds", type=float, default=20.0, help="the slow attack's length")
    parser.add_argument("--seed", type=int, default=8, help="the fuzzer's random seed")
    parser.add_argument("--timeout", type=float, default=0, help="seconds per scenario at most")
    parser.add_argument("--tmp-dir", help="where the scratch dir goes (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch dir")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    nofile = raise_nofile()
    names = [n for n in SCENARIOS if not args.only or n in args.only]
    print(
        f"bench/hostile.py at {commit_label()}, {'quick' if args.quick else 'full'} run, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, open files limit {nofile}",
        flush=True,
    )
    results: list[Result] = []
    try:
        with scratch(args.tmp_dir, args.keep) as tmp:
            for name in names:
                (tmp / name).mkdir()
                result = run_one(name, args, tmp)
                results.append(result)
                print(result.line, flush=True)
                for detail in result.details:
                    print("    " + detail, flush=True)
    except KeyboardInterrupt:
        print("interrupted; every node was stopped", flush=True)
    finally:
        kill_all()
    passed = [r.name for r in results if r.passed]
    failed = [r.name for r in results if not r.passed]
    print(
        f"summary: {len(passed)}/{len(results)} scenarios meet their targets"
        + (f"; FAIL: {', '.join(failed)}" if failed else ""),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
