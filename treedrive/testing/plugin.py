"""The pytest plugin of :mod:`treedrive.testing` (entry point ``pytest11``, name ``treedrive``):
fixtures only, none autouse, so a test run that does not ask for them is unchanged.

- ``start_node``: ``node = await start_node("alice", plugins=[my_plugin], seed={"a.txt": b"hi"},
  bootstrap=(address(other),), **config)``, an in-process node on the test's event loop with
  fast timers (:data:`treedrive.testing.FAST`), stopped at the end of the test. Needs
  pytest-asyncio (``pip install treedrive[testing]``).
- ``node_process``: ``node_process("alice", "--bootstrap", addr, plugins=["my_plugin"])``, a
  real ``treedrive run`` process (call ``.start()``), killed at the end of the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pytest

F = TypeVar("F", bound=Callable[..., Any])


def _async_fixture() -> Callable[[F], F]:
    """pytest-asyncio's fixture decorator (its strict mode as well as its auto mode); without
    pytest-asyncio, asking for ``start_node`` fails, and nothing else does."""
    try:
        import pytest_asyncio
    except ImportError:  # pragma: no cover
        return cast("Callable[[F], F]", pytest.fixture)
    return cast("Callable[[F], F]", pytest_asyncio.fixture)


async_fixture = _async_fixture()

if TYPE_CHECKING:
    from treedrive.testing import NodeProcess


@async_fixture
async def start_node(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``node = await start_node(peer_id, *, plugins=(), seed=(), **config)``: an in-process
    node in ``tmp_path/<peer_id>`` with the given plugins (modules or objects, besides the
    installed ones) and seed files, stopped at the end of the test."""
    from treedrive.testing import started_nodes

    async with started_nodes(tmp_path) as start:
        yield start


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """``node_process(peer_id, *run_options, port=None, plugins=())``: a real node process
    with fast timers (not started: call ``.start()``), killed at the end of the test."""
    from treedrive.testing import node_processes

    with node_processes(tmp_path) as make:
        yield make
