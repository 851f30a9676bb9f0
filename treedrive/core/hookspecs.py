"""Every hook a TreeDrive plugin can implement, in one place.

Plugins mark implementations with :data:`hookimpl` and register through the entry-point group
``treedrive``. Hooks are always called with keyword arguments; an implementation may declare only
the arguments it uses (a subset of the spec's), and is given exactly those. Policy hooks are
synchronous and pure and the first non-None result wins; return None to let other plugins decide
(the built-in defaults are registered last-to-run with ``trylast=True``). A plugin that raises, or
answers with a value of the wrong type, is logged and skipped: it never takes the node down.
``docs/plugins.md`` is the reference of every hook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from treedrive.core.events import Event, Notice
    from treedrive.core.model import CatalogEntry, FileMeta, PeerInfo
    from treedrive.core.node import Node

PROJECT = "treedrive"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- lifecycle and notifications --------------------------------------------------------------
@hookspec
def treedrive_startup(node: Node) -> Any:
    """The node is listening and its store is open. May return an awaitable, which the node
    awaits before it starts gossiping (e.g. to start a web server on the node's loop)."""


@hookspec
def treedrive_shutdown(node: Node) -> Any:
    """The node is stopping. May return an awaitable, which is awaited (bounded) before exit."""


@hookspec
def treedrive_on_event(node: Node, event: Event) -> Any:
    """A change was committed to the store (never called before the commit, never for a change
    that rolled back). May return an awaitable; it is scheduled and must not block the node."""


@hookspec
def treedrive_on_notice(node: Node, notice: Notice) -> Any:
    """Something happened that no commit stands behind (transient: progress of a transfer,
    bytes refused). Called at once, possibly often (progress: a few times a second per
    transfer); the store may never know of it. May return an awaitable; it is scheduled and
    must not block the node."""


# -- policy (first result wins) ----------------------------------------------------------------
@hookspec(firstresult=True)
def treedrive_select_downloads(
    node: Node, candidates: Sequence[CatalogEntry], limit: int
) -> Sequence[str] | None:
    """Which remote files a node fetches when it joins the network.

    ``candidates`` are catalogue entries the node does not hold and can fetch (at least one
    tracked holder). Return up to ``limit`` file ids to fetch, in order, or None to let the next
    plugin decide. The built-in default takes the first ``limit`` (the newest), like the seed.
    """


@hookspec(firstresult=True)
def treedrive_order_holders(
    node: Node, entry: CatalogEntry, holders: Sequence[PeerInfo]
) -> Sequence[PeerInfo] | None:
    """In which order to ask ``holders`` (tracked peers that hold ``entry``) for the file.

    Return the holders to try, best first, or None to let the next plugin decide. The default
    prefers TreeDrive peers, then the most recently seen.
    """


@hookspec(firstresult=True)
def treedrive_accept_file(node: Node, meta: FileMeta, peer_id: str | None) -> bool | None:
    """Whether to accept a file a peer pushes to us unasked (an unsolicited FILE_DATA).

    Return False to refuse it, True to accept, None to let the next plugin decide (default:
    accept). Verification against the id happens regardless.
    """


# -- gossip extension -------------------------------------------------------------------------
@hookspec
def treedrive_gossip_extra(node: Node, message_type: str) -> Mapping[str, Any] | None:
    """Extra top-level keys to put on a GOSSIP or GOSSIP_REPLY this node originates
    (``message_type`` says which). Classic peers ignore unknown keys. Return None for none. The
    key ``treedrive`` is the node's own: a plugin cannot set it."""


@hookspec
def treedrive_gossip_received(
    node: Node, message_type: str, peer_id: str, extra: Mapping[str, Any]
) -> Any:
    """A GOSSIP or GOSSIP_REPLY from ``peer_id`` carried the unknown top-level keys ``extra``
    (claims of a stranger: check them). May return an awaitable; it is scheduled."""


# -- registration -----------------------------------------------------------------------------
@hookspec
def treedrive_cli_commands() -> Sequence[Any] | None:
    """Extra ``click`` commands to add to the ``treedrive`` command group (a command whose name
    is taken already, built in or by an earlier plugin, is left out)."""
