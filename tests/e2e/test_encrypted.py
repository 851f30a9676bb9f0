"""Encrypted extension transfers (issue 11, PROTOCOL.md 2.9) between real ``treedrive run``
processes on 127.0.0.1: the loopback traffic of a 64 MiB ranged get and of a push holds none of
the file's bytes (and, with ``--no-encryption``, holds them: the check can fail); both verify and
land whole; and a relay that swaps in its own key is refused by both ends.

The nodes pin each other's keys from their signed GOSSIP (PROTOCOL.md 2.7), as in any network.
The capture is a raw ``AF_PACKET`` socket on ``lo`` (``tests/e2e/capture.py``), so these tests
need root, as ``dumpcap`` would."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.e2e.capture import Capture, file_words_in
from tests.e2e.helpers import Shell, Shells, wait_until
from tests.transport.tls_helpers import downstream_relay, relay_pipe, split_wire
from treedrive.core.identity import NodeKey
from treedrive.store import keys
from treedrive.transport import codec, tlsstream
from treedrive.transport.extension import RangeRequest, ranged_get
from treedrive.transport.secure import HandshakeError, NodeTLS

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(240),
    pytest.mark.skipif(os.geteuid() != 0, reason="capturing on lo needs root"),
]

SIZE = 64 * 1024 * 1024


def pins(node: Shell) -> dict[str, bytes]:
    db = node.data_dir / "treedrive.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as con:
        return {p: bytes(k) for p, k in con.execute("SELECT peer_id, public_key FROM peer_keys")}


def node_key(node: Shell) -> bytes:
    return keys.load(keys.key_path(node.data_dir)).public


def two_nodes(shells: Shells, *extra: str, h: Shell | None = None) -> tuple[Shell, Shell]:
    """H (or ``h``, started) and F (joined through H), each knowing the other with the other's
    key pinned."""
    h = h or shells("H", "--download-limit", "0", *extra).start()
    f = shells("F", "--download-limit", "0", "--bootstrap", h.address, *extra).start()
    wait_until(lambda: "F" in h.peers() and "H" in f.peers(), what="H and F know each other")
    wait_until(lambda: "F" in pins(h) and "H" in pins(f), what="keys pinned", timeout=30)
    return h, f


def in_records(streams: dict[tuple[int, int], bytes], src: int = 0, dst: int = 0) -> int:
    """Bytes of file that the TLS connections in ``streams`` from the port ``src`` (H's, for a
    get) or to the port ``dst`` (H's, for a push to H) carried as bulk records after TLS
    (transport/bulk.py; the final records carry none)."""
    total = 0
    for (s_port, d_port), stream in streams.items():
        if (s_port == src or d_port == dst) and stream[:1] == b"\x16":
            total += sum(len(record) - 20 for record in split_wire(stream)[1])
    return total


def random_file(tmp_path: Path, name: str, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("encryption", [True, False], ids=["tls", "no-encryption"])
def test_a_64_mib_get_is_not_in_clear_on_the_wire(
    shells: Shells, tmp_path: Path, encryption: bool
) -> None:
    """The control run (``--no-encryption``) must find the file's bytes in its capture: the
    same search finds none of them when the transfer is encrypted."""
    extra = () if encryption else ("--no-encryption",)
    h = shells("H", "--download-limit", "0", *extra).start()
    src, data = random_file(tmp_path, "big.bin", SIZE)
    file_id = h.push(src)  # H alone: pushed to nobody
    h, f = two_nodes(shells, *extra, h=h)
    wait_until(lambda: file_id in f.files(), what="F lists the file")
    capture = Capture(h.node.port).start()
    try:
        out = f.get(file_id)
    finally:
        streams = capture.stop()
    assert out.startswith("got big.bin"), out
    assert f.blob(file_id).read_bytes() == data  # verified and whole
    assert sum(map(len, streams.values())) >= SIZE  # the capture saw the transfer
    found = file_words_in(data, streams)
    if encryption:
        assert found == 0
        assert in_records(streams, src=h.node.port) == SIZE  # each range's bytes as records
    else:
        assert found > SIZE // 56 // 2  # about one word in 56 is sampled: nearly all are found


def test_a_push_goes_encrypted_and_lands_whole(shells: Shells, tmp_path: Path) -> None:
    h, f = two_nodes(shells)
    src, data = random_file(tmp_path, "pushed.bin", 8 * 1024 * 1024)
    capture = Capture(h.node.port).start()
    try:
        file_id = f.push(src)  # F's only peer is H: the push goes there
        wait_until(lambda: h.blob(file_id).exists(), what="H holds the pushed file", timeout=60)
    finally:
        streams = capture.stop()
    assert h.blob(file_id).read_bytes() == data
    assert sum(map(len, streams.values())) >= len(data)
    assert file_words_in(data, streams) == 0
    # F's records to H: the file, and the record that ends a streamed push (docs/protocol.md 2.4)
    assert len(data) <= in_records(streams, dst=h.node.port) < len(data) + 64 * 1024


# -- a relay in the middle -----------------------------------------------------------------------
class Listener:
    """Where F believes H to be: a thread that takes each connection to ``port`` to
    :meth:`_one`, in a thread of its own, until :meth:`close`."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        self.server.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.server.close()


def route_through(shells: Shells, f: Shell, port: int, *extra: str) -> Shell:
    """F, stopped, with its record of H's address changed in its own database to ``port``
    (what a hijacked route or a spoofed name would do on a real network: loopback has no router
    to hijack, and H's signed GOSSIP cannot be forged to move it), and started again (gossiping
    rarely, with ``extra``); H's own GOSSIP would move it back, so H must gossip rarely too."""
    f.stop()
    db = f.data_dir / "treedrive.db"
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as con:
        con.execute("UPDATE peers SET port = ? WHERE peer_id = 'H'", (port,))
        con.commit()
    return shells(
        "F", "--download-limit", "0", "--peer-timeout", "600", "--gossip-interval", "600",
        *extra, port=f.node.port,
    ).start()  # fmt: skip


class Relay(Listener):
    """A node in the middle with its own key: it listens where F believes H to be, answers F's
    TLS handshakes with its own certificate, and dials H itself with that key, asking for what
    F asked for in F's name. Anything else that reaches it (classic JSON) it records and drops,
    so that it sees whether F ever falls back to a request in clear."""

    def __init__(self, h_port: int, h_key: bytes, f_id: str, file_id: str) -> None:
        super().__init__()
        self.tls = NodeTLS.from_private_key(NodeKey.generate().private_key)
        self.h_port, self.h_key, self.f_id, self.file_id = h_port, h_key, f_id, file_id
        self.tls_from_f = 0
        self.requests_from_f = 0
        self.clear_from_f: list[bytes] = []
        self.h_answers: list[bytes] = []
        self.h_refused = 0
        self.start()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        with contextlib.suppress(OSError):
            first = conn.recv(1, socket.MSG_PEEK)
            if first != b"\x16":
                self.clear_from_f.append(conn.recv(65536))
                conn.close()
                return
            self.tls_from_f += 1
            try:
                # F checks the key once the handshake is done: a request would mean that F
                # took our key for H's
                with (
                    tlsstream.accept(self.tls, conn, None, 10) as stream,
                    contextlib.suppress(OSError),
                ):
                    if stream.recv(65536):
                        self.requests_from_f += 1
            except HandshakeError:
                pass
            self._ask_h()

    def _ask_h(self) -> None:
        """The other half: to H, as F, with the relay's own key (H's key is public: its
        GOSSIP carries it)."""
        sock = socket.create_connection(("127.0.0.1", self.h_port), timeout=10)
        try:
            client = tlsstream.connect(self.tls, sock, self.h_key, 10)
        except HandshakeError:
            self.h_refused += 1
            return
        with client:
            ask = RangeRequest(0, 1024, self.f_id)
            client.sendall(codec.encode_message(ranged_get(self.file_id, ask)))
            try:
                answer = client.recv(65536)
            except OSError:
                answer = b""
            if answer:
                self.h_answers.append(answer)
            else:
                self.h_refused += 1


@pytest.fixture
def relay_factory() -> Iterator[list[Relay]]:
    made: list[Relay] = []
    yield made
    for r in made:
        r.close()


def test_a_relay_with_its_own_key_is_refused_by_both_ends(
    shells: Shells, tmp_path: Path, relay_factory: list[Relay]
) -> None:
    """How F comes to dial the relay for H: F has pinned H's key and learnt H's file; then F
    is stopped, and its record of H's address is changed, in its own database, to the relay's
    (what a hijacked route or a spoofed name would do on a real network: loopback has no
    router to hijack, and H's signed GOSSIP cannot be forged to move it). H's GOSSIP would move
    it back, so H gossips rarely from then on. F restarts and is asked for the file: it dials
    the relay, which answers with its own key; at the same time the relay dials H as F. F
    refuses the relay's key (and does not fall back to a classic GET_FILE in clear), H refuses
    the relay as F; nothing of the file passes."""
    h = shells("H", "--download-limit", "0", "--gossip-interval", "600").start()
    src, _ = random_file(tmp_path, "secret.bin", 2 * 1024 * 1024)
    file_id = h.push(src)  # H alone: pushed to nobody
    f_port = free_port()
    f = shells(
        "F", "--download-limit", "0", "--bootstrap", h.address, "--peer-timeout", "600",
        port=f_port,
    ).start()  # fmt: skip
    wait_until(lambda: file_id in f.files(), what="F lists H's file")
    wait_until(lambda: "F" in pins(h) and "H" in pins(f), what="keys pinned", timeout=30)
    assert pins(f)["H"] == node_key(h)

    relay = Relay(h.node.port, node_key(h), "F", file_id)
    relay_factory.append(relay)
    f = route_through(shells, f, relay.port)
    wait_until(lambda: file_id in f.files(), what="F still lists the file")
    out = f.get(file_id)
    assert not out.startswith("got"), out
    assert not f.blob(file_id).exists()
    # F refused the relay's key: it dialled the relay over TLS, sent no request once it saw
    # the key, and no request in clear followed (no classic fallback).
    assert relay.tls_from_f >= 1
    assert relay.requests_from_f == 0
    assert not [m for m in relay.clear_from_f if b"GET_FILE" in m]
    # H refused the relay that claimed to be F: no byte of an answer, and a line in its log.
    wait_until(lambda: relay.h_refused >= 1, what="H refused the relay")
    assert relay.h_answers == []
    log = h.log_text()
    assert "TLS connection refused" in log
    assert "but peer 'F' is pinned to" in log


# -- a relay that changes records ------------------------------------------------------------------
RECORD_CHANGES: list[tuple[str, Callable[[list[bytes]], list[bytes]]]] = [
    ("a byte changed", lambda r: [r[0], r[1][:100] + bytes([r[1][100] ^ 1]) + r[1][101:], *r[2:]]),
    ("a record dropped", lambda r: [r[0], *r[2:]]),
    ("a record replayed", lambda r: [r[0], r[0], *r[1:]]),
    ("two records swapped", lambda r: [r[1], r[0], *r[2:]]),
    ("cut in a record", lambda r: [r[0], r[1][:1000]]),
]


class TamperingRelay(Listener):
    """A relay that forwards the bytes between F and H, where F believes H to be, without
    terminating TLS (it has no key to): what F sends, and H's TLS records, as they come; H's
    bulk records (transport/bulk.py) it holds until H hangs up, then passes them on: those of
    the first answer unchanged (so that F learns the file's size), of the next ones changed one
    way each (:data:`RECORD_CHANGES`), then unchanged again."""

    def __init__(self, h_port: int) -> None:
        super().__init__()
        self.h_port = h_port
        self.answers = 0
        self.changed: list[str] = []
        self._lock = threading.Lock()
        self.start()

    def _one(self, conn: socket.socket) -> None:
        to_h = socket.create_connection(("127.0.0.1", self.h_port), timeout=10)
        relay_out, finish = downstream_relay(to_h, self._change)
        threads = [
            threading.Thread(target=relay_pipe, args=(a, b, bytearray()), daemon=True)
            for a, b in ((conn, relay_out), (relay_out, conn))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        finish()
        conn.close()
        relay_out.close()

    def _change(self, records: list[bytes]) -> list[bytes]:
        if len(records) < 3:  # no answer of records (a message in clear, a refusal)
            return records
        with self._lock:
            n, self.answers = self.answers, self.answers + 1
        if not 1 <= n <= len(RECORD_CHANGES):
            return records
        name, change = RECORD_CHANGES[n - 1]
        self.changed.append(name)
        return change(records)


def test_records_changed_by_a_relay_are_refused_and_the_get_recovers(
    shells: Shells, tmp_path: Path
) -> None:
    """F reaches H through a relay that passes the TLS handshake on (it cannot take part: both
    ends check the keys) and then changes H's records: a byte, a record dropped, one replayed,
    two swapped, the stream cut. F refuses each of those answers (the chunk goes back to its
    queue and is asked again), and the first answer passed on unchanged gives F the file,
    verified; no changed byte ever reached F's disk as the file's."""
    h = shells("H", "--download-limit", "0", "--gossip-interval", "600").start()
    src, data = random_file(tmp_path, "guarded.bin", 4 * 1024 * 1024)
    file_id = h.push(src)
    f = shells("F", "--download-limit", "0", "--bootstrap", h.address, port=free_port()).start()
    wait_until(lambda: file_id in f.files(), what="F lists H's file")
    wait_until(lambda: "F" in pins(h) and "H" in pins(f), what="keys pinned", timeout=30)
    relay = TamperingRelay(h.node.port)
    try:  # F fetches 1 MiB chunks: four records and the final one each
        f = route_through(shells, f, relay.port, "--chunk-size", "1024")
        wait_until(lambda: file_id in f.files(), what="F still lists the file")
        out = f.get(file_id)
    finally:
        relay.close()
    assert out.startswith("got guarded.bin"), out
    assert f.blob(file_id).read_bytes() == data
    assert relay.changed == [name for name, _ in RECORD_CHANGES]
    log = f.log_text()
    assert log.count("a record failed authentication") >= 4  # changed, dropped, replayed, swapped
    assert "the connection ended before its final record" in log  # cut
