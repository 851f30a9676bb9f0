"""A small network lab for tests and benchmarks: hosts in network namespaces on one bridge.

Each host is a namespace with a veth pair: one end inside (with an address on the lab's own
subnet), the other on the lab's bridge in the root namespace. The bridge has no address, so the
root namespace has no route to the lab: traffic never leaves it. :meth:`Lab.split` moves a group's
bridge-side links to a second bridge (a real partition: each side still reaches itself, packets
to the other side go nowhere and connections time out), :meth:`Lab.rejoin` puts them back, and
:meth:`Lab.counters` reads a host's interface counters.

Needs root and ``ip`` (iproute2); :func:`available` says whether both work here. Everything the
lab makes is named after its prefix and removed by name in :meth:`Lab.close`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

SUBNET = "10.77"
"""The lab's /16 (its hosts are 10.77.x.y; nothing outside the lab has an address there)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if shutil.which("ip") is None:
        return "no 'ip' command (iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"tdprobe{os.getpid() % 100000}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    index: int
    ns: str
    outside: str
    """The bridge-side end of its veth pair (in the root namespace)."""
    inside: str
    ip: str

    @property
    def mac(self) -> str:
        """Its inside link's hardware address (locally administered, from its number)."""
        return "02:77:" + ":".join(f"{b:02x}" for b in self.index.to_bytes(4, "big"))


@dataclass
class Lab:
    """Hosts in namespaces on one bridge (see the module's docstring)."""

    prefix: str = field(default_factory=lambda: f"td{os.getpid() % 100000}")
    hosts: list[Host] = field(default_factory=list)
    bridge: str = ""
    _made_bridge: bool = False

    def __post_init__(self) -> None:
        self.bridge = f"{self.prefix}br"

    def _ensure_bridge(self) -> None:
        if not self._made_bridge:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made_bridge = True
            _ip("link", "set", self.bridge, "up")

    def add(self, n: int) -> list[Host]:
        """``n`` more hosts on the bridge."""
        self._ensure_bridge()
        made: list[Host] = []
        for _ in range(n):
            i = len(self.hosts)
            if i >= 250 * 250:
                raise ValueError("the lab holds 62,500 hosts at most")
            ip = f"{SUBNET}.{i // 250}.{i % 250 + 2}"
            host = Host(i, f"{self.prefix}n{i}", f"{self.prefix}o{i}", f"{self.prefix}i{i}", ip)
            self.hosts.append(host)
            _ip("netns", "add", host.ns)
            _ip("link", "add", host.outside, "type", "veth", "peer", "name", host.inside,
                "address", host.mac)  # fmt: skip
            _ip("link", "set", host.inside, "netns", host.ns)
            _ip("link", "set", host.outside, "master", self.bridge)
            _ip("link", "set", host.outside, "up")
            self.exec(host, "ip", "link", "set", "lo", "up")
            self.exec(host, "ip", "addr", "add", f"{ip}/16", "dev", host.inside)
            self.exec(host, "ip", "link", "set", host.inside, "up")
            made.append(host)
        self._neighbours(made)
        return made

    def _neighbours(self, made: Sequence[Host]) -> None:
        """Every host knows every other's hardware address for good (permanent neighbour
        entries), so no host asks by ARP. The kernel keeps one ARP table for all namespaces, of
        ``gc_thresh3`` (1,024) learned entries by default: a lab of N hosts that talk to each
        other learns N x (N - 1) of them, so past about 32 hosts new ones are refused ("neighbor
        table overflow") and a host cannot reach most others. Permanent entries do not count."""
        new = {h.ns for h in made}
        for host in self.hosts:
            others = [h for h in self.hosts if h is not host and (host.ns in new or h.ns in new)]
            if not others:
                continue
            lines = "".join(
                f"neigh replace {h.ip} lladdr {h.mac} dev {host.inside} nud permanent\n"
                for h in others
            )
            subprocess.run(["ip", "-n", host.ns, "-batch", "-"], input=lines, text=True,
                           capture_output=True, check=True, timeout=30)  # fmt: skip

    def exec(self, host: Host, *argv: str) -> None:
        subprocess.run(["ip", "netns", "exec", host.ns, *argv], check=True, timeout=30)

    def popen(
        self,
        host: Host,
        argv: Sequence[str],
        *,
        stdout: IO[Any] | int | None = None,
        stderr: IO[Any] | int | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``host`` (``ip netns exec`` execs it: the PID is its own)."""
        return subprocess.Popen(
            ["ip", "netns", "exec", host.ns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=env,
        )

    def split(self, group: Sequence[Host]) -> str:
        """Move ``group``'s links to a bridge of their own: they reach each other, not the
        rest. Returns the second bridge's name (give it to :meth:`rejoin`)."""
        other = f"{self.prefix}bx"
        if _ip("link", "show", other, check=False).returncode != 0:
            _ip("link", "add", other, "type", "bridge")
            _ip("link", "set", other, "up")
        for host in group:
            _ip("link", "set", host.outside, "master", other)
        return other

    def rejoin(self, group: Sequence[Host]) -> None:
        """Put ``group``'s links back on the lab's bridge."""
        for host in group:
            _ip("link", "set", host.outside, "master", self.bridge)

    def counters(self, host: Host) -> dict[str, int]:
        """What ``host`` sent and received so far (read on the bridge side: what it sent is
        what that end received)."""
        base = Path("/sys/class/net") / host.outside / "statistics"
        names = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")
        got = {name: int((base / name).read_text()) for name in names}
        return {
            "sent_bytes": got["rx_bytes"],
            "received_bytes": got["tx_bytes"],
            "sent_packets": got["rx_packets"],
            "received_packets": got["tx_packets"],
        }

    def close(self) -> None:
        """Remove everything the lab made, by name."""
        for host in self.hosts:
            _ip("link", "del", host.outside, check=False)
            _ip("netns", "del", host.ns, check=False)
        for bridge in (self.bridge, f"{self.prefix}bx"):
            with contextlib.suppress(subprocess.SubprocessError):
                _ip("link", "del", bridge, check=False)
        self.hosts.clear()
        self._made_bridge = False


# -- TreeDrive nodes in the lab ------------------------------------------------------------------
PORT = 9000
"""Every lab node listens on this port (each has an address of its own)."""


@dataclass
class LabNode:
    """A ``treedrive run`` process in one lab host; its state read from its SQLite file."""

    lab: Lab
    host: Host
    peer_id: str
    data_dir: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host.ip}:{PORT}"

    def start(self, timeout: float = 30.0) -> LabNode:
        """Start the process and wait until it listens."""
        return self.launch().wait_started(timeout)

    def launch(self) -> LabNode:
        """Start the process (see :meth:`wait_started`)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "node.json").unlink(missing_ok=True)
        argv = [
            sys.executable, "-m", "treedrive", "run", "--peer-id", self.peer_id,
            "--host", self.host.ip, "--port", str(PORT), "--data-dir", str(self.data_dir),
            "--http-port", "0", "--no-shell", *self.args,
        ]  # fmt: skip
        with (self.data_dir.parent / f"{self.peer_id}.out").open("ab") as out:
            self.proc = self.lab.popen(self.host, argv, stdout=out, stderr=out)
        return self

    def wait_started(self, timeout: float = 30.0) -> LabNode:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not (self.data_dir / "node.json").exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.peer_id} exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.peer_id} did not start")
            time.sleep(0.05)
        return self

    def stop(self, sig: int = signal.SIGINT) -> None:
        """End the process by its PID (SIGINT, then SIGKILL after 20 s)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)

    def tcp_opens(self) -> int:
        """TCP connections this host has opened so far (its namespace's ``ActiveOpens``): one
        per message, since every message has a connection of its own."""
        out = subprocess.run(
            ["ip", "netns", "exec", self.host.ns, "cat", "/proc/net/snmp"],
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        head, values = [line.split() for line in out.stdout.splitlines() if line.startswith("Tcp:")]
        return int(values[head.index("ActiveOpens")])

    def delete(self, file_id: str) -> None:
        """Delete a file this node owns through its API (the CLI, in its namespace)."""
        subprocess.run(
            ["ip", "netns", "exec", self.host.ns, sys.executable, "-m", "treedrive", "delete",
             file_id, "--data-dir", str(self.data_dir)],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip

    def push(self, path: Path) -> str:
        """Push ``path`` through the node's API (the CLI, run in its namespace); the file id."""
        out = subprocess.run(
            ["ip", "netns", "exec", self.host.ns, sys.executable, "-m", "treedrive", "push",
             str(path), "--data-dir", str(self.data_dir), "--json"],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        return str(json.loads(out.stdout)["file_id"])

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(f"file:{self.data_dir / 'treedrive.db'}?mode=ro", uri=True, timeout=10)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    def peers(self) -> set[str]:
        return {row[0] for row in self._query("SELECT peer_id FROM peers")}

    def files(self) -> set[str]:
        """The ids in its catalogue (held here or elsewhere)."""
        return {row[0] for row in self._query("SELECT file_id FROM files")}

    def held(self) -> set[str]:
        return {row[0] for row in self._query("SELECT file_id FROM files WHERE has_copy")}
