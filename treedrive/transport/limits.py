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
    to a new one (or, if every open one is protected, the new one is closed). Uploads we serve
    are protected up to half of it: beyond that, the slowest upload gives way."""
    admission_grace: float = 0.5
    """A connection younger than this gives way only when no older one may (then the oldest of
    them: under a flood of new connections, a new one is never refused for want of old ones)."""
    min_push_rate: float = 64 * 1024
    """Bytes/s on average that the body of a file pushed to us unasked must keep (and the rate
    at which a body counts as a transfer that never gives way)."""
    push_rate_grace: float = 5.0
    """Seconds from the start of a pushed body before ``min_push_rate`` applies."""
    upload_grace: float = 2.0
    """Seconds from the start of an upload before it may give way at the cap for being slow
    (when uploads hold more than half of ``max_connections``)."""
    min_fetch_rate: float = 1024.0
    """Bytes/s on average (on the wire, so hex counts twice) that a file fetched from a peer
    (a classic GET_FILE answer, or a raw range) must keep once ``fetch_rate_grace`` has passed;
    time spent waiting on this node's own download limit does not count. Generous for an honest
    slow link (1 KiB/s); a holder trickling a few bytes every ``idle_timeout`` is dropped. 0:
    no minimum."""
    fetch_rate_grace: float = 30.0
    """Seconds from the start of a fetched body before ``min_fetch_rate`` applies."""
    upload_stall_timeout: float = 10.0
    """An upload whose reader takes nothing for this long is closed."""
    half_close_after: float | None = 0.4
    """A GET_FILE answered with nothing at all for this long has our sending side half-closed
    (some classic servers read a request until EOF before they answer); 0: at once, None:
    never."""
    max_dials: int = 64
    """Outbound connections being made at once (and messages being delivered); more wait. A
    transfer (a fetch, a range, a push) holds its slot only while it connects. Also the number
    of outbox senders."""
    outbox_size: int = 1024
    """Messages posted and not yet sent; when full, the oldest is dropped."""
    codec: codec.Limits = field(default_factory=codec.Limits)
