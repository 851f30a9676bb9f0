"""``treedrive peers``: the peers the node tracks, and ``peers forget-key PEER_ID``, which accepts
on purpose that a peer now signs with another key (``docs/protocol.md`` 2.7). Peer ids and hosts
come from strangers: what is printed for humans has its control characters escaped."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from treedrive.client import Peer
from treedrive.core.text import printable, table
from treedrive.web.options import _client, _emit, common


@click.group(invoke_without_command=True)
@common
@click.pass_context
def peers(
    ctx: click.Context,
    data_dir: Path | None,
    peer_id: str | None,
    node_url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """List the peers the node tracks; forget-key PEER_ID accepts a peer's new key."""
    ctx.obj = {"data_dir": data_dir, "peer_id": peer_id, "node_url": node_url, "token": token}
    ctx.obj["as_json"] = as_json
    if ctx.invoked_subcommand is not None:
        return None
    listed = _client(data_dir, peer_id, node_url, token).peers()
    if as_json:
        return _emit({"peers": listed})
    click.echo(_peers_table(listed, time.time()) if listed else "no peers")
    return None


@peers.command("forget-key")
@click.argument("target", metavar="PEER_ID")
@common
@click.pass_obj
def forget_key(
    given: dict[str, Any],
    target: str,
    data_dir: Path | None,
    peer_id: str | None,
    node_url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Forget the key pinned to PEER_ID, to accept on purpose that it now signs with another
    (the node refuses its messages until then); the next key it signs with is pinned."""
    client = _client(
        data_dir or given["data_dir"],
        peer_id or given["peer_id"],
        node_url or given["node_url"],
        token or given["token"],
    )
    data = client.forget_key(target)
    if as_json or given["as_json"]:
        return _emit(data)
    click.echo(printable(f"forgot the key of peer {target}: the next key it signs with is pinned"))
    return None


def _peers_table(peers: list[Peer], now: float) -> str:
    rows = [
        [
            p["peer_id"],
            f"{p['host']}:{p['port']}",
            f"{max(0, now - p['last_seen']):.0f} s ago",
            "treedrive" if p["treedrive"] else "classic",
        ]
        for p in peers
    ]
    return table(["peer", "address", "last seen", "kind"], rows)
