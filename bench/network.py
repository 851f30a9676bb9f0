"""Benchmark: N real ``treedrive run`` processes on a real network (issue 12, point 4).

Each node runs in its own network namespace on one bridge (``tests/netlab.py``; needs root and
iproute2): node 0 is the well-known host, the others bootstrap through it. Measured:

- ``rounds_to_membership``: for each node, the gossip intervals from the last node's start until
  it knows every other (p50, p99 over the nodes);
- ``rounds_to_catalogue``: a file pushed on one node, intervals until each node lists it;
- ``bytes_per_node_per_interval``: steady state, what each node sent, from its interface's byte
  counters, over ``--steady`` intervals (p50, p99 over the nodes); the same figure as
  ``wire_bytes_per_node_per_interval``, the simulator's key for what the wire carries (its
  ``bytes_per_node_per_interval`` counts the messages' JSON alone), with the simulator's figure
  for the same N and the ratio of the medians (``wire_bytes_real_vs_simulator``); and
  ``messages_per_node_per_interval``: the TCP connections it opened meanwhile (its namespace's
  ``ActiveOpens``: one per message);
- a partition: the second half of the nodes moved to a bridge of their own for ``--split-for``
  seconds (longer than the peer timeout: each side forgets the other), a file deleted by its
  owner on one side meanwhile, then the bridges joined again. ``partition_heal_rounds``:
  intervals until every node knows every other again; ``files_lost``: files pushed before the
  split that some node no longer lists (or nobody holds) once healed; ``deletes_resurrected``:
  nodes of the deleting side that list the deleted file again; ``deletes_not_propagated``:
  nodes of the other side that still list it (the DELETE was sent while they were cut off);
- churn: the last node killed (SIGKILL, no goodbye). ``dead_detected_rounds``: intervals until
  each other node has dropped it (p50, p99); ``false_dead``: nodes dropped by someone meanwhile
  that were alive.

Without namespaces (not root, no ``ip``) it says so and measures nothing (a loopback run cannot
cut a group off nor count one node's bytes). Everything it made is removed by name at the end,
and the nodes are ended by their PIDs.

    sudo python bench/network.py --nodes 10
    sudo python bench/network.py --nodes 25 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import simulate
from tests.netlab import Lab, LabNode, available


def pcts(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50": None, "p99": None}
    s = sorted(samples)
    p99 = s[-1] if len(s) < 2 else statistics.quantiles(s, n=100, method="inclusive")[98]
    return {"p50": round(statistics.median(s), 2), "p99": round(p99, 2)}


def wait(predicate: Callable[[], bool], timeout: float, every: float = 0.1) -> float | None:
    """Seconds until ``predicate`` held, or None after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(every)
    return None


class Net:
    def __init__(
        self, lab: Lab, root: Path, n: int, interval: float, timeout: float, swim: bool = True
    ) -> None:
        self.interval = interval
        hosts = lab.add(n)
        timers = ["--gossip-interval", str(interval), "--peer-timeout", str(timeout),
                  "--cleanup-interval", str(min(1.0, interval / 2)), "--max-peers", str(n + 50),
                  "--log-level", "WARNING", "--swim" if swim else "--no-swim"]  # fmt: skip
        self.nodes: list[LabNode] = []
        for i, host in enumerate(hosts):
            boot = [] if i == 0 else ["--bootstrap", f"{hosts[0].ip}:9000"]
            self.nodes.append(LabNode(lab, host, f"n{i:03d}", root / f"n{i:03d}", [*timers, *boot]))
        self.names = {node.peer_id for node in self.nodes}

    def start(self) -> float:
        self.nodes[0].start()
        for node in self.nodes[1:]:
            node.launch()
        for node in self.nodes[1:]:
            node.wait_started(120)
        return time.monotonic()

    def knows_all(self, node: LabNode, group: list[LabNode] | None = None) -> bool:
        names = self.names if group is None else {n.peer_id for n in group}
        return node.peers() >= names - {node.peer_id}

    def whole(self) -> bool:
        return all(self.knows_all(n) for n in self.nodes)

    def per_node_times(
        self,
        since: float,
        done: Callable[[LabNode], bool],
        limit: float,
        nodes: list[LabNode] | None = None,
    ) -> list[float]:
        """For each node (of ``nodes``, else all), the intervals from ``since`` until
        ``done(node)`` (nodes that never got there within ``limit`` seconds are left out)."""
        left = {n.peer_id: n for n in (self.nodes if nodes is None else nodes)}
        times: list[float] = []
        while left and time.monotonic() - since < limit:
            for peer_id, node in list(left.items()):
                if done(node):
                    times.append((time.monotonic() - since) / self.interval)
                    del left[peer_id]
            time.sleep(0.05)
        return times

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def steady(lab: Lab, net: Net, rounds: int) -> tuple[list[float], list[float]]:
    before = {n.peer_id: (lab.counters(n.host)["sent_bytes"], n.tcp_opens()) for n in net.nodes}
    time.sleep(rounds * net.interval)
    per_bytes, per_msgs = [], []
    for n in net.nodes:
        b0, m0 = before[n.peer_id]
        per_bytes.append((lab.counters(n.host)["sent_bytes"] - b0) / rounds)
        per_msgs.append((n.tcp_opens() - m0) / rounds)
    return per_bytes, per_msgs


class Figures(dict[str, Any]):
    """The result; each figure is printed as soon as it is known (a run cut short still
    says what it measured)."""

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        print(f"{key:32} {value}", flush=True)


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    lab = Lab()
    net = Net(lab, root, args.nodes, args.interval, args.peer_timeout, args.swim)
    result = Figures()
    head = (("nodes", args.nodes), ("mode", "netns"), ("swim", args.swim),
            ("interval", args.interval), ("peer_timeout", args.peer_timeout))  # fmt: skip
    for key, value in head:
        result[key] = value
    try:
        started = net.start()
        limit = 60 * args.interval + 60
        result["rounds_to_membership"] = pcts(net.per_node_times(started, net.knows_all, limit))
        files: list[str] = []
        src = root / "src"
        src.mkdir()
        for i, node in enumerate(net.nodes[: args.files]):
            path = src / f"f{i}.bin"
            path.write_bytes(os.urandom(20_000))
            pushed = time.monotonic()
            files.append(node.push(path))
            if i == 0:
                result["rounds_to_catalogue"] = pcts(
                    net.per_node_times(pushed, lambda n: files[0] in n.files(), limit)
                )
        wait(lambda: all(set(files) <= n.files() for n in net.nodes), limit)
        # Past the pushes and their copies: the changes they made have gone round (each is
        # sent a few times, on up to 3 pushes a round) and the joins' pulls are done.
        time.sleep(args.settle * args.interval)
        per_bytes, per_msgs = steady(lab, net, args.steady)
        result["bytes_per_node_per_interval"] = pcts(per_bytes)
        result["wire_bytes_per_node_per_interval"] = result["bytes_per_node_per_interval"]
        result["messages_per_node_per_interval"] = pcts(per_msgs)
        if args.swim:
            compare(result, args.nodes)

        half = args.nodes // 2
        left, right = net.nodes[:half], net.nodes[half:]
        lab.split([n.host for n in right])
        doomed = files[0]  # pushed by node 0, on the left
        net.nodes[0].delete(doomed)
        forgot = wait(
            lambda: all(not (n.peers() & {r.peer_id for r in right}) for n in left), args.split_for
        )
        time.sleep(max(0.0, args.split_for - (forgot or args.split_for)))
        result["split_seconds"] = args.split_for
        result["split_forgotten"] = forgot is not None
        lab.rejoin([n.host for n in right])
        healed = wait(net.whole, limit, every=0.05)
        result["partition_heal_rounds"] = (
            None if healed is None else round(healed / args.interval, 2)
        )
        kept = [f for f in files if f != doomed]
        wait(lambda: all(set(kept) <= n.files() for n in net.nodes), 5 * args.interval)
        time.sleep(2 * args.interval)
        held = set().union(*(n.held() for n in net.nodes))
        result["files_lost"] = sum(
            1 for f in kept if f not in held or any(f not in n.files() for n in net.nodes)
        )
        # The delete was seen on the left: a left node that lists the file again brought it
        # back; a right node that still lists it never heard of the delete.
        result["deletes_resurrected"] = sum(doomed in n.files() for n in left)
        result["deletes_not_propagated"] = sum(doomed in n.files() for n in right)
        churn(net, result, limit)
    finally:
        net.stop()
        lab.close()
    return result


def compare(result: Figures, n: int) -> None:
    """The simulator's steady state for the same N (``bench/simulate.py``, same logic, one
    file a node as here), and the real wire bytes against its wire bytes (the done-when: within
    25 %)."""
    sim = simulate.steady(argparse.Namespace(files=1, fanout=3, seed=7), n)
    wire = sim["wire_bytes_per_node_per_interval"]
    result["simulator_wire_bytes_per_node_per_interval"] = wire
    result["simulator_messages_per_node_per_interval"] = sim["messages_per_node_per_interval"]
    real = result["wire_bytes_per_node_per_interval"]["p50"]
    result["wire_bytes_real_vs_simulator"] = round(real / wire["p50"], 3)


def churn(net: Net, result: Figures, limit: float) -> None:
    """Kill the last node; how long the others take to drop it, and whom they drop wrongly."""
    victim = net.nodes[-1]
    alive = net.nodes[:-1]
    names = {n.peer_id for n in alive}
    victim.stop(signal.SIGKILL)
    killed = time.monotonic()
    wrong: set[str] = set()

    def dropped(node: LabNode) -> bool:
        known = node.peers()
        wrong.update(names - known - {node.peer_id})
        return victim.peer_id not in known

    result["dead_detected_rounds"] = pcts(net.per_node_times(killed, dropped, limit, alive))
    result["false_dead"] = len(wrong)


def _terminated(*_: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up short
    sys.exit(143)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--interval", type=float, default=2.0, help="gossip interval, seconds")
    ap.add_argument("--peer-timeout", type=float, default=10.0, help="seconds")
    ap.add_argument("--split-for", type=float, default=25.0, help="partition length, seconds")
    ap.add_argument("--steady", type=int, default=5, help="intervals of steady-state counting")
    ap.add_argument(
        "--settle", type=int, default=10,
        help="intervals waited after the pushes before counting (their news goes round)",
    )  # fmt: skip
    ap.add_argument("--files", type=int, default=5, help="files pushed (one node each)")
    ap.add_argument("--json", nargs="?", const="-", help="write the figures as JSON (- : stdout)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (nodes' logs)")
    ap.add_argument(
        "--swim",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the nodes run --swim (PROTOCOL.md 2.10); --no-swim: the classic all-to-all gossip",
    )
    args = ap.parse_args()
    why = available()
    if why is not None:
        print(f"network namespaces are not available here ({why}): nothing measured")
        sys.exit(2)
    root = Path(tempfile.mkdtemp(prefix="treedrive-bench-net-"))
    # SIGTERM (a timeout) ends the run through the ``finally`` blocks: nodes and lab removed.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        result = run(args, root)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if args.json == "-":
        print(json.dumps(result))
    elif args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
