"""The simulator (bench/simulate.py) at small N: the real swim/deltas logic of 30 nodes converges
within the push-gossip ideal, and a 50/50 partition heals with nothing lost or resurrected."""

from __future__ import annotations

import argparse

from bench.simulate import MAX_ROUNDS, simulate


def run(**kw: object) -> dict[str, object]:
    args = argparse.Namespace(files=20, fanout=3, loss=0.0, churn=0.0, partition=10, seed=7)
    vars(args).update(kw)
    return simulate(args, 30)


def p99(result: dict[str, object], key: str) -> float:
    value = result[key]
    assert isinstance(value, dict), key
    assert value["p99"] is not None, key
    return float(value["p99"])


def test_thirty_nodes_converge_within_the_ideal_and_a_partition_heals() -> None:
    r = run()
    ideal = p99(r, "ideal_rounds")
    assert p99(r, "rounds_to_membership") <= ideal + 2
    assert p99(r, "rounds_to_catalogue") <= ideal + 2
    heal = r["partition_heal_rounds"]
    assert isinstance(heal, int)
    assert heal <= ideal + 3
    assert r["catalogue_heal_rounds"] is not None
    assert r["files_lost"] == 0
    assert r["deletes_resurrected"] == 0
    assert p99(r, "bytes_per_node_per_interval") > 0


def test_with_loss_and_churn_news_still_reaches_every_live_node() -> None:
    r = run(loss=0.05, churn=0.1, partition=0)
    ideal = p99(r, "ideal_rounds")
    assert p99(r, "rounds_to_membership") <= ideal + 4
    assert p99(r, "rounds_to_catalogue") <= ideal + 4
    assert p99(r, "rounds_to_detect_crash") <= MAX_ROUNDS  # every crash noticed everywhere
    after = r["bytes_per_node_per_interval_after_churn"]  # measured once the churn settled
    assert isinstance(after, dict)
    assert 0 < after["p50"] <= after["p99"] <= after["max"]
