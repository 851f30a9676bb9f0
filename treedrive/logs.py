"""Log set-up for the ``treedrive`` command: lines to stderr and to the node's log file
(``node.log`` in the data dir unless ``--log-file`` says otherwise; rotated by size), with what
peers said made printable; the level from ``--log-level`` and ``-v``/``-q``."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import IO

from treedrive.core.text import printable_lines


class PrintableFormatter(logging.Formatter):
    """Log lines quote what peers said (ids, hosts, names): control characters in them are
    escaped, so that a log read in a terminal (stderr, ``tail node.log``) shows them and never
    runs them. Line breaks of tracebacks are kept."""

    def format(self, record: logging.LogRecord) -> str:
        return printable_lines(super().format(record))


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class NotOnTerminal(logging.Filter):
    """Keeps off the terminal the log records marked ``extra={"terminal": False}``: what the
    CLI says there in its own words (the dashboard's address, with its token; a failed start)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "terminal", True) is not False


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MIB = 1024 * 1024


def effective_level(level: str, verbose: int = 0, quiet: int = 0) -> str:
    """``level`` (any case) made one step more verbose per ``-v`` and one quieter per ``-q``,
    within DEBUG..ERROR."""
    index = LEVELS.index(level.upper()) + quiet - verbose
    return LEVELS[max(0, min(len(LEVELS) - 1, index))]


@dataclass(frozen=True, slots=True)
class LogFile:
    """Where the node's log file is and how it rotates. ``path`` None: ``node.log`` in the data
    dir; ``"-"``: no file (stderr only). ``max_bytes`` 0: never rotated; else ``backups`` (at least
    1) old files are kept, ``node.log.1`` the newest."""

    path: str | None = None
    max_bytes: int = 10 * MIB
    backups: int = 5

    def target(self, data_dir: Path) -> Path | None:
        if self.path == "-":
            return None
        return Path(self.path) if self.path else data_dir / "node.log"


class PrivateRotatingFileHandler(RotatingFileHandler):
    """A rotating log file that is created readable by its owner only, the new one after a
    rollover too (log lines name peers, files and the data dir)."""

    def _open(self) -> IO[str]:  # type: ignore[override]  # typeshed says TextIOWrapper
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)


def setup_logging(level: str, data_dir: Path | None = None) -> None:
    """Log lines to stderr; and to ``<data_dir>/node.log`` if given (:func:`log_to_file`)."""
    root = logging.getLogger()
    root.setLevel(level)
    stderr = logging.StreamHandler()
    stderr.setFormatter(PrintableFormatter(LOG_FORMAT, "%H:%M:%S"))
    stderr.addFilter(NotOnTerminal())
    root.addHandler(stderr)
    if data_dir is not None:
        log_to_file(data_dir)


def log_to_file(data_dir: Path, plan: LogFile = LogFile()) -> logging.Handler | None:
    """Log lines to the node's log file (``<data_dir>/node.log`` unless ``plan`` says otherwise;
    created 0600, rotated by size) from now on; None when ``plan`` says stderr only. A node does
    this once it holds the data dir's lock: a node refused there writes nothing into another's
    log."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_file = plan.target(data_dir)
    if log_file is None:
        return None
    log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    to_file = PrivateRotatingFileHandler(
        log_file, maxBytes=plan.max_bytes, backupCount=plan.backups
    )
    to_file.setFormatter(PrintableFormatter(LOG_FORMAT))
    logging.getLogger().addHandler(to_file)
    return to_file
