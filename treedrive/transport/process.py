"""Process-wide settings for a node's sockets: the open files limit, and what the event loop
reports when ``accept()`` fails for want of file descriptors."""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from typing import Any

from treedrive.transport.admission import Tally

log = logging.getLogger(__name__)

OPEN_FILES_CAP = 1 << 20
ACCEPT_OUT_OF_RESOURCES = "socket.accept() out of system resource"

accept_errors = Tally(every=1.0, detail=1)
"""accept() failures for lack of file descriptors, in this process (the loop retries a second
later on its own): counted, and logged one line a second at most, with no traceback."""


def filter_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Route the loop's "socket.accept() out of system resource" reports (one, with a traceback,
    per failed accept of every server on the loop) to :data:`accept_errors`; everything else goes
    where it went before."""
    previous = loop.get_exception_handler()
    if getattr(previous, "treedrive_accept_filter", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") == ACCEPT_OUT_OF_RESOURCES or (
            isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)
        ):
            now = time.monotonic()
            if accept_errors.note("accepts failed (out of open files)", now):
                log.warning("cannot accept a connection: %s (retrying in a second)", exc)
            if (line := accept_errors.summary(now)) is not None:
                log.warning("since the last line: %s", line)
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.treedrive_accept_filter = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


def raise_open_files_limit(cap: int = OPEN_FILES_CAP) -> int:
    """Raise this process's soft limit of open files to its hard limit (at most ``cap``);
    returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, exc)
        return soft
    return target
