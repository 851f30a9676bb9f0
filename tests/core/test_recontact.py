"""Whom a node that lost peers tries again, and when (treedrive.core.recontact): pure, no clock."""

from __future__ import annotations

import itertools
import random

from treedrive.core.recontact import CAP_ROUNDS, FORGET_AFTER, JITTER, Recontact

A = ("10.0.0.1", 9000)
B = ("10.0.0.2", 9000)
WELL_KNOWN = ("10.0.0.9", 9000)
INTERVAL = 10.0


def policy(per_round: int = 3, keep: int = 64) -> Recontact:
    return Recontact(INTERVAL, random.Random(7), keep=keep, per_round=per_round)


def tries(r: Recontact, address: tuple[str, int], until: float, step: float = 0.5) -> list[float]:
    """The times (stepping by ``step`` from 0) at which ``address`` is tried, nothing tracked."""
    out: list[float] = []
    t = 0.0
    while t <= until:
        if address in r.due(t, ()):
            out.append(t)
        t += step
    return out


def test_a_dropped_peer_that_never_answered_is_not_tried() -> None:
    r = policy()
    assert not r.dropped(A, 0.0)
    assert r.pending() == []
    assert tries(r, A, 100.0) == []


def test_a_dropped_peer_is_tried_after_an_interval_then_at_most_every_cap_rounds() -> None:
    r = policy()
    r.answered(A)
    assert r.dropped(A, 0.0)
    times = tries(r, A, 200.0)
    assert times, "never tried"
    assert JITTER * INTERVAL <= times[0] <= INTERVAL + 0.5
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps
    assert max(gaps) <= CAP_ROUNDS * INTERVAL + 0.5
    assert min(gaps) >= JITTER * INTERVAL - 0.5  # slow: never more than once per half interval
    assert len(times) <= 200.0 / (JITTER * INTERVAL) + 1


def test_found_again_it_leaves_the_list() -> None:
    r = policy()
    r.answered(A)
    r.dropped(A, 0.0)
    assert r.due(INTERVAL + 1, [A]) == []
    assert r.pending() == []
    assert tries(r, A, 100.0) == []


def test_a_dropped_peer_is_forgotten_after_a_while_a_well_known_host_never() -> None:
    r = policy()
    r.well_known([WELL_KNOWN], 0.0)
    r.answered(A)
    r.dropped(A, 0.0)
    late = FORGET_AFTER + 1
    assert r.due(late, ()) == [WELL_KNOWN]
    assert r.pending() == [WELL_KNOWN]


def test_well_known_hosts_are_left_out_when_asked_and_while_tracked() -> None:
    r = policy()
    r.well_known([WELL_KNOWN], 0.0)
    assert r.due(1.0, (), well_known=False) == []
    assert r.due(1.0, [WELL_KNOWN]) == []
    assert r.due(1.0 + INTERVAL, ()) == [WELL_KNOWN]
    # back-off started over when it was tracked, and grows again from there
    assert r.due(1.0 + INTERVAL + 0.1, ()) == []


def test_never_more_than_per_round_and_every_address_gets_its_turn() -> None:
    r = policy(per_round=2)
    many = [(f"10.1.0.{i}", 9000) for i in range(20)]
    for address in many:
        r.answered(address)
        r.dropped(address, 0.0)
    seen: set[tuple[str, int]] = set()
    t = 0.0
    while t < 40 * INTERVAL:
        chosen = r.due(t, ())
        assert len(chosen) <= 2
        seen.update(chosen)
        t += INTERVAL
    assert seen == set(many)


def test_the_list_is_bounded_the_oldest_dropped_go_first() -> None:
    r = policy(keep=4)
    r.well_known([WELL_KNOWN], 0.0)
    many = [(f"10.1.0.{i}", 9000) for i in range(10)]
    for i, address in enumerate(many):
        r.answered(address)
        r.dropped(address, float(i))
    assert r.pending() == [WELL_KNOWN, *many[-4:]]


def test_jitter_spreads_the_nodes_of_one_side() -> None:
    firsts = set()
    for seed in range(20):
        r = Recontact(INTERVAL, random.Random(seed))
        r.answered(A)
        r.dropped(A, 0.0)
        firsts.add(tries(r, A, 2 * INTERVAL, step=0.1)[0])
    assert len(firsts) > 5


def test_found_gives_the_dropped_addresses_tracked_again() -> None:
    r = policy()
    r.well_known([WELL_KNOWN], 0.0)
    r.answered(A)
    r.answered(B)
    r.dropped(A, 0.0)
    r.dropped(B, 0.0)
    assert r.found([A, WELL_KNOWN]) == [A]
    assert r.pending() == [WELL_KNOWN, B]
