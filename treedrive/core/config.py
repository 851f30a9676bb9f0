"""The node's settings, with the class network's defaults (PROTOCOL.md 1.10)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_P2P_PORT = 8270
DEFAULT_HTTP_PORT = 8280


def default_data_root() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "treedrive"


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        host, sep, port = text.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    data_dir: Path
    peer_id: str | None = None
    """None: the identity stored in the data dir, or a new one made at first start."""
    host: str = "127.0.0.1"
    """The address the P2P listener binds (``0.0.0.0`` or ``::``: every interface)."""
    port: int = DEFAULT_P2P_PORT
    advertise_host: str | None = None
    """The address this node gives peers (its GOSSIPs, GOSSIP_REPLYs and records); None: ``host``.
    ``treedrive run`` always sets it when ``host`` is a wildcard (see :func:`is_wildcard`)."""
    http_port: int | None = DEFAULT_HTTP_PORT
    """None: no web server."""
    http_port_fallback: bool = False
    """When ``http_port`` is taken: True (the port was a default, not the user's choice) takes
    one of the next few ports, else any free one; False fails the start."""
    http_host: str = "127.0.0.1"
    """Where the dashboard and API listen (loopback unless told otherwise)."""
    max_upload: int = 4 * 1024**3
    """The largest file the API accepts in one upload, in bytes."""
    bootstrap: tuple[Address, ...] = ()
    gossip_interval: float = 30.0
    peer_timeout: float = 60.0
    cleanup_interval: float = 10.0
    join_delay: float = 3.0
    """How long a new node waits for gossip replies before it fetches files."""
    download_limit: int = 3
    fanout: int = 3
    connect_timeout: float = 5.0
    reply_timeout: float = 30.0
    """How long to wait for a FILE_DATA answer (and between reads of a long one)."""
    max_connections: int = 256
    max_peers: int = 1000
    """Peers tracked at most; a new one beyond that evicts the longest silent."""
    chunk_size: int | None = None
    """Bytes per ranged request between TreeDrive nodes; None: by the file's size (4-32 MiB)."""
    max_inflight: int = 4
    """Ranged requests in flight at once for one download (spread over its holders)."""
    sync_every: int = 32 * 1024 * 1024
    """Bytes of a ranged download between syncs of its partial file (at most this much is
    fetched again after a crash)."""
    stall_timeout: float = 60.0
    """How long a download waits for some holder to come back before it gives up (resumable)."""
    max_download_rate: float | None = None
    """Bytes per second for all downloads together; None: no limit."""
    max_upload_rate: float | None = None
    """Bytes per second for all uploads together; None: no limit."""
    extension: bool = True
    """Speak the TreeDrive extension (PROTOCOL part 2); False: classic only, like the seed."""
    encryption: bool = True
    """Encrypt extension transfers (TLS 1.3 bound to the node keys, PROTOCOL.md 2.9) with peers
    that advertise ``tls`` and whose key is pinned; False: advertise no ``tls``, transfer in
    clear (for comparison, or a peer whose TLS is broken)."""
    swim: bool = True
    """Membership by SWIM probes and catalogue deltas with TreeDrive peers that also offer it
    (PROTOCOL.md 2.10), in place of the classic all-to-all gossip between them; False: the
    classic gossip with every peer (for comparison, or a network of nodes older than swim).
    Classic peers are unaffected either way."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Settings for plugins. ``extra[name]`` is the ``[plugins.<name>]`` table of the config file
    (a dict of TOML values; :meth:`plugin_settings` reads it). The web plugin also reads a few
    top-level keys (``http_max_connections``, ``http_head_timeout``)."""

    @property
    def advertised_host(self) -> str:
        """The address peers are told (``advertise_host``, else ``host``)."""
        return self.advertise_host or self.host

    def plugin_settings(self, name: str) -> dict[str, Any]:
        """The settings of the plugin registered as ``name`` (its ``[plugins.<name>]`` table in
        the config file): an empty dict when there are none."""
        table = self.extra.get(name)
        return dict(table) if isinstance(table, dict) else {}


WILDCARDS = frozenset({"0.0.0.0", "::", "", "*"})


def is_wildcard(host: str) -> bool:
    """Whether listening on ``host`` means every interface: an address no peer can dial."""
    return host.strip("[]") in WILDCARDS
