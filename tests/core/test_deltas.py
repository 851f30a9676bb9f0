"""Catalogue sync by deltas (core/deltas.py): pure, no sockets."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from treedrive.core.deltas import WINDOW, Change, ChangeLog, Sync, View, Views
from treedrive.core.deltasync import Catalogue
from treedrive.core.model import FileMeta


def meta(owner: str, n: int) -> FileMeta:
    fid = hashlib.sha256(f"{owner}/{n}".encode()).hexdigest()
    return FileMeta(fid, f"f{n}", 0.1, owner, 1795617115 + n)


def test_changes_are_numbered_and_a_peer_gets_only_those_since_its_number() -> None:
    log = ChangeLog("a")
    c1, c2 = log.add(meta("a", 1)), log.add(meta("a", 2))
    assert (c1 and c1.seq, c2 and c2.seq) == (1, 2)
    assert log.add(meta("a", 1)) is None  # the same record again is no change
    gone = log.delete(meta("a", 1).file_id)
    assert gone is not None
    assert gone.deleted
    assert gone.seq == 3
    assert log.delete(meta("a", 1).file_id) is None
    sync = log.since(2)
    assert not sync.snapshot
    assert [c.seq for c in sync.changes] == [3]
    assert sync.head == 3


def test_a_new_or_too_far_behind_peer_gets_a_snapshot() -> None:
    log = ChangeLog("a", limit=4)
    for i in range(10):
        log.add(meta("a", i))
    log.delete(meta("a", 0).file_id)
    assert log.since(None).snapshot
    assert log.since(2).snapshot  # the log no longer reaches back to 2
    snap = log.since(None)
    assert {c.file_id for c in snap.changes} == {meta("a", i).file_id for i in range(1, 10)}
    assert not log.since(8).snapshot
    assert log.since(99).snapshot  # a number this node never reached: start again


def test_answers_are_paged_and_the_asker_catches_up_page_by_page() -> None:
    log = ChangeLog("a", limit=8, page=3)
    for i in range(20):
        log.add(meta("a", i))
    view = View()
    for _ in range(20):
        sync = log.since(view.seq if view.seq else None, view.asof)
        assert len(sync.changes) <= 3
        view.take(sync)
        if view.seq == log.seq:
            break
    assert view.seq == log.seq == 20
    assert {f for f in view.files if view.holds(f)} == {m.file_id for m in log.held()}


def test_a_delete_while_paging_past_the_log_restarts_the_snapshot() -> None:
    log = ChangeLog("a", limit=2, page=3)
    for i in range(8):
        log.add(meta("a", i))
    view = View()
    view.take(log.since(None))
    assert view.seq == 3
    log.delete(meta("a", 0).file_id)  # listed in the first page
    log.add(meta("a", 8))
    log.add(meta("a", 9))  # the log no longer reaches the delete
    sync = log.since(view.seq)
    assert sync.snapshot
    assert sync.since == 0
    for _ in range(10):
        view.take(log.since(view.seq, view.asof))
    assert view.seq == log.seq
    assert {f for f in view.files if view.holds(f)} == {m.file_id for m in log.held()}


def test_a_snapshot_drops_what_the_origin_no_longer_holds() -> None:
    log = ChangeLog("a", limit=2)
    view = View()
    for i in range(3):
        log.add(meta("a", i))
    view.take(log.since(None))
    log.delete(meta("a", 0).file_id)
    for i in range(3, 6):
        log.add(meta("a", i))
    sync = log.since(view.seq)
    assert sync.snapshot
    new = view.take(sync)
    assert not view.holds(meta("a", 0).file_id)
    assert any(c.deleted and c.file_id == meta("a", 0).file_id for c in new)


def test_a_relayed_old_add_never_brings_back_a_delete() -> None:
    view = View()
    add = Change("a", 1, meta("a", 1).file_id, meta("a", 1))
    tomb = Change("a", 2, add.file_id)
    assert view.apply(tomb)
    assert not view.apply(add)
    assert not view.holds(add.file_id)
    assert view.seq == 0
    assert view.head == 2  # a gap: 1 is missing
    views = Views()
    views.apply(tomb)
    assert views.behind == {"a": None}


def test_a_delta_that_would_leave_a_gap_is_not_taken() -> None:
    view = View()
    sync = Sync("a", since=5, upto=7, head=7, changes=(Change("a", 6, "x" * 64, None),))
    assert view.take(sync) == []
    assert view.seq == 0


def test_views_share_a_start_and_copy_it_on_write() -> None:
    base_view = View(
        1,
        {meta("a", 1).file_id: Change("a", 1, meta("a", 1).file_id, meta("a", 1))},
        1,
        shared=True,
    )
    base = {"a": base_view}
    one, two = Views(base), Views(base)
    one.apply(Change("a", 2, meta("a", 2).file_id, meta("a", 2)))
    assert one.holds("a", meta("a", 2).file_id)
    assert not two.holds("a", meta("a", 2).file_id)
    assert len(base_view.files) == 1


def test_views_are_bounded() -> None:
    views = Views(limit=3)
    for i in range(5):
        views.heard(f"o{i}", 1)
    assert len(views.behind) == 3


def test_an_owner_delete_makes_every_holder_drop_and_log_it() -> None:
    owner, holder, other = Catalogue("o"), Catalogue("h"), Catalogue("x")
    m = meta("o", 1)
    add = owner.add(m)
    holder.add(m)
    assert add is not None
    holder.news(add)
    other.news(add)
    tomb = owner.delete(m.file_id)
    assert tomb is not None
    follow = holder.news(tomb)
    assert tomb in follow
    mine = [c for c in follow if c.origin == "h"]
    assert mine
    assert mine[0].deleted
    assert not holder.log.holds(m.file_id)
    assert other.news(tomb) == [tomb]
    assert not other.lists(["o", "h"], m.file_id) or other.views.holds("h", m.file_id)
    other.news(mine[0])
    assert not other.lists(["o", "h"], m.file_id)
    assert holder.add(m) is None  # deleted by its owner: never held again


def test_a_delete_from_a_non_owner_holder_does_not_spread_to_other_holders() -> None:
    a, b = Catalogue("a"), Catalogue("b")
    m = meta("o", 1)
    a.add(m)
    b.add(m)
    tomb = a.delete(m.file_id)
    assert tomb is not None
    assert b.news(tomb) == [tomb]
    assert b.log.holds(m.file_id)


def test_a_partitioned_holder_learns_the_owner_delete_by_sync() -> None:
    owner, holder = Catalogue("o"), Catalogue("h")
    m = meta("o", 1)
    holder.take(owner.answer(None))
    add = owner.add(m)
    holder.add(m)
    assert add is not None
    holder.news(add)
    owner.delete(m.file_id)  # the news never reaches the holder
    for i in range(2, 5):
        owner.add(meta("o", i))
    holder.heard("o", owner.head())
    assert holder.behind() == ["o"]
    follow = holder.take(owner.answer(holder.have("o")))
    assert not holder.log.holds(m.file_id)
    assert follow
    assert follow[0].deleted
    assert holder.behind() == []


ops = st.lists(st.tuples(st.booleans(), st.integers(0, 6)), max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops, st.integers(0, 40), st.randoms(use_true_random=False))
def test_any_order_of_relays_and_syncs_converges_to_the_origin(
    steps: list[tuple[bool, int]], cut: int, rnd: object
) -> None:
    """Changes relayed in any order, some lost, then one sync: the view is what the origin holds."""
    log = ChangeLog("a", limit=5, page=4)
    changes = []
    for add, n in steps:
        c = log.add(meta("a", n)) if add else log.delete(meta("a", n).file_id)
        if c is not None:
            changes.append(c)
    relayed = changes[:cut]
    rnd.shuffle(relayed)  # type: ignore[attr-defined]
    view = View()
    for c in relayed:
        view.apply(c)
    for _ in range(50):
        if view.seq == log.seq and view.head <= view.seq:
            break
        view.take(log.since(view.seq if view.seq else None, view.asof))
    assert view.seq == log.seq
    assert {f for f in view.files if view.holds(f)} == {m.file_id for m in log.held()}


def test_a_peer_with_numbers_of_an_earlier_run_gets_a_whole_snapshot() -> None:
    before = Catalogue("a", epoch=1000)
    kept, dropped = before.add(meta("a", 1)), before.add(meta("a", 2))
    assert kept is not None
    assert dropped is not None
    assert dropped.seq == 1002
    b = Catalogue("b")
    b.take(before.answer(None))
    assert b.views.holds("a", meta("a", 2).file_id)
    # a restarts with a later epoch, holding only the first file
    after = Catalogue("a", epoch=5000)
    after.add(meta("a", 1))
    answer = after.answer(b.have("a"), b.asof("a"))
    assert answer.snapshot
    assert answer.since == 0
    b.take(answer)
    assert b.views.holds("a", meta("a", 1).file_id)
    assert not b.views.holds("a", meta("a", 2).file_id)


def test_the_journal_lists_every_change_of_others_that_was_new() -> None:
    a, b = Catalogue("a"), Catalogue("b")
    b.journal = []
    first = a.add(meta("a", 1))
    assert first is not None
    b.news(first)
    b.news(first)  # not new twice
    a.add(meta("a", 2))
    b.take(a.answer(b.have("a")))
    assert [c.file_id for c in b.journal] == [meta("a", 1).file_id, meta("a", 2).file_id]


def test_a_delete_the_store_refused_is_undone_by_restore() -> None:
    c = Catalogue("c")
    theirs = meta("a", 1)
    assert c.add(theirs) is not None
    first = Catalogue("a").add(theirs)
    assert first is not None
    c.news(first)
    dropped = c.news(Change("a", 2, theirs.file_id, None))  # the owner's tombstone
    assert [x.origin for x in dropped] == ["a", "c"]
    assert c.add(theirs) is None  # an owner-deleted file is not taken again...
    restored = c.restore(theirs)  # ...unless this node's store still holds it
    assert restored is not None
    assert c.log.holds(theirs.file_id)


# -- relayed change numbers and heads are claims: the origin's own word wins (THREATS.md) ------


def synced(epoch: int = 1000) -> tuple[Catalogue, Catalogue, FileMeta]:
    """Origin ``o`` holding one file, and ``n`` that took o's answer (o's own word)."""
    o, n = Catalogue("o", epoch=epoch), Catalogue("n")
    x = meta("o", 1)
    o.add(x)
    n.take(o.answer(None))
    assert n.views.holds("o", x.file_id)
    return o, n, x


def converge(o: Catalogue, n: Catalogue, rounds: int = 20) -> None:
    """n asks o while it is behind, as a node does."""
    for _ in range(rounds):
        if "o" not in n.behind():
            return
        n.take(o.answer(n.have("o"), n.asof("o")))
    assert "o" not in n.behind()


def listed(n: Catalogue) -> set[str]:
    view = n.views.get("o")
    assert view is not None
    return {f for f in view.files if view.holds(f)}


def test_a_forged_huge_number_relayed_before_the_origin_spoke_is_dropped_at_its_answer() -> None:
    o, n = Catalogue("o", epoch=1000), Catalogue("n")
    x = meta("o", 1)
    real = o.add(x)
    assert real is not None
    n.news(real)  # relayed: o has not spoken yet, so anything goes until its answer
    n.journal = []
    forged = replace(real, seq=2**60, meta=replace(x, file_name="forged"))
    assert n.news(forged) == [forged]
    o.delete(x.file_id)  # o's real later change
    converge(o, n)
    assert not n.views.holds("o", x.file_id)  # the delete is no longer hidden
    assert n.views.forged == 1
    assert n.journal[-1].file_id == x.file_id
    assert n.journal[-1].deleted
    later = o.add(meta("o", 2))  # and o's new record, relayed, is taken
    assert later is not None
    assert n.news(later) == [later]
    converge(o, n)
    assert listed(n) == {later.file_id}


def test_a_forged_number_within_the_window_does_not_hide_the_origins_later_delete() -> None:
    o, n, x = synced()
    forged = Change("o", o.head() + 5, x.file_id, replace(x, file_name="forged"))
    assert n.news(forged) == [forged]  # within the window: taken, and checked at the answer
    o.delete(x.file_id)
    n.heard("o", o.head())  # relayed
    converge(o, n)
    assert not n.views.holds("o", x.file_id)
    assert n.views.forged == 1


def test_what_a_forged_number_displaced_is_fetched_again_from_the_origin() -> None:
    o, n, x = synced()
    n.journal = []
    forged = Change("o", o.head() + 5, x.file_id, replace(x, file_name="forged"))
    n.news(forged)
    y = meta("o", 2)
    o.add(y)  # o's answer does not say what it holds of x...
    n.heard("o", o.head())
    n.take(o.answer(n.have("o"), n.asof("o")))
    assert n.views.forged == 1
    [retracted] = [c for c in n.journal if c.deleted]
    assert retracted.file_id == x.file_id
    assert retracted.retracted  # not the origin's delete: it never said so
    assert n.have("o") == 0  # ...so a snapshot from the start is asked for
    converge(o, n)
    view = n.views.get("o")
    assert view is not None
    assert view.files[x.file_id].meta == x  # o's own record again, not the forgery
    assert listed(n) == {x.file_id, y.file_id}
    tomb = o.delete(x.file_id)
    assert tomb is not None
    n.news(tomb)  # o's later changes of x are heard again
    assert listed(n) == {y.file_id}


def test_a_forged_add_of_the_origins_own_file_retracted_is_no_owner_delete() -> None:
    o, n, x = synced()
    assert n.add(x) is not None  # n holds a copy of o's file
    n.news(Change("o", o.head() + 5, x.file_id, x))
    n.heard("o", o.head(), own=True)  # o's own message: nothing past its head can be
    assert not n.views.holds("o", x.file_id)
    assert n.views.forged == 1
    assert n.log.holds(x.file_id)  # its copy is not dropped as if o had deleted x
    converge(o, n)
    assert listed(n) == {x.file_id}


def test_a_forged_head_beyond_the_window_is_ignored() -> None:
    o, n, _ = synced()
    far = o.head() + WINDOW + 1
    n.heard("o", far)
    y = meta("o", 2)
    assert n.news(Change("o", far, y.file_id, y)) == []  # neither stored nor spread
    assert not n.views.holds("o", y.file_id)
    assert n.views.dropped == 2
    view = n.views.get("o")
    assert view is not None
    assert view.head == o.head()  # not spread in heads either
    assert n.behind() == ["o"]  # o itself is asked, once...
    n.heard("o", o.head(), own=True)  # (its ack)
    assert n.behind() == []  # ...and the node is not left behind, asking again and again


def test_the_origins_own_head_replaces_a_relayed_one_and_unmasks_a_forged_run() -> None:
    o, n, x = synced()
    h = o.head()
    n.heard("o", h + 10)  # within the window: n asks o...
    assert n.behind() == ["o"]
    n.heard("o", h, own=True)  # ...and o's own message says there is nothing more
    assert n.behind() == []
    y = meta("o", 2)
    run = [Change("o", h + 1, x.file_id, None), Change("o", h + 2, y.file_id, y)]
    for c in run:  # a forged run that follows on: taken as without a gap
        n.news(c)
    assert n.have("o") == h + 2
    assert not n.views.holds("o", x.file_id)
    n.heard("o", h, own=True)
    assert n.views.forged == 2
    assert n.have("o") == 0  # what the run displaced: a snapshot from the start
    converge(o, n)
    assert listed(n) == {x.file_id}


def test_legitimate_progress_converges_within_the_window_and_beyond_it() -> None:
    o, n, _ = synced()
    for i in range(2, 700):  # within the window: relayed heads make n ask
        o.add(meta("o", i))
    n.heard("o", o.head())
    converge(o, n)
    assert listed(n) == {m.file_id for m in o.log.held()}
    for i in range(700, 3000):  # beyond it: the relayed head is dropped, o asked itself
        o.add(meta("o", i))
    n.heard("o", o.head())
    assert n.behind() == ["o"]
    converge(o, n, rounds=40)
    assert listed(n) == {m.file_id for m in o.log.held()}
    c = o.add(meta("o", 3000))  # and o's next change, relayed, is taken at once
    assert c is not None
    assert n.news(c) == [c]
    assert n.have("o") == o.head()


def test_a_restarted_origin_is_asked_and_its_new_numbers_taken() -> None:
    _, n, x = synced(epoch=1000)
    after = Catalogue("o", epoch=5_000_000)  # numbers after its new start time, far past
    y = meta("o", 2)
    after.add(x)
    c = after.add(y)
    assert c is not None
    assert n.news(c) == []  # past the last word + WINDOW: dropped...
    assert n.behind() == ["o"]  # ...but o is asked
    converge(after, n)
    assert listed(n) == {x.file_id, y.file_id}
    later = after.add(meta("o", 3))
    assert later is not None
    assert n.news(later) == [later]  # o's new numbers are taken once it spoke
    assert n.have("o") == after.head()
