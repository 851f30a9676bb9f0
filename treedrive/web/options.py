"""What every control command shares: the options that find the node (``--data-dir``,
``--peer-id``, ``--node``, ``--token``) and ``--json``, the client they give, JSON output, and the
one line a :class:`~treedrive.client.TreeDriveError` becomes (never a traceback)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from treedrive.client import BadNodeAddress, Client, TreeDriveError
from treedrive.core.text import printable


def said(exc: TreeDriveError) -> click.ClickException:
    """The client's error as the command's one line (escaped: it may quote a peer)."""
    if isinstance(exc, BadNodeAddress):
        return click.ClickException(printable(f"--node {exc.message}"))
    return click.ClickException(printable(exc.message))


def reported(f: Callable[..., Any]) -> Callable[..., Any]:
    """``f`` with the client's errors said in one line."""

    @functools.wraps(f)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except TreeDriveError as exc:
            raise said(exc) from None

    return run


def common(f: Callable[..., Any]) -> Callable[..., Any]:
    f = reported(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)
    f = click.option(
        "--token",
        envvar="TREEDRIVE_TOKEN",
        show_envvar=True,
        help="The node's API token (default: read from its data dir).",
    )(f)
    f = click.option(
        "--node",
        "node_url",
        envvar="TREEDRIVE_NODE",
        show_envvar=True,
        metavar="URL",
        help="The node's HTTP address, e.g. http://127.0.0.1:8280/ (or 127.0.0.1:8280)",
    )(f)
    f = click.option(
        "--peer-id",
        envvar="TREEDRIVE_PEER_ID",
        show_envvar=True,
        help="Find the node by peer id (its default data dir).",
    )(f)
    return click.option(
        "--data-dir",
        envvar="TREEDRIVE_DATA_DIR",
        show_envvar=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="The running node's data dir.",
    )(f)


def _client(
    data_dir: Path | None, peer_id: str | None, node_url: str | None, token: str | None
) -> Client:
    if data_dir is None and peer_id is None and node_url is None:
        from treedrive.runoptions import configured_node

        data_dir, peer_id = configured_node()  # the node that the config file describes
    return Client.find(data_dir, peer_id=peer_id, url=node_url, token=token)


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))
