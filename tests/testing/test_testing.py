"""treedrive.testing, the fixtures shipped for plugins' tests, and the two ways it gives a node a
plugin that is not installed: ``running_node(plugins=...)`` and ``TREEDRIVE_PLUGINS``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from treedrive.core import defaults
from treedrive.core.hookspecs import hookimpl
from treedrive.core.node import Node
from treedrive.core.plugins import BLOCK_ENV, LOAD_ENV, make_plugin_manager
from treedrive.testing import FAST, NodeProcess, address, wait_for

PLUGIN_SOURCE = """
import os

from treedrive.core.hookspecs import hookimpl


@hookimpl
def treedrive_startup(node):
    with open(os.environ["TD_SAMPLE_STARTED"], "a") as f:
        f.write(node.peer_id + "\\n")
"""


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of a plugin module that is importable (on sys.path and PYTHONPATH) but not
    installed; it records the peer id of each node that starts with it."""
    folder = tmp_path / "plugin-src"
    folder.mkdir()
    (folder / "td_sample_plugin.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    inherited = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), inherited])))
    monkeypatch.setenv("TD_SAMPLE_STARTED", str(tmp_path / "started.txt"))
    monkeypatch.delitem(sys.modules, "td_sample_plugin", raising=False)
    return "td_sample_plugin"


class Started:
    def __init__(self) -> None:
        self.nodes: list[str] = []

    @hookimpl
    def treedrive_startup(self, node: Node) -> None:
        self.nodes.append(node.peer_id)


# -- the plugin manager ------------------------------------------------------------------------
def test_given_plugins_are_registered_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOAD_ENV, raising=False)
    started = Started()
    pm = make_plugin_manager(load_entry_points=False, plugins=[started, started, defaults])
    plugins = [p for p in pm.get_plugins() if p is not None]
    assert plugins.count(started) == 1
    assert plugins.count(defaults) == 1


def test_modules_named_in_the_environment_are_registered(
    plugin_module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOAD_ENV, f" {plugin_module} ,")
    pm = make_plugin_manager(load_entry_points=False)
    assert pm.get_plugin(plugin_module) is sys.modules[plugin_module]


def test_a_blocked_name_is_not_registered_from_the_environment(
    plugin_module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOAD_ENV, plugin_module)
    monkeypatch.setenv(BLOCK_ENV, plugin_module)
    pm = make_plugin_manager(load_entry_points=False)
    assert pm.get_plugin(plugin_module) is None


def test_without_the_variable_nothing_more_is_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOAD_ENV, raising=False)
    pm = make_plugin_manager(load_entry_points=False)
    assert [name for name, _ in pm.list_name_plugin()] == ["treedrive.defaults"]


# -- the fixtures ------------------------------------------------------------------------------
async def test_start_node_gives_plugins_seed_files_and_fast_timers(
    start_node: Callable[..., Any],
) -> None:
    started = Started()
    node = await start_node("alice", plugins=[started], seed={"a.txt": b"alpha", "b.txt": b"b"})
    assert started.nodes == ["alice"]  # registered before the node started
    assert sorted(e.meta.file_name for e in node.files() if e.has_copy) == ["a.txt", "b.txt"]
    assert node.config.gossip_interval == FAST["gossip_interval"]
    assert node.config.join_delay == FAST["join_delay"]
    bob = await start_node("bob", bootstrap=(address(node),))
    await wait_for(lambda: len([e for e in bob.files() if e.has_copy]) == 2, timeout=15)


@pytest.mark.e2e
@pytest.mark.filterwarnings(r"ignore:unclosed file <_io.TextIOWrapper name='[^']*\.out'")
def test_a_node_process_loads_the_plugin_module_it_is_given(
    node_process: Callable[..., NodeProcess], plugin_module: str, tmp_path: Path
) -> None:
    """The process imports and registers the module named in TREEDRIVE_PLUGINS, and ``push``
    puts a file into it through its API."""
    node = node_process("carol", plugins=[plugin_module]).start()
    assert (tmp_path / "started.txt").read_text() == "carol\n"
    src = tmp_path / "c.txt"
    src.write_bytes(b"carol's file")
    assert node.push(src)["file_name"] == "c.txt"
    assert node.stop() == 0
