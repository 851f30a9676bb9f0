"""Persistence: the SQLite catalogue (SQLAlchemy 2, alembic) and the content-addressed blobs."""

from treedrive.store.blobs import BlobStore, BlobWriter, VerificationError
from treedrive.store.db import Store

__all__ = ["BlobStore", "BlobWriter", "Store", "VerificationError"]
