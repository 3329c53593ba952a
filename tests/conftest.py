"""Real-server fixtures: PostgreSQL, MariaDB, Redis and Chromium.

Servers start lazily (the first test that needs one starts it) and stop at the end of the
session. Each test gets a fresh, empty database (dropped afterwards) or a flushed Redis.

    async def test_x(postgres_url: str) -> None:  # postgresql://postgres@127.0.0.1:P/test_<hex>
    async def test_y(mysql_url: str) -> None:     # mysql://root@127.0.0.1:P/test_<hex>?charset=utf8mb4
    async def test_z(redis_url: str) -> None:     # redis://127.0.0.1:P/0, after FLUSHALL
    def test_b(chromium_path: str) -> None:       # /usr/bin/chromium

Tests using these fixtures get the `postgres` / `mysql` / `redis` / `browser` marker
automatically (so `-m "not browser"` works); marking them explicitly is fine too.
TASKFLOW_TEST_NO_SERVERS=1 skips them for quick local runs; by default they always run.
Other fixtures belong in their own modules or tests/_helpers.py; server classes,
CHROMIUM_ARGS and ensure_installed() live in tests/_servers.py (`import _servers`).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _servers import (
    MariaDBServer,
    PostgresServer,
    RedisServer,
    chromium_executable,
    ensure_installed,
)

NO_SERVERS = os.environ.get("TASKFLOW_TEST_NO_SERVERS", "") not in ("", "0")

_FIXTURE_MARKERS = {
    "postgres_server": "postgres",
    "postgres_url": "postgres",
    "mysql_server": "mysql",
    "mysql_url": "mysql",
    "redis_server": "redis",
    "redis_url": "redis",
    "chromium_path": "browser",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for fixture, marker in _FIXTURE_MARKERS.items():
            if fixture in names and item.get_closest_marker(marker) is None:
                item.add_marker(getattr(pytest.mark, marker))


def _skip_if_disabled() -> None:
    if NO_SERVERS:
        pytest.skip("TASKFLOW_TEST_NO_SERVERS is set")


def _new_db_name() -> str:
    return f"test_{uuid.uuid4().hex}"


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    _skip_if_disabled()
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[MariaDBServer]:
    _skip_if_disabled()
    server = MariaDBServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    _skip_if_disabled()
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def chromium_path() -> str:
    _skip_if_disabled()
    ensure_installed(("browser",))
    path = chromium_executable()
    assert path is not None
    return path


# --------------------------------------------------------------------------- per test


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database; plain URL (map to +asyncpg yourself if needed)."""
    name = _new_db_name()
    postgres_server.create_database(name)
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)


@pytest.fixture
def mysql_url(mysql_server: MariaDBServer) -> Iterator[str]:
    """A fresh, empty MariaDB database (utf8mb4)."""
    name = _new_db_name()
    mysql_server.create_database(name)
    try:
        yield mysql_server.url(name)
    finally:
        mysql_server.drop_database(name)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """Database 0 of the session's Redis, emptied with FLUSHALL before the test."""
    redis_server.flushall()
    return redis_server.url(0)
