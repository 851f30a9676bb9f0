"""Benchmark: ``GET /api/health`` while ``/stats.json`` of 10,000 files is being served.

A real ``treedrive run`` process, its catalogue filled with ``--files`` records the way
``bench/web_catalogue.py`` does it (one classic ``GOSSIP_REPLY`` from a fake peer; its helpers
are reused). Then ``GET /api/health`` ``--requests`` times back to back on a keep-alive
connection of its own, first with nothing else in flight, then while ``--stats-conns`` other
connections fetch ``/stats.json`` back to back (the figures start once each has had one whole
answer). Health runs on the node's event loop and touches no database: how long it waits here is
how long the loop keeps it waiting. Prints p50, p95, p99, max; asserts nothing (the target is a
p99 under 20 ms while ``/stats.json`` is served).

    python bench/health.py
    python bench/health.py --files 2000 --requests 200    # a quick run
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# The benchmark next door (its directory is on sys.path when this runs as a script).
from web_catalogue import (
    Client,
    NodeProc,
    Row,
    Sink,
    StatsLoad,
    ingest,
    loadavg,
    print_table,
    running_node,
)


def health_samples(node: NodeProc, requests: int) -> list[float]:
    """``requests`` x ``GET /api/health`` back to back on a new keep-alive connection (ms)."""
    client = Client(node)
    try:
        client.get("/api/health")  # the connection is open before the clock runs
        return [client.get("/api/health")[0] * 1000 for _ in range(requests)]
    finally:
        client.close()


def measure(node: NodeProc, requests: int, conns: int) -> list[Row]:
    idle = health_samples(node, requests)
    with StatsLoad(node, conns) as load:
        before = load.done()
        start = time.perf_counter()
        loaded = health_samples(node, requests)
        window = time.perf_counter() - start
        during = load.done() - before
    if load.errors:
        print(f"the /stats.json loaders failed: {load.errors}")
    stats = [ms for s in load.samples_ms for ms in s]
    return [
        Row("GET /api/health, nothing else in flight", requests, idle, "own conn"),
        Row(
            f"GET /api/health while {conns} conn(s) fetch /stats.json",
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000, help="file records in the catalogue")
    ap.add_argument("--requests", type=int, default=1000, help="health requests, idle and loaded")
    ap.add_argument("--stats-conns", type=int, default=2, help="connections on /stats.json")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="treedrive-bench-health-"))
    sink = Sink()
    try:
        with running_node(root) as node:
            client = Client(node)
            took, _ = ingest(node, client, sink, "fake-peer-1", args.files, 1, args.files)
            client.close()
            print(f"node {node.base}/: {args.files} file records taken in in {took:.2f} s")
            print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {loadavg()}")
            rows = measure(node, args.requests, args.stats_conns)
            print(f"load average after: {loadavg()}")
            print_table(rows)
    finally:
        sink.close()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
