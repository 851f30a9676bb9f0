"""The options of ``treedrive run``, and the command class that reads the config file
(:mod:`treedrive.configfile`) into click's ``default_map`` before the options are parsed: an
option, then its ``TREEDRIVE_*`` variable, then the file, then the built-in default."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from treedrive.configfile import FileSettings, config_location, read_config
from treedrive.core.config import DEFAULT_HTTP_PORT, DEFAULT_P2P_PORT
from treedrive.launch import env
from treedrive.logs import LEVELS

PORT = click.IntRange(0, 65535)
SECONDS = click.FloatRange(min=0.01)
FILE_SETTINGS = "treedrive.file_settings"
"""``ctx.meta`` key: the :class:`FileSettings` the command read."""


def _chunk_kib(value: int) -> int:
    if 0 < value < 16:
        raise click.BadParameter(f"{value} KiB is too small: 0 (by the file's size) or 16 and up")
    return value


class RunCommand(click.Command):
    """``treedrive run``: reads its config file before it parses its options, so that the
    file's values are the defaults (``--help`` shows them) and the file is checked first."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        path, required = config_location(args, os.environ)
        settings = read_config(path, required, self.params)
        ctx.meta[FILE_SETTINGS] = settings
        if settings.path is not None:
            ctx.default_map = {**(ctx.default_map or {}), **settings.values}
            ctx.default_map["config"] = str(settings.path)
        return super().parse_args(ctx, args)


def file_settings(ctx: click.Context) -> FileSettings:
    settings = ctx.meta.get(FILE_SETTINGS)
    return settings if isinstance(settings, FileSettings) else FileSettings()


OPTIONS = [
    click.option(
        "--config",
        envvar=env("CONFIG"),
        show_envvar=True,
        show_default=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="Settings file (TOML; default: $XDG_CONFIG_HOME/treedrive/config.toml if it exists). "
        "Options and TREEDRIVE_* variables beat it.",
    ),
    click.option(
        "--peer-id",
        envvar=env("PEER_ID"),
        show_envvar=True,
        show_default=True,
        help="This node's id on the network (default: the one stored in the data dir, or a new "
        "one).",
    ),
    click.option(
        "--host",
        envvar=env("HOST"),
        show_envvar=True,
        default="127.0.0.1",
        show_default=True,
        help="Address the P2P port listens on (0.0.0.0: every interface).",
    ),
    click.option(
        "--advertise-host",
        envvar=env("ADVERTISE_HOST"),
        show_envvar=True,
        show_default=True,
        metavar="HOST",
        help="Address to give peers (default: --host; with --host 0.0.0.0 or ::, this machine's "
        "address on its default route).",
    ),
    click.option(
        "--port",
        envvar=env("PORT"),
        show_envvar=True,
        type=PORT,
        default=DEFAULT_P2P_PORT,
        show_default=True,
        help="P2P (TCP) port; 0 = any free.",
    ),
    click.option(
        "--http-port",
        envvar=env("HTTP_PORT"),
        show_envvar=True,
        type=PORT,
        default=DEFAULT_HTTP_PORT,
        show_default=True,
        help="Dashboard/API port; 0 = any free.",
    ),
    click.option(
        "--http-host",
        envvar=env("HTTP_HOST"),
        show_envvar=True,
        default="127.0.0.1",
        show_default=True,
        help="Address the dashboard/API listens on.",
    ),
    click.option(
        "--max-upload",
        envvar=env("MAX_UPLOAD"),
        show_envvar=True,
        type=click.IntRange(min=1),
        default=4096,
        show_default=True,
        help="Largest upload the API accepts, in MiB.",
    ),
    click.option(
        "--bootstrap",
        envvar=env("BOOTSTRAP"),
        show_envvar=True,
        show_default=True,
        multiple=True,
        metavar="HOST:PORT",
        help="A well-known host to join through (repeatable).",
    ),
    click.option(
        "--data-dir",
        envvar=env("DATA_DIR"),
        show_envvar=True,
        show_default=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Where the database and files live (default: per peer id under "
        "$XDG_DATA_HOME/treedrive).",
    ),
    click.option(
        "--gossip-interval",
        envvar=env("GOSSIP_INTERVAL"),
        show_envvar=True,
        type=SECONDS,
        default=30.0,
        show_default=True,
        help="Seconds between gossips.",
    ),
    click.option(
        "--peer-timeout",
        envvar=env("PEER_TIMEOUT"),
        show_envvar=True,
        type=SECONDS,
        default=60.0,
        show_default=True,
        help="Seconds of silence after which a peer is dropped.",
    ),
    click.option(
        "--cleanup-interval",
        envvar=env("CLEANUP_INTERVAL"),
        show_envvar=True,
        type=SECONDS,
        default=10.0,
        show_default=True,
        help="Seconds between sweeps for silent peers.",
    ),
    click.option(
        "--join-delay",
        envvar=env("JOIN_DELAY"),
        show_envvar=True,
        type=click.FloatRange(0),
        default=3.0,
        show_default=True,
        help="Seconds to wait for gossip replies before fetching files on join.",
    ),
    click.option(
        "--download-limit",
        envvar=env("DOWNLOAD_LIMIT"),
        show_envvar=True,
        type=click.IntRange(0),
        default=3,
        show_default=True,
        help="Files to fetch on join.",
    ),
    click.option(
        "--max-download-rate",
        envvar=env("MAX_DOWNLOAD_RATE"),
        show_envvar=True,
        show_default=True,
        type=click.FloatRange(min=0),
        default=0,
        help="KiB/s for all downloads together (0: no limit; also settable through the API).",
    ),
    click.option(
        "--max-upload-rate",
        envvar=env("MAX_UPLOAD_RATE"),
        show_envvar=True,
        show_default=True,
        type=click.FloatRange(min=0),
        default=0,
        help="KiB/s for all uploads together (0: no limit; also settable through the API).",
    ),
    click.option(
        "--chunk-size",
        envvar=env("CHUNK_SIZE"),
        show_envvar=True,
        type=click.IntRange(min=0),
        callback=lambda _ctx, _param, v: _chunk_kib(v),
        default=0,
        show_default=True,
        help="KiB per ranged request between TreeDrive nodes (0: by the file's size, 4-32 MiB).",
    ),
    click.option(
        "--max-inflight",
        envvar=env("MAX_INFLIGHT"),
        show_envvar=True,
        type=click.IntRange(min=1, max=64),
        default=4,
        show_default=True,
        help="Ranged requests in flight at once for one download.",
    ),
    click.option(
        "--max-peers",
        envvar=env("MAX_PEERS"),
        show_envvar=True,
        type=click.IntRange(min=1),
        default=1000,
        show_default=True,
        help="Peers tracked at most; the longest silent are forgotten first.",
    ),
    click.option(
        "--extension/--no-extension",
        envvar=env("EXTENSION"),
        show_envvar=True,
        default=True,
        show_default=True,
        help="Speak the TreeDrive extension (raw ranged transfers) with peers that do.",
    ),
    click.option(
        "--encryption/--no-encryption",
        envvar=env("ENCRYPTION"),
        show_envvar=True,
        default=True,
        show_default=True,
        help="Encrypt extension transfers (TLS 1.3 bound to the node keys) with peers whose key is "
        "pinned and that do; --no-encryption moves them in clear.",
    ),
    click.option(
        "--swim/--no-swim",
        envvar=env("SWIM"),
        show_envvar=True,
        default=True,
        show_default=True,
        help="Membership by SWIM probes and catalogue deltas with TreeDrive peers that also "
        "offer it, in place of the all-to-all gossip (PROTOCOL.md 2.10); --no-swim gossips "
        "with every peer the classic way.",
    ),
    click.option(
        "--shell/--no-shell",
        "shell",
        envvar=env("SHELL"),
        show_envvar=True,
        show_default=True,
        default=None,
        help="Offer the interactive shell (default: when in a terminal).",
    ),
    click.option(
        "--log-level",
        envvar=env("LOG_LEVEL"),
        show_envvar=True,
        default="INFO",
        type=click.Choice(LEVELS, case_sensitive=False),
        show_default=True,
        help="The least important log lines shown (any case).",
    ),
    click.option(
        "-v",
        "--verbose",
        envvar=env("VERBOSE"),
        show_envvar=True,
        count=True,
        help="One level more verbose than --log-level (-vv: two).",
    ),
    click.option(
        "-q",
        "--quiet",
        envvar=env("QUIET"),
        show_envvar=True,
        count=True,
        help="One level quieter than --log-level (-qq: two).",
    ),
    click.option(
        "--log-file",
        envvar=env("LOG_FILE"),
        show_envvar=True,
        show_default=True,
        metavar="PATH|-",
        help="The node's log file (default: node.log in the data dir); - : none, stderr only.",
    ),
    click.option(
        "--log-max-size",
        envvar=env("LOG_MAX_SIZE"),
        show_envvar=True,
        type=click.IntRange(min=0),
        default=10,
        show_default=True,
        help="MiB of a log file before it is rotated (0: never rotated).",
    ),
    click.option(
        "--log-backups",
        envvar=env("LOG_BACKUPS"),
        show_envvar=True,
        type=click.IntRange(min=1, max=1000),
        default=5,
        show_default=True,
        help="Rotated log files kept (node.log.1 the newest).",
    ),
]


def run_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Apply the options of ``treedrive run`` to ``f``, in the order ``--help`` lists them."""
    for option in reversed(OPTIONS):
        f = option(f)
    return f


def configured_node() -> tuple[Path | None, str | None]:
    """The data dir and peer id the config file gives ``treedrive run`` (``--config`` aside:
    ``TREEDRIVE_CONFIG`` or the default file), for the control commands to find that node."""

    def nothing(**_: Any) -> None:
        return None

    params = click.command()(run_options(nothing)).params
    path, required = config_location([], os.environ)
    values = read_config(path, required, params).values
    data_dir = values.get("data_dir")
    return (None if data_dir is None else Path(data_dir)), values.get("peer_id")
