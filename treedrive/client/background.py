"""A blocking call in a thread of its own while the caller's thread does something every so often
(asks the node how far it got, draws a progress line)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def meanwhile(work: Callable[[], T], tick: Callable[[], None], every: float) -> T:
    """``work()``'s result (or its exception), while ``tick()`` runs every ``every`` s in this
    thread until ``work`` is done. The thread of ``work`` is a daemon: if ``tick`` raises (or
    Ctrl-C comes), it is left to end with the process."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    while True:
        worker.join(every)
        if not worker.is_alive():
            break
        tick()
    if failure:
        raise failure[0]
    return result[0]
