"""File ids as users type them: the whole 64 hex characters, or a unique prefix of at least
``MIN_PREFIX`` (as git takes a short commit id). Pure: the lookup of candidates is passed in."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from treedrive.core.errors import AmbiguousId, NotFound

MIN_PREFIX = 8
"""Hex characters a short id needs at least (2^32 ids per prefix: unique in any catalogue a
node keeps, and short enough to type)."""
SHORT = 12
"""Hex characters of the short ids that tables show."""
FULL = 64
_HEX = re.compile(r"[0-9a-f]+")


def short_id(file_id: str) -> str:
    """The short form tables show (the first ``SHORT`` characters)."""
    return file_id[:SHORT]


def normalize(text: str) -> str:
    """``text`` as a lowercase hex id or prefix; NotFound (saying what to type) otherwise."""
    value = text.strip().lower().rstrip("…").rstrip(".")
    if not value or not _HEX.fullmatch(value) or len(value) > FULL:
        raise NotFound(
            f"{text.strip()[:80]!r} is not a file id: give its 64 hex characters or the first "
            f"{MIN_PREFIX} or more ('list' shows them)"
        )
    if len(value) < MIN_PREFIX:
        raise NotFound(
            f"{value!r} is too short: give at least {MIN_PREFIX} hex characters of the file id"
        )
    return value


def resolve(text: str, candidates: Callable[[str, int], Sequence[str]]) -> str:
    """The one full id that ``text`` names. ``candidates(prefix, limit)`` lists the known ids
    that start with ``prefix`` (at most ``limit``, in order)."""
    value = normalize(text)
    found = list(candidates(value, 6))
    if len(value) == FULL:
        if value not in found:
            raise NotFound(f"no file {short_id(value)}… in the catalogue ('list' shows them)")
        return value
    if not found:
        raise NotFound(f"no file id starts with {value!r} ('list' shows them)")
    if len(found) > 1:
        shown = ", ".join(f[: max(SHORT, len(value) + 4)] for f in found[:5])
        more = ", …" if len(found) > 5 else ""
        raise AmbiguousId(
            f"{value!r} starts {'more than 5' if more else len(found)} file ids ({shown}{more}): "
            "type more of it"
        )
    return found[0]
