"""The config file of ``treedrive run``: TOML, one key per option, plugins' tables.

Where: ``--config FILE``, else ``$TREEDRIVE_CONFIG``, else
``$XDG_CONFIG_HOME/treedrive/config.toml`` (``~/.config/...``; a missing default file is no
file). A key is an option's long name without its dashes (``http-port = 8281``,
``bootstrap = ["10.0.0.5:8270"]``, ``extension = false``); the values become click's
``default_map``, so an option on the command line, then its ``TREEDRIVE_*`` variable, beat the
file, and ``treedrive run --help`` shows the file's values as the defaults. ``[plugins.<name>]``
tables go to the node as ``NodeConfig.extra[name]``. A relative path in the file is relative to
the file's folder; ``~`` is the user's home.

Every key and value is checked before the node starts: an unknown key, a wrong type or a value
out of range is one line naming the file, the key and what is expected (:class:`ConfigError`).
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from treedrive.core.config import Address

CONFIG_ENV = "TREEDRIVE_CONFIG"
NOT_IN_FILE = frozenset({"config", "verbose", "quiet", "help"})
"""Options that the file cannot set: where the file is, and the terminal's ``-v``/``-q``."""
PATHS = frozenset({"data_dir", "log_file"})
"""Options whose value is a path (relative to the file's folder; ``~`` expanded)."""


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "treedrive" / "config.toml"


class ConfigError(click.ClickException):
    """The config file cannot be used: one line saying where and why (exit status 2, like a bad
    option)."""

    exit_code = 2


@dataclass(frozen=True)
class FileSettings:
    """What a config file says: ``values`` by option name (click's ``default_map``), and the
    plugins' tables by plugin name."""

    path: Path | None = None
    values: dict[str, Any] = field(default_factory=dict)
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)


def config_location(args: Sequence[str], environ: Mapping[str, str]) -> tuple[Path, bool]:
    """The config file to read, and whether it must exist (the user named it): ``--config`` in
    ``args`` (before a ``--``), else ``TREEDRIVE_CONFIG``, else the default path."""
    named: str | None = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--config" and i + 1 < len(args):
            named = args[i + 1]
        elif arg.startswith("--config="):
            named = arg.partition("=")[2]
    if named is None:
        named = environ.get(CONFIG_ENV) or None
    if named is None:
        return default_config_path(), False
    return Path(named).expanduser(), True


def read_config(path: Path, required: bool, params: Sequence[click.Parameter]) -> FileSettings:
    """Read and check the file at ``path`` against ``params`` (the command's options)."""
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: no such config file") from None
        return FileSettings()
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    return check_config(raw, path, params)


def check_config(
    raw: Mapping[str, Any], path: Path, params: Sequence[click.Parameter]
) -> FileSettings:
    """The settings in the parsed TOML ``raw``, each checked like its option would check it."""
    options = {
        key: p
        for p in params
        if isinstance(p, click.Option) and p.name not in NOT_IN_FILE
        for key in [file_key(p)]
    }
    values: dict[str, Any] = {}
    plugins: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        if key == "plugins":
            plugins = _plugin_tables(value, path)
            continue
        option = options.get(key)
        if option is None:
            raise ConfigError(f"{path}: unknown key {key!r}{_hint(key, [*options, 'plugins'])}")
        assert option.name is not None
        values[option.name] = _value(option, key, value, path)
    return FileSettings(path, values, plugins)


def file_key(option: click.Option) -> str:
    """The key of ``option`` in the file: its long name without the dashes."""
    longs = [o for o in option.opts if o.startswith("--")]
    return (longs[0] if longs else option.opts[0]).lstrip("-")


def _hint(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key.replace("_", "-"), known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(known)})"


def _plugin_tables(value: Any, path: Path) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: 'plugins': expected tables [plugins.<name>], got {value!r}")
    tables: dict[str, dict[str, Any]] = {}
    for name, table in value.items():
        if not isinstance(table, dict):
            raise ConfigError(
                f"{path}: 'plugins.{name}': expected a table [plugins.{name}], got {table!r}"
            )
        tables[name] = dict(table)
    return tables


def _value(option: click.Option, key: str, value: Any, path: Path) -> Any:
    """``value`` as the option takes it; ConfigError (naming the file, the key and what is
    expected) when it is of the wrong type or out of range."""

    def wrong(why: str = "") -> ConfigError:
        return ConfigError(f"{path}: {key!r}: expected {describe(option)}, got {value!r}{why}")

    if option.multiple:
        return _items(option, value, wrong)
    if not _toml_type_fits(option.type, value):
        raise wrong()
    if option.name in PATHS and value != "-":
        value = os.path.abspath(path.parent / Path(value).expanduser())
    try:
        converted = option.type.convert(value, option, None)
    except click.BadParameter:
        raise wrong() from None
    try:
        if option.callback is not None:  # its own checks (a chunk size)
            option.callback(click.Context(click.Command(None)), option, converted)
    except click.BadParameter as exc:
        raise ConfigError(f"{path}: {key!r}: {exc.message}") from None
    return value


def _items(option: click.Option, value: Any, wrong: Callable[[str], ConfigError]) -> list[str]:
    """The strings of a repeatable option (the bootstrap hosts: each HOST:PORT)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise wrong("")
    if option.name == "bootstrap":
        for item in value:
            try:
                Address.parse(item)
            except ValueError:
                raise wrong(f" ({item!r} is not HOST:PORT)") from None
    return list(value)


def _toml_type_fits(kind: object, value: Any) -> bool:
    if isinstance(kind, click.types.BoolParamType):
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if isinstance(kind, click.types.IntParamType):
        return isinstance(value, int)
    if isinstance(kind, click.types.FloatParamType):
        return isinstance(value, int | float) and math.isfinite(value)
    return isinstance(value, str)


def describe(option: click.Option) -> str:
    """What the file must give for ``option``, in words."""
    kind = option.type
    if option.multiple:
        what = "HOST:PORT strings" if option.name == "bootstrap" else "strings"
        return f"a list of {what}"
    if isinstance(kind, click.types.BoolParamType) or option.is_flag:
        return "true or false"
    if isinstance(kind, click.Choice):
        return "one of " + ", ".join(repr(str(c)) for c in kind.choices)
    if isinstance(kind, click.types.IntParamType | click.types.FloatParamType):
        noun = "an integer" if isinstance(kind, click.types.IntParamType) else "a number"
        return noun + _range(kind)
    if option.name == "log_file":
        return 'a path (a string) or "-"'
    if option.name in PATHS:
        return "a path (a string)"
    return "a string"


def _range(kind: object) -> str:
    low, high = getattr(kind, "min", None), getattr(kind, "max", None)
    if low is not None and high is not None:
        return f" from {low} to {high}"
    if low is not None:
        return f" of {low} or more"
    if high is not None:
        return f" of {high} or less"
    return ""
