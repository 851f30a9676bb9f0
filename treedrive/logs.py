"""Log set-up for the ``treedrive`` command: lines to stderr and to the node's ``node.log``,
with what peers said made printable."""

from __future__ import annotations

import logging
import os
from pathlib import Path

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


def log_to_file(data_dir: Path) -> logging.Handler:
    """Log lines to ``<data_dir>/node.log`` (created 0600) from now on. A node does this once
    it holds the data dir's lock: a node refused there writes nothing into another's log."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_file = data_dir / "node.log"
    os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))  # owner only
    to_file = logging.FileHandler(log_file)
    to_file.setFormatter(PrintableFormatter(LOG_FORMAT))
    logging.getLogger().addHandler(to_file)
    return to_file
