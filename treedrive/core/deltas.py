"""Catalogue sync by deltas between TreeDrive nodes (issue 12, point 2): pure, no I/O, no clock.

Each node numbers the changes to what it holds (:class:`ChangeLog`): adding a file and deleting one
(a tombstone) each take the next sequence number. A peer that asks with the number it already has
gets only the changes since (:meth:`ChangeLog.since`), or a snapshot of what the node holds when
it asks for the first time or is further behind than the bounded log reaches. The receiving side
keeps, per origin, the last number it has without a gap and the origin's records as it knows them
(:class:`Views`); changes relayed by gossip (one change at a time, out of order) and answers to
its own requests both go through it. A change of a file wins over an older change of that file
from the same origin (a higher sequence number), so the order in which they arrive does not
matter, and a relayed old add never brings back a file deleted since.

One node's side of both, with the owner-delete rule, is :mod:`treedrive.core.deltasync`'s.
Everything a peer sends is a claim with limits (:data:`MAX_CHANGES` per answer,
:data:`MAX_ORIGINS` views); checking those limits on decoded input is
:mod:`treedrive.core.swimwire`'s. Relayed change numbers and heads are claims that the
origin's own word overrules (:meth:`View.take`, :meth:`View.stated`, :data:`WINDOW`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from treedrive.core.model import DeleteSignature, FileMeta

LOG_LIMIT = 1024
"""Changes a node keeps in its log: a peer further behind than that gets a snapshot."""
MAX_CHANGES = 512
"""Changes (or snapshot records) in one answer; a longer answer is cut, and the asker asks again
with the number it reached."""
MAX_ORIGINS = 65536
"""Origins whose records a node keeps (THREATS.md: a stranger must not grow this without bound)."""
WINDOW = LOG_LIMIT
"""How far past the origin's own last word (or the number held without a gap) a relayed change
or head may be: beyond its log, the origin's answer is a snapshot anyway. Past it, the claim is
dropped and the origin asked (one that made more changes, or restarted, is caught up with)."""


@dataclass(frozen=True, slots=True)
class Change:
    """Origin ``origin``'s change number ``seq``: it now holds ``meta`` (an add), or no longer holds
    ``file_id`` (``meta`` None: a tombstone)."""

    origin: str
    seq: int
    file_id: str
    meta: FileMeta | None = None
    signed: DeleteSignature | None = field(default=None, compare=False)
    """A tombstone of the origin's own file: its signature of the delete (PROTOCOL.md 2.8)."""
    retracted: bool = field(default=False, compare=False)
    """A tombstone this node made for a relayed add that the origin's answer showed forged: the
    origin never said it, so it only stops listing the origin as a holder (never an owner's
    delete). Never sent."""

    @property
    def deleted(self) -> bool:
        return self.meta is None


@dataclass(frozen=True, slots=True)
class Sync:
    """An origin's answer to "I have your changes up to ``since``". A delta lists the changes
    after ``since`` up to ``upto``; a snapshot (``snapshot``) lists the records the origin holds
    that were added after ``since`` and at or before ``upto``, and anything else the asker has of
    that origin in that range is gone. ``head`` is the origin's last number: ``upto < head`` means
    there is more to ask."""

    origin: str
    since: int
    upto: int
    head: int
    changes: tuple[Change, ...]
    snapshot: bool = False


class ChangeLog:
    """One node's numbered changes to what it holds, and what it holds now."""

    def __init__(
        self, origin: str, limit: int = LOG_LIMIT, page: int = MAX_CHANGES, epoch: int = 0
    ) -> None:
        self.origin = origin
        self.seq = epoch
        """Numbers start after ``epoch`` (a running node takes its start time: a peer that has
        numbers of an earlier run is before the first delete, and gets a whole snapshot)."""
        self.limit = limit
        self.page = page
        self._log: deque[Change] = deque(maxlen=limit)
        self.last_delete = epoch
        """The number of the latest delete (a snapshot from a number before it must start over)."""
        self._held: dict[str, Change] = {}
        """file id -> the add that holds it, in the order of their numbers."""

    def _next(
        self, file_id: str, meta: FileMeta | None, signed: DeleteSignature | None = None
    ) -> Change:
        self.seq += 1
        change = Change(self.origin, self.seq, file_id, meta, signed)
        self._log.append(change)
        return change

    def add(self, meta: FileMeta) -> Change | None:
        """This node now holds ``meta``'s file; None if it already held that very record."""
        held = self._held.get(meta.file_id)
        if held is not None and held.meta == meta:
            return None
        change = self._next(meta.file_id, meta)
        self._held.pop(meta.file_id, None)  # re-inserted last: ``_held`` stays in number order
        self._held[meta.file_id] = change
        return change

    def delete(self, file_id: str, signed: DeleteSignature | None = None) -> Change | None:
        """This node no longer holds ``file_id``; None if it did not."""
        if self._held.pop(file_id, None) is None:
            return None
        change = self._next(file_id, None, signed)
        self.last_delete = change.seq
        return change

    def held(self) -> list[FileMeta]:
        return [c.meta for c in self._held.values() if c.meta is not None]

    def holds(self, file_id: str) -> bool:
        return file_id in self._held

    def meta(self, file_id: str) -> FileMeta | None:
        held = self._held.get(file_id)
        return None if held is None else held.meta

    @property
    def first(self) -> int:
        """The oldest number still in the log (``seq + 1`` when it is empty)."""
        return self._log[0].seq if self._log else self.seq + 1

    def since(self, have: int | None, asof: int | None = None) -> Sync:
        """The answer to a peer that has this node's changes up to ``have`` (None: none), its
        records up to ``have`` being right as of number ``asof`` (a snapshot's pages are). A delta
        when the log reaches back to ``have``; else a snapshot: from ``have`` on (what was added
        since and is still held) when nothing was deleted since ``asof``, else from the start. At
        most ``page`` changes either way."""
        if have is not None and self.first - 1 <= have <= self.seq:
            start = have - (self.first - 1)
            changes = tuple(
                self._log[i] for i in range(start, min(len(self._log), start + self.page))
            )
            upto = changes[-1].seq if changes else have
            return Sync(self.origin, have, upto, self.seq, changes)
        asof = max(have or 0, asof or 0)
        since = have if have is not None and have <= self.seq and self.last_delete <= asof else 0
        later: list[Change] = []
        for change in reversed(self._held.values()):  # in number order: the newest last
            if change.seq <= since:
                break
            later.append(change)
        later.reverse()
        records = tuple(later[: self.page])
        upto = self.seq if len(later) <= self.page else later[self.page].seq - 1
        return Sync(self.origin, since, upto, self.seq, records, snapshot=True)


@dataclass(slots=True)
class View:
    """What a node knows of one origin's records: every change up to ``seq`` (no gap), and the
    latest change of each file it knows of (adds, and tombstones newer than ``seq``)."""

    seq: int = 0
    files: dict[str, Change] = field(default_factory=dict)
    head: int = 0
    """The highest number the origin is known to have reached (``> seq``: behind)."""
    asof: int = 0
    """The records up to ``seq`` are right as of this number (a snapshot page's head)."""
    shared: bool = False
    """``files`` belongs to someone else too (a simulator's common start): copied before a write."""
    said: int = -1
    """The last head the origin itself stated (its answer, or its own message); -1: none yet."""
    forged: int = 0
    """Relayed changes that the origin's answers showed forged (a count)."""

    def _own(self) -> dict[str, Change]:
        if self.shared:
            self.files = dict(self.files)
            self.shared = False
        return self.files

    def copy(self) -> View:
        return View(self.seq, self.files, self.head, self.asof, True, self.said, self.forged)

    def bound(self) -> int | None:
        """The highest number a relayed claim may have (None: the origin has not spoken yet,
        anything goes until its first answer checks it)."""
        return None if self.said < 0 else max(self.said, self.seq) + WINDOW

    def holds(self, file_id: str) -> bool:
        change = self.files.get(file_id)
        return change is not None and change.meta is not None

    def apply(self, change: Change) -> bool:
        """Take one change (relayed, any order). Returns whether it told something new."""
        if change.seq <= self.seq:
            return False
        known = self.files.get(change.file_id)
        if known is not None and known.seq >= change.seq:
            return False
        self._own()[change.file_id] = change
        if change.seq == self.seq + 1:
            self.seq = change.seq
        self.head = max(self.head, change.seq)
        return True

    def take(self, sync: Sync) -> list[Change]:
        """Take an origin's answer; returns the changes that were new (a snapshot's records that
        replace nothing newer, and tombstones for what the snapshot no longer lists or what the
        answer showed forged)."""
        if sync.upto < sync.since or sync.since > self.seq:
            return []  # an answer that leaves a gap, or nonsense: ask again
        files = self._own()
        top = max(sync.head, self.said)  # (an answer may cross a later word of the origin's)
        checked = sync.snapshot or self.head > sync.since  # (``head``: every number held, at most)
        new, unsure = self._check(sync, files, top) if checked else ([], False)
        for change in sync.changes:
            if not sync.since < change.seq <= sync.upto:
                continue
            prior = files.get(change.file_id)
            if prior is None or prior.seq < change.seq:
                files[change.file_id] = change
                new.append(change)
        self.seq = sync.upto if sync.snapshot and sync.since == 0 else max(self.seq, sync.upto)
        self.asof = sync.head if sync.snapshot else max(self.asof, self.seq)
        self.said = top
        self.head = max(top, self.seq)  # the origin's word replaces others' claims
        for fid in [f for f, c in files.items() if c.meta is None and c.seq <= self.seq]:
            del files[fid]  # a tombstone covered by ``seq`` is no longer needed
        if unsure:  # what a forgery displaced is unknown: a snapshot from the start says
            self.seq = self.asof = 0
        return new

    def _check(self, sync: Sync, files: dict[str, Change], top: int) -> tuple[list[Change], bool]:
        """Drop what the origin's answer ``sync`` contradicts: a change numbered past ``top``
        (its head), or in the answer's range but not the change the answer has at that number
        (a delta lists every number; a snapshot, each record still held). Returns tombstones of
        adds no longer listed, and whether a forged change may have displaced what the answer
        does not cover (then only a snapshot from the start tells that file's state)."""
        answer = {c.seq: c for c in sync.changes if sync.since < c.seq <= sync.upto}
        listed = {c.file_id: c.seq for c in answer.values()}
        new: list[Change] = []
        unsure = False
        for fid, known in list(files.items()):
            past = known.seq > top
            inside = sync.since < known.seq <= sync.upto
            if not past and (not inside or answer.get(known.seq) == known):
                continue  # confirmed, or beyond this answer's range and possible
            if fid in listed:  # the answer says what the origin holds of it
                del files[fid]
                if past or not sync.snapshot or known.seq >= listed[fid]:
                    self.forged += 1  # (a snapshot's later record of it replaces an older one)
            elif sync.snapshot and not past:  # the origin no longer holds it: its own word
                del files[fid]
                if known.meta is not None:
                    new.append(Change(sync.origin, sync.upto, fid, None))
            else:
                new += self._forged(files, known)
                unsure = unsure or not (sync.snapshot and sync.since == 0)
        return new, unsure

    def _forged(self, files: dict[str, Change], known: Change) -> list[Change]:
        """Drop ``known``, shown forged; returns the tombstone that stops listing it."""
        del files[known.file_id]
        self.forged += 1
        if known.meta is None:
            return []
        return [Change(known.origin, known.seq, known.file_id, None, retracted=True)]

    def stated(self, head: int) -> list[Change]:
        """The origin itself says (a message of its own) that its last number is ``head``: a
        head claimed past it is replaced, and changes held past it are forged: dropped, and as
        what they displaced is unknown, a snapshot from the start is asked for. Returns the
        tombstones of the dropped adds."""
        if head < self.said:
            return []  # an older word of the origin's (messages may cross)
        self.said = head
        new: list[Change] = []
        if self.head > head:  # (every number held is at most ``self.head``)
            files = self._own()
            past = [c for c in files.values() if c.seq > head]
            for known in past:
                new += self._forged(files, known)
            if past or self.seq > head:
                self.seq = self.asof = 0
        self.head = max(head, self.seq)
        return new


class Views:
    """A node's views of the other origins, with the origins it is behind on. ``base`` is a start
    shared with other nodes (a simulator's steady state): read through, copied on a write."""

    def __init__(self, base: Mapping[str, View] | None = None, limit: int = MAX_ORIGINS) -> None:
        self._own: dict[str, View] = {}
        self._base: Mapping[str, View] = base if base is not None else {}
        self.limit = limit
        self.behind: dict[str, None] = {}
        """Origins whose known head is past the last number held without a gap (ordered)."""
        self.dropped = 0
        """Relayed changes and heads dropped: numbered past their origin's :meth:`View.bound`."""
        self.forged = 0
        """Relayed changes that an origin's answer showed forged, dropped at that answer."""

    def get(self, origin: str) -> View | None:
        view = self._own.get(origin)
        return view if view is not None else self._base.get(origin)

    def _writable(self, origin: str) -> View | None:
        view = self._own.get(origin)
        if view is None:
            base = self._base.get(origin)
            if base is None and len(self._own) + len(self._base) >= self.limit:
                return None
            view = base.copy() if base is not None else View()
            self._own[origin] = view
        return view

    def _track(self, origin: str, view: View) -> None:
        if view.head > view.seq:
            self.behind[origin] = None
        else:
            self.behind.pop(origin, None)

    def have(self, origin: str) -> int | None:
        view = self.get(origin)
        return None if view is None else view.seq

    def asof(self, origin: str) -> int | None:
        view = self.get(origin)
        return None if view is None else max(view.asof, view.seq)

    def _beyond(self, origin: str, view: View | None, seq: int) -> bool:
        """Whether a relayed ``seq`` is past what ``view``'s origin can have (counted). Nothing
        of it is kept, but the origin is asked (as if behind, until its next word): a restarted
        origin's numbers start after its new epoch, far past its last word."""
        bound = None if view is None else view.bound()
        if bound is None or seq <= bound:
            return False
        self.dropped += 1
        self.behind[origin] = None
        return True

    def heard(self, origin: str, head: int, own: bool = False) -> list[Change]:
        """``origin`` says that its last number is ``head``: itself (``own``: a message whose
        sender it is, :meth:`View.stated`; returns the tombstones of the adds it showed forged),
        or through another (a claim, taken within :meth:`View.bound`)."""
        view = self.get(origin)
        if own:
            if view is not None and head == view.said and head >= view.head:
                self._track(origin, view)
                return []
        elif (view is not None and head <= view.head) or self._beyond(origin, view, head):
            return []
        view = self._writable(origin)
        if view is None:
            return []
        new: list[Change] = []
        if own:
            forged = view.forged
            new = view.stated(head)
            self.forged += view.forged - forged
        else:
            view.head = head
        self._track(origin, view)
        return new

    def apply(self, change: Change) -> bool:
        """A change relayed by a third party (dropped past its origin's :meth:`View.bound`)."""
        if self._beyond(change.origin, self.get(change.origin), change.seq):
            return False
        view = self._writable(change.origin)
        if view is None:
            return False
        new = view.apply(change)
        self._track(change.origin, view)
        return new

    def take(self, sync: Sync) -> list[Change]:
        view = self._writable(sync.origin)
        if view is None:
            return []
        forged = view.forged
        new = view.take(sync)
        self.forged += view.forged - forged
        self._track(sync.origin, view)
        return new

    def forget(self, origin: str) -> None:
        self._own.pop(origin, None)
        self.behind.pop(origin, None)

    def holds(self, origin: str, file_id: str) -> bool:
        view = self.get(origin)
        return view is not None and view.holds(file_id)
