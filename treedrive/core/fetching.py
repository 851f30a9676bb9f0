"""Getting files: the user's ``get``, the downloads the selector picks on join, and interrupted
downloads resumed. A TreeDrive holder is asked for ranges (:mod:`treedrive.core.download`), a
classic one for the whole file (PROTOCOL.md 1.5); the bytes verify against the id before they
are kept, and a holder whose bytes do not is avoided for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace

from treedrive.core.activity import file_label, peer_label
from treedrive.core.catalogue import Catalogue
from treedrive.core.context import NodeContext
from treedrive.core.download import RAW_RANGE, DownloadEnv, RangedDownload, raw_holders
from treedrive.core.errors import FetchFailed, NodeError, NotFound, StorageError, TransferError
from treedrive.core.events import FileRefused
from treedrive.core.model import CatalogEntry, DownloadState, FileMeta, PeerInfo
from treedrive.core.ports import RangeFile
from treedrive.core.sharing import Sharing
from treedrive.core.sizes import classic_cap, size_hint
from treedrive.core.transfers import Transfers

log = logging.getLogger(__name__)

DISTRUST_FOR = 600.0  # seconds a holder that sent bad bytes is avoided


class Fetching:
    """Downloads (see the module's docstring)."""

    def __init__(
        self, ctx: NodeContext, catalogue: Catalogue, sharing: Sharing, transfers: Transfers
    ) -> None:
        self.ctx = ctx
        self.catalogue = catalogue
        self.sharing = sharing
        self.transfers = transfers
        self.running: dict[str, asyncio.Future[CatalogEntry]] = {}
        """The downloads under way, by file id: a second ``get`` waits for the first."""
        self._distrusted: dict[str, float] = {}

    # -- holders ------------------------------------------------------------------------------
    def distrust(self, peer_id: str) -> None:
        """Avoid ``peer_id`` as a holder for a while: it sent bytes that did not verify."""
        self._distrusted[peer_id] = time.monotonic() + DISTRUST_FOR

    def distrusted(self, peer_id: str) -> bool:
        return self._distrusted.get(peer_id, 0.0) > time.monotonic()

    def _holders(self, entry: CatalogEntry, tracked: dict[str, PeerInfo]) -> list[PeerInfo]:
        """The tracked holders of ``entry``, trusted ones first if any, in the order the
        holder-ordering hook says."""
        ctx = self.ctx
        holders = [tracked[h] for h in entry.holders if h in tracked]
        if holders:
            ctx.activity.fetching(entry.meta, entry.size_bytes, [h.peer_id for h in holders])
        trusted = [p for p in holders if not self.distrusted(p.peer_id)] or holders
        return ctx.plugins.order_holders(ctx.hook_node, entry, trusted) or []

    # -- get ----------------------------------------------------------------------------------
    async def get(self, file_id: str) -> CatalogEntry:
        """Fetch a file from a holder (the next on failure), verify it, store it, announce it.
        ``file_id`` may be a unique prefix. One download per file: a second call waits for
        the first."""
        file_id = self.ctx.resolve_id(file_id)
        running = self.running.get(file_id)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[CatalogEntry] = asyncio.get_running_loop().create_future()
        self.running[file_id] = future
        try:
            result = await self._get(file_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters, if any, re-raise it
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self.running[file_id]

    async def _get(self, file_id: str) -> CatalogEntry:
        ctx = self.ctx
        with ctx.store.reading() as uow:
            entry = uow.files.get(file_id)
            tracked = {p.peer_id: p for p in uow.peers.all()}
        if entry is None:
            raise NotFound(f"no file {file_id!r} in the catalogue")
        if entry.has_copy:
            return entry
        ordered = self._holders(entry, tracked)
        errors: list[str] = []
        extension = [p for p in ordered if RAW_RANGE in (p.features or ())]
        if RAW_RANGE not in ctx.features:
            extension = []
        if extension:
            if await self._ranged(entry, extension, errors):
                return self._stored_entry(file_id)
            # They may still answer a classic GET_FILE; not those that take TLS (2.9): a relay
            # that breaks the TLS must not get the bytes in clear instead.
            extension = [p for p in extension if ctx.secure_key(p) is not None]
        for peer in ordered:
            if peer in extension:
                continue
            ok, why = await self._classic(entry, peer)
            if ok:
                return self._stored_entry(file_id)
            errors.append(f"{peer.peer_id}: {why}")
        if not any(h in tracked for h in entry.holders):
            raise FetchFailed(f"no tracked peer holds {file_label(entry.meta)}")
        raise FetchFailed(f"could not fetch {file_label(entry.meta)}: {'; '.join(errors)}")

    def _stored_entry(self, file_id: str) -> CatalogEntry:
        stored = self.ctx.file(file_id)
        assert stored is not None
        return stored

    async def _ranged(
        self, entry: CatalogEntry, holders: list[PeerInfo], errors: list[str]
    ) -> bool:
        """A ranged, multi-source download from ``holders`` (errors go to ``errors``)."""
        try:
            download = RangedDownload(self._download_env(), entry, holders)
            await download.run()
        except FetchFailed as exc:
            errors.append(str(exc))
            return False
        file_id = entry.meta.file_id
        self.catalogue.stored(download.verified_meta, self.ctx.store.blobs.size(file_id), "get")
        return True

    def _download_env(self) -> DownloadEnv:
        """What a ranged download works with: this node's network, store and settings."""
        ctx = self.ctx
        store, blobs = ctx.store, ctx.store.blobs

        def open_partial(file_id: str) -> tuple[RangeFile, bool]:
            existed = blobs.range_path(file_id).exists()
            return blobs.partial(file_id, keep=True), existed

        def load_state(file_id: str) -> DownloadState | None:
            with store.reading() as uow:
                return uow.downloads.get(file_id)

        def save_state(state: DownloadState) -> None:
            with store.unit_of_work() as uow:
                uow.downloads.save(state, time.time())
                uow.commit()

        def drop_state(file_id: str) -> None:
            with store.unit_of_work() as uow:
                uow.downloads.remove(file_id)
                uow.commit()

        def refused(file_id: str, peer_id: str, why: str) -> None:
            ctx.counters.refused["bytes"] += 1
            ctx.notify(FileRefused(file_id, peer_id, why))

        def stored(meta: FileMeta, size: int) -> None:
            with store.unit_of_work() as uow:
                uow.downloads.remove(meta.file_id)
                uow.files.mark_local(meta, size, time.time())
                uow.commit()

        cfg = ctx.config
        return DownloadEnv(
            network=ctx.network,
            open_partial=open_partial,
            load_state=load_state,
            save_state=save_state,
            drop_state=drop_state,
            begin_transfer=self.transfers.begin,
            holders=lambda file_id: raw_holders(ctx.file(file_id), ctx.peers(), self.distrusted),
            distrust=self.distrust,
            refused=refused,
            stored=stored,
            free_space=blobs.free,
            chunk_size=cfg.chunk_size,
            max_inflight=cfg.max_inflight,
            stall_timeout=cfg.stall_timeout,
            sync_every=cfg.sync_every,
            secure_key=ctx.secure_key,
        )

    async def _classic(self, entry: CatalogEntry, peer: PeerInfo) -> tuple[bool, str]:
        """One classic GET_FILE to ``peer``: the whole file, verified and stored, or why not."""
        ctx = self.ctx
        meta = entry.meta
        # Classic peers do not say the size before the bytes: estimate it from the record.
        transfer = self.transfers.begin(meta, "in", peer.peer_id, size_hint(entry) or None)
        writer = ctx.store.blobs.writer()
        why = ""
        try:
            header = await ctx.network.fetch_file(
                peer.host, peer.port, meta.file_id, writer, transfer.update,
                max_bytes=classic_cap(entry),
            )  # fmt: skip
        except TransferError as exc:
            why = str(exc)
        except StorageError as exc:
            log.error("fetching %s stopped: %s", file_label(meta), exc)
            with contextlib.suppress(Exception):  # the disk may refuse this record too
                transfer.finish(False, str(exc))
            raise
        else:
            transfer.update(writer.size)
            if header.meta is None:
                why = "does not have it"
                with ctx.transaction() as uow:
                    uow.files.remove_holder(meta.file_id, peer.peer_id)
                    uow.commit()
            elif header.meta.file_id != meta.file_id:
                why = f"sent another file ({header.meta.file_id[:12]}…)"
            else:
                # Verify under the timestamp the holder sent, else under the one we recorded.
                ts = header.meta.file_timestamp
                await asyncio.to_thread(writer.digest)  # the hasher catches up off the loop
                if not writer.matches(meta.file_id, ts):
                    ts = meta.file_timestamp
                if await self.sharing.commit_blob(writer, meta.file_id, ts, peer.peer_id):
                    transfer.finish(True)
                    self.catalogue.stored(replace(meta, file_timestamp=ts), writer.size, "get")
                    ctx.activity.fetched(
                        meta, writer.size, peer_label(peer.peer_id),
                        time.monotonic() - transfer.state.started_mono,
                    )  # fmt: skip
                    return True, ""
                why = "sent bytes that do not match the file id"
                self.distrust(peer.peer_id)  # verified under neither its timestamp nor ours
        finally:
            writer.abort()  # a no-op once committed
        log.warning(
            "fetching %s from %s failed: %s", file_label(meta), peer_label(peer.peer_id), why
        )
        transfer.finish(False, why)
        return False, why

    # -- on join, and resumed -----------------------------------------------------------------
    async def join(self, joined: asyncio.Event) -> None:
        """After the first replies settle, finish interrupted downloads, then fetch what the
        download selector picks; ``joined`` is set after."""
        try:
            await asyncio.sleep(self.ctx.config.join_delay)
            await self.resume_downloads()
            await self.fetch_selected()
        finally:
            joined.set()

    async def resume_downloads(self) -> list[str]:
        """Continue the ranged downloads a stop or crash interrupted."""
        with self.ctx.store.reading() as uow:
            pending = [d.file_id for d in uow.downloads.all()]
        return await self._get_each(pending, "resuming the download of %s failed: %s")

    async def fetch_selected(self) -> list[str]:
        """Fetch what the download selector picks among the files tracked peers hold."""
        ctx = self.ctx
        limit = ctx.config.download_limit
        if limit <= 0:
            return []  # nothing would be fetched: do not read the whole catalogue for it
        # On the event loop: a read in a worker thread can outlive the node's stop (its task
        # cancelled, the store closed under it) or wait behind busy workers. With 100,000
        # records this read takes about 1.5 s once, at join; with no download limit, never.
        candidates = self._candidates()
        if not candidates:
            return []
        chosen = ctx.plugins.select_downloads(ctx.hook_node, candidates, limit)
        return await self._get_each((chosen or [])[:limit], "join download of %s failed: %s")

    def _candidates(self) -> list[CatalogEntry]:
        """The remote files some tracked peer holds (newest first, as the store lists them)."""
        with self.ctx.store.reading() as uow:
            tracked = {p.peer_id for p in uow.peers.all()}
            remote = uow.files.entries("remote")
        return [e for e in remote if any(h in tracked for h in e.holders)]

    async def _get_each(self, file_ids: list[str], failed: str) -> list[str]:
        got = []
        for file_id in file_ids:
            try:
                await self.get(file_id)
                got.append(file_id)
            except NodeError as exc:
                log.warning(failed, file_id[:12], exc)
        return got

    def retry_downloads(self) -> None:
        """Interrupted downloads whose holders are (back) in reach continue by themselves."""
        ctx = self.ctx
        with ctx.store.reading() as uow:
            pending = [d.file_id for d in uow.downloads.all() if d.file_id not in self.running]
            tracked = {p.peer_id for p in uow.peers.all()}
            ready = [
                f
                for f in pending
                if (e := uow.files.get(f)) is not None and tracked.intersection(e.holders)
            ]
        for file_id in ready:
            ctx.spawn(self._quiet_get(file_id), f"resume {file_id[:12]}")

    async def _quiet_get(self, file_id: str) -> None:
        try:
            await self.get(file_id)
        except NodeError as exc:
            log.info("download of %s not finished yet: %s", file_id[:12], exc)
