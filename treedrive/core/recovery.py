"""Crash recovery at start: make the store consistent after whatever stopped the node last
time, and settle the node's identity (its peer id)."""

from __future__ import annotations

import logging
import secrets
import time

from treedrive.core.context import NodeContext

log = logging.getLogger(__name__)


def new_peer_id() -> str:
    return f"td-{secrets.token_hex(4)}"


def recover(ctx: NodeContext) -> None:
    """Partial files nobody resumes go, downloads whose partial file went are forgotten, running
    transfers are marked interrupted, a local copy whose blob is missing becomes remote, a blob
    whose record never committed goes; ``ctx.peer_id`` becomes the one the data dir keeps
    (or the configured one, or a new one)."""
    now = time.time()
    blobs = ctx.store.blobs
    with ctx.store.reading() as uow:
        resumable = {d.file_id for d in uow.downloads.all()}
    removed = blobs.clean_partials(keep=frozenset(resumable))
    with ctx.transaction() as uow:
        for file_id in resumable:
            if not blobs.range_path(file_id).exists():
                uow.downloads.remove(file_id)
        stored = ctx.config.peer_id
        known = uow.identity.get()
        if stored is None:
            stored = known or new_peer_id()
        elif known is not None and known != stored:
            log.warning("data dir belonged to peer %r; now peer %r", known, stored)
        uow.identity.set(stored, now)
        ctx.peer_id = stored
        interrupted = uow.transfers.abandon_running(now)
        held = blobs.ids()
        for entry in uow.files.entries("local"):
            if entry.meta.file_id not in held:
                log.warning("local copy of %s is missing; now remote", entry.meta.file_id)
                uow.files.unmark_local(entry.meta.file_id)
        local = {m.file_id for m in uow.files.local_metas()}
        uow.commit()
    for orphan in held - local:
        # A crash between publishing a blob and committing its record leaves the blob alone.
        blobs.delete(orphan)
    if removed or interrupted:
        log.info(
            "recovered: %d partial files removed, %d transfers interrupted", removed, interrupted
        )
