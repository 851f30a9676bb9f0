"""The seed's interactive shell: ``list``, ``peers``, ``get``, ``push``, ``delete``, ``ls``,
``help``, ``exit`` (case-sensitive), and ``transfers``. :meth:`Shell.execute` runs one line and
returns its output, so it is tested without a terminal. Peer ids, hosts, names and owners come
from strangers: every table cell, and every line the shell prints, has its control characters
escaped.

Tables show short ids (the first 12 hex characters); ``get`` and ``delete`` take any unique prefix
of 8 or more. In a terminal (``background=True``) a ``get`` runs in the background: the shell
says at once what it fetches, prints progress every few seconds and a line when it is done
(through ``say``, which prints above the prompt), and takes other commands meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from treedrive.core.errors import NodeError
from treedrive.core.ids import short_id
from treedrive.core.model import CatalogEntry
from treedrive.core.names import safe_name
from treedrive.core.text import human_size, printable_lines, table
from treedrive.web.progress import human_duration, progress_line

if TYPE_CHECKING:
    from treedrive.core.node import Node

__all__ = ["HELP", "ExitShell", "Shell", "entry_size", "human_size", "table"]

HELP = """\
Commands:
  list [local|remote|both]   files in the catalogue (default: both)
  peers                      tracked peers
  get <file_id> [path]       fetch a file from the peers that hold it; with a path (a file or
                             a folder), also save a copy there
  push <filepath> [--force]  add a file to the network (--force: even if already shared)
  delete <file_id>           delete a file you own, everywhere
  ls                         files held in this node's storage
  transfers                  transfers in progress
  help                       this text
  exit                       stop the node (Ctrl-D too)
A file_id may be shortened to its first 8 or more characters, as long as it stays unique."""

COMMANDS = ("list", "peers", "get", "push", "delete", "ls", "transfers", "help", "exit")

PROGRESS_EVERY = 5.0
"""Seconds between the progress lines of a background ``get``."""


class ExitShell(Exception):
    pass


def entry_size(entry: CatalogEntry) -> str:
    if entry.size_bytes is not None:
        return human_size(entry.size_bytes)
    return human_size(entry.meta.file_size * 1024 * 1024)


def words(arg: str) -> list[str]:
    """``arg`` split as a shell would (quotes, backslashes); plain spaces if it does not parse."""
    try:
        return shlex.split(arg)
    except ValueError:
        return arg.split()


def save_copy(source: Path, target: Path, name: str) -> Path:
    """Copy ``source`` to ``target`` (in it as ``name`` if it is a folder) through a temp file
    in the same folder, renamed once whole: the copy is never a partial file. Where it went."""
    if target.is_dir():
        target = target / safe_name(name)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            shutil.copyfileobj(src, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def expand(text: str) -> Path:
    """A path as the user typed it (``~`` expanded), relative to where the node was started."""
    return Path(os.path.expanduser(text))


class Shell:
    """The commands of one node's shell. ``say`` prints a line out of turn (a background
    ``get`` finishing); ``background`` runs ``get`` in the background (a terminal), else it
    answers when the file is here (a script reads the answers in order)."""

    def __init__(
        self,
        node: Node,
        *,
        background: bool = False,
        say: Callable[[str], None] | None = None,
        progress_every: float = PROGRESS_EVERY,
    ) -> None:
        self.node = node
        self.background = background
        self._say = say or (lambda text: None)
        self.progress_every = progress_every
        self.fetching: dict[str, asyncio.Task[None]] = {}
        """file id -> the background get of it."""

    def say(self, text: str) -> None:
        self._say(printable_lines(text))

    async def execute(self, line: str) -> str:
        """Run one line; its output, safe to print to a terminal."""
        return printable_lines(await self._execute(line))

    async def _execute(self, line: str) -> str:
        parts = line.split(maxsplit=1)
        if not parts:
            return ""
        cmd, arg = parts[0], (parts[1].strip() if len(parts) > 1 else "")
        try:
            if cmd == "list":
                return self._list(arg or "both")
            if cmd == "peers":
                return self._peers()
            if cmd == "ls":
                return self._ls()
            if cmd == "transfers":
                return self._transfers()
            if cmd == "help":
                return HELP
            if cmd == "exit":
                raise ExitShell
            if cmd in ("get", "push", "delete") and not arg:
                return f"usage: {USAGE[cmd]}"
            if cmd == "get":
                return await self._get(words(arg))
            if cmd == "push":
                return await self._push(words(arg))
            if cmd == "delete":
                return await self._delete(arg)
        except NodeError as exc:
            return f"error: {exc}"
        return f"unknown command {cmd!r}; type 'help'"

    # -- get ------------------------------------------------------------------------------------
    async def _get(self, args: list[str]) -> str:
        if not args:
            return f"usage: {USAGE['get']}"
        file_id = self.node.resolve_id(args[0])
        target = self._target(" ".join(args[1:])) if len(args) > 1 else None
        entry = self.node.file(file_id)
        if entry is None:
            return f"error: no file {short_id(file_id)} in the catalogue ('list' shows them)"
        name = safe_name(entry.meta.file_name)
        if entry.has_copy:
            if target is None:
                return f"{name} is already here; `get {short_id(file_id)} <path>` saves a copy"
            saved = await self._save(entry, target)
            return f"saved {name} ({entry_size(entry)}) to {saved}"
        if not self.background:
            return await self._fetch(entry, target)
        if file_id in self.fetching:
            return f"{name} is already being fetched ('transfers' shows how far)"
        task = asyncio.ensure_future(self._fetch_in_background(entry, target))
        self.fetching[file_id] = task
        task.add_done_callback(lambda _t: self.fetching.pop(file_id, None))
        holders = len(entry.holders)
        who = f"{holders} peer{'s' if holders != 1 else ''}" if holders else "the network"
        return f"fetching {name} ({entry_size(entry)}) from {who}…"

    def _target(self, text: str) -> Path:
        """Where the user asked for a copy: a file, or an existing folder (the file's name is
        added then). Relative to where the user started the node."""
        path = expand(text)
        if not path.parent.is_dir():
            raise NodeError(f"no folder {path.parent}: create it first, or give another path")
        return path.absolute()

    async def _save(self, entry: CatalogEntry, target: Path) -> Path:
        served = self.node.file_to_serve(entry.meta.file_id)
        if served is None:
            raise NodeError(f"{safe_name(entry.meta.file_name)} is no longer held here")
        try:
            return await asyncio.to_thread(save_copy, served[1], target, entry.meta.file_name)
        except OSError as exc:
            raise NodeError(f"cannot save to {target}: {exc.strerror or exc}") from exc

    async def _fetch(self, entry: CatalogEntry, target: Path | None) -> str:
        started = time.monotonic()
        got = await self.node.get(entry.meta.file_id)
        took = human_duration(time.monotonic() - started)
        said = f"got {safe_name(got.meta.file_name)} ({entry_size(got)}) in {took}"
        if target is not None:
            try:
                said += f"; saved to {await self._save(got, target)}"
            except NodeError as exc:
                said += f", but {exc}"
        return said

    async def _fetch_in_background(self, entry: CatalogEntry, target: Path | None) -> None:
        name = safe_name(entry.meta.file_name)
        progress = asyncio.ensure_future(self._report_progress(entry))
        try:
            said = await self._fetch(entry, target)
        except Exception as exc:  # NodeError says why; anything else, the node logged
            said = f"get {name} failed: {exc}"
        finally:
            progress.cancel()
        self.say(said)

    async def _report_progress(self, entry: CatalogEntry) -> None:
        while True:
            await asyncio.sleep(self.progress_every)
            line = self.progress_of(entry.meta.file_id, f"get {entry.meta.file_name}")
            if line:
                self.say(line)

    def progress_of(self, file_id: str, label: str) -> str | None:
        """One progress line for the download of ``file_id`` (None while none runs)."""
        for t in self.node.active_transfers.values():
            if t.file_id == file_id and t.direction == "in":
                return progress_line(label, t.bytes_done, t.bytes_total, t.rate, t.eta)
        return None

    def _transfers(self) -> str:
        active = sorted(self.node.active_transfers.values(), key=lambda t: t.transfer_id)
        lines = []
        for t in active:
            way = "get" if t.direction == "in" else "send"
            peer = f" {'from' if t.direction == 'in' else 'to'} {t.peer_id}" if t.peer_id else ""
            label = f"{way} {safe_name(t.file_name)}{peer}"
            lines.append(progress_line(label, t.bytes_done, t.bytes_total, t.rate, t.eta))
        running = {t.file_id for t in active}
        for file_id in self.fetching:
            if file_id not in running:
                entry = self.node.file(file_id)
                name = safe_name(entry.meta.file_name) if entry else short_id(file_id)
                lines.append(f"get {name}  starting…")
        return "\n".join(lines) or "no transfers"

    async def close(self) -> None:
        """Stop the background gets (a download resumes when the node starts again)."""
        tasks = list(self.fetching.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    # -- push, delete -----------------------------------------------------------------------------
    async def _push(self, args: list[str]) -> str:
        force = "--force" in args
        rest = [a for a in args if a != "--force"]
        if not rest:
            return f"usage: {USAGE['push']}"
        path = expand(" ".join(rest))
        pushed = await self.node.push_path(path, force=force)
        meta = pushed.meta
        if pushed.existing and force:  # the id has the second of the push in it
            return (
                f"{safe_name(path.name)} is already shared as {short_id(meta.file_id)}: the same"
                " bytes pushed within the same second get the same id"
            )
        if pushed.existing:
            return (
                f"{safe_name(path.name)} is already shared as {short_id(meta.file_id)}"
                f" ({safe_name(meta.file_name)}); `push {' '.join(rest)} --force` pushes it anew"
            )
        return f"pushed {meta.file_name} as {meta.file_id}"

    async def _delete(self, arg: str) -> str:
        file_id = self.node.resolve_id(arg)
        entry = self.node.file(file_id)
        await self.node.delete(file_id)
        name = safe_name(entry.meta.file_name) if entry is not None else "file"
        return f"deleted {name} ({short_id(file_id)})"

    # -- tables -----------------------------------------------------------------------------------
    def _list(self, scope: str) -> str:
        if scope not in ("local", "remote", "both"):
            return "usage: list [local|remote|both]"
        entries = self.node.files(scope)
        if not entries:
            return f"no {scope if scope != 'both' else ''} files".replace("  ", " ")
        rows = [
            [
                short_id(e.meta.file_id),
                safe_name(e.meta.file_name),
                entry_size(e),
                e.meta.file_owner,
                "yes" if e.has_copy else "no",
                ",".join(e.holders) or "-",
            ]
            for e in entries
        ]
        return table(["file_id", "name", "size", "owner", "local", "peers"], rows)

    def _peers(self) -> str:
        peers = self.node.peers()
        if not peers:
            return "no peers"
        now = time.time()
        rows = [
            [
                p.peer_id,
                f"{p.host}:{p.port}",
                f"{max(0, now - p.last_seen):.0f} s ago",
                "treedrive" if p.is_treedrive else "classic",
            ]
            for p in peers
        ]
        return table(["peer", "address", "last seen", "kind"], rows)

    def _ls(self) -> str:
        entries = self.node.files("local")
        if not entries:
            return "storage is empty"
        rows = [
            [safe_name(e.meta.file_name), entry_size(e), short_id(e.meta.file_id)] for e in entries
        ]
        return table(["name", "size", "file_id"], rows)


USAGE = {
    "get": "get <file_id> [path]",
    "push": "push <filepath> [--force]",
    "delete": "delete <file_id>",
}
