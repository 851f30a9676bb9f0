"""The JSON the node's API answers with, as typed dictionaries: what the client returns is the
node's JSON as it came (``json.dumps`` gives it back unchanged), typed for a checker.

A node may add keys in later versions; the keys here are the ones it has always sent, except
those marked ``NotRequired``."""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

Scope = Literal["local", "remote", "both"]
Timestamp = int | float | str
"""A file's timestamp as its owner sent it (a number; now and then a numeric string)."""


class Counts(TypedDict):
    peers: int
    files: int
    local: int
    remote: int


class RefusedPeer(TypedDict):
    """The latest GOSSIP or GOSSIP_REPLY refused for its key (``docs/protocol.md`` 2.7)."""

    time: float
    peer_id: str
    source: str
    reason: str
    code: str


class Health(TypedDict):
    """``GET /api/v1/health`` (no token): the node is up and serving."""

    status: str
    version: str
    peer_id: str
    uptime_s: float


class Status(TypedDict):
    """``GET /api/status``."""

    peer_id: str
    host: str
    port: int
    http: str | None
    started_at: float
    uptime: float
    features: list[str]
    fingerprint: NotRequired[str]
    """The node key's fingerprint (a node from before keys sends none)."""
    public_key: NotRequired[str]
    counts: Counts
    transfers: int
    bootstrap_problem: str | None
    refused_peers: dict[str, int]
    last_refused_peer: RefusedPeer | None
    authorized: bool
    """Whether the request carried the node's token."""


class Peer(TypedDict):
    """A tracked peer (``GET /api/peers``). ``host`` and ``peer_id`` are the peer's claims."""

    peer_id: str
    host: str
    port: int
    last_seen: float
    treedrive: bool
    """A TreeDrive node (speaks the extension); False: a classic peer."""
    features: list[str]


class FileRecord(TypedDict):
    """A file in the catalogue (``GET /api/files/{id}``, and each of a page's)."""

    file_id: str
    file_name: str
    display_name: str
    """The name safe to save under (no path, no control characters)."""
    file_size: float
    """In MiB, as the classic protocol says it."""
    size_bytes: int | None
    file_owner: str
    file_timestamp: Timestamp
    has_copy: bool
    """This node holds the verified bytes."""
    holders: list[str]
    mine: bool


class PushResult(FileRecord):
    """``POST /api/files``: the record, and whether those bytes were already shared."""

    existing: bool


class FilesPage(TypedDict):
    """``GET /api/files``: ``limit`` records from ``offset`` of ``total``."""

    scope: Scope
    total: int
    offset: int
    limit: int
    files: list[FileRecord]


class Transfer(TypedDict):
    """A transfer under way. ``percent`` reaches 100 only once the file is verified."""

    transfer_id: int
    file_id: str
    file_name: str
    direction: Literal["in", "out"]
    peer_id: str | None
    bytes_done: int
    bytes_total: int | None
    percent: float | None
    bytes_at_start: int
    rate: float | None
    """Bytes per second in this run (a resume's bytes already on disk do not count)."""
    eta: float | None
    started_at: float


class PastTransfer(TypedDict):
    """A recorded transfer (the last 20 are ``recent``)."""

    transfer_id: int
    file_id: str
    direction: Literal["in", "out"]
    peer_id: str | None
    state: str
    bytes_done: int
    bytes_total: int | None
    started_at: float
    updated_at: float
    error: str | None


class Transfers(TypedDict):
    """``GET /api/transfers``."""

    active: list[Transfer]
    recent: list[PastTransfer]


class Limits(TypedDict):
    """``GET``/``PUT /api/limits``: bytes per second; None: no limit."""

    download: float | None
    upload: float | None


class KeyForgotten(TypedDict):
    """``DELETE /api/peers/{peer_id}/key``."""

    peer_id: str
    forgotten: bool


class Deleted(TypedDict):
    """``DELETE /api/files/{id}``: the full id deleted."""

    deleted: str


ThroughputSample = TypedDict(
    "ThroughputSample",
    {"t": float, "in": float, "out": float, "in_bytes": float, "out_bytes": float},
)
"""One second of ``GET /api/throughput``: bytes per second in and out, and bytes moved."""
