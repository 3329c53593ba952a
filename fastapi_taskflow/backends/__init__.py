"""Storage backends. Imported lazily: a backend's driver is needed only when it is used."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import HistoryRepository, SnapshotBackend
from .memory import MemoryBackend

if TYPE_CHECKING:
    from .redis import RedisBackend
    from .sql import MySQLBackend, PostgresBackend, SqlBackend, SqliteBackend

__all__ = [
    "HistoryRepository",
    "MemoryBackend",
    "MySQLBackend",
    "PostgresBackend",
    "RedisBackend",
    "SnapshotBackend",
    "SqlBackend",
    "SqliteBackend",
]

_LAZY = {
    "SqlBackend": ".sql",
    "SqliteBackend": ".sql",
    "PostgresBackend": ".sql",
    "MySQLBackend": ".sql",
    "RedisBackend": ".redis",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module, __name__), name)
