"""The fields of classic messages, each a claim with a limit (THREATS.md): typed, range-checked
values, or a :class:`WireError` saying what is wrong. Pure: no I/O. :mod:`wire` builds the
core's messages from these."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final

from treedrive.core.fileid import is_file_id
from treedrive.core.model import Timestamp
from treedrive.core.text import LABEL_CHARS, UNSHOWABLE, label

MAX_PEER_ID: Final = 256
"""Characters of a ``peerId``, ``from`` or ``file_owner``."""
MAX_HOST: Final = 255
"""Characters of a ``host`` (the longest DNS name)."""
MAX_GOSSIP_ID: Final = 128
"""Characters of a gossip ``id`` (a UUID4 is 36)."""
MAX_DOWNLOAD_ID: Final = 64
"""Characters of a ranged request's ``download`` (a run id)."""
MAX_FILE_NAME: Final = LABEL_CHARS
"""Characters kept of a ``file_name``."""
MAX_ID_DIGITS: Final = 32
"""Digits of an int accepted as an identifier (read as its text)."""
MAX_FILE_BYTES: Final = 2**50
"""Largest offset, length or size of a file, in bytes (1 PiB)."""
MAX_FILE_SIZE: Final = float(2**50)
"""Largest ``file_size`` (MB or bytes: peers differ; either way ``round(x * 2**20)`` is safe)."""
MAX_TIMESTAMP: Final = 2**40
"""Largest ``file_timestamp`` (Unix seconds: year 36812)."""
MAX_TIMESTAMP_TEXT: Final = 32
"""Characters of a ``file_timestamp`` sent as a string (``"Sun Jun 15 21:36:41 2025"`` is 24)."""
MAX_NUMBER_TEXT: Final = 32
"""Characters of a ``file_size`` sent as a string."""
MAX_RECORDS: Final = 10_000
"""Records of a GOSSIP_REPLY that are decoded; the rest count as skipped."""
MAX_GOSSIP_EXTRA_KEYS: Final = 32
"""Unknown keys of a GOSSIP (it is forwarded unchanged to 3 peers: an amplifier)."""
MAX_GOSSIP_BYTES: Final = 16 * 1024
"""A whole GOSSIP, as :func:`codec.encode_message` writes it when forwarding."""


_HOST: Final = re.compile(r"[A-Za-z0-9._:%-]+")
"""Host names (letters, digits, ``-``, ``_``, ``.``), IPv4 and IPv6 literals (``:``, ``%zone``)."""
_PORT_TEXT: Final = re.compile("[0-9]{1,5}")
"""A port as a string: ASCII digits only (`str.isdigit` takes "²", which int() refuses)."""


class WireError(ValueError):
    """A message that is valid JSON but not a valid protocol message."""


def preview(value: Any) -> str:
    """A short description of a bad value for an error message (never raises, never long)."""
    if isinstance(value, str):
        return repr(value[:40]) + ("…" if len(value) > 40 else "")
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        if value.bit_length() > 64:
            return f"an int of {value.bit_length()} bits"
        return repr(value)
    if isinstance(value, float):
        return repr(value)
    return f"a {type(value).__name__}"


def showable(text: str) -> bool:
    """True if ``text`` has no control character (C0, DEL, C1) and no lone surrogate."""
    return UNSHOWABLE.search(text) is None


def ident(obj: Mapping[str, Any], key: str, limit: int, *, numbers: bool = False) -> str:
    """An identifier: a non-empty showable string of at most ``limit`` chars (or a number)."""
    value = obj.get(key)
    if numbers and not isinstance(value, bool):
        if isinstance(value, int):
            if value.bit_length() > 4 * MAX_ID_DIGITS or len(str(abs(value))) > MAX_ID_DIGITS:
                raise WireError(f"{key!r} is a number with too many digits")
            value = str(value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise WireError(f"{key!r} is not a finite number")
            value = repr(value)
    if not isinstance(value, str) or not value:
        raise WireError(f"{key!r} must be a non-empty string, got {preview(value)}")
    if len(value) > limit:
        raise WireError(f"{key!r} is too long ({len(value)} chars, at most {limit})")
    if not showable(value):
        raise WireError(f"{key!r} holds a control character or a lone surrogate")
    return value


def host(obj: Mapping[str, Any]) -> str:
    value = obj.get("host")
    if not isinstance(value, str) or not value:
        raise WireError(f"'host' must be a non-empty string, got {preview(value)}")
    if len(value) > MAX_HOST:
        raise WireError(f"'host' is too long ({len(value)} chars, at most {MAX_HOST})")
    if _HOST.fullmatch(value) is None:
        raise WireError(f"'host' must be a host name or an IP address, got {preview(value)}")
    return value


def port(obj: Mapping[str, Any]) -> int:
    value: Any = obj.get("port")
    if isinstance(value, str) and _PORT_TEXT.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise WireError(f"'port' must be a port number, got {preview(value)}")
    return int(value)


def file_id(obj: Mapping[str, Any], key: str = "file_id") -> str:
    value = obj.get(key)
    if isinstance(value, str) and len(value) == 64:
        value = value.lower()
    if not is_file_id(value):
        raise WireError(f"{key!r} must be 64 hex characters, got {preview(value)}")
    assert isinstance(value, str)
    return str(value)


def file_name(value: Any) -> str:
    """The name as a label: unshowable characters replaced, cut to MAX_FILE_NAME chars."""
    if not isinstance(value, str):
        raise WireError(f"'file_name' must be a string, got {preview(value)}")
    return label(value)


def in_range(number: float, top: float) -> bool:
    return math.isfinite(number) and 0 <= number <= top


def size(value: Any) -> float:
    """``file_size`` as a float in 0..MAX_FILE_SIZE (missing: 0.0). WireError otherwise."""
    if value is None:
        return 0.0
    number: float
    if isinstance(value, bool):
        raise WireError("'file_size' must be a number, got a bool")
    if isinstance(value, int):
        if not 0 <= value <= MAX_FILE_BYTES:
            raise WireError(f"'file_size' is out of range, got {preview(value)}")
        number = float(value)
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str):
        if not 0 < len(value) <= MAX_NUMBER_TEXT or not value.isascii():
            raise WireError(f"'file_size' must be a number, got {preview(value)}")
        try:
            number = float(value)
        except ValueError:
            raise WireError(f"'file_size' must be a number, got {preview(value)}") from None
    else:
        raise WireError(f"'file_size' must be a number, got {preview(value)}")
    if not in_range(number, MAX_FILE_SIZE):
        raise WireError(f"'file_size' is out of range, got {preview(value)}")
    return float(number) + 0.0  # -0.0 reads as 0.0


def timestamp(value: Any) -> Timestamp:
    """``file_timestamp``: an int, a finite float or a short string, in 0..MAX_TIMESTAMP."""
    if value is None:
        raise WireError("'file_timestamp' is missing")
    if isinstance(value, bool):
        raise WireError("'file_timestamp' must be a number or a short string, got a bool")
    if isinstance(value, int):
        if 0 <= value <= MAX_TIMESTAMP:
            return int(value)
        raise WireError(f"'file_timestamp' is out of range, got {preview(value)}")
    if isinstance(value, float):
        if in_range(value, MAX_TIMESTAMP):
            return float(value) + 0.0
        raise WireError(f"'file_timestamp' is out of range, got {preview(value)}")
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TIMESTAMP_TEXT:
        raise WireError(
            f"'file_timestamp' must be a number or a short string, got {preview(value)}"
        )
    if not showable(value):
        raise WireError("'file_timestamp' holds a control character or a lone surrogate")
    try:
        number = float(value)
    except ValueError:
        return str(value)  # a date as text: kept as written (it is hashed as written)
    if not in_range(number, MAX_TIMESTAMP):
        raise WireError(f"'file_timestamp' is out of range, got {preview(value)}")
    return str(value)
