"""Benchmark: one file between real ``treedrive run`` processes on loopback, classic vs extension.

For each file size and each mode a small network of node processes is built on 127.0.0.1:

- ``n1`` starts alone and takes the payload through its API (``POST /api/files?name=…``, raw
  body): alone, it pushes the file to nobody.
- run "2 nodes, 1 source": ``n2`` joins through ``n1`` and fetches the file
  (``POST /api/files/{id}/fetch``).
- setup: ``n3`` joins and fetches it too (unmeasured), so ``n1``, ``n2`` and ``n3`` hold it.
- run "4 nodes, 3 sources": ``n4`` joins and fetches it; an extension node takes chunks from all
  three holders, a classic node takes the whole file from one of them.

Modes: ``classic`` (every node ``--no-extension``: one GET_FILE -> hex FILE_DATA),
``extension`` (raw ranged GET_FILE, multi-source, in clear: ``--no-encryption``) and ``tls``
(the same, encrypted: TLS 1.3 bound to the node keys, PROTOCOL.md 2.9, the nodes' default; the
nodes wait until they know each other's ``tls`` feature). With both ``extension`` and ``tls``, the
end says the ratio of their MB/s (target >= 0.6) and each node's CPU seconds per GiB, in all and
per kind of thread (``--thread-names``: the event loop, ``range-in``, ``range-out``, the
``hasher``/``asyncio`` thread that hashes the bytes back from disk, ``tls``…). Every
node has ``--download-limit 0``, so no node fetches anything by itself on join.

Measured for each run: the wall time of the receiver's fetch API call (from the request to the
answer, which comes after the bytes were verified and committed), MB/s of file bytes (MB = 10^6 B);
when the first and the last bytes were on the receiver's disk (its ``partial/`` dir watched every
5 ms); CPU seconds (utime+stime from /proc/<pid>/stat) of every node over the fetch and the
receiver's minor page faults; peak VmRSS of every node over the fetch (sampled every
``--sample-every`` s in a thread) and its VmHWM (whole life, including the push and setup phases);
the CPU seconds the rest of the machine used meanwhile, and who used them; and, in the same run
right after the fetch, the ceiling: a plain socket copy of the same payload file on this machine (a
sender process reads the file and ``sendall``s it over a loopback TCP socket to a receiver process
that ``recv_into``s a 1 MiB buffer and writes it to a file on the same disk; median of
``--ceiling-runs``), and the same copy with the node's durability (``fdatasync`` every 32 MiB and
``fsync`` at the end; ``--sync-every``). Every received blob is checked against the payload's
sha256 (streamed), the setup copies too.

With ``--warm`` (the default), the fetch and the first ceiling copy each follow an unmeasured
socket copy whose file is deleted right before them, so that every measured transfer writes its
bytes into memory in the same state: on this VM memory that stayed free for a couple of seconds
goes back to the host and costs a fault to touch again, and without this the fetch (after the
setup's pauses) lands in such memory while the later copies reuse what the previous copy freed.

``--modes push`` (issue 10) measures, in each round of a fresh 2-node extension network, one
after the other: the get (as above), the forward of a push (the payload, made a new file,
uploaded to ``n1`` as the dashboard does, a multipart form, so that ``n1`` pushes it on only once
it is stored; from ``n1``'s "pushed" log line to ``n2``'s "received" line, verified and
committed, both the nodes' own ms timestamps), the whole ``treedrive push FILE`` command (from
starting it to ``n2``'s "received" line; on one machine the command gives ``n1`` the file's
path, and ``n1`` reads it and streams it on to ``n2``: a push by path, README "HTTP API") and
the fsync-at-end socket copy (``sendfile`` -> ``recv_into`` -> ``write``, one ``fsync``); per
phase the CPU of each node's event-loop thread and its busiest other thread; then the medians
and the ratios push forward / get (>= 0.9), whole push / get (>= 0.6) and get / fsync copy
(>= 0.8). See :class:`PushBench`.

On a shared machine, ``--wait-quiet S`` waits before each fetch for a second in which the rest of
the machine is idle. ``--node-preamble FILE`` runs a Python file in every node before its CLI, to
measure a change to the node (a patched method) without editing it. ``--py-spy DIR`` / ``--perf
DIR`` profile every node during the fetches of the largest size (and perturb them).

Only 127.0.0.1 is used; the processes this script starts are ended by their PID; the scratch
dir is removed at the end (``--keep`` keeps it).

    python bench/transfer.py                          # 1, 16, 256, 1024 MiB; both modes
    python bench/transfer.py --quick                  # 1, 16, 64 MiB
    python bench/transfer.py --sizes 1024 --modes extension --sources 1
    python bench/transfer.py --sizes 1024 --modes extension,tls --sources 1 --repeat 3
    python bench/transfer.py --sizes 1024 --repeat 3 --wait-quiet 300
    python bench/transfer.py --sizes 1024 --modes push --repeat 6 --wait-quiet 300
    python bench/transfer.py --sizes 1024 --perf /tmp/perf    # also profile (perturbs the run)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

MIB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
HTTP_BLOCK = 1024 * 1024
TARGET_RATIO = 0.5  # extension, 2 nodes, 1 GiB: at least this share of the socket-copy ceiling
TARGET_RSS_MIB = 100  # every node, any run
TARGET_CLASSIC_MB_S = 150  # classic hex, 1 GiB
TARGET_TLS_RATIO = 0.6  # encrypted extension / extension in clear, same size, same run

TIMERS = {
    "gossip-interval": "2",
    "peer-timeout": "120",
    "cleanup-interval": "5",
    "join-delay": "0.3",
    "log-level": "INFO",
}


# -- /proc ----------------------------------------------------------------------------------------
def status_kib(pid: int, key: str) -> int | None:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM), or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, in seconds (fields 14 and 15 of stat(5))."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def minor_faults(pid: int) -> int:
    """Minor page faults of a process so far (field 10 of stat(5))."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[7])
    except (FileNotFoundError, ProcessLookupError):
        return 0


def system_busy() -> float:
    """CPU seconds all processes of the machine have used (every state but idle and iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK


def all_cpu() -> dict[int, tuple[str, float]]:
    """(name, utime+stime seconds) of every process and kernel thread on the machine."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                text = f.read()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def top_others(before: dict[int, tuple[str, float]], skip: set[int], n: int = 3) -> str:
    """The processes (not in ``skip``) that used the most CPU since ``before``, by name."""
    used: dict[str, float] = {}
    for pid, (name, cpu) in all_cpu().items():
        if pid in skip:
            continue
        delta = cpu - before.get(pid, (name, 0.0))[1]
        if delta > 0:
            label = "this script" if pid == os.getpid() else name
            used[label] = used.get(label, 0.0) + delta
    ranked = sorted(used.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{name} {cpu:.2f}" for name, cpu in ranked) or "-"


def wait_for_quiet(pids: list[int], timeout: float, threshold: float) -> bool:
    """Wait (up to ``timeout`` s) for a 1 s window in which the machine, but for ``pids``,
    used less than ``threshold`` CPU s: on a shared machine, other work spoils fewer runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b0, c0 = system_busy(), sum(cpu_seconds(p) or 0.0 for p in pids)
        time.sleep(1.0)
        other = system_busy() - b0 - (sum(cpu_seconds(p) or 0.0 for p in pids) - c0)
        if other < threshold:
            return True
    return False


def code_version() -> str:
    """The commit the node code is at, and whether treedrive/ has local changes (read-only git)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "treedrive"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + local changes in treedrive/" if dirty else "")


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class RssSampler(threading.Thread):
    """Samples VmRSS of the watched processes every ``every`` s; keeps the peak of each (in KiB)
    since the last :meth:`reset`."""

    def __init__(self, every: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.every = every
        self.pids: dict[str, int] = {}
        self.peaks: dict[str, int] = {}
        self.samples = 0
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def watch(self, name: str, pid: int) -> None:
        with self._lock:
            self.pids[name] = pid

    def reset(self) -> None:
        with self._lock:
            self.peaks = {}
            self._sample()

    def snapshot(self) -> dict[str, float]:
        """Peaks since the last reset, in MiB (one more sample first)."""
        with self._lock:
            self._sample()
            return {name: kib / 1024 for name, kib in self.peaks.items()}

    def _sample(self) -> None:
        for name, pid in self.pids.items():
            rss = status_kib(pid, "VmRSS")
            if rss is not None:
                self.peaks[name] = max(self.peaks.get(name, 0), rss)
        self.samples += 1

    def run(self) -> None:
        while not self._halt.wait(self.every):
            with self._lock:
                self._sample()

    def stop(self) -> None:
        self._halt.set()


class DiskWatcher(threading.Thread):
    """Watches the files in a receiver's ``partial/`` dir (allocated blocks, every ``every`` s):
    when the first bytes land and when all ``size`` bytes are on disk, seconds after start."""

    def __init__(self, partial: Path, size: int, every: float = 0.005) -> None:
        super().__init__(name="disk-watcher", daemon=True)
        self.partial, self.size, self.every = partial, size, every
        self.first: float | None = None
        self.full: float | None = None
        self._halt = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        self._t0 = time.monotonic()
        while not self._halt.is_set() and self.full is None:
            total = 0
            with contextlib.suppress(OSError):
                for entry in os.scandir(self.partial):
                    with contextlib.suppress(OSError):
                        total += entry.stat().st_blocks * 512
            now = time.monotonic() - self._t0
            if total > 0 and self.first is None:
                self.first = now
            if total >= self.size:
                self.full = now
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


# -- the payload ------------------------------------------------------------------------------
def make_payload(path: Path, size: int) -> str:
    """Write ``size`` bytes that do not repeat (one random MiB, rotated and stamped per MiB);
    return their sha256. Written block by block, never held whole."""
    base = os.urandom(MIB)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        i = 0
        left = size
        while left > 0:
            k = (i * 40503 + 4099) % MIB
            block = i.to_bytes(8, "little") + (base[k:] + base[:k])[8 : min(MIB, left)]
            f.write(block)
            digest.update(block)
            left -= len(block)
            i += 1
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    buf = bytearray(MIB)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(every)


def log_lines(path: Path, *needles: str) -> list[str]:
    """Lines of a node.log that contain every one of ``needles``."""
    with contextlib.suppress(OSError), path.open(errors="replace") as f:
        return [line.rstrip() for line in f if all(n in line for n in needles)]
    return []


def logged_at(path: Path, *needles: str) -> float | None:
    """The time (``time.time()`` scale, ms resolution) of the first line of a node.log that
    contains every one of ``needles``, from its timestamp (``2024-05-01 12:34:56,789 ...``)."""
    for line in log_lines(path, *needles):
        with contextlib.suppress(ValueError):
            return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def thread_cpu(pid: int) -> dict[int, float]:
    """utime+stime seconds of each live thread of a process (/proc/<pid>/task/*/stat)."""
    out = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"{entry.path}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
                out[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


THREAD_NAMES = """\
import ctypes as _ctypes, threading as _threading
_libc, _inner = _ctypes.CDLL(None), _threading.Thread._bootstrap_inner
def _named(self):
    _libc.prctl(15, self.name.encode()[:15], 0, 0, 0)  # PR_SET_NAME: /proc/<pid>/task/*/comm
    _inner(self)
_threading.Thread._bootstrap_inner = _named
"""
"""Node preamble (``--thread-names``): every Python thread gives its name to its OS thread, so
that the CPU of each kind of thread (``range-in``, ``hasher``, ``tls``…) can be told apart."""


def thread_kinds(pid: int) -> dict[int, tuple[str, float]]:
    """Each live thread of a process: its kind (its name without the pool index: ``range-in``,
    ``tls``, ``asyncio``…; ``loop`` for the main thread) and its utime+stime seconds."""
    out = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"{entry.path}/stat") as f:
                text = f.read()
            name = text[text.index("(") + 1 : text.rindex(")")]
            fields = text.rsplit(")", 1)[1].split()
            kind = "loop" if int(entry.name) == pid else re.sub(r"[_-]?\d+$", "", name)
            out[int(entry.name)] = (kind, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def kinds_delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds per thread kind between two :func:`thread_kinds` (threads alive at the end;
    those that ended meanwhile are in the process total only)."""
    out: dict[str, float] = {}
    for tid, (kind, cpu) in after.items():
        out[kind] = out.get(kind, 0.0) + cpu - before.get(tid, (kind, 0.0))[1]
    return out


@dataclass
class CpuSplit:
    """CPU seconds of one node over one measured window: its event loop's thread (the main
    thread, whose id is the PID) and all its other threads (those that ended meanwhile too)."""

    loop: float
    others: float
    busiest: float  # the other thread that used the most (of those still alive at the end)

    def __str__(self) -> str:
        return (
            f"{self.loop + self.others:.2f} (loop {self.loop:.2f}, max thread {self.busiest:.2f})"
        )


class CpuWatch:
    """Per-node and per-thread CPU over a window (:meth:`split` at the end)."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.total = {n.name: cpu_seconds(n.pid) or 0.0 for n in nodes}
        self.threads = {n.name: thread_cpu(n.pid) for n in nodes}

    def split(self) -> dict[str, CpuSplit]:
        out = {}
        for n in self.nodes:
            total = (cpu_seconds(n.pid) or 0.0) - self.total[n.name]
            before = self.threads[n.name]
            now = thread_cpu(n.pid)
            deltas = {tid: cpu - before.get(tid, 0.0) for tid, cpu in now.items()}
            loop = deltas.pop(n.pid, 0.0)
            out[n.name] = CpuSplit(loop, total - loop, max(deltas.values(), default=0.0))
        return out


def fmt(value: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


# -- a node process -------------------------------------------------------------------------------
class ApiError(Exception):
    pass


@dataclass
class Node:
    """A ``python -m treedrive run --no-shell`` process, driven through its HTTP API."""

    name: str
    data_dir: Path
    extra: list[str]
    timers: dict[str, str] = field(default_factory=lambda: dict(TIMERS))
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    http: tuple[str, int] = ("127.0.0.1", 0)
    token: str = ""
    out: IO[bytes] | None = None
    preamble: str = ""
    """Python run in the node process before the CLI (to try a change without editing)."""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "node.log"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Node:
        """Start (or restart, on the same data dir and port) and wait for the API."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        run_file = self.data_dir / "node.json"
        run_file.unlink(missing_ok=True)  # a SIGKILLed node leaves its run file behind
        cmd = [
            sys.executable, *self.launch(), "run", "--no-shell",
            "--peer-id", self.name,
            "--port", str(self.port),
            "--http-port", "0",
            "--data-dir", str(self.data_dir),
            *(arg for key, value in self.timers.items() for arg in (f"--{key}", value)),
            *self.extra,
        ]  # fmt: skip
        self.out = (self.data_dir.parent / f"{self.name}.out").open("ab")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.out
        )
        deadline = time.monotonic() + 30
        while not run_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start: {self.output_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start within 30 s")
            time.sleep(0.05)
        info = json.loads(run_file.read_text())
        m = re.match(r"http://([^:/]+):(\d+)/", info["http"] or "")
        if m is None:
            raise RuntimeError(f"{self.name}: no dashboard in node.json: {info}")
        self.http = (m.group(1), int(m.group(2)))
        self.token = (self.data_dir / "api-token").read_text().strip()
        return self

    def launch(self) -> list[str]:
        if not self.preamble:
            return ["-m", "treedrive"]
        return ["-c", f"{self.preamble}\nfrom treedrive.cli import main\nmain()"]

    def output_tail(self, n: int = 2000) -> str:
        try:
            return (self.data_dir.parent / f"{self.name}.out").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _close_out(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None

    def kill(self) -> None:
        """SIGKILL this PID (a crash) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._close_out()

    def stop(self) -> None:
        """SIGTERM this PID (a clean stop), then SIGKILL if it hangs."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        self._close_out()

    # -- the API ----------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 30.0,
        headers: dict[str, str] | None = None,
    ) -> Any:
        conn = http.client.HTTPConnection(*self.http, timeout=timeout, blocksize=HTTP_BLOCK)
        try:
            hdrs = {"Authorization": f"Bearer {self.token}", **(headers or {})}
            if isinstance(body, dict):
                body = json.dumps(body).encode()
                hdrs["Content-Type"] = "application/json"
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        try:
            answer = json.loads(data) if data else None
        except ValueError:
            answer = data.decode(errors="replace")
        if resp.status >= 400:
            raise ApiError(f"{self.name}: {method} {path} -> {resp.status} {answer}")
        return answer

    def push(self, path: Path, timeout: float, form: bool = False) -> str:
        """Push a file through ``POST /api/files?name=…`` (raw body); returns its id. With
        ``form``, as the dashboard sends it instead (a multipart form): the node cannot know
        its size before the bytes, so it pushes the file on once it is stored, never while it
        arrives (a streamed push needs the size first)."""
        size = path.stat().st_size
        with path.open("rb") as f:
            if not form:
                answer = self.request(
                    "POST",
                    f"/api/files?name={path.name}",
                    body=f,
                    timeout=timeout,
                    headers={
                        "Content-Length": str(size),
                        "Content-Type": "application/octet-stream",
                    },
                )
                return str(answer["file_id"])
            boundary = "treedrive-bench-" + os.urandom(8).hex()
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            tail = f"\r\n--{boundary}--\r\n".encode()

            def body() -> Iterator[bytes]:
                yield head
                while block := f.read(HTTP_BLOCK):
                    yield block
                yield tail

            answer = self.request(
                "POST",
                "/api/files",
                body=body(),
                timeout=timeout,
                headers={
                    "Content-Length": str(len(head) + size + len(tail)),
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                },
            )
        return str(answer["file_id"])

    def fetch(self, file_id: str, timeout: float) -> Any:
        return self.request("POST", f"/api/files/{file_id}/fetch", timeout=timeout)

    def file(self, file_id: str) -> dict[str, Any] | None:
        try:
            answer = self.request("GET", f"/api/files/{file_id}")
        except ApiError:
            return None
        return dict(answer)

    def peers(self) -> dict[str, dict[str, Any]]:
        return {p["peer_id"]: p for p in self.request("GET", "/api/peers")["peers"]}

    def transfers(self) -> dict[str, Any]:
        return dict(self.request("GET", "/api/transfers"))

    def knows(self, file_id: str, holders: set[str], extension: bool, tls: bool = False) -> bool:
        """The node lists ``file_id`` with all of ``holders``, and tracks them (with the
        extension's features if ``extension``, and ``tls`` too if ``tls``)."""
        entry = self.file(file_id)
        if entry is None or not holders <= set(entry["holders"]):
            return False
        peers = self.peers()
        wanted = {"raw-range"} if extension else set()
        if tls:
            wanted.add("tls")
        return all(h in peers and wanted <= set(peers[h]["features"]) for h in holders)

    def blob(self, file_id: str) -> Path:
        return self.data_dir / "blobs" / file_id

    def delete(self, file_id: str) -> None:
        """Delete a file everywhere (its owner's DELETE reaches every peer)."""
        self.request("DELETE", f"/api/files/{file_id}")

    def cli(self, *args: str) -> list[str]:
        """A control command (``treedrive push …``) aimed at this node, as an argv."""
        url = f"http://{self.http[0]}:{self.http[1]}/"
        return [sys.executable, *self.launch(), *args, "--node", url]


# -- the ceiling: a plain socket copy ------------------------------------------------------------
CEILING_RECEIVER = r"""
import os, socket, sys, time
dst, sync_every, fsync_end = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
buf = bytearray(1 << 20)
view = memoryview(buf)
fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
got = synced = 0
while True:
    n = conn.recv_into(view)
    if not n:
        break
    done = 0
    while done < n:
        done += os.write(fd, view[done:n])
    got += n
    if sync_every and got - synced >= sync_every:
        os.fdatasync(fd)
        synced = got
if fsync_end:
    os.fsync(fd)
os.close(fd)
print(got, time.monotonic(), flush=True)
"""

CEILING_SENDER = r"""
import os, socket, sys, time
src, port, use_sendfile = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
buf = bytearray(1 << 20)
view = memoryview(buf)
with open(src, "rb", buffering=0) as f:
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port))
    if use_sendfile:
        size, sent = os.fstat(f.fileno()).st_size, 0
        while sent < size:
            k = os.sendfile(s.fileno(), f.fileno(), sent, min(size - sent, 1 << 30))
            if k == 0:
                raise SystemExit("the file ended early")
            sent += k
    else:
        while n := f.readinto(buf):
            s.sendall(view[:n])
    s.close()
print(t0, flush=True)
"""


@dataclass
class Ceiling:
    seconds: float
    size: int
    cpu: float  # both processes, user+sys

    @property
    def mb_s(self) -> float:
        return self.size / 1e6 / self.seconds


def socket_copy(
    src: Path,
    dst: Path,
    sync_every: int = 0,
    *,
    use_sendfile: bool = False,
    fsync_end: bool | None = None,
) -> Ceiling:
    """Copy ``src`` to ``dst`` through a loopback TCP socket between two processes: time from
    the sender's connect (file open) to the receiver's last write (file closed). With
    ``sync_every``, the receiver also ``fdatasync``s every that many bytes and ``fsync``s at
    the end (what a node does for a ranged download); ``fsync_end`` alone (default: whether
    ``sync_every``) only ``fsync``s at the end. ``use_sendfile``: the sender ``sendfile``s the
    file instead of ``readinto`` + ``sendall``. The CPU is both processes' (RUSAGE_CHILDREN
    difference: no other child is reaped meanwhile)."""
    if fsync_end is None:
        fsync_end = bool(sync_every)
    size = src.stat().st_size
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    recv = subprocess.Popen(
        [sys.executable, "-c", CEILING_RECEIVER, str(dst), str(sync_every), str(int(fsync_end))],
        stdout=subprocess.PIPE,
        text=True,
    )
    send: subprocess.Popen[str] | None = None
    try:
        assert recv.stdout is not None
        port = int(recv.stdout.readline())
        send = subprocess.Popen(
            [sys.executable, "-c", CEILING_SENDER, str(src), str(port), str(int(use_sendfile))],
            stdout=subprocess.PIPE,
            text=True,
        )
        t0_text, _ = send.communicate(timeout=600)
        done_text, _ = recv.communicate(timeout=600)
    finally:
        for p in (send, recv):
            if p is not None and p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
    got, t1 = done_text.split()
    if int(got) != size:
        raise RuntimeError(f"socket copy moved {got} of {size} bytes")
    dst.unlink()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Ceiling(float(t1) - float(t0_text), size, cpu)


# -- the runs ---------------------------------------------------------------------------------
@dataclass
class Run:
    size: int
    mode: str
    nodes: int
    sources: int
    receiver: str
    seconds: float
    ceilings: list[Ceiling]
    synced: list[Ceiling]
    cpu: dict[str, float]
    rss: dict[str, float]
    hwm: dict[str, float] = field(default_factory=dict)
    threads: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per node: CPU seconds per thread kind (:func:`thread_kinds`) during the fetch."""
    others: float = 0.0
    others_top: str = ""
    faults: int = 0
    first_byte: float | None = None
    all_on_disk: float | None = None
    used: str = "?"
    verified: bool = False

    @property
    def mb_s(self) -> float:
        return self.size / 1e6 / self.seconds

    @property
    def ceiling(self) -> float:
        """The median plain socket copy, MB/s."""
        return statistics.median(c.mb_s for c in self.ceilings)

    @property
    def ceiling_synced(self) -> float | None:
        """The median socket copy with the node's fdatasync pattern, MB/s."""
        return statistics.median(c.mb_s for c in self.synced) if self.synced else None

    @property
    def ratio(self) -> float:
        return self.mb_s / self.ceiling


class Profilers:
    """Optional profilers attached to every node for the length of one fetch: ``py-spy record``
    (Python stacks of every thread, raw collapsed format) and/or ``perf record -g`` (native and
    kernel, CPU time only)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.kinds: dict[str, Path] = {}
        if args.py_spy:
            self.kinds["py-spy"] = Path(args.py_spy)
        if args.perf:
            self.kinds["perf"] = Path(args.perf)
        self.rate = args.py_spy_rate
        self.running: list[tuple[subprocess.Popen[bytes], str, Path]] = []
        self.done: list[tuple[str, Path]] = []

    def start(self, label: str, nodes: list[Node]) -> None:
        for kind, out_dir in self.kinds.items():
            exe = shutil.which(kind)
            if exe is None:
                raise SystemExit(f"--{kind} needs {kind} on PATH")
            out_dir.mkdir(parents=True, exist_ok=True)
            for node in nodes:
                if kind == "py-spy":
                    out = out_dir / f"{label}-{node.name}.txt"
                    cmd = [exe, "record", "--pid", str(node.pid), "--rate", str(self.rate)]
                    cmd += ["--format", "raw", "--threads", "--idle", "--nonblocking"]
                else:
                    out = out_dir / f"{label}-{node.name}.perf.data"
                    cmd = [exe, "record", "-F", "999", "-g", "-p", str(node.pid)]
                cmd += ["--output" if kind == "py-spy" else "-o", str(out)]
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                self.running.append((proc, kind, out))
        if self.running:
            time.sleep(1.0)  # let them attach

    def stop(self) -> None:
        for proc, kind, out in self.running:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            self.done.append((kind, out))
        self.running = []


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.sampler = RssSampler(args.sample_every)
        self.sampler.start()
        self.nodes: list[Node] = []
        self.profilers = Profilers(args)
        self.preamble = Path(args.node_preamble).read_text() if args.node_preamble else ""
        if args.thread_names:
            self.preamble = THREAD_NAMES + self.preamble

    def close(self) -> None:
        self.profilers.stop()
        self.sampler.stop()
        for node in reversed(self.nodes):
            node.stop()
        self.nodes = []

    def node(self, root: Path, name: str, mode: str, bootstrap: Node | None) -> Node:
        extra = ["--download-limit", "0", *self.args.node_arg]
        if mode == "classic":
            extra.append("--no-extension")
        elif mode in ("extension", "push"):
            extra.append("--no-encryption")  # the raw extension in clear, as before issue 11
        if bootstrap is not None:
            extra += ["--bootstrap", bootstrap.address]
        node = Node(name, root / name, extra, preamble=self.preamble)
        self.nodes.append(node)
        node.start()
        self.sampler.watch(name, node.pid)
        return node

    def wait_quiet(self, nodes: list[Node]) -> None:
        if self.args.wait_quiet and not wait_for_quiet(
            [n.pid for n in nodes], self.args.wait_quiet, self.args.quiet_cpu
        ):
            print("  (the machine did not get quiet; measuring anyway)", flush=True)

    def network(self, size_mib: int, mode: str, payload: Path, want: str) -> list[Run]:
        """One size, one mode: the runs asked for (see the module's docstring)."""
        root = self.tmp / f"{size_mib}MiB-{mode}"
        size = size_mib * MIB
        extension = mode in ("extension", "tls")
        tls = mode == "tls"
        timeout = max(600.0, size_mib * 2.0)
        runs: list[Run] = []
        self.sampler.pids = {}
        try:
            n1 = self.node(root, "n1", mode, None)
            file_id = n1.push(payload, timeout)
            n2 = self.node(root, "n2", mode, n1)
            wait_until(
                lambda: n2.knows(file_id, {"n1"}, extension, tls), 30, "n2 learning the file"
            )
            if 1 in self.args.sources:
                runs.append(self.measure(root, size, mode, [n1], n2, file_id, payload, want))
            else:
                n2.fetch(file_id, timeout)
            if 3 in self.args.sources:
                n3 = self.node(root, "n3", mode, n1)
                wait_until(
                    lambda: n3.knows(file_id, {"n1", "n2"}, extension, tls),
                    30,
                    "n3 learning the file",
                )
                n3.fetch(file_id, timeout)  # setup: a third holder
                n4 = self.node(root, "n4", mode, n1)
                wait_until(
                    lambda: n4.knows(file_id, {"n1", "n2", "n3"}, extension, tls),
                    30,
                    "n4 learning the three holders",
                )
                runs.append(
                    self.measure(root, size, mode, [n1, n2, n3], n4, file_id, payload, want)
                )
            for node in self.nodes:  # every copy made, setup ones too
                if node.name != "n1" and sha256_of(node.blob(file_id)) != want:
                    raise RuntimeError(f"{node.name}'s blob does not match the payload")
            hwm = {n.name: (status_kib(n.pid, "VmHWM") or 0) / 1024 for n in self.nodes}
            for r in runs:
                r.hwm = {name: v for name, v in hwm.items() if name in r.cpu}
        finally:
            for node in reversed(self.nodes):
                node.stop()
            self.nodes = []
            if not self.args.keep:
                shutil.rmtree(root, ignore_errors=True)
        return runs

    def measure(
        self,
        root: Path,
        size: int,
        mode: str,
        holders: list[Node],
        receiver: Node,
        file_id: str,
        payload: Path,
        want: str,
    ) -> Run:
        everyone = [*holders, receiver]
        label = f"{size // MIB}MiB-{mode}-{len(holders)}src"
        if size // MIB == max(self.args.sizes):
            self.profilers.start(label, everyone)
        os.sync()  # start with no dirty pages from the setup
        self.wait_quiet(everyone)
        if self.args.warm:
            socket_copy(payload, root / "warm.bin")  # deleted: its memory is the fetch's
        cpu0 = {n.name: cpu_seconds(n.pid) or 0.0 for n in everyone}
        kinds0 = {n.name: thread_kinds(n.pid) for n in everyone}
        faults0 = minor_faults(receiver.pid)
        procs0 = all_cpu()
        busy0 = system_busy()
        self.sampler.reset()
        watcher = DiskWatcher(receiver.data_dir / "partial", size)
        t0 = time.monotonic()
        watcher.start()
        receiver.fetch(file_id, max(600.0, size / MIB * 2.0))
        seconds = time.monotonic() - t0
        watcher.stop()
        rss = self.sampler.snapshot()
        busy1 = system_busy()
        cpu = {n.name: (cpu_seconds(n.pid) or 0.0) - cpu0[n.name] for n in everyone}
        threads = {n.name: kinds_delta(kinds0[n.name], thread_kinds(n.pid)) for n in everyone}
        faults = minor_faults(receiver.pid) - faults0
        others_top = top_others(procs0, {n.pid for n in everyone})
        self.profilers.stop()
        verified = sha256_of(receiver.blob(file_id)) == want
        # What moved the bytes, from the receiver's log.
        got = log_lines(receiver.log_path, "fetched ", f"{file_id[:12]})")
        used = "?"
        if got:
            m = re.search(r" from (.*) in [\d.]+ s \(\d+ bytes; \d+ over the network", got[-1])
            if m:
                used = "raw from " + m.group(1)
            else:
                m = re.search(r"fetched .* from (\S+) in ", got[-1])
                used = "hex from " + m.group(1) if m else got[-1][-40:]
        ceilings, synced = [], []
        if self.args.warm:
            os.sync()
            socket_copy(payload, root / "warm.bin")  # as before the fetch
        for _ in range(self.args.ceiling_runs):
            os.sync()
            ceilings.append(socket_copy(payload, root / "ceiling.bin"))
            if self.args.sync_every:
                os.sync()
                synced.append(socket_copy(payload, root / "ceiling.bin", self.args.sync_every))
        return Run(
            size=size,
            mode=mode,
            nodes=len(everyone),
            sources=len(holders),
            receiver=receiver.name,
            seconds=seconds,
            ceilings=ceilings,
            synced=synced,
            cpu=cpu,
            threads=threads,
            rss={n.name: rss.get(n.name, 0.0) for n in everyone},
            others=busy1 - busy0 - sum(cpu.values()),
            others_top=others_top,
            faults=faults,
            first_byte=watcher.first,
            all_on_disk=watcher.full,
            used=used,
            verified=verified,
        )


# -- pushes: get, push forward, whole push and the fsync copy, interleaved ----------------------
TARGET_FORWARD = 0.9  # push forward / get
TARGET_WHOLE = 0.6  # whole `treedrive push` / get
TARGET_GET_COPY = 0.8  # get / the fsync-at-end sendfile copy


@dataclass
class PushRound:
    """One round of the ``push`` mode (a fresh 2-node extension network), seconds each."""

    size: int
    get: float
    forward: float
    whole: float
    whole_upload: float  # of ``whole``: from starting the CLI to the sender's "pushed" line
    copies: list[Ceiling]
    cpu: dict[str, dict[str, CpuSplit]]  # phase -> node -> CPU
    cli_cpu: float = 0.0
    verified: bool = True

    def mb_s(self, seconds: float) -> float:
        return self.size / 1e6 / seconds

    @property
    def copy(self) -> float:
        """The median fsync-at-end sendfile copy, MB/s."""
        return statistics.median(c.mb_s for c in self.copies)


def stamp(path: Path, n: int) -> str:
    """Make ``path`` a new file (its first 8 bytes say ``n``): a new id, whatever its time;
    its sha256."""
    with path.open("r+b") as f:
        f.write(n.to_bytes(8, "little"))
    return sha256_of(path)


class PushBench:
    """The ``push`` mode: in each round a fresh network, ``n1`` (the payload pushed to it while
    alone) and ``n2`` (joins), then, one after the other, each after a warm-up copy: the get
    (``n2`` fetches from ``n1``), the push forward (the payload, made new, uploaded to ``n1``
    through the API as a multipart form, so not streamed: from ``n1``'s "pushed" log line to
    ``n2``'s "received" log line, both stamped by the nodes' clocks in ms), the whole push
    (``treedrive push FILE`` against ``n1``, made new again: it gives ``n1`` the path, ``n1``
    reads the file and streams it on to ``n2``; from starting the command to ``n2``'s
    "received" line) and the
    fsync-at-end socket copy (sendfile -> recv_into -> write, fsync). Between them the file is
    deleted everywhere."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.args = bench.args
        self.version = 0

    def prepare(self, root: Path, nodes: list[Node], payload: Path, copies: int = 2) -> None:
        """Before a phase: no dirty pages, a quiet machine, and (``--warm``) memory touched
        for ``copies`` of the payload, the same for every phase: a push writes two (the upload
        into ``n1``, then ``n2``'s copy), a get one, and on this VM memory left free for a
        couple of seconds costs a fault to touch again (see the module's docstring). With one
        warm copy before each phase, the forward of a push wrote ``n2``'s bytes into memory
        that the upload had just left cold, and measured 0.62x the get (1 GiB, 6 rounds)."""
        os.sync()  # no dirty pages from the phase before
        self.bench.wait_quiet(nodes)
        if not self.args.warm:
            return
        warm = [root / f"warm-{i}.bin" for i in range(copies)]
        for dst in warm:  # all kept until the last is written: that much memory touched
            with payload.open("rb") as src, dst.open("wb") as out:
                shutil.copyfileobj(src, out, 4 * MIB)
        for dst in warm:
            dst.unlink()  # deleted: its memory is the next phase's

    def fresh(self, payload: Path) -> str:
        self.version += 1
        return stamp(payload, 1_000_000 + self.version)

    def round(self, size_mib: int, payload: Path) -> PushRound:
        root = self.bench.tmp / f"{size_mib}MiB-push-{self.version}"
        size = size_mib * MIB
        timeout = max(600.0, size_mib * 2.0)
        bench = self.bench
        bench.sampler.pids = {}
        try:
            n1 = bench.node(root, "n1", "push", None)
            want = self.fresh(payload)
            file_id = n1.push(payload, timeout)
            n2 = bench.node(root, "n2", "push", n1)
            wait_until(lambda: n2.knows(file_id, {"n1"}, True), 30, "n2 learning the file")
            nodes = [n1, n2]
            cpu: dict[str, dict[str, CpuSplit]] = {}
            verified = True

            self.prepare(root, nodes, payload)
            watch = CpuWatch(nodes)
            t0 = time.monotonic()
            n2.fetch(file_id, timeout)
            get = time.monotonic() - t0
            cpu["get"] = watch.split()
            verified &= self.drop(n1, n2, file_id, want)

            want = self.fresh(payload)
            self.prepare(root, nodes, payload)
            watch = CpuWatch(nodes)
            file_id = n1.push(payload, timeout, form=True)  # not streamed: see push()
            received = self.received(n2, file_id, timeout)
            cpu["forward"] = watch.split()
            pushed = logged_at(n1.log_path, "pushed ", file_id[:12])
            if pushed is None:
                raise RuntimeError(f"no 'pushed' line for {file_id[:12]} in n1's log")
            forward = received - pushed
            verified &= self.drop(n1, n2, file_id, want)

            want = self.fresh(payload)
            self.prepare(root, nodes, payload)
            watch = CpuWatch(nodes)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.time()
            done = subprocess.run(
                n1.cli("push", str(payload), "--json"),
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**os.environ, "TREEDRIVE_TOKEN": n1.token},
                check=False,
            )
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if done.returncode != 0:
                raise RuntimeError(f"treedrive push failed: {done.stderr[-2000:]}")
            file_id = json.loads(done.stdout)["file_id"]
            received = self.received(n2, file_id, timeout)
            cpu["whole"] = watch.split()
            pushed = logged_at(n1.log_path, "pushed ", file_id[:12])
            whole, whole_upload = received - t0, (pushed or received) - t0
            cli_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            verified &= self.drop(n1, n2, file_id, want)

            copies = []
            for i in range(self.args.ceiling_runs):
                if i == 0:
                    self.prepare(root, nodes, payload)
                else:
                    os.sync()
                dst = root / "copy.bin"
                copies.append(socket_copy(payload, dst, use_sendfile=True, fsync_end=True))
        finally:
            for node in reversed(bench.nodes):
                node.stop()
            bench.nodes = []
            if not self.args.keep:
                shutil.rmtree(root, ignore_errors=True)
        return PushRound(
            size, get, forward, whole, whole_upload, copies, cpu, cli_cpu, verified
        )  # fmt: skip

    @staticmethod
    def received(node: Node, file_id: str, timeout: float) -> float:
        """When ``node`` logged that it received (verified, stored) ``file_id``; the
        ``/api/files`` answer confirms it holds it."""
        at = wait_until(
            lambda: logged_at(node.log_path, "received ", file_id[:12]), timeout,
            f"{node.name} receiving {file_id[:12]}", every=0.02,
        )  # fmt: skip
        entry = node.file(file_id)
        if entry is None or not entry["has_copy"]:
            raise RuntimeError(f"{node.name} logged {file_id[:12]} received but does not hold it")
        return float(at)

    @staticmethod
    def drop(n1: Node, n2: Node, file_id: str, want: str) -> bool:
        """Check ``n2``'s copy against the payload, then delete the file everywhere (and wait
        until both blobs are gone: the disk is free again)."""
        ok = sha256_of(n2.blob(file_id)) == want
        n1.delete(file_id)
        wait_until(
            lambda: not n1.blob(file_id).exists() and not n2.blob(file_id).exists(),
            60, f"{file_id[:12]} deleted everywhere", every=0.05,
        )  # fmt: skip
        return ok


def print_push(rounds: list[PushRound]) -> None:
    """The push mode's rounds, their medians and the three ratios against their targets."""
    if not rounds:
        return
    print(
        "\n  push mode (2 nodes, extension): MB/s per round; CPU s of n1/n2 (loop, busiest thread)"
    )
    for i, r in enumerate(rounds, 1):
        print(
            f"  {r.size // MIB} MiB #{i}: get {r.mb_s(r.get):.0f}, push forward "
            f"{r.mb_s(r.forward):.0f}, whole push {r.mb_s(r.whole):.0f} (CLI start to n1's "
            f"'pushed' {r.whole_upload:.2f} s), fsync copy {r.copy:.0f}"
            f"{'' if r.verified else '  DIFFERENT BYTES'}"
        )
        for phase, split in r.cpu.items():
            extra = f"; the CLI {r.cli_cpu:.2f}" if phase == "whole" else ""
            nodes = ", ".join(f"{name} {c}" for name, c in split.items())
            print(f"      CPU during {phase}: {nodes}{extra}")
    for size in sorted({r.size for r in rounds}):
        these = [r for r in rounds if r.size == size]
        get = statistics.median(r.mb_s(r.get) for r in these)
        fwd = statistics.median(r.mb_s(r.forward) for r in these)
        whole = statistics.median(r.mb_s(r.whole) for r in these)
        copy = statistics.median(r.copy for r in these)
        print(
            f"\n  {size // MIB} MiB, medians of {len(these)} rounds: get {get:.0f} MB/s, push "
            f"forward {fwd:.0f}, whole push {whole:.0f}, fsync copy {copy:.0f}"
        )
        for what, ratio, target in (
            ("push forward / get", fwd / get, TARGET_FORWARD),
            ("whole push / get", whole / get, TARGET_WHOLE),
            ("get / fsync copy", get / copy, TARGET_GET_COPY),
        ):
            verdict = "met" if ratio >= target else "MISSED"
            print(f"  {what}: {ratio:.2f} (target >= {target}) {verdict}")
    print(
        "\n  get: n2's POST /api/files/{id}/fetch, request to answer (verified, committed).\n"
        "  push forward: n1's 'pushed' log line (its upload, a multipart form, is stored; the\n"
        "  push to n2 starts) to n2's 'received' line (verified, committed), both the nodes'\n"
        "  own timestamps.\n"
        "  whole push: starting `treedrive push FILE` against n1 (it gives n1 the path; n1\n"
        "  reads the file and streams it on to n2) to n2's 'received' line.\n"
        "  fsync copy: sendfile -> loopback socket -> recv_into 1 MiB -> write, fsync at the\n"
        "  end, between two plain processes; median of --ceiling-runs. MB = 10^6 B."
    )


# -- output -----------------------------------------------------------------------------------
def print_table(runs: list[Run]) -> None:
    head = (
        "size MiB", "mode", "nodes", "fetch s", "1st B / all in s", "MB/s", "ceiling MB/s", "ratio",
        "ceil+sync MB/s", "ratio",
        "CPU s n1/n2/n3/n4", "rcv faults", "peak RSS MiB n1/n2/n3/n4", "VmHWM MiB n1/n2/n3/n4",
        "others CPU s", "ceil CPU s", "sha256", "bytes moved as",
    )  # fmt: skip
    rows = [head]
    for r in runs:
        names = list(r.cpu)
        rows.append(
            (
                str(r.size // MIB),
                r.mode,
                f"{r.nodes} ({r.sources} src)",
                f"{r.seconds:.2f}",
                f"{fmt(r.first_byte, '.2f')} / {fmt(r.all_on_disk, '.2f')}",
                f"{r.mb_s:.1f}",
                f"{r.ceiling:.0f} ({min(c.mb_s for c in r.ceilings):.0f}-"
                f"{max(c.mb_s for c in r.ceilings):.0f})",
                f"{100 * r.ratio:.0f}%",
                fmt(r.ceiling_synced, ".0f"),
                "-" if r.ceiling_synced is None else f"{100 * r.mb_s / r.ceiling_synced:.0f}%",
                "/".join(f"{r.cpu[n]:.2f}" for n in names),
                f"{r.faults / 1000:.0f}k",
                "/".join(f"{r.rss[n]:.0f}" for n in names),
                "/".join(f"{r.hwm.get(n, 0):.0f}" for n in names),
                f"{r.others:.2f}",
                f"{statistics.median(c.cpu for c in r.ceilings):.2f}",
                "ok" if r.verified else "DIFFERENT",
                r.used,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    print()
    for i, row in enumerate(rows):
        print("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))
    print(
        "\n  fetch s: the receiver's POST /api/files/{id}/fetch, request to answer (bytes\n"
        "  verified and committed). 1st B / all in: when the first bytes and all the bytes were\n"
        "  on the receiver's disk (partial/ watched every 5 ms); the rest of 'fetch s' after\n"
        "  'all in' is hashing catch-up, fsync, rename, store. MB = 10^6 B.\n"
        "  ceiling: a plain loopback socket copy of the same file between two processes\n"
        "  (read -> sendall -> recv_into -> write), right after the fetch; median (min-max) of\n"
        "  --ceiling-runs copies. ratio = MB/s / ceiling. ceil+sync: the same copy with\n"
        "  fdatasync every --sync-every bytes and fsync at the end (the durability a node's\n"
        "  ranged download has), median. CPU s: utime+stime of each node during the fetch; the\n"
        "  last node is the receiver. rcv faults: the receiver's minor page faults meanwhile.\n"
        "  peak RSS: VmRSS sampled during the fetch. VmHWM: each\n"
        "  node's whole life (push and setup included). others CPU s: CPU the rest of the\n"
        "  machine used meanwhile (other processes, kernel threads, writeback). ceil CPU s: CPU\n"
        "  of the two socket-copy processes (median)."
    )
    print("\n  the processes besides the nodes that used the most CPU during each fetch (s):")
    for r in runs:
        print(f"    {r.size // MIB} MiB {r.mode} {r.nodes} nodes: {r.others_top}")


def tls_ratios(runs: list[Run]) -> list[str]:
    """For each size and number of sources measured both ways: the encrypted extension (``tls``)
    against the one in clear (``extension``), MB/s (medians) and their ratio against the target,
    and each node's CPU seconds per GiB (medians)."""
    lines = []
    cases = sorted({(r.size, r.sources) for r in runs if r.mode == "tls"})
    for size, sources in cases:
        by = {
            mode: [r for r in runs if (r.size, r.sources, r.mode) == (size, sources, mode)]
            for mode in ("extension", "tls")
        }
        if not by["extension"]:
            continue
        speed = {m: statistics.median(r.mb_s for r in rs) for m, rs in by.items()}
        ratio = speed["tls"] / speed["extension"]
        lines.append(
            f"encrypted / clear extension, {size // MIB} MiB, {sources + 1} nodes >= "
            f"{TARGET_TLS_RATIO}: {'met' if ratio >= TARGET_TLS_RATIO else 'MISSED'} "
            f"({speed['tls']:.1f} / {speed['extension']:.1f} MB/s = {ratio:.2f})"
        )
        gib = size / (1024 * MIB)
        for mode, rs in by.items():
            names = list(rs[0].cpu)
            per = "  ".join(
                f"{n} {statistics.median(r.cpu[n] for r in rs) / gib:.2f}" for n in names
            )
            lines.append(f"  CPU s per GiB, {mode:9} (last: the receiver): {per}")
            for n in names:
                lines.append(f"    {n} by thread: {thread_line(rs, n, gib)}")
    return lines


def thread_line(runs: list[Run], node: str, gib: float, least: float = 0.01) -> str:
    """A node's CPU seconds per GiB by thread kind (medians over ``runs``), largest first."""
    kinds = {k for r in runs for k in r.threads.get(node, {})}
    med = {
        k: statistics.median(r.threads.get(node, {}).get(k, 0.0) for r in runs) / gib for k in kinds
    }
    rows = sorted(((v, k) for k, v in med.items() if v >= least), reverse=True)
    return ", ".join(f"{k} {v:.2f}" for v, k in rows) or "-"


def check_targets(runs: list[Run]) -> list[str]:
    lines = []
    ext = [r for r in runs if r.mode == "extension" and r.sources == 1 and r.size == 1024 * MIB]
    for r in ext:
        ok = r.ratio >= TARGET_RATIO
        lines.append(
            f"extension 1 GiB, 2 nodes >= {100 * TARGET_RATIO:.0f}% of the socket copy: "
            f"{'met' if ok else 'MISSED'} ({r.mb_s:.1f} / {r.ceiling:.1f} MB/s = "
            f"{100 * r.ratio:.0f}%)"
        )
    lines += tls_ratios(runs)
    cl = [r for r in runs if r.mode == "classic" and r.size == 1024 * MIB]
    for r in cl:
        ok = r.mb_s >= TARGET_CLASSIC_MB_S
        lines.append(
            f"classic hex 1 GiB ({r.nodes} nodes) >= {TARGET_CLASSIC_MB_S} MB/s: "
            f"{'met' if ok else 'MISSED'} ({r.mb_s:.1f} MB/s)"
        )
    if runs:
        worst_run = max(runs, key=lambda r: max(r.rss.values()))
        worst = max(worst_run.rss.values())
        hwm = max((v for r in runs for v in r.hwm.values()), default=0.0)
        lines.append(
            f"peak RSS < {TARGET_RSS_MIB} MiB per node during every fetch: "
            f"{'met' if worst < TARGET_RSS_MIB else 'MISSED'} (worst {worst:.1f} MiB, "
            f"{worst_run.size // MIB} MiB {worst_run.mode}); largest VmHWM (whole life, push "
            f"and setup included) {hwm:.1f} MiB"
        )
    return lines


@contextlib.contextmanager
def scratch_dir(parent: str | None, keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="treedrive-transfer-", dir=parent))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    print(
        f"TreeDrive transfer benchmark: sizes {args.sizes} MiB, modes {args.modes}, sources "
        f"{args.sources}; {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.machine()}, load average {loadavg()}; node args {args.node_arg or '-'}; "
        f"{'warm' if args.warm else 'no warm-up copies'}"
        f"{'; node preamble ' + args.node_preamble if args.node_preamble else ''}; "
        f"treedrive at {code_version()}",
        flush=True,
    )
    runs: list[Run] = []
    rounds: list[PushRound] = []
    with scratch_dir(args.tmp_dir, args.keep) as tmp:
        bench = Bench(args, tmp)
        pushes = PushBench(bench)
        try:
            for size_mib in args.sizes:
                payload = tmp / f"payload-{size_mib}MiB.bin"
                want = make_payload(payload, size_mib * MIB)
                for mode in args.modes:
                    for _ in range(args.repeat):
                        if mode == "push":
                            rounds.append(pr := pushes.round(size_mib, payload))
                            print(
                                f"  {size_mib} MiB push round: get {pr.mb_s(pr.get):.0f}, push "
                                f"forward {pr.mb_s(pr.forward):.0f}, whole push "
                                f"{pr.mb_s(pr.whole):.0f}, fsync copy {pr.copy:.0f} MB/s",
                                flush=True,
                            )
                            want = sha256_of(payload)
                            continue
                        new = bench.network(size_mib, mode, payload, want)
                        for r in new:
                            print(
                                f"  {size_mib} MiB {mode} {r.nodes} nodes: {r.mb_s:.1f} MB/s "
                                f"(ceiling {r.ceiling:.1f}), {r.used}",
                                flush=True,
                            )
                        runs += new
                payload.unlink()
        finally:
            bench.close()
    if runs:
        print_table(runs)
    print_push(rounds)
    print(f"\nload average at the end {loadavg()}; {bench.sampler.samples} RSS samples")
    for line in check_targets(runs):
        print(line)
    if bench.profilers.done:
        sys.path.insert(0, str(Path(__file__).parent))
        from classic_transfer import summarize_perf, summarize_raw

        for kind, out in bench.profilers.done:
            print(f"\n{kind} profile {out.name} ({out}):")
            print(
                summarize_raw(out, args.top) if kind == "py-spy" else summarize_perf(out, args.top)
            )
    verified = all(r.verified for r in runs) and all(r.verified for r in rounds)
    return 0 if verified else 2


def _sizes(text: str) -> list[int]:
    sizes = [int(x) for x in text.split(",") if x.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes are MiB, at least 1, comma-separated")
    return sizes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=_sizes, default=[1, 16, 256, 1024], help="MiB, comma-separated")
    p.add_argument("--quick", action="store_true", help="sizes 1,16,64")
    p.add_argument(
        "--modes",
        type=lambda s: s.split(","),
        default=["classic", "extension", "push"],
        help="classic,extension,tls,push (default classic,extension,push); extension: the\n"
        "raw extension in clear (--no-encryption); tls: the same, encrypted (PROTOCOL.md 2.9);\n"
        "push: get, push forward, whole push and the fsync copy, interleaved in each round\n"
        "(a fresh 2-node network, in clear)",
    )
    p.add_argument(
        "--sources",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 3],
        help="1 (2 nodes), 3 (4 nodes), or 1,3 (default)",
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="networks per size and mode (push: rounds)"
    )
    p.add_argument(
        "--node-arg",
        action="append",
        default=[],
        help="an extra argument for every node (repeatable), e.g. --node-arg=--max-inflight=8",
    )
    p.add_argument(
        "--ceiling-runs", type=int, default=3, help="socket copies per run (median shown)"
    )
    p.add_argument(
        "--sync-every",
        type=int,
        default=32 * MIB,
        help="bytes between fdatasyncs in the second socket copy (the node's default\n"
        "sync_every); 0: skip that copy",
    )
    p.add_argument(
        "--node-preamble",
        metavar="FILE",
        default=None,
        help="Python file every node runs before its CLI (to try a change to the node without\n"
        "editing it, e.g. a patched method); the nodes then start with python -c",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each measured fetch, wait up to S s for the rest of the machine to be\n"
        "idle (a shared machine: fewer spoilt runs)",
    )
    p.add_argument(
        "--quiet-cpu",
        type=float,
        default=0.15,
        help="CPU s per 1 s window that counts as idle for --wait-quiet (default 0.15)",
    )
    p.add_argument(
        "--warm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="before the fetch and before the first ceiling copy, make and delete an\n"
        "unmeasured socket copy, so that every measured transfer writes into memory in the\n"
        "same state (see bench/README.md: memory that was free for a while is slow to touch\n"
        "again on this VM; without this the fetch gets such memory and the copies do not)",
    )
    p.add_argument(
        "--thread-names",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="name every node thread after its Python thread (a node preamble; the nodes\n"
        "then start with python -c), to report each node's CPU per kind of thread",
    )
    p.add_argument("--sample-every", type=float, default=0.025, help="RSS sampling period (s)")
    p.add_argument("--tmp-dir", default=None, help="parent of the scratch dir (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the scratch dir")
    p.add_argument(
        "--py-spy", metavar="DIR", default=None, help="py-spy every node during the largest size"
    )
    p.add_argument(
        "--perf", metavar="DIR", default=None, help="perf record -g every node (largest size)"
    )
    p.add_argument("--py-spy-rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=15, help="rows per profile summary")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = [1, 16, 64]
    if set(args.modes) - {"classic", "extension", "tls", "push"} or set(args.sources) - {1, 3}:
        p.error("--modes: classic,extension,tls,push; --sources: 1,3")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
