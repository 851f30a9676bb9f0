"""Signed ownership (PROTOCOL.md 2.8): what a node makes of a file record or a DELETE, given the
record it has for the id, the owners' pinned keys and whether a seal verified. Pure: no I/O (the
catalogue reads and writes around it).

A TreeDrive owner seals each record it pushes: its key signs the record's five fields
(:func:`treedrive.core.identity.record_claim`). A sealed record is the owner's word: it never
changes, and only the owner's signature deletes it. :func:`judge_record` decides:

=====================================  ===========================================  ============
stored record                          record received                              verdict
=====================================  ===========================================  ============
(any)                                  a seal that does not verify                  ``REFUSED``
(any)                                  sealed, its owner pinned to another key      ``REFUSED``
none                                   sealed (verified)                            ``SEALED``
none                                   unsealed                                     ``CLASSIC``
sealed                                 the same five fields, unsealed or sealed by  ``SAME``
                                       the same key
sealed                                 other fields, or sealed by another key       ``REFUSED``
unsealed                               unsealed                                     ``CLASSIC``
unsealed                               sealed by the key the same owner is pinned   ``SEALED``
                                       to, agreeing with the bytes held here
unsealed                               sealed otherwise                             ``CLASSIC``,
                                                                                    seal dropped
=====================================  ===========================================  ============

A stored seal whose owner is pinned to another key (a seal made before the owner's key was
pinned, by someone else) counts as none. ``SAME`` adds the sender as a holder and changes
nothing; ``REFUSED`` changes nothing at all (the sender is not added as a holder, and not
removed either). A sealed record never takes over a classic (unsealed) record of another owner,
nor one whose owner's key is not pinned: a stranger with a key of its own cannot make a classic
peer's file its own, nor stop its owner's classic DELETE.

:func:`judge_delete` decides a DELETE of a file whose record is sealed: it is honoured only with
a signature by the owner's key (its pinned key, else the seal's), over
:func:`treedrive.core.identity.delete_claim`. A DELETE of an unsealed file keeps the classic rule.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from treedrive.core import identity
from treedrive.core.fileid import timestamp_suffixes
from treedrive.core.identity import NodeKey, fingerprint
from treedrive.core.model import CatalogEntry, DeleteSignature, FileMeta, Seal
from treedrive.core.sizes import record_agrees

SEAL_CHECKS_PER_SECOND = 1000.0
"""Seals verified per second, on average (each costs about 0.1 ms of CPU): a stranger's 10,000
sealed records cost the node at most a fraction of a second at a time, never a frozen loop."""
SEAL_CHECKS_BURST = 2000.0
"""Seals verified at once, at most (a welcome reply with this node's whole view of a network)."""


class Verdict(enum.Enum):
    CLASSIC = "classic"
    """No seal in play: the classic rules (PROTOCOL.md 1.2)."""
    SEALED = "sealed"
    """A verified seal: the record is stored with it (a new id, or over an unsealed record)."""
    SAME = "same"
    """It says what the stored sealed record says: its sender holds the file, nothing changes."""
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Ruling:
    """What :func:`judge_record` decided: ``record`` is what to take (None: refused), ``reason``
    says why it was refused, in one line fit for the log."""

    verdict: Verdict
    record: FileMeta | None
    reason: str | None = None

    @property
    def refused(self) -> bool:
        return self.verdict is Verdict.REFUSED


@dataclass(slots=True)
class Judged:
    """The records of one message as :mod:`~treedrive.core.ownership` judged them."""

    taken: list[FileMeta] = field(default_factory=list)
    """What to record (as judged: a seal that is not taken is dropped)."""
    untouched: set[str] = field(default_factory=set)
    """Ids whose records were refused or wait for the seal budget: they change nothing."""
    refused: list[tuple[str, str]] = field(default_factory=list)
    """(file id, why) of each refused record."""
    deferred: int = 0
    """Records whose seals wait for the budget (left for the sender's next message)."""
    bad_seals: list[str] = field(default_factory=list)
    """Why each malformed seal could not be read."""

    def add(self, meta: FileMeta, ruling: Ruling) -> None:
        """Add the ruling on ``meta``."""
        if ruling.record is None:
            self.untouched.add(meta.file_id)
            self.refused.append((meta.file_id, ruling.reason or "refused"))
        else:
            self.taken.append(ruling.record)

    def defer(self, meta: FileMeta) -> None:
        """``meta``'s seal waits for the budget: it changes nothing now."""
        self.deferred += 1
        self.untouched.add(meta.file_id)

    def hold(self, meta: FileMeta) -> None:
        """``meta`` waits for its owner's key (:func:`awaits_owner`): it changes nothing now."""
        self.untouched.add(meta.file_id)


def claim(meta: FileMeta) -> bytes:
    """The bytes an owner signs of ``meta`` (its five fields, exactly as they travel)."""
    return identity.record_claim(
        meta.file_id, meta.file_name, meta.file_size, meta.file_owner, meta.file_timestamp
    )


def seal(key: NodeKey, meta: FileMeta) -> FileMeta:
    """``meta`` sealed by its owner's ``key``."""
    return replace(meta, seal=Seal(key.public, key.sign(claim(meta))), seal_error=None)


def seal_verifies(meta: FileMeta) -> bool:
    """Whether ``meta`` carries a seal that verifies over its fields. Never raises."""
    if meta.seal is None:
        return False
    try:
        payload = claim(meta)
    except ValueError:  # a field JSON cannot carry (never from the wire)
        return False
    return identity.verify(meta.seal.owner_key, meta.seal.signature, payload)


def repeats(meta: FileMeta, known: CatalogEntry | None) -> bool:
    """Whether ``meta`` is the stored sealed record again, seal and all: no need to verify it."""
    return (
        known is not None
        and meta.seal is not None
        and known.meta.seal == meta.seal
        and _same_claim(meta, known.meta)
    )


def needs_check(meta: FileMeta, known: CatalogEntry | None) -> bool:
    """Whether judging ``meta`` needs its seal verified (a costly step: see the budget)."""
    return meta.seal is not None and not repeats(meta, known)


def owner_seal(meta: FileMeta, pins: Mapping[str, bytes]) -> Seal | None:
    """The seal of a stored record, unless its owner is pinned to another key (then none)."""
    if meta.seal is None:
        return None
    pinned = pins.get(meta.file_owner)
    return meta.seal if pinned is None or pinned == meta.seal.owner_key else None


def judge_record(
    record: FileMeta, known: CatalogEntry | None, pins: Mapping[str, bytes], verified: bool
) -> Ruling:
    """What to make of ``record`` (see the module's table): ``known`` is the stored record for
    its id (None: a new id), ``pins`` the keys pinned to the owners of both, ``verified``
    whether ``record``'s seal verifies (see :func:`seal_verifies`; not needed when
    :func:`needs_check` says so)."""
    seal_ = record.seal
    if repeats(record, known):
        assert known is not None
        return Ruling(Verdict.SAME, known.meta)
    pinned = pins.get(record.file_owner)
    if seal_ is not None and not verified:
        return _refused(
            record, f"its seal does not verify under key {fingerprint(seal_.owner_key)}"
        )
    if seal_ is not None and pinned is not None and pinned != seal_.owner_key:
        return _refused(
            record,
            f"it is sealed with key {fingerprint(seal_.owner_key)}, but its owner is pinned to "
            f"key {fingerprint(pinned)}",
        )
    if known is None:
        return Ruling(Verdict.CLASSIC if seal_ is None else Verdict.SEALED, record)
    held = owner_seal(known.meta, pins)
    if held is not None:
        differs = differences(record, known.meta)
        if differs:
            return _refused(record, f"it contradicts the owner's signed record ({differs})")
        if seal_ is not None and seal_.owner_key != held.owner_key:
            return _refused(
                record, f"it is sealed with key {fingerprint(seal_.owner_key)}, not the owner's"
            )
        return Ruling(Verdict.SAME, known.meta)
    if seal_ is None:
        return Ruling(Verdict.CLASSIC, record)
    if (
        record.file_owner == known.meta.file_owner
        and pinned == seal_.owner_key
        and _agrees_with_bytes(record, known)
    ):
        return Ruling(Verdict.SEALED, record)
    return Ruling(Verdict.CLASSIC, replace(record, seal=None))


def awaits_owner(
    record: FileMeta, known: CatalogEntry | None, pins: Mapping[str, bytes], holder: str
) -> bool:
    """Whether ``holder``'s sealed record of its own file is to wait until ``holder``'s key is
    pinned: it contradicts the stored record, which no seal that counts backs, and before the
    pin :func:`judge_record` would drop its seal, listing ``holder`` with a record it
    contradicts. A GOSSIP_REPLY pins its sender's key and lists its records at once; a change
    relayed by others comes first, and is judged again once the key is pinned."""
    return (
        record.seal is not None
        and record.file_owner == holder
        and holder not in pins
        and known is not None
        and owner_seal(known.meta, pins) is None
        and bool(differences(record, known.meta))
    )


def differences(a: FileMeta, b: FileMeta) -> str:
    """Which of the signed fields of ``a`` and ``b`` differ, as they travel ("" if none)."""
    names = ("file_id", "file_name", "file_size", "file_owner", "file_timestamp")
    return ", ".join(
        f"other {n[5:]}" for n in names if _wire(getattr(a, n)) != _wire(getattr(b, n))
    )


def judge_delete(
    file_id: str,
    signed: DeleteSignature | None,
    known: FileMeta,
    pinned: bytes | None,
) -> str | None:
    """Why a DELETE of ``known`` from its owner (the caller checked the name) is refused; None
    when it is honoured. ``signed`` is the DELETE's signature, ``pinned`` the key pinned to the
    owner. A DELETE of an unsealed record keeps the classic rule: honoured."""
    if known.seal is None:
        return None
    key = pinned or known.seal.owner_key
    if signed is None:
        return (
            f"the file is sealed by its owner (key {fingerprint(key)}) and the DELETE is unsigned"
        )
    payload = identity.delete_claim(file_id, known.file_owner, signed.ts)
    if not identity.verify(key, signed.signature, payload):
        return f"its signature does not verify under the owner's key {fingerprint(key)}"
    return None


def sign_delete(key: NodeKey, file_id: str, owner: str, ts: int) -> DeleteSignature:
    """The owner's signature of its DELETE of ``file_id`` at ``ts``."""
    return DeleteSignature(ts, key.sign(identity.delete_claim(file_id, owner, ts)))


# -- helpers ------------------------------------------------------------------------------------
def _refused(record: FileMeta, why: str) -> Ruling:
    return Ruling(Verdict.REFUSED, None, f"record of {record.file_id[:12]} refused: {why}")


def _wire(value: object) -> str:
    """A field as it travels (``1000`` and ``1000.0`` differ), for comparison."""
    return json.dumps(value, ensure_ascii=True, allow_nan=False)


def _same_claim(a: FileMeta, b: FileMeta) -> bool:
    return not differences(a, b)


def _agrees_with_bytes(record: FileMeta, known: CatalogEntry) -> bool:
    """Whether ``record`` agrees with the bytes held here, if any: they verify under its
    timestamp too, and it claims their size."""
    if not known.has_copy:
        return True
    before = set(timestamp_suffixes(known.meta.file_timestamp))
    if not before or not before <= set(timestamp_suffixes(record.file_timestamp)):
        return False
    return (
        known.size_bytes is None or record_agrees(record.file_size, known.size_bytes) is not False
    )
