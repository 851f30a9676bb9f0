"""The ``treedrive`` command: the group and ``treedrive run`` (logging set-up in
:mod:`treedrive.logs`, the start in :mod:`treedrive.launch`, ``db`` and ``plugins`` in
:mod:`treedrive.admin`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from treedrive.admin import db, plugins_cmd
from treedrive.core.config import Address, NodeConfig
from treedrive.launch import (
    StartRefused,
    advertised_host,
    env,
    kept_rates,
    resolve_data_dir,
    start_failure,
)
from treedrive.launch import run_node as _run  # the name tests patch
from treedrive.logs import (
    LOG_FORMAT,
    MIB,
    LogFile,
    NotOnTerminal,
    PrintableFormatter,
    effective_level,
    log_to_file,
    setup_logging,
)
from treedrive.runoptions import PORT, RunCommand, file_settings, run_options

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


@cli.command(cls=RunCommand)
@click.argument("positional", nargs=-1, metavar="[PEER_ID [HOST [P2P_PORT [HTTP_PORT]]]]")
@run_options
def run(positional: Sequence[str], **options: Any) -> None:
    """Run a node: P2P listener, gossip, dashboard, and (in a terminal) the shell.

    The seed's form also works: treedrive run PEER_ID [HOST [P2P_PORT [HTTP_PORT]]].

    Each setting comes from the first of: an option, its TREEDRIVE_* variable, the config file,
    the default shown (which is the config file's value when it has one).
    """
    ctx = click.get_current_context()
    http_chosen = _take_positional(positional, options)
    source = ctx.get_parameter_source("http_port")
    # A default HTTP port that is taken (a second node on this machine) falls back to a free
    # one; a port the user chose (option, environment, config file, positional) must be that one.
    http_chosen = http_chosen or source is not ParameterSource.DEFAULT
    config, notes = _node_config(ctx, options, not http_chosen)
    shell = options["shell"]
    if shell is None:
        shell = sys.stdin.isatty()
    setup_logging(effective_level(options["log_level"], options["verbose"], options["quiet"]))
    for note in notes:  # node.log once the data dir is ours (_run)
        logging.getLogger("treedrive").info("%s", note)
    log_file = LogFile(options["log_file"], options["log_max_size"] * MIB, options["log_backups"])
    from treedrive.app import tune_malloc

    tune_malloc()
    try:
        import asyncio

        asyncio.run(_run(config, shell, log_file))
    except StartRefused as exc:
        raise click.ClickException(str(exc)) from None


def _take_positional(positional: Sequence[str], options: dict[str, Any]) -> bool:
    """Put the seed's positional arguments into ``options``; True if an HTTP port was given."""
    if len(positional) > 4:
        raise click.UsageError("at most PEER_ID HOST P2P_PORT HTTP_PORT")
    names = ("peer_id", "host", "port", "http_port")
    hints = ("peer id", "host", "P2P port", "HTTP port")
    for i, text in enumerate(positional):
        value: Any = text
        if i >= 2:
            try:
                value = PORT.convert(text, None, None)  # type: ignore[arg-type]  # it takes text
            except click.BadParameter as exc:
                raise click.BadParameter(str(exc), param_hint=hints[i]) from None
        options[names[i]] = value
    return len(positional) > 3


def _node_config(
    ctx: click.Context, o: dict[str, Any], http_fallback: bool
) -> tuple[NodeConfig, list[str]]:
    """The node's settings from the options (and ``limits.json``), and what to log about them."""
    try:
        boot = tuple(Address.parse(b) for b in o["bootstrap"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bootstrap") from None
    data = resolve_data_dir(o["data_dir"], o["peer_id"])
    rates, notes = kept_rates(ctx, data, o["max_download_rate"], o["max_upload_rate"])
    config = NodeConfig(
        data_dir=data,
        peer_id=o["peer_id"],
        host=o["host"],
        advertise_host=advertised_host(o["host"], o["advertise_host"]),
        port=o["port"],
        http_port=o["http_port"],
        http_port_fallback=http_fallback,
        http_host=o["http_host"],
        max_upload=o["max_upload"] * MIB,
        bootstrap=boot,
        gossip_interval=o["gossip_interval"],
        peer_timeout=o["peer_timeout"],
        cleanup_interval=min(o["cleanup_interval"], o["peer_timeout"]),
        join_delay=o["join_delay"],
        download_limit=o["download_limit"],
        max_download_rate=rates.download,
        max_upload_rate=rates.upload,
        chunk_size=o["chunk_size"] * 1024 or None,
        max_inflight=o["max_inflight"],
        max_peers=o["max_peers"],
        extension=o["extension"],
        encryption=o["encryption"],
        swim=o["swim"],
        extra=dict(file_settings(ctx).plugins),
    )
    return config, notes


cli.add_command(db)
cli.add_command(plugins_cmd)


def main() -> None:
    cli(auto_envvar_prefix="TREEDRIVE")
