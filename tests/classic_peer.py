"""A classic peer, written the way a student would write one: blocking sockets and threads.

It is an independent implementation of PROTOCOL.md part 1 (it imports nothing from ``treedrive``)
used to test a TreeDrive node against the classic network. It listens on 127.0.0.1, handles one
JSON message per connection, keeps a catalogue of files and their holders, and records every
message it receives so that tests can assert what the node sent.

Hazard switches reproduce the misbehaviours of real classic peers (PROTOCOL.md 1.11):

- ``keep_open_after_reply``: the server keeps a GET_FILE socket open after its FILE_DATA reply.
- ``trailing_newline``: every message sent ends with ``\\n``.
- ``split_writes``: every message goes out in many tiny segments with small sleeps.
- ``timestamp_style``: ``"int"``, ``"float"`` (``1750028734.0``) or ``"string"`` (``"1750028734"``)
  for the ``file_timestamp`` of the files it adds.
- ``size_in_bytes``: ``file_size`` in bytes instead of MB.
- ``corrupt_data``: serves bytes that do not match the file id.
- ``die_mid_transfer``: a FILE_DATA it sends (served or pushed) stops after half of the hex.
- ``data_first``: a FILE_DATA it sends has ``"data"`` as its first key, before the record.
- ``eof_style``: how its server treats the client's EOF (``shutdown(SHUT_WR)``).
  ``"read_to_eof"``: it reads a request until the client half-closes (or ``eof_timeout``, 15 s,
  passes) before it answers. ``"close_on_eof"``: it answers a GET_FILE after ``answer_delay``
  seconds, but closes without answering if it sees EOF first. Counted in ``eof_stats``.
- ``reply_ids_from_mtime``: its GOSSIP_REPLY lists each file it holds under the id computed
  from its local copy's modification time (``file_timestamp`` = that time), not under the
  id it announced; it serves GET_FILE under either id.

Blocking calls (``send_gossip``, ``get_file``, ...) must not run on the test's event loop: call
them through ``asyncio.to_thread`` when a node runs on that loop.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Addr = tuple[str, int]

MEGABYTE = 1024 * 1024
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 5.0
FILE_TIMEOUT = 30.0
EOF_TIMEOUT = 15.0
EOF_STYLES = (None, "read_to_eof", "close_on_eof")
RECORD_KEYS = ("file_name", "file_size", "file_id", "file_owner", "file_timestamp")
NULL_FILE_DATA: dict[str, Any] = {"type": "FILE_DATA", **dict.fromkeys(RECORD_KEYS), "data": None}


def file_id_of(data: bytes, ts: Any) -> str:
    """The classic id: sha256 of the bytes then the timestamp as an integer string."""
    try:
        suffix = str(int(float(ts)))
    except (TypeError, ValueError):
        suffix = str(ts)
    return hashlib.sha256(data + suffix.encode()).hexdigest()


def _ts_number(ts: Any) -> float:
    try:
        return float(ts)
    except (TypeError, ValueError):
        return 0.0


class IncompleteMessage(Exception):
    """The connection closed before one whole JSON object arrived."""


def read_message(
    sock: socket.socket, timeout: float = READ_TIMEOUT, stop: threading.Event | None = None
) -> dict[str, Any]:
    """Read one JSON object; stop as soon as it is complete (never wait for EOF).

    ``timeout`` bounds the wait for each read; ``stop`` (when set) abandons the read early.
    """
    sock.settimeout(0.1)
    decoder = json.JSONDecoder()
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if stop is not None and stop.is_set():
                raise IncompleteMessage("peer stopping") from None
            if time.monotonic() > deadline:
                raise
            continue
        deadline = time.monotonic() + timeout
        if chunk:
            buf += chunk
        if buf[-64:].rstrip().endswith(b"}"):
            try:
                obj, _ = decoder.raw_decode(buf.decode("utf-8").lstrip())
            except (ValueError, UnicodeDecodeError):
                pass
            else:
                if not isinstance(obj, dict):
                    raise IncompleteMessage(f"not an object: {obj!r:.80}")
                return obj
        if not chunk:
            raise IncompleteMessage(f"connection closed after {len(buf)} bytes")


def read_to_eof(
    sock: socket.socket, timeout: float = EOF_TIMEOUT, stop: threading.Event | None = None
) -> tuple[dict[str, Any], bool]:
    """Read until the client half-closes or ``timeout`` passes, then decode one JSON object;
    returns it and whether EOF came (False: the timeout ended the read)."""
    sock.settimeout(0.1)
    buf = bytearray()
    deadline = time.monotonic() + timeout
    eof = False
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if stop is not None and stop.is_set():
                raise IncompleteMessage("peer stopping") from None
            continue
        if not chunk:
            eof = True
            break
        buf += chunk
    try:
        obj, _ = json.JSONDecoder().raw_decode(buf.decode("utf-8").strip())
    except (ValueError, UnicodeDecodeError) as exc:
        raise IncompleteMessage(f"not one JSON object in {len(buf)} bytes: {exc}") from None
    if not isinstance(obj, dict):
        raise IncompleteMessage(f"not an object: {obj!r:.80}")
    return obj, eof


def eof_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the client half-closes within ``seconds`` (checked at least once)."""
    deadline = time.monotonic() + seconds
    while True:
        sock.settimeout(max(0.001, min(0.05, deadline - time.monotonic())))
        try:
            if not sock.recv(4096):
                return True
        except TimeoutError:
            pass
        except OSError:
            return True
        if time.monotonic() >= deadline:
            return False


@dataclass
class Entry:
    """One catalogue entry: the record as received, who holds it, whether we do."""

    record: dict[str, Any]
    holders: set[str] = field(default_factory=set)
    local: bool = False


class ClassicPeer:
    """A classic peer on 127.0.0.1 (see the module docstring). Use it as a context manager."""

    def __init__(
        self,
        peer_id: str = "classic",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        fanout: int = 3,
        reply_to_gossip: bool = True,
        keep_open_after_reply: bool = False,
        trailing_newline: bool = False,
        split_writes: bool = False,
        split_size: int = 16,
        split_delay: float = 0.002,
        timestamp_style: str = "int",
        size_in_bytes: bool = False,
        corrupt_data: bool = False,
        die_mid_transfer: bool = False,
        data_first: bool = False,
        eof_style: str | None = None,
        eof_timeout: float = EOF_TIMEOUT,
        answer_delay: float = 0.0,
        reply_ids_from_mtime: bool = False,
    ) -> None:
        if timestamp_style not in ("int", "float", "string"):
            raise ValueError(f"unknown timestamp_style {timestamp_style!r}")
        if eof_style not in EOF_STYLES:
            raise ValueError(f"unknown eof_style {eof_style!r}")
        self.peer_id = peer_id
        self.host = host
        self.port = port
        self.fanout = fanout
        self.reply_to_gossip = reply_to_gossip
        self.keep_open_after_reply = keep_open_after_reply
        self.trailing_newline = trailing_newline
        self.split_writes = split_writes
        self.split_size = split_size
        self.split_delay = split_delay
        self.timestamp_style = timestamp_style
        self.size_in_bytes = size_in_bytes
        self.corrupt_data = corrupt_data
        self.die_mid_transfer = die_mid_transfer
        self.data_first = data_first
        self.eof_style = eof_style
        self.eof_timeout = eof_timeout
        self.answer_delay = answer_delay
        self.reply_ids_from_mtime = reply_ids_from_mtime
        self.eof_stats: dict[str, int] = {"eof": 0, "timed_out": 0, "closed_on_eof": 0}
        """read_to_eof: requests ended by the client's EOF, or by ``eof_timeout``;
        close_on_eof: GET_FILEs closed unanswered on EOF."""
        self.mtimes: dict[str, int] = {}
        """The modification time of each local copy (reply_ids_from_mtime)."""
        self.aliases: dict[str, str] = {}
        """The id a reply lists for a file -> the id it holds it under."""

        self._lock = threading.RLock()
        self.peers: dict[str, dict[str, Any]] = {}
        self.catalog: dict[str, Entry] = {}
        self.blobs: dict[str, bytes] = {}
        self.seen: set[str] = set()
        self.errors: list[str] = []
        self._received: list[dict[str, Any]] = []
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._threads: set[threading.Thread] = set()

    # -- life cycle --------------------------------------------------------------------------
    @property
    def address(self) -> Addr:
        return (self.host, self.port)

    def start(self) -> ClassicPeer:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self.port = int(listener.getsockname()[1])
        self._listener = listener
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"classic-{self.peer_id}", daemon=True
        )
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout=5)

    def __enter__(self) -> ClassicPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                self._error(f"accept failed: {exc}")
                return
            t = threading.Thread(target=self._serve, args=(conn, addr), daemon=True)
            with self._lock:
                self._threads.add(t)
            t.start()

    def _error(self, text: str) -> None:
        with self._lock:
            self.errors.append(text)

    # -- recorded messages -------------------------------------------------------------------
    def messages(self, type_: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """Messages received so far (copies), optionally of one type and with matching fields."""
        with self._lock:
            found = list(self._received)
        out = []
        for m in found:
            if type_ is not None and m.get("type") != type_:
                continue
            if all(m.get(k) == v for k, v in match.items()):
                out.append(json.loads(json.dumps(m)))
        return out

    # -- catalogue ---------------------------------------------------------------------------
    def styled_ts(self, ts: float) -> Any:
        if self.timestamp_style == "float":
            return float(ts)
        if self.timestamp_style == "string":
            return str(int(ts))
        return int(ts)

    def make_record(
        self, name: str, data: bytes, ts: float | None = None, owner: str | None = None
    ) -> dict[str, Any]:
        """A file record for ``data`` in this peer's style (timestamp, size unit)."""
        ts = int(time.time()) if ts is None else ts
        return {
            "file_name": name,
            "file_size": len(data) if self.size_in_bytes else len(data) / MEGABYTE,
            "file_id": file_id_of(data, ts),
            "file_owner": self.peer_id if owner is None else owner,
            "file_timestamp": self.styled_ts(ts),
        }

    def add_file(
        self,
        name: str,
        data: bytes,
        ts: float | None = None,
        owner: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Hold a file locally (as if pushed here); returns its record (plus ``extra`` keys)."""
        record = {**self.make_record(name, data, ts, owner), **(extra or {})}
        self.add_record(record, data)
        return record

    def add_record(self, record: Mapping[str, Any], data: bytes | None = None) -> None:
        """Hold ``record`` as given (advertised in GOSSIP_REPLY); ``data`` None: no bytes."""
        with self._lock:
            self.catalog[record["file_id"]] = Entry(dict(record), set(), local=True)
            if data is not None:
                self.blobs[record["file_id"]] = data

    def has_file(self, file_id: str) -> bool:
        with self._lock:
            return file_id in self.blobs

    def blob(self, file_id: str) -> bytes | None:
        with self._lock:
            return self.blobs.get(file_id)

    def entry(self, file_id: str) -> Entry | None:
        with self._lock:
            e = self.catalog.get(file_id)
            return None if e is None else Entry(dict(e.record), set(e.holders), e.local)

    def local_records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e.record) for e in self.catalog.values() if e.local]

    def reply_records(self) -> list[dict[str, Any]]:
        """What its GOSSIP_REPLY lists: the local records, or with ``reply_ids_from_mtime``,
        each held file under the id of its local copy's modification time."""
        records = self.local_records()
        if not self.reply_ids_from_mtime:
            return records
        out = []
        with self._lock:
            for record in records:
                data = self.blobs.get(record["file_id"])
                if data is None:
                    out.append(record)
                    continue
                mtime = self.mtimes.setdefault(record["file_id"], int(time.time()))
                if str(mtime) == str(int(_ts_number(record["file_timestamp"]))):
                    mtime += 1  # a copy written later than the record says
                    self.mtimes[record["file_id"]] = mtime
                alias = file_id_of(data, mtime)
                self.aliases[alias] = record["file_id"]
                out.append({**record, "file_id": alias, "file_timestamp": mtime})
        return out

    def _merge(self, record: Mapping[str, Any], holder: str) -> None:
        file_id = record.get("file_id")
        if not isinstance(file_id, str):
            return
        clean = {k: record.get(k) for k in RECORD_KEYS}
        with self._lock:
            e = self.catalog.get(file_id)
            if e is None:
                self.catalog[file_id] = Entry(clean, {holder})
                return
            e.holders.add(holder)
            if _ts_number(clean["file_timestamp"]) > _ts_number(e.record.get("file_timestamp")):
                e.record = clean

    def _track(self, peer_id: str, host: str, port: int) -> None:
        with self._lock:
            self.peers[peer_id] = {"host": host, "port": port, "last_seen": time.time()}

    def tracked(self) -> dict[str, Addr]:
        with self._lock:
            return {p: (v["host"], v["port"]) for p, v in self.peers.items()}

    # -- sending -----------------------------------------------------------------------------
    def _encode(self, message: Mapping[str, Any]) -> bytes:
        if self.data_first and "data" in message:
            message = {"data": message["data"], **message}
        text = json.dumps(message)
        if message.get("type") == "FILE_DATA" and self.die_mid_transfer and message.get("data"):
            # Dies halfway through the hex: the object never ends.
            start = text.index('"data": "') + len('"data": "')
            return text[: start + len(message["data"]) // 2].encode()
        return (text + "\n" if self.trailing_newline else text).encode()

    def _write(self, sock: socket.socket, message: Mapping[str, Any]) -> None:
        data = self._encode(message)
        if not self.split_writes:
            sock.sendall(data)
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(data), self.split_size):
            sock.sendall(data[i : i + self.split_size])
            time.sleep(self.split_delay)

    def _connect(self, to: Addr) -> socket.socket:
        return socket.create_connection(to, timeout=CONNECT_TIMEOUT)

    def send(self, to: Addr, message: Mapping[str, Any]) -> None:
        """One message on a new connection: connect, write, close."""
        with self._connect(to) as sock:
            sock.settimeout(CONNECT_TIMEOUT)
            self._write(sock, message)

    def _send_quietly(self, to: Addr, message: Mapping[str, Any]) -> None:
        try:
            self.send(to, message)
        except OSError as exc:
            self._error(f"sending {message.get('type')} to {to}: {exc}")

    def send_gossip(
        self,
        to: Addr,
        *,
        gossip_id: str | None = None,
        peer_id: str | None = None,
        host: str | None = None,
        port: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Originate a GOSSIP (fields overridable); returns the message sent."""
        message = {
            "type": "GOSSIP",
            "host": self.host if host is None else host,
            "port": self.port if port is None else port,
            "id": gossip_id or str(uuid.uuid4()),
            "peerId": self.peer_id if peer_id is None else peer_id,
            **(extra or {}),
        }
        with self._lock:
            self.seen.add(message["id"])
        self.send(to, message)
        return message

    def push_file(
        self,
        to: Addr,
        name: str,
        data: bytes,
        ts: float | None = None,
        *,
        owner: str | None = None,
        file_id: str | None = None,
        keep: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """An unsolicited FILE_DATA (a push); returns the record sent."""
        record = self.make_record(name, data, ts, owner)
        if file_id is not None:
            record["file_id"] = file_id
        record.update(extra or {})
        if keep:
            self.add_record(record, data)
        self.send(to, {"type": "FILE_DATA", **record, "data": data.hex()})
        return record

    def get_file_reply(
        self, from_addr: Addr, file_id: str, timeout: float = FILE_TIMEOUT
    ) -> dict[str, Any]:
        """GET_FILE and the FILE_DATA object read back (without waiting for EOF)."""
        with self._connect(from_addr) as sock:
            self._write(sock, {"type": "GET_FILE", "file_id": file_id})
            return read_message(sock, timeout)

    def get_file(
        self, from_addr: Addr, file_id: str, timeout: float = FILE_TIMEOUT
    ) -> bytes | None:
        """The file's bytes, or None when the peer answers "not here"."""
        reply = self.get_file_reply(from_addr, file_id, timeout)
        if reply.get("type") != "FILE_DATA" or reply.get("file_id") is None:
            return None
        data = reply.get("data")
        if not isinstance(data, str) or not data:
            return None
        return bytes.fromhex(data)

    def exchange_until_eof(
        self, to: Addr, message: Mapping[str, Any], timeout: float = READ_TIMEOUT
    ) -> bytes:
        """Send ``message`` and read everything until the peer closes (TimeoutError if never)."""
        with self._connect(to) as sock:
            self._write(sock, message)
            sock.settimeout(timeout)
            buf = bytearray()
            while chunk := sock.recv(65536):
                buf += chunk
            return bytes(buf)

    def announce(
        self,
        to: Addr,
        file_id: str | None = None,
        *,
        record: Mapping[str, Any] | None = None,
        from_: str | None = None,
    ) -> dict[str, Any]:
        """ANNOUNCE a held file (by id) or an explicit record; returns the message sent."""
        if record is None:
            assert file_id is not None
            with self._lock:
                record = dict(self.catalog[file_id].record)
        message = {"type": "ANNOUNCE", "from": from_ or self.peer_id, **record}
        self.send(to, message)
        return message

    def delete(self, to: Addr, file_id: str, from_: str | None = None) -> dict[str, Any]:
        message = {"type": "DELETE", "from": from_ or self.peer_id, "file_id": file_id}
        self.send(to, message)
        return message

    # -- serving -----------------------------------------------------------------------------
    def _serve(self, conn: socket.socket, addr: Addr) -> None:
        try:
            with conn:
                try:
                    if self.eof_style == "read_to_eof":
                        message, eof = read_to_eof(conn, self.eof_timeout, self._stopping)
                        with self._lock:
                            self.eof_stats["eof" if eof else "timed_out"] += 1
                    else:
                        message = read_message(conn, stop=self._stopping)
                except (OSError, IncompleteMessage) as exc:
                    self._error(f"reading from {addr}: {exc}")
                    return
                with self._lock:
                    self._received.append(message)
                try:
                    self._handle(conn, message)
                except OSError as exc:
                    self._error(f"handling {message.get('type')} from {addr}: {exc}")
        except Exception as exc:  # a test peer must never raise in a thread
            self._error(f"bug handling a message from {addr}: {exc!r}")
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _handle(self, conn: socket.socket, m: dict[str, Any]) -> None:
        kind = m.get("type")
        if kind == "GOSSIP":
            self._on_gossip(m)
        elif kind == "GOSSIP_REPLY":
            self._track(m["peerId"], m["host"], m["port"])
            for record in m.get("files") or []:
                self._merge(record, m["peerId"])
        elif kind == "GET_FILE":
            self._on_get(conn, m)
        elif kind == "FILE_DATA":
            self._on_push(m)
        elif kind == "ANNOUNCE":
            self._merge(m, m["from"])
        elif kind == "DELETE":
            with self._lock:
                e = self.catalog.get(m.get("file_id", ""))
                if e is not None and e.record.get("file_owner") == m.get("from"):
                    del self.catalog[m["file_id"]]
                    self.blobs.pop(m["file_id"], None)

    def _on_gossip(self, m: dict[str, Any]) -> None:
        with self._lock:
            if m["id"] in self.seen:
                return
            self.seen.add(m["id"])
        if m["peerId"] == self.peer_id:
            return
        self._track(m["peerId"], m["host"], m["port"])
        if self.reply_to_gossip:
            reply = {
                "type": "GOSSIP_REPLY",
                "host": self.host,
                "port": self.port,
                "peerId": self.peer_id,
                "files": self.reply_records(),
            }
            self._send_quietly((m["host"], m["port"]), reply)
        with self._lock:
            others = [(p, v["host"], v["port"]) for p, v in self.peers.items() if p != m["peerId"]]
        for _, host, port in random.sample(others, min(self.fanout, len(others))):
            self._send_quietly((host, port), m)

    def _on_get(self, conn: socket.socket, m: dict[str, Any]) -> None:
        if self.eof_style == "close_on_eof" and eof_within(conn, self.answer_delay):
            with self._lock:
                self.eof_stats["closed_on_eof"] += 1
            return  # the client "went away": closed before answering
        asked = file_id = m.get("file_id")
        with self._lock:
            if isinstance(file_id, str) and file_id not in self.catalog:
                file_id = self.aliases.get(file_id, file_id)
            e = self.catalog.get(file_id) if isinstance(file_id, str) else None
            data = self.blobs.get(file_id) if isinstance(file_id, str) else None
            record = None if e is None else {k: e.record.get(k) for k in RECORD_KEYS}
            if record is not None and asked != file_id and isinstance(file_id, str):
                # Asked under the id its replies list: answered with that record.
                record.update(file_id=asked, file_timestamp=self.mtimes[file_id])
        if record is None or data is None:
            reply = dict(NULL_FILE_DATA)
        else:
            if self.corrupt_data:
                data = bytes([data[0] ^ 0xFF]) + data[1:] if data else b"x"
            reply = {"type": "FILE_DATA", **record, "data": data.hex()}
        self._write(conn, reply)
        if self.keep_open_after_reply:
            conn.settimeout(0.1)
            deadline = time.monotonic() + FILE_TIMEOUT
            while not self._stopping.is_set() and time.monotonic() < deadline:
                try:
                    if not conn.recv(4096):
                        return
                except TimeoutError:
                    continue
                except OSError:
                    return

    def _on_push(self, m: dict[str, Any]) -> None:
        file_id, data = m.get("file_id"), m.get("data")
        if not isinstance(file_id, str) or not isinstance(data, str) or not data:
            return
        record = {k: m.get(k) for k in RECORD_KEYS}
        with self._lock:
            self.catalog[file_id] = Entry(record, set(), local=True)
            self.blobs[file_id] = bytes.fromhex(data)
            peers = [(v["host"], v["port"]) for v in self.peers.values()]
        for to in peers:
            self._send_quietly(to, {"type": "ANNOUNCE", "from": self.peer_id, **record})
