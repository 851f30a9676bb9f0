"""Benchmark: crashes in the middle of a 1 GiB extension transfer between real node processes.

(a) receiver crash. ``h1`` takes the payload alone (``POST /api/files``), its uploads slowed with
    ``--max-upload-rate`` so the half point can be hit; ``r`` joins and fetches it
    (``POST /api/files/{id}/fetch``). When ``r`` has about ``--kill-at`` of the file, ``r`` is
    SIGKILLed, ``h1``'s limit is lifted (``PUT /api/limits``; ``--keep-limit`` keeps it), and ``r``
    is started again on the same data dir and port. Nobody asks it to fetch: it resumes by itself
    after its join. Reported: the bytes that were on ``r``'s disk at the kill (allocated blocks of
    ``partial/<id>.range``), the chunks its store had recorded (synced), the bytes ``h1`` sent
    after the restart (its ``transfers`` rows, direction 'out', ``bytes_done`` summed) and the
    bytes ``r`` says came over the network in the resumed run (node.log ``got … over the network
    in this run``), against what was still missing and the file size; the times; the blob's
    sha256.

(b) sender crash with a second holder. ``h1`` takes the payload alone, ``h2`` joins and fetches
    it (setup), then the uploads are slowed (``PUT /api/limits``) and ``r`` joins and fetches.
    When ``r`` has about ``--kill-at`` of the file on disk, ``h1`` is SIGKILLed and ``h2``'s limit
    is lifted. The fetch call must still succeed. Variants: ``multi`` (``r`` knows both holders
    from the start and takes chunks from both at once) and ``single`` (``h2`` is stopped before
    ``r`` joins and started again once ``r``'s download is under way: ``r`` learns of it by
    gossip, but a running download keeps the holder list it started with, so only ``h1`` sends
    until it is killed; then ``r`` stalls, refreshes its holders from the catalogue and finishes
    from ``h2``). Reported: the time from the kill to the first failure ``r`` logs and to the
    fetch's answer, the bytes each holder sent (their 'out' rows; the killed one's unfinished
    request is not in its store), the bytes ``r`` wrote in all (``/proc/<pid>/io`` wchar), and
    the blob's sha256.

Only 127.0.0.1 is used; the processes this script starts are ended by their PID; the scratch dir
is removed at the end (``--keep`` keeps it).

    python bench/resume.py                    # 1 GiB, (a) and (b) both variants
    python bench/resume.py --size 256 --scenarios a
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from transfer import (
    MIB,
    TIMERS,
    ApiError,
    Node,
    code_version,
    cpu_seconds,
    fmt,
    loadavg,
    log_lines,
    make_payload,
    scratch_dir,
    sha256_of,
    status_kib,
    system_busy,
    wait_for_quiet,
    wait_until,
)

TARGET_EXCESS = 0.10  # re-fetched beyond what was missing, as a share of the file


# -- helpers ------------------------------------------------------------------------------------
def db_rows(node: Node, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows from a node's SQLite file (read-only; the node may be running or dead)."""
    path = node.data_dir / "treedrive.db"
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    except sqlite3.OperationalError:
        con = sqlite3.connect(path, timeout=10)
    try:
        return list(con.execute(sql, params))
    finally:
        con.close()


def sent_out(
    node: Node, file_id: str, since: float = 0.0, until: float = float("inf")
) -> tuple[int, int]:
    """(bytes, uploads) a holder sent for ``file_id`` in uploads started in [since, until)
    (epoch s), from its ``transfers`` table, direction 'out'. A holder counts the ranges of one
    download run as one upload, and records its bytes after each range (and when it ends, a
    second after its last range: see ``settled``)."""
    rows = db_rows(
        node,
        "SELECT bytes_done FROM transfers WHERE direction = 'out' AND file_id = ? "
        "AND started_at >= ? AND started_at < ?",
        (file_id, since, until),
    )
    return sum(r[0] or 0 for r in rows), len(rows)


def settled(node: Node, file_id: str, timeout: float = 10.0) -> None:
    """Wait until a holder has no upload of ``file_id`` still open."""

    def none_running() -> bool:
        rows = db_rows(
            node,
            "SELECT COUNT(*) FROM transfers WHERE direction = 'out' AND file_id = ? "
            "AND state = 'running'",
            (file_id,),
        )
        return bool(rows) and rows[0][0] == 0

    wait_until(none_running, timeout, f"{node.name}'s uploads ending")


def recorded_bytes(node: Node, file_id: str) -> int | None:
    """Bytes a resumable download has recorded as on disk (whole chunks, and the first bytes
    of chunks still arriving), or None."""
    rows = db_rows(
        node,
        "SELECT size, chunk_size, done, partial FROM downloads WHERE file_id = ?",
        (file_id,),
    )
    if not rows:
        return None
    size, chunk, done, partial = int(rows[0][0]), int(rows[0][1]), bytes(rows[0][2]), rows[0][3]
    whole = [i for i in range(len(done) * 8) if done[i // 8] >> (i % 8) & 1]
    in_chunks = sum(min(chunk, size - i * chunk) for i in whole)
    return in_chunks + sum(int(n) for n in json.loads(partial or "{}").values())


def allocated(path: Path) -> int:
    """Bytes of a sparse file that hold data (allocated blocks)."""
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def io_wchar(pid: int) -> int | None:
    """Bytes a process wrote with write-like calls (pwrite included): /proc/<pid>/io."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def progress_in(node: Node, file_id: str) -> int:
    """Bytes of ``file_id`` the node's active download has (the API's view), or -1."""
    try:
        active = node.transfers()["active"]
    except (ApiError, OSError):
        return -1
    return max(
        (t["bytes_done"] for t in active if t["file_id"] == file_id and t["direction"] == "in"),
        default=-1,
    )


def sending(node: Node, file_id: str) -> bool:
    """The node's API lists an upload of ``file_id`` in progress."""
    try:
        active = node.transfers()["active"]
    except (ApiError, OSError):
        return False
    return any(t["file_id"] == file_id and t["direction"] == "out" for t in active)


def log_time(line: str) -> float | None:
    with contextlib.suppress(ValueError):
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def got_line(node: Node, file_id: str) -> tuple[int | None, str]:
    """(bytes over the network in the last run, sources) from the node's last 'got' line."""
    lines = log_lines(node.log_path, "fetched ", f"{file_id[:12]})")
    if not lines:
        return None, "?"
    m = re.search(r" from (.*) in [\d.]+ s \(\d+ bytes; (\d+) over the network", lines[-1])
    return (int(m.group(2)), m.group(1)) if m else (None, lines[-1][-60:])


class Fetcher(threading.Thread):
    """``POST /api/files/{id}/fetch`` in a thread: its answer (or error) and when it came."""

    def __init__(self, node: Node, file_id: str, timeout: float) -> None:
        super().__init__(name=f"fetch-{node.name}", daemon=True)
        self.node, self.file_id, self.timeout = node, file_id, timeout
        self.answer: Any = None
        self.error: BaseException | None = None
        self.started = self.ended = 0.0

    def run(self) -> None:
        self.started = time.monotonic()
        try:
            self.answer = self.node.fetch(self.file_id, self.timeout)
        except BaseException as exc:  # reported, not raised, in this thread
            self.error = exc
        self.ended = time.monotonic()


@dataclass
class Report:
    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    def row(self, label: str, value: str) -> None:
        self.rows.append((label, value))

    def show(self) -> None:
        print(f"\n{self.title}\n{'-' * len(self.title)}")
        width = max(len(label) for label, _ in self.rows)
        for label, value in self.rows:
            print(f"  {label.ljust(width)}  {value}")
        for check in self.checks:
            print(f"  {check}")


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / MIB:.1f} MiB"


def pct(n: float | None, of: int) -> str:
    return "-" if n is None else f"{100 * n / of:.1f}%"


# -- the scenarios ------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.size = args.size * MIB
        self.timeout = max(600.0, args.size * 2.0)
        self.nodes: list[Node] = []
        self.payload = tmp / "payload.bin"
        self.want = ""

    def close(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        self.nodes = []

    def node(self, root: Path, name: str, *extra: str) -> Node:
        node = Node(name, root / name, ["--download-limit", "0", *self.args.node_arg, *extra])
        self.nodes.append(node)
        return node.start()

    def quiet(self, nodes: list[Node]) -> None:
        if self.args.wait_quiet and not wait_for_quiet(
            [n.pid for n in nodes], self.args.wait_quiet, 0.15
        ):
            print("  (the machine did not get quiet; measuring anyway)", flush=True)

    def rate(self) -> int:
        """Bytes per second that put the half point about ``--slow-for`` s into the transfer."""
        return int(self.size / self.args.slow_for)

    def wait_for_share(self, r: Node, file_id: str, fetcher: Fetcher) -> int:
        """Watch the receiver's partial file (its allocated blocks: the bytes written so far)
        until it holds ``--kill-at`` of the file; returns that many bytes."""
        target = self.args.kill_at * self.size
        deadline = time.monotonic() + self.timeout
        path = r.data_dir / "partial" / f"{file_id}.range"
        while True:
            done = allocated(path)
            if done >= target:
                return done
            if not fetcher.is_alive():
                raise RuntimeError(f"the fetch ended before the kill point: {fetcher.error}")
            if time.monotonic() > deadline:
                raise TimeoutError("the receiver never reached the kill point")
            time.sleep(0.01)

    def receiver_crash(self) -> Report:
        root = self.tmp / "a"
        rep = Report(
            f"(a) receiver SIGKILLed at ~{self.args.kill_at:.0%}, restarted on its data dir"
        )
        kib = self.rate() / 1024
        h1 = self.node(root, "h1", "--max-upload-rate", f"{kib:.0f}")
        file_id = h1.push(self.payload, self.timeout)
        r = self.node(root, "r", "--bootstrap", h1.address)
        wait_until(lambda: r.knows(file_id, {"h1"}, True), 30, "r learning the file")
        self.quiet([h1, r])
        fetcher = Fetcher(r, file_id, self.timeout)
        fetcher.start()
        self.wait_for_share(r, file_id, fetcher)
        seen = progress_in(r, file_id)
        t_kill = time.monotonic()
        r.kill()
        range_path = r.data_dir / "partial" / f"{file_id}.range"
        on_disk = allocated(range_path)
        rec_bytes = recorded_bytes(r, file_id)
        fetcher.join(30)
        if not self.args.keep_limit:
            h1.request("PUT", "/api/limits", {"upload": None})
        time.sleep(0.5)  # h1 notices the broken connections
        t_restart_wall = time.time()
        t_restart = time.monotonic()
        busy0 = system_busy()
        r.start()
        r_pid = r.pid
        wait_until(
            lambda: (r.file(file_id) or {}).get("has_copy"), self.timeout, "r finishing by itself"
        )
        t_done = time.monotonic()
        wrote = io_wchar(r_pid)
        busy = system_busy() - busy0
        r_cpu = cpu_seconds(r_pid)
        resumed = log_lines(r.log_path, f"resuming {file_id[:12]}")
        m = re.search(r": (\d+) of (\d+) bytes already here", resumed[-1]) if resumed else None
        kept = int(m.group(1)) if m else None
        t_resuming = log_time(resumed[-1]) if resumed else None
        got = log_lines(r.log_path, "fetched ", f"{file_id[:12]})")
        t_got = log_time(got[-1]) if got else None
        net_after, sources = got_line(r, file_id)
        settled(h1, file_id)  # every upload recorded whole
        sent_before, _ = sent_out(h1, file_id, until=t_restart_wall)
        sent_after, requests = sent_out(h1, file_id, t_restart_wall)
        ok = sha256_of(r.blob(file_id)) == self.want
        missing = self.size - on_disk
        excess = sent_after - missing
        rep.row("file size", f"{self.size} B ({mib(self.size)})")
        rep.row("h1 upload limit before the kill", f"{kib:.0f} KiB/s")
        rep.row(
            "r's progress in its API just before the kill", f"{mib(seen)} ({pct(seen, self.size)})"
        )
        rep.row("on r's disk at the kill (partial/<id>.range blocks)", mib(on_disk))
        rep.row("recorded in r's store (synced) at the kill", mib(rec_bytes))
        rep.row("r found at restart ('resuming … already here')", mib(kept))
        rep.row("still missing at the kill (size - on disk)", mib(missing))
        rep.row("h1 sent before the restart (all 'out' rows)", mib(sent_before))
        rep.row(
            "h1 sent after the restart ('out' rows, bytes_done)",
            f"{mib(sent_after)} in {requests} upload(s)",
        )
        rep.row("r over the network after the restart (its 'got' line)", mib(net_after))
        rep.row("r wrote since the restart (/proc/<pid>/io wchar)", mib(wrote))
        rep.row(
            "re-fetched beyond what was missing",
            f"{mib(excess)} = {pct(excess, self.size)} of the file "
            f"(= {pct(excess, missing)} on top of the missing part)",
        )
        rep.row(
            "restart -> 'resuming' logged -> committed (fetch done)",
            f"{fmt(None if t_resuming is None else t_resuming - t_restart_wall, '.2f', ' s')} -> "
            f"{fmt(None if t_got is None else t_got - t_restart_wall, '.2f', ' s')} "
            f"(seen by the API at {t_done - t_restart:.2f} s)",
        )
        if t_resuming is not None and t_got is not None and kept is not None:
            rate = (self.size - kept) / 1e6 / max(1e-3, t_got - t_resuming)
            rep.row("resumed run's rate ('resuming' -> 'got', bytes not kept)", f"{rate:.0f} MB/s")
        rep.row(
            "CPU s from the restart to the end: r / the whole machine",
            f"{fmt(r_cpu, '.2f')} / {busy:.2f} (2 CPUs x {t_done - t_restart:.2f} s available)",
        )
        rep.row("kill -> restart", f"{t_restart - t_kill:.2f} s")
        rep.row("sources of the resumed run", sources)
        rep.row("r's fetch call (killed with r)", f"{type(fetcher.error).__name__}")
        rep.row("r's VmHWM after the resume", mib((status_kib(r_pid, "VmHWM") or 0) * 1024))
        rep.row("final blob sha256", "matches the payload" if ok else "DIFFERENT")
        verdict = "met" if ok and excess <= TARGET_EXCESS * self.size else "MISSED"
        rep.checks.append(
            f"target: re-fetch at most {TARGET_EXCESS:.0%} of the file beyond what was missing, "
            f"blob verifies: {verdict} ({pct(excess, self.size)})"
        )
        self.close()
        return rep

    def sender_crash(self, variant: str) -> Report:
        root = self.tmp / f"b-{variant}"
        rep = Report(f"(b, {variant}) sender h1 SIGKILLed at ~{self.args.kill_at:.0%}, h2 up")
        h1 = self.node(root, "h1")
        file_id = h1.push(self.payload, self.timeout)
        h2 = self.node(root, "h2", "--bootstrap", h1.address)
        wait_until(lambda: h2.knows(file_id, {"h1"}, True), 30, "h2 learning the file")
        h2.fetch(file_id, self.timeout)
        single = variant == "single"
        if single:
            h2.stop()  # r must not know it yet: it comes back once r's download is under way
        rate = self.rate() if single else self.rate() // 2
        for h in (h1,) if single else (h1, h2):
            h.request("PUT", "/api/limits", {"upload": rate})
        r = self.node(root, "r", "--bootstrap", h1.address)
        known = {"h1"} if single else {"h1", "h2"}
        wait_until(lambda: r.knows(file_id, known, True), 30, f"r learning {sorted(known)}")
        holders_at_start = sorted((r.file(file_id) or {}).get("holders", []))
        self.quiet([h1, r] if single else [h1, h2, r])
        t_wall = time.time()
        wrote0 = io_wchar(r.pid)
        fetcher = Fetcher(r, file_id, self.timeout)
        fetcher.start()
        h2_back = None
        if single:
            h2.start()
            wait_until(lambda: r.knows(file_id, {"h1", "h2"}, True), 30, "r learning of h2 again")
            h2_back = allocated(r.data_dir / "partial" / f"{file_id}.range")
        seen = self.wait_for_share(r, file_id, fetcher)
        # Who is sending: the API's active uploads, else the 'out' rows since the fetch began.
        senders = [h for h in (h1, h2) if sending(h, file_id)]
        if not senders:
            senders = [h for h in (h1, h2) if sent_out(h, file_id, t_wall)[1] > 0]
        h2_before_kill = sent_out(h2, file_id, t_wall)
        victim, survivor = h1, h2
        t_kill = time.monotonic()
        t_kill_wall = time.time()
        busy0 = system_busy()
        own0 = (cpu_seconds(r.pid) or 0.0) + (cpu_seconds(survivor.pid) or 0.0)
        victim.kill()
        if not self.args.keep_limit:
            survivor.request("PUT", "/api/limits", {"upload": None})
        fetcher.join(self.timeout)
        ok_call = fetcher.error is None
        t_end = fetcher.ended
        busy = system_busy() - busy0
        own = (cpu_seconds(r.pid) or 0.0) + (cpu_seconds(survivor.pid) or 0.0) - own0
        wrote1 = io_wchar(r.pid)
        wrote = None if wrote0 is None or wrote1 is None else wrote1 - wrote0
        ok = ok_call and sha256_of(r.blob(file_id)) == self.want
        sent_victim, req_victim = sent_out(victim, file_id, t_wall)
        settled(survivor, file_id)
        sent_surv, req_surv = sent_out(survivor, file_id, t_wall)
        net, sources = got_line(r, file_id)
        failed = log_lines(r.log_path, "failed", "retrying it elsewhere")
        first_fail = min(
            (t for line in failed if (t := log_time(line)) is not None and t >= t_kill_wall - 1),
            default=None,
        )
        rep.row("file size", f"{self.size} B ({mib(self.size)})")
        rep.row(
            "holders' upload limit until the kill",
            f"{rate / 1024:.0f} KiB/s {'(h1 only)' if single else 'each'}",
        )
        rep.row("holders r knew when its fetch began", ", ".join(holders_at_start))
        if single:
            rep.row(
                "h2 (stopped before r joined) back and known to r at",
                f"{mib(h2_back)} on r's disk (r's download keeps its holder list until stalled)",
            )
        rep.row("sending when the kill came", ", ".join(h.name for h in senders) or "none seen")
        rep.row(
            "h2 sent before the kill ('out' rows)",
            f"{mib(h2_before_kill[0])} in {h2_before_kill[1]} upload(s)",
        )
        rep.row("killed / survivor", f"{victim.name} / {survivor.name}")
        rep.row(
            "on r's disk at the kill (partial file blocks)", f"{mib(seen)} ({pct(seen, self.size)})"
        )
        rep.row("fetch call", "answered OK" if ok_call else f"FAILED: {fetcher.error}")
        rep.row("fetch time in all", f"{t_end - fetcher.started:.2f} s")
        rep.row("kill -> fetch answered (committed)", f"{t_end - t_kill:.2f} s")
        rep.row(
            "CPU s from the kill on: r + h2 / the whole machine",
            f"{own:.2f} / {busy:.2f} (2 CPUs x {t_end - t_kill:.2f} s available)",
        )
        rep.row(
            f"{victim.name} sent (killed: its 'out' rows as of its last finished range)",
            f"{mib(sent_victim)} in {req_victim} upload(s)",
        )
        rep.row(f"{survivor.name} sent ('out' rows)", f"{mib(sent_surv)} in {req_surv} upload(s)")
        rep.row("r over the network (its 'got' line)", mib(net))
        rep.row("r wrote during the fetch (/proc/<pid>/io wchar)", mib(wrote))
        if wrote is not None:
            rep.row(
                "written beyond the file size (re-fetched + store, log)", mib(wrote - self.size)
            )
        rep.row("chunk failures r logged", str(len(failed)))
        rep.row(
            "kill -> r's first 'failed; retrying it elsewhere'",
            fmt(None if first_fail is None else first_fail - t_kill_wall, ".3f", " s"),
        )
        rep.row("sources (r's 'got' line)", sources)
        rep.row("final blob sha256", "matches the payload" if ok else "DIFFERENT")
        rep.checks.append(f"completes from the second holder and verifies: {'yes' if ok else 'NO'}")
        self.close()
        return rep


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=1024, help="payload size in MiB (default 1024)")
    p.add_argument(
        "--kill-at",
        type=float,
        default=0.53,
        help="share of the file on the receiver's disk at the kill (default 0.53: about half,\n"
        "and not on a chunk boundary, so a chunk is cut in the middle)",
    )
    p.add_argument(
        "--slow-for",
        type=float,
        default=10.0,
        help="holders' upload limit: the whole file in about this many seconds (default 10)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each scenario's fetch, wait up to S s for the machine to be idle",
    )
    p.add_argument("--keep-limit", action="store_true", help="keep the limits after the kill")
    p.add_argument(
        "--scenarios", default="a,b", help="a (receiver crash), b (sender crash): a,b default"
    )
    p.add_argument("--variants", default="single,multi", help="for b: single,multi (default)")
    p.add_argument(
        "--node-arg", action="append", default=[], help="an extra argument for every node"
    )
    p.add_argument("--tmp-dir", default=None, help="parent of the scratch dir (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the scratch dir")
    args = p.parse_args(argv)
    if not 0 < args.kill_at < 1:
        p.error("--kill-at is a share: 0 < x < 1")
    print(
        f"TreeDrive crash/resume benchmark: {args.size} MiB, kill at {args.kill_at:.0%}; "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, load average {loadavg()}; "
        f"node timers {TIMERS}; treedrive at {code_version()}",
        flush=True,
    )
    reports: list[Report] = []
    with scratch_dir(args.tmp_dir, args.keep) as tmp:
        bench = Bench(args, tmp)
        try:
            bench.want = make_payload(bench.payload, bench.size)
            scenarios = args.scenarios.split(",")
            if "a" in scenarios:
                reports.append(bench.receiver_crash())
                reports[-1].show()
            if "b" in scenarios:
                for variant in args.variants.split(","):
                    reports.append(bench.sender_crash(variant))
                    reports[-1].show()
        finally:
            bench.close()
    print(f"\nload average at the end {loadavg()}")
    return 0 if all("DIFFERENT" not in v for rep in reports for _, v in rep.rows) else 2


if __name__ == "__main__":
    sys.exit(main())
