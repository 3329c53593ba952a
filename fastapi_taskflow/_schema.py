"""The public entry point for schema upgrades (the SQL backend's Alembic migrations)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import URL
    from sqlalchemy.ext.asyncio import AsyncEngine


async def migrate(url_or_engine: str | URL | AsyncEngine, *, revision: str = "head") -> None:
    """Upgrade fastapi-taskflow's tables in a SQL database to ``revision`` (newest by default).

    Does what ``alembic upgrade head`` or ``python -m fastapi_taskflow migrate --url URL``
    does, under a database lock, so it is safe while other instances start. Accepts a URL
    (plain or async-driver form) or an ``AsyncEngine``.
    """
    from .backends.sql.migrate import migrate as upgrade

    await upgrade(url_or_engine, revision=revision)
