"""Fixtures of the interop tests: classic peers (tests/classic_peer.py) started for a test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.classic_peer import ClassicPeer


@pytest.fixture
def classic_peer() -> Iterator[Callable[..., ClassicPeer]]:
    """``classic_peer("bob", **switches)``: a started classic peer, stopped at the end of the
    test."""
    peers: list[ClassicPeer] = []

    def make(peer_id: str = "bob", **switches: Any) -> ClassicPeer:
        peer = ClassicPeer(peer_id, **switches).start()
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.stop()
