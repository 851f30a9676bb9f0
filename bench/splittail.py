"""How long a split goes unnoticed (issue 12): N nodes in steady state, cut in two halves, with
the node's own timers (``treedrive run``'s config for a gossip interval and a peer timeout);
prints, for each round after the cut, how many (node, member of the other side) pairs are still
held alive or suspect, and how many nodes hold any.

    python bench/splittail.py --nodes 50 --nodes 200 --rounds 25
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.simnet import World, knows_alive
from treedrive.core.swimtypes import Config, node_config


def split_tail(n: int, rounds: int, seed: int, config: Config | None = None) -> dict[str, Any]:
    """Split ``n`` nodes in steady state in two halves after 5 rounds, for ``rounds``: per round
    after the cut, the (node, other-side member) pairs held alive or suspect, and the nodes that
    hold any."""
    world = World(random.Random(seed), config=config or node_config(5.0, 25.0), measure=False)
    world.populate(n, 0)
    for node in world.nodes:
        node.side = int(node.idx >= n // 2)
    world.run_until(5.0)
    world.partitioned = True
    pairs: list[int] = []
    holders: list[int] = []
    for rnd in range(1, rounds + 1):
        world.run_until(5.0 + rnd)
        count = 0
        nodes = 0
        for node in world.nodes:
            held = sum(
                knows_alive(node, other.peer_id) for other in world.nodes if other.side != node.side
            )
            count += held
            nodes += held > 0
        pairs.append(count)
        holders.append(nodes)
    cleared = next((r + 1 for r, c in enumerate(pairs) if c == 0), None)
    return {"nodes": n, "pairs": pairs, "holders": holders, "cleared_round": cleared}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, action="append")
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--seeds", type=int, default=5, help="runs (seeds) per N")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    for n in args.nodes or [50]:
        runs = [split_tail(n, args.rounds, seed) for seed in range(args.seeds)]
        if args.json:
            print(json.dumps(runs))
            continue
        print(f"N = {n}, {args.seeds} runs: rounds until no node holds the other side alive",
              [r["cleared_round"] for r in runs])  # fmt: skip
        for key in ("pairs", "holders"):
            total = [sum(r[key][i] for r in runs) for i in range(args.rounds)]
            print(f"  {key:7} (sum over runs, per round after the cut)")
            print("   ", " ".join(str(c) for c in total))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
