"""The plugin manager: built by a factory, wrapped in a small typed facade.

The facade calls each implementation on its own, in pluggy's order, so that one plugin raising is
logged and skipped instead of failing the whole hook call (and the node with it).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Iterator
from typing import Any

import pluggy

from treedrive.core import defaults, hookspecs

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = hookspecs.PROJECT
BLOCK_ENV = "TREEDRIVE_DISABLE_PLUGINS"


def make_plugin_manager(*, load_entry_points: bool = True) -> pluggy.PluginManager:
    """A manager with the hook specs, the built-in defaults and (unless told not to) every
    plugin installed under the ``treedrive`` entry-point group, less those named (comma-separated)
    in ``TREEDRIVE_DISABLE_PLUGINS``."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in filter(None, (n.strip() for n in os.environ.get(BLOCK_ENV, "").split(","))):
        pm.set_blocked(name)
    pm.register(defaults, name="treedrive.defaults")
    if load_entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    pm.check_pending()
    return pm


class Plugins:
    """Typed access to the hooks: ``first`` for policy hooks, ``collect`` and ``notify`` for the
    others. Exceptions from a plugin are logged with its name and skipped."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._tasks: set[asyncio.Task[Any]] = set()

    def _impls(self, hook_name: str) -> Iterator[tuple[str, Any]]:
        hook = getattr(self.pm.hook, hook_name)
        # pluggy calls the last of get_hookimpls() first (trylast ones are at the front).
        for impl in reversed(hook.get_hookimpls()):
            if impl.hookwrapper or impl.wrapper:
                continue
            yield impl.plugin_name, impl.function

    def _call(self, hook_name: str, plugin: str, fn: Any, kwargs: dict[str, Any]) -> Any:
        try:
            return fn(**kwargs)
        except Exception:
            log.exception("plugin %r failed in %s; skipped", plugin, hook_name)
            return None

    def first(self, hook_name: str, **kwargs: Any) -> Any:
        """The first non-None result (a policy hook)."""
        for plugin, fn in self._impls(hook_name):
            result = self._call(hook_name, plugin, fn, kwargs)
            if inspect.isawaitable(result):
                log.error("plugin %r returned an awaitable from policy hook %s", plugin, hook_name)
                if inspect.iscoroutine(result):
                    result.close()
                continue
            if result is not None:
                return result
        return None

    def collect(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Every non-None result, in call order."""
        out = []
        for plugin, fn in self._impls(hook_name):
            result = self._call(hook_name, plugin, fn, kwargs)
            if result is not None:
                out.append(result)
        return out

    async def notify(self, hook_name: str, within: float | None = None, **kwargs: Any) -> None:
        """Call a notification hook and await what it returns (each bounded by ``within`` s)."""
        for plugin, fn in self._impls(hook_name):
            result = self._call(hook_name, plugin, fn, kwargs)
            if inspect.isawaitable(result):
                try:
                    await asyncio.wait_for(result, within)
                except Exception:
                    log.exception("plugin %r failed in %s; skipped", plugin, hook_name)

    def notify_soon(self, hook_name: str, **kwargs: Any) -> None:
        """Call a notification hook now; awaitables it returns run as background tasks."""
        for plugin, fn in self._impls(hook_name):
            result = self._call(hook_name, plugin, fn, kwargs)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._task_done(plugin, hook_name))

    def _task_done(self, plugin: str, hook_name: str) -> Any:
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
