"""The ``treedrive db`` and ``treedrive plugins`` commands (registered on the group in
:mod:`treedrive.cli`)."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from treedrive.launch import env, resolve_data_dir

if TYPE_CHECKING:
    from treedrive.store import Store


@click.group()
def db() -> None:
    """Manage a node's database schema."""


def _data_dir_option(f: Any) -> Any:
    f = click.option(
        "--data-dir",
        envvar=env("DATA_DIR"),
        show_envvar=True,
        type=click.Path(file_okay=False, path_type=Path),
    )(f)
    return click.option("--peer-id", envvar=env("PEER_ID"), show_envvar=True)(f)


def _store(data_dir: Path | None, peer_id: str | None) -> Store:
    from treedrive.store import Store

    return Store(resolve_data_dir(data_dir, peer_id))


@db.command("upgrade")
@_data_dir_option
def db_upgrade(data_dir: Path | None, peer_id: str | None) -> None:
    """Apply every pending migration (a node does this at start)."""
    with closing(_store(data_dir, peer_id)) as store:  # its connections closed, not left to gc
        before = store.current_revision()
        store.upgrade()
        click.echo(f"{store.db_path}: {before or '(empty)'} -> {store.current_revision()}")


@db.command("current")
@_data_dir_option
def db_current(data_dir: Path | None, peer_id: str | None) -> None:
    """Show the schema revision of the database."""
    with closing(_store(data_dir, peer_id)) as store:
        current, head = store.current_revision(), store.head_revision()
    state = "up to date" if current == head else f"behind (head is {head})"
    click.echo(f"{store.db_path}: {current or '(empty)'} — {state}")


@db.command("history")
def db_history() -> None:
    """List the migrations, newest first."""
    from alembic.script import ScriptDirectory

    from treedrive.store.db import alembic_config

    for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions():
        click.echo(f"{rev.revision}  {rev.doc}")


@click.command("plugins")
def plugins_cmd() -> None:
    """List the plugins that are loaded."""
    from treedrive import cli  # its make_plugin_manager, as the group's (a test patches it)
    from treedrive.core.plugins import Plugins

    for name, source in Plugins(cli.make_plugin_manager()).names():
        click.echo(f"{name}  ({source})")
