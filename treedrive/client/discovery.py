"""Finding a running node: from its data dir (``node.json`` says where it listens and that its
process is alive, ``api-token`` is its token) or from an address. Every way of not finding it is
a :class:`NodeNotRunning` or :class:`BadNodeAddress` whose message says where it looked and what
to do."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from treedrive.client.errors import BadNodeAddress, NodeNotRunning
from treedrive.core.config import default_data_root

RUN_FILE = "node.json"
TOKEN_FILE = "api-token"  # noqa: S105 (a file name, not a secret)


def node_url(given: str) -> str:
    """A node's address as a URL: ``http://host:port/``, ``https://…``, or ``host:port``
    (http assumed). Anything else: :class:`BadNodeAddress`."""
    text = given.strip()
    if "://" not in text:
        # host:port without a scheme; a bare word ("nonsense") is no address.
        host, sep, digits = text.rstrip("/").rpartition(":")
        if not sep or not host or not digits.isdigit():
            raise BadNodeAddress(given)
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise BadNodeAddress(given) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadNodeAddress(given)
    if port is not None and not 0 < port < 65536:
        raise BadNodeAddress(given)
    return text


def read_token(data_dir: Path) -> str | None:
    """The API token of the node of ``data_dir`` (None if it cannot be read)."""
    try:
        return (data_dir / TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    except OSError:
        return False
    return True


def run_info(data_dir: Path) -> dict[str, Any] | None:
    """What ``node.json`` in ``data_dir`` says, if a node whose process is alive wrote it."""
    try:
        info = json.loads((data_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not pid_alive(info.get("pid")):
        return None
    return info


def running_nodes(root: Path | None = None) -> list[tuple[Path, str]]:
    """The nodes running under the data root: (data dir, peer id), by folder name."""
    root = root or default_data_root()
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return []
    found = []
    for folder in folders:
        info = run_info(folder)
        if info is not None:
            found.append((folder, str(info.get("peer_id") or folder.name)))
    return found


def how_to_reach(data_dir: Path, peer_id: str, root: Path) -> str:
    """The option that finds this node: ``--peer-id`` when it lives in the default place."""
    if data_dir == root / peer_id:
        return f"--peer-id {peer_id}"
    return f"--data-dir {data_dir}"


def shown(path: Path) -> str:
    """``path`` with the home folder as ``~``."""
    home = Path.home()
    try:
        return "~/" + str(path.relative_to(home))
    except ValueError:
        return str(path)


def not_running(base: Path, gone: bool) -> str:
    root = default_data_root()
    others = [(d, p) for d, p in running_nodes(root) if d != base]
    where = f"no node is running on {shown(base)}"
    if gone:
        where += " (the node that wrote its node.json has stopped)"
    if others:
        listed = ", ".join(f"{p} ({how_to_reach(d, p, root)})" for d, p in others)
        return f"{where}; running: {listed}"
    return (
        f"{where}, nor under {shown(root)} (start one with 'treedrive run', "
        "or give --data-dir, --peer-id or --node)"
    )


def locate(
    data_dir: Path | None = None,
    peer_id: str | None = None,
    url: str | None = None,
    token: str | None = None,
) -> tuple[str, str | None]:
    """The URL and token of a node: ``url`` if given (its token: ``token``, else the one in
    ``data_dir``), else the node running on ``data_dir`` (default: the data root's folder for
    ``peer_id``, ``default`` without one)."""
    if url is not None:
        if token is None and data_dir is not None:
            token = read_token(data_dir)
        return node_url(url), token
    base = data_dir or default_data_root() / (peer_id or "default")
    try:
        written = json.loads((base / RUN_FILE).read_text())
    except (OSError, ValueError):
        raise NodeNotRunning(not_running(base, gone=False)) from None
    info = run_info(base)
    if info is None:
        raise NodeNotRunning(not_running(base, gone=isinstance(written, dict)))
    if not info.get("http"):
        raise NodeNotRunning(
            f"the node on {shown(base)} runs without its web API (start it with --http-port)"
        )
    return str(info["http"]), token or read_token(base)
