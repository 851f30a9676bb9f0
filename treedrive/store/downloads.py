"""Resumable ranged downloads: what of each chunk is on disk, kept so that a restart continues
where the bytes stop (repositories never commit: the unit of work does)."""

from __future__ import annotations

import json

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from treedrive.core.model import DownloadState
from treedrive.store.models import Download


def _bitmap(chunks: frozenset[int] | set[int], count: int) -> bytes:
    out = bytearray((count + 7) // 8)
    for i in chunks:
        out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def _unbitmap(data: bytes) -> frozenset[int]:
    return frozenset(i for i in range(len(data) * 8) if data[i // 8] >> (i % 8) & 1)


def _partial_load(text: str | None) -> dict[int, int]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {
        int(k): v
        for k, v in value.items()
        if str(k).isdigit() and isinstance(v, int) and not isinstance(v, bool) and v > 0
    }


def _download_state(row: Download) -> DownloadState:
    return DownloadState(
        row.file_id, row.size, row.chunk_size, _unbitmap(row.done), _partial_load(row.partial)
    )


class DownloadRepo:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, file_id: str) -> DownloadState | None:
        row = self.s.get(Download, file_id)
        if row is None:
            return None
        return _download_state(row)

    def all(self) -> list[DownloadState]:
        return [_download_state(r) for r in self.s.scalars(select(Download))]

    def save(self, state: DownloadState, now: float) -> None:
        count = -(-state.size // state.chunk_size) if state.size else 0
        row = self.s.get(Download, state.file_id)
        if row is None:
            row = Download(file_id=state.file_id, started_at=now)
            self.s.add(row)
        row.size, row.chunk_size = state.size, state.chunk_size
        row.done = _bitmap(state.done, count)
        row.partial = json.dumps({str(c): n for c, n in sorted(state.partial.items()) if n > 0})
        row.updated_at = now

    def remove(self, file_id: str) -> None:
        self.s.execute(delete(Download).where(Download.file_id == file_id))
