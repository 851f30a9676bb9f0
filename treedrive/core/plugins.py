"""The plugin manager: built by a factory, wrapped in a small typed facade.

The facade has one method per hook (``docs/plugins.md`` is their reference). It calls each
implementation on its own, in pluggy's order, with exactly the arguments that implementation
declares (pluggy lets it take a subset of the spec's), so that one plugin raising, or answering
with a value of the wrong type, is logged with its name and skipped instead of failing the whole
hook call (and the node with it).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

from treedrive.core import defaults, hookspecs

if TYPE_CHECKING:
    import asyncio

    from treedrive.core.events import Event, Notice
    from treedrive.core.model import CatalogEntry, FileMeta, PeerInfo
    from treedrive.core.node import Node

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = hookspecs.PROJECT
BLOCK_ENV = "TREEDRIVE_DISABLE_PLUGINS"
LOAD_ENV = "TREEDRIVE_PLUGINS"
"""Comma-separated modules to import and register as plugins besides the installed ones (the
way ``treedrive.testing`` gives a node process a plugin that is not installed)."""
STARTUP_WITHIN = 30.0
"""Seconds each plugin's awaitable from ``treedrive_startup`` may take."""
SHUTDOWN_WITHIN = 5.0
"""Seconds each plugin's awaitable from ``treedrive_shutdown`` may take."""


def make_plugin_manager(
    *, load_entry_points: bool = True, plugins: Sequence[object] = ()
) -> pluggy.PluginManager:
    """A manager with the hook specs, the built-in defaults, (unless told not to) every plugin
    installed under the ``treedrive`` entry-point group, the modules named in
    ``TREEDRIVE_PLUGINS`` and then ``plugins`` (modules or objects), less those named
    (comma-separated) in ``TREEDRIVE_DISABLE_PLUGINS``. A plugin already registered (installed
    and also given) is registered once."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in _names(BLOCK_ENV):
        pm.set_blocked(name)
    pm.register(defaults, name="treedrive.defaults")
    if load_entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in [*map(importlib.import_module, _names(LOAD_ENV)), *plugins]:
        if not pm.is_registered(plugin):
            pm.register(plugin, name=getattr(plugin, "__name__", None))
    pm.check_pending()
    return pm


def _names(variable: str) -> list[str]:
    return [n.strip() for n in os.environ.get(variable, "").split(",") if n.strip()]


def _sequence_of(kind: type) -> Callable[[object], bool]:
    def check(value: object) -> bool:
        return (
            isinstance(value, Sequence)
            and not isinstance(value, str)
            and all(isinstance(item, kind) for item in value)
        )

    return check


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _is_extra(value: object) -> bool:
    return isinstance(value, Mapping) and all(isinstance(key, str) for key in value)


def _is_sequence(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


class Plugins:
    """Typed access to the hooks, one method each. Exceptions from a plugin are logged with its
    name and skipped."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle and notifications ---------------------------------------------------------
    async def startup(self, node: Node, within: float = STARTUP_WITHIN) -> None:
        """``treedrive_startup``: each awaitable a plugin returns is awaited, ``within`` s at
        most, one after the other."""
        await self._notify("treedrive_startup", within, node=node)

    async def shutdown(self, node: Node, within: float = SHUTDOWN_WITHIN) -> None:
        """``treedrive_shutdown``: each awaitable a plugin returns is awaited, ``within`` s at
        most, one after the other."""
        await self._notify("treedrive_shutdown", within, node=node)

    def on_event(self, node: Node, event: Event) -> None:
        """``treedrive_on_event`` (after the commit); awaitables run as background tasks."""
        self._notify_soon("treedrive_on_event", node=node, event=event)

    def on_notice(self, node: Node, notice: Notice) -> None:
        """``treedrive_on_notice``; awaitables run as background tasks."""
        self._notify_soon("treedrive_on_notice", node=node, notice=notice)

    # -- policy (first result wins) ----------------------------------------------------------
    def select_downloads(
        self, node: Node, candidates: Sequence[CatalogEntry], limit: int
    ) -> list[str] | None:
        """The file ids to fetch on join, in order (None: no plugin decided)."""
        chosen = self._first(
            "treedrive_select_downloads", _sequence_of(str), "a sequence of file ids",
            node=node, candidates=candidates, limit=limit,
        )  # fmt: skip
        return None if chosen is None else list(chosen)

    def order_holders(
        self, node: Node, entry: CatalogEntry, holders: Sequence[PeerInfo]
    ) -> list[PeerInfo] | None:
        """The holders to ask for ``entry``, best first (None: no plugin decided)."""
        from treedrive.core.model import PeerInfo

        ordered = self._first(
            "treedrive_order_holders", _sequence_of(PeerInfo), "a sequence of PeerInfo",
            node=node, entry=entry, holders=holders,
        )  # fmt: skip
        return None if ordered is None else list(ordered)

    def accept_file(self, node: Node, meta: FileMeta, peer_id: str | None) -> bool | None:
        """Whether to keep a file pushed to this node unasked (None: no plugin decided)."""
        accept = self._first(
            "treedrive_accept_file", _is_bool, "a bool",
            node=node, meta=meta, peer_id=peer_id,
        )  # fmt: skip
        return None if accept is None else bool(accept)

    # -- gossip extension --------------------------------------------------------------------
    def gossip_extra(self, node: Node, message_type: str) -> dict[str, Any]:
        """The extra keys of every plugin for an outgoing ``message_type``, merged in call
        order (a later plugin's key wins)."""
        extra: dict[str, Any] = {}
        for keys in self._collect(
            "treedrive_gossip_extra", _is_extra, "a mapping with str keys",
            node=node, message_type=message_type,
        ):  # fmt: skip
            extra.update(keys)
        return extra

    def gossip_received(
        self, node: Node, message_type: str, peer_id: str, extra: Mapping[str, Any]
    ) -> None:
        """``treedrive_gossip_received``; awaitables run as background tasks."""
        self._notify_soon(
            "treedrive_gossip_received",
            node=node, message_type=message_type, peer_id=peer_id, extra=extra,
        )  # fmt: skip

    # -- registration ------------------------------------------------------------------------
    def cli_commands(self) -> list[Any]:
        """Every plugin's commands, in call order (the CLI keeps the ``click`` ones)."""
        found = self._collect("treedrive_cli_commands", _is_sequence, "a sequence of commands")
        return [command for commands in found for command in commands]

    # -- calling the implementations ---------------------------------------------------------
    def _impls(self, hook_name: str) -> Iterator[pluggy.HookImpl]:
        hook = getattr(self.pm.hook, hook_name)
        # pluggy calls the last of get_hookimpls() first (trylast ones are at the front).
        for impl in reversed(hook.get_hookimpls()):
            if not (impl.hookwrapper or impl.wrapper):
                yield impl

    def _call(self, hook_name: str, impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> Any:
        """Call ``impl`` as pluggy would: the arguments it declares, and no others."""
        args = [kwargs[name] for name in impl.argnames]
        named = {name: kwargs[name] for name in impl.kwargnames if name in kwargs}
        try:
            return impl.function(*args, **named)
        except Exception:
            log.exception("plugin %r failed in %s; skipped", impl.plugin_name, hook_name)
            return None

    def _answers(
        self, hook_name: str, valid: Callable[[object], bool], what: str, kwargs: dict[str, Any]
    ) -> Iterator[Any]:
        """The non-None answers of a hook that answers synchronously, in call order; an
        awaitable or a value that is not ``what`` is logged and skipped."""
        for impl in self._impls(hook_name):
            result = self._call(hook_name, impl, kwargs)
            if result is None:
                continue
            if inspect.isawaitable(result):
                log.error("plugin %r returned an awaitable from %s", impl.plugin_name, hook_name)
                if inspect.iscoroutine(result):
                    result.close()
            elif not valid(result):
                log.error(
                    "plugin %r returned %s from %s, not %s; skipped",
                    impl.plugin_name, type(result).__name__, hook_name, what,
                )  # fmt: skip
            else:
                yield result

    def _first(
        self, hook_name: str, valid: Callable[[object], bool], what: str, **kwargs: Any
    ) -> Any:
        """The first valid non-None answer (a policy hook), or None."""
        return next(self._answers(hook_name, valid, what, kwargs), None)

    def _collect(
        self, hook_name: str, valid: Callable[[object], bool], what: str, **kwargs: Any
    ) -> list[Any]:
        """Every valid non-None answer, in call order."""
        return list(self._answers(hook_name, valid, what, kwargs))

    def _awaitables(self, hook_name: str, kwargs: dict[str, Any]) -> Iterator[tuple[str, Any]]:
        """Call a notification hook; (plugin, awaitable) for each awaitable returned."""
        for impl in self._impls(hook_name):
            result = self._call(hook_name, impl, kwargs)
            if inspect.isawaitable(result):
                yield impl.plugin_name, result

    async def _notify(self, hook_name: str, within: float | None, **kwargs: Any) -> None:
        """Call a notification hook and await what it returns (each bounded by ``within`` s)."""
        import asyncio

        for plugin, result in self._awaitables(hook_name, kwargs):
            try:
                await asyncio.wait_for(result, within)
            except Exception:
                log.exception("plugin %r failed in %s; skipped", plugin, hook_name)

    def _notify_soon(self, hook_name: str, **kwargs: Any) -> None:
        """Call a notification hook now; awaitables it returns run as background tasks."""
        import asyncio

        for plugin, result in self._awaitables(hook_name, kwargs):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._task_done(plugin, hook_name))

    def _task_done(self, plugin: str, hook_name: str) -> Callable[[asyncio.Task[Any]], None]:
        def done(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error(
                    "plugin %r failed in %s; skipped",
                    plugin,
                    hook_name,
                    exc_info=task.exception(),
                )

        return done

    def names(self) -> list[tuple[str, str]]:
        """(name, where it comes from) of every registered plugin."""
        dists = {id(p): f"{d.project_name} {d.version}" for p, d in self.pm.list_plugin_distinfo()}
        out = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            out.append((name, dists.get(id(plugin), "built-in")))
        return sorted(out)
