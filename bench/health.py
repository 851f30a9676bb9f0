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
from pathlib import Path

# The benchmark next door (its directory is on sys.path when this runs as a script).
from web_catalogue import (
    Client,
    Sink,
    ingest,
    loadavg,
    measure_under_load,
    print_table,
    running_node,
)


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
            print_table(measure_under_load(node, args.requests, args.stats_conns, "/api/health"))
    finally:
        sink.close()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
