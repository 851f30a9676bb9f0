"""treedrive-rarest's own tests: the ranking alone, then real nodes (in-process and a
``treedrive run`` process) that pick the rarest file on join. They use only the installed
TreeDrive and its pytest plugin (``treedrive.testing``): no file of TreeDrive's repository."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import treedrive_rarest

from treedrive.core.model import CatalogEntry, FileMeta
from treedrive.core.node import Node
from treedrive.testing import NodeProcess, address, wait_for

Starter = Callable[..., Any]


select = treedrive_rarest.treedrive_select_downloads


def entry(file_id: str, ts: int, *holders: str) -> CatalogEntry:
    meta = FileMeta(file_id, f"{file_id}.txt", 0.001, "owner", ts)
    return CatalogEntry(meta, has_copy=False, size_bytes=1000, holders=holders)


# -- the ranking -------------------------------------------------------------------------------
def test_fewest_holders_first_then_newest_then_id() -> None:
    candidates = [
        entry("c", 300, "p1", "p2", "p3"),
        entry("b", 100, "p1"),
        entry("e", 200, "p1", "p2"),
        entry("a", 100, "p2"),
        entry("d", 250, "p3"),
    ]
    chosen = select(None, candidates, 10)
    assert chosen == ["d", "a", "b", "e", "c"]


def test_the_limit_is_kept_and_no_candidates_leave_the_choice_to_others() -> None:
    candidates = [entry(name, 100, *["p"] * n) for n, name in enumerate("abc", start=1)]
    assert select(None, candidates, 2) == ["a", "b"]
    assert select(None, candidates, 0) == []
    assert select(None, [], 3) is None


def test_the_plugin_is_installed_under_the_treedrive_entry_point_group() -> None:
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group="treedrive")}
    assert found.get("rarest") == "treedrive_rarest"


# -- real nodes --------------------------------------------------------------------------------
async def a_network(start_node: Starter) -> tuple[Node, str, str]:
    """Three nodes: 'old' holds rare.txt (one holder, the older file); 'new' and 'copy' hold
    common.txt (two holders, the newer file). Returns (bootstrap node, rare id, common id)."""
    quiet = {"download_limit": 0}  # these three fetch nothing on join
    old = await start_node("old", seed={"rare.txt": b"only one node holds this"}, **quiet)
    await asyncio.sleep(1.1)  # timestamps are in seconds: common.txt is the newer file
    new = await start_node(
        "new", seed={"common.txt": b"two nodes hold this"}, bootstrap=(address(old),), **quiet
    )
    copy = await start_node("copy", bootstrap=(address(old),), **quiet)
    [rare] = [e.meta.file_id for e in old.files() if e.has_copy]
    [common] = [e.meta.file_id for e in new.files() if e.has_copy]
    await wait_for(lambda: copy.file(common))
    await copy.get(common)
    await wait_for(lambda: (e := old.file(common)) and set(e.holders) >= {"new", "copy"})
    return old, rare, common


def held(node: Node) -> set[str]:
    return {e.meta.file_id for e in node.files() if e.has_copy}


async def test_a_joining_node_fetches_the_rarest_file(start_node: Starter) -> None:
    old, rare, _common = await a_network(start_node)
    joiner = await start_node(
        "joiner",
        plugins=[treedrive_rarest],
        bootstrap=(address(old),),
        download_limit=1,
        join_delay=2.0,  # time to hear every holder's reply before it chooses
    )
    await wait_for(lambda: held(joiner), timeout=15)
    await asyncio.sleep(1.0)  # nothing else follows
    assert held(joiner) == {rare}


async def test_without_the_plugin_the_newest_file_is_fetched(
    start_node: Starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: the same network, the plugin blocked, and the built-in choice differs."""
    monkeypatch.setenv("TREEDRIVE_DISABLE_PLUGINS", "rarest")
    old, _rare, common = await a_network(start_node)
    joiner = await start_node("joiner", bootstrap=(address(old),), download_limit=1, join_delay=2.0)
    await wait_for(lambda: held(joiner), timeout=15)
    await asyncio.sleep(1.0)
    assert held(joiner) == {common}


@pytest.mark.filterwarnings(r"ignore:unclosed file <_io.TextIOWrapper name='[^']*\.out'")
async def test_a_node_process_fetches_the_rarest_file(
    start_node: Starter, node_process: Callable[..., NodeProcess]
) -> None:
    old, rare, common = await a_network(start_node)
    joiner = node_process(
        "joiner",
        "--bootstrap", str(address(old)),
        "--download-limit", "1",
        "--join-delay", "2",
        plugins=["treedrive_rarest"],
    )  # fmt: skip
    await asyncio.to_thread(joiner.start)
    await wait_for(lambda: (e := old.file(rare)) and "joiner" in e.holders, timeout=20)
    await asyncio.sleep(1.0)
    assert "joiner" not in (old.file(common) or entry("x", 0)).holders
    assert joiner.stop() == 0
