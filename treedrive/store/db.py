"""The node's SQLite database: engine, pragmas, migrations at start, units of work (writes take
the write lock up front; reads take none)."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import ConnectionPoolEntry

from treedrive.core.errors import StorageError
from treedrive.core.identity import NodeKey
from treedrive.store import keys
from treedrive.store.blobs import BlobStore
from treedrive.store.uow import ReadOnlyUnitOfWork, UnitOfWork

# alembic logs a dozen INFO lines whenever it is imported or looks at a database (its plugins, its
# "context impl", each migration step): a node says in one line of its own when the schema
# changes (Store.upgrade), so only alembic's warnings and errors get through. Set before alembic
# is imported: its plugins log at import.
logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402

log = logging.getLogger(__name__)

DB_NAME = "treedrive.db"

READ_ONLY = "treedrive_read_only"
"""The execution option of the engine that read-only units of work use: their transactions begin
deferred (see ``make_engine``)."""


def create_private(path: Path) -> None:
    """Make ``path`` an empty owner-only (0600) file if it does not exist. SQLite takes an empty
    file as an empty database, and creates its ``-wal`` and ``-shm`` files with the database
    file's mode: created this way, none of them is ever readable by others."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)


def migrations_dir() -> Path:
    """Where the alembic environment is: inside the package when installed from a wheel, else the
    top-level ``migrations/`` of the source tree (an editable install)."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("the alembic migrations folder is missing from this installation")


def make_engine(db_path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{db_path}", future=True)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy's "begin" event below open transactions, not the sqlite3 module.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # WAL: readers never block the writer and a crash never corrupts committed pages.
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable across application crashes in WAL mode (only an OS crash can lose
        # the last transactions) and far faster than FULL.
        cur.execute("PRAGMA synchronous=NORMAL")
        # Holder rows must not outlive their file record.
        cur.execute("PRAGMA foreign_keys=ON")
        # A second process (`treedrive db …`) waits for the lock instead of failing at once.
        cur.execute("PRAGMA busy_timeout=5000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        if conn.get_execution_options().get(READ_ONLY):
            # A read takes no lock: deferred, its first SELECT fixes one consistent snapshot (WAL),
            # and neither writers nor other readers wait for it, nor it for them.
            conn.exec_driver_sql("BEGIN")
        else:
            # Take the write lock up front: a transaction that reads and then writes can never
            # fail half-way with SQLITE_BUSY on lock upgrade. One writer path.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def alembic_config(engine: Engine | None = None, url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url)
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


class Store:
    """One node's persistent state: the database file and the blob folder in ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.db_path = data_dir / DB_NAME
        create_private(self.db_path)
        self.engine = make_engine(self.db_path)
        self._reader = self.engine.execution_options(**{READ_ONLY: True})
        """The same engine (pool, pragmas, listeners) whose transactions begin deferred."""
        self.blobs = BlobStore(data_dir)
        self._key: NodeKey | None = None

    def node_key(self) -> NodeKey:
        """The node's key pair, from ``node.key`` (made at the first call if there is none; a
        file that cannot be used is a :class:`~treedrive.store.keys.KeyFileError`)."""
        if self._key is None:
            self._key = keys.load_or_create(self.data_dir)
        return self._key

    # -- schema -----------------------------------------------------------------------------
    def current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head_revision(self) -> str | None:
        return ScriptDirectory.from_config(alembic_config()).get_current_head()

    def upgrade(self) -> str | None:
        """Bring the schema to the newest revision, backing the database up first if it has one.
        Says so in one log line when it changed anything (nothing when the schema is current);
        returns that line (None: nothing to do)."""
        current = self.current_revision()
        head = self.head_revision()
        if current == head:
            return None
        backup = None
        if current is not None and self.db_path.exists():
            backup = self.db_path.with_name(f"{DB_NAME}.{current}.bak")
            create_private(backup)
            # closing(): a connection's own ``with`` ends a transaction, not the connection
            # (Python 3.13 warns of one left open)
            with (
                closing(sqlite3.connect(self.db_path)) as src,
                closing(sqlite3.connect(backup)) as dst,
            ):
                src.backup(dst)
        command.upgrade(alembic_config(self.engine), "head")
        if current is None:
            said = f"database created at {self.db_path} (schema {head})"
        else:
            said = f"database upgraded from {current} to {head} (backup at {backup})"
        log.info("%s", said)
        return said

    # -- work -------------------------------------------------------------------------------
    @contextmanager
    def unit_of_work(self) -> Iterator[UnitOfWork]:
        """A transaction: ``uow.commit()`` makes it durable; leaving without commit rolls back.
        It holds the write lock from its first statement until it ends."""
        with _storage_errors(), closing(UnitOfWork(self.engine)) as uow:
            yield uow

    @contextmanager
    def reading(self) -> Iterator[ReadOnlyUnitOfWork]:
        """A read-only transaction: no write lock, one consistent snapshot from its first read
        on; it never commits (``commit()`` raises) and publishes no events, and ends with a
        rollback. Never waits for a writer or another reader, nor makes them wait."""
        with _storage_errors(), closing(ReadOnlyUnitOfWork(self._reader)) as uow:
            yield uow

    def close(self) -> None:
        self.engine.dispose()


@contextmanager
def _storage_errors() -> Iterator[None]:
    """SQLite refusing for want of disk is the core's :class:`StorageError`."""
    try:
        yield
    except OperationalError as exc:
        if disk_refused(exc):
            raise StorageError(f"the database cannot write: {exc.orig}") from exc
        raise


SQLITE_FULL = 13
SQLITE_IOERR = 10


def disk_refused(exc: OperationalError) -> bool:
    """Whether SQLite refused a write for want of disk ("database or disk is full", an I/O
    error): this node's storage, which the core knows as a :class:`StorageError`."""
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return code in (SQLITE_FULL, SQLITE_IOERR) or "full" in str(exc.orig)
