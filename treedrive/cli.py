"""The ``treedrive`` command: the group and ``treedrive run`` (logging set-up in
:mod:`treedrive.logs`, the start in :mod:`treedrive.launch`, ``db`` and ``plugins`` in
:mod:`treedrive.admin`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from treedrive.admin import db, plugins_cmd
from treedrive.core.config import DEFAULT_HTTP_PORT, DEFAULT_P2P_PORT, Address, NodeConfig
from treedrive.launch import StartRefused, env, resolve_data_dir, start_failure
from treedrive.launch import run_node as _run  # the name tests patch
from treedrive.logs import LOG_FORMAT, NotOnTerminal, PrintableFormatter, log_to_file, setup_logging

if TYPE_CHECKING:
    from pluggy import PluginManager

__all__ = [  # what moved out of this module is still importable from it
    "LOG_FORMAT",
    "NotOnTerminal",
    "PrintableFormatter",
    "StartRefused",
    "cli",
    "db",
    "env",
    "log_to_file",
    "main",
    "make_plugin_manager",
    "plugins_cmd",
    "resolve_data_dir",
    "run",
    "setup_logging",
    "start_failure",
]

PORT = click.IntRange(0, 65535)
SECONDS = click.FloatRange(min=0.01)


def _chunk_kib(value: int) -> int:
    if 0 < value < 16:
        raise click.BadParameter(f"{value} KiB is too small: 0 (by the file's size) or 16 and up")
    return value


def make_plugin_manager(**kwargs: Any) -> PluginManager:
    """The plugin manager (:func:`treedrive.core.plugins.make_plugin_manager`), imported when a
    command needs it: the control commands start without pluggy's entry-point scan until then."""
    from treedrive.core.plugins import make_plugin_manager as make

    return make(**kwargs)


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
    "--encryption/--no-encryption",
    envvar=env("ENCRYPTION"),
    show_envvar=True,
    default=True,
    show_default=True,
    help="Encrypt extension transfers (TLS 1.3 bound to the node keys) with peers whose key is "
    "pinned and that do; --no-encryption moves them in clear.",
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
    encryption: bool,
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
        encryption=encryption,
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


cli.add_command(db)
cli.add_command(plugins_cmd)


def main() -> None:
    cli(auto_envvar_prefix="TREEDRIVE")
