"""Trust on first use, as SSH's ``known_hosts``: a peer id belongs to the key that first signed
for it (pure: the caller reads and writes the pins through ``uow.keys``).

:func:`judge` decides what to make of one message, given what is pinned for the peer id it
claims, the key it presents and whether its signature verified:

============  ============  ==========  ==============================================
pinned        presented     verified    verdict
============  ============  ==========  ==============================================
none          none          (any)       ``CLASSIC``: classic rules apply
none          K             yes         ``NEW_PIN``: pin K
(any)         K             no          ``BAD_SIGNATURE``: refused
K             K             yes         ``MATCH``: the pinned key signed it
K             K'            (any)       ``OTHER_KEY``: refused
K             none          (any)       ``UNSIGNED``: refused
============  ============  ==========  ==============================================

A refused message must never move the peer's address nor change what the node believes. A user
who knows the peer's key changed on purpose forgets the pin (``treedrive peers forget-key
PEER_ID``): the next signed message pins the new key.
"""

from __future__ import annotations

import enum
import shlex
from dataclasses import dataclass

from treedrive.core.identity import fingerprint
from treedrive.core.text import printable

MAX_SHOWN_ID = 64
"""Characters of a (stranger's) peer id that a reason shows at most."""


class Verdict(enum.Enum):
    CLASSIC = "classic"
    NEW_PIN = "new pin"
    MATCH = "match"
    OTHER_KEY = "other key"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad signature"


ACCEPTED = frozenset({Verdict.CLASSIC, Verdict.NEW_PIN, Verdict.MATCH})


@dataclass(frozen=True, slots=True)
class Judgement:
    """What :func:`judge` decided. ``reason`` says why a message was refused, in one line fit for
    the log and the dashboard (None when it was accepted)."""

    verdict: Verdict
    reason: str | None = None

    @property
    def accepted(self) -> bool:
        return self.verdict in ACCEPTED

    @property
    def pin(self) -> bool:
        """Whether the caller should pin the presented key now."""
        return self.verdict is Verdict.NEW_PIN


def judge(peer_id: str, pinned: bytes | None, presented: bytes | None, verified: bool) -> Judgement:
    """What to make of a message that claims ``peer_id``: ``pinned`` is the key pinned for it (None:
    none yet), ``presented`` the key the message carries (None: it carries none) and
    ``verified`` whether the message's signature verified under ``presented``."""
    who = shown(peer_id)
    if presented is not None and pinned is not None and presented != pinned:
        return Judgement(
            Verdict.OTHER_KEY,
            f"refused a message from peer {who}: it is signed with key {_fp(presented)}, but the "
            f"peer is pinned to key {_fp(pinned)} (if the key changed on purpose: "
            f"treedrive peers forget-key {who})",
        )
    if presented is not None and not verified:
        return Judgement(
            Verdict.BAD_SIGNATURE,
            f"refused a message from peer {who}: its signature does not verify under the key "
            f"it presents ({_fp(presented)})",
        )
    if presented is None and pinned is not None:
        return Judgement(
            Verdict.UNSIGNED,
            f"refused an unsigned message from peer {who}: the peer is pinned to key "
            f"{_fp(pinned)} and signs what it sends",
        )
    if presented is None:
        return Judgement(Verdict.CLASSIC)
    return Judgement(Verdict.MATCH if pinned is not None else Verdict.NEW_PIN)


def _fp(key: bytes) -> str:
    return fingerprint(key)


def shown(peer_id: str) -> str:
    """A stranger's peer id, escaped, cut short and quoted as a shell would need it: fit for one
    log line, and for the command the line suggests."""
    text = peer_id if len(peer_id) <= MAX_SHOWN_ID else peer_id[:MAX_SHOWN_ID] + "…"
    return shlex.quote(printable(text))
