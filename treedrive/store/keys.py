"""The node's own key in its data dir (``node.key``), and the pins of other peers' keys.

The key file is the node's identity between TreeDrive nodes: other nodes pin its peer id to it.
It is made once, at the first start, as PEM (PKCS #8, unencrypted: the data dir is private to its
owner), readable by the owner only, and never replaced: a file that cannot be read as a key stops
the node with a :class:`KeyFileError` that says what to do, because a node that quietly made
itself a new key would be refused by every peer that knew the old one.

The pins (``uow.keys``, :class:`KeyRepo`) are the ``peer_keys`` table: trust on first use, as in
:mod:`treedrive.core.pins`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from collections.abc import Collection
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from treedrive.core.errors import StorageError
from treedrive.core.identity import NodeKey
from treedrive.core.model import PeerKey
from treedrive.store.models import PinnedKey

log = logging.getLogger(__name__)

KEY_FILE = "node.key"
PRIVATE_FILE = 0o600
MAX_KEY_FILE = 16 * 1024
"""A key file larger than this is no key file of ours (an Ed25519 PEM is 119 bytes)."""


class KeyFileError(StorageError):
    """The node's key file exists but cannot be used: the node does not start (and the file is
    left as it is)."""


def key_path(data_dir: Path) -> Path:
    return data_dir / KEY_FILE


def load_or_create(data_dir: Path) -> NodeKey:
    """The node's key: read from ``node.key``, or made and written there if there is none."""
    path = key_path(data_dir)
    try:
        return load(path)
    except FileNotFoundError:
        pass
    key = NodeKey.generate()
    if not _create(path, pem(key)):
        return load(path)  # another process made it meanwhile: that one is the node's key
    log.debug("made the node's key %s (%s)", key.fingerprint, path)  # a start says 3 lines
    return key


def pem(key: NodeKey) -> bytes:
    return key.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def load(path: Path) -> NodeKey:
    """The key in ``path`` (FileNotFoundError: there is none). A mode that lets others read it
    is tightened to 0600 (one warning); anything else wrong is a :class:`KeyFileError`."""
    try:
        # O_NONBLOCK: a FIFO in its place must not hang the start (no effect on a file).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _unusable(path, exc.strerror or str(exc)) from exc
    try:
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise _unusable(path, "it is not a regular file")
            _tighten(path, f.fileno(), info.st_mode)
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise _unusable(path, exc.strerror or str(exc)) from exc
    if len(data) > MAX_KEY_FILE:
        raise _unusable(path, "it is far too large to be a key")
    try:
        private = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise _unusable(path, "it is not an unencrypted PEM private key") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise _unusable(path, "it is not an Ed25519 key")
    return NodeKey(private)


def _tighten(path: Path, fd: int, mode: int) -> None:
    if stat.S_IMODE(mode) & 0o077:
        os.fchmod(fd, PRIVATE_FILE)
        log.warning(
            "the node's key %s was readable by others (mode %o): made it private to the owner "
            "(%o); if others could read it, they can pose as this node",
            path,
            stat.S_IMODE(mode),
            PRIVATE_FILE,
        )


def _unusable(path: Path, why: str) -> KeyFileError:
    return KeyFileError(
        f"the node's key file {path} cannot be used: {why}. It holds this node's identity and is "
        "never replaced: restore it from a backup, or move it away to start with a new key "
        "(peers that pinned the old one then refuse this node until they forget its key)"
    )


def _create(path: Path, data: bytes) -> bool:
    """Write ``data`` as ``path`` all at once, never over an existing file: a temp file of its
    own (``mkstemp``: O_EXCL, 0600), synced, then linked in (``link`` fails if the name exists).
    False: ``path`` existed already. A disk error is a :class:`StorageError` and leaves no
    ``path``."""
    tmp: Path | None = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        _sync_dir(path.parent)
        return True
    except OSError as exc:
        raise StorageError(f"cannot write the node's key to {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- pins ---------------------------------------------------------------------------------------
def _peer_key(row: PinnedKey) -> PeerKey:
    return PeerKey(row.peer_id, bytes(row.public_key), row.first_seen, row.last_seen)


class KeyRepo:
    """The keys pinned to peer ids (trust on first use). Never commits."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, peer_id: str) -> PeerKey | None:
        row = self.s.get(PinnedKey, peer_id)
        return None if row is None else _peer_key(row)

    def pinned(self, peer_ids: Collection[str]) -> dict[str, bytes]:
        """The key pinned to each of ``peer_ids`` that has one (the owners of the records of
        one message: batched, a few statements for thousands)."""
        ids = list(dict.fromkeys(peer_ids))
        out: dict[str, bytes] = {}
        for i in range(0, len(ids), 500):
            q = select(PinnedKey.peer_id, PinnedKey.public_key).where(
                PinnedKey.peer_id.in_(ids[i : i + 500])
            )
            out.update({peer_id: bytes(key) for peer_id, key in self.s.execute(q)})
        return out

    def pin(self, peer_id: str, public_key: bytes, now: float) -> bool:
        """Pin ``peer_id`` to ``public_key`` unless it is pinned already. Whether it is now
        pinned to that key (False: to another one, which stays until :meth:`forget`)."""
        row = self.s.get(PinnedKey, peer_id)
        if row is None:
            self.s.add(
                PinnedKey(peer_id=peer_id, public_key=public_key, first_seen=now, last_seen=now)
            )
            return True
        return bytes(row.public_key) == public_key

    def touch(self, peer_id: str, now: float) -> None:
        """The pinned key signed again at ``now``."""
        row = self.s.get(PinnedKey, peer_id)
        if row is not None:
            row.last_seen = max(row.last_seen, now)

    def forget(self, peer_id: str) -> bool:
        """Drop the pin (the next signed message pins anew); whether there was one."""
        done = self.s.execute(delete(PinnedKey).where(PinnedKey.peer_id == peer_id))
        return bool(getattr(done, "rowcount", 0))

    def count(self) -> int:
        return int(self.s.scalar(select(func.count()).select_from(PinnedKey)) or 0)

    def all(self) -> list[PeerKey]:
        rows = self.s.scalars(select(PinnedKey).order_by(PinnedKey.peer_id))
        return [_peer_key(r) for r in rows]
