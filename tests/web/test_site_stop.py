"""A dashboard that stops leaves no connection behind: one accepted just before the stop is closed
with the rest, not left to the garbage collector (CPython gh-109564)."""

from __future__ import annotations

import asyncio
import gc
import socket
import warnings
from typing import Any

from aiohttp import web

from treedrive.web.admission import AdmittingSite


async def test_a_connection_accepted_as_the_site_stops_is_closed_not_leaked() -> None:
    """A connection made and dropped just before the dashboard stops (the loop has accepted it
    but not yet made its transport, a few iterations' window): the stop reports no error and
    leaves no socket unclosed. Before, ``Server.close()`` in that window failed the transport's
    creation (an assertion in asyncio) and the socket was a ResourceWarning on Python 3.13."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    loop.set_debug(True)  # asyncio reports a failed transport creation in debug mode only
    try:
        for iterations in range(6):  # the window is a given number of iterations after accept
            runner = web.AppRunner(web.Application())
            await runner.setup()
            site = AdmittingSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
            for _ in range(iterations):
                await asyncio.sleep(0)
            await runner.cleanup()
        await asyncio.sleep(0.1)  # the connections closed go (connection_lost)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            gc.collect()
    finally:
        loop.set_debug(False)
        loop.set_exception_handler(None)
    assert [c.get("exception") or c["message"] for c in errors] == []
    assert [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)] == []
