"""The store tests' fixture: a real SQLite file and blob folder in tmp_path, never a mock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from treedrive.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A store in tmp_path, upgraded to the head revision; closed at the end of the test."""
    s = Store(tmp_path / "data")
    s.upgrade()
    yield s
    s.close()
