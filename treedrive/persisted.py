"""Settings changed while a node runs (through the API) and kept for its next start.

``PUT /api/limits`` writes the rate limits to ``limits.json`` in the data dir (0600, replaced
atomically); ``treedrive run`` reads it at start. Precedence of a rate limit at start: an option on
the command line, then its ``TREEDRIVE_*`` variable, then ``limits.json`` (the last change made
through the API), then the config file, then the default (no limit).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LIMITS_FILE = "limits.json"

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Bytes per second for all downloads and all uploads together; None: no limit."""

    download: float | None = None
    upload: float | None = None


def save_limits(data_dir: Path, limits: RateLimits) -> None:
    """Keep ``limits`` for the node's next start (written whole or not at all)."""
    path = data_dir / LIMITS_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"download": limits.download, "upload": limits.upload}, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def keep_limits(data_dir: Path, download: float | None, upload: float | None) -> None:
    """:func:`save_limits`, for the API: a failure (a full disk) is one log line; the limits
    still hold until the node stops."""
    try:
        save_limits(data_dir, RateLimits(download, upload))
    except OSError as exc:
        log.warning("the rate limits are not kept for the next start: %s", exc)


def load_limits(data_dir: Path) -> RateLimits | None:
    """The limits kept by :func:`save_limits`; None when there are none (or the file is not one
    this module wrote: said in one log line, and ignored)."""
    path = data_dir / LIMITS_FILE
    try:
        raw: Any = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s ignored: %s", path, exc)
        return None
    if not isinstance(raw, dict) or not all(_rate(raw.get(k)) for k in ("download", "upload")):
        log.warning('%s ignored: not {"download": bytes/s or null, "upload": ...}', path)
        return None
    return RateLimits(raw.get("download") or None, raw.get("upload") or None)


def _rate(value: Any) -> bool:
    if value is None:
        return True
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value) and value >= 0
