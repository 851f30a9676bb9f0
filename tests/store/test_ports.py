"""The store is the core's port: a real :class:`~treedrive.store.Store` goes where
``core/ports.py`` asks for a :class:`~treedrive.core.ports.Store` (mypy --strict checks the
structure: the last test runs it on this module) and behaves as the port says."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from treedrive.core import ports
from treedrive.core.errors import VerificationError
from treedrive.core.events import FileAdvertised, FileStored
from treedrive.core.fileid import compute_file_id
from treedrive.core.model import DownloadState, FileMeta
from treedrive.store import Store

BODY = b"bytes held through the port"
TS = 1_700_000_000


def port_of(store: Store) -> ports.Store:
    """Where the structure is checked: a concrete store assigned to the core's port."""
    port: ports.Store = store
    return port


def sink_of(partial: ports.PartialFile) -> ports.FileSink:
    """A partial file goes wherever the transport asks for a sink."""
    return partial


@pytest.fixture
def port(tmp_path: Path) -> Iterator[ports.Store]:
    store = Store(tmp_path / "data")
    store.upgrade()
    p = port_of(store)
    yield p
    p.close()


def record(n: int, ts: int = TS) -> FileMeta:
    fid = hashlib.sha256(f"file-{n}".encode()).hexdigest()
    return FileMeta(fid, f"f{n}.txt", 0.5, "alice", ts)


def test_a_write_through_the_port_is_read_back_through_the_port(port: ports.Store) -> None:
    with port.unit_of_work() as uow:
        uow.identity.set("me", 1.0)
        peer, new = uow.peers.upsert("bob", "127.0.0.1", 9000, 1.0, frozenset({"raw"}))
        assert new
        assert uow.peers.evicted == []
        for meta, is_new in uow.files.advertise("bob", [record(1), record(2)], 1.0):
            uow.emit(FileAdvertised(meta, "bob", is_new))
        uow.tombstones.add(record(3).file_id, "alice", 1.0)
        tid = uow.transfers.start(record(1).file_id, "in", "bob", 10, 1.0)
        uow.transfers.progress(tid, 5, 2.0)
        uow.downloads.save(DownloadState(record(2).file_id, 100, 10, frozenset({0})), 2.0)
        events = uow.commit()
    assert [e.meta.file_id for e in events if isinstance(e, FileAdvertised)] == [
        record(1).file_id,
        record(2).file_id,
    ]
    assert uow.published == events
    with port.reading() as r:
        assert r.identity.get() == "me"
        assert r.peers.all() == [peer]
        assert r.peers.get("bob") == peer
        assert r.files.count("remote") == 2
        assert [e.holders for e in r.files.entries("both")] == [("bob",), ("bob",)]
        assert r.files.ids_with_prefix(record(1).file_id[:6]) == [record(1).file_id]
        assert r.tombstones.owners([record(3).file_id, record(1).file_id]) == {
            record(3).file_id: "alice"
        }
        assert r.tombstones.owner(record(1).file_id) is None
        [t] = r.transfers.recent()
        assert (t.id, t.direction, t.peer_id, t.state, t.bytes_done, t.bytes_total) == (
            tid,
            "in",
            "bob",
            "running",
            5,
            10,
        )
        saved = r.downloads.get(record(2).file_id)
        assert saved is not None
        assert saved.done == frozenset({0})
        assert [d.file_id for d in r.downloads.all()] == [record(2).file_id]


def test_expiry_and_forgetting_through_the_port(port: ports.Store) -> None:
    with port.unit_of_work() as uow:
        uow.peers.upsert("bob", "127.0.0.1", 9000, 1.0, None)
        uow.files.advertise("bob", [record(1), record(2)], 1.0)
        uow.files.remove_holder(record(2).file_id, "bob")
        assert uow.files.remove_orphans() == [record(2).file_id]
        assert uow.peers.expired(5.0) == ["bob"]
        uow.peers.remove(["bob"])
        assert uow.files.drop_untracked_holders() == 0
        assert uow.files.remove(record(1).file_id)
        tid = uow.transfers.start(record(1).file_id, "out", None, None, 1.0)
        uow.transfers.finish(tid, False, 0, 2.0, "gone", peer_id="carol")
        assert uow.transfers.abandon_running(3.0) == 0
        uow.downloads.remove(record(1).file_id)
        uow.commit()
    with port.reading() as r:
        assert r.files.count() == 0
        assert r.peers.all() == []
        [t] = r.transfers.recent(5)
        assert (t.state, t.error, t.peer_id) == ("failed", "gone", "carol")


def test_bytes_held_through_the_port(port: ports.Store) -> None:
    blobs = port.blobs
    fid = compute_file_id(BODY, TS)
    with blobs.writer() as w:
        sink_of(w).write(BODY)
        assert w.size == len(BODY)
        assert w.matches(fid, TS)
        assert w.content_id(TS) == fid
        assert w.commit(fid, TS) == blobs.path(fid)
    assert blobs.has(fid)
    assert blobs.size(fid) == len(BODY)
    assert blobs.ids() == {fid}
    meta = FileMeta(fid, "held.txt", len(BODY) / 2**20, "me", TS)
    with port.unit_of_work() as uow:
        uow.files.mark_local(meta, len(BODY), 1.0)
        uow.emit(FileStored(meta, len(BODY), "push"))
        uow.commit()
    with port.reading() as r:
        assert r.files.local_metas() == [meta]
        assert r.files.held_of_size(len(BODY)) == [meta]
        entry = r.files.get(fid)
        assert entry is not None
        assert entry.has_copy
    with port.unit_of_work() as uow:
        uow.files.unmark_local(fid)
        uow.commit()
    assert blobs.delete(fid)
    assert not blobs.has(fid)

    wrong = blobs.writer()
    wrong.write(b"other bytes")
    with pytest.raises(VerificationError):
        wrong.commit(fid, TS)
    assert not wrong.path.exists()


def test_a_ranged_partial_through_the_port(port: ports.Store) -> None:
    blobs = port.blobs
    fid = compute_file_id(BODY, TS)
    part = blobs.partial(fid, keep=False)
    part.resize(len(BODY))
    part.write_at(5, BODY[5:])
    part.write_at(0, BODY[:5])
    part.sync()
    h = part.follow(lambda pos: len(BODY) - pos, len(BODY))
    again = hashlib.sha256()
    part.hash_span(again, 0, len(BODY))
    assert h.hexdigest() == again.hexdigest() == hashlib.sha256(BODY).hexdigest()
    part.close()  # kept for a resume
    assert part.committed is None
    assert part.path == blobs.range_path(fid)
    assert blobs.clean_partials(keep=frozenset({fid})) == 0
    with blobs.partial(fid, keep=True) as resumed:
        assert resumed.adopt(fid) == blobs.path(fid)
        assert resumed.committed == blobs.path(fid)
    assert blobs.path(fid).read_bytes() == BODY


def test_the_store_is_the_port_under_mypy_strict() -> None:
    """mypy --strict accepts this module: the concrete store has every member of the port, with
    the same signatures (the package's own mypy run does not look at tests)."""
    api = pytest.importorskip("mypy.api")
    here = Path(__file__).resolve()
    config = here.parents[2] / "pyproject.toml"
    out, err, status = api.run(["--config-file", str(config), "--strict", str(here)])
    assert status == 0, out + err
