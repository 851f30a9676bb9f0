"""The shell's commands through :meth:`Shell.execute` on real in-process nodes (real sockets on
loopback, real SQLite files): short ids in tables, id prefixes, ``get`` to a path, a file already
here, push dedup, and ``get`` in the background with its progress."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import address, wait_for
from treedrive.core.model import FileMeta
from treedrive.core.node import Node
from treedrive.shell import HELP, Shell

Start = Callable[..., Any]


def write(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


async def alice_shares(start_node: Start, src: Path | None, **bob: Any) -> tuple[Node, Node, str]:
    """alice pushes ``src`` (while alone: nobody gets a copy), then bob joins through her and
    lists it; he fetches nothing by himself on join. (alice, bob, the file's full id)."""
    alice = await start_node("alice")
    file_id = (await alice.push(src)).file_id if src is not None else ""
    bob_node = await start_node("bob", bootstrap=(address(alice),), download_limit=0, **bob)
    await wait_for(lambda: bob_node.peers() and alice.peers())
    if src is not None:
        await wait_for(lambda: bob_node.file(file_id) is not None)
        entry = bob_node.file(file_id)
        assert entry is not None
        assert not entry.has_copy
    return alice, bob_node, file_id


async def test_tables_show_short_ids_and_commands_take_prefixes(
    start_node: Start, tmp_path: Path
) -> None:
    alice = await start_node("alice")
    sh = Shell(alice)
    out = await sh.execute(f"push {write(tmp_path / 'notes.txt', 3000)}")
    assert out.startswith("pushed notes.txt as "), out
    file_id = out.rsplit(" ", 1)[-1]
    assert re.fullmatch(r"[0-9a-f]{64}", file_id)

    for command in ("list", "list local", "ls"):
        table = await sh.execute(command)
        assert file_id[:12] in table, table
        assert file_id not in table, f"{command} shows the whole id"

    assert await sh.execute(f"get {file_id[:8]}") == (
        f"notes.txt is already here; `get {file_id[:12]} <path>` saves a copy"
    )
    assert (await sh.execute(f"get {file_id[:7]}")).startswith("error: ")  # too short
    assert (await sh.execute("get 00000000")).startswith("error: no file id starts with")
    assert (await sh.execute("get nothex!!")).startswith("error: ")

    assert (
        await sh.execute(f"delete {file_id[:10].upper()}") == f"deleted notes.txt ({file_id[:12]})"
    )
    assert await sh.execute("ls") == "storage is empty"
    assert (await sh.execute(f"delete {file_id}")).startswith("error: ")


async def test_an_ambiguous_prefix_is_an_error(start_node: Start, tmp_path: Path) -> None:
    alice = await start_node("alice")
    sh = Shell(alice)
    file_id = (await alice.push(write(tmp_path / "f.bin", 100))).file_id
    # no two random ids share 8 characters: a record made to share the pushed file's first 10
    twin = file_id[:10] + ("0" if file_id[10] != "0" else "1") + "0" * 53
    plant(alice, FileMeta(twin, "twin.bin", 0.1, "carol", 1))
    out = await sh.execute(f"get {file_id[:8]}")
    assert out.startswith("error: "), out
    assert file_id[:12] in out
    assert twin[:12] in out
    assert "type more of it" in out
    assert (await sh.execute(f"delete {file_id[:10]}")).startswith("error: ")
    assert alice.file(file_id) is not None  # nothing was deleted
    # one more character than the twin shares makes it unique again
    assert "already here" in await sh.execute(f"get {file_id[:11]}")


def plant(node: Node, meta: FileMeta, holder: str | None = None) -> None:
    """A catalogue record (and a holder) put straight into a node's store."""
    with node.store.unit_of_work() as uow:
        uow.files.merge(meta, 0.0)
        if holder is not None:
            uow.files.add_holder(meta.file_id, holder, 0.0)
        uow.commit()


async def test_get_fetches_and_saves_a_copy_where_the_user_says(
    start_node: Start, tmp_path: Path
) -> None:
    src = write(tmp_path / "report.pdf", 200_000)
    _, bob, file_id = await alice_shares(start_node, src)
    sh = Shell(bob)  # no terminal: get answers once the file is here

    out_dir = tmp_path / "downloads"
    out_dir.mkdir()
    out = await sh.execute(f"get {file_id[:12]} {out_dir}")
    assert out.startswith("got report.pdf (195.3 KiB) in "), out
    assert out.endswith(f"; saved to {out_dir / 'report.pdf'}")
    assert (out_dir / "report.pdf").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in out_dir.iterdir()) == ["report.pdf"]  # no temp file left

    # already here: a path saves another copy (a file name this time), nothing is fetched
    out = await sh.execute(f"get {file_id[:8]} {out_dir / 'copy.pdf'}")
    assert out == f"saved report.pdf (195.3 KiB) to {out_dir / 'copy.pdf'}"
    assert (out_dir / "copy.pdf").read_bytes() == src.read_bytes()
    assert "already here" in await sh.execute(f"get {file_id[:8]}")

    # a folder that does not exist: one line, nothing written
    out = await sh.execute(f"get {file_id[:8]} {tmp_path / 'missing' / 'x.pdf'}")
    assert out.startswith(f"error: no folder {tmp_path / 'missing'}"), out
    assert not (tmp_path / "missing").exists()

    # a relative path is where the user is (the node's working directory)
    os.chdir(out_dir)
    try:
        out = await sh.execute(f"get {file_id[:8]} rel.pdf")
    finally:
        os.chdir(tmp_path)
    assert (out_dir / "rel.pdf").read_bytes() == src.read_bytes(), out


async def test_push_of_content_already_shared_says_so(start_node: Start, tmp_path: Path) -> None:
    alice = await start_node("alice")
    sh = Shell(alice)
    src = write(tmp_path / "a.bin", 5000)
    first = (await sh.execute(f"push {src}")).rsplit(" ", 1)[-1]
    copy = tmp_path / "same bytes.bin"
    copy.write_bytes(src.read_bytes())
    out = await sh.execute(f"push '{copy}'")
    assert out.startswith(f"same bytes.bin is already shared as {first[:12]} (a.bin)"), out
    assert "--force" in out
    assert len(alice.files("local")) == 1

    second = int(time.time())
    out = await sh.execute(f'push "{copy}" --force')
    if int(time.time()) == second:  # the id has the second in it: the same bytes, the same id
        assert out.endswith("pushed within the same second get the same id"), out
        await wait_for(lambda: int(time.time()) > second)
        out = await sh.execute(f'push "{copy}" --force')
    assert out.startswith("pushed same bytes.bin as "), out
    assert out.rsplit(" ", 1)[-1] != first
    assert len(alice.files("local")) == 2
    assert (await sh.execute("push")).startswith("usage: push <filepath> [--force]")
    assert (await sh.execute(f"push {tmp_path / 'nope.bin'}")).startswith("error: cannot read")


async def test_get_in_the_background_reports_progress_and_the_end(
    start_node: Start, tmp_path: Path
) -> None:
    # 1 MiB/s for bob's downloads, in 256 KiB chunks: 2 MiB take long enough to be seen
    src = write(tmp_path / "big.bin", 2 * 1024 * 1024)
    _, bob, file_id = await alice_shares(
        start_node, src, max_download_rate=1024 * 1024, chunk_size=256 * 1024
    )
    said: list[str] = []
    sh = Shell(bob, background=True, say=said.append, progress_every=0.1)

    assert await sh.execute(f"get {file_id[:8]}") == "fetching big.bin (2.0 MiB) from 1 peer…"
    # the shell takes other commands meanwhile
    assert "alice" in await sh.execute("peers")
    assert "already being fetched" in await sh.execute(f"get {file_id[:8]}")
    shown = await wait_for_async(lambda: sh.execute("transfers"), "get big.bin from alice")
    assert "MiB" in shown
    await wait_for(lambda: any(s.startswith("got big.bin") for s in said), timeout=20)
    progress = [s for s in said if s.startswith("get big.bin")]
    assert progress, said  # progress lines came while it ran
    shape = re.compile(r"get big\.bin  \d+(\.\d)? (B|KiB|MiB) / 2\.0 MiB  [\d.]+ \S+/s( |$)")
    assert all(shape.match(line) for line in progress), progress
    assert any(re.search(r"\d+\.\d (KiB|MiB) / ", line) for line in progress), (
        progress
    )  # bytes came
    assert re.fullmatch(r"got big\.bin \(2\.0 MiB\) in \d+ s", said[-1]), said
    assert bob.store.blobs.path(file_id).read_bytes() == src.read_bytes()
    # the row goes once the transfer's end is handled, a moment after "got" on a busy machine
    assert await wait_for_async(lambda: sh.execute("transfers"), "no transfers") == "no transfers"
    assert not sh.fetching


async def test_a_background_get_that_fails_says_why(start_node: Start) -> None:
    _, bob, _ = await alice_shares(start_node, None)
    plant(bob, FileMeta("ab" * 32, "ghost.bin", 0.001, "alice", 1), holder="alice")
    said: list[str] = []
    sh = Shell(bob, background=True, say=said.append)
    assert await sh.execute("get abababab") == "fetching ghost.bin (1.0 KiB) from 1 peer…"
    await wait_for(lambda: said, timeout=20)
    assert said[0].startswith("get ghost.bin failed: "), said
    entry = bob.file("ab" * 32)
    assert entry is None or not entry.has_copy


async def test_help_names_every_command() -> None:
    for command in ("list", "peers", "get <file_id> [path]", "push <filepath> [--force]"):
        assert command in HELP
    for command in ("delete", "ls", "transfers", "help", "exit"):
        assert f"  {command}" in HELP


async def wait_for_async(make: Callable[[], Any], needle: str, timeout: float = 10.0) -> str:
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while True:
        out: str = await make()
        if needle in out:
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} never shown; last: {out!r}")
        await asyncio.sleep(0.05)
