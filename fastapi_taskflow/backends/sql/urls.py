"""Database URLs: plain ones mapped to the async driver, with errors that name the fix."""

from __future__ import annotations

import importlib.util

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ..._errors import ConfigurationError, MissingDriverError

ACCEPTED_FORMS = (
    "sqlite:///path/to/tasks.db, postgresql://user:pass@host/db, "
    "mysql://user:pass@host/db, mariadb://user:pass@host/db "
    "(or the explicit async forms sqlite+aiosqlite://, postgresql+asyncpg://, "
    "mysql+aiomysql://)"
)

# backend name in the URL -> (async driver name, driver module, pip extra)
_ASYNC_DRIVERS: dict[str, tuple[str, str, str | None]] = {
    "sqlite": ("sqlite+aiosqlite", "aiosqlite", None),
    "postgresql": ("postgresql+asyncpg", "asyncpg", "postgres"),
    "postgres": ("postgresql+asyncpg", "asyncpg", "postgres"),
    "mysql": ("mysql+aiomysql", "aiomysql", "mysql"),
    "mariadb": ("mysql+aiomysql", "aiomysql", "mysql"),
}


def _parse(url: str | URL) -> URL:
    if isinstance(url, URL):
        return url
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"database URL must be a non-empty string; use {ACCEPTED_FORMS}")
    try:
        return make_url(url.strip())
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(
            f"malformed database URL {_redact(url)!r}: {exc}. Use {ACCEPTED_FORMS}"
        ) from exc


def _redact(url: str) -> str:
    """The URL with any password hidden, for error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return url.split("@")[-1] if "@" in url else url


def make_async_url(url: str | URL) -> URL:
    """Map ``url`` to the async driver this library uses.

    ``sqlite:///x.db`` becomes ``sqlite+aiosqlite:///x.db``, ``postgresql://`` and
    ``postgres://`` become ``postgresql+asyncpg://``, ``mysql://`` and ``mariadb://``
    become ``mysql+aiomysql://`` with ``charset=utf8mb4`` added when absent. Explicit async
    URLs pass through. A sync driver, an unknown scheme or a malformed URL raises
    :class:`ConfigurationError` naming the accepted forms.
    """
    parsed = _parse(url)
    backend, _, driver = parsed.drivername.partition("+")
    entry = _ASYNC_DRIVERS.get(backend)
    if entry is None:
        hint = " (for Redis use RedisBackend)" if backend in ("redis", "rediss") else ""
        raise ConfigurationError(
            f"unsupported database URL scheme {parsed.drivername!r}{hint}; use {ACCEPTED_FORMS}"
        )
    async_name, module, _ = entry
    async_driver = async_name.partition("+")[2]
    if driver and driver != async_driver:
        raise ConfigurationError(
            f"database URL names the driver {parsed.drivername!r}, which is not supported: "
            f"fastapi-taskflow is async and uses {async_name!r} ({module}). "
            f"Write the URL as {async_name}://... or as plain {backend}://..."
        )
    mapped = parsed.set(drivername=async_name)
    if async_name.startswith("mysql") and "charset" not in mapped.query:
        mapped = mapped.update_query_dict({"charset": "utf8mb4"})
    return mapped


def require_driver(url: URL) -> None:
    """Raise :class:`MissingDriverError` naming the pip extra when the driver is absent."""
    backend = url.drivername.partition("+")[0]
    entry = _ASYNC_DRIVERS.get(backend)
    if entry is None:
        return
    _, module, extra = entry
    if importlib.util.find_spec(module) is not None:
        return
    install = (
        f'pip install "fastapi-taskflow[{extra}]"' if extra else "pip install fastapi-taskflow"
    )
    raise MissingDriverError(
        f"the {backend} backend needs the {module!r} driver, which is not installed: "
        f"run `{install}`"
    )


def is_memory_sqlite(url: URL) -> bool:
    """True for SQLite URLs naming an in-memory database."""
    if url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    return (
        database in ("", ":memory:")
        or "mode=memory" in database
        or (url.query.get("mode") == "memory")
    )
