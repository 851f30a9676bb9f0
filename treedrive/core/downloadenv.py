"""What a ranged download (:mod:`treedrive.core.download`) is given: its collaborators and
settings (:class:`DownloadEnv`, built by the node's :mod:`~treedrive.core.fetching`), and which
peers may serve it (:func:`raw_holders`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from treedrive.core.messages import RAW_RANGE
from treedrive.core.model import CatalogEntry, DownloadState, FileMeta, PeerInfo
from treedrive.core.ports import Network, RangeFile
from treedrive.core.transfers import TransferHandle

BeginTransfer = Callable[[FileMeta, str, str | None, int | None, int], TransferHandle]
"""Record a transfer and track its progress: (record, direction, peer, bytes in all, done)."""


@dataclass(frozen=True, slots=True)
class DownloadEnv:
    """What a ranged download works with (the node builds it): its collaborators, each a port
    or a plain callable, and its settings."""

    network: Network
    open_partial: Callable[[str], tuple[RangeFile, bool]]
    """Open a file's partial file to resume it (created when missing); and whether it was
    there already."""
    load_state: Callable[[str], DownloadState | None]
    save_state: Callable[[DownloadState], None]
    """Record a download's resumable state (StorageError on a full disk)."""
    drop_state: Callable[[str], None]
    begin_transfer: BeginTransfer
    holders: Callable[[str], list[PeerInfo] | None]
    """The current usable holders of a file (see :func:`raw_holders`); None: it was deleted."""
    distrust: Callable[[str], None]
    """Avoid a peer as a holder for a while (it lied about a file)."""
    refused: Callable[[str, str, str], None]
    """A holder's answer about a file was refused: (file id, peer id, reason)."""
    stored: Callable[[FileMeta, int], None]
    """The file's blob is in place: mark it local (with the record and size it verified under)
    and forget its download, in one transaction."""
    free_space: Callable[[], int]
    """Free bytes on the disk of the partial files."""
    chunk_size: int | None
    """None: chosen by the file's size (:func:`chunk_size_for`)."""
    max_inflight: int
    stall_timeout: float
    sync_every: int
    secure_key: Callable[[PeerInfo], bytes | None] = lambda peer: None
    """The key a connection to a holder must be bound to (TLS, PROTOCOL.md 2.9); None: in
    clear."""


def raw_holders(
    entry: CatalogEntry | None, peers: Iterable[PeerInfo], distrusted: Callable[[str], bool]
) -> list[PeerInfo] | None:
    """The peers among ``peers`` that hold ``entry`` by the catalogue, speak ``raw-range`` and
    are not distrusted; None when the file is gone from the catalogue."""
    if entry is None:
        return None
    return [
        p
        for p in peers
        if p.peer_id in entry.holders
        and RAW_RANGE in (p.features or ())
        and not distrusted(p.peer_id)
    ]
