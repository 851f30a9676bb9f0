"""Strings from strangers, made safe to print to a terminal.

A peer chooses its ``peerId``, ``host``, file names and owners. Printed raw, an ESC starts a
terminal control sequence (retitle the window, move the cursor, hide or rewrite lines), a BEL
rings, a carriage return overwrites what is on the line. :func:`printable` shows every such
character as a visible escape instead (``\\x1b``, ``\\x07``, ``\\u202e``), so what is printed is
exactly what was said and nothing more.
"""

from __future__ import annotations

import re

# C0 controls, DEL and C1 controls; lone surrogates (a str from JSON or surrogateescape can hold
# them, and encoding one for the terminal fails); the line and paragraph separators; the bidi
# embeddings, overrides and isolates that make text display in another order than it is.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")


LABEL_CHARS = 4096
"""Characters of a label (a file name) kept from the wire."""
UNSHOWABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""Control characters (C0, DEL, C1) and lone surrogates: never printed, never stored."""


def label(value: str) -> str:
    """A name as every node reads it from the wire (PROTOCOL.md 1.2): control characters and
    lone surrogates replaced by U+FFFD, cut to :data:`LABEL_CHARS` characters. An owner seals
    this form of its file's name, so that others rebuild what it signed."""
    return UNSHOWABLE.sub("\ufffd", value[:LABEL_CHARS])


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object) -> str:
    """``str(value)`` with control characters, lone surrogates and bidi controls escaped."""
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_escape, text)


def printable_lines(text: str) -> str:
    """Like :func:`printable`, but keeps the line breaks (``\\n``) of a multi-line text."""
    return "\n".join(printable(line) for line in text.split("\n"))


UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_size(n: float | None) -> str:
    """Bytes as a person reads them: ``512 B``, ``1.5 KiB``, ``600.0 MiB``; ``None`` → ``?``."""
    if n is None:
        return "?"
    value = float(n)
    for unit in UNITS[:-1]:
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} {UNITS[-1]}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; every cell shown with its control characters
    escaped (a peer id with an ESC in it is printed as ``\\x1b``, never sent raw)."""
    headers = [printable(h) for h in headers]
    rows = [[printable(c) for c in r] for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)
