"""The seed's interactive shell: ``list``, ``peers``, ``get``, ``push``, ``delete``, ``ls``,
``help``, ``exit`` (case-sensitive). :meth:`Shell.execute` runs one line and returns its output,
so it is tested without a terminal. Peer ids, hosts, names and owners come from strangers: every
table cell, and every line the shell prints, has its control characters escaped."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from treedrive.core.errors import NodeError
from treedrive.core.model import CatalogEntry
from treedrive.core.names import safe_name
from treedrive.core.text import printable, printable_lines

if TYPE_CHECKING:
    from treedrive.core.node import Node

HELP = """\
Commands:
  list [local|remote|both]   files in the catalogue (default: both)
  peers                      tracked peers
  get <file_id>              fetch a file from a peer that holds it
  push <filepath>            add a file to the network
  delete <file_id>           delete a file you own, everywhere
  ls                         files held in this node's storage
  help                       this text
  exit                       stop the node"""


class ExitShell(Exception):
    pass


def human_size(n: int | float | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def entry_size(entry: CatalogEntry) -> str:
    if entry.size_bytes is not None:
        return human_size(entry.size_bytes)
    return human_size(entry.meta.file_size * 1024 * 1024)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; every cell shown with its control characters
    escaped (a peer id with an ESC in it is printed as ``\\x1b``, never sent raw)."""
    headers = [printable(h) for h in headers]
    rows = [[printable(c) for c in r] for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


class Shell:
    def __init__(self, node: Node) -> None:
        self.node = node

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
            if cmd == "help":
                return HELP
            if cmd == "exit":
                raise ExitShell
            if cmd in ("get", "push", "delete") and not arg:
                return f"usage: {cmd} <{'filepath' if cmd == 'push' else 'file_id'}>"
            if cmd == "get":
                entry = await self.node.get(arg)
                return f"got {safe_name(entry.meta.file_name)} ({entry_size(entry)})"
            if cmd == "push":
                meta = await self.node.push(Path(os.path.expanduser(arg)))  # noqa: ASYNC240 (no I/O)
                return f"pushed {meta.file_name} as {meta.file_id}"
            if cmd == "delete":
                await self.node.delete(arg)
                return f"deleted {arg}"
        except NodeError as exc:
            return f"error: {exc}"
        return f"unknown command {cmd!r}; type 'help'"

    def _list(self, scope: str) -> str:
        if scope not in ("local", "remote", "both"):
            return "usage: list [local|remote|both]"
        entries = self.node.files(scope)
        if not entries:
            return f"no {scope if scope != 'both' else ''} files".replace("  ", " ")
        rows = [
            [
                e.meta.file_id,
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
        rows = [[safe_name(e.meta.file_name), entry_size(e), e.meta.file_id] for e in entries]
        return table(["name", "size", "file_id"], rows)
