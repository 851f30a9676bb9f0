"""Typed SQLAlchemy 2 models of what a node persists.

The schema is owned by the alembic migrations in the top-level ``migrations/`` folder; a test
(``alembic check``) keeps these models and the migrations from drifting apart.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Identity(Base):
    """The node's own identity: exactly one row (id = 1)."""

    __tablename__ = "identity"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    peer_id: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[float] = mapped_column(Float)


class Peer(Base):
    """A tracked peer: someone we heard from (GOSSIP or GOSSIP_REPLY) and can dial."""

    __tablename__ = "peers"

    peer_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    host: Mapped[str] = mapped_column(String(256))
    port: Mapped[int] = mapped_column(Integer)
    last_seen: Mapped[float] = mapped_column(Float, index=True)
    first_seen: Mapped[float] = mapped_column(Float)
    # TreeDrive extension: the features the peer advertised (space-separated), or None for a
    # classic peer.
    features: Mapped[str | None] = mapped_column(Text, default=None)


class PinnedKey(Base):
    """The public key a peer id is pinned to (trust on first use): a later message claiming the
    peer id with another key is refused until the user forgets the pin."""

    __tablename__ = "peer_keys"

    peer_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)


class FileRecord(Base):
    """A file of the replicated catalogue, local or remote."""

    __tablename__ = "files"
    # The catalogue is listed newest first (a page at a time): these serve the order with no sort.
    __table_args__ = (
        Index("ix_files_order", "timestamp_value", "file_id"),
        Index("ix_files_scope_order", "has_copy", "timestamp_value", "file_id"),
    )

    file_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    file_name: Mapped[str] = mapped_column(Text)
    # The size as the wire carried it (MB as a float in the reference peers; informational only).
    file_size: Mapped[float] = mapped_column(Float)
    # The real size in bytes, known once we hold the file.
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    file_owner: Mapped[str] = mapped_column(Text, index=True)
    # The timestamp exactly as received, as JSON text (int, float or even a string on the wire).
    file_timestamp: Mapped[str] = mapped_column(Text)
    # The timestamp as a number for ordering ("replace if greater"); 0 when not numeric.
    timestamp_value: Mapped[float] = mapped_column(Float)
    has_copy: Mapped[bool] = mapped_column(Boolean, default=False)
    added_at: Mapped[float] = mapped_column(Float)
    # The owner's seal (PROTOCOL.md 2.8): its raw public key and its signature of the record's
    # five fields as stored here; both None for an unsealed record. A sealed record never
    # changes (a fact that contradicts it drops the seal instead).
    owner_key: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    seal: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)

    holders: Mapped[list[Holder]] = relationship(
        back_populates="file", cascade="all, delete-orphan", passive_deletes=True
    )


class Holder(Base):
    """Peer ``peer_id`` holds a copy of ``file_id`` (as far as we know)."""

    __tablename__ = "holders"

    file_id: Mapped[str] = mapped_column(
        ForeignKey("files.file_id", ondelete="CASCADE"), primary_key=True
    )
    peer_id: Mapped[str] = mapped_column(String(256), primary_key=True, index=True)
    since: Mapped[float] = mapped_column(Float)
    # Learnt from the peer's own ANNOUNCE (or a fetch from it that verified): it stays while the
    # peer is tracked, whatever its GOSSIP_REPLYs list (some classic peers list their files
    # under other ids than they announced). Only "not here", a DELETE or expiry remove it.
    announced: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    file: Mapped[FileRecord] = relationship(back_populates="holders")


class Tombstone(Base):
    """A file its owner deleted: stale gossip about it must not bring it back."""

    __tablename__ = "tombstones"

    file_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    file_owner: Mapped[str] = mapped_column(Text)
    deleted_at: Mapped[float] = mapped_column(Float)
    # The owner's signature of its DELETE (PROTOCOL.md 2.8), relayed with it: both None for a
    # classic DELETE.
    delete_ts: Mapped[int | None] = mapped_column(BigInteger, default=None)
    delete_sig: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)


class Transfer(Base):
    """A download or upload the node is doing (or did): progress survives a restart."""

    __tablename__ = "transfers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    file_id: Mapped[str] = mapped_column(String(64), index=True)
    direction: Mapped[str] = mapped_column(String(8))  # "in" | "out"
    peer_id: Mapped[str | None] = mapped_column(String(256), default=None)
    state: Mapped[str] = mapped_column(String(16), index=True)  # running|done|failed
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int | None] = mapped_column(BigInteger, default=None)
    started_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text, default=None)


class Download(Base):
    """A ranged download in progress: which chunks of the partial file are on disk for good.

    A chunk is recorded only after the partial file was synced, so after a crash the node
    re-fetches at most what arrived since the last sync: each chunk is written front to back, so
    a chunk still arriving at a sync is recorded by how many of its first bytes are on disk.
    """

    __tablename__ = "downloads"

    file_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    chunk_size: Mapped[int] = mapped_column(Integer)
    # Indexes of the chunks that are on disk, as a bitmap (bit i of byte i // 8).
    done: Mapped[bytes] = mapped_column(LargeBinary)
    # Chunks partly on disk: JSON {"index": bytes from the chunk's start}.
    partial: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    started_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
