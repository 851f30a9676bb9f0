"""The catalogue news that rides on :mod:`treedrive.core.swim`'s messages: the changes to
spread (each a bounded number of times) and the heads of the origins that changed lately, so a
node whose news missed a change learns that it is behind. Pure: time is the caller's."""

from __future__ import annotations

import math
import random

from treedrive.core.deltas import Change
from treedrive.core.deltasync import Catalogue
from treedrive.core.spread import SpreadQueue
from treedrive.core.swimtypes import Config


class ChangeNews:
    """What one node spreads of the catalogue (``me``: its peer id)."""

    def __init__(self, me: str, catalogue: Catalogue, rng: random.Random, config: Config) -> None:
        self.me, self.catalogue, self.rng, self.config = me, catalogue, rng, config
        self._changes: SpreadQueue[Change] = SpreadQueue()
        self._recent: dict[str, float] = {}
        """Origins whose changes this node spread lately, oldest first."""

    def __bool__(self) -> bool:
        return bool(self._changes)

    def head_of(self, peer: str) -> int:
        """The last change of ``peer`` that this node has (-1: none known)."""
        view = self.catalogue.views.get(peer)
        return -1 if view is None else view.head

    def spread(self, changes: list[Change], now: float) -> None:
        """Catalogue changes to spread (this node's own, or news that was new here)."""
        for c in changes:
            self._changes.put((c.origin, c.file_id), c, now)
            self._recent.pop(c.origin, None)  # re-inserted last: oldest stay first
            self._recent[c.origin] = now

    def take(self, limit: int) -> tuple[Change, ...]:
        """The changes for the next message, each sent at most ``limit`` times in all."""
        return tuple(self._changes.take(self.config.max_news, limit, -math.inf))

    def heads(self, now: float) -> tuple[tuple[str, int], ...]:
        """A few origins that changed lately, with their heads as this node knows them."""
        horizon = now - self.config.heads_rounds
        while self._recent:
            first = next(iter(self._recent))
            if self._recent[first] >= horizon:
                break
            del self._recent[first]
        picked = list(self._recent)
        if len(picked) > self.config.heads:
            picked = self.rng.sample(picked, self.config.heads)
        out = []
        for origin in picked:
            head = self.catalogue.head() if origin == self.me else self.head_of(origin)
            if head > 0:
                out.append((origin, head))
        return tuple(out)
