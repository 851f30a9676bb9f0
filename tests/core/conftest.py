"""Fixtures of the core's tests (the harness is in ``tests/core/harness.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.core.harness import ME, MY_HOST, MY_PORT, Harness, Recorder, RecordingNetwork
from treedrive.core.config import NodeConfig
from treedrive.core.node import Node
from treedrive.core.plugins import Plugins, make_plugin_manager
from treedrive.store import Store


@pytest.fixture
def make_harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    stores: list[Store] = []

    def make(*plugins: object, name: str = ME, **config: Any) -> Harness:
        store = Store(tmp_path / name)
        store.upgrade()
        stores.append(store)
        pm = make_plugin_manager(load_entry_points=False)
        recorder = Recorder()
        pm.register(recorder, name="recorder")
        for i, plugin in enumerate(plugins):
            pm.register(plugin, name=f"test-plugin-{i}")
        settings: dict[str, Any] = {"host": MY_HOST, "port": MY_PORT, "http_port": None}
        settings.update(config)
        net = RecordingNetwork()
        node = Node(NodeConfig(data_dir=tmp_path / name, peer_id=name, **settings), store,
                    Plugins(pm), net)  # fmt: skip
        node._recover()
        return Harness(node, net, recorder, tmp_path)

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def h(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness()
