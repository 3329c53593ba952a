"""Running the library's Alembic migrations from code, under a database-wide lock.

The scripts ship inside the wheel as ``fastapi_taskflow/_migrations``; in a source checkout
(editable install) they are the repository's ``migrations/`` directory. The version table
is ``taskflow_alembic_version``, so an application's own ``alembic_version`` is untouched.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from ..._errors import BackendError, ConfigurationError, SchemaOutdatedError
from .dialect import create_engine, migration_lock
from .tables import VERSION_TABLE
from .transaction import describe, translate
from .urls import make_async_url, require_driver

__all__ = ["current_revision", "ensure_schema", "head_revision", "migrate", "script_location"]


def script_location() -> Path:
    """The directory holding ``env.py`` and ``versions/``."""
    packaged = resources.files("fastapi_taskflow").joinpath("_migrations")
    if packaged.is_dir() and packaged.joinpath("env.py").is_file():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[3] / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    raise ConfigurationError(
        "fastapi-taskflow's migration scripts are missing: expected fastapi_taskflow/_migrations "
        f"(wheel) or {checkout} (source checkout); reinstall the package"
    )


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic :class:`Config` for the library's scripts; no ini file, no logging set-up."""
    config = Config()
    config.set_main_option("script_location", str(script_location()).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def head_revision() -> str:
    """The newest revision of the library's schema."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise ConfigurationError("fastapi-taskflow ships no migration revisions")
    return head


def _known_revisions() -> set[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return {rev.revision for rev in script.walk_revisions()}


def _current(conn: Connection) -> str | None:
    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or ``None`` before the first migration."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


def _upgrade(conn: Connection, revision: str) -> None:
    command.upgrade(alembic_config(conn), revision)


async def _migrate_engine(engine: AsyncEngine, revision: str) -> None:
    async with engine.connect() as conn, migration_lock(conn):
        await conn.run_sync(_upgrade, revision)
        await conn.commit()


async def migrate(url_or_engine: str | URL | AsyncEngine, *, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (default: the newest), under a database lock.

    Safe to run from several processes at once: PostgreSQL takes an advisory lock,
    MySQL/MariaDB ``GET_LOCK``, SQLite its write lock; the others wait, then find nothing
    to do. Equivalent to ``alembic upgrade head`` in the repository, or
    ``python -m fastapi_taskflow migrate --url URL``.
    """
    if isinstance(url_or_engine, AsyncEngine):
        engine, owned = url_or_engine, False
    else:
        url = make_async_url(url_or_engine)
        require_driver(url)
        engine, owned = create_engine(url), True
    try:
        await _migrate_engine(engine, revision)
    except CommandError as exc:
        raise ConfigurationError(
            f"cannot migrate {describe(engine)} to {revision!r}: {exc}"
        ) from exc
    except (SQLAlchemyError, OSError) as exc:
        raise translate(exc, f"migrating to {revision!r}", engine) from exc
    finally:
        if owned:
            await engine.dispose()


async def ensure_schema(engine: AsyncEngine, *, auto_migrate: bool) -> None:
    """Bring the schema to head (``auto_migrate``) or refuse to start when it is behind."""
    head = head_revision()
    try:
        current = await current_revision(engine)
    except (SQLAlchemyError, OSError) as exc:
        raise translate(exc, "connecting", engine) from exc
    if current == head:
        return
    if current is not None and current not in _known_revisions():
        raise BackendError(
            f"{describe(engine)} is at schema revision {current!r}, which this version of "
            f"fastapi-taskflow does not know (its newest is {head!r}): a newer version "
            "migrated it; upgrade fastapi-taskflow"
        )
    if not auto_migrate:
        url = engine.url.render_as_string(hide_password=True)
        raise SchemaOutdatedError(
            f"the fastapi-taskflow tables in {describe(engine)} are at revision "
            f"{current or 'none (not created yet)'}, but this version needs {head!r}, and "
            f"auto_migrate is off. Run `python -m fastapi_taskflow migrate --url {url}` "
            "(or `alembic upgrade head` with the alembic.ini of fastapi-taskflow and "
            "TASKFLOW_DATABASE_URL set), or pass auto_migrate=True"
        )
    await migrate(engine)
