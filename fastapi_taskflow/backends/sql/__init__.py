"""The SQL backend: one SQLAlchemy implementation for SQLite, PostgreSQL and MySQL/MariaDB.

``SqlBackend(url)`` picks the database from the URL scheme; ``SqliteBackend(path)``,
``PostgresBackend(url)`` and ``MySQLBackend(url)`` are the same backend tied to one
database. ``await migrate(url)`` does what ``alembic upgrade head`` does.
"""

from __future__ import annotations

from .backend import MySQLBackend, PostgresBackend, SqlBackend, SqliteBackend
from .migrate import current_revision, head_revision, migrate
from .repository import SqlHistoryRepository
from .urls import make_async_url

__all__ = [
    "MySQLBackend",
    "PostgresBackend",
    "SqlBackend",
    "SqlHistoryRepository",
    "SqliteBackend",
    "current_revision",
    "head_revision",
    "make_async_url",
    "migrate",
]
