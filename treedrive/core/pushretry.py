"""A push that did not reach its target is tried again with another peer (pure, no clock).

The user's push sends the new file to one random peer, so that the network holds a second copy.
When that peer cannot be reached (it crashed, or is across a partition), the push goes to another
peer: first those not tried yet, then, when every peer was tried, the one tried longest ago. The
waits between tries double from :data:`FIRST_WAIT` up to the gossip interval; after
:data:`ATTEMPTS` tries in all the node gives up (the file stays here for peers to fetch). It stops
as soon as another peer is known to hold the file (a peer fetched it) or the file is gone here.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from treedrive.core.backoff import Backoff
from treedrive.core.model import PeerInfo

ATTEMPTS = 6
"""Pushes of one file, at most (the first one included)."""
FIRST_WAIT = 1.0
"""Seconds before the second try, at most (the waits double, up to the gossip interval)."""


@dataclass(slots=True)
class PushRetry:
    """The tries of one push (see the module's docstring)."""

    interval: float
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = ATTEMPTS
    tried: list[str] = field(default_factory=list)
    """Peer ids tried, in order (a peer tried again moves to the end)."""
    _backoff: Backoff = field(init=False)

    def __post_init__(self) -> None:
        first = min(FIRST_WAIT, self.interval)
        self._backoff = Backoff(first, max(first, self.interval))

    def failed(self, peer_id: str | None) -> float | None:
        """The push to ``peer_id`` failed (None: there was no peer to push to; that counts as
        a try too): seconds to wait before the next try, or None when the node has tried
        enough."""
        if peer_id is not None:
            if peer_id in self.tried:
                self.tried.remove(peer_id)
            self.tried.append(peer_id)
        if self._backoff.failures + 1 >= self.attempts:
            return None
        return self._backoff.failed()

    def next_target(self, peers: Sequence[PeerInfo], holders: Collection[str]) -> PeerInfo | None:
        """Whom to push to now: a random peer not tried yet, else the one tried longest ago;
        None when some peer already holds the file (``holders``) or no peer is known."""
        if holders or not peers:
            return None
        fresh = [p for p in peers if p.peer_id not in self.tried]
        if fresh:
            return self.rng.choice(fresh)
        order = {peer_id: i for i, peer_id in enumerate(self.tried)}
        return min(peers, key=lambda p: order[p.peer_id])
