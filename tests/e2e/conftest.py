"""Fixtures of the end-to-end tests: node processes driven through their shell, and a classic
peer's listening side (see helpers.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.conftest import NodeProcess
from tests.e2e.helpers import Listener, Shells


@pytest.fixture
def shells(node_process: Callable[..., NodeProcess]) -> Iterator[Shells]:
    made = Shells(node_process)
    yield made
    made.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()
