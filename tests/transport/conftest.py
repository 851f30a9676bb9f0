"""Fixtures of the TLS tests (test_secure.py, test_tlsstream.py): three nodes' TLS contexts, each
made from a fresh Ed25519 key, and a thread pool for the other end of a connection."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from treedrive.transport.secure import NodeTLS


def make_node() -> NodeTLS:
    return NodeTLS.from_private_key(Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def alice() -> NodeTLS:
    return make_node()


@pytest.fixture(scope="module")
def bob() -> NodeTLS:
    return make_node()


@pytest.fixture(scope="module")
def mallory() -> NodeTLS:
    """A node in the middle, with a key of its own."""
    return make_node()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as p:
        yield p
