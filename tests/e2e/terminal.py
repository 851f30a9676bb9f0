"""A real terminal for tests: a program on a pseudo-terminal (its controlling tty, so a shell
gets job control and ``treedrive run`` offers its interactive shell), typed at line by line,
its output read back with the terminal's escape sequences taken out."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import signal
import struct
import termios
import threading
import time
from collections.abc import Sequence

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[()][A-Z0-9]|\x1b[=>]|\r")


def plain(text: str) -> str:
    """``text`` without escape sequences and carriage returns."""
    return ANSI.sub("", text).replace("\x07", "")


class Terminal:
    """One program on a pty of ``rows`` x ``cols``."""

    def __init__(
        self, argv: Sequence[str], env: dict[str, str], cwd: str, rows: int = 50, cols: int = 200
    ) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: its controlling terminal is the pty
            try:
                os.chdir(cwd)
                os.execvpe(argv[0], list(argv), env)  # noqa: S606 (the test's own argv)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self._raw = bytearray()
        self._lock = threading.Lock()
        self._mark = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._raw += data

    @property
    def output(self) -> str:
        """Everything shown so far, as plain text."""
        with self._lock:
            return plain(self._raw.decode(errors="replace"))

    def since_mark(self) -> str:
        """What was shown since the last :meth:`mark`."""
        return self.output[self._mark :]

    def mark(self) -> None:
        self._mark = len(self.output)

    def type(self, line: str) -> None:
        """Type ``line`` and Enter, as a person would."""
        os.write(self.fd, line.encode() + b"\r")

    def wait_for(self, pattern: str, timeout: float = 20.0, since_mark: bool = True) -> str:
        """Wait until the output (since the mark) matches the regex ``pattern``; the match."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            text = self.since_mark() if since_mark else self.output
            found = regex.search(text)
            if found:
                return found.group(0)
            time.sleep(0.05)
        shown = self.since_mark() if since_mark else self.output
        raise AssertionError(f"{pattern!r} not shown within {timeout} s; shown:\n{shown[-3000:]}")

    def close(self) -> None:
        """End the program (its process group: what it started on this terminal too)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                done, _ = os.waitpid(self.pid, os.WNOHANG)
                if done:
                    break
                time.sleep(0.05)
            else:
                continue
            break
        with contextlib.suppress(OSError):
            os.close(self.fd)
