"""The admission policy on its own (no sockets): who gives way at the cap, the per-address dial
backoff, and the tally that keeps logs from flooding."""

from __future__ import annotations

import pytest

from treedrive.transport.admission import (
    FREE,
    PROBE,
    ConnState,
    DialBackoff,
    Tally,
    choose_victim,
)

GOOD = 64 * 1024


def test_least_progress_gives_way() -> None:
    conns = [
        ("gossip", ConnState(started=9.0, received=120)),  # 120 B/s
        ("trickle", ConnState(started=0.0, received=200)),  # 20 B/s
        ("slowish", ConnState(started=5.0, received=250)),  # 50 B/s
    ]
    assert choose_victim(conns, now=10.0, grace=0.5, good_rate=GOOD) == "trickle"


def test_young_connections_give_way_only_when_no_older_one_may() -> None:
    conns = [("new", ConnState(started=9.8)), ("old", ConnState(started=0.0, received=10_000))]
    assert choose_victim(conns, now=10.0, grace=0.5, good_rate=GOOD) == "old"
    # Only young ones: the oldest of them gives way (not the new one being refused).
    young = [
        ("newest", ConnState(started=9.9)),
        ("oldest", ConnState(started=9.6, received=200)),
        ("middle", ConnState(started=9.7)),
    ]
    assert choose_victim(young, now=10.0, grace=0.5, good_rate=GOOD) == "oldest"
    assert choose_victim(young[:1], now=10.0, grace=0.5, good_rate=GOOD) == "newest"


def test_a_flood_of_young_connections_never_evicts_a_whole_message() -> None:
    # 1,500 new connections a second: every open one is younger than the grace. The honest
    # GOSSIP, whole and being handled, is protected; a trickler gives way instead.
    conns = [
        ("gossip", ConnState(started=9.55, received=120, protected=True)),
        ("trickle", ConnState(started=9.7, received=200)),
        ("short", ConnState(started=9.9)),
    ]
    assert choose_victim(conns, now=10.0, grace=0.5, good_rate=GOOD) == "trickle"


def test_the_new_one_is_refused_only_when_none_may_give_way() -> None:
    fast = ConnState(started=9.9, received=300, body_started=9.9, body_received=GOOD)
    conns = [
        ("upload", ConnState(started=0.0, received=100, protected=True)),
        ("handled", ConnState(started=9.9, received=100, protected=True)),
        ("fast", fast),
    ]
    assert choose_victim(conns, now=10.0, grace=0.5, good_rate=GOOD) is None
    conns.append(("idle", ConnState(started=9.95)))
    assert choose_victim(conns, now=10.0, grace=0.5, good_rate=GOOD) == "idle"


def test_protected_connections_never_give_way() -> None:
    upload = ConnState(started=0.0, received=100, protected=True)
    assert choose_victim([("upload", upload)], now=10.0, grace=0.5, good_rate=GOOD) is None


def upload(started: float, sent: int = 0) -> ConnState:
    return ConnState(
        started=started, received=100, protected=True, upload_started=started, sent=sent
    )


def test_uploads_beyond_half_the_cap_give_way_slowest_first() -> None:
    # Four uploads at a cap of 4 (half: 2): the reader that took the fewest bytes per second of
    # the upload gives way, a stalled one before a slow one, a slow one before a fast one.
    conns = [
        ("fast", upload(0.0, sent=50_000_000)),
        ("slow", upload(0.0, sent=120_000)),  # 12 KiB/s: never stalled, still the slowest
        ("stalled", upload(5.0, sent=4096)),
        ("slowish", upload(2.0, sent=800_000)),
    ]
    assert choose_victim(conns, 10.0, 0.5, GOOD, max_uploads=2, upload_grace=2.0) == "stalled"
    assert choose_victim(conns[:2], 10.0, 0.5, GOOD, max_uploads=1, upload_grace=2.0) == "slow"
    # Within their share, uploads are protected, as before.
    assert choose_victim(conns, 10.0, 0.5, GOOD, max_uploads=4, upload_grace=2.0) is None
    assert choose_victim(conns, 10.0, 0.5, GOOD) is None


def test_an_upload_just_begun_does_not_give_way() -> None:
    conns = [("new", upload(9.5)), ("newer", upload(9.9))]
    assert choose_victim(conns, 10.0, 0.5, GOOD, max_uploads=0, upload_grace=2.0) is None
    conns.append(("older", upload(7.0, sent=10_000_000)))
    assert choose_victim(conns, 10.0, 0.5, GOOD, max_uploads=0, upload_grace=2.0) == "older"


def test_a_slow_message_gives_way_before_an_upload_and_an_upload_before_a_young_message() -> None:
    uploads = [("up1", upload(0.0)), ("up2", upload(1.0))]
    trickle = ("trickle", ConnState(started=5.0, received=10))
    young = ("young", ConnState(started=9.9))
    handled = ("handled", ConnState(started=9.9, received=100, protected=True))
    args = (10.0, 0.5, GOOD, 1, 2.0)
    assert choose_victim([*uploads, trickle, young, handled], *args) == "trickle"
    assert choose_victim([*uploads, young, handled], *args) == "up1"
    assert choose_victim([uploads[0], young, handled], *args) == "young"


def test_a_fast_body_never_gives_way_a_slow_one_does() -> None:
    fast = ConnState(started=0.0, received=300, body_started=9.0, body_received=GOOD * 2)
    slow = ConnState(started=0.0, received=GOOD * 3, body_started=0.0, body_received=GOOD * 3)
    assert choose_victim([("fast", fast)], now=10.0, grace=0.5, good_rate=GOOD) is None
    # slow: 3 * 64 KiB over 10 s is under the good rate: a candidate, whatever its total.
    assert choose_victim([("fast", fast), ("slow", slow)], 10.0, 0.5, GOOD) == "slow"


def test_ties_go_to_the_oldest() -> None:
    conns = [("b", ConnState(started=2.0)), ("a", ConnState(started=1.0))]
    assert choose_victim(conns, now=10.0, grace=0.5, good_rate=GOOD) == "a"


def test_backoff_allows_at_most_three_dials_a_minute_to_a_refusing_address() -> None:
    backoff = DialBackoff()
    addr = ("127.0.0.1", 22)
    dials: list[float] = []
    t = 0.0
    while t < 300:
        for _ in range(5):  # many wish to dial at once: one probe goes
            if backoff.take(addr, t) is not None:
                dials.append(t)
        if backoff.probing(addr):
            backoff.failed(addr, t + 0.05)
        t += 0.1
    for start in dials:
        assert len([d for d in dials if start <= d < start + 60]) <= 3
    assert dials[:3] == pytest.approx([0.0, 1.1, 6.2])  # quick retries: a peer restarting
    assert len(dials) >= 6  # it keeps trying, once a minute in the end
    assert dials[-1] - dials[-2] <= 60.2


def test_one_probe_at_a_time_until_an_address_answers() -> None:
    backoff = DialBackoff()
    addr = ("10.0.0.1", 8270)
    assert backoff.take(addr, 0.0) == PROBE
    assert backoff.take(addr, 0.0) is None  # the others wait for the probe's outcome
    assert backoff.probing(addr)
    backoff.succeeded(addr)
    assert [backoff.take(addr, 0.0) for _ in range(3)] == [FREE] * 3
    # Free dials that fail together count as one failure.
    for _ in range(3):
        backoff.failed(addr, 1.0)
    assert not backoff.allowed(addr, 1.5)
    assert backoff.take(addr, 2.0) == PROBE


def test_backoff_success_forgets_and_entries_are_bounded() -> None:
    backoff = DialBackoff(max_entries=3)
    backoff.take(("h", 1), 0.0)
    backoff.failed(("h", 1), 0.0)
    assert not backoff.allowed(("h", 1), 0.5)
    backoff.succeeded(("h", 1))
    assert backoff.allowed(("h", 1), 0.5)
    for port in range(10):
        backoff.take(("h", port), 0.0)
        backoff.failed(("h", port), 0.0)
    assert len(backoff) == 3
    assert backoff.take(("h", 0), 0.5) == PROBE  # forgotten: the oldest went first
    assert backoff.take(("h", 9), 0.5) is None
    assert backoff.take(("other", 1), 0.5) == PROBE


def test_tally_logs_a_few_details_then_one_summary_a_second() -> None:
    tally = Tally(every=1.0, detail=3)
    lines = 0
    t = 0.0
    for _ in range(10_000):  # 10,000 events over 10 s
        if tally.note("refused", t):
            lines += 1
        if tally.summary(t) is not None:
            lines += 1
        t += 0.001
    assert tally.totals["refused"] == 10_000
    assert lines <= 10 * 4 + 4
    summary = Tally(every=1.0, detail=0)
    summary.note("refused", 0.0)
    summary.note("evicted", 0.5)
    assert summary.summary(0.5) is None
    assert summary.summary(1.0) == "1 evicted, 1 refused"
    assert summary.summary(5.0) is None


def test_tally_gives_details_when_quiet() -> None:
    tally = Tally(every=1.0, detail=2)
    assert tally.note("timeout", 0.0)
    assert tally.note("timeout", 0.1)
    assert not tally.note("timeout", 0.2)
    assert tally.summary(1.2) == "1 timeout"
    assert tally.note("timeout", 5.0)


def test_a_sign_of_life_ends_the_backoff_but_not_a_probe_under_way() -> None:
    backoff = DialBackoff()
    addr = ("10.0.0.2", 9000)
    for t in (0.0, 2.0, 10.0):  # three failed probes: the next is allowed 54 s later
        assert backoff.take(addr, t) == PROBE
        backoff.failed(addr, t)
    assert not backoff.allowed(addr, 20.0)
    backoff.heard(addr)  # a GOSSIP from its own IP: the partition healed
    assert backoff.take(addr, 20.0) == PROBE
    backoff.heard(addr)  # the probe is out: the others still wait for it
    assert backoff.take(addr, 20.0) is None
    backoff.succeeded(addr)
    assert backoff.take(addr, 20.0) == FREE
