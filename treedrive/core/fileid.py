"""The file id (PROTOCOL.md 1.9): ``sha256(file_bytes + str(int(file_timestamp)))``."""

from __future__ import annotations

import hashlib
import math
import re

from treedrive.core.model import Timestamp

FILE_ID_RE = re.compile(r"[0-9a-f]{64}")


def timestamp_suffixes(ts: Timestamp) -> list[bytes]:
    """The byte strings a peer may have appended to the file's bytes when it made the id.

    Numbers hash as their integer part (``1750028734.0`` hashes as ``b"1750028734"``). A string is
    tried as written and, if it reads as a number, as that number's integer part too. Total: a
    value that cannot be written (a non-finite float, an int too long for ``str``) gives fewer
    suffixes, never an exception.
    """
    if isinstance(ts, bool):
        return []
    if isinstance(ts, int):
        return _int_text(int(ts))
    if isinstance(ts, float):
        return _int_text(int(ts)) if math.isfinite(ts) else []
    if not isinstance(ts, str):
        return []
    out = [ts.encode("utf-8", "surrogatepass")]
    try:
        as_number = float(ts)
    except (ValueError, OverflowError):
        return out
    if math.isfinite(as_number):
        out.extend(_int_text(int(as_number)))
    return out


def _int_text(value: int) -> list[bytes]:
    try:
        return [str(value).encode()]
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        return []


def timestamp_value(ts: Timestamp) -> float:
    """A number to order timestamps by; 0.0 when the timestamp is not a (finite) number.

    Total: never raises, whatever the value (an int too big for a float reads as 0.0 too).
    """
    if isinstance(ts, bool):
        return 0.0
    try:
        value = float(ts)
    except (ValueError, OverflowError, TypeError):
        return 0.0
    return value if math.isfinite(value) else 0.0


def matches(content_hash: hashlib._Hash, ts: Timestamp, file_id: str) -> bool:
    """Whether ``content_hash`` (sha256 fed the file's bytes) plus ``ts`` gives ``file_id``."""
    for suffix in timestamp_suffixes(ts):
        h = content_hash.copy()
        h.update(suffix)
        if h.hexdigest() == file_id:
            return True
    return False


def compute_file_id(data: bytes, ts: int) -> str:
    """The id of a small in-memory file (tests, examples)."""
    return hashlib.sha256(data + str(ts).encode()).hexdigest()


def is_file_id(value: object) -> bool:
    return isinstance(value, str) and FILE_ID_RE.fullmatch(value) is not None
