"""The plugin manager factory and facade, and the example ``rarest`` download selector — both
through the hook and through a real joining node (real sockets on loopback, real SQLite)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pluggy
import pytest
from click.testing import CliRunner

from tests.conftest import address
from tests.core.harness import Harness
from treedrive.cli import cli
from treedrive.core import defaults
from treedrive.core.events import Event, PeerExpired
from treedrive.core.fileid import compute_file_id
from treedrive.core.hookspecs import hookimpl
from treedrive.core.model import MEGABYTE, CatalogEntry, FileMeta
from treedrive.core.node import Node
from treedrive.core.plugins import BLOCK_ENV, Plugins, make_plugin_manager

HAS_RAREST = importlib.util.find_spec("treedrive_rarest") is not None
needs_rarest = pytest.mark.skipif(
    not HAS_RAREST, reason="pip install -e plugins/treedrive-rarest (scripts/test does)"
)


def entry(n: int, ts: int, holders: int) -> CatalogEntry:
    data = f"file {n}".encode()
    meta = FileMeta(compute_file_id(data, ts), f"f{n}", 0.0, "owner", ts)
    return CatalogEntry(meta, False, None, tuple(f"h{i}" for i in range(holders)))


# -- the factory ----------------------------------------------------------------------------------
def test_factory_registers_the_defaults_and_checks_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BLOCK_ENV, raising=False)
    pm = make_plugin_manager(load_entry_points=False)
    assert pm.get_plugin("treedrive.defaults") is defaults
    assert pm.project_name == "treedrive"
    pm.check_pending()
    assert Plugins(pm).names() == [("treedrive.defaults", "built-in")]
    # The default policies answer.
    plugins = Plugins(pm)
    cands = [entry(i, 100 + i, 1) for i in range(5)]
    chosen = plugins.select_downloads(None, cands, 3)
    assert chosen == [c.meta.file_id for c in cands[:3]]
    assert plugins.accept_file(None, cands[0].meta, None) is True


def test_a_misspelt_hook_fails_loudly() -> None:
    class Typo:
        @hookimpl
        def treedrive_on_evnet(self, node: Any, event: Any) -> None: ...

    pm = make_plugin_manager(load_entry_points=False)
    pm.register(Typo())
    with pytest.raises(pluggy.PluginValidationError):
        pm.check_pending()


def test_factory_is_not_a_singleton() -> None:
    assert make_plugin_manager(load_entry_points=False) is not make_plugin_manager(
        load_entry_points=False
    )


@needs_rarest
def test_entry_point_plugins_are_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BLOCK_ENV, raising=False)
    names = dict(Plugins(make_plugin_manager()).names())
    assert "rarest" in names
    assert names["rarest"].startswith("treedrive-rarest ")
    assert names["treedrive.defaults"] == "built-in"


@needs_rarest
def test_disable_env_blocks_a_named_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BLOCK_ENV, " something-else , rarest")
    pm = make_plugin_manager()
    assert pm.is_blocked("rarest")
    assert pm.get_plugin("rarest") is None
    assert "rarest" not in dict(Plugins(pm).names())
    assert pm.get_plugin("treedrive.defaults") is defaults


def test_policy_hook_returning_an_awaitable_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    class AsyncPolicy:
        @hookimpl
        async def treedrive_select_downloads(
            self, node: Any, candidates: Sequence[CatalogEntry], limit: int
        ) -> list[str]:
            return ["nope"]

    pm = make_plugin_manager(load_entry_points=False)
    pm.register(AsyncPolicy(), name="async-policy")
    cands = [entry(1, 100, 1)]
    caplog.set_level(logging.ERROR)
    chosen = Plugins(pm).select_downloads(None, cands, 3)
    assert chosen == [cands[0].meta.file_id]
    assert "awaitable" in caplog.text


def test_collect_skips_a_raising_plugin(caplog: pytest.LogCaptureFixture) -> None:
    class Good:
        @hookimpl
        def treedrive_gossip_extra(self, node: Any, message_type: str) -> dict[str, int]:
            return {"good": 1}

    class Bad:
        @hookimpl
        def treedrive_gossip_extra(self, node: Any, message_type: str) -> dict[str, int]:
            raise ValueError("bad plugin")

    pm = make_plugin_manager(load_entry_points=False)
    pm.register(Good(), name="good")
    pm.register(Bad(), name="bad")
    caplog.set_level(logging.ERROR)
    got = Plugins(pm).gossip_extra(None, "GOSSIP")
    assert got == {"good": 1}
    assert "'bad' failed in treedrive_gossip_extra" in caplog.text


def test_an_implementation_may_declare_fewer_arguments(
    make_harness: Callable[..., Harness],
) -> None:
    """pluggy lets an implementation take a subset of the spec's arguments: the facade gives it
    exactly those, for a policy hook and for a notification hook alike."""
    heard: list[str] = []

    class Few:
        @hookimpl
        def treedrive_select_downloads(self, limit: int) -> list[str]:
            return ["chosen"][:limit]

        @hookimpl
        def treedrive_accept_file(self) -> bool:
            return False

        @hookimpl
        def treedrive_on_event(self, event: Event) -> None:
            heard.append(event.name)

        @hookimpl
        def treedrive_gossip_extra(self) -> dict[str, int]:
            return {"x_few": 1}

    h = make_harness(Few())
    plugins = h.node.plugins
    assert plugins.select_downloads(h.node, [entry(1, 100, 1)], 3) == ["chosen"]
    assert plugins.accept_file(h.node, entry(1, 100, 1).meta, None) is False
    assert plugins.gossip_extra(h.node, "GOSSIP") == {"x_few": 1}
    plugins.on_event(h.node, PeerExpired("gone"))
    assert heard == ["PeerExpired"]


def test_an_argument_with_a_default_is_passed_when_the_spec_has_it() -> None:
    got: list[tuple[int, str]] = []

    class Defaults:
        @hookimpl
        def treedrive_gossip_extra(self, node: Any, message_type: str = "?") -> None:
            got.append((1, message_type))

    pm = make_plugin_manager(load_entry_points=False)
    pm.register(Defaults())
    Plugins(pm).gossip_extra(None, "GOSSIP_REPLY")
    # pluggy's own call gives the same argument.
    pm.hook.treedrive_gossip_extra(node=None, message_type="GOSSIP_REPLY")
    assert got == [(1, "GOSSIP_REPLY"), (1, "GOSSIP_REPLY")]


def test_an_implementation_with_more_arguments_than_the_spec_is_refused() -> None:
    class TooMany:
        @hookimpl
        def treedrive_on_event(self, node: Any, event: Any, extra: Any) -> None: ...

    pm = make_plugin_manager(load_entry_points=False)
    with pytest.raises(pluggy.PluginValidationError, match="extra"):
        pm.register(TooMany(), name="too-many")
    assert pm.get_plugin("too-many") is None


def test_a_policy_answer_of_the_wrong_type_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    class Wrong:
        @hookimpl
        def treedrive_select_downloads(self) -> str:
            return "not-a-list"  # a str is a sequence of str, but not of file ids

        @hookimpl
        def treedrive_order_holders(self) -> list[str]:
            return ["not", "peers"]

        @hookimpl
        def treedrive_accept_file(self) -> str:
            return "no"

        @hookimpl
        def treedrive_gossip_extra(self) -> list[int]:
            return [1]

    pm = make_plugin_manager(load_entry_points=False)
    pm.register(Wrong(), name="wrong")
    plugins = Plugins(pm)
    cands = [entry(1, 100, 1)]
    caplog.set_level(logging.ERROR)
    # The defaults answer instead.
    assert plugins.select_downloads(None, cands, 3) == [cands[0].meta.file_id]
    assert plugins.order_holders(None, cands[0], []) == []
    assert plugins.accept_file(None, cands[0].meta, None) is True
    assert plugins.gossip_extra(None, "GOSSIP") == {}
    for hook, what in [
        ("treedrive_select_downloads", "str"),
        ("treedrive_order_holders", "list"),
        ("treedrive_accept_file", "str"),
        ("treedrive_gossip_extra", "list"),
    ]:
        assert f"plugin 'wrong' returned {what} from {hook}" in caplog.text, hook


async def test_a_notification_awaitable_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    finished: list[str] = []

    class Slow:
        @hookimpl
        async def treedrive_startup(self) -> None:
            await asyncio.sleep(60)

    class Quick:
        @hookimpl
        async def treedrive_startup(self) -> None:
            finished.append("quick")

    pm = make_plugin_manager(load_entry_points=False)
    pm.register(Quick(), name="quick")
    pm.register(Slow(), name="slow")  # registered last: called (and awaited) first
    caplog.set_level(logging.ERROR)
    await asyncio.wait_for(Plugins(pm).startup(None, within=0.05), 5)
    assert finished == ["quick"]
    assert "plugin 'slow' failed in treedrive_startup" in caplog.text


# -- the rarest selector, through the hook --------------------------------------------------------
@needs_rarest
def test_rarest_orders_by_holders_then_newest_then_id() -> None:
    import treedrive_rarest

    common_new = entry(1, 900, 3)
    rare_old = entry(2, 100, 1)
    rare_new = entry(3, 200, 1)
    two = entry(4, 800, 2)
    tie_a, tie_b = entry(5, 500, 2), entry(6, 500, 2)
    cands = [common_new, rare_old, rare_new, two, tie_a, tie_b]
    ids = treedrive_rarest.treedrive_select_downloads(node=None, candidates=cands, limit=10)
    ties = sorted([tie_a.meta.file_id, tie_b.meta.file_id])
    assert ids == [
        rare_new.meta.file_id,
        rare_old.meta.file_id,
        two.meta.file_id,
        *ties,
        common_new.meta.file_id,
    ]
    assert treedrive_rarest.treedrive_select_downloads(node=None, candidates=cands, limit=2) == [
        rare_new.meta.file_id,
        rare_old.meta.file_id,
    ]
    assert treedrive_rarest.treedrive_select_downloads(node=None, candidates=[], limit=3) is None
    assert treedrive_rarest.treedrive_select_downloads(node=None, candidates=cands, limit=0) == []


@needs_rarest
def test_rarest_overrides_the_default_selector() -> None:
    import treedrive_rarest

    # Newest first, as the node hands them over; the newest are the most common.
    cands = [entry(1, 400, 3), entry(2, 300, 3), entry(3, 200, 1), entry(4, 100, 2)]
    without = Plugins(make_plugin_manager(load_entry_points=False))
    pm = make_plugin_manager(load_entry_points=False)
    pm.register(treedrive_rarest, name="rarest")
    with_rarest = Plugins(pm)
    assert without.select_downloads(None, cands, 2) == [
        cands[0].meta.file_id,
        cands[1].meta.file_id,
    ]
    assert with_rarest.select_downloads(None, cands, 2) == [
        cands[2].meta.file_id,
        cands[3].meta.file_id,
    ]


# -- the rarest selector, through a real joining node ---------------------------------------------
def seed(node: Node, data: bytes, ts: int, owner: str, name: str) -> FileMeta:
    """Put a file into a running holder's store as if it had it all along."""
    file_id = compute_file_id(data, ts)
    meta = FileMeta(file_id, name, len(data) / MEGABYTE, owner, ts)
    with node.store.blobs.writer() as w:
        w.write(data)
        w.commit(file_id, ts)
    with node.transaction() as uow:
        uow.files.mark_local(meta, len(data), 1.0)
        uow.commit()
    return meta


JOIN_DELAY = 6.0


@needs_rarest
@pytest.mark.parametrize("with_rarest", [True, False], ids=["rarest", "default"])
async def test_joining_node_fetches_rarest_files_with_the_plugin(
    start_node: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    wait_for_peers: Callable[..., Any],
    with_rarest: bool,
) -> None:
    if with_rarest:
        monkeypatch.delenv(BLOCK_ENV, raising=False)
    else:
        monkeypatch.setenv(BLOCK_ENV, "rarest")
    # Three holders that never fetch anything themselves.
    h1 = await start_node("h1", download_limit=0)
    h2 = await start_node("h2", download_limit=0, bootstrap=(address(h1),))
    h3 = await start_node("h3", download_limit=0, bootstrap=(address(h1),))
    holders = (h1, h2, h3)
    await wait_for_peers(h1, {"h2", "h3"})
    # The newest files are held by all three; each older one by one holder only.
    common = []
    for i in range(3):
        for h in holders:
            meta = seed(h, f"common {i}".encode(), 3000 + i, "h1", f"common{i}")
        common.append(meta)
    rare = [
        seed(h, f"rare {i}".encode(), 1000 + i, h.peer_id, f"rare{i}")
        for i, h in enumerate(holders)
    ]
    # The joiner chooses once its join delay is over: by then it must have heard from every
    # holder (two rounds of gossip, about 0.6 s on a quiet machine), on a busy one too, where
    # the event loop of all four nodes may stall for seconds.
    joiner = await start_node("joiner", join_delay=JOIN_DELAY, bootstrap=(address(h1),))
    assert (joiner.plugins.pm.get_plugin("rarest") is not None) is with_rarest
    await asyncio.wait_for(joiner.joined.wait(), JOIN_DELAY + 60)
    got = {e.meta.file_id for e in joiner.files("local")}
    expected = rare if with_rarest else common
    assert got == {m.file_id for m in expected}
    # It saw every file with the right number of holders before choosing.
    holders_of = {e.meta.file_id: len(e.holders) for e in joiner.files("remote")}
    others = common if with_rarest else rare
    assert set(holders_of) == {m.file_id for m in others}
    for m in others:
        assert holders_of[m.file_id] == (3 if m in common else 1)


@pytest.fixture
def wait_for_peers() -> Callable[..., Any]:
    from tests.conftest import wait_for

    async def wait(node: Node, peer_ids: set[str]) -> None:
        await wait_for(lambda: peer_ids <= {p.peer_id for p in node.peers()}, timeout=10)

    return wait


# -- the CLI --------------------------------------------------------------------------------------
@needs_rarest
def test_plugins_command_lists_rarest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BLOCK_ENV, raising=False)
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("rarest  (treedrive-rarest ") for line in lines), result.output
    assert "treedrive.defaults  (built-in)" in lines


@needs_rarest
def test_plugins_command_hides_a_blocked_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BLOCK_ENV, "rarest")
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    assert "rarest" not in result.output
    assert "treedrive.defaults" in result.output


def test_rarest_package_is_declared() -> None:
    """The example plugin declares the entry point the brief names (hatchling, group treedrive)."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "plugins/treedrive-rarest/pyproject.toml").read_text())
    assert project["build-system"]["build-backend"] == "hatchling.build"
    assert project["project"]["entry-points"]["treedrive"] == {"rarest": "treedrive_rarest"}
    assert any(d.startswith("treedrive") for d in project["project"]["dependencies"])
