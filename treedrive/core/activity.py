"""The lines a node's owner reads in its log: who joined and left, which file was received,
fetched, pushed or deleted, by name. One place for their wording, and a budget for the lines
that strangers can cause (a thousand forged peer ids make a few lines, not a thousand)."""

from __future__ import annotations

import logging
import time

from treedrive.core.bounded import TokenBucket
from treedrive.core.ids import short_id
from treedrive.core.model import FileMeta, PeerInfo
from treedrive.core.names import safe_name
from treedrive.core.text import human_size

log = logging.getLogger("treedrive.node")

PEER_LINES_PER_SECOND = 1.0
PEER_LINES_BURST = 20.0


def file_label(meta: FileMeta, size: int | None = None) -> str:
    """``notes.txt (12.0 KiB, 5b1f0c2ae01d)``: a file as the log names it."""
    shown = f"{human_size(size)}, " if size is not None else ""
    return f"{safe_name(meta.file_name)[:80]} ({shown}{short_id(meta.file_id)})"


def peer_label(peer_id: str | None, address: str | None = None) -> str:
    """``bob (127.0.0.1:8271)``, or the address alone when the peer did not say who it is."""
    if not peer_id:
        return address or "an unknown peer"
    # A claim: cut short here; the log's formatter escapes its control characters.
    return f"{peer_id[:64]} ({address})" if address else peer_id[:64]


class Activity:
    """Writes the activity lines. Lines about peers come out of a token bucket: past its burst,
    they are counted and the next line that gets through says how many were left out."""

    def __init__(self) -> None:
        self._peers = TokenBucket(PEER_LINES_PER_SECOND, PEER_LINES_BURST)
        self._left_out = 0

    def _peer_line(self, text: str, *args: object) -> None:
        if not self._peers.take(time.monotonic()):
            self._left_out += 1
            return
        if self._left_out:
            text += f" ({self._left_out} more peer changes not logged)"
            self._left_out = 0
        log.info(text, *args)

    def joined(self, peer: PeerInfo) -> None:
        kind = "TreeDrive" if peer.is_treedrive else "classic"
        self._peer_line("peer %s joined (%s peer)", peer_label(peer.peer_id, _addr(peer)), kind)

    def left(self, peer_ids: list[str], forgotten: int) -> None:
        for peer_id in peer_ids[:5]:
            self._peer_line("peer %s left (silent too long)", peer_label(peer_id))
        if len(peer_ids) > 5:
            self._peer_line("%d more peers left", len(peer_ids) - 5)
        if forgotten:
            log.info("%d files that no peer holds any more were forgotten", forgotten)

    def received(self, meta: FileMeta, size: int, sender: str) -> None:
        self._peer_line("received %s, pushed by %s", file_label(meta, size), sender)

    def fetching(self, meta: FileMeta, size: int | None, holders: list[str]) -> None:
        names = ", ".join(peer_label(h) for h in holders[:4]) + (", …" if len(holders) > 4 else "")
        log.info("fetching %s from %s", file_label(meta, size), names or "nobody")

    def fetched(self, meta: FileMeta, size: int, source: str, seconds: float) -> None:
        log.info("fetched %s from %s in %.1f s", file_label(meta, size), source, seconds)

    def pushed(self, meta: FileMeta, size: int, to: str | None) -> None:
        where = f"; sending it to {to}" if to else "; no peer to send it to yet"
        log.info("pushed %s%s", file_label(meta, size), where)

    def already_shared(self, meta: FileMeta) -> None:
        log.info("%s is already shared: nothing pushed", file_label(meta))

    def deleted(self, meta: FileMeta, by: str | None = None) -> None:
        if by is None:
            log.info("deleted %s everywhere", file_label(meta))
        else:
            self._peer_line("%s deleted by its owner %s", file_label(meta), peer_label(by))


def _addr(peer: PeerInfo) -> str:
    return f"{peer.host[:64]}:{peer.port}"
