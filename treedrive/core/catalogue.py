"""The catalogue: which peer holds which file, the owners' deletes (tombstones) and the claims
that would make this node the owner of a file it never pushed.

A GOSSIP_REPLY lists what its sender holds (PROTOCOL.md 1.4), an ANNOUNCE adds one holding, a
DELETE from a file's owner removes the file everywhere (1.6); a peer that still advertises a file
its owner deleted is told so again (bounded: :mod:`~treedrive.core.deleterelay`). The user's
``delete`` is here too: the owner's DELETE goes to every tracked peer, signed for TreeDrive peers.

Records sealed by their owners (2.8) are judged by :mod:`treedrive.core.ownership` before they
are taken: what it refuses changes nothing here. Verifying a seal costs CPU, so seals are
verified within a budget (:data:`~treedrive.core.ownership.SEAL_CHECKS_PER_SECOND`); a record
whose seal waits for it is left for the sender's next message.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import replace

from treedrive.core import ownership
from treedrive.core.activity import file_label
from treedrive.core.bounded import Reused, TokenBucket
from treedrive.core.context import NodeContext
from treedrive.core.deleterelay import DeleteRelay
from treedrive.core.errors import NotFound, NotOwner
from treedrive.core.events import FileAdvertised, FileDeleted, FileRefused, FileStored
from treedrive.core.features import plugin_keys
from treedrive.core.membership import Membership
from treedrive.core.messages import Announce, Delete, GossipReply
from treedrive.core.model import CatalogEntry, DeleteSignature, FileMeta, PeerInfo
from treedrive.core.ownership import Judged
from treedrive.core.ports import ReadOnlyUnitOfWork, UnitOfWork
from treedrive.core.replies import distinct_addresses

log = logging.getLogger(__name__)


class Catalogue:
    """The catalogue side of one node (see the module's docstring)."""

    def __init__(self, ctx: NodeContext, membership: Membership) -> None:
        self.ctx = ctx
        self.membership = membership
        self._own: Reused[frozenset[str]] = Reused(ctx.config.gossip_interval)
        self._relay = DeleteRelay(ctx)
        self._seal_checks = TokenBucket(
            ownership.SEAL_CHECKS_PER_SECOND, ownership.SEAL_CHECKS_BURST
        )

    # -- what this node owns ------------------------------------------------------------------
    def own_files(self) -> frozenset[str]:
        """The ids of the files this node owns and holds: those it pushed (only a push makes a
        file owned by this node). Reused until they change."""
        ctx = self.ctx
        now = time.monotonic()
        own = self._own.get(ctx.local_version, now)
        if own is None:
            version = ctx.local_version
            with ctx.store.reading() as uow:
                metas = uow.files.local_metas()
            own = frozenset(m.file_id for m in metas if m.file_owner == ctx.peer_id)
            self._own.put(own, version, now)
        return own

    def _unforged(
        self,
        metas: Sequence[FileMeta],
        own: frozenset[str],
        deleted: dict[str, str],
        peer_id: str,
    ) -> list[FileMeta]:
        """``metas`` without those that claim this node owns a file neither in ``own`` nor
        tombstoned in this node's name (``deleted``: file id -> owner); counted and logged."""
        ctx = self.ctx
        own = own | {f for f, owner in deleted.items() if owner == ctx.peer_id}
        kept = [m for m in metas if m.file_owner != ctx.peer_id or m.file_id in own]
        skipped = len(metas) - len(kept)
        if skipped:
            ctx.forged_claims += skipped
            ctx.log_limited(
                "forged-owner", logging.WARNING,
                "%d records from %r skipped: they say this node owns files it never pushed "
                "(%d such claims so far)",
                skipped, peer_id[:64], ctx.forged_claims,
            )  # fmt: skip
        return kept

    # -- messages -----------------------------------------------------------------------------
    def on_gossip_reply(self, r: GossipReply, source: str = "") -> None:
        ctx = self.ctx
        if r.peer_id == ctx.peer_id:
            return
        now = time.time()
        self.membership.answered(r, source)
        with ctx.transaction() as uow:
            self.membership.track(uow, r.peer_id, r.host, r.port, r.extension)
            peer = uow.peers.get(r.peer_id)
            assert peer is not None
            judged, stale = self.take(uow, r.peer_id, r.files, now, complete=True)
            signed = uow.tombstones.signatures([f for f, _ in stale]) if stale else {}
            uow.commit()
        self.report(judged, r.peer_id)
        if r.skipped:
            ctx.log_limited(
                "malformed-records", logging.WARNING, "%d malformed file records from %r skipped",
                r.skipped, r.peer_id[:64],
            )  # fmt: skip
        plugin_keys(ctx, "GOSSIP_REPLY", r.peer_id, r.extra)
        if stale:
            self.relay_deletes(peer, stale, signed)

    def take(
        self,
        uow: UnitOfWork,
        holder: str,
        metas: Sequence[FileMeta],
        now: float,
        *,
        complete: bool = False,
        announced: bool = False,
        owner_pinned: bool = False,
    ) -> tuple[Judged, list[tuple[str, str]]]:
        """``holder`` says it holds ``metas``: those that claim this node owns a file it never
        pushed are skipped (:meth:`_unforged`, on the tombstones read for the rest),
        those of files their owners did not delete are judged (:meth:`judge`;
        ``owner_pinned``: as its own changes are) and what is taken is recorded as held by
        ``holder`` (``complete``: that is all it holds; ``announced``: in its ANNOUNCE).
        Returns how they were judged, and (file id, owner) of the files their owners deleted
        (to tell it)."""
        deleted = uow.tombstones.owners([m.file_id for m in metas])
        me = self.ctx.peer_id
        if claimed := [m.file_id for m in metas if m.file_owner == me]:
            # which of them this node holds and owns: those ids only, in this transaction
            held = uow.files.known(claimed)
            own = frozenset(f for f, e in held.items() if e.has_copy and e.meta.file_owner == me)
            metas = self._unforged(metas, own, deleted, holder)
        stale = [(m.file_id, deleted[m.file_id]) for m in metas if m.file_id in deleted]
        live = [m for m in metas if m.file_id not in deleted]
        judged = self.judge(uow, live, holder if owner_pinned else None)
        for meta, is_new in uow.files.advertise(
            holder, judged.taken, now,
            complete=complete, announced=announced, untouched=judged.untouched,
        ):  # fmt: skip
            uow.emit(FileAdvertised(meta, holder, is_new))
        return judged, stale

    def relay_deletes(
        self,
        peer: PeerInfo,
        stale: Sequence[tuple[str, str]],
        signed: dict[str, DeleteSignature],
    ) -> None:
        """A peer still advertises files their owners deleted (it missed the DELETEs): pass the
        owners' DELETEs on, within bounds (:meth:`DeleteRelay.relay`)."""
        self._relay.relay(peer, stale, signed)

    def on_announce(self, a: Announce) -> None:
        ctx = self.ctx
        if a.from_peer == ctx.peer_id:
            return
        now = time.time()
        with ctx.transaction() as uow:
            peer = uow.peers.get(a.from_peer)
            judged, stale = self.take(uow, a.from_peer, [a.meta], now, announced=True)
            signed = uow.tombstones.signatures([a.meta.file_id]) if stale else {}
            uow.commit()
        self.report(judged, a.from_peer)
        if stale and peer is not None:
            self.relay_deletes(peer, stale, signed)

    def on_delete(self, d: Delete) -> None:
        ctx = self.ctx
        if d.from_peer == ctx.peer_id:
            # This node never sends itself a DELETE: one in its name is a forgery.
            ctx.log_limited(
                "forged", logging.WARNING,
                "DELETE of %s in this node's own name refused: it did not send it",
                d.file_id[:12],
            )  # fmt: skip
            return
        with ctx.transaction() as uow:
            entry = uow.files.get(d.file_id)
            if entry is None:
                ctx.log_limited(
                    "delete-unknown", logging.INFO, "DELETE of unknown file %s from %r ignored",
                    d.file_id[:12], d.from_peer,
                )  # fmt: skip
                return
            if entry.meta.file_owner != d.from_peer:
                ctx.log_limited(
                    "delete-not-owner", logging.WARNING,
                    "DELETE of %s from %r ignored: the owner is %r",
                    d.file_id[:12], d.from_peer, entry.meta.file_owner,
                )  # fmt: skip
                return
            pinned = uow.keys.pinned([d.from_peer]).get(d.from_peer)
            why = ownership.judge_delete(d.file_id, d.signed, entry.meta, pinned)
            if why is None:
                self.forget(uow, entry, d.signed)
                uow.commit()
        if why is not None:
            self._refused_delete(d, why)
            return
        self.drop_bytes(d.file_id)
        ctx.activity.deleted(entry.meta, by=d.from_peer)

    # -- changes ------------------------------------------------------------------------------
    def _refused_delete(self, d: Delete, why: str) -> None:
        ctx = self.ctx
        if d.signature_error is not None:
            why = f"{why} (its signature was malformed: {d.signature_error})"
        ctx.log_limited(
            "delete-unsigned", logging.WARNING, "DELETE of %s from %r refused: %s",
            d.file_id[:12], d.from_peer[:64], why,
        )  # fmt: skip
        ctx.counters.refused["delete"] += 1
        ctx.notify(FileRefused(d.file_id, d.from_peer, f"DELETE refused: {why}"))

    def forget(
        self, uow: UnitOfWork, entry: CatalogEntry, signed: DeleteSignature | None = None
    ) -> None:
        uow.files.remove(entry.meta.file_id)
        uow.downloads.remove(entry.meta.file_id)
        uow.tombstones.add(entry.meta.file_id, entry.meta.file_owner, time.time(), signed)
        uow.emit(FileDeleted(entry.meta.file_id, entry.meta.file_owner))

    def drop_bytes(self, file_id: str) -> None:
        blobs = self.ctx.store.blobs
        blobs.delete(file_id)
        blobs.range_path(file_id).unlink(missing_ok=True)

    def delete(self, file_id: str) -> None:
        """Delete a file this node owns (a full id), here and (by DELETE to every tracked peer)
        everywhere."""
        ctx = self.ctx
        with ctx.transaction() as uow:
            entry = uow.files.get(file_id)
            if entry is None:
                raise NotFound(f"no file {file_id!r} in the catalogue")
            if entry.meta.file_owner != ctx.peer_id:
                raise NotOwner(
                    f"{file_label(entry.meta)} belongs to {entry.meta.file_owner!r}; "
                    "only its owner can delete it"
                )
            signed = None
            if ctx.config.extension:
                signed = ownership.sign_delete(ctx.key, file_id, ctx.peer_id, int(time.time()))
            self.forget(uow, entry, signed)
            uow.commit()
        self.drop_bytes(file_id)
        self._send_delete(Delete(from_peer=ctx.peer_id, file_id=file_id, signed=signed))
        ctx.activity.deleted(entry.meta)

    def _send_delete(self, signed: Delete) -> None:
        """The owner's DELETE to every tracked peer: signed to TreeDrive peers, in its classic
        form (unchanged) to classic peers."""
        ctx = self.ctx
        peers = ctx.peers()
        own = ctx.own_address()
        treedrive = distinct_addresses([(p.host, p.port) for p in peers if p.is_treedrive], own)
        classic = distinct_addresses(
            [(p.host, p.port) for p in peers if not p.is_treedrive], own | frozenset(treedrive)
        )
        plain = Delete(from_peer=signed.from_peer, file_id=signed.file_id)
        for address in treedrive:
            ctx.send(*address, signed)
        for address in classic:
            ctx.send(*address, plain)

    def stored(self, meta: FileMeta, size: int, how: str) -> None:
        """Record a blob just committed as held here, and announce it. If the record cannot be
        written (a full disk), the blob goes too: no blob is ever left without its row."""
        ctx = self.ctx
        try:
            with ctx.transaction() as uow:
                uow.files.mark_local(meta, size, time.time())
                uow.emit(FileStored(meta, size, how))
                held = uow.files.get(meta.file_id)
                uow.commit()
        except Exception:
            self.drop_unrecorded_blob(meta.file_id)
            raise
        # The record as held (its owner's seal with it, if it has one).
        ctx.send_to_all(Announce(from_peer=ctx.peer_id, meta=held.meta if held else meta))

    def drop_unrecorded_blob(self, file_id: str) -> None:
        with contextlib.suppress(Exception):
            entry = self.ctx.file(file_id)
            if entry is not None and entry.has_copy:
                return  # recorded earlier (a ranged download records its own commit)
        self.ctx.store.blobs.delete(file_id)

    # -- judging records (PROTOCOL.md 2.8) ----------------------------------------------------
    def judge(
        self, uow: ReadOnlyUnitOfWork, metas: Sequence[FileMeta], holder: str | None = None
    ) -> Judged:
        """What of ``metas`` (the records of one message) to take, as
        :func:`~treedrive.core.ownership.judge_record` decides against the stored records and
        the pinned keys; seals are verified within the budget. ``holder``: the records of its
        own that :func:`~treedrive.core.ownership.awaits_owner` holds back wait."""
        judged = Judged()
        if not metas:
            return judged
        if not self.ctx.config.extension:  # classic only: seals are unknown keys, ignored
            metas = [replace(m, seal=None, seal_error=None) for m in metas]
        known = uow.files.known([m.file_id for m in metas])
        owners = {m.file_owner for m in metas if m.seal is not None}
        owners.update(e.meta.file_owner for e in known.values() if e.meta.seal is not None)
        pins = uow.keys.pinned(owners) if owners else {}
        now = time.monotonic()
        for meta in metas:
            if meta.seal_error is not None:
                judged.bad_seals.append(meta.seal_error)
            entry = known.get(meta.file_id)
            if holder is not None and ownership.awaits_owner(meta, entry, pins, holder):
                judged.hold(meta)
                continue
            checked = ownership.needs_check(meta, entry)
            if checked and not self._seal_checks.take(now):
                judged.defer(meta)
                continue
            verified = checked and ownership.seal_verifies(meta)
            judged.add(meta, ownership.judge_record(meta, entry, pins, verified))
        return judged

    def judge_pushed(self, meta: FileMeta, sender: str) -> tuple[FileMeta | None, str]:
        """The record to keep of a file pushed to this node (as judged), or None and why it is
        refused (reported as the refused records of a message are)."""
        with self.ctx.store.reading() as uow:
            judged = self.judge(uow, [meta])
        self.report(judged, sender)
        if judged.taken:
            return judged.taken[0], ""
        return None, judged.refused[0][1] if judged.refused else "its seal cannot be checked now"

    def report(self, judged: Judged, sender: str) -> None:
        """One log line (rate-limited) for each kind of trouble in one message's records, and
        one notice for the refused ones."""
        ctx = self.ctx
        who = sender[:64]
        if judged.refused:
            file_id, why = judged.refused[0]
            ctx.log_limited(
                "record-refused", logging.WARNING, "%d records from %r refused, e.g. %s",
                len(judged.refused), who, why,
            )  # fmt: skip
            ctx.counters.refused["record"] += len(judged.refused)
            ctx.notify(FileRefused(file_id, sender, why))
        if judged.bad_seals:
            ctx.log_limited(
                "bad-seal", logging.WARNING,
                "%d records from %r came with a malformed seal (read as unsealed): %s",
                len(judged.bad_seals), who, judged.bad_seals[0],
            )  # fmt: skip
        if judged.deferred:
            ctx.log_limited(
                "seal-budget", logging.INFO,
                "%d sealed records from %r left for later: too many seals to check at once",
                judged.deferred, who,
            )  # fmt: skip
