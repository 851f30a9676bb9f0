"""The decisions of a ranged download (``treedrive.core.scheduler``), with no sockets, no
threads and no event loop: time is a number passed in, chunks are a list of prefixes."""

from __future__ import annotations

import pytest

from treedrive.core.model import MEGABYTE
from treedrive.core.scheduler import (
    BACKOFF_MAX,
    MAX_CHUNK,
    MIB,
    MIN_CHUNK,
    TAIL,
    TAKE_OVER_AFTER,
    TAKE_OVER_POLL,
    Blame,
    Disagrees,
    HolderBook,
    LyingHolder,
    Pass,
    Range,
    Scheduler,
    adopt_size,
    check_size,
    chunk_size_for,
)

CHUNK = 8 * MIB


class Chunks:
    """What is on disk of each chunk of a file of ``count`` whole chunks."""

    def __init__(self, count: int, have: dict[int, int] | None = None) -> None:
        self.count = count
        self.have = [(have or {}).get(c, 0) for c in range(count)]

    def span(self, chunk: int) -> tuple[int, int]:
        return chunk * CHUNK, CHUNK

    def complete(self, chunk: int) -> bool:
        return self.have[chunk] >= CHUNK


def a_pass(
    holders: list[str],
    count: int,
    max_inflight: int = 4,
    chunks: Chunks | None = None,
    avoid: str | None = None,
    stall_timeout: float = 10.0,
) -> tuple[Scheduler, Pass, Chunks]:
    chunks = chunks or Chunks(count)
    sched = Scheduler(HolderBook(holders), max_inflight, stall_timeout)
    return sched, sched.begin(range(count), chunks, avoid), chunks


def given(ranges: list[Range]) -> list[tuple[str, int]]:
    return [(r.peer, r.chunk) for r in ranges]


# -- assignment ------------------------------------------------------------------------------------
def test_each_holder_gets_one_range_lowest_chunk_first_in_holder_order() -> None:
    _, p, _ = a_pass(["a", "b", "c"], 6)
    assert given(p.assign(["a", "b", "c"], 0.0)) == [("a", 0), ("b", 1), ("c", 2)]
    assert list(p.pending) == [3, 4, 5]
    assert p.assign(["a", "b", "c"], 0.1) == []  # one range at a time each


def test_at_most_max_inflight_ranges_in_all() -> None:
    _, p, _ = a_pass(["a", "b", "c"], 6, max_inflight=2)
    assert given(p.assign(["a", "b", "c"], 0.0)) == [("a", 0), ("b", 1)]
    assert len(p.inflight) == 2


def test_a_range_keeps_its_start_and_what_is_left_of_its_chunk() -> None:
    _, p, _ = a_pass(["a"], 2, chunks=Chunks(2, {0: 3 * MIB}))
    (r,) = p.assign(["a"], 5.0)
    assert (r.chunk, r.start, r.left, r.started) == (0, 3 * MIB, CHUNK - 3 * MIB, 5.0)


def test_the_least_busy_holder_comes_first_then_the_one_given_fewest_chunks() -> None:
    sched, _, chunks = a_pass(["a", "b"], 4)
    for c in (0, 1):
        sched.blame.sent(c, "a")  # "a" already sent two chunks in this run
    p = sched.begin(range(2, 4), chunks)
    assert given(p.assign(["a", "b"], 0.0)) == [("b", 2), ("a", 3)]


def test_a_range_in_its_tail_lets_its_holder_take_the_next() -> None:
    _, p, _ = a_pass(["a", "b"], 4)
    first = p.assign(["a", "b"], 0.0)
    a_range = first[0]
    assert not p.progress(a_range.ticket, CHUNK - TAIL - 1)  # not yet in its last TAIL bytes
    assert p.assign(["a", "b"], 0.1) == []
    assert p.progress(a_range.ticket, CHUNK - TAIL)  # just entered its tail: say so once
    assert not p.progress(a_range.ticket, CHUNK - TAIL + 1)
    assert given(p.assign(["a", "b"], 0.2)) == [("a", 2)]
    assert p.assign(["a", "b"], 0.3) == []  # its new range counts again


def test_progress_of_an_unknown_range_is_ignored() -> None:
    _, p, _ = a_pass(["a"], 1)
    assert not p.progress(99, CHUNK)


def test_avoid_never_gets_a_range() -> None:
    _, p, _ = a_pass(["a", "b"], 3, avoid="a")
    assert given(p.assign(["a", "b"], 0.0)) == [("b", 0)]
    assert p.usable == ["b"]


# -- settling --------------------------------------------------------------------------------------
def test_failed_and_cut_ranges_go_back_to_the_front_in_chunk_order() -> None:
    _, p, chunks = a_pass(["a", "b", "c", "d"], 6)
    r0, r1, r2, r3 = p.assign(["a", "b", "c", "d"], 0.0)
    chunks.have[r2.chunk] = CHUNK  # cut, but whole after all
    chunks.have[r3.chunk] = CHUNK
    p.settle({r3.ticket: "ok", r1.ticket: "cut", r2.ticket: "cut", r0.ticket: "failed"})
    assert list(p.pending) == [0, 1, 4, 5]
    assert p.inflight == {}


def test_a_pass_is_busy_until_nothing_is_pending_or_in_flight() -> None:
    _, p, _ = a_pass(["a"], 1)
    assert p.busy
    (r,) = p.assign(["a"], 0.0)
    assert p.busy
    p.settle({r.ticket: "ok"})
    assert not p.busy


# -- take-over -------------------------------------------------------------------------------------
def slow_and_idle(
    slow_done: int = MIB, fast_speed: float = 100 * MIB
) -> tuple[Scheduler, Pass, Chunks, int]:
    """``slow`` has chunk 0 in flight (``slow_done`` bytes in 1 s), ``fast`` is idle and sent its
    last whole range at ``fast_speed``; nothing is pending."""
    sched, p, chunks = a_pass(["slow", "fast"], 1)
    sched.observe("fast", int(fast_speed), 1.0)
    (r,) = p.assign(["slow", "fast"], 0.0)
    p.progress(r.ticket, slow_done)
    chunks.have[0] = slow_done
    return sched, p, chunks, r.ticket


def test_an_idle_fast_holder_takes_over_the_rest_of_a_slow_range() -> None:
    sched, p, _, ticket = slow_and_idle()
    cut = p.take_over(1.0, ended=())
    assert cut is not None
    assert (cut.ticket, cut.chunk, cut.slow, cut.helper) == (ticket, 0, "slow", "fast")
    assert cut.left == CHUNK - MIB
    assert cut.rate == pytest.approx(MIB)
    assert sched.not_from == {0: "slow"}
    assert p.take_over(2.0, ended=()) is None  # never twice a chunk


def test_no_take_over_before_the_range_ran_long_enough() -> None:
    _, p, _, _ = slow_and_idle()
    assert p.take_over(TAKE_OVER_AFTER - 0.01, ended=()) is None
    assert p.take_over(TAKE_OVER_AFTER, ended=()) is not None


def test_no_take_over_when_the_helper_would_not_be_twice_as_fast() -> None:
    _, p, _, _ = slow_and_idle(slow_done=MIB, fast_speed=1.9 * MIB)
    assert p.take_over(1.0, ended=()) is None
    _, p, _, _ = slow_and_idle(slow_done=MIB, fast_speed=2.0 * MIB)
    assert p.take_over(1.0, ended=()) is not None


def test_no_take_over_while_chunks_are_pending_or_of_an_ended_range() -> None:
    sched, p, _ = a_pass(["slow", "fast"], 3, max_inflight=1)
    sched.observe("fast", 100 * MIB, 1.0)
    (r,) = p.assign(["slow", "fast"], 0.0)
    p.progress(r.ticket, MIB)
    assert p.pending
    assert p.take_over(5.0, ended=()) is None
    _, p, _, ticket = slow_and_idle()
    assert p.take_over(5.0, ended=[ticket]) is None


def test_no_take_over_without_an_idle_holder_of_known_speed() -> None:
    _, p, _ = a_pass(["slow", "fast"], 1)
    (r,) = p.assign(["slow", "fast"], 0.0)
    p.progress(r.ticket, MIB)
    assert p.take_over(5.0, ended=()) is None  # "fast" never sent a whole range
    assert p.wait_timeout() == TAKE_OVER_POLL  # but it is idle: look again soon


def test_no_quick_look_while_every_holder_is_busy_or_chunks_are_pending() -> None:
    _, p, _ = a_pass(["a", "b"], 2, max_inflight=1)
    p.assign(["a", "b"], 0.0)
    assert p.wait_timeout() is None  # "b" is idle, but chunk 1 is pending
    _, p, _ = a_pass(["a", "b"], 2)
    p.assign(["a", "b"], 0.0)
    assert p.wait_timeout() is None  # both busy


def test_a_chunk_taken_over_never_goes_back_to_the_slow_holder_unless_it_is_alone() -> None:
    sched, p, chunks, ticket = slow_and_idle()
    assert p.take_over(1.0, ended=()) is not None
    p.settle({ticket: "cut"})
    assert list(p.pending) == [0]  # what is left of it
    assert given(p.assign(["slow", "fast"], 1.1)) == [("fast", 0)]
    alone = sched.begin([0], chunks)
    assert given(alone.assign(["slow"], 2.0)) == [("slow", 0)]


def test_the_slow_holder_first_in_line_skips_the_chunk_taken_from_it() -> None:
    sched, _, chunks = a_pass(["slow", "fast"], 2)
    sched.not_from[0] = "slow"
    p = sched.begin([0, 1], chunks)
    assert given(p.assign(["slow", "fast"], 0.0)) == [("slow", 1), ("fast", 0)]


def test_the_fastest_idle_holder_is_the_helper() -> None:
    sched, p, _ = a_pass(["slow", "quick", "quicker"], 1)
    sched.observe("quick", 50 * MIB, 1.0)
    sched.observe("quicker", 100 * MIB, 1.0)
    (r,) = p.assign(["slow", "quick", "quicker"], 0.0)
    p.progress(r.ticket, MIB)
    cut = p.take_over(1.0, ended=())
    assert cut is not None
    assert cut.helper == "quicker"


def test_a_range_of_no_bytes_says_nothing_of_its_holders_speed() -> None:
    sched = Scheduler(HolderBook(["a"]), 4, 10.0)
    sched.observe("a", 0, 1.0)
    sched.observe("a", 100, 0.0)
    assert sched.speed == {}
    sched.observe("a", 100, 2.0)
    assert sched.speed == {"a": 50.0}


# -- back-off and stalls ---------------------------------------------------------------------------
def test_back_off_doubles_from_half_a_second_up_to_its_cap() -> None:
    book = HolderBook(["a", "b"])
    waits = [book.back_off("a", 100.0) for _ in range(10)]
    assert waits[:4] == [0.5, 1.0, 2.0, 4.0]
    assert waits[-1] == BACKOFF_MAX == 30.0
    assert max(waits) == BACKOFF_MAX
    assert book.usable(100.0 + BACKOFF_MAX - 0.01) == ["b"]
    assert book.usable(100.0 + BACKOFF_MAX) == ["a", "b"]


def test_excluded_holders_are_not_usable_until_included() -> None:
    book = HolderBook(["a", "b"])
    book.exclude("a")
    book.add("c")
    book.add("a")  # already known: keeps its place
    assert book.usable(0.0) == ["b", "c"]
    book.include("a")
    assert book.usable(0.0) == ["a", "b", "c"]


def test_a_pass_with_no_range_in_flight_stalls_after_the_timeout() -> None:
    _, p, _ = a_pass(["a"], 1, stall_timeout=10.0)
    assert p.assign([], 0.0) == []
    assert not p.stalled(100.0)
    assert not p.stalled(110.0)
    assert p.stalled(110.1)
    p.assign(["a"], 111.0)  # a range in flight: the clock starts again
    assert not p.stalled(200.0)
    assert not p.stalled(210.0)
    assert p.stalled(210.1)


# -- blame -----------------------------------------------------------------------------------------
def test_the_holder_that_sent_the_most_chunks_is_suspected_first() -> None:
    blame = Blame()
    for chunk, peer in [(0, "a"), (1, "b"), (2, "b"), (3, "c"), (3, "b"), (2, "a")]:
        blame.sent(chunk, peer)
    assert blame.suspects() == ["b", "a", "c"]
    assert blame.chunks_of("b") == [1, 2, 3]
    assert blame.peers() == {"a", "b", "c"}
    blame.forget([1, 2, 3])
    assert blame.suspects() == ["a"]
    assert blame.chunks_of("b") == []


def test_a_pass_records_who_was_asked_for_each_chunk() -> None:
    sched, p, _ = a_pass(["a", "b"], 2)
    p.assign(["a", "b"], 0.0)
    assert sched.blame.sources == {0: {"a"}, 1: {"b"}}


# -- sizes -----------------------------------------------------------------------------------------
def no_room() -> int:
    raise AssertionError("free space is not asked for")


def test_a_verified_size_is_a_fact() -> None:
    check_size(1234, 1234, 99.0, no_room)
    with pytest.raises(LyingHolder, match="it has 1234"):
        check_size(1235, 1234, 99.0, no_room)


def test_a_size_against_the_record_disagrees() -> None:
    check_size(10 * MEGABYTE, None, 10.0, no_room)
    with pytest.raises(Disagrees) as disagrees:
        check_size(50 * MEGABYTE, None, 10.0, no_room)
    assert disagrees.value.size == 50 * MEGABYTE


def test_with_a_silent_record_a_size_over_the_free_disk_is_not_believed() -> None:
    check_size(1000, None, float("inf"), lambda: 1000)
    with pytest.raises(LyingHolder, match="free"):
        check_size(1001, None, float("inf"), lambda: 1000)


def test_adopt_size_takes_a_majority_of_two_or_more() -> None:
    told = {"a": 7000, "b": 7000, "c": 9000}
    assert adopt_size(told, lambda: 10**9, bound=100) == 7000
    assert adopt_size({"a": 7000, "b": 9000}, lambda: 10**9, bound=100) is None
    assert adopt_size({"a": 7000, "b": 7000, "c": 9000, "d": 9000}, lambda: 10**9, 100) is None


def test_adopt_size_takes_one_within_the_records_bound() -> None:
    assert adopt_size({"a": 7000}, lambda: 10**9, bound=7000) == 7000
    assert adopt_size({"a": 7001}, lambda: 10**9, bound=7000) is None


def test_adopt_size_never_takes_more_than_the_free_disk() -> None:
    told = {"a": 7000, "b": 7000, "c": 7000}
    assert adopt_size(told, lambda: 6999, bound=100) is None
    assert adopt_size({}, no_room, bound=100) is None


@pytest.mark.parametrize(
    ("size", "chunk"),
    [
        (0, MIN_CHUNK),
        (16 * MIN_CHUNK - 1, MIN_CHUNK),
        (16 * 10 * MIB + 5, 10 * MIB),
        (16 * MAX_CHUNK * 4, MAX_CHUNK),
    ],
)
def test_chunk_size_follows_the_file_size_in_whole_mib(size: int, chunk: int) -> None:
    assert chunk_size_for(size) == chunk
