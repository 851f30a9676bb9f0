"""What monitoring reads: ``GET /api/v1/health`` and ``GET /metrics``.

**Health** answers from memory on the event loop: it never touches the store nor waits on a lock,
so it answers while the node is busy (a large ``/stats.json``, a writer holding the database).
It needs no token (like Syncthing's ``/rest/noauth/health``); the ``Host``/``Origin`` checks
still apply. 200 ``{"status": "ok", ...}`` while the node runs, 503 ``"stopping"`` once it stops.

**Metrics** are the Prometheus text format (version 0.0.4). Like every read of this API (and
like kubo's ``/debug/metrics/prometheus``), ``GET /metrics`` needs no token: the API listens on
127.0.0.1 unless the owner says otherwise, and a scrape changes nothing. The counters are the
node's own (:class:`treedrive.core.metrics.Counters`), the transport's tallies and the HTTP
admission's; the peer and file counts come from one cheap count of the store, cached until a
committed change (or :data:`COUNTS_MAX_AGE` seconds) makes it stale, and taken in a worker thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Final

from aiohttp import web

from treedrive.core.node import Node
from treedrive.web.admission import Admission
from treedrive.web.guard import _node

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
COUNTS_MAX_AGE: Final = 30.0


def _version() -> str:
    try:
        return metadata.version("treedrive")
    except metadata.PackageNotFoundError:
        return "unknown"


VERSION: Final = _version()

TRANSPORT_REFUSALS: Final = {
    "connections refused at the cap": "p2p_connection_cap",
    "refused over TLS": "p2p_tls",
}
"""The transport's tallies (``TcpNetwork.stats()``) that are refusals, by metric reason."""
TRANSPORT_DROPS: Final = {
    "messages dropped (outbox full)": "outbox_full",
    "messages dropped (address refused lately)": "address_backoff",
    "slow connections closed for new ones": "p2p_connection_evicted",
    "malformed": "malformed_message",
    "invalid": "invalid_message",
    "timed out": "p2p_timeout",
    "pushes dropped": "push_not_stored",
}
"""The transport's tallies that are drops, by metric reason."""
CORE_REFUSALS: Final = ("record", "bytes", "delete")
CORE_DROPS: Final = (
    "unexpected",
    "storage",
    "swim_malformed",
    "swim_claim_ahead",
    "swim_claim_forged",
)


# -- health ----------------------------------------------------------------------------------
async def health(request: web.Request) -> web.Response:
    """Alive and serving: from memory only (no store, no lock, no token)."""
    node = _node(request)
    stopping = node.ctx.stopping.is_set()
    body = {
        "status": "stopping" if stopping else "ok",
        "version": VERSION,
        "peer_id": node.peer_id,
        "uptime_s": round(time.time() - node.started_at, 3),
    }
    return web.json_response(body, status=503 if stopping else 200)


# -- metrics ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Counts:
    peers: dict[str, int]
    files: dict[str, int]


def count(node: Node) -> Counts:
    """Peers by kind and files by scope, from the node's read-only views (a worker thread)."""
    treedrive, classic = node.reads.peer_kinds()
    counts = node.reads.counts()
    return Counts(
        peers={"treedrive": treedrive, "classic": classic},
        files={"local": counts.local, "remote": counts.remote},
    )


class Monitor:
    """What ``/metrics`` keeps between scrapes: the cached counts and the HTTP admission."""

    def __init__(self) -> None:
        self.admission: Admission | None = None
        """The dashboard site's admission, once it listens (its refusals are counted)."""
        self._counts: Counts | None = None
        self._counted_at = float("-inf")
        self._changes = -1
        self._lock = asyncio.Lock()

    async def counts(self, node: Node) -> Counts:
        async with self._lock:  # one count at a time, shared by concurrent scrapes
            changes = node.ctx.counters.changes
            fresh = time.monotonic() - self._counted_at < COUNTS_MAX_AGE
            if self._counts is None or changes != self._changes or not fresh:
                self._counts = await asyncio.to_thread(count, node)
                self._changes, self._counted_at = changes, time.monotonic()
            return self._counts


MONITOR: web.AppKey[Monitor] = web.AppKey("monitor", Monitor)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Exposition:
    """Lines of the Prometheus text format, one family at a time."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[Mapping[str, str], float]],
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{inner}}} {value:g}" if inner else f"{name} {value:g}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def by(label: str, values: Mapping[str, float]) -> list[tuple[Mapping[str, str], float]]:
    return [({label: k}, v) for k, v in sorted(values.items())]


def reasons(node: Node, admission: Admission | None) -> tuple[dict[str, int], dict[str, int]]:
    """Refusals and drops by reason: the core's, the gate's, the transport's, the admission's."""
    c = node.ctx.counters
    refused = {k: c.refused[k] for k in CORE_REFUSALS}
    refused.update({f"peer_{k}": v for k, v in node.gate.refused.items()})
    dropped = {k: c.dropped[k] for k in CORE_DROPS}
    stats = node.network.stats()
    for kind, reason in TRANSPORT_REFUSALS.items():
        refused[reason] = stats.get(kind, 0)
    for kind, reason in TRANSPORT_DROPS.items():
        dropped[reason] = stats.get(kind, 0)
    refused["http_connection_cap"] = admission.refused if admission else 0
    dropped["http_connection_evicted"] = admission.evicted if admission else 0
    dropped["http_head_timeout"] = admission.timed_out if admission else 0
    dropped["http_stream_closed"] = admission.streams_closed if admission else 0
    return refused, dropped


def exposition(node: Node, counts: Counts, admission: Admission | None) -> str:
    c = node.ctx.counters
    moved = dict.fromkeys(("in", "out"), 0)
    active = dict.fromkeys(("in", "out"), 0)
    for t in node.active_transfers.values():
        moved[t.direction] = moved.get(t.direction, 0) + max(0, t.bytes_done - t.bytes_at_start)
        active[t.direction] = active.get(t.direction, 0) + 1
    for direction, n in c.bytes.items():
        moved[direction] = moved.get(direction, 0) + n
    ended = {(d, r): c.transfers[d, r] for d in ("in", "out") for r in ("ok", "failed")}
    refused, dropped = reasons(node, admission)
    types = ("GOSSIP", "GOSSIP_REPLY", "ANNOUNCE", "DELETE")
    out = Exposition()
    out.family(
        "treedrive_build_info", "gauge", "The version of this node.", [({"version": VERSION}, 1)]
    )
    out.family(
        "treedrive_uptime_seconds", "gauge", "Seconds since the node started.",
        [({}, round(time.time() - node.started_at, 3))],
    )  # fmt: skip
    out.family("treedrive_peers", "gauge", "Peers tracked, by kind.", by("kind", counts.peers))
    out.family("treedrive_files", "gauge", "Catalogue entries by scope.", by("scope", counts.files))
    out.family(
        "treedrive_transfer_bytes_total", "counter",
        "File bytes moved by transfers (running ones included), by direction.",
        by("direction", moved),
    )  # fmt: skip
    out.family(
        "treedrive_transfers_active", "gauge", "Transfers under way, by direction.",
        by("direction", active),
    )  # fmt: skip
    out.family(
        "treedrive_transfers_total", "counter", "Transfers that ended, by direction and result.",
        [({"direction": d, "result": r}, n) for (d, r), n in sorted(ended.items())],
    )  # fmt: skip
    out.family(
        "treedrive_gossip_sent_total", "counter",
        "Gossip-protocol messages handed to the network, by type.",
        by("type", {t: c.sent[t] for t in types}),
    )  # fmt: skip
    out.family(
        "treedrive_gossip_received_total", "counter",
        "Gossip-protocol messages taken in, by type.",
        by("type", {t: c.received[t] for t in types}),
    )  # fmt: skip
    out.family(
        "treedrive_refusals_total", "counter", "Things refused, by reason.", by("reason", refused)
    )
    out.family(
        "treedrive_drops_total", "counter", "Messages and connections dropped, by reason.",
        by("reason", dropped),
    )  # fmt: skip
    return out.text()


async def metrics(request: web.Request) -> web.Response:
    """The Prometheus text format (0.0.4); no token, like every read."""
    node = _node(request)
    monitor = request.app[MONITOR]
    counts = await monitor.counts(node)
    body = exposition(node, counts, monitor.admission)
    return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE})
