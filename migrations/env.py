"""Alembic environment for fastapi-taskflow's own tables.

Two ways in:

* Command line, from the repository root: ``alembic upgrade head`` with the database URL in
  ``TASKFLOW_DATABASE_URL`` or given as ``alembic -x url=postgresql://... upgrade head``.
  Plain URLs (``sqlite:///tasks.db``, ``postgresql://``, ``mysql://``) are mapped to the
  async drivers; the upgrade runs under the same database lock as the library's start-up.
* From code: ``fastapi_taskflow.backends.sql.migrate(...)`` passes an open connection in
  ``config.attributes["connection"]`` (the Alembic cookbook's asyncio recipe). Nothing here
  touches the application's logging configuration in that case.

Only the library's tables are compared (``include_object``), the version table is
``taskflow_alembic_version``, and SQLite migrations run in batch mode.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from fastapi_taskflow.backends.sql.dialect import create_engine, migration_lock
from fastapi_taskflow.backends.sql.tables import TABLE_NAMES, VERSION_TABLE, UTCDateTime, metadata
from fastapi_taskflow.backends.sql.urls import make_async_url

config = context.config


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Compare only fastapi-taskflow's tables (and what belongs to them)."""
    if type_ == "table":
        return name in TABLE_NAMES
    table = getattr(obj, "table", None)
    return table is None or table.name in TABLE_NAMES


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Autogenerate writes UTCDateTime as plain SQLAlchemy types: revisions stay frozen."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        autogen_context.imports.add("from sqlalchemy.dialects import mysql")
        return 'sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")'
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_object=include_object,
        render_item=render_item,
        compare_type=True,
        **kwargs,
    )


def do_run_migrations(connection: Connection) -> None:
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def _database_url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("TASKFLOW_DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise SystemExit(
            "fastapi-taskflow migrations need a database URL: set TASKFLOW_DATABASE_URL or "
            "pass `alembic -x url=postgresql://user:pass@host/db upgrade head`"
        )
    return url


async def run_async_migrations() -> None:
    engine = create_engine(make_async_url(_database_url()), poolclass=NullPool)
    try:
        async with engine.connect() as connection, migration_lock(connection):
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    """``alembic upgrade head --sql``: print the SQL instead of running it."""
    url = make_async_url(_database_url())
    _configure(url=url, literal_binds=True, render_as_batch=url.get_backend_name() == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
        return
    if config.config_file_name is not None and config.attributes.get("configure_logger", True):
        from logging.config import fileConfig

        fileConfig(config.config_file_name, disable_existing_loggers=False)
    asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
