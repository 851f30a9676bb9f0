"""Whether the bytes of a ranged download are the file, and which holder sent bad ones.

A file id commits to the bytes and the timestamp: the bytes are verified under the record's
timestamp, then under those the holders' answers carried (a first-seen record may be a forgery).
When they do not verify, the chunks of each holder in turn (the one that sent the most first)
are fetched again, whole, from the others, until they do: that names the holder that sent bad
bytes, which is distrusted for a while.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import TYPE_CHECKING

from treedrive.core import fileid
from treedrive.core.fetcher import Fetcher
from treedrive.core.frontier import Frontier
from treedrive.core.model import FileMeta, Timestamp
from treedrive.core.ports import RangeFile

if TYPE_CHECKING:
    from treedrive.core.downloadenv import DownloadEnv

log = logging.getLogger(__name__)


class Verifier:
    """The verification of one download of ``meta``'s file, fetched by ``fetcher`` into
    ``partial``."""

    def __init__(
        self, env: DownloadEnv, meta: FileMeta, label: str, fetcher: Fetcher, partial: RangeFile
    ) -> None:
        self.env = env
        self.meta = meta
        self.label = label
        self.fetcher = fetcher
        self.partial = partial
        self.verified: Timestamp | None = None
        """The timestamp the bytes verified under, once they did."""

    @property
    def timestamps(self) -> list[Timestamp]:
        """What the bytes are verified under: the record's timestamp, then those the holders'
        answers carry (a first-seen record may be a forgery; the id commits to the true one)."""
        record = self.meta.file_timestamp
        told = self.fetcher.told_timestamps.values()
        return [record, *dict.fromkeys(ts for ts in told if ts != record)]

    def matches(self, h: hashlib._Hash) -> bool:
        """Whether the bytes verify under one of ``timestamps`` (remembered in ``verified``)."""
        for ts in self.timestamps:
            if fileid.matches(h, ts, self.meta.file_id):
                self.verified = ts
                return True
        return False

    async def _rehash(self, size: int) -> hashlib._Hash:
        h = hashlib.sha256()
        await asyncio.to_thread(self.partial.hash_span, h, 0, size)
        return h

    async def find_bad_holder(self, frontier: Frontier) -> bool:
        """The bytes do not verify: fetch each holder's chunks again, whole, from the others;
        the holder whose chunks, replaced, make the file verify sent the bad bytes (it is
        blamed: True). False when no set of holders gives bytes that verify."""
        blame = self.fetcher.sched.blame
        for suspect in blame.suspects():
            chunks = blame.chunks_of(suspect)
            if not [p for p in self.fetcher.usable() if p.peer_id != suspect]:
                continue
            log.warning(
                "%s did not verify; fetching %d chunks that %s sent from other holders",
                self.label,
                len(chunks),
                suspect,
            )
            frontier.reset(chunks)
            blame.forget(chunks)
            await self.fetcher.fetch_chunks(frontier, chunks, avoid=suspect)
            if self.matches(await self._rehash(frontier.size)):
                self._blame(suspect, len(chunks))
                return True
        return False

    def _blame(self, peer_id: str, chunks: int) -> None:
        reason = f"sent {chunks} chunks that do not match the file id"
        log.warning("holder %s of %s %s; avoiding it", peer_id, self.label, reason)
        self.env.distrust(peer_id)
        self.env.refused(self.meta.file_id, peer_id, reason)
