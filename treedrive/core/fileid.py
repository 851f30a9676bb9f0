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
    tried as written and, if it reads as a number, as that number's integer part too.
    """
    if isinstance(ts, bool):
        return []
    if isinstance(ts, int):
        return [str(ts).encode()]
    if isinstance(ts, float):
        return [str(int(ts)).encode()] if math.isfinite(ts) else []
    out = [ts.encode("utf-8", "surrogatepass")]
    try:
        as_number = float(ts)
    except ValueError:
        return out
    if math.isfinite(as_number):
        out.append(str(int(as_number)).encode())
    return out


def timestamp_value(ts: Timestamp) -> float:
    """A number to order timestamps by; 0.0 when the timestamp is not a number."""
    if isinstance(ts, bool):
        return 0.0
    if isinstance(ts, int | float):
        return float(ts) if math.isfinite(ts) else 0.0
    try:
        value = float(ts)
    except ValueError:
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
