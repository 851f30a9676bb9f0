"""A typed client of a running TreeDrive node's HTTP API, for scripts (the ``treedrive``
control commands use it too)::

    from treedrive.client import Client, NotFound

    client = Client.find(peer_id="alice")  # from its data dir; or Client(url, token)
    pushed = client.push("notes.txt")
    print(pushed["file_id"], client.status()["counts"])
    with client.events(types={"FileStored"}) as stream:
        for event in stream:
            print(event.type, event.data["file_id"])

Values are the API's JSON, typed (:mod:`treedrive.client.types`); every failure is a
:class:`TreeDriveError` (:mod:`treedrive.client.errors`) whose message is one line for a user.
It uses only the standard library (quick to import, no event loop): call it from a thread
(``asyncio.to_thread``) inside async code."""

from treedrive.client.api import KEEP, Client
from treedrive.client.errors import (
    ApiError,
    AuthError,
    BadNodeAddress,
    BadRequest,
    CannotReadThere,
    Conflict,
    FetchFailed,
    Forbidden,
    InsufficientStorage,
    LocalFileError,
    NodeNotRunning,
    NodeUnreachable,
    NotFound,
    ProtocolError,
    ServerError,
    TooLarge,
    TreeDriveError,
)
from treedrive.client.events import EventStream, NodeEvent
from treedrive.client.http import Progress
from treedrive.client.types import (
    Deleted,
    FileRecord,
    FilesPage,
    Health,
    KeyForgotten,
    Limits,
    PastTransfer,
    Peer,
    PushResult,
    Scope,
    Status,
    ThroughputSample,
    Transfer,
    Transfers,
)

__all__ = [
    "KEEP",
    "ApiError",
    "AuthError",
    "BadNodeAddress",
    "BadRequest",
    "CannotReadThere",
    "Client",
    "Conflict",
    "Deleted",
    "EventStream",
    "FetchFailed",
    "FileRecord",
    "FilesPage",
    "Forbidden",
    "Health",
    "InsufficientStorage",
    "KeyForgotten",
    "Limits",
    "LocalFileError",
    "NodeEvent",
    "NodeNotRunning",
    "NodeUnreachable",
    "NotFound",
    "PastTransfer",
    "Peer",
    "Progress",
    "ProtocolError",
    "PushResult",
    "Scope",
    "ServerError",
    "Status",
    "ThroughputSample",
    "TooLarge",
    "Transfer",
    "Transfers",
    "TreeDriveError",
]
