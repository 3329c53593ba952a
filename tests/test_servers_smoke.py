"""The real servers started by conftest.py work through the real drivers."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

_seen_pg_databases: list[str] = []
_seen_mysql_databases: list[str] = []


def _async_url(url: str, driver: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}+{driver}://{rest}"


@pytest.mark.postgres
async def test_postgres_select_1(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql://postgres@127.0.0.1:")
    engine = create_async_engine(_async_url(postgres_url, "asyncpg"))
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
            server_version = (await conn.execute(text("SHOW server_version"))).scalar_one()
            assert int(server_version.split(".")[0]) >= 13
            encoding = (await conn.execute(text("SHOW server_encoding"))).scalar_one()
            assert encoding == "UTF8"
    finally:
        await engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("attempt", [1, 2])
async def test_postgres_url_is_fresh_and_empty(postgres_url: str, attempt: int) -> None:
    name = make_url(postgres_url).database
    assert name is not None and name.startswith("test_")
    assert name not in _seen_pg_databases
    _seen_pg_databases.append(name)
    engine = create_async_engine(_async_url(postgres_url, "asyncpg"))
    try:
        async with engine.begin() as conn:
            tables = (
                await conn.execute(
                    text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
                )
            ).scalar_one()
            assert tables == 0
            # Would fail in the second round if databases were shared.
            await conn.execute(text("CREATE TABLE leftover (id int PRIMARY KEY)"))
            await conn.execute(text("INSERT INTO leftover VALUES (1)"))
    finally:
        await engine.dispose()


@pytest.mark.mysql
async def test_mysql_select_1(mysql_url: str) -> None:
    assert mysql_url.startswith("mysql://root@127.0.0.1:")
    assert mysql_url.endswith("?charset=utf8mb4")
    engine = create_async_engine(_async_url(mysql_url, "aiomysql"), pool_recycle=3600)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
            charset = (await conn.execute(text("SELECT @@character_set_database"))).scalar_one()
            assert charset == "utf8mb4"
            assert engine.dialect.name == "mysql"
            assert getattr(engine.dialect, "is_mariadb", False) is True
    finally:
        await engine.dispose()


@pytest.mark.mysql
@pytest.mark.parametrize("attempt", [1, 2])
async def test_mysql_url_is_fresh_and_empty(mysql_url: str, attempt: int) -> None:
    name = make_url(mysql_url).database
    assert name is not None and name.startswith("test_")
    assert name not in _seen_mysql_databases
    _seen_mysql_databases.append(name)
    engine = create_async_engine(_async_url(mysql_url, "aiomysql"))
    try:
        async with engine.begin() as conn:
            tables = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM information_schema.tables"
                        " WHERE table_schema = DATABASE()"
                    )
                )
            ).scalar_one()
            assert tables == 0
            await conn.execute(text("CREATE TABLE leftover (id int PRIMARY KEY)"))
            await conn.execute(text("INSERT INTO leftover VALUES (1)"))
    finally:
        await engine.dispose()


@pytest.mark.redis
@pytest.mark.parametrize("attempt", [1, 2])
async def test_redis_ping_set_get(redis_url: str, attempt: int) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.ping() is True
        assert await client.dbsize() == 0  # flushed before every test
        await client.set("taskflow:smoke", "value")
        assert await client.get("taskflow:smoke") == b"value"
    finally:
        await client.aclose()


@pytest.mark.browser
async def test_chromium_launches(chromium_path: str) -> None:
    from _servers import CHROMIUM_ARGS
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.set_content("<title>smoke</title><p id='x'>hello</p>")
            assert await page.title() == "smoke"
            assert await page.text_content("#x") == "hello"
        finally:
            await browser.close()
