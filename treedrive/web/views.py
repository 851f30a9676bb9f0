"""JSON shapes of the domain values (the API's and the event stream's)."""

from __future__ import annotations

import math
import time
from typing import Any

from treedrive.core.events import (
    Event,
    FileAdvertised,
    FileDeleted,
    FileRefused,
    FileStored,
    Notice,
    PeerExpired,
    PeerRefused,
    PeerSeen,
    TransferFinished,
    TransferProgress,
)
from treedrive.core.identity import encode_b64
from treedrive.core.model import CatalogEntry, PeerInfo, Timestamp, TransferState
from treedrive.core.names import safe_name
from treedrive.core.node import Node


def peer_json(p: PeerInfo) -> dict[str, Any]:
    return {
        "peer_id": p.peer_id,
        "host": p.host,
        "port": p.port,
        "last_seen": p.last_seen,
        "treedrive": p.is_treedrive,
        "features": sorted(p.features or ()),
    }


def file_json(e: CatalogEntry, node: Node) -> dict[str, Any]:
    m = e.meta
    return {
        "file_id": m.file_id,
        "file_name": m.file_name,
        "display_name": safe_name(m.file_name),
        "file_size": m.file_size,
        "size_bytes": e.size_bytes,
        "file_owner": m.file_owner,
        "file_timestamp": m.file_timestamp,
        "has_copy": e.has_copy,
        "holders": list(e.holders),
        "mine": m.file_owner == node.peer_id,
    }


def transfer_json(t: TransferState, committed: bool = False) -> dict[str, Any]:
    """A transfer; ``percent`` reaches 100 only once the file is committed and verified."""
    total = t.bytes_total
    return {
        "transfer_id": t.transfer_id,
        "file_id": t.file_id,
        "file_name": safe_name(t.file_name),
        "direction": t.direction,
        "peer_id": t.peer_id,
        "bytes_done": t.bytes_done,
        "bytes_total": total,
        "percent": 100.0
        if committed
        else (None if not total else min(99.9, 100.0 * t.bytes_done / total)),
        "bytes_at_start": t.bytes_at_start,
        "rate": t.rate,  # bytes per second in this run: a resume's bytes on disk do not count
        "eta": t.eta,
        "started_at": t.started_at,
    }


def number(value: Timestamp) -> Timestamp:
    """A size or timestamp as a JSON number, as the seed serves them. Peers send timestamps as
    numbers, now and then as a numeric string (``"1700000000"``): that becomes the number. A
    string that is no number is kept as it came (nothing honest to turn it into)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        parsed = float(text)
    except ValueError:
        return value
    return parsed if math.isfinite(parsed) else value


def stats_json(node: Node) -> dict[str, Any]:
    """The seed-compatible ``/stats.json`` (safe to build in a worker thread)."""
    peers, files = node.reads.everything()
    return {
        "peerId": node.peer_id,
        "peers": [stats_peer(p) for p in peers],
        "files": [stats_file(node, e) for e in files],
    }


def stats_peer(p: PeerInfo) -> dict[str, Any]:
    """A peer as ``/stats.json`` shows it."""
    return {
        "peerId": p.peer_id,
        "host": p.host,
        "port": p.port,
        "last_seen": number(p.last_seen),
    }


def stats_file(node: Node, e: CatalogEntry) -> dict[str, Any]:
    """A catalogue entry as ``/stats.json`` shows it (the seed's keys and types)."""
    return {
        "file_name": e.meta.file_name,
        "file_size": number(e.meta.file_size),
        "file_id": e.meta.file_id,
        "file_owner": e.meta.file_owner,
        "file_timestamp": number(e.meta.file_timestamp),
        "has_copy": e.has_copy,  # a JSON boolean, as the seed serves it
        "peers_with_file": ([node.peer_id] if e.has_copy else []) + list(e.holders),
    }


def status_json(node: Node) -> dict[str, Any]:
    c = node.reads.counts()
    counts = {"peers": c.peers, "files": c.files, "local": c.local, "remote": c.remote}
    return {
        "peer_id": node.peer_id,
        "host": node.host,
        "port": node.port,
        "http": node.http_url,
        "started_at": node.started_at,
        "uptime": time.time() - node.started_at,
        "features": sorted(node.features),
        "fingerprint": node.key.fingerprint,
        "public_key": encode_b64(node.key.public),
        "counts": counts,
        "transfers": len(node.active_transfers),
        "bootstrap_problem": node.bootstrap_problem,
        "refused_peers": dict(node.gate.refused),
        "last_refused_peer": refused_json(node.gate.last_refused),
    }


def refused_json(last: tuple[float, PeerRefused] | None) -> dict[str, Any] | None:
    """The latest refused GOSSIP or GOSSIP_REPLY (PROTOCOL.md 2.7), or None."""
    if last is None:
        return None
    at, notice = last
    return {"time": at, **_refusal(notice)}


def _refusal(n: PeerRefused) -> dict[str, Any]:
    return {"peer_id": n.peer_id, "source": n.source, "reason": n.reason, "code": n.code}


def event_json(node: Node, event: Event | Notice) -> dict[str, Any]:
    """An event or a notice for the live stream, with what the page needs to update in place."""
    data: dict[str, Any] = {}
    if isinstance(event, PeerSeen):
        data = {"peer": peer_json(event.peer), "new": event.new}
    elif isinstance(event, PeerExpired):
        data = {"peer_id": event.peer_id}
    elif isinstance(event, FileAdvertised):
        # Cheap (no lookup): a reply can advertise thousands of files at once.
        data = {"file_id": event.meta.file_id, "holder": event.holder, "new": event.new}
    elif isinstance(event, FileStored):
        entry = node.file(event.meta.file_id)
        data = {"file_id": event.meta.file_id, "file": entry and file_json(entry, node)}
    elif isinstance(event, FileDeleted):
        data = {"file_id": event.file_id}
    elif isinstance(event, TransferProgress):
        data = {"transfer": transfer_json(event.transfer)}
    elif isinstance(event, TransferFinished):
        data = {
            "transfer": transfer_json(event.transfer, committed=event.ok),
            "ok": event.ok,
            "error": event.error,
        }
    elif isinstance(event, FileRefused):
        data = {"file_id": event.file_id, "peer_id": event.peer_id, "reason": event.reason}
    elif isinstance(event, PeerRefused):
        data = _refusal(event)
    return {"type": event.name, "time": time.time(), **data}
