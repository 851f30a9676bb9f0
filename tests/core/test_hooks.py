"""Every hook, through a real node where it needs one (a real store in tmp_path, the recording
stand-in for the transport), and datasette's two meta-tests: every hook has a test here
(``test_hook_<name>``) and a section in ``docs/plugins.md``."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import treedrive.cli
from tests.core.harness import Harness, file_of, gossip, reply, serving
from treedrive.core import hookspecs
from treedrive.core.events import Event, FileAdvertised, FileRefused, Notice, PeerSeen
from treedrive.core.hookspecs import hookimpl
from treedrive.core.messages import Extension, FileData, GossipReply
from treedrive.core.model import CatalogEntry, FileMeta, PeerInfo
from treedrive.core.node import Node
from treedrive.core.plugins import make_plugin_manager
from treedrive.core.ports import FileSink

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "treedrive_"


def hook_names() -> list[str]:
    """Every hook in hookspecs.py, without the ``treedrive_`` prefix."""
    return sorted(
        name.removeprefix(PREFIX)
        for name, fn in vars(hookspecs).items()
        if name.startswith(PREFIX) and callable(fn)
    )


# -- the meta-tests -------------------------------------------------------------------------------
def test_the_hooks_are_found() -> None:
    assert {"on_event", "select_downloads", "cli_commands"} <= set(hook_names())


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_has_a_test(hook: str) -> None:
    tests = "\n".join(p.read_text() for p in sorted((ROOT / "tests/core").glob("test_*.py")))
    assert re.search(rf"^(async )?def test_hook_{hook}\(", tests, re.MULTILINE), hook


def documented() -> list[str]:
    text = (ROOT / "docs/plugins.md").read_text()
    return re.findall(rf"^### `{PREFIX}(\w+)\(", text, re.MULTILINE)


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_is_documented(hook: str) -> None:
    assert hook in documented(), f"docs/plugins.md has no section for {PREFIX}{hook}"


def test_the_docs_name_only_hooks_that_exist() -> None:
    assert sorted(documented()) == hook_names()


# -- lifecycle and notifications ------------------------------------------------------------------
async def test_hook_startup(make_harness: Callable[..., Harness]) -> None:
    seen: list[tuple[str, Any]] = []

    class Starts:
        @hookimpl
        async def treedrive_startup(self, node: Node) -> None:
            await asyncio.sleep(0.01)
            seen.append(("async", node.port))  # the node is listening already

    class Few:
        @hookimpl
        def treedrive_startup(self) -> None:
            seen.append(("sync", None))

    h = make_harness(Few(), Starts())
    await h.node.start()
    try:
        assert seen == [("async", 7000), ("sync", None)]  # awaited before start() returned
        assert h.net.started
    finally:
        await h.node.stop()


async def test_hook_shutdown(make_harness: Callable[..., Harness]) -> None:
    seen: list[bool] = []

    class Stops:
        @hookimpl
        async def treedrive_shutdown(self, node: Node) -> None:
            await asyncio.sleep(0.01)
            seen.append(h.net.closed)

    h = make_harness(Stops())
    await h.node.start()
    await h.node.stop()
    # Awaited before stop() returned, and before the transport closed.
    assert seen == [False]
    assert h.net.closed


async def test_hook_on_event(make_harness: Callable[..., Harness]) -> None:
    seen: list[tuple[str, bool]] = []

    class Watches:
        @hookimpl
        async def treedrive_on_event(self, node: Node, event: Event) -> None:
            if isinstance(event, PeerSeen):
                # After the commit: a fresh transaction sees the peer.
                seen.append((event.peer.peer_id, event.peer in node.peers()))

    h = make_harness(Watches())
    await h.node.handle_message(gossip("alice", 7001), "src")
    await h.settle()  # an awaitable runs as a task of its own
    assert seen == [("alice", True)]
    # Transient notices never come here.
    await h.receive(file_of(b"claimed"), b"actual")
    await h.settle()
    assert all(isinstance(e, Event) for e in h.recorder.events)
    assert not any(isinstance(e, FileRefused) for e in h.recorder.events)


async def test_hook_on_notice(make_harness: Callable[..., Harness]) -> None:
    seen: list[tuple[Notice, bool]] = []

    class Notices:
        @hookimpl
        async def treedrive_on_notice(self, node: Node, notice: Notice) -> None:
            if isinstance(notice, FileRefused):
                seen.append((notice, node.file(notice.file_id) is None))

    h = make_harness(Notices())
    meta = file_of(b"claimed")
    await h.receive(meta, b"actual", source="10.0.0.9:4000")
    await h.settle()
    # Told at once, with nothing stored behind it.
    [(refused, nothing_stored)] = seen
    assert (refused.file_id, refused.peer_id) == (meta.file_id, "10.0.0.9:4000")
    assert "match" in refused.reason
    assert nothing_stored
    assert h.recorder.notices == [refused]
    assert h.recorder.events == []


# -- policy ---------------------------------------------------------------------------------------
def serving_each(files: Mapping[str, tuple[FileMeta, bytes]]) -> Callable[[str, FileSink], Any]:
    def serve(file_id: str, sink: FileSink) -> FileData:
        meta, data = files[file_id]
        sink.write(data)
        return FileData(meta)

    return serve


async def test_hook_select_downloads(make_harness: Callable[..., Harness]) -> None:
    asked: list[tuple[list[str], int]] = []

    class Oldest:
        @hookimpl
        def treedrive_select_downloads(
            self, candidates: Sequence[CatalogEntry], limit: int
        ) -> list[str]:
            asked.append(([c.meta.file_id for c in candidates], limit))
            oldest = sorted(candidates, key=lambda c: c.meta.file_timestamp)
            return [c.meta.file_id for c in oldest[:1]]

    h = make_harness(Oldest(), download_limit=2)
    h.add_peer("bob", 7002)
    files = {}
    for i in range(3):
        data = f"file {i}".encode()
        meta = file_of(data, ts=1_700_000_000 + i, name=f"f{i}")
        files[meta.file_id] = (meta, data)
        h.advertise(meta, "bob")
    ghost = file_of(b"held by nobody tracked")
    h.advertise(ghost, "ghost")
    h.net.holders[("127.0.0.1", 7002)] = serving_each(files)
    oldest = min(files, key=lambda i: files[i][0].file_timestamp)

    assert await h.node.fetch_selected() == [oldest]
    assert h.local_ids() == {oldest}
    # The candidates: what it can fetch (a tracked holder), not what it cannot.
    [(candidates, limit)] = asked
    assert set(candidates) == set(files)
    assert limit == 2


async def test_no_download_limit_fetches_nothing_and_asks_no_selector(
    make_harness: Callable[..., Harness],
) -> None:
    asked: list[int] = []

    class Everything:
        @hookimpl
        def treedrive_select_downloads(
            self, candidates: Sequence[CatalogEntry], limit: int
        ) -> list[str]:
            asked.append(limit)
            return [c.meta.file_id for c in candidates]

    h = make_harness(Everything(), download_limit=0)
    h.add_peer("bob", 7002)
    data = b"not wanted"
    meta = file_of(data)
    h.advertise(meta, "bob")
    h.net.holders[("127.0.0.1", 7002)] = serving_each({meta.file_id: (meta, data)})

    assert await h.node.fetch_selected() == []
    assert h.local_ids() == set()
    assert asked == []


async def test_hook_order_holders(make_harness: Callable[..., Harness]) -> None:
    class SlowestFirst:
        @hookimpl
        def treedrive_order_holders(self, holders: Sequence[PeerInfo]) -> list[PeerInfo]:
            return sorted(holders, key=lambda p: p.last_seen)

    data = b"wanted"
    meta = file_of(data)
    for plugins, first_port in (((), 7001), ((SlowestFirst(),), 7002)):
        h = make_harness(*plugins, name=f"node-{first_port}")
        h.add_peer("recent", 7001, last_seen=2000.0)
        h.add_peer("old", 7002, last_seen=1000.0)
        h.advertise(meta, "recent", "old")
        for port in (7001, 7002):
            h.net.holders[("127.0.0.1", port)] = serving(meta, data)
        assert (await h.node.get(meta.file_id)).has_copy
        # The default asks the most recently seen first; the plugin the other way round.
        assert [port for _, port, _ in h.net.fetches] == [first_port]


async def test_hook_accept_file(make_harness: Callable[..., Harness]) -> None:
    class NoExecutables:
        @hookimpl
        def treedrive_accept_file(self, meta: FileMeta) -> bool | None:
            return False if meta.file_name.endswith(".exe") else None

    class Outcome:
        def update(self, done: int) -> None: ...

        def finish(self, ok: bool, error: str | None = None) -> None:
            self.result = (ok, error)

    h = make_harness(NoExecutables())
    exe, txt = file_of(b"MZ...", name="setup.exe"), file_of(b"text", name="a.txt")
    for meta, data in ((exe, b"MZ..."), (txt, b"text")):
        sink = h.node.open_sink()
        sink.write(data)
        outcome = Outcome()
        await h.node.handle_pushed_file(FileData(meta), sink, "src", outcome)
        assert outcome.result == ((False, "refused by policy") if meta is exe else (True, None))
    # None let the default (accept) decide for the text file.
    assert h.local_ids() == {txt.file_id}
    assert h.partials() == []


# -- gossip extension -----------------------------------------------------------------------------
async def test_hook_gossip_extra(make_harness: Callable[..., Harness]) -> None:
    class Extra:
        @hookimpl
        def treedrive_gossip_extra(self, message_type: str) -> dict[str, Any]:
            return {"x_type": message_type}

    h = make_harness(Extra())
    g = h.node.new_gossip()
    assert g.extra == {"x_type": "GOSSIP"}
    # the extension is the node's own, signed (PROTOCOL.md 2.7)
    assert g.extension is not None
    assert g.extension.proof is not None
    assert replace(g.extension, proof=None) == Extension(h.node.features)
    await h.node.handle_message(gossip("alice", 7001), "src")
    await h.settle()
    [(_, _, answer)] = h.net.messages(GossipReply)
    assert answer.extra == {"x_type": "GOSSIP_REPLY"}
    assert answer.extension is not None
    assert answer.extension.proof is not None
    assert replace(answer.extension, proof=None) == Extension(h.node.features)


async def test_hook_gossip_received(make_harness: Callable[..., Harness]) -> None:
    got: list[tuple[str, str, dict[str, Any]]] = []

    class Received:
        @hookimpl
        async def treedrive_gossip_received(
            self, message_type: str, peer_id: str, extra: Mapping[str, Any]
        ) -> None:
            got.append((message_type, peer_id, dict(extra)))

    h = make_harness(Received())
    td = Extension()
    g = replace(gossip("alice", 7001, x_color="red"), extension=td)
    await h.node.handle_message(g, "src")
    await h.node.handle_message(reply("bob", 7002, x_size=3), "src")
    await h.node.handle_message(replace(reply("carol", 7003), extension=td), "src")  # none
    await h.settle()  # an awaitable runs as a task of its own
    assert got == [("GOSSIP", "alice", {"x_color": "red"}), ("GOSSIP_REPLY", "bob", {"x_size": 3})]
    assert h.recorder.of(FileAdvertised) == []


# -- registration ---------------------------------------------------------------------------------
def test_hook_cli_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    @click.command()
    def hello() -> None:
        """Say hello."""
        click.echo("hello from a plugin")

    @click.command(name="run")
    def shadow() -> None:
        click.echo("not the real run")

    class Commands:
        @hookimpl
        def treedrive_cli_commands(self) -> list[Any]:
            return [hello, shadow, "not a command"]

    def factory(**kwargs: Any) -> Any:
        pm = make_plugin_manager(load_entry_points=False)
        pm.register(Commands(), name="commands")
        return pm

    monkeypatch.setattr(treedrive.cli, "make_plugin_manager", factory)
    monkeypatch.setattr(treedrive.cli.cli, "_plugin_commands", None)
    runner = CliRunner()
    result = runner.invoke(treedrive.cli.cli, ["hello"])
    assert result.exit_code == 0, result.output
    assert result.output == "hello from a plugin\n"
    listing = runner.invoke(treedrive.cli.cli, ["--help"])
    assert "hello" in listing.output
    assert "Say hello." in listing.output
    # A built-in command keeps its name.
    result = runner.invoke(treedrive.cli.cli, ["run", "--help"])
    assert result.exit_code == 0, result.output
    assert "not the real run" not in result.output
    assert "--peer-id" in result.output
