"""Transactional enqueue: a task written in the caller's SQLAlchemy transaction."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from fastapi_taskflow import ConfigurationError, TaskManager, TaskStatus, UnknownTaskError
from fastapi_taskflow.backends import MemoryBackend
from fastapi_taskflow.backends.sql import make_async_url


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'app.db'}"
    found: str = request.getfixturevalue(f"{request.param}_url")
    return found


async def wait_status(tm: TaskManager, task_id: str, status: TaskStatus) -> None:
    async with asyncio.timeout(10):
        while True:
            record = await tm.history.get(task_id)
            if record is not None and record.status is status:
                return
            await asyncio.sleep(0.02)


async def test_rolled_back_enqueue_leaves_nothing_and_committed_one_runs_once(url: str) -> None:
    tm = TaskManager(database_url=url, lease_s=1.0)
    ran: list[int] = []

    @tm.task(name="orders.confirm", persist=True)
    async def confirm(order_id: int) -> None:
        ran.append(order_id)

    orders = sa.Table("orders", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
    engine = create_async_engine(make_async_url(url))  # the application's own engine
    try:
        async with tm:
            async with engine.begin() as conn:
                await conn.run_sync(orders.metadata.create_all)
            async with engine.connect() as conn:
                transaction = await conn.begin()
                await conn.execute(orders.insert().values(id=1))
                dropped = await tm.enqueue(confirm, 1, connection=conn)
                await transaction.rollback()
            async with engine.begin() as conn:
                await conn.execute(orders.insert().values(id=2))
                kept = await tm.enqueue(confirm, 2, connection=conn)
            await wait_status(tm, kept, TaskStatus.SUCCESS)
            async with AsyncSession(engine) as session:  # an ORM session works as well
                session.add_all([])
                await session.execute(orders.insert().values(id=3))
                by_session = await tm.enqueue(confirm, 3, connection=session)
                await session.commit()
            await wait_status(tm, by_session, TaskStatus.SUCCESS)
            await asyncio.sleep(0.5)  # a heartbeat later, nothing else has run
            assert await tm.history.get(dropped) is None
            record = await tm.history.get(kept)
            assert record is not None and record.source == "transaction"
    finally:
        await engine.dispose()
    assert ran == [2, 3]


async def test_transactional_enqueue_needs_a_sql_backend_and_a_registered_task(
    tmp_path: Path,
) -> None:
    async with TaskManager(snapshot_backend=MemoryBackend()) as tm:
        with pytest.raises(ConfigurationError, match="needs a SQL backend"):
            await tm.enqueue(print, connection=object())
    async with TaskManager(snapshot_db=str(tmp_path / "t.db")) as tm:

        async def not_registered() -> None: ...

        with pytest.raises(UnknownTaskError, match="must be registered"):
            await tm.enqueue(not_registered, connection=object())
