"""File names from the wire are untrusted: a name is never a path."""

from __future__ import annotations

import unicodedata

MAX_NAME_CHARS = 255


def safe_name(name: str, fallback: str = "file") -> str:
    """A display and save name with no path in it.

    Keeps the last path component, drops control characters (NUL included), and never returns
    ``""``, ``"."`` or ``".."``.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C")
    base = base.strip().lstrip(".") or fallback
    return base[:MAX_NAME_CHARS]
