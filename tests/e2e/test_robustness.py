"""A real ``treedrive run`` process fed malformed and hostile input over raw sockets, and killed in
the middle of receiving a large file. After each, the node must still answer (GOSSIP ->
GOSSIP_REPLY, GET_FILE -> FILE_DATA), log a warning, and write nothing outside its data dir."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import (
    Listener,
    Shell,
    Shells,
    file_data,
    file_id_of,
    get_file,
    integrity_check,
    send_raw,
    tree,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

MB = 1024 * 1024
ID_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Watched:
    """A running node holding one file, with snapshots to compare against later."""

    node: Shell
    tmp: Path
    held_id: str
    held_bytes: bytes
    outside: set[str] = field(default_factory=set)
    inside: set[str] = field(default_factory=set)
    log_mark: int = 0
    probes: int = 0
    xs: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> None:
        self.outside = self._outside()
        self.inside = self._inside()
        self.xs = self._xs()
        self.log_mark = len(self.node.log_text())

    def _xs(self) -> dict[str, int]:
        """Every file named x where a '../../x' could land, with its mtime (one may exist
        already: a checkout can live in a folder named x)."""
        places = (self.tmp, self.tmp.parent, self.node.data_dir, Path.cwd(), Path.cwd().parent)
        places += (Path.cwd().parent.parent,)
        return {str(p / "x"): (p / "x").stat().st_mtime_ns for p in places if (p / "x").exists()}

    def _outside(self) -> set[str]:
        data = self.node.data_dir.name
        mine = {p for p in tree(self.tmp) if p.split("/")[0] != data}
        return mine | {f"../{n}" for n in os.listdir(self.tmp.parent)}

    def _inside(self) -> set[str]:
        """The data dir's tree, but for SQLite's own side files (they come and go)."""
        return {p for p in tree(self.node.data_dir) if not re.search(r"\.db-\w+$", p)}

    def new_warnings(self) -> list[str]:
        fresh = self.node.log_text()[self.log_mark :]
        return [line for line in fresh.splitlines() if " WARNING " in line]

    def wait_warning(self, fragment: str) -> str:
        def found() -> str | None:
            return next((w for w in self.new_warnings() if fragment in w), None)

        return str(wait_until(found, timeout=10, what=f"a warning with {fragment!r}"))

    def assert_alive(self, listener: Listener) -> None:
        """Answers a GOSSIP with a GOSSIP_REPLY that lists its file, and serves the file."""
        self.probes += 1
        reply = listener.gossip_to(self.node.port, f"probe-{self.probes}")
        assert reply["peerId"] == self.node.node.peer_id
        assert self.held_id in {f["file_id"] for f in reply["files"]}
        assert_serves(self.node.port, self.held_id, self.held_bytes)

    def assert_nothing_outside(self, allowed_blobs: frozenset[str] = frozenset()) -> None:
        assert self._outside() == self.outside
        assert self._xs() == self.xs
        assert self.node.partials() == []
        blobs = {p.name for p in (self.node.data_dir / "blobs").iterdir()}
        assert blobs == {self.held_id, *allowed_blobs}
        inside = self._inside()
        assert inside - self.inside <= {f"blobs/{b}" for b in allowed_blobs}, inside


def assert_serves(port: int, file_id: str, data: bytes) -> None:
    answer = get_file(port, file_id)
    assert answer is not None
    assert answer["type"] == "FILE_DATA"
    assert answer["file_id"] == file_id
    assert bytes.fromhex(answer["data"]) == data


@pytest.fixture
def watched(shells: Shells, tmp_path: Path, listener: Listener) -> Watched:
    node = shells("R").start()
    src = tmp_path / "src" / "held.bin"
    src.parent.mkdir()
    src.write_bytes(os.urandom(200_000))
    held = node.push(src)
    w = Watched(node, tmp_path, held, src.read_bytes())
    w.assert_alive(listener)
    w.snapshot()
    return w


# -- malformed messages ---------------------------------------------------------------------------
def gossip(**fields: Any) -> dict[str, Any]:
    base = {"type": "GOSSIP", "host": "127.0.0.1", "port": 9, "id": "g-1", "peerId": "eve"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def file_data_head(file_id: str, name: str, size_mb: float, owner: str, ts: int) -> bytes:
    """A FILE_DATA up to the opening quote of its "data" string."""
    record = {
        "type": "FILE_DATA",
        "file_name": name,
        "file_size": size_mb,
        "file_id": file_id,
        "file_owner": owner,
        "file_timestamp": ts,
        "data": "",
    }
    return json.dumps(record).encode()[: -len(b'"}')]


FLOOD_HEAD = file_data_head(hashlib.sha256(b"flood").hexdigest(), "flood.bin", 100.0, "eve", 1)

MALFORMED: dict[str, tuple[bytes, str]] = {
    "not json": (b"hello, this is not JSON at all\n", "malformed message dropped"),
    "truncated json": (
        b'{"type": "GOSSIP", "host": "127.0.0.1", "port": 8270, "id": "ab',
        "malformed message dropped",
    ),
    "json array": (b'[{"type": "GOSSIP"}]', "malformed message dropped"),
    "NaN": (b'{"type": "GOSSIP", "port": NaN}', "malformed message dropped"),
    "unknown type": (json.dumps({"type": "HELLO", "x": 1}).encode(), "unknown message type"),
    "no type": (json.dumps({"host": "127.0.0.1", "port": 1}).encode(), "has no 'type'"),
    "missing fields": (json.dumps(gossip(id=None, port=None)).encode(), "invalid message"),
    "port is a word": (json.dumps(gossip(port="abc")).encode(), "'port' must be a port number"),
    "port out of range": (json.dumps(gossip(port=70000)).encode(), "'port' must be a port"),
    "host is a number": (json.dumps(gossip(host=12)).encode(), "'host' must be"),
    "short file_id in GET_FILE": (
        json.dumps({"type": "GET_FILE", "file_id": "abc123"}).encode(),
        "'file_id' must be 64 hex",
    ),
    "long file_id in DELETE": (
        json.dumps({"type": "DELETE", "from": "eve", "file_id": "a" * 65}).encode(),
        "'file_id' must be 64 hex",
    ),
    "ANNOUNCE without owner": (
        json.dumps(
            {
                "type": "ANNOUNCE",
                "from": "eve",
                "file_name": "a",
                "file_size": 1,
                "file_id": "b" * 64,
                "file_timestamp": 1,
            }
        ).encode(),
        "'file_owner' must be",
    ),
    "FILE_DATA cut off mid-data": (
        FLOOD_HEAD + os.urandom(300_000).hex().encode(),
        "malformed message dropped",
    ),
    "FILE_DATA with non-hex data": (
        FLOOD_HEAD + os.urandom(300_000).hex().encode() + b"zz" + b"00" * 1000 + b'"}',
        "malformed message dropped",
    ),
    "deep nesting": (b'{"type": "GOSSIP", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "malformed"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_message_is_dropped_and_node_keeps_serving(
    watched: Watched, listener: Listener, case: str
) -> None:
    payload, warning = MALFORMED[case]
    answer = b""
    with socket.create_connection(("127.0.0.1", watched.node.port), timeout=5) as s:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)  # truncated: the connection ends mid-object
            s.settimeout(10)
            answer = s.recv(1 << 16)  # the node closes without waiting for more
        except (BrokenPipeError, ConnectionResetError):
            pass  # the node gave up on the message before reading all of it: fine
    if answer:  # only a GET_FILE may be answered, and only with "not here"
        reply = json.loads(answer)
        assert reply["type"] == "FILE_DATA"
        assert reply["file_id"] is None
    line = watched.wait_warning(warning)
    assert "127.0.0.1" in line
    watched.assert_alive(listener)
    assert watched.node.running()
    assert set(watched.node.files()) == {watched.held_id[:12]}
    watched.assert_nothing_outside()


# -- floods ---------------------------------------------------------------------------------------
def pump(
    port: int,
    head: bytes,
    block: bytes,
    total: int,
    tail: bytes,
    stop: threading.Event,
    pause: float = 0.0,
) -> dict[str, Any]:
    """Send ``head``, then ``block`` until ``total`` bytes or ``stop``, then ``tail``. The node may
    close early: that ends the stream. Runs in a thread; the result dict is filled as it goes."""
    result: dict[str, Any] = {"sent": 0, "done": threading.Event(), "error": None}

    def run() -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(head)
                while result["sent"] < total and not stop.is_set():
                    s.sendall(block)
                    result["sent"] += len(block)
                    if pause:
                        time.sleep(pause)
                s.sendall(tail)
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as exc:
            result["error"] = exc
        finally:
            result["done"].set()

    threading.Thread(target=run, daemon=True).start()
    return result


def test_100mb_of_random_garbage(watched: Watched, listener: Listener) -> None:
    stop = threading.Event()
    block = os.urandom(MB)
    if block[:1] in (b"{", b"\x16"):  # a JSON message, or a TLS handshake (another path)
        block = b"!" + block[1:]
    stream = pump(watched.node.port, b"", block, 100 * MB, b"", stop)
    try:
        watched.assert_alive(listener)  # served while the garbage arrives
        assert stream["done"].wait(60)
    finally:
        stop.set()
    watched.wait_warning("malformed message dropped")
    watched.assert_alive(listener)
    watched.assert_nothing_outside()


def test_huge_file_data_in_flight_does_not_block_other_peers(
    watched: Watched, listener: Listener
) -> None:
    """100 MB of well-formed hex under an id it does not match: the node streams it to partial/
    while it keeps answering others, then refuses it."""
    node = watched.node
    bogus = hashlib.sha256(b"not these bytes").hexdigest()
    head = file_data_head(bogus, "flood.bin", 100.0, "eve", 1)
    stop = threading.Event()
    block = os.urandom(MB // 2).hex().encode()
    stream = pump(node.port, head, block, 200 * MB, b'"}', stop, pause=0.02)
    try:
        wait_until(
            lambda: any(p.stat().st_size > 2 * MB for p in node.partials()),
            timeout=20,
            what="the flood is being received into partial/",
        )
        watched.assert_alive(listener)
        watched.assert_alive(listener)
        in_flight = not stream["done"].is_set()
    finally:
        stop.set()
    assert stream["done"].wait(30)
    assert in_flight, "the node answered only after the flood ended"
    assert stream["error"] is None  # the node kept reading to the end
    watched.wait_warning("refused: bytes do not match")
    wait_until(lambda: node.partials() == [], what="partial file removed")
    assert bogus not in node.files()
    watched.assert_alive(listener)
    watched.assert_nothing_outside()


# -- hostile FILE_DATA ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../x", "/x", "..\\..\\x", "a/../../../x"])
def test_file_data_name_is_never_a_path(watched: Watched, listener: Listener, name: str) -> None:
    node = watched.node
    data = os.urandom(10_000)
    ts = int(time.time())
    fid = file_id_of(data, ts)
    send_raw(node.port, file_data(data, name, ts, "eve"))
    wait_until(lambda: node.blob(fid).exists(), what="the pushed file is stored")
    assert node.blob(fid).read_bytes() == data
    listed = node.files()[fid]
    assert listed["name"] == "x"
    assert listed["local"] == "yes"
    watched.assert_alive(listener)
    watched.assert_nothing_outside(frozenset({fid}))


def test_file_data_whose_bytes_do_not_match_the_id(watched: Watched, listener: Listener) -> None:
    node = watched.node
    data = os.urandom(50_000)
    ts = int(time.time())
    claimed = file_id_of(data + b"!", ts)
    send_raw(node.port, file_data(data, "liar.bin", ts, "eve", file_id=claimed))
    line = watched.wait_warning("refused")
    assert claimed[:12] in line
    assert not node.blob(claimed).exists()
    assert claimed not in node.files()
    watched.assert_alive(listener)
    watched.assert_nothing_outside()


# -- crash in the middle of a transfer ------------------------------------------------------------
def test_sigkill_mid_transfer_leaves_a_clean_store(shells: Shells, tmp_path: Path) -> None:
    s = shells("S").start()
    r = shells("R", "--bootstrap", s.address, "--download-limit", "0").start()
    wait_until(lambda: "S" in r.peers() and "R" in s.peers(), what="R and S know each other")

    src = tmp_path / "src"
    src.mkdir()
    (src / "early.txt").write_bytes(b"pushed before the crash\n" * 100)
    early = r.push(src / "early.txt")
    (src / "from_s.bin").write_bytes(os.urandom(100_000))
    from_s = s.push(src / "from_s.bin")  # S's push goes to R, its only peer
    # R's record says it holds the file (its blob is in place a moment before the record is)
    before = wait_until(
        lambda: from_s in (rows := r.files()) and rows[from_s]["local"] == "yes" and rows,
        what="R holds S's push",
    )
    assert r.blob(from_s).exists()
    assert {early[:12], from_s[:12]} <= set(before)

    # 200 MB arrives, slowly, as an unsolicited FILE_DATA; R dies in the middle
    block = os.urandom(MB // 2)
    ts = int(time.time())
    h = hashlib.sha256()
    for _ in range(400):
        h.update(block)
    h.update(str(ts).encode())
    big = h.hexdigest()
    head = file_data_head(big, "big.bin", 200.0, "pusher", ts)
    stop = threading.Event()
    stream = pump(r.port, head, block.hex().encode(), 400 * len(block) * 2, b'"}', stop, pause=0.02)
    try:
        part = wait_until(
            lambda: next((p for p in r.partials() if p.stat().st_size > 8 * MB), None),
            timeout=20,
            what="R is receiving the big file",
        )
        assert not stream["done"].is_set()
        r.kill()
    finally:
        stop.set()
    assert stream["done"].wait(20)
    assert part.exists()  # what the crash left behind
    assert integrity_check(r.data_dir / "treedrive.db") == "ok"

    # S forgets R; S gets a new file R has never seen
    wait_until(lambda: "R" not in s.peers(), what="S dropped the dead R")
    (src / "later.bin").write_bytes(os.urandom(300_000))
    later = s.push(src / "later.bin")

    r.start()
    assert r.partials() == []
    assert not r.blob(big).exists()
    after = r.files()
    assert big not in after
    for fid in (early, from_s):
        assert after[fid]["local"] == "yes"
        assert after[fid] == before[fid] | {"peers": after[fid]["peers"]}
    assert r.blob(early).read_bytes() == (src / "early.txt").read_bytes()
    assert integrity_check(r.data_dir / "treedrive.db") == "ok"

    wait_until(lambda: "R" in s.peers() and "S" in r.peers(), what="R rejoined")
    wait_until(lambda: later in r.files(), what="R learns of S's new file")
    out = r.get(later)
    assert out.startswith("got later.bin"), out
    assert r.blob(later).read_bytes() == (src / "later.bin").read_bytes()
    assert r.partials() == []
