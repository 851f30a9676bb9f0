"""Capturing loopback traffic, as ``dumpcap -i lo`` does: a raw ``AF_PACKET`` socket on ``lo``
(root only) that keeps the TCP payload of the connections to or from one port, reassembled into
byte streams (each segment once: the copies ``lo`` shows as outgoing are skipped, repeated
sequence numbers are dropped).

:func:`file_words_in` then tells whether any of a file's bytes are in those streams.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections import defaultdict

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33
ETH_HEADER = 14
SEQ_SPACE = 2**32


class Capture:
    """The TCP payload of every connection with ``port`` at one end, from :meth:`start` to
    :meth:`stop`. ``streams`` maps (source port, destination port) to the bytes that went that
    way, in sequence order."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._segments: dict[tuple[int, int], dict[int, bytes]] = defaultdict(dict)
        self._base: dict[tuple[int, int], int] = {}
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 512 * 1024 * 1024)
        self._sock.bind(("lo", ETH_P_ALL))
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Capture:
        self._thread.start()
        return self

    def _run(self) -> None:
        buf = bytearray(256 * 1024)
        while not self._stop.is_set():
            try:
                n, addr = self._sock.recvfrom_into(buf)
            except TimeoutError:
                continue
            if addr[2] != PACKET_OUTGOING:
                self._packet(bytes(buf[:n]))
        # what is still queued
        self._sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                n, addr = self._sock.recvfrom_into(buf)
                if addr[2] != PACKET_OUTGOING:
                    self._packet(bytes(buf[:n]))

    def _packet(self, frame: bytes) -> None:
        ip = frame[ETH_HEADER:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_TCP:
            return
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0] or len(ip)  # 0: a GSO packet's length
        tcp = ip[ihl:total] if total <= len(ip) else ip[ihl:]
        sport, dport, seq = struct.unpack_from("!HHI", tcp, 0)
        if self.port not in (sport, dport):
            return
        flags = tcp[13]
        flow = (sport, dport)
        if flow not in self._base:
            self._base[flow] = seq + 1 if flags & 0x02 else seq  # SYN takes one number
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if payload:
            self._segments[flow].setdefault((seq - self._base[flow]) % SEQ_SPACE, payload)

    def stop(self) -> dict[tuple[int, int], bytes]:
        self._stop.set()
        self._thread.join(timeout=30)
        self._sock.close()
        return self.streams

    @property
    def streams(self) -> dict[tuple[int, int], bytes]:
        out = {}
        for flow, segments in self._segments.items():
            data = bytearray()
            for rel in sorted(segments):
                seg = segments[rel]
                if rel + len(seg) > len(data):
                    data += seg[len(data) - rel :] if rel < len(data) else seg
            out[flow] = bytes(data)
        return out


def file_words_in(data: bytes, streams: dict[tuple[int, int], bytes]) -> int:
    """How many 8-byte words of ``data``, taken at every 7th offset (0, 7, 14...), appear in the
    ``streams`` at an offset that is a multiple of 8. Any 64-byte window of ``data`` found in a
    stream is found this way: of its 57 start offsets of a word, one is a multiple of 7 in the
    file and of 8 in the stream at once (7 and 8 are coprime: one in every 56 consecutive ones).
    So 0 means that no 64-byte window of the file is in the traffic (nor, in fact, any run of
    64 bytes of it). For random bytes a word found by chance is about
    ``len(streams) / 8 * len(data) / 7 / 2**64`` (1e-5 here): a clear run finds about
    ``len(data) / 56`` of them."""
    words: set[int] = set()
    for phase in range(8):  # offsets 8m + phase that are multiples of 7: m = -phase (mod 7)
        end = phase + max(0, len(data) - phase) // 8 * 8
        if end > phase:
            view = memoryview(data)[phase:end].cast("Q")
            words.update(view[(-phase) % 7 :: 7])
    found: set[int] = set()
    for stream in streams.values():
        usable = len(stream) // 8 * 8
        if usable:
            found |= words.intersection(memoryview(stream)[:usable].cast("Q"))
    return len(found)
