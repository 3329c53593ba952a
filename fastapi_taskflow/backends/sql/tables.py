"""The one definition of the library's tables. Alembic's ``0001_initial`` mirrors it.

``taskflow_history`` holds completed tasks (one column per :class:`TaskRecord` field),
``taskflow_history_tags`` indexes their tags for filtering, and ``taskflow_pending`` keeps
unfinished tasks for requeue. Names are prefixed so they sit beside an application's own.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from pydantic import TypeAdapter
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect

from ..._models import TAG_KEY_LENGTH as TAG_KEY_LENGTH  # checked at add_task
from ..._models import TAG_VALUE_LENGTH as TAG_VALUE_LENGTH

HISTORY = "taskflow_history"
HISTORY_TAGS = "taskflow_history_tags"
PENDING = "taskflow_pending"
VERSION_TABLE = "taskflow_alembic_version"
TABLE_NAMES = frozenset({HISTORY, HISTORY_TAGS, PENDING})

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# MySQL/MariaDB: utf8mb4 everywhere, and binary collation so ids, names and tag keys compare
# exactly as on PostgreSQL and SQLite ("Env" and "env" are two tags, not a key clash).
MYSQL_TABLE_OPTIONS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}

_MYSQL = ("mysql", "mariadb")


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp stored in UTC and read back as a timezone-aware UTC ``datetime``.

    PostgreSQL: ``TIMESTAMP WITH TIME ZONE``. MySQL/MariaDB: ``DATETIME(6)`` holding UTC.
    SQLite: ISO text ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC, which sorts chronologically.
    Naive values are taken to be UTC already.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in _MYSQL:
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any]:
        # Overridden whole (not process_bind_param) to keep bulk writes cheap.
        if dialect.name == "postgresql":
            return _to_aware_utc
        if dialect.name == "sqlite":
            return utc_text
        return _to_naive_utc

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any]:
        if dialect.name == "sqlite":
            return _from_sqlite_text
        return _from_driver

    def bulk_processor(self, dialect: Dialect) -> Callable[[list[datetime | None]], list[Any]]:
        """Like :meth:`bind_processor`, for a whole list of values at once (bulk writes)."""
        if dialect.name == "sqlite" or dialect.name in _MYSQL:
            # MySQL/MariaDB take this text (naive UTC) for DATETIME(6) as well, and it is
            # much cheaper for the driver than a datetime.
            return _to_sqlite_texts
        one = self.bind_processor(dialect)
        return lambda values: [one(value) for value in values]


def _to_aware_utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is UTC:
        return value
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _to_naive_utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is None:
        return value
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None)


def utc_text(value: datetime | None) -> str | None:
    """``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC (naive values taken as UTC): how SQLite stores
    a timestamp, and a literal MySQL/MariaDB take for ``DATETIME(6)``."""
    if value is None:
        return None
    if value.tzinfo is UTC:  # the common case, kept cheap for bulk writes
        return value.isoformat(" ", "microseconds")[:26]
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")


_DATETIMES: TypeAdapter[list[datetime | None]] = TypeAdapter(list[datetime | None])


def _to_sqlite_texts(values: list[datetime | None]) -> list[str | None]:
    # pydantic-core formats the batch in Rust ("2024-05-01T12:00:00.123456Z"); reshaping
    # that string is much cheaper than datetime.isoformat per value in Python.
    isos: list[str | None] = _DATETIMES.dump_python(values, mode="json")
    return [
        None
        if iso is None
        else iso[:10] + " " + iso[11:26]
        if len(iso) == 27 and iso[26] == "Z"
        else utc_text(value)
        for iso, value in zip(isos, values, strict=True)
    ]


def _from_sqlite_text(value: str | datetime | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return _to_aware_utc(value)


def _from_driver(value: datetime | None) -> datetime | None:
    return _to_aware_utc(value)


def _long_text() -> sa.types.TypeEngine[str]:
    """TEXT, but MEDIUMTEXT on MySQL where TEXT stops at 64 KiB (stack traces can be long)."""
    return sa.Text().with_variant(mysql.MEDIUMTEXT(), *_MYSQL)


metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

history = sa.Table(
    HISTORY,
    metadata,
    sa.Column("task_id", sa.String(64), primary_key=True),
    sa.Column("func_name", sa.String(255), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("args", sa.JSON(), nullable=False),
    sa.Column("kwargs", sa.JSON(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("start_time", UTCDateTime(), nullable=True),
    sa.Column("end_time", UTCDateTime(), nullable=True),
    sa.Column("duration", sa.Double(), nullable=True),
    sa.Column("retries_used", sa.Integer(), nullable=False),
    sa.Column("error", _long_text(), nullable=True),
    sa.Column("stacktrace", _long_text(), nullable=True),
    sa.Column("logs", sa.JSON(), nullable=False),
    sa.Column("attempts", sa.JSON(), nullable=False),
    sa.Column("tags", sa.JSON(), nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=True),
    sa.Column("source", sa.String(255), nullable=False),
    sa.Column("priority", sa.Integer(), nullable=True),
    sa.Column("queue", sa.String(128), nullable=False),
    sa.Column("retry_of", sa.String(64), nullable=True),
    sa.Column("instance_id", sa.String(255), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    # Every index ends in (created_at, task_id): newest-first keyset pages read one range.
    sa.Index("ix_taskflow_history_created", "created_at", "task_id"),
    sa.Index("ix_taskflow_history_status_created", "status", "created_at", "task_id"),
    sa.Index("ix_taskflow_history_func_created", "func_name", "created_at", "task_id"),
    sa.Index(
        "ix_taskflow_history_status_func_created", "status", "func_name", "created_at", "task_id"
    ),
    sa.Index("ix_taskflow_history_queue_created", "queue", "created_at", "task_id"),
    **MYSQL_TABLE_OPTIONS,
)

history_tags = sa.Table(
    HISTORY_TAGS,
    metadata,
    sa.Column("task_id", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(TAG_KEY_LENGTH), primary_key=True),
    sa.Column("value", sa.String(TAG_VALUE_LENGTH), nullable=False),
    # The task's created_at, copied so a tag filter reads its newest matches off the index.
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Index("ix_taskflow_history_tags_lookup", "key", "value", "created_at", "task_id"),
    **MYSQL_TABLE_OPTIONS,
)

pending = sa.Table(
    PENDING,
    metadata,
    sa.Column("task_id", sa.String(64), primary_key=True),
    sa.Column("func_name", sa.String(255), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("record", sa.JSON(), nullable=False),
    sa.Column("claimed_by", sa.String(64), nullable=True),
    sa.Column("lease_until", UTCDateTime(), nullable=True),
    # The task's status (the document's own may be older: a running mark sets this alone).
    sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Index("ix_taskflow_pending_created", "created_at", "task_id"),
    **MYSQL_TABLE_OPTIONS,
)
