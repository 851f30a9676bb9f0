"""Benchmark: the dashboard and the JSON API over a catalogue of 10,000 files (``--files``; the
scale of issue 12: ``--files 100000 --peers 5000``).

A real ``treedrive run`` process is started on a temp data dir (dashboard on a free port). This
script fills its catalogue by speaking the classic protocol to it: ``GOSSIP_REPLY``s from fake
peers (whose address this script listens on, so the node's gossips to them land somewhere), each
carrying up to 10,000 of the ``--files`` file records. ``--peers N`` adds N more tracked peers,
written straight into the node's SQLite file while it runs (as many GOSSIPs would leave them; all
at the fake peers' one address, so the node's gossip rounds cost one message). Then it measures,
over one keep-alive HTTP connection:

- ``GET /api/files?limit=50&offset=<random>``, the same pages walked by their ``after`` cursor
  (keyset), ``GET /api/files?limit=500``, ``GET /api/peers?limit=200`` and ``GET /api/peers``
  (every peer) (``--requests`` each), ``GET /api/status`` (same count), and ``GET /stats.json``
  (the whole catalogue, ``--stats-requests`` times);
- status under load: ``GET /api/status`` ``--status-requests`` times back to back on a connection
  of its own, first with no other request in flight, then while ``--stats-conns`` other
  connections (one thread each) fetch ``/stats.json`` back to back (the loaded figures start once
  each of them has had one whole answer); p50, p95, p99, max of both, how many ``/stats.json``
  answers were completed in the loaded window, and the load average before and after. The node's
  ``/api/status`` runs on its event loop, so how long it waits here is how long the whole node
  waits. ``--only status-under-load`` fills the catalogue and runs only this part (no browser);
- the dashboard's first render in headless Chromium, ``--loads`` times, each in a fresh browser
  context (cold cache, the token cookie set): navigation start to the first ``tr[data-file]`` row
  in the DOM (a MutationObserver installed before the page's scripts), to the first peer row, the
  same seen from outside (``page.goto`` until the row is visible), and ``performance.timing``
  domContentLoaded;
- ingest: how long the node takes to take in the records (until ``/api/status`` counts them), with
  no dashboard open and with one open (its event stream gets one event per new record), and how
  long the open page takes to show the new total, and how often its event stream was re-opened.

Only numbers are printed (no asserts). Only 127.0.0.1 is used; the node process is ended by its
PID; the temp dir is removed at the end (``--keep`` keeps it).

    python bench/web_catalogue.py
    python bench/web_catalogue.py --files 2000 --requests 50 --loads 2   # a quick run
    python bench/web_catalogue.py --only status-under-load               # about 1 min
    python bench/web_catalogue.py --files 100000 --peers 5000 --requests 100 --loads 3
    PYTHONPATH=/path/to/other/worktree python bench/web_catalogue.py ... # another version's node
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
COOKIE = "treedrive_token"

BATCH = 10_000
"""File records per GOSSIP_REPLY (one fake peer each): a node refuses much larger messages."""

# Installed before the page's own scripts: the time (ms since navigation start) at which the
# first file row, and the first peer row, enter the DOM.
FIRST_ROW_PROBE = """
(() => {
  const probe = new MutationObserver(() => {
    if (!window.__firstPeer && document.querySelector("tr[data-peer]")) {
      window.__firstPeer = performance.now();
    }
    if (!window.__firstRow && document.querySelector("tr[data-file]")) {
      window.__firstRow = performance.now();
    }
    if (window.__firstRow && window.__firstPeer) probe.disconnect();
  });
  probe.observe(document, { childList: true, subtree: true });
})();
"""


# -- the node -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NodeProc:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    p2p_port: int
    http_host: str
    http_port: int
    token: str

    @property
    def base(self) -> str:
        return f"http://{self.http_host}:{self.http_port}"


@contextlib.contextmanager
def running_node(root: Path, max_peers: int = 1000) -> Iterator[NodeProc]:
    data_dir = root / "node"
    port = free_port()
    cmd = [
        sys.executable, "-m", "treedrive", "run",
        "--peer-id", "bench",
        "--port", str(port),
        "--http-port", "0",
        "--data-dir", str(data_dir),
        "--peer-timeout", "3600",  # the fake peers never gossip: keep them (and their files)
        "--download-limit", "0",
        "--max-peers", str(max_peers),
        "--log-level", "WARNING",
        "--no-shell",
    ]  # fmt: skip
    with (root / "node.out").open("wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        run_file = data_dir / "node.json"
        deadline = time.monotonic() + 30
        while not run_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node did not start: {(root / 'node.out').read_text()}")
            time.sleep(0.05)
        info = json.loads(run_file.read_text())
        host, http_port = str(info["http"]).split("//", 1)[1].rstrip("/").rsplit(":", 1)
        token = (data_dir / "api-token").read_text().strip()
        yield NodeProc(proc, data_dir, port, host, int(http_port), token)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


# -- the fake classic peer ------------------------------------------------------------------------
class Sink:
    """A listening socket that takes whatever the node sends the fake peers and drops it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.received = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                while chunk := conn.recv(65536):
                    self.received += len(chunk)

    def close(self) -> None:
        self.sock.close()


def records(count: int, owner: str, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    base = 1_750_000_000
    out = []
    for i in range(count):
        ts = base + rng.randrange(10_000_000)
        size = rng.randrange(1, 50 << 20)
        out.append(
            {
                "file_name": f"{owner}-report-{i:05d}.pdf",
                "file_size": size / 1048576,
                "file_id": hashlib.sha256(f"{owner}/{seed}/{i}".encode()).hexdigest(),
                "file_owner": owner,
                "file_timestamp": ts,
            }
        )
    return out


def send_gossip_reply(node: NodeProc, peer_id: str, peer_port: int, files: list[Any]) -> None:
    message = {
        "type": "GOSSIP_REPLY",
        "host": "127.0.0.1",
        "port": peer_port,
        "peerId": peer_id,
        "files": files,
    }
    with socket.create_connection(("127.0.0.1", node.p2p_port), timeout=10) as s:
        s.sendall(json.dumps(message).encode())


# -- HTTP ----------------------------------------------------------------------------------------
class Client:
    """One keep-alive HTTP connection to the node's API."""

    def __init__(self, node: NodeProc) -> None:
        self.node = node
        self.conn = http.client.HTTPConnection(node.http_host, node.http_port, timeout=60)
        self.reconnects = 0

    def get(self, path: str) -> tuple[float, bytes]:
        start = time.perf_counter()
        try:
            self.conn.request("GET", path)
            resp = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            # The server closed the kept-alive connection: once more on a new one (counted).
            self.conn.close()
            self.reconnects += 1
            self.conn = http.client.HTTPConnection(
                self.node.http_host, self.node.http_port, timeout=60
            )
            start = time.perf_counter()
            self.conn.request("GET", path)
            resp = self.conn.getresponse()
        body = resp.read()
        took = time.perf_counter() - start
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: {resp.status} {body[:200]!r}")
        return took, body

    def json(self, path: str) -> Any:
        return json.loads(self.get(path)[1])

    def close(self) -> None:
        self.conn.close()


def ingest(
    node: NodeProc, client: Client, sink: Sink, peer_id: str, count: int, seed: int, target: int
) -> tuple[float, float]:
    """Send one GOSSIP_REPLY of ``count`` new records from ``peer_id``; poll ``/api/status``
    until the catalogue holds ``target`` files. Returns (seconds, slowest poll in ms): while the
    node takes the records in, its event loop, and so the API, may not answer."""
    start = time.perf_counter()
    for k, first in enumerate(range(0, count, BATCH)):
        batch = records(min(BATCH, count - first), f"{peer_id}-{k}", seed)
        send_gossip_reply(node, peer_id if k == 0 else f"{peer_id}-{k}", sink.port, batch)
    worst = 0.0
    while True:
        took, body = client.get("/api/status")
        worst = max(worst, took)
        if json.loads(body)["counts"]["files"] >= target:
            return time.perf_counter() - start, worst * 1000
        if time.perf_counter() - start > 600:
            raise TimeoutError("the records did not arrive in time")
        time.sleep(0.02)


def seed_peers(node: NodeProc, sink: Sink, count: int) -> None:
    """``count`` tracked peers, written into the node's SQLite file (WAL: beside the running
    node), all at the sink's address and seen now (the node's peer timeout is an hour)."""
    now = time.time()
    rows = [(f"seeded-peer-{i:05d}", "127.0.0.1", sink.port, now, now, None) for i in range(count)]
    db = sqlite3.connect(node.data_dir / "treedrive.db", timeout=30)
    try:
        with db:
            db.executemany(
                "INSERT OR IGNORE INTO peers (peer_id, host, port, last_seen, first_seen, features)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
    finally:
        db.close()


def percentile(sorted_samples: list[float], pct: int) -> float:
    """The ``pct``-th percentile (inclusive method) of already sorted samples."""
    if len(sorted_samples) < 2:
        return sorted_samples[0]
    return statistics.quantiles(sorted_samples, n=100, method="inclusive")[pct - 1]


@dataclass
class Row:
    what: str
    n: int
    samples_ms: list[float]
    note: str = ""

    def cells(self) -> list[str]:
        s = sorted(self.samples_ms)
        if not s:
            return [self.what, "0", "-", "-", "-", "-", "-", self.note or "no sample"]
        return [
            self.what,
            str(self.n),
            f"{statistics.median(s):.1f}",
            f"{percentile(s, 95):.1f}",
            f"{percentile(s, 99):.1f}",
            f"{statistics.fmean(s):.1f}",
            f"{s[-1]:.1f}",
            self.note,
        ]


def print_table(rows: list[Row]) -> None:
    head = ["measure", "n", "p50 ms", "p95 ms", "p99 ms", "mean ms", "max ms", "note"]
    body = [r.cells() for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    fmt = "  ".join(
        f"{{:{'<' if i in (0, len(head) - 1) else '>'}{w}}}" for i, w in enumerate(widths)
    )
    print(fmt.format(*head))
    print("  ".join("-" * w for w in widths))
    for line in body:
        print(fmt.format(*line))


def measure_api(client: Client, total: int, requests: int, stats_requests: int) -> list[Row]:
    rng = random.Random(7)
    rows = []
    pages = []
    size = 0
    for _ in range(requests):
        offset = rng.randrange(max(1, total - 50))
        took, body = client.get(f"/api/files?limit=50&offset={offset}")
        pages.append(took * 1000)
        size = len(body)
    rows.append(Row("GET /api/files?limit=50&offset=<random>", requests, pages, f"{size} B"))
    walked = []
    after = ""
    for _ in range(requests):  # page after page, by the cursor each page gives
        took, body = client.get(f"/api/files?limit=50{after}")
        walked.append(took * 1000)
        cursor = json.loads(body).get("next")
        after = f"&after={cursor}" if cursor else ""
    rows.append(Row("GET /api/files?limit=50&after=<cursor> (walk)", requests, walked))
    big = []
    for _ in range(requests):
        took, body = client.get("/api/files?limit=500")
        big.append(took * 1000)
        size = len(body)
    rows.append(Row("GET /api/files?limit=500", requests, big, f"{size} B"))
    for path in ("/api/peers?limit=200", "/api/peers"):
        samples = []
        for _ in range(requests if "limit" in path else max(1, requests // 5)):
            took, body = client.get(path)
            samples.append(took * 1000)
        rows.append(Row(f"GET {path}", len(samples), samples, f"{len(body)} B"))
    status = []
    for _ in range(requests):
        took, body = client.get("/api/status")
        status.append(took * 1000)
    rows.append(Row("GET /api/status", requests, status, f"{len(body)} B"))
    stats: list[float] = []
    for _ in range(stats_requests):
        took, body = client.get("/stats.json")
        stats.append(took * 1000)
    if stats:
        rows.append(Row("GET /stats.json (whole catalogue)", len(stats), stats, f"{len(body)} B"))
    return rows


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class StatsLoad:
    """``conns`` threads, each on its own connection, fetching ``/stats.json`` back to back."""

    def __init__(self, node: NodeProc, conns: int) -> None:
        self.node = node
        self.stop = threading.Event()
        self.samples_ms: list[list[float]] = [[] for _ in range(conns)]
        self.errors: list[str] = []
        self.size = 0
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(conns)
        ]

    def _run(self, i: int) -> None:
        client = Client(self.node)
        try:
            while not self.stop.is_set():
                took, body = client.get("/stats.json")
                self.samples_ms[i].append(took * 1000)
                self.size = len(body)
        except Exception as exc:  # reported with the figures, not raised in a thread
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            client.close()

    def done(self) -> int:
        return sum(len(s) for s in self.samples_ms)

    def __enter__(self) -> StatsLoad:
        for t in self.threads:
            t.start()
        # Every loader has had one whole answer: from here on the load is steady.
        deadline = time.monotonic() + 120
        while not all(self.samples_ms) and not self.errors and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def samples_of(node: NodeProc, path: str, requests: int) -> list[float]:
    """``requests`` x ``GET path``, back to back on a new keep-alive connection (ms)."""
    client = Client(node)
    try:
        client.get(path)  # the connection is open before the clock runs
        return [client.get(path)[0] * 1000 for _ in range(requests)]
    finally:
        client.close()


def measure_under_load(
    node: NodeProc, requests: int, conns: int, path: str = "/api/status"
) -> list[Row]:
    """``GET path`` on its own connection with no other request in flight, then the same while
    ``conns`` other connections fetch the whole catalogue (``/stats.json``) back to back."""
    what = path.rsplit("/", 1)[-1]
    print(f"{what} under load: load average before {loadavg()}")
    idle = samples_of(node, path, requests)
    with StatsLoad(node, conns) as load:
        before = load.done()
        start = time.perf_counter()
        loaded = samples_of(node, path, requests)
        window = time.perf_counter() - start
        during = load.done() - before
    print(f"{what} under load: load average after {loadavg()}")
    if load.errors:
        print(f"{what} under load: the /stats.json loaders failed: {load.errors}")
    stats = [ms for s in load.samples_ms for ms in s]
    return [
        Row(f"GET {path}, nothing else in flight", requests, idle, "own conn"),
        Row(
            f"GET {path} while {conns} conn(s) fetch /stats.json",
            requests,
            loaded,
            f"own conn; {during} /stats.json done in its {window:.1f} s",
        ),
        Row(
            f"GET /stats.json meanwhile ({conns} conn(s), back to back)",
            len(stats),
            stats,
            f"{load.size} B",
        ),
    ]


def measure_render(node: NodeProc, loads: int) -> list[Row]:
    from playwright.sync_api import sync_playwright

    first_rows, first_peers, walls, dcls = [], [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            for _ in range(loads):
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                context.add_cookies([{"name": COOKIE, "value": node.token, "url": node.base}])
                context.add_init_script(FIRST_ROW_PROBE)
                page = context.new_page()
                start = time.perf_counter()
                page.goto(node.base + "/")
                page.wait_for_selector("tr[data-file]", timeout=30_000)
                walls.append((time.perf_counter() - start) * 1000)
                first_rows.append(float(page.evaluate("window.__firstRow")))
                if page.locator("tr[data-peer]").count():
                    first_peers.append(float(page.evaluate("window.__firstPeer")))
                dcls.append(
                    float(
                        page.evaluate(
                            "performance.timing.domContentLoadedEventEnd"
                            " - performance.timing.navigationStart"
                        )
                    )
                )
                context.close()
        finally:
            browser.close()
    peer_rows = [Row("first render: nav start -> first peer row", loads, first_peers)]
    return [
        Row("first render: nav start -> first file row (in page)", loads, first_rows),
        *(peer_rows if first_peers else []),
        Row("first render: goto -> row visible (outside)", loads, walls),
        Row("first render: domContentLoaded (performance.timing)", loads, dcls),
    ]


def measure_ingest_with_page(
    node: NodeProc, client: Client, sink: Sink, count: int, before: int
) -> dict[str, Any]:
    """One more GOSSIP_REPLY of ``count`` new records while a dashboard page is open."""
    from playwright.sync_api import sync_playwright

    result: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.add_cookies([{"name": COOKIE, "value": node.token, "url": node.base}])
            page = context.new_page()
            streams: list[str] = []
            page.on("request", lambda r: streams.append(r.url) if "/api/events" in r.url else None)
            page.goto(node.base + "/")
            page.wait_for_selector("tr[data-file]")
            page.wait_for_function("document.querySelector('#conn').textContent === 'live'")
            target = before + count
            start = time.perf_counter()
            result["node_s"], result["worst_ms"] = ingest(
                node, client, sink, "fake-peer-2", count, 2, target
            )
            page.wait_for_function(
                f"document.querySelector('#n-files').textContent === '{target}'", timeout=300_000
            )
            result["page_s"] = time.perf_counter() - start
            time.sleep(1.0)  # let a dropped stream reconnect, if it was dropped
            result["streams"] = len(streams)
            result["conn"] = page.locator("#conn").text_content()
            context.close()
        finally:
            browser.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000, help="file records in the catalogue")
    ap.add_argument("--peers", type=int, default=0, help="more tracked peers (seeded in SQLite)")
    ap.add_argument("--requests", type=int, default=200, help="requests per API measure")
    ap.add_argument("--stats-requests", type=int, default=30, help="requests of /stats.json")
    ap.add_argument("--loads", type=int, default=5, help="dashboard loads in Chromium")
    ap.add_argument("--no-browser", action="store_true", help="skip the Chromium measures")
    ap.add_argument(
        "--status-requests",
        type=int,
        default=300,
        help="/api/status requests, idle and loaded (0: skip that part)",
    )
    ap.add_argument(
        "--stats-conns", type=int, default=2, help="connections fetching /stats.json meanwhile"
    )
    ap.add_argument(
        "--only",
        choices=["status-under-load"],
        help="fill the catalogue, then run only this part",
    )
    ap.add_argument(
        "--skip-ingest", action="store_true", help="skip the ingests after the measures"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()
    browser = not args.no_browser and Path(CHROMIUM).exists() and args.only is None

    root = Path(tempfile.mkdtemp(prefix="treedrive-bench-web-"))
    sink = Sink()
    try:
        with running_node(root, max_peers=max(1000, args.peers + 100)) as node:
            client = Client(node)
            print(f"node: p2p 127.0.0.1:{node.p2p_port}, dashboard {node.base}/  (data {root})")
            print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {loadavg()}")

            took, worst = ingest(node, client, sink, "fake-peer-1", args.files, 1, args.files)
            seed_peers(node, sink, args.peers)
            status = client.json("/api/status")["counts"]
            total = status["files"]
            print(f"catalogue: {total} file records; {status['peers']} peers tracked")
            print(
                f"ingest of {args.files} records (GOSSIP_REPLYs of {BATCH}), no dashboard open: "
                f"{took:.2f} s (slowest /api/status poll meanwhile: {worst:.0f} ms)"
            )
            print()

            if args.only is None:  # each part's table as soon as it is measured
                print_table(measure_api(client, total, args.requests, args.stats_requests))
                print()
            if browser:
                print_table(measure_render(node, args.loads))
                print()
            if args.status_requests > 0:
                print_table(measure_under_load(node, args.status_requests, args.stats_conns))

            if browser and not args.skip_ingest:
                print()
                with_page = measure_ingest_with_page(node, client, sink, args.files, total)
                total = client.json("/api/status")["counts"]["files"]
                target = total + args.files
                took, worst = ingest(node, client, sink, "fake-peer-3", args.files, 3, target)
                print(
                    f"ingest of {args.files} more records with a dashboard open: "
                    f"{with_page['node_s']:.2f} s in the node (slowest /api/status poll "
                    f"{with_page['worst_ms']:.0f} ms), {with_page['page_s']:.2f} s until the "
                    f"page shows the new total; event-stream connections opened by the page: "
                    f"{with_page['streams']} (1 = never dropped); #conn then {with_page['conn']!r}"
                )
                print(
                    f"ingest of {args.files} more records, no dashboard open again "
                    f"(catalogue {total} -> {target}): {took:.2f} s (slowest poll {worst:.0f} ms)"
                )
            if client.reconnects:
                print(f"(the node closed the kept-alive connection {client.reconnects} times)")
            client.close()
    finally:
        sink.close()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
