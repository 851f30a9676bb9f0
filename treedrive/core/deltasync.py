"""One node's catalogue sync by deltas (issue 12, point 2; :mod:`treedrive.core.deltas`): pure,
no I/O, no clock.

:class:`Catalogue` holds the node's own :class:`~treedrive.core.deltas.ChangeLog`, its
:class:`~treedrive.core.deltas.Views` of the other origins, and the owner-delete rule: a file
deleted by its owner is dropped by every holder, which logs the delete in turn, and is never taken
back from anyone. What its methods return is what the node should spread further.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from treedrive.core.deltas import LOG_LIMIT, Change, ChangeLog, Sync, View, Views
from treedrive.core.model import DeleteSignature, FileMeta

MAX_DELETED = 65536
"""Owner-deleted file ids remembered (a bounded set: the oldest go first)."""


class Catalogue:
    """One node's catalogue sync: its own :class:`ChangeLog`, its :class:`Views` of the others,
    and the owner-delete rule. What it returns is what the node should spread further."""

    def __init__(
        self,
        me: str,
        base: Mapping[str, View] | None = None,
        log_limit: int = LOG_LIMIT,
        epoch: int = 0,
    ) -> None:
        self.me = me
        self.log = ChangeLog(me, log_limit, epoch=epoch)
        self.views = Views(base)
        self._deleted: dict[str, None] = {}
        """File ids deleted by their owner (bounded): never held again, never listed again."""
        self.journal: list[Change] | None = None
        """When a list: every change of another origin that was new here is appended (the
        running node applies them to its store and empties it)."""

    def head(self) -> int:
        return self.log.seq

    def have(self, origin: str) -> int | None:
        return self.views.have(origin)

    def asof(self, origin: str) -> int | None:
        return self.views.asof(origin)

    def answer(self, since: int | None, asof: int | None = None) -> Sync:
        return self.log.since(since, asof)

    def _owner_deleted(self, file_id: str) -> list[Change]:
        self._deleted[file_id] = None
        while len(self._deleted) > MAX_DELETED:
            del self._deleted[next(iter(self._deleted))]
        mine = self.log.delete(file_id)
        return [mine] if mine is not None else []

    def _owner_of(self, file_id: str, prior: Change | None) -> str | None:
        """The owner of ``file_id`` as this node knows it: from its own copy, else from the record
        ``prior`` that a delete replaces."""
        held = self.log.meta(file_id)
        if held is not None:
            return held.file_owner
        return None if prior is None or prior.meta is None else prior.meta.file_owner

    def news(self, change: Change) -> list[Change]:
        """A change relayed by gossip. Returns what to spread: the change if it was new here,
        and this node's own changes that follow from it."""
        if change.origin == self.me:
            return []
        if change.meta is not None and change.file_id in self._deleted:
            return []
        view = self.views.get(change.origin)
        prior = None if view is None else view.files.get(change.file_id)
        if not self.views.apply(change):
            return []
        if self.journal is not None:
            self.journal.append(change)
        out = [change]
        if change.meta is None and self._owner_of(change.file_id, prior) == change.origin:
            out += self._owner_deleted(change.file_id)
        return out

    def take(self, sync: Sync) -> list[Change]:
        """An origin's answer to this node's request; returns this node's changes that follow."""
        if sync.origin == self.me:
            return []
        view = self.views.get(sync.origin)
        before = {} if view is None else view.files
        before = dict(before) if sync.snapshot else before  # a snapshot drops records in place
        priors = {c.file_id: before.get(c.file_id) for c in sync.changes if c.meta is None}
        out: list[Change] = []
        new = self.views.take(sync)
        if self.journal is not None:
            self.journal.extend(new)
        for change in new:
            if change.meta is not None or change.retracted:
                continue
            prior = priors.get(change.file_id, before.get(change.file_id))
            if self._owner_of(change.file_id, prior) == change.origin:
                out += self._owner_deleted(change.file_id)
        return out

    def heard(self, origin: str, head: int, own: bool = False) -> None:
        """``origin``'s last number is ``head``: its own word (``own``: a message whose sender
        it is), or another's claim (see :meth:`Views.heard`)."""
        if origin == self.me:
            return
        retracted = self.views.heard(origin, head, own)
        if self.journal is not None:
            self.journal.extend(retracted)

    def behind(self) -> list[str]:
        return list(self.views.behind)

    def add(self, meta: FileMeta) -> Change | None:
        """This node now holds ``meta`` (pushed here, fetched, or its own push)."""
        if meta.file_id in self._deleted:
            return None
        return self.log.add(meta)

    def delete(self, file_id: str, signed: DeleteSignature | None = None) -> Change | None:
        """This node deletes ``file_id`` (its owner's delete, with the owner's ``signed``, or a
        copy dropped)."""
        held = self.log.meta(file_id)
        if held is not None and held.file_owner == self.me:
            self._deleted[file_id] = None
        return self.log.delete(file_id, signed)

    def restore(self, meta: FileMeta) -> Change | None:
        """This node holds ``meta`` after all (its store refused a delete that a peer's change
        implied): it is listed again."""
        self._deleted.pop(meta.file_id, None)
        return self.log.add(meta)

    def lists(self, origins: Iterable[str], file_id: str) -> bool:
        """Whether this node lists ``file_id`` as held by one of ``origins`` (itself included)."""
        if self.log.holds(file_id):
            return True
        return any(self.views.holds(o, file_id) for o in origins if o != self.me)
