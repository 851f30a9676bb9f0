"""Errors the node's commands raise, each with a message meant for the user."""


class NodeError(Exception):
    """A command could not be done; ``str(error)`` says why."""


class NotFound(NodeError):
    pass


class AmbiguousId(NodeError):
    """A short file id that more than one file's id starts with."""


class NotOwner(NodeError):
    pass


class FetchFailed(NodeError):
    pass


class StorageError(NodeError):
    """This node could not write a file to its own disk (full, read-only, over a size limit).
    Not the fault of any peer: a download that meets it stops, keeping what it has."""


class TransferError(Exception):
    """A transfer with one peer failed (connection, timeout, malformed answer)."""


class ClassicAnswer(TransferError):
    """A peer answered a ranged request the classic way (it does not speak the extension)."""


class VerificationError(Exception):
    """The bytes received do not hash to the id they were sent under."""
