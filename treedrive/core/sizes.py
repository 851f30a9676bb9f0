"""What a record's ``file_size`` says about a file's size. It is a claim (PROTOCOL.md 1.2: MB
as a float in the reference data, bytes in some peers, ``0.0`` for tiny files), checked against
what holders say and what arrives; only bytes that verify are a fact. Pure: no I/O."""

from __future__ import annotations

import math

from treedrive.core.model import MEGABYTE, CatalogEntry

MAX_CLAIMED_SIZE = 2**50
"""The largest ``file_size`` a record can claim and still be taken as saying something (1 PiB in
bytes; in MB, far more). Above it, or when not a positive finite number, the record does not say
the file's size."""
SIZE_TOLERANCE_MB = 0.01
SIZE_TOLERANCE = 0.01
"""How far a real size may be from a record's ``file_size`` and still agree with it: 0.01 MB
(10 KiB: peers round the MB figure, and a tiny file is often ``0.0``) plus 1 %."""


def claimed_size(file_size: float) -> float | None:
    """The record's ``file_size`` if it says something about the size, else None (0, negative,
    not finite, absurdly large: see ``MAX_CLAIMED_SIZE``)."""
    if isinstance(file_size, bool) or not isinstance(file_size, int | float):
        return None
    try:
        value = float(file_size)
    except (OverflowError, ValueError):  # an int too large for a float
        return None
    if not math.isfinite(value) or value <= 0 or value > MAX_CLAIMED_SIZE:
        return None
    return value


def size_agrees(file_size: float, size: int) -> bool:
    """Whether a file of ``size`` bytes is what a record's ``file_size`` says: in MB (the
    reference data's reading, ``bytes / 1048576``) or in bytes (what some peers send), within
    ``SIZE_TOLERANCE_MB`` + ``SIZE_TOLERANCE``. False when the record does not say (see
    :func:`claimed_size`)."""
    claim = claimed_size(file_size)
    if claim is None or size < 0:
        return False
    in_mb = size / MEGABYTE
    if abs(in_mb - claim) <= SIZE_TOLERANCE_MB + SIZE_TOLERANCE * claim:
        return True
    return abs(size - claim) <= SIZE_TOLERANCE * claim


SMALL = int(SIZE_TOLERANCE_MB * MEGABYTE)
"""The largest size a record's ``file_size`` of 0 agrees with: peers round the MB figure, so a
tiny file is often ``0.0`` (a record that truly says nothing about the size is rare; its file is
still fetched the classic way)."""


def record_agrees(file_size: float, size: int) -> bool | None:
    """Whether ``size`` bytes is what a record's ``file_size`` claims (see
    :func:`size_agrees`; 0 reads as "at most ``SMALL``"); None when the
    record says nothing (``1e308``, ``inf``, NaN)."""
    if not isinstance(file_size, bool) and isinstance(file_size, int | float) and file_size == 0:
        return 0 <= size <= SMALL
    if claimed_size(file_size) is None:
        return None
    return size_agrees(file_size, size)


def size_hint(entry: CatalogEntry) -> int:
    """The file's size in bytes as far as the catalogue says (0: it does not say). Total: a
    record's ``file_size`` of ``1e308``, ``inf`` or NaN says nothing, it never raises."""
    if entry.size_bytes:
        return entry.size_bytes
    claim = claimed_size(entry.meta.file_size)
    if claim is None:
        return 0
    return int(min(claim * MEGABYTE, MAX_CLAIMED_SIZE))


def classic_cap(entry: CatalogEntry) -> int | None:
    """The most file bytes a classic GET_FILE answer for ``entry`` may carry: the verified size,
    else the most a size agreeing with the record's claimed ``file_size`` can be (MB read, plus
    the tolerance of :func:`size_agrees`); None when the record claims 0 or
    says nothing (no cap: the classic way is how such a file is still fetched)."""
    if entry.size_bytes:
        return entry.size_bytes
    claim = claimed_size(entry.meta.file_size)
    if claim is None:
        return None
    most = (claim * (1 + SIZE_TOLERANCE) + SIZE_TOLERANCE_MB) * MEGABYTE
    return int(min(most, MAX_CLAIMED_SIZE))
