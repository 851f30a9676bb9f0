"""The limits a TCP node enforces on its connections (see :mod:`treedrive.transport.net`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from treedrive.transport import codec


@dataclass(frozen=True, slots=True)
class NetLimits:
    connect_timeout: float = 5.0
    """Dialing a peer (the classic peers' value)."""
    send_timeout: float = 5.0
    """A write that makes no progress for this long fails."""
    control_timeout: float = 30.0
    """A whole control message must arrive within this."""
    idle_timeout: float = 30.0
    """The bytes of a file must keep coming at most this far apart (and a FILE_DATA answer)."""
    max_connections: int = 256
    """Inbound connections served at once; at the cap, the one with the least progress gives way
    to a new one (or, if every open one is protected, the new one is closed)."""
    admission_grace: float = 0.5
    """A connection younger than this gives way only when no older one may (then the oldest of
    them: under a flood of new connections, a new one is never refused for want of old ones)."""
    min_push_rate: float = 64 * 1024
    """Bytes/s on average that the body of a file pushed to us unasked must keep (and the rate
    at which a body counts as a transfer that never gives way)."""
    push_rate_grace: float = 5.0
    """Seconds from the start of a pushed body before ``min_push_rate`` applies."""
    upload_stall_timeout: float = 10.0
    """An upload whose reader takes nothing for this long is closed."""
    max_dials: int = 64
    """Outbound connections open at once; more wait. Also the number of outbox senders."""
    outbox_size: int = 1024
    """Messages posted and not yet sent; when full, the oldest is dropped."""
    codec: codec.Limits = field(default_factory=codec.Limits)
