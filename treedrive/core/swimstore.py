"""Catalogue changes that came by :mod:`treedrive.core.swim` (relayed one by one, or in a peer's
answer to this node's request: :mod:`treedrive.core.deltas`) applied to the store, under the same
rules as a GOSSIP_REPLY's records (:mod:`treedrive.core.catalogue`, THREATS.md):

- an origin's add ("it holds this record") is a claim: records that say this node owns a file it
  never pushed are skipped, records of files their owners deleted are skipped (and the origin is
  told of the delete, as a peer that still lists one is), and the rest are judged by
  :mod:`treedrive.core.ownership` (seals, owner rules) before the origin is recorded as a holder;
- an origin's tombstone ("it no longer holds this file") removes it from the file's holders
  (and only that when this node made it for a relayed add the origin's answer showed forged);
  when the origin is the file's recorded owner, it is the owner's delete, honoured as a DELETE is
  (:func:`~treedrive.core.ownership.judge_delete`: a sealed file needs the owner's signature,
  which the tombstone carries): the record goes everywhere, and the copy here too.

Changes of origins that are not members (alive or suspect) are not applied: the caller forgets
what it knew of them, so that it asks for their whole list once they are members. A change comes
once (a GOSSIP_REPLY pins its sender's key and lists its records at once, each interval): the
records an origin sealed itself are judged again once its key is pinned
(:meth:`SwimStore.judge_again`), and those that contradict a stored unsealed record wait for it
(:func:`~treedrive.core.ownership.awaits_owner`). This node's own change log follows the store
(:meth:`SwimStore.reconcile`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from treedrive.core import ownership
from treedrive.core.catalogue import Catalogue
from treedrive.core.context import NodeContext
from treedrive.core.deltas import Change
from treedrive.core.deltasync import Catalogue as Deltas
from treedrive.core.model import CatalogEntry, DeleteSignature, FileMeta, PeerInfo
from treedrive.core.ownership import Judged
from treedrive.core.ports import UnitOfWork


class SwimStore:
    """Applies the changes of other origins to the store (see the module's docstring)."""

    def __init__(self, ctx: NodeContext, catalogue: Catalogue) -> None:
        self.ctx = ctx
        self.catalogue = catalogue
        self._claims = (0, 0)
        """The counts of dropped relayed claims already reported (:meth:`report_claims`)."""

    def report_claims(self, deltas: Deltas) -> None:
        """Count, and log (one line a second at most), the relayed change numbers and heads
        dropped since the last call: past their origin's own word, or shown forged by its
        answer (:mod:`treedrive.core.deltas`)."""
        ahead, forged = deltas.views.dropped, deltas.views.forged
        new_ahead, new_forged = ahead - self._claims[0], forged - self._claims[1]
        if not new_ahead and not new_forged:
            return
        self._claims = (ahead, forged)
        ctx = self.ctx
        ctx.counters.dropped["swim_claim_ahead"] += new_ahead
        ctx.counters.dropped["swim_claim_forged"] += new_forged
        ctx.log_limited(
            "swim-claims", logging.WARNING, "relayed catalogue claims dropped: %d numbered past "
            "their origin's own word, %d shown forged by the origin's answer", new_ahead,
            new_forged,
        )  # fmt: skip

    def apply(self, changes: Sequence[Change], member: Callable[[str], bool]) -> set[str]:
        """Apply ``changes`` (in the order they were taken) of the origins that are members;
        returns the other origins (whose changes were not applied)."""
        ctx = self.ctx
        latest: dict[tuple[str, str], Change] = {}
        skipped: set[str] = set()
        for change in changes:
            if change.origin == ctx.peer_id:
                continue
            if not member(change.origin):
                skipped.add(change.origin)
                continue
            key = (change.origin, change.file_id)
            prior = latest.get(key)
            if prior is None or prior.seq <= change.seq:
                latest[key] = change
        by_origin: dict[str, list[Change]] = {}
        for change in latest.values():
            by_origin.setdefault(change.origin, []).append(change)
        if by_origin:
            self._apply(by_origin)
        return skipped

    def _apply(self, by_origin: dict[str, list[Change]]) -> None:
        ctx = self.ctx
        now = time.time()
        reports: list[tuple[Judged, str]] = []
        stale: dict[str, list[tuple[str, str]]] = {}
        deleted: list[tuple[CatalogEntry, str]] = []
        refused: list[tuple[str, str, str]] = []
        with ctx.transaction() as uow:
            for origin, changes in by_origin.items():
                adds = [c.meta for c in changes if c.meta is not None]
                if adds:
                    judged, told = self._adds(uow, origin, adds, now)
                    reports.append((judged, origin))
                    if told:
                        stale[origin] = told
                removes = [c for c in changes if c.meta is None]
                if removes:
                    self._removes(uow, origin, removes, deleted, refused)
            uow.files.remove_orphans()
            uow.commit()
        for judged, origin in reports:
            self.catalogue.report(judged, origin)
        for entry, origin in deleted:
            self.catalogue.drop_bytes(entry.meta.file_id)
            ctx.activity.deleted(entry.meta, by=origin)
        for file_id, origin, why in refused:
            ctx.log_limited(
                "swim-delete-refused", logging.WARNING,
                "the delete of %s by its owner %r refused: %s", file_id[:12], origin[:64], why,
            )  # fmt: skip
            ctx.counters.refused["delete"] += 1
        if stale:
            self._tell(stale)

    def _adds(
        self, uow: UnitOfWork, origin: str, adds: list[FileMeta], now: float
    ) -> tuple[Judged, list[tuple[str, str]]]:
        """Record ``origin`` as a holder of the records of ``adds`` that pass; returns how they
        were judged, and (file id, owner) of those whose owners deleted them."""
        return self.catalogue.take(uow, origin, adds, now, owner_pinned=True)

    def _removes(
        self,
        uow: UnitOfWork,
        origin: str,
        removes: list[Change],
        deleted: list[tuple[CatalogEntry, str]],
        refused: list[tuple[str, str, str]],
    ) -> None:
        known = uow.files.known([c.file_id for c in removes])
        owned = any(e.meta.file_owner == origin for e in known.values())
        pinned = uow.keys.pinned([origin]).get(origin) if owned else None
        for change in removes:
            entry = known.get(change.file_id)
            if entry is None:
                continue
            if entry.meta.file_owner != origin or change.retracted:  # not the owner's delete
                uow.files.remove_holder(change.file_id, origin)
                continue
            why = ownership.judge_delete(change.file_id, change.signed, entry.meta, pinned)
            if why is not None:
                refused.append((change.file_id, origin, why))
                uow.files.remove_holder(change.file_id, origin)
                continue
            self.catalogue.forget(uow, entry, change.signed)
            if entry.has_copy:
                deleted.append((entry, origin))

    def judge_again(self, origin: str, deltas: Deltas, member: Callable[[str], bool]) -> None:
        """``origin``'s key was just pinned: the records it sealed itself that it holds, as
        this node knows them, are judged again. Taken before the pin, their seals counted for
        nothing (a stranger may seal with a key of its own); a GOSSIP_REPLY lists them again
        each interval, a change comes once."""
        view = deltas.views.get(origin)
        if view is None:
            return
        sealed = [
            c for c in view.files.values()
            if c.meta is not None and c.meta.seal is not None and c.meta.file_owner == origin
        ]  # fmt: skip
        if sealed:
            self.apply(sealed, member)

    def reconcile(self, deltas: Deltas) -> list[Change]:
        """Bring this node's change log in line with what the store says it holds (the store is
        the truth: a delete that a peer's change implied but the store refused is undone);
        returns the changes made (to spread)."""
        ctx = self.ctx
        with ctx.store.reading() as uow:
            held = {m.file_id: m for m in uow.files.local_metas()}
            gone = [m for m in deltas.log.held() if m.file_id not in held]
            mine = [m.file_id for m in gone if m.file_owner == ctx.peer_id]
            signed = uow.tombstones.signatures(mine) if mine else {}
        changes: list[Change] = []
        for meta in gone:
            change = deltas.delete(meta.file_id, signed.get(meta.file_id))
            changes += [change] if change is not None else []
        for file_id, meta in held.items():
            if deltas.log.meta(file_id) != meta:
                change = deltas.add(meta) or deltas.restore(meta)
                changes += [change] if change is not None else []
        return changes

    def _tell(self, stale: dict[str, list[tuple[str, str]]]) -> None:
        """Origins that still list files their owners deleted: pass the owners' DELETEs on."""
        told: list[tuple[PeerInfo, list[tuple[str, str]], dict[str, DeleteSignature]]] = []
        with self.ctx.store.reading() as uow:
            for origin, files in stale.items():
                peer = uow.peers.get(origin)
                if peer is not None:
                    told.append((peer, files, uow.tombstones.signatures([f for f, _ in files])))
        for peer, files, signed in told:
            self.catalogue.relay_deletes(peer, files, signed)
