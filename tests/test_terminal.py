"""The shell in a real terminal: a real ``treedrive run`` process on a pseudo-terminal (python's
``pty``), typed at as a user types. Log lines arrive while a command is half typed: the input
line is cleared, the log line printed, and the prompt redrawn with what was typed; the up arrow
recalls a command (readline's history, kept in the data dir); Ctrl-D and SIGTERM stop the node
cleanly and give the terminal back as it was."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAST, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

pytest.importorskip("readline")


class Terminal:
    """A node process whose stdin, stdout and stderr are one pseudo-terminal."""

    def __init__(self, home: Path, peer_id: str) -> None:
        self.port = free_port()
        self.data_dir = home / "data" / "treedrive" / peer_id
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TREEDRIVE_")},
            "HOME": str(home),
            "XDG_DATA_HOME": str(home / "data"),
            "TERM": "xterm",
        }
        timers = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items() if k in RUN_TIMERS]
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "treedrive", "run", peer_id, "127.0.0.1", str(self.port)),
                *("--http-port", "0", "--shell", *timers),
            ],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.seen = b""
        self.pos = 0
        """Where the last match ended."""

    def read_until(self, pattern: bytes, timeout: float = 20) -> re.Match[bytes]:
        """Read until ``pattern`` (a regex) matches what arrived since the last match."""
        deadline = time.monotonic() + timeout
        start = self.pos
        while True:
            found = re.compile(pattern, re.S).search(self.seen, start)
            if found:
                self.pos = found.end()
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} not seen; got {self.seen[start:]!r}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.2))
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the process closed the terminal
                    chunk = b""
                if not chunk and self.proc.poll() is not None:
                    raise AssertionError(f"{pattern!r} not seen; ended with {self.seen[start:]!r}")
                self.seen += chunk

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self) -> int:
        code = self.proc.wait(timeout=30)
        with_rest = self.seen
        try:
            while chunk := os.read(self.master, 65536):
                with_rest += chunk
        except OSError:
            pass
        self.seen = with_rest
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        os.close(self.master)


RUN_TIMERS = ("gossip_interval", "peer_timeout", "cleanup_interval", "join_delay")


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(tmp_path, "carol")
    try:
        yield term
    finally:
        term.close()


def gossip_from(port: int, peer_id: str) -> None:
    """A GOSSIP from a new peer: the node logs that it joined."""
    message = {"type": "GOSSIP", "host": "127.0.0.1", "port": 9, "id": f"g-{peer_id}"}
    message["peerId"] = peer_id
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(json.dumps(message).encode())


PROMPT = rb"carol> "


def test_log_lines_redraw_the_prompt_and_history_recalls(terminal: Terminal) -> None:
    terminal.read_until(rb"dashboard: http://127\.0\.0\.1:\d+/\?token=.*?" + PROMPT)
    terminal.type(b"pee")
    terminal.read_until(b"pee")  # echoed after the prompt
    gossip_from(terminal.port, "dave")
    # the half-typed line is cleared, the log line printed, the prompt redrawn with "pee"
    terminal.read_until(rb"\r\x1b\[2K[^\n]*peer dave[^\n]*joined[^\n]*\n" + PROMPT + rb"pee")
    terminal.type(b"rs\r")
    terminal.read_until(rb"peer +address.*?dave +127\.0\.0\.1:9.*?" + PROMPT)
    before = terminal.seen.count(b"dave  ")
    terminal.type(b"help\r")
    terminal.read_until(rb"Commands:.*?" + PROMPT)
    terminal.type(b"\x1b[A\x1b[A\r")  # up twice: "peers" again
    terminal.read_until(rb"peer +address.*?dave +127\.0\.0\.1:9.*?" + PROMPT)
    assert terminal.seen.count(b"dave  ") > before
    terminal.type(b"\x04")  # Ctrl-D
    assert terminal.wait() == 0
    assert b"node carol stopped" in terminal.seen
    assert b"Traceback" not in terminal.seen
    history = terminal.data_dir / "shell-history"
    assert history.read_text().split() == ["peers", "help", "peers"]
    assert stat.S_IMODE(history.stat().st_mode) == 0o600


def test_sigterm_while_a_line_is_typed_stops_cleanly(terminal: Terminal) -> None:
    terminal.read_until(PROMPT)
    terminal.type(b"list rem")
    terminal.read_until(b"list rem")
    os.kill(terminal.proc.pid, signal.SIGTERM)
    assert terminal.wait() == 0
    assert b"node carol stopped" in terminal.seen
    assert b"Traceback" not in terminal.seen
    attrs = termios.tcgetattr(terminal.master)  # the terminal as it was: lines, with echo
    assert attrs[3] & termios.ICANON
    assert attrs[3] & termios.ECHO
