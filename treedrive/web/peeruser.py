"""Which user runs the other end of a loopback TCP connection: the owner of its socket, from the
kernel's tables of TCP sockets (``/proc/net/tcp`` and ``tcp6``, Linux). A TCP connection carries
no credentials of its own (a Unix socket's ``SO_PEERCRED``); the row of the client's socket does:
local address the client's end, remote address ours, and its ``uid``.

A push by path uses it: the node reads a file for a client only if the client runs as the node's
own user, so that the API token never lets anyone read what the node's user can read and they
cannot. Elsewhere (no such tables, or no such row) the answer is None: unknown.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable

Endpoint = tuple[str, int]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def address(host: str) -> Address:
    """``host`` as an address, an IPv4 address mapped into IPv6 as plain IPv4."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _endpoint(field: str) -> tuple[Address, int]:
    """``0100007F:1F90`` (IPv4) or 32 hex digits and a port (IPv6): the kernel prints each
    32-bit word of the address in the machine's byte order, the port as a number."""
    hexaddr, hexport = field.split(":")
    words = [int(hexaddr[i : i + 8], 16) for i in range(0, len(hexaddr), 8)]
    raw = b"".join(struct.pack("=I", w) for w in words)
    ip: Address = ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, int(hexport, 16)


def owner_in(lines: Iterable[str], client: Endpoint, server: Endpoint) -> int | None:
    """The uid of the socket whose local end is ``client`` and remote end ``server``, from the
    lines of a ``/proc/net/tcp``-style table (None: no such row)."""
    want = ((address(client[0]), client[1]), (address(server[0]), server[1]))
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or ":" not in fields[1]:
            continue  # the heading
        try:
            if (_endpoint(fields[1]), _endpoint(fields[2])) == want:
                return int(fields[7])
        except ValueError:
            continue
    return None


def socket_owner(client: Endpoint, server: Endpoint) -> int | None:
    """The uid that the connection's other end, ``client`` (connected to our ``server``), runs
    as (blocking: reads ``/proc``); None if unknown."""
    for table in TABLES:
        try:
            with open(table, encoding="ascii", errors="replace") as f:
                found = owner_in(f, client, server)
        except OSError:
            continue
        if found is not None:
            return found
    return None
