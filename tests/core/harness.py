"""The node's test harness: a real store in tmp_path, real plugins, and a small recording
stand-in for the transport port (``treedrive.core.ports.Network``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treedrive.core.errors import TransferError
from treedrive.core.events import (
    Event,
    FileAdvertised,
    FileDeleted,
    FileStored,
    Notice,
)
from treedrive.core.fileid import compute_file_id
from treedrive.core.hookspecs import hookimpl
from treedrive.core.messages import FileData, Gossip, GossipReply, Message
from treedrive.core.model import MEGABYTE, CatalogEntry, FileMeta, PeerInfo
from treedrive.core.node import Node
from treedrive.core.ports import FileSink, InboundHandler, RangeAnswer, RangeFile

ME = "me"
MY_HOST, MY_PORT = "127.0.0.1", 7000
TS = 1_700_000_000


# -- the test double of the transport port --------------------------------------------------------
Serve = Callable[[str, FileSink], FileData]
"""What a fake holder does on GET_FILE: write into the sink and return the header, or raise."""


@dataclass
class RecordingNetwork:
    """Records what the node asks the transport to do; answers GET_FILE from ``holders``."""

    sent: list[tuple[str, int, Message]] = field(default_factory=list)
    pushed: list[tuple[str, int, FileMeta, bytes]] = field(default_factory=list)
    fetches: list[tuple[str, int, str]] = field(default_factory=list)
    holders: dict[tuple[str, int], Serve] = field(default_factory=dict)
    started: bool = False
    closed: bool = False
    raw_pushes: int = 0
    reachable_: list[tuple[str, int]] = field(default_factory=list)
    unreachable: set[tuple[str, int]] = field(default_factory=set)
    """Addresses whose pushes fail (recorded in ``refused``)."""
    refused: list[tuple[str, int, str]] = field(default_factory=list)
    rates: tuple[float | None, float | None] = (None, None)

    async def start(self, handler: InboundHandler) -> tuple[str, int]:
        self.started = True
        return MY_HOST, MY_PORT

    async def close(self) -> None:
        self.closed = True

    async def send(self, host: str, port: int, message: Message) -> bool:
        self.sent.append((host, port, message))
        return True

    def post(self, host: str, port: int, message: Message) -> None:
        self.sent.append((host, port, message))

    async def push_file(
        self,
        host: str,
        port: int,
        meta: FileMeta,
        path: Path,
        progress: Callable[[int], None] | None = None,
        raw: bool = False,
        peer_key: bytes | None = None,
    ) -> bool:
        if (host, port) in self.unreachable:
            self.refused.append((host, port, meta.file_id))
            return False
        self.pushed.append((host, port, meta, await asyncio.to_thread(path.read_bytes)))
        self.raw_pushes += raw
        return True

    def stats(self) -> dict[str, int]:
        return {}  # nothing refused or dropped: no transport

    def reachable(self, host: str, port: int) -> None:
        self.reachable_.append((host, port))

    def set_rate_limits(self, download: float | None, upload: float | None) -> None:
        self.rates = (download, upload)

    async def fetch_range(
        self,
        host: str,
        port: int,
        file_id: str,
        offset: int,
        length: int | None,
        partial: RangeFile,
        progress: Callable[[int], None] | None = None,
        written: Callable[[int], None] | None = None,
        download: str | None = None,
        peer_key: bytes | None = None,
    ) -> RangeAnswer:
        raise TransferError("this fake speaks only the classic protocol")

    async def fetch_file(
        self,
        host: str,
        port: int,
        file_id: str,
        sink: FileSink,
        progress: Callable[[int], None] | None = None,
        max_bytes: int | None = None,
    ) -> FileData:
        self.fetches.append((host, port, file_id))
        serve = self.holders.get((host, port))
        if serve is None:
            raise TransferError(f"connection to {host}:{port} refused")
        return serve(file_id, sink)

    def messages(self, kind: type[Any]) -> list[tuple[str, int, Any]]:
        return [(h, p, m) for h, p, m in self.sent if isinstance(m, kind)]


def serving(meta: FileMeta | None, data: bytes) -> Serve:
    def serve(file_id: str, sink: FileSink) -> FileData:
        sink.write(data)
        return FileData(meta)

    return serve


def failing(why: str) -> Serve:
    def serve(file_id: str, sink: FileSink) -> FileData:
        sink.write(b"half")
        raise TransferError(why)

    return serve


# -- test plugins ---------------------------------------------------------------------------------
class Recorder:
    """Records the events it is told about, and what the store says at that moment; and the
    notices, apart."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.visible: list[bool] = []
        self.notices: list[Notice] = []

    @hookimpl
    def treedrive_on_event(self, node: Node, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, FileAdvertised | FileStored):
            # Committed already: a fresh transaction sees the change.
            self.visible.append(node.file(event.meta.file_id) is not None)
        elif isinstance(event, FileDeleted):
            self.visible.append(node.file(event.file_id) is None)

    @hookimpl
    def treedrive_on_notice(self, node: Node, notice: Notice) -> None:
        self.notices.append(notice)

    def of(self, kind: type[Any]) -> list[Any]:
        """The events, or the notices, of one kind."""
        return [e for e in [*self.events, *self.notices] if isinstance(e, kind)]


class Broken:
    """Every hook raises."""

    @hookimpl
    def treedrive_on_event(self, node: Node, event: Event) -> None:
        raise RuntimeError("on_event exploded")

    @hookimpl
    def treedrive_gossip_extra(self, node: Node, message_type: str) -> Mapping[str, Any]:
        raise RuntimeError("gossip_extra exploded")

    @hookimpl
    def treedrive_accept_file(self, node: Node, meta: FileMeta, peer_id: str | None) -> bool:
        raise RuntimeError("accept_file exploded")

    @hookimpl
    def treedrive_order_holders(
        self, node: Node, entry: CatalogEntry, holders: Sequence[PeerInfo]
    ) -> Sequence[PeerInfo]:
        raise RuntimeError("order_holders exploded")


# -- fixtures -------------------------------------------------------------------------------------
@dataclass
class Harness:
    node: Node
    net: RecordingNetwork
    recorder: Recorder
    tmp: Path

    async def settle(self) -> None:
        """Let every background send the node (and the plugins) spawned run to the end."""
        for _ in range(100):
            tasks = set(self.node._tasks) | set(self.node.plugins._tasks)
            if not tasks:
                return
            await asyncio.wait(tasks)
        raise AssertionError("background tasks did not settle")

    def add_peer(self, peer_id: str, port: int, last_seen: float = 1e12) -> PeerInfo:
        with self.node.store.unit_of_work() as uow:
            peer, _ = uow.peers.upsert(peer_id, "127.0.0.1", port, last_seen, None)
            uow.commit()
        return peer

    def advertise(self, meta: FileMeta, *holders: str) -> None:
        with self.node.store.unit_of_work() as uow:
            uow.files.merge(meta, 1.0)
            for h in holders:
                uow.files.add_holder(meta.file_id, h, 1.0)
            uow.commit()

    async def receive(self, meta: FileMeta, data: bytes, source: str = "src") -> None:
        """An unsolicited FILE_DATA with ``data`` arrives."""
        sink = self.node.open_sink()
        sink.write(data)
        await self.node.handle_pushed_file(FileData(meta), sink, source)

    def local_ids(self) -> set[str]:
        return {e.meta.file_id for e in self.node.files("local")}

    def partials(self) -> list[Path]:
        return list(self.node.store.blobs.partial_dir.iterdir())


def file_of(data: bytes, ts: int = TS, owner: str = "alice", name: str = "a.txt") -> FileMeta:
    return FileMeta(compute_file_id(data, ts), name, len(data) / MEGABYTE, owner, ts)


def gossip(peer_id: str, port: int, gid: str = "g-1", **extra: Any) -> Gossip:
    return Gossip(host="127.0.0.1", port=port, id=gid, peer_id=peer_id, extra=extra)


def reply(peer_id: str, port: int, *files: FileMeta, **extra: Any) -> GossipReply:
    return GossipReply(host="127.0.0.1", port=port, peer_id=peer_id, files=files, extra=extra)
