"""Simulate N TreeDrive nodes gossiping membership and catalogue deltas (issue 12, point 3).

Each node runs the real pure logic (``treedrive/core/swim.py``, ``deltas.py``) over an in-memory
network in virtual time (``bench/simnet.py``): a round is one gossip interval. Three scenarios,
each in a fresh network of ``--nodes`` nodes that start in steady state (everyone knows everyone
and everyone's ``--files`` records):

1. steady state: bytes and messages each node sends per interval, with no change happening;
2. news: nodes join (through the well-known hosts) and files are pushed, while ``--loss`` of the
   messages are lost and ``--churn`` of the nodes are replaced (crash + new node) per 10 rounds:
   rounds until every live node knows the new member (``rounds_to_membership``) and lists the new
   file (``rounds_to_catalogue``), against ``ideal_rounds``, a Monte-Carlo of push gossip with the
   same fan-out (every informed node pushes to ``fanout`` random nodes every round, forever);
3. partition (``--partition R`` rounds, 0 to skip): files with copies across the cut, a 50/50
   split, owners delete some and push new ones on each side, the network heals:
   ``partition_heal_rounds`` (every node knows every node alive again), ``catalogue_heal_rounds``,
   ``files_lost`` and ``deletes_resurrected``.

    python bench/simulate.py --nodes 1000
    python bench/simulate.py --nodes 100 --nodes 1000 --json out.json --plot /tmp/plots
    python bench/simulate.py --nodes 1000 --loss 0.05 --churn 0.1
    python bench/simulate.py --load n100.json --load n5000.json --plot /tmp/plots
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.simnet import SimNode, World, file_meta, knows_alive
from treedrive.core.swimtypes import Config

MAX_ROUNDS = 40
"""Rounds a tracked join or push is followed before it counts as never converging."""
AFTER_CHURN_ROUNDS = 10
"""Rounds whose traffic is measured once the churn's news has settled (``seed_rounds``: each
node's slow look for its lost members, at a well-known host, falls once in them)."""


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def p50_p99(values: list[float]) -> dict[str, float | None]:
    return {"p50": pct(values, 50), "p99": pct(values, 99)}


def ideal(n: int, fanout: int, rng: random.Random, trials: int = 20) -> list[float]:
    """Rounds at which each node learns a rumour in push gossip with ``fanout`` (pooled over
    ``trials``)."""
    out: list[float] = []
    for _ in range(trials):
        informed = [0] * n
        informed[0] = 1
        spreaders = [0]
        rnd = 0
        while len(spreaders) < n:
            rnd += 1
            new = []
            for _s in range(len(spreaders)):
                for _k in range(fanout):
                    t = rng.randrange(n)
                    if not informed[t]:
                        informed[t] = 1
                        new.append(t)
            out += [rnd] * len(new)
            spreaders += new
    return out


class Tracker:
    """Rounds until ``holds(node)`` for every node live at ``start`` (and still live)."""

    def __init__(
        self, world: World, start: int, holds: Callable[[SimNode], bool], skip: int = -1
    ) -> None:
        self.start, self.holds = start, holds
        self.pending = {n.idx for n in world.live() if n.idx != skip}
        self.rounds: list[float] = []

    def check(self, world: World, rnd: int) -> None:
        for idx in list(self.pending):
            node = world.nodes[idx]
            if not node.up:
                self.pending.discard(idx)
            elif self.holds(node):
                self.pending.discard(idx)
                self.rounds.append(rnd - self.start + 1)

    def finish(self) -> None:
        self.rounds += [MAX_ROUNDS + 1] * len(self.pending)  # never: counted past the end


def _world(args: argparse.Namespace, n: int, seed: int, loss: float = 0.0) -> World:
    """A network of ``n`` nodes in steady state; it counts messages, not their bytes, until
    :func:`_traffic` (encoding every message, with the member tables of a healing partition,
    was a third of a 1,000-node run)."""
    world = World(random.Random(seed), loss=loss, config=Config(fanout=args.fanout), measure=False)
    world.populate(n, args.files)
    return world


def _traffic(
    world: World, start: float, rounds: int
) -> tuple[list[float], list[float], list[float]]:
    """Bytes (JSON), messages and bytes on the wire each live node sends per interval over
    ``rounds`` rounds from ``start``."""
    world.run_until(start)
    world.measure = True
    world.traffic.reset()
    world.run_until(start + rounds)
    world.measure = False
    live = world.live()
    per_bytes = [world.traffic.bytes.get(x.idx, 0) / rounds for x in live]
    per_msgs = [world.traffic.messages.get(x.idx, 0) / rounds for x in live]
    per_wire = [world.traffic.wire.get(x.idx, 0) / rounds for x in live]
    return per_bytes, per_msgs, per_wire


def steady(args: argparse.Namespace, n: int) -> dict[str, Any]:
    world = _world(args, n, args.seed)
    per_bytes, per_msgs, per_wire = _traffic(world, 3.0, 5)
    return {
        "bytes_per_node_per_interval": p50_p99(per_bytes),
        "messages_per_node_per_interval": p50_p99(per_msgs),
        "wire_bytes_per_node_per_interval": p50_p99(per_wire),
    }


def _push(world: World, owner: SimNode, n: int, rng: random.Random) -> tuple[str, list[str]]:
    """``owner`` pushes a new file; a copy goes to one random live peer (the classic push)."""
    meta = file_meta(owner.peer_id, n)
    owner.swim.spread([c for c in [owner.catalogue.add(meta)] if c is not None])
    peers = [p for p in owner.swim.alive() if world.nodes[int(p[1:])].up]
    copy = world.nodes[int(rng.choice(peers)[1:])] if peers else owner
    copy.swim.spread([c for c in [copy.catalogue.add(meta)] if c is not None])
    return meta.file_id, [owner.peer_id, copy.peer_id]


def news(args: argparse.Namespace, n: int) -> dict[str, Any]:
    world = _world(args, n, args.seed + 1, args.loss)
    rng = random.Random(args.seed + 2)
    world.run_until(2.0)
    joins: list[Tracker] = []
    pushes: list[Tracker] = []
    crashed: list[Tracker] = []
    per_round = args.churn * n / 10
    owed = 0.0
    seeds = world.seed_count
    for rnd in range(1, MAX_ROUNDS + 12):
        t = 2 + rnd
        if rnd in (1, 4, 7):
            joiner = world.join()
            pid = joiner.peer_id
            joins.append(Tracker(world, rnd, lambda x, p=pid: knows_alive(x, p), joiner.idx))
            owner = rng.choice(world.live()[seeds:])
            fid, holders = _push(world, owner, 10_000 + rnd, rng)
            pushes.append(Tracker(world, rnd, lambda x, f=fid, h=holders: x.catalogue.lists(h, f)))
        if per_round and rnd <= 10:
            owed += per_round
            while owed >= 1:
                owed -= 1
                victim = rng.choice(world.live()[seeds:])
                world.crash(victim)
                pid = victim.peer_id
                crashed.append(Tracker(world, rnd, lambda x, p=pid: not knows_alive(x, p)))
                world.join()
        world.run_until(float(t))
        for tr in joins + pushes + crashed:
            tr.check(world, rnd)
        if rnd > 10 and not any(tr.pending for tr in joins + pushes + crashed):
            break
    for tr in joins + pushes + crashed:
        tr.finish()
    out: dict[str, Any] = {
        "rounds_to_membership": p50_p99([r for tr in joins for r in tr.rounds]),
        "rounds_to_catalogue": p50_p99([r for tr in pushes for r in tr.rounds]),
    }
    if crashed:
        out["rounds_to_detect_crash"] = p50_p99([r for tr in crashed for r in tr.rounds])
        # after churn every node holds members dead: what that steady state costs
        per_bytes, per_msgs, _ = _traffic(world, world.now, AFTER_CHURN_ROUNDS)
        out["bytes_per_node_per_interval_after_churn"] = {
            **p50_p99(per_bytes),
            "max": max(per_bytes),
        }
        out["messages_per_node_per_interval_after_churn"] = {
            **p50_p99(per_msgs),
            "max": max(per_msgs),
        }
    return out


def partition(args: argparse.Namespace, n: int) -> dict[str, Any]:
    world = _world(args, n, args.seed + 3)
    rng = random.Random(args.seed + 4)
    for node in world.nodes:
        node.side = rng.randrange(2)
    sides = [[x for x in world.nodes if x.side == s] for s in (0, 1)]
    files: dict[str, list[str]] = {}
    crossing: list[tuple[SimNode, str]] = []
    for s in (0, 1):
        for i in range(4):  # files whose two copies are on both sides
            owner, other = rng.choice(sides[s]), rng.choice(sides[1 - s])
            meta = file_meta(owner.peer_id, 20_000 + i)
            for holder in (owner, other):
                holder.swim.spread([c for c in [holder.catalogue.add(meta)] if c is not None])
            files[meta.file_id] = [owner.peer_id, other.peer_id]
            crossing.append((owner, meta.file_id))
    world.run_until(8.0)
    world.partitioned = True
    world.run_until(10.0)
    deleted: set[str] = set()
    for owner, fid in crossing[0:2] + crossing[4:6]:
        owner.swim.spread([c for c in [owner.catalogue.delete(fid)] if c is not None])
        deleted.add(fid)
    for s in (0, 1):
        for i in range(2):
            owner = rng.choice(sides[s])
            peers = [x for x in sides[s] if x is not owner]
            copy = rng.choice(peers)
            meta = file_meta(owner.peer_id, 30_000 + i)
            for holder in (owner, copy):
                holder.swim.spread([c for c in [holder.catalogue.add(meta)] if c is not None])
            files[meta.file_id] = [owner.peer_id, copy.peer_id]
    heal_at = 8 + args.partition
    world.run_until(float(heal_at))
    world.partitioned = False
    membership = catalogue = None
    for rnd in range(1, MAX_ROUNDS + 1):
        world.run_until(float(heal_at + rnd))
        if membership is None and all(x.swim.counts()[0] == n - 1 for x in world.nodes):
            membership = rnd
        if catalogue is None and _catalogue_whole(world, files, deleted) == (0, 0):
            catalogue = rnd
        if membership is not None and catalogue is not None:
            break
    lost, resurrected = _catalogue_whole(world, files, deleted)
    return {
        "partition_heal_rounds": membership,
        "catalogue_heal_rounds": catalogue,
        "files_lost": lost,
        "deletes_resurrected": resurrected,
    }


def _catalogue_whole(
    world: World, files: dict[str, list[str]], deleted: set[str]
) -> tuple[int, int]:
    """Files held by a node that some node does not list; deleted files still held or listed."""
    lost = resurrected = 0
    for fid, holders in files.items():
        held = any(world.nodes[int(h[1:])].catalogue.log.holds(fid) for h in holders)
        if fid in deleted:
            resurrected += held or any(x.catalogue.lists(holders, fid) for x in world.nodes)
        elif held and not all(x.catalogue.lists(holders, fid) for x in world.nodes):
            lost += 1
    return lost, resurrected


@contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic garbage collector off for a scenario, and one collection after it. A world
    is millions of long-lived objects with few cycles, and each full collection walked all of
    them: at N = 1,000 that was 40 % of the run."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def simulate(args: argparse.Namespace, n: int) -> dict[str, Any]:
    began = time.monotonic()
    result: dict[str, Any] = {
        "nodes": n,
        "loss": args.loss,
        "churn": args.churn,
        "partition": args.partition,
    }
    result["ideal_rounds"] = p50_p99(ideal(n, args.fanout, random.Random(args.seed)))
    for scenario in (steady, news, partition) if args.partition else (steady, news):
        with _no_gc():
            result.update(scenario(args, n))
    result["seconds"] = round(time.monotonic() - began, 1)
    return result


def plot(results: list[dict[str, Any]], folder: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "--plot: matplotlib is not installed (pip install matplotlib); no plots drawn",
            file=sys.stderr,
        )
        return
    folder.mkdir(parents=True, exist_ok=True)
    ns = [r["nodes"] for r in results]
    for key in (
        "rounds_to_membership",
        "rounds_to_catalogue",
        "ideal_rounds",
        "bytes_per_node_per_interval",
        "messages_per_node_per_interval",
        "wire_bytes_per_node_per_interval",
        "bytes_per_node_per_interval_after_churn",
    ):
        if not all(key in r for r in results):
            continue
        fig, ax = plt.subplots()
        for q in ("p50", "p99", "max"):
            if q in results[0][key]:
                ax.plot(ns, [r[key][q] for r in results], marker="o", label=q)
        if key.startswith("rounds_to_"):  # what the done-when measures against
            ideal = [r["ideal_rounds"]["p99"] for r in results]
            ax.plot(ns, ideal, linestyle="--", color="grey", label="ideal p99")
        if "max" in results[0][key]:
            ax.set_yscale("log")  # a well-known host's share is orders above the median
        else:
            ax.set_ylim(bottom=0)
        ax.set_xscale("log")
        ax.set_xlabel("nodes")
        ax.set_title(key)
        ax.legend()
        fig.savefig(folder / f"{key}.png")
        plt.close(fig)
    healed = [r for r in results if r.get("partition_heal_rounds") is not None]
    if healed:  # rounds after the split until every node agrees again, against the done-when
        fig, ax = plt.subplots()
        hn = [r["nodes"] for r in healed]
        for key in ("partition_heal_rounds", "catalogue_heal_rounds"):
            ax.plot(hn, [r[key] for r in healed], marker="o", label=key)
        bound = [r["ideal_rounds"]["p99"] + 3 for r in healed]
        ax.plot(hn, bound, linestyle="--", color="grey", label="ideal p99 + 3")
        ax.set_ylim(bottom=0)
        ax.set_xscale("log")
        ax.set_xlabel("nodes")
        ax.set_title(f"heal after a {healed[0]['partition']}-round 50/50 partition")
        ax.legend()
        fig.savefig(folder / "heal_rounds.png")
        plt.close(fig)
    print(f"plots in {folder}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, action="append", help="N (repeatable; default 100)")
    parser.add_argument("--files", type=int, default=100, help="files each node holds at start")
    parser.add_argument("--fanout", type=int, default=3)
    parser.add_argument("--loss", type=float, default=0.0, help="fraction of messages lost")
    parser.add_argument(
        "--churn", type=float, default=0.0, help="fraction of nodes replaced per 10 rounds"
    )
    parser.add_argument(
        "--partition", type=int, default=10, help="rounds of a 50/50 split (0: none)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the results here ('-': stdout)")
    parser.add_argument("--plot", type=Path, help="draw PNGs of the results against N here")
    parser.add_argument(
        "--load",
        type=Path,
        action="append",
        default=[],
        help="results of an earlier run (its --json file) to plot with this run's (repeatable;"
        " without --nodes nothing is run)",
    )
    args = parser.parse_args(argv)
    loaded: list[dict[str, Any]] = []
    for path in args.load:
        data = json.loads(path.read_text())
        loaded += data if isinstance(data, list) else [data]
    results = []
    for n in args.nodes or ([] if loaded else [100]):
        result = simulate(args, n)
        results.append(result)
        print(
            json.dumps(result),
            file=sys.stderr if args.json == Path("-") else sys.stdout,
            flush=True,
        )
    if args.json is not None and results:
        text = json.dumps(results[0] if len(results) == 1 else results, indent=1)
        if args.json == Path("-"):
            print(text)
        else:
            args.json.write_text(text + "\n")
    if args.plot is not None:
        plot(sorted(loaded + results, key=lambda r: int(r["nodes"])), args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
