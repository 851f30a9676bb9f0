"""What the node is told of the transfers on an inbound connection: uploads (their progress
also counted in the connection's state, for admission) and pushes arriving (tracked from their
first bytes, see ``InboundHandler.track_push``)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from treedrive.core.errors import StorageError
from treedrive.core.messages import FileData, Message
from treedrive.core.model import FileMeta
from treedrive.core.ports import FileSink, InboundHandler, Progress
from treedrive.transport import codec, wire
from treedrive.transport.admission import ConnState
from treedrive.transport.streams import Reporter, store

log = logging.getLogger(__name__)


def push_failure(exc: BaseException) -> str:
    """Why a push's body failed, for its transfer row."""
    if isinstance(exc, asyncio.CancelledError):
        return "cut off (this node closed the connection)"
    if isinstance(exc, TimeoutError):
        return f"timed out: {exc}" if str(exc) else "timed out"
    if isinstance(exc, StorageError):
        return str(exc)
    if isinstance(exc, OSError | asyncio.IncompleteReadError):
        return f"connection failed: {exc}"
    return str(exc) or type(exc).__name__


class UploadProgress:
    """An upload's progress that also counts its bytes in the connection's state."""

    def __init__(self, inner: Progress, state: ConnState) -> None:
        self.inner = inner
        self.state = state

    def update(self, done: int) -> None:
        self.state.sent = max(self.state.sent, done)
        self.inner.update(done)

    def finish(self, ok: bool, error: str | None = None) -> None:
        self.inner.finish(ok, error)


class UploadReports:
    """The node's handler, as the uploader sees it: the progress it reports of an upload also
    goes to the connection's state (for admission), where the kernel cannot tell."""

    def __init__(self, inner: InboundHandler, state: ConnState) -> None:
        self.inner = inner
        self.state = state
        self.peer_id = inner.peer_id
        self.features = inner.features
        self.key = inner.key

    def pinned_key(self, peer_id: str) -> bytes | None:
        return self.inner.pinned_key(peer_id)

    def open_sink(self) -> FileSink:
        return self.inner.open_sink()

    async def handle_message(self, message: Message, source: str) -> None:
        await self.inner.handle_message(message, source)

    def track_push(
        self, meta: FileMeta, source: str, sender: str | None, size: int | None
    ) -> Progress:
        return self.inner.track_push(meta, source, sender, size)

    async def handle_pushed_file(
        self,
        header: FileData,
        sink: FileSink | None,
        source: str,
        progress: Progress | None = None,
    ) -> None:
        await self.inner.handle_pushed_file(header, sink, source, progress)

    def file_to_serve(self, file_id: str) -> tuple[FileMeta, Path] | None:
        return self.inner.file_to_serve(file_id)

    def track_upload(self, meta: FileMeta, peer: str, size: int) -> Progress:
        return UploadProgress(self.inner.track_upload(meta, peer, size), self.state)

    def track_range(self, meta: FileMeta, peer: str, download: str | None, size: int) -> Progress:
        return UploadProgress(self.inner.track_range(meta, peer, download, size), self.state)


def track_hex_push(
    handler: InboundHandler, parser: codec.MessageParser, source: str
) -> Progress | None:
    """The progress of a classic (hex) push whose bytes begin to arrive, if the keys that came
    before ``data`` make a valid FILE_DATA record (a claim, for display only); else None."""
    meta = wire.partial_record(parser.fields_so_far)
    if meta is None:
        return None
    return handler.track_push(meta, source, None, None)


@dataclass(slots=True)
class Arriving:
    """A push arriving on one inbound connection: the sink its bytes go to and its progress,
    until they are handed to the node (:meth:`handed`); whatever is left when the connection
    ends is dropped and reported failed, saying ``why`` (:meth:`end`)."""

    sink: FileSink | None = None
    progress: Progress | None = None
    report: Reporter | None = None
    why: str = "dropped"

    def hex_chunk(
        self, handler: InboundHandler, parser: codec.MessageParser, source: str, data: bytes
    ) -> None:
        """Bytes of a classic (hex) push, tracked from the first (see :func:`track_hex_push`)."""
        if self.sink is None:
            self.sink = handler.open_sink()
            self.progress = track_hex_push(handler, parser, source)
            self.report = None if self.progress is None else Reporter(self.progress.update)
        store(self.sink.write, data)
        if self.report is not None:
            self.report(self.sink.size)

    def handed(self) -> tuple[FileSink | None, Progress | None]:
        """The sink and the progress, now the node's to finish."""
        sink, progress = self.sink, self.progress
        self.sink = self.progress = None
        return sink, progress

    def end(self, source: str) -> None:
        """The connection ends: drop what was not handed on, and say why its push failed."""
        if self.sink is not None:
            self.sink.abort()
        if self.progress is not None:
            try:
                self.progress.finish(False, self.why)
            except Exception as exc:  # a full disk, say: never hide why the push ended
                log.warning("%s: the end of a push was not recorded: %s", source, exc)
