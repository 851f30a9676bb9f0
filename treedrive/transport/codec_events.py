"""The events, errors and limits of the classic-framing codec (:mod:`treedrive.transport.codec`).

This module does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "NEED_DATA",
    "CodecError",
    "DataChunk",
    "Event",
    "Limits",
    "Message",
    "NeedData",
    "ProtocolError",
]


class NeedData:
    """Sentinel type: the parser needs more input (or EOF) before it can produce an event."""

    __slots__ = ()
    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


@dataclass(frozen=True, slots=True)
class DataChunk:
    """Decoded raw bytes of the ``"data"`` hex string, in order."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Message:
    """The complete object.

    ``fields["data"]`` is ``True`` when ``"data"`` was a hex string (its bytes were delivered as
    :class:`DataChunk` events, possibly none for ``""``), ``None`` when it was JSON ``null``, and
    absent when the key was absent. Every other key holds its ``json.loads`` value.
    """

    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The input is not a valid message. Terminal: the parser keeps returning this same error."""

    reason: str


Event = DataChunk | Message | ProtocolError | NeedData


class CodecError(ValueError):
    """Raised by :func:`parse_one` when the input is not exactly one complete valid message."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits for one message.

    ``max_control_bytes`` counts every byte of the object except the hex content of ``"data"``
    (whitespace included), so it also bounds a big ``GOSSIP_REPLY``. ``max_key_bytes`` is the raw
    (still escaped) length of one key. ``max_depth`` counts the top-level object as 1.
    ``max_data_bytes`` bounds the decoded length of ``"data"`` (``None``: unlimited).
    """

    max_control_bytes: int = 8 * 1024 * 1024
    max_key_bytes: int = 1024
    max_depth: int = 32
    max_data_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_control_bytes < 2:
            raise ValueError("max_control_bytes must be at least 2")
        if self.max_key_bytes < 1:
            raise ValueError("max_key_bytes must be at least 1")
        if self.max_depth < 1:
            raise ValueError("max_depth must be at least 1")
        if self.max_data_bytes is not None and self.max_data_bytes < 0:
            raise ValueError("max_data_bytes must be >= 0 or None")
