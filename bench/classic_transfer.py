"""Benchmark: one big file between two real ``treedrive run`` processes over classic hex FILE_DATA.

Scenario 1 (transfer): a payload file of ``--size`` MiB is pushed into the sender's store with the
sender's own shell (``push``), a receiver joins through the sender, and the receiver's shell runs
``get <file_id>``: the bytes move as one ``GET_FILE`` -> ``FILE_DATA`` exchange, hex in one JSON
string. Measured: wall time from writing ``get`` to the receiver printing its result, MB/s of file
bytes, peak RSS of each node (VmRSS sampled every 50 ms, plus VmHWM), CPU seconds of each node
(utime+stime from /proc/<pid>/stat). The received blob is checked byte for byte (sha256).

Scenario 2 (bad push): this script connects to the receiver itself and streams an unsolicited
``FILE_DATA`` of ``--bad-size`` MiB whose bytes do not match its ``file_id``. Expected: the
receiver refuses it and leaves nothing in ``blobs/`` or ``partial/``; its peak RSS stays flat.

Both nodes run with ``--no-extension`` (``--transport classic``, the default) so that the bytes
move as hex even though both are TreeDrive nodes; the sender's ``served`` log line confirms it.
``--transport auto`` lets them negotiate (raw-range) for comparison.

Only numbers are printed (no pass/fail beyond sanity checks). Only 127.0.0.1 is used; the node
processes (and profilers) this script starts are ended by their PID; the temp dir is removed.

    python bench/classic_transfer.py                      # 1 GiB
    python bench/classic_transfer.py --size 64            # a quick run
    python bench/classic_transfer.py --repeat 3           # three transfers, fresh receivers
    python bench/classic_transfer.py --py-spy /tmp/prof   # + Python profile of both nodes
    python bench/classic_transfer.py --perf /tmp/perf     # + native/kernel profile (perf)

See bench/README.md for what the columns mean and the numbers measured so far.
"""

from __future__ import annotations

import argparse
import binascii
import collections
import contextlib
import functools
import hashlib
import json
import os
import platform
import queue
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

MIB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
END_MARK = "__bench_end__"  # an unknown shell command: its error line ends a command's output
TARGET_RSS_MIB = 100
TARGET_MB_S = 150


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
    """utime + stime of a process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


class RssSampler(threading.Thread):
    """Samples VmRSS of named processes every ``every`` s; keeps the max per (name, phase)."""

    def __init__(self, every: float = 0.05) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.every = every
        self.pids: dict[str, int] = {}
        self.phase = "start"
        self.peaks: dict[tuple[str, str], int] = {}
        self.samples = 0
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def watch(self, name: str, pid: int) -> None:
        with self._lock:
            self.pids[name] = pid

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self.sample()
            self.phase = phase
            self.sample()

    def sample(self) -> None:
        for name, pid in self.pids.items():
            rss = status_kib(pid, "VmRSS")
            if rss is not None:
                key = (name, self.phase)
                self.peaks[key] = max(self.peaks.get(key, 0), rss)
        self.samples += 1

    def peak_mib(self, name: str, phase: str) -> float | None:
        kib = self.peaks.get((name, phase))
        return None if kib is None else kib / 1024

    def run(self) -> None:
        while not self._stop_event.wait(self.every):
            with self._lock:
                self.sample()

    def stop(self) -> None:
        self._stop_event.set()


# -- the payload ------------------------------------------------------------------------------
def make_payload(path: Path, size: int) -> str:
    """Write ``size`` bytes of incompressible-looking data; return their sha256.

    One random MiB, rotated by a different amount per MiB and stamped with its index, so no two
    MiB are equal and no MiB repeats at a fixed distance. Written block by block, never held whole.
    """
    base = os.urandom(MIB)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        i = 0
        left = size
        while left > 0:
            k = (i * 40503 + 4099) % MIB
            rotated = base[k:] + base[:k]
            block = i.to_bytes(8, "little") + rotated[8 : min(MIB, left)]
            f.write(block)
            digest.update(block)
            left -= len(block)
            i += 1
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MIB):
            digest.update(block)
    return digest.hexdigest()


@functools.cache
def has_option(option: str) -> bool:
    """Whether ``treedrive run`` takes ``option`` (the extension switch came in later)."""
    out = subprocess.run(
        [sys.executable, "-m", "treedrive", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return option in out.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- a node process ---------------------------------------------------------------------------
@dataclass
class NodeProc:
    """A ``python -m treedrive run --shell`` process driven through its stdin/stdout."""

    name: str
    data_dir: Path
    port: int
    extra: list[str]
    timers: dict[str, str]
    proc: subprocess.Popen[str] | None = None
    lines: queue.Queue[tuple[float, str | None]] = field(default_factory=queue.Queue)
    stderr_file: IO[str] | None = None

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

    def start(self) -> NodeProc:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "treedrive", "run", "--shell",
            "--peer-id", self.name,
            "--port", str(self.port),
            "--http-port", "0",
            "--data-dir", str(self.data_dir),
            *(arg for key, value in self.timers.items() for arg in (f"--{key}", value)),
            *self.extra,
        ]  # fmt: skip
        self.stderr_file = (self.data_dir.parent / f"{self.name}.stderr").open("w")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr_file,
            text=True,
            bufsize=1,
        )
        threading.Thread(target=self._read_stdout, name=f"{self.name}-out", daemon=True).start()
        deadline = time.monotonic() + 30
        while not (self.data_dir / "node.json").exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start: {self.stderr_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start within 30 s")
            time.sleep(0.05)
        return self

    def _read_stdout(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), line.rstrip("\n")))
        self.lines.put((time.monotonic(), None))

    def stderr_tail(self, n: int = 2000) -> str:
        path = self.data_dir.parent / f"{self.name}.stderr"
        try:
            return path.read_text()[-n:]
        except OSError:
            return ""

    def send_line(self, line: str) -> float:
        """Write one shell line; returns the monotonic time just after it was flushed."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return time.monotonic()

    def read_until_end(self, timeout: float) -> list[tuple[float, str]]:
        """Lines printed up to the END_MARK error line (excluded), each with its arrival time."""
        out: list[tuple[float, str]] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no answer within {timeout} s; got {out!r}")
            try:
                t, line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{self.name} exited: {self.stderr_tail()}")
            if END_MARK in line:
                return out
            out.append((t, line))

    def command(self, line: str, timeout: float = 30.0) -> tuple[float, list[tuple[float, str]]]:
        """Run one shell command; returns (time sent, [(arrival time, output line), ...])."""
        sent = self.send_line(line)
        self.send_line(END_MARK)
        return sent, self.read_until_end(timeout)

    def stop(self) -> None:
        """Ask the node to exit (stdin EOF), then SIGINT, then SIGKILL: only this PID."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert proc.stdin is not None
                proc.stdin.close()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=15)
        if self.stderr_file is not None:
            self.stderr_file.close()


# -- py-spy (optional) ----------------------------------------------------------------------------
class Profiler:
    """A sampling profiler attached to one PID for the length of one phase: ``py-spy record
    --threads --idle --format raw`` (Python stacks) or ``perf record -g`` (native and kernel)."""

    def __init__(self, kind: str, pid: int, out: Path, rate: int, native: bool = False) -> None:
        self.kind = kind
        self.out = out
        self.native = native
        exe = shutil.which(kind)
        if exe is None:
            raise SystemExit(f"--{kind} needs {kind} on PATH")
        if kind == "py-spy":
            cmd = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
            cmd += ["--threads", "--idle", "--output", str(out)]
            if native:
                cmd.append("--native")
        else:
            cmd = [exe, "record", "-F", str(rate), "-g", "-p", str(pid), "-o", str(out)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
        )
        time.sleep(1.0)  # let it attach before the measured phase starts

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def summary(self, top: int) -> str:
        if self.kind == "py-spy":
            return summarize_raw(self.out, top, self.native)
        return summarize_perf(self.out, top)


# Rough buckets for perf's symbols (first match wins), to read a profile at a glance.
PERF_BUCKETS: list[tuple[str, re.Pattern[str]]] = [
    ("hex decode (binascii a2b_hex)", re.compile(r"a2b_hex")),
    ("hex encode (b2a_hex / _Py_strhex)", re.compile(r"strhex|b2a_hex")),
    ("sha256 (libcrypto)", re.compile(r"libcrypto|sha256")),
    (
        "page faults: fault, zero, map, unmap pages (kernel)",
        re.compile(
            r"page_fault|clear_page|anonymous_page|mm_fault|unmap_page|alloc_pages|alloc_frozen"
            r"|freelist|memcg|mem_cgroup|folio_add_new_anon|lruvec|mas_walk|lock_vma|zap_|pte"
            r"|free_pages|free_unref|tlb|rmqueue|list_del|lru_|release_pages|folio_batch|pcp"
            r"|vma|access_error|rcu_read|p4d_|pmd_|charge|do_brk|munmap|node_page_state"
        ),
    ),
    (
        "file write into the page cache (kernel)",
        re.compile(r"copy_folio_from_iter|ext4|perform_write|filemap_(?!read)|block_|jbd2|mpage"),
    ),
    ("kernel -> user copy (_copy_to_iter: recv, read)", re.compile(r"_copy_to_iter|filemap_read")),
    ("user -> kernel copy (_copy_from_iter: send)", re.compile(r"_copy_from_iter")),
    (
        "TCP loopback, softirq, locks, scheduler (kernel)",
        re.compile(r"softirq|spin_|tcp_|ip_|dev_|net_|sock|napi|skb|sched|task_switch"),
    ),
    ("memcpy/memmove (libc)", re.compile(r"memmove|memcpy|memchr")),
    ("Python interpreter, asyncio, sqlite", re.compile(r"libpython|Py|sqlite|select|epoll")),
]


def summarize_perf(path: Path, top: int) -> str:
    """CPU time by bucket and by symbol (user and kernel) from ``perf report``."""
    cmd = ["perf", "report", "-i", str(path), "--stdio", "--no-children", "-g", "none"]
    cmd += ["--sort", "dso,sym", "--percent-limit", "0"]
    try:
        text = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"  (perf report failed: {exc})"
    symbols: list[tuple[float, str]] = []
    for line in text.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[.\]\s+(.*)", line)
        if m:
            symbols.append((float(m.group(1)), f"{m.group(2)} {m.group(3).strip()}"))
    if not symbols:
        return "  (no samples)"
    buckets: dict[str, float] = collections.defaultdict(float)
    for pct, name in symbols:
        bucket = next((b for b, rx in PERF_BUCKETS if rx.search(name)), "other")
        buckets[bucket] += pct
    rows = ["  CPU time by bucket:"]
    ranked = sorted(buckets.items(), key=lambda item: -item[1])
    rows += [f"    {pct:5.1f}%  {name}" for name, pct in ranked]
    rows.append("  top symbols:")
    rows += [f"    {pct:5.1f}%  {name}" for pct, name in symbols[:top]]
    return "\n".join(rows)


_LINENO = re.compile(r":\d+\)$")
_THREAD = re.compile(r"^thread \((?:0x)?[0-9a-fA-F]+\): ?(.*)$")
_IDLE_LOOP = ("EpollSelector.select", "epoll_wait")


def summarize_raw(path: Path, top: int, native: bool = False) -> str:
    """Where the event loop's thread spends its time, from py-spy's collapsed stacks.

    The main thread runs the event loop: its samples inside ``EpollSelector.select`` are time
    the loop waited for the network. Other threads (the shell, to_thread workers) are shown
    by their leaf frames only.
    """
    try:
        text = path.read_text()
    except OSError:
        return f"  (no profile at {path})"
    per_thread: collections.Counter[str] = collections.Counter()
    py_leaf: collections.Counter[str] = collections.Counter()
    native_leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    others: collections.Counter[str] = collections.Counter()
    main = idle = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        m = _THREAD.match(frames[0])
        thread = m.group(1) if m else "?"
        frames = [f for f in frames[1:] if f and not f.startswith("process ")]
        if not frames:
            continue
        per_thread[thread] += n
        if thread != "MainThread":
            others[f"[{thread}] {frames[-1]}"] += n
            continue
        main += n
        if any(f.startswith(_IDLE_LOOP) for f in frames):
            idle += n
            continue
        python = [f for f in frames if ".py:" in f]
        if python:
            py_leaf[python[-1]] += n
        native_leaf[frames[-1]] += n
        for name in {_LINENO.sub(")", f) for f in python}:
            inclusive[name] += n
    if main == 0:
        return "  (no samples of the main thread)"
    busy = main - idle
    rows = [
        f"  main thread (event loop): {main} samples; waiting in epoll {100 * idle / main:.1f}%,"
        f" busy {100 * busy / main:.1f}%",
        "  busy time by Python line (leaf Python frame; % of all main-thread samples):",
    ]
    rows += [f"    {100 * n / main:5.1f}%  {name}" for name, n in py_leaf.most_common(top)]
    if native:
        rows.append("  busy time by native leaf (C function or kernel entry):")
        rows += [f"    {100 * n / main:5.1f}%  {name}" for name, n in native_leaf.most_common(top)]
    rows.append("  busy time by Python function, including callees (below 99%):")
    shown = [(name, n) for name, n in inclusive.most_common() if n < 0.99 * busy][:top]
    rows += [f"    {100 * n / main:5.1f}%  {name}" for name, n in shown]
    rows.append("  other threads (leaf frame, % of main-thread samples; mostly blocked waits):")
    rows += [f"    {100 * n / main:5.1f}%  {name}" for name, n in others.most_common(5)]
    return "\n".join(rows)


# -- helpers ----------------------------------------------------------------------------------
def log_times(path: Path, needle: str) -> list[float]:
    """Wall-clock times (epoch s) of node.log lines containing ``needle``."""
    times = []
    with contextlib.suppress(OSError), path.open() as f:
        for line in f:
            if needle in line:
                with contextlib.suppress(ValueError):
                    stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                    times.append(stamp.timestamp())
    return times


def log_lines(path: Path, *needles: str) -> list[str]:
    """node.log lines that contain every one of ``needles``."""
    with contextlib.suppress(OSError), path.open() as f:
        return [line.rstrip() for line in f if all(n in line for n in needles)]
    return []


def wait_until(predicate: Any, timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(every)


def dir_names(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def fmt(value: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def bad_push(
    address: tuple[str, int], payload: Path, size: int, timeout: float
) -> tuple[str, float, float]:
    """Stream an unsolicited FILE_DATA of ``size`` bytes whose id is random; wait until the
    receiver closes. Returns (the fake id, seconds to send everything, seconds until closed)."""
    fake_id = secrets.token_hex(32)
    head = {
        "type": "FILE_DATA",
        "file_name": "not-what-it-says.bin",
        "file_size": size / MIB,
        "file_id": fake_id,
        "file_owner": "bench-mallory",
        "file_timestamp": int(time.time()),
    }
    body = json.dumps(head, separators=(",", ":")).encode()
    start = time.monotonic()
    with socket.create_connection(address, timeout=timeout) as sock, payload.open("rb") as f:
        sock.sendall(body[:-1] + b',"data":"')
        left = size
        while left > 0:
            block = f.read(min(MIB, left))
            if not block:
                f.seek(0)
                continue
            sock.sendall(binascii.b2a_hex(block))
            left -= len(block)
        sock.sendall(b'"}')
        sent = time.monotonic() - start
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):  # the receiver closes once it has handled the message
            pass
    return fake_id, sent, time.monotonic() - start


# -- the benchmark ----------------------------------------------------------------------------
def cpu_split(pid: int) -> tuple[float, float, int] | None:
    """(user, system) CPU seconds of a process, and its minor page faults."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK, int(fields[7])


def system_busy() -> float:
    """CPU seconds all processes of the machine have used (every state but idle and iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


@dataclass
class TransferRun:
    seconds: float
    size: int
    identical: bool
    served_at: float | None
    got_at: float | None
    rss_sender: float | None
    rss_receiver: float | None
    cpu_sender: tuple[float, float, int] | None
    cpu_receiver: tuple[float, float, int] | None
    others: float
    classic: bool

    @property
    def mb_s(self) -> float:
        return self.size / 1e6 / self.seconds


@contextlib.contextmanager
def scratch_dir(parent: str | None, keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="treedrive-bench-", dir=parent))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.size = args.size * MIB
        self.timers = {
            "gossip-interval": str(args.gossip_interval),
            "peer-timeout": "120",
            "cleanup-interval": "5",
            "join-delay": "0.5",
            "log-level": "INFO",
        }
        self.sampler = RssSampler(args.sample_every)
        self.nodes: list[NodeProc] = []
        self.profilers: list[Profiler] = []
        self.payload = tmp / "payload.bin"
        self.want = ""
        self.file_id = ""

    def node(self, name: str, extra: list[str]) -> NodeProc:
        if self.args.transport == "classic" and has_option("--no-extension"):
            extra = [*extra, "--no-extension"]
        node = NodeProc(name, self.tmp / name, free_port(), extra, self.timers)
        self.nodes.append(node)
        node.start()
        self.sampler.watch(name, node.pid)
        return node

    def stop_node(self, node: NodeProc) -> None:
        node.stop()
        self.nodes.remove(node)
        shutil.rmtree(node.data_dir, ignore_errors=True)

    def close(self) -> None:
        for p in self.profilers:
            p.stop()
        self.sampler.stop()
        for node in reversed(self.nodes):
            node.stop()

    def prepare(self) -> NodeProc:
        t = time.monotonic()
        self.want = make_payload(self.payload, self.size)
        print(f"payload: {self.size} bytes written in {time.monotonic() - t:.1f} s ({self.tmp})")
        sender = self.node("sender", ["--download-limit", "0"])
        self.sampler.start()
        # Through the sender's own code path, before it knows any peer (a push also sends the
        # file to one tracked peer, which would spoil the measurement).
        self.sampler.set_phase("push")
        sent, out = sender.command(f"push {self.payload}", timeout=600)
        text = " ".join(line for _, line in out)
        m = re.search(r"pushed .* as ([0-9a-f]{64})", text)
        if m is None:
            raise RuntimeError(f"push failed: {text!r}")
        self.file_id = m.group(1)
        print(f"pushed into the sender in {out[0][0] - sent:.2f} s as {self.file_id}")
        self.sampler.set_phase("idle")
        return sender

    def receiver(self, n: int, sender: NodeProc) -> NodeProc:
        receiver = self.node(
            f"receiver{n}", ["--bootstrap", sender.address, "--download-limit", "0"]
        )

        def knows_file() -> bool:
            _, lines = receiver.command("list remote")
            return any(self.file_id in line for _, line in lines)

        wait_until(knows_file, 30, "the receiver learning of the file")
        time.sleep(0.3)
        return receiver

    def transfer(self, n: int, sender: NodeProc, receiver: NodeProc) -> TransferRun:
        if n == 1:
            for node in (sender, receiver):
                if self.args.py_spy:
                    raw = Path(self.args.py_spy) / f"{node.name}.txt"
                    raw.parent.mkdir(parents=True, exist_ok=True)
                    rate = self.args.py_spy_rate
                    self.profilers.append(Profiler("py-spy", node.pid, raw, rate, self.args.native))
                if self.args.perf:
                    data = Path(self.args.perf) / f"{node.name}.perf.data"
                    data.parent.mkdir(parents=True, exist_ok=True)
                    self.profilers.append(Profiler("perf", node.pid, data, 499))
        phase = f"transfer{n}"
        cpu0 = [cpu_split(sender.pid), cpu_split(receiver.pid)]
        busy0 = system_busy()
        self.sampler.set_phase(phase)
        wall0 = time.time()
        sent = receiver.send_line(f"get {self.file_id}")
        receiver.send_line(END_MARK)
        out = receiver.read_until_end(max(600.0, self.args.size * 2.0))
        self.sampler.set_phase(f"after{n}")
        busy1 = system_busy()
        cpu1 = [cpu_split(sender.pid), cpu_split(receiver.pid)]
        for p in self.profilers:
            p.stop()
        if not out or not out[0][1].startswith("got "):
            raise RuntimeError(f"get failed: {out!r}")
        seconds = out[0][0] - sent
        served = [
            t for t in log_times(sender.log_path, f"served {self.file_id[:12]}") if t >= wall0 - 1
        ]
        got = log_times(receiver.log_path, f"got {self.file_id[:12]}")
        blob = receiver.data_dir / "blobs" / self.file_id
        identical = (
            blob.is_file() and blob.stat().st_size == self.size and sha256_of(blob) == self.want
        )
        cpu = [
            None if a is None or b is None else (b[0] - a[0], b[1] - a[1], b[2] - a[2])
            for a, b in zip(cpu0, cpu1, strict=True)
        ]
        ours = sum(c[0] + c[1] for c in cpu if c is not None)
        return TransferRun(
            seconds=seconds,
            size=self.size,
            identical=identical,
            served_at=served[-1] - wall0 if served else None,
            got_at=got[-1] - wall0 if got else None,
            rss_sender=self.sampler.peak_mib(sender.name, phase),
            rss_receiver=self.sampler.peak_mib(receiver.name, phase),
            cpu_sender=cpu[0],
            cpu_receiver=cpu[1],
            others=busy1 - busy0 - ours,
            classic=self.args.transport == "classic",
        )

    def bad_push(self, receiver: NodeProc) -> Result:
        bad_size = self.args.bad_size * MIB
        blobs_before = dir_names(receiver.data_dir / "blobs")
        cpu0 = cpu_seconds(receiver.pid)
        self.sampler.set_phase("bad-push")
        fake_id, send_s, closed_s = bad_push(
            ("127.0.0.1", receiver.port), self.payload, bad_size, timeout=120
        )
        refused = wait_until(
            lambda: log_lines(receiver.log_path, f"file {fake_id[:12]} from", "refused"),
            30,
            "the refusal in node.log",
        )
        self.sampler.set_phase("end")
        cpu1 = cpu_seconds(receiver.pid)
        blobs_after = dir_names(receiver.data_dir / "blobs")
        partial_after = dir_names(receiver.data_dir / "partial")
        _, listed = receiver.command("list")
        in_catalogue = any(fake_id in line for _, line in listed)
        clean = blobs_after == blobs_before and not partial_after and not in_catalogue
        res = Result()
        res.ok = bool(refused) and clean
        res.row(
            "FILE_DATA pushed (bytes not matching file_id)", f"{bad_size} B ({bad_size // MIB} MiB)"
        )
        res.row("all sent / receiver closed the connection", f"{send_s:.2f} s / {closed_s:.2f} s")
        res.row("receiver ingest rate (file bytes)", f"{bad_size / 1e6 / closed_s:.1f} MB/s")
        res.row("refused (node.log)", "yes" if refused else "NO")
        res.row("blobs/ unchanged, partial/ empty, not listed", "yes" if clean else "NO")
        if not clean:
            res.notes.append(f"blobs/ {blobs_after}, partial/ {partial_after}")
        res.row(
            "receiver peak RSS during the push",
            fmt(self.sampler.peak_mib(receiver.name, "bad-push"), ".1f", " MiB"),
        )
        res.row("receiver CPU s during the push", fmt(delta(cpu0, cpu1), ".2f", " s"))
        return res


@dataclass
class Result:
    rows: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ok: bool = True

    def row(self, label: str, value: str) -> None:
        self.rows.append((label, value))


def print_result(title: str, res: Result) -> None:
    width = max(len(label) for label, _ in res.rows)
    print(f"\n{title}\n{'-' * len(title)}")
    for label, value in res.rows:
        print(f"  {label.ljust(width)}  {value}")
    for note in res.notes:
        print(f"  note: {note}")


def print_runs(runs: list[TransferRun]) -> None:
    how = "GET_FILE -> hex FILE_DATA" if runs[0].classic else "whatever the nodes negotiate"
    title = f"scenario 1: receiver 'get' -> {how}, two node processes"
    print(f"\n{title}\n{'-' * len(title)}")
    head = (
        "run", "path", "wall s", "MB/s", "MiB/s", "RSS snd", "RSS rcv",
        "CPU snd usr+sys", "CPU rcv usr+sys", "faults snd/rcv", "others", "sha256",
    )  # fmt: skip
    rows = [head]
    for i, r in enumerate(runs, 1):
        rows.append(
            (
                str(i),
                "hex" if r.served_at is not None else "other",
                f"{r.seconds:.2f}",
                f"{r.mb_s:.1f}",
                f"{r.size / MIB / r.seconds:.1f}",
                fmt(r.rss_sender, ".1f"),
                fmt(r.rss_receiver, ".1f"),
                _cpu(r.cpu_sender),
                _cpu(r.cpu_receiver),
                f"{_faults(r.cpu_sender)}/{_faults(r.cpu_receiver)}",
                f"{r.others:.2f}",
                "ok" if r.identical else "DIFFERENT",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        print("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    print(
        "  (path: hex = the sender logged 'served' (classic GET_FILE -> FILE_DATA), other = it\n"
        "   did not (the raw-range extension); wall: from writing 'get' to the receiver\n"
        "   printing 'got'; MB = 10^6 B; RSS: peak VmRSS in MiB, sampled during the transfer;\n"
        "   CPU: seconds used during the transfer; faults: minor page faults meanwhile, in\n"
        "   thousands; others: CPU seconds that other processes of the machine used meanwhile)"
    )
    for i, r in enumerate(runs, 1):
        if r.served_at is None and r.classic:
            print(f"  WARNING: run {i}: the sender did not log 'served': not a hex FILE_DATA?")
        print(
            f"  run {i}: sender logged 'served' at {fmt(r.served_at, '.2f', ' s')}, "
            f"receiver logged 'got' at {fmt(r.got_at, '.2f', ' s')} (after 'get')"
        )


def run(args: argparse.Namespace) -> int:
    print(
        f"TreeDrive classic hex transfer benchmark: {args.size} MiB x {args.repeat}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.machine()}, "
        f"load average {loadavg()}"
    )
    with scratch_dir(args.tmp_dir, args.keep) as tmp:
        bench = Bench(args, tmp)
        try:
            sender = bench.prepare()
            runs: list[TransferRun] = []
            receiver: NodeProc | None = None
            for n in range(1, args.repeat + 1):
                if receiver is not None:
                    bench.stop_node(receiver)
                receiver = bench.receiver(n, sender)
                runs.append(bench.transfer(n, sender, receiver))
            assert receiver is not None
            bad = bench.bad_push(receiver)
            hwm = {node.name: _mib(status_kib(node.pid, "VmHWM")) for node in bench.nodes}
            cpu_total = {node.name: cpu_seconds(node.pid) for node in bench.nodes}
        finally:
            bench.close()

    print_runs(runs)
    print_result("scenario 2: unsolicited FILE_DATA whose bytes do not match its id", bad)
    life = Result()
    for name in hwm:
        life.row(
            f"{name}: VmHWM / CPU s since start",
            f"{fmt(hwm[name], '.1f', ' MiB')} / {fmt(cpu_total[name], '.2f', ' s')}",
        )
    life.row(
        "sender: peak VmRSS while 'push' stored the payload",
        fmt(bench.sampler.peak_mib("sender", "push"), ".1f", " MiB"),
    )
    print_result("whole life of each node (last receiver)", life)
    rates = sorted(r.mb_s for r in runs)
    peaks = [v for r in runs for v in (r.rss_sender, r.rss_receiver) if v is not None]
    peaks += [v for v in hwm.values() if v is not None]
    worst = max(peaks)
    best, median = rates[-1], statistics.median(rates)
    print(
        f"\nload average at the end {loadavg()}; {bench.sampler.samples} RSS samples every "
        f"{args.sample_every * 1000:.0f} ms"
    )
    print(
        f"targets: peak RSS < {TARGET_RSS_MIB} MiB per node: "
        f"{'met' if worst < TARGET_RSS_MIB else 'MISSED'} (worst {worst:.1f} MiB); "
        f">= {TARGET_MB_S} MB/s: {'met' if median >= TARGET_MB_S else 'MISSED'} "
        f"(median {median:.1f}, best {best:.1f} MB/s)"
    )
    for p in bench.profilers:
        print(f"\n{p.kind} profile of {p.out.name.split('.')[0]} during run 1 ({p.out}):")
        print(p.summary(args.top))
    if not all(r.identical for r in runs):
        print("SANITY: a received blob differs from the payload", file=sys.stderr)
        return 2
    return 0 if bad.ok else 2


def _faults(c: tuple[float, float, int] | None) -> str:
    return "-" if c is None else f"{c[2] / 1000:.0f}k"


def _cpu(c: tuple[float, float, int] | None) -> str:
    return "-" if c is None else f"{c[0] + c[1]:.2f} = {c[0]:.2f}+{c[1]:.2f}"


def _mib(kib: int | None) -> float | None:
    return None if kib is None else kib / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=1024, help="payload size in MiB (default 1024)")
    p.add_argument(
        "--bad-size", type=int, default=256, help="size of the mismatched push in MiB (256)"
    )
    p.add_argument("--repeat", type=int, default=1, help="transfers, each to a fresh receiver")
    p.add_argument(
        "--transport",
        choices=["classic", "auto"],
        default="classic",
        help="classic: both nodes run with --no-extension, so the file moves as hex\n"
        "FILE_DATA (default); auto: whatever the two nodes negotiate (raw-range if built in)",
    )
    p.add_argument("--gossip-interval", type=float, default=1.0, help="node gossip timer (s)")
    p.add_argument("--sample-every", type=float, default=0.05, help="RSS sampling period (s)")
    p.add_argument("--tmp-dir", default=None, help="parent of the scratch dir (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the scratch dir (logs, blobs)")
    p.add_argument(
        "--py-spy",
        metavar="DIR",
        default=None,
        help="profile both nodes during the transfer with py-spy; raw stacks go to DIR",
    )
    p.add_argument(
        "--perf",
        metavar="DIR",
        default=None,
        help="profile both nodes during the transfer with perf record -g (native + kernel)",
    )
    p.add_argument("--py-spy-rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    p.add_argument("--top", type=int, default=20, help="rows per profile summary")
    args = p.parse_args(argv)
    if args.size < 1 or args.bad_size < 1 or args.repeat < 1:
        p.error("--size, --bad-size and --repeat must be at least 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
