"""The ``treedrive`` command."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from treedrive.core.config import (
    DEFAULT_HTTP_PORT,
    DEFAULT_P2P_PORT,
    Address,
    NodeConfig,
    default_data_root,
)
from treedrive.core.text import printable_lines

if TYPE_CHECKING:
    from pluggy import PluginManager

    from treedrive.core.node import Node
    from treedrive.store import Store

log = logging.getLogger("treedrive")

PORT = click.IntRange(0, 65535)
SECONDS = click.FloatRange(min=0.01)


def resolve_data_dir(data_dir: Path | None, peer_id: str | None) -> Path:
    """The data dir: given, or one per peer id under the user's data folder."""
    if data_dir is not None:
        return data_dir
    return default_data_root() / (peer_id or "default")


class PrintableFormatter(logging.Formatter):
    """Log lines quote what peers said (ids, hosts, names): control characters in them are
    escaped, so that a log read in a terminal (stderr, ``tail node.log``) shows them and never
    runs them. Line breaks of tracebacks are kept."""

    def format(self, record: logging.LogRecord) -> str:
        return printable_lines(super().format(record))


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class NotOnTerminal(logging.Filter):
    """Keeps off the terminal the log records marked ``extra={"terminal": False}``: what the
    CLI says there in its own words (the dashboard's address, with its token; a failed start)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "terminal", True) is not False


def setup_logging(level: str, data_dir: Path | None = None) -> None:
    """Log lines to stderr; and to ``<data_dir>/node.log`` if given (:func:`log_to_file`)."""
    root = logging.getLogger()
    root.setLevel(level)
    stderr = logging.StreamHandler()
    stderr.setFormatter(PrintableFormatter(LOG_FORMAT, "%H:%M:%S"))
    stderr.addFilter(NotOnTerminal())
    root.addHandler(stderr)
    if data_dir is not None:
        log_to_file(data_dir)


def log_to_file(data_dir: Path) -> logging.Handler:
    """Log lines to ``<data_dir>/node.log`` (created 0600) from now on. A node does this once
    it holds the data dir's lock: a node refused there writes nothing into another's log."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_file = data_dir / "node.log"
    os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))  # owner only
    to_file = logging.FileHandler(log_file)
    to_file.setFormatter(PrintableFormatter(LOG_FORMAT))
    logging.getLogger().addHandler(to_file)
    return to_file


def _chunk_kib(value: int) -> int:
    if 0 < value < 16:
        raise click.BadParameter(f"{value} KiB is too small: 0 (by the file's size) or 16 and up")
    return value


def make_plugin_manager(**kwargs: Any) -> PluginManager:
    """The plugin manager (:func:`treedrive.core.plugins.make_plugin_manager`), imported when a
    command needs it: the control commands start without pluggy's entry-point scan until then."""
    from treedrive.core.plugins import make_plugin_manager as make

    return make(**kwargs)


def env(name: str) -> str:
    return f"TREEDRIVE_{name}"


class TreeDriveGroup(click.Group):
    """Adds the commands that plugins register (``treedrive_cli_commands``)."""

    _plugin_commands: dict[str, click.Command] | None = None

    def _extra(self) -> dict[str, click.Command]:
        if self._plugin_commands is None:
            from treedrive.core.plugins import Plugins

            plugins = Plugins(make_plugin_manager())
            found: dict[str, click.Command] = {}
            for command in plugins.cli_commands():
                if isinstance(command, click.Command) and command.name:
                    found.setdefault(command.name, command)
            self._plugin_commands = found
        return self._plugin_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._extra()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self._extra().get(cmd_name)


@click.group(cls=TreeDriveGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="treedrive")
def cli() -> None:
    """TreeDrive: a peer-to-peer file-sharing node."""


@cli.command()
@click.argument("positional", nargs=-1, metavar="[PEER_ID [HOST [P2P_PORT [HTTP_PORT]]]]")
@click.option(
    "--peer-id",
    envvar=env("PEER_ID"),
    show_envvar=True,
    help="This node's id on the network (default: the one stored in the data dir, or a new one).",
)
@click.option(
    "--host",
    envvar=env("HOST"),
    show_envvar=True,
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on and to give peers.",
)
@click.option(
    "--port",
    envvar=env("PORT"),
    show_envvar=True,
    type=PORT,
    default=DEFAULT_P2P_PORT,
    show_default=True,
    help="P2P (TCP) port; 0 = any free.",
)
@click.option(
    "--http-port",
    envvar=env("HTTP_PORT"),
    show_envvar=True,
    type=PORT,
    default=DEFAULT_HTTP_PORT,
    show_default=True,
    help="Dashboard/API port; 0 = any free.",
)
@click.option(
    "--http-host",
    envvar=env("HTTP_HOST"),
    show_envvar=True,
    default="127.0.0.1",
    show_default=True,
    help="Address the dashboard/API listens on.",
)
@click.option(
    "--max-upload",
    envvar=env("MAX_UPLOAD"),
    show_envvar=True,
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Largest upload the API accepts, in MiB.",
)
@click.option(
    "--bootstrap",
    envvar=env("BOOTSTRAP"),
    show_envvar=True,
    multiple=True,
    metavar="HOST:PORT",
    help="A well-known host to join through (repeatable).",
)
@click.option(
    "--data-dir",
    envvar=env("DATA_DIR"),
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the database and files live (default: per peer id under $XDG_DATA_HOME/treedrive).",
)
@click.option(
    "--gossip-interval",
    envvar=env("GOSSIP_INTERVAL"),
    show_envvar=True,
    type=SECONDS,
    default=30.0,
    show_default=True,
    help="Seconds between gossips.",
)
@click.option(
    "--peer-timeout",
    envvar=env("PEER_TIMEOUT"),
    show_envvar=True,
    type=SECONDS,
    default=60.0,
    show_default=True,
    help="Seconds of silence after which a peer is dropped.",
)
@click.option(
    "--cleanup-interval",
    envvar=env("CLEANUP_INTERVAL"),
    show_envvar=True,
    type=SECONDS,
    default=10.0,
    show_default=True,
    help="Seconds between sweeps for silent peers.",
)
@click.option(
    "--join-delay",
    envvar=env("JOIN_DELAY"),
    show_envvar=True,
    type=click.FloatRange(0),
    default=3.0,
    show_default=True,
    help="Seconds to wait for gossip replies before fetching files on join.",
)
@click.option(
    "--download-limit",
    envvar=env("DOWNLOAD_LIMIT"),
    show_envvar=True,
    type=click.IntRange(0),
    default=3,
    show_default=True,
    help="Files to fetch on join.",
)
@click.option(
    "--max-download-rate",
    envvar=env("MAX_DOWNLOAD_RATE"),
    show_envvar=True,
    type=click.FloatRange(min=0),
    default=0,
    help="KiB/s for all downloads together (0: no limit; also settable through the API).",
)
@click.option(
    "--max-upload-rate",
    envvar=env("MAX_UPLOAD_RATE"),
    show_envvar=True,
    type=click.FloatRange(min=0),
    default=0,
    help="KiB/s for all uploads together (0: no limit; also settable through the API).",
)
@click.option(
    "--chunk-size",
    envvar=env("CHUNK_SIZE"),
    show_envvar=True,
    type=click.IntRange(min=0),
    callback=lambda _ctx, _param, v: _chunk_kib(v),
    default=0,
    show_default=True,
    help="KiB per ranged request between TreeDrive nodes (0: by the file's size, 4-32 MiB).",
)
@click.option(
    "--max-inflight",
    envvar=env("MAX_INFLIGHT"),
    show_envvar=True,
    type=click.IntRange(min=1, max=64),
    default=4,
    show_default=True,
    help="Ranged requests in flight at once for one download.",
)
@click.option(
    "--max-peers",
    envvar=env("MAX_PEERS"),
    show_envvar=True,
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Peers tracked at most; the longest silent are forgotten first.",
)
@click.option(
    "--extension/--no-extension",
    envvar=env("EXTENSION"),
    show_envvar=True,
    default=True,
    show_default=True,
    help="Speak the TreeDrive extension (raw ranged transfers) with peers that do.",
)
@click.option(
    "--shell/--no-shell",
    "shell",
    envvar=env("SHELL"),
    show_envvar=True,
    default=None,
    help="Offer the interactive shell (default: when in a terminal).",
)
@click.option(
    "--log-level",
    envvar=env("LOG_LEVEL"),
    show_envvar=True,
    default="INFO",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
    show_default=True,
)
def run(
    positional: Sequence[str],
    peer_id: str | None,
    host: str,
    port: int,
    http_port: int,
    http_host: str,
    max_upload: int,
    bootstrap: Sequence[str],
    data_dir: Path | None,
    gossip_interval: float,
    peer_timeout: float,
    cleanup_interval: float,
    join_delay: float,
    download_limit: int,
    max_download_rate: float,
    max_upload_rate: float,
    chunk_size: int,
    max_inflight: int,
    max_peers: int,
    extension: bool,
    shell: bool | None,
    log_level: str,
) -> None:
    """Run a node: P2P listener, gossip, dashboard, and (in a terminal) the shell.

    The seed's form also works: treedrive run PEER_ID [HOST [P2P_PORT [HTTP_PORT]]].
    """
    if len(positional) > 4:
        raise click.UsageError("at most PEER_ID HOST P2P_PORT HTTP_PORT")
    names = ("peer id", "host", "P2P port", "HTTP port")
    values: list[Any] = list(positional)
    for i in (2, 3):
        if len(values) > i:
            try:
                values[i] = PORT.convert(values[i], None, None)
            except click.BadParameter as exc:
                raise click.BadParameter(str(exc), param_hint=names[i]) from None
    peer_id = values[0] if len(values) > 0 else peer_id
    host = values[1] if len(values) > 1 else host
    port = values[2] if len(values) > 2 else port
    http_port = values[3] if len(values) > 3 else http_port
    # A default HTTP port that is taken (a second node on this machine) falls back to a free
    # one; a port the user chose (option, environment, positional) must be that one.
    source = click.get_current_context().get_parameter_source("http_port")
    chosen = len(values) > 3 or source not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    try:
        boot = tuple(Address.parse(b) for b in bootstrap)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bootstrap") from None
    data = resolve_data_dir(data_dir, peer_id)
    config = NodeConfig(
        data_dir=data,
        peer_id=peer_id,
        host=host,
        port=port,
        http_port=http_port,
        http_port_fallback=not chosen,
        http_host=http_host,
        max_upload=max_upload * 1024 * 1024,
        bootstrap=boot,
        gossip_interval=gossip_interval,
        peer_timeout=peer_timeout,
        cleanup_interval=min(cleanup_interval, peer_timeout),
        join_delay=join_delay,
        download_limit=download_limit,
        max_download_rate=max_download_rate * 1024 or None,
        max_upload_rate=max_upload_rate * 1024 or None,
        chunk_size=chunk_size * 1024 or None,
        max_inflight=max_inflight,
        max_peers=max_peers,
        extension=extension,
    )
    if shell is None:
        shell = sys.stdin.isatty()
    setup_logging(log_level)  # node.log once the data dir is ours (_run)
    from treedrive.app import tune_malloc

    tune_malloc()
    try:
        import asyncio

        asyncio.run(_run(config, shell))
    except StartRefused as exc:
        raise click.ClickException(str(exc)) from None


class StartRefused(Exception):
    """The node did not start; the message (one line) says why and what to do."""


def start_failure(exc: BaseException) -> str | None:
    """What to tell the user when the node could not start (None: not a start problem)."""
    from treedrive.app import AlreadyRunning, StartFailed

    if isinstance(exc, AlreadyRunning):
        return f"{exc}: stop it first, or give this node another --data-dir or --peer-id"
    if isinstance(exc, StartFailed):
        option = "--port" if exc.what == "P2P" else "--http-port"
        if exc.in_use:
            return f"{exc}: choose another with {option} PORT, or {option} 0 for any free one"
        if exc.errno == errno.EADDRNOTAVAIL:
            return f"{exc}: check {'--host' if exc.what == 'P2P' else '--http-host'}"
        return f"{exc}: choose another with {option}"
    if isinstance(exc, OSError):
        return f"cannot start the node: {exc}"
    return None


async def _run(config: NodeConfig, with_shell: bool) -> None:
    import asyncio

    from treedrive.app import AlreadyRunning, running_node, serve_until_stopped, stop_on_signals

    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        try:
            node = await stack.enter_async_context(
                running_node(config, on_locked=lambda: log_to_file(config.data_dir))
            )
        except (AlreadyRunning, OSError, RuntimeError) as exc:
            said = start_failure(exc)
            if said is None:
                raise
            if not isinstance(exc, AlreadyRunning):  # the log is this node's: say it there too
                log.error("the node did not start: %s", said, extra={"terminal": False})
            raise StartRefused(said) from None
        _banner(node)
        stop_on_signals(stop)  # before the shell's prompt: a signal then stops the node cleanly
        if with_shell:
            from treedrive.terminal import Console

            console = Console(node, stop, history=config.data_dir / "shell-history")
            console.start()
            stack.push_async_callback(console.close)  # before the node stops
        await serve_until_stopped(node, stop)


def _banner(node: Node) -> None:
    """The dashboard's address with the node's token, and where its data is (the node's log
    said where it listens)."""
    config = node.config
    where = f"data: {config.data_dir}"
    if not node.http_url:
        click.echo(where, err=True)
        return
    token = (config.data_dir / "api-token").read_text().strip()
    bound = urllib.parse.urlsplit(node.http_url).port
    if config.http_port and bound != config.http_port:
        where = f"port {config.http_port} is taken; {where}"
    click.echo(f"dashboard: {node.http_url}?token={token} ({where})", err=True)


# -- db -------------------------------------------------------------------------------------------
@cli.group()
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
    store = _store(data_dir, peer_id)
    before = store.current_revision()
    store.upgrade()
    click.echo(f"{store.db_path}: {before or '(empty)'} -> {store.current_revision()}")


@db.command("current")
@_data_dir_option
def db_current(data_dir: Path | None, peer_id: str | None) -> None:
    """Show the schema revision of the database."""
    store = _store(data_dir, peer_id)
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


@cli.command("plugins")
def plugins_cmd() -> None:
    """List the plugins that are loaded."""
    from treedrive.core.plugins import Plugins

    for name, source in Plugins(make_plugin_manager()).names():
        click.echo(f"{name}  ({source})")


def main() -> None:
    cli(auto_envvar_prefix="TREEDRIVE")
