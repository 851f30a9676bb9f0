"""What :mod:`treedrive.client` raises: one :class:`TreeDriveError` family, each error with the
one line a user should read (``str(exc)``, ``exc.message``). An error answer of the node is an
:class:`ApiError` whose subclass says its kind and whose message is the node's own.

Messages may quote what a peer said (a file's name, a peer id): they are not escaped here;
escape them before printing to a terminal (``treedrive.core.text.printable``)."""

from __future__ import annotations

import json


class TreeDriveError(Exception):
    """Anything the client reports."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadNodeAddress(TreeDriveError, ValueError):
    """A node address that is no HTTP(S) URL (nor ``host:port``)."""

    def __init__(self, given: str) -> None:
        self.given = given
        super().__init__(
            f"{given.strip()[:200]!r} is not a node's address: give its HTTP URL, "
            f"e.g. {URL_FORM} (or host:port)"
        )


class NodeNotRunning(TreeDriveError):
    """No running node where it was looked for (its data dir), or one without its web API."""


class NodeUnreachable(TreeDriveError):
    """The node's address did not answer (refused, reset, timed out) or hung up mid-answer."""

    def __init__(self, url: str, reason: object) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot reach the node at {url} ({reason}); is it running?")


class ProtocolError(TreeDriveError):
    """An answer that is not what the API says (not JSON, a broken event stream)."""


class LocalFileError(TreeDriveError):
    """A file on this machine that a push reads or a download writes failed."""


class ApiError(TreeDriveError):
    """The node refused the request: ``status`` is the HTTP status, the message the node's."""

    status: int

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BadRequest(ApiError):
    """400: a value the node does not take (a bad scope, name or limit)."""


class AuthError(ApiError):
    """401: the request needs the node's API token, or the token given is wrong."""


class Forbidden(ApiError):
    """403: not allowed (another owner's file; a foreign ``Host`` or ``Origin``; a push by path
    from elsewhere than the node's machine and user)."""


class NotFound(ApiError):
    """404: no such file (or prefix), no key pinned to that peer, no copy held here."""


class Conflict(ApiError):
    """409: an id prefix that several files start with (the message lists them)."""


class TooLarge(ApiError):
    """413: an upload over the node's cap."""


class CannotReadThere(ApiError):
    """422: the node cannot read the file at the path it was given (a push by path: not there
    for it, no permission, another file there); its bytes can be sent instead."""


class FetchFailed(ApiError):
    """502: no holder could give the file."""


class InsufficientStorage(ApiError):
    """507: the node's disk cannot take it."""


class ServerError(ApiError):
    """Another 5xx: the node failed (its log says why)."""


URL_FORM = "http://127.0.0.1:8280/"

_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: AuthError,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    422: CannotReadThere,
    502: FetchFailed,
    507: InsufficientStorage,
}


def api_error(status: int, reason: str, body: bytes) -> ApiError:
    """The error for a refused request: the node's JSON ``error``, else ``status reason``."""
    try:
        message = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        message = f"{status} {reason}"
    if not isinstance(message, str):
        message = str(message)
    kind = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    return kind(status, message)
