"""Joining and staying in the network: the gossip round each interval, and the bootstrap hosts
tried again, with back-off, while the node knows no peer (saying why it has not joined)."""

from __future__ import annotations

import asyncio
import logging
import time

from treedrive.core.backoff import Backoff
from treedrive.core.context import NodeContext, logged
from treedrive.core.membership import Membership
from treedrive.core.replies import distinct_addresses

log = logging.getLogger(__name__)

BOOTSTRAP_FIRST_WAIT = 2.0
"""Seconds after the start before a node that still knows no peer says its bootstrap hosts have
not answered (and tries them again, with back-off)."""
BOOTSTRAP_FIRST_RETRY = 1.0
"""Seconds before the first retry of unanswered bootstrap hosts (doubling after each)."""
BOOTSTRAP_ANSWER_WAIT = 2.0
"""Seconds a bootstrap host that took our GOSSIP has to answer before it counts as silent."""
BOOTSTRAP_MAX_WAIT = 60.0
"""The longest pause between tries of bootstrap hosts while no peer is known."""


class Joining:
    """The node's gossip rounds and its bootstrap retries."""

    def __init__(self, ctx: NodeContext, membership: Membership) -> None:
        self.ctx = ctx
        self.membership = membership
        self.joined = asyncio.Event()
        """Set once the join-time downloads are done (or skipped)."""
        self.problem: str | None = None
        """Why the node has not joined through its bootstrap hosts yet (None: it has, or it
        has none); shown on the terminal, in the log and on the dashboard."""

    def _bootstrap_hosts(self, also: list[tuple[str, int]] | None = None) -> list[tuple[str, int]]:
        return distinct_addresses(
            (also or []) + [(a.host, a.port) for a in self.ctx.config.bootstrap],
            exclude=self.ctx.own_address(),
        )

    async def gossip_now(self) -> None:
        """Gossip to every tracked address (once each), and to the well-known hosts while we
        know nobody; then to the few dropped peers and untracked well-known hosts due to be
        tried again (:meth:`Membership.heal`)."""
        addresses = self.ctx.addresses()
        alone = not addresses or not self.joined.is_set()
        if alone:
            addresses = self._bootstrap_hosts(addresses)
        self.membership.gossip_to(addresses)
        self.membership.heal(addresses, well_known=not alone)

    async def gossip_loop(self) -> None:
        while not self.ctx.stopping.is_set():
            with logged("gossip"):
                await self.gossip_now()
            await asyncio.sleep(self.ctx.config.gossip_interval)

    async def bootstrap_loop(self) -> None:
        """While the node knows no peer, try its bootstrap hosts again with back-off, and say
        why it has not joined (``problem``: terminal, log, dashboard) until a peer answers. If
        every peer goes, it starts over."""
        ctx = self.ctx
        hosts = self._bootstrap_hosts()
        if not hosts:
            return
        first = BOOTSTRAP_FIRST_RETRY
        backoff = Backoff(first, max(first, min(BOOTSTRAP_MAX_WAIT, ctx.config.gossip_interval)))
        await asyncio.sleep(BOOTSTRAP_FIRST_WAIT)
        while not ctx.stopping.is_set():
            peers = ctx.peers()
            if peers:
                if self.problem is not None:
                    log.info("joined the network: %d peers known", len(peers))
                self.problem = None
                backoff.succeeded()
                await asyncio.sleep(ctx.config.cleanup_interval)
                continue
            gossip = self.membership.new_gossip()
            now = time.monotonic()
            for address in hosts:
                self.membership.replies.gossiped(address, now)
            ctx.counters.message_sent(gossip, len(hosts))
            sent = await asyncio.gather(*(ctx.network.send(h, p, gossip) for h, p in hosts))
            if any(sent) and await self.peer_within(BOOTSTRAP_ANSWER_WAIT):
                continue  # answered: joined
            delay = backoff.failed()
            self.problem = (
                f"{_why(hosts, any(sent))}; retrying in {delay:.{0 if delay >= 1 else 1}f} s"
            )
            if backoff.failures & (backoff.failures - 1) == 0:  # the 1st, 2nd, 4th, 8th… try
                log.warning("%s (try %d)", self.problem, backoff.failures)
            await self.peer_within(delay)

    async def peer_within(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for some peer to be known (a GOSSIP or reply came in)."""
        deadline = time.monotonic() + seconds
        while not self.ctx.stopping.is_set():
            if self.ctx.peers():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(0.25, left))
        return False


def _why(hosts: list[tuple[str, int]], reached: bool) -> str:
    names = ", ".join(f"{h}:{p}" for h, p in hosts[:4])
    if reached:
        return f"the bootstrap host {names} took our GOSSIP but no peer has answered"
    plural = "s" if len(hosts) > 1 else ""
    return f"cannot reach the bootstrap host{plural} {names} (no connection)"
