"""An app for multi-process tests, configured by environment variables.

TASKFLOW_URL       database or Redis URL shared by the instances
TASKFLOW_INSTANCE  this instance's id
TASKFLOW_LEASE     lease in seconds (short in tests)
TASKFLOW_RUNS      a file each task run appends "<task_id> <function>" to
TASKFLOW_CONCURRENCY, TASKFLOW_DURABILITY  max_concurrent_tasks, durability_timeout
"""

from __future__ import annotations

import asyncio
import os

import sqlalchemy as sa
from fastapi import BackgroundTasks, FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from fastapi_taskflow import TaskAdmin, TaskManager, get_task_context
from fastapi_taskflow.backends.sql import make_async_url

RUNS = os.environ["TASKFLOW_RUNS"]

task_manager = TaskManager(
    database_url=os.environ["TASKFLOW_URL"],
    instance_id=os.environ["TASKFLOW_INSTANCE"],
    lease_s=float(os.environ.get("TASKFLOW_LEASE", "2")),
    snapshot_interval=0.5,
    max_concurrent_tasks=int(os.environ.get("TASKFLOW_CONCURRENCY", "10")),
    shutdown_grace=1.0,
    durability_timeout=float(os.environ.get("TASKFLOW_DURABILITY", "5")),
)
app = FastAPI()
TaskAdmin(app, task_manager, auto_install=True, display_func_args=True)


def _note_run() -> None:
    context = get_task_context()
    assert context is not None
    with open(RUNS, "a") as runs:
        runs.write(f"{context.task_id} {context.func_name}\n")


@task_manager.task(name="work", persist=True)
async def work(n: int, sleep_s: float) -> None:
    _note_run()
    await asyncio.sleep(sleep_s)


@task_manager.task(name="resumable", persist=True, requeue_on_interrupt=True)
async def resumable(n: int, sleep_s: float) -> None:
    _note_run()
    await asyncio.sleep(sleep_s)


@task_manager.task(name="hold", persist=True)
async def hold(seconds: float) -> None:
    _note_run()
    await asyncio.sleep(seconds)


@task_manager.task(name="fail_once", persist=True)
async def fail_once(n: int, sleep_s: float) -> None:
    _note_run()
    context = get_task_context()
    assert context is not None
    with open(RUNS) as runs:  # noqa: ASYNC230 - a tiny test file
        seen = sum(1 for line in runs if line.startswith(context.task_id))
    if seen == 1:
        raise RuntimeError("first run fails")


FUNCS = {"work": work, "resumable": resumable, "hold": hold, "fail_once": fail_once}


@app.post("/enqueue")
async def enqueue(func: str, count: int = 1, sleep_s: float = 0.01, start: int = 0) -> list[str]:
    """Enqueue ``count`` tasks at once (their write-ahead records share a few batches)."""
    target = FUNCS[func]
    if func == "hold":
        calls = [task_manager.enqueue(target, sleep_s) for _ in range(count)]
    else:
        calls = [task_manager.enqueue(target, start + n, sleep_s) for n in range(count)]
    return list(await asyncio.gather(*calls))


@app.post("/batch")
async def batch(start: int, background_tasks: BackgroundTasks, sleep_s: float = 0.001) -> list[str]:
    """Twenty ``work`` tasks added the drop-in way (they start after the response)."""
    return [background_tasks.add_task(work, start + i, sleep_s) for i in range(20)]


@app.post("/keyed")
def keyed(key: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    return {"task_id": background_tasks.add_task(hold, 0.2, idempotency_key=key)}


# The application's own database work (SQL backends): an order and its task in one
# transaction, committed or rolled back.
orders = sa.Table("orders", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
_engine: AsyncEngine | None = None


async def _orders_engine() -> AsyncEngine:
    global _engine
    if _engine is None:
        _engine = create_async_engine(make_async_url(os.environ["TASKFLOW_URL"]))
        async with _engine.begin() as conn:
            await conn.run_sync(orders.metadata.create_all)
    return _engine


@app.post("/order")
async def order(n: int, commit: bool) -> dict[str, str]:
    """Insert order ``n`` and enqueue its ``work`` task in one transaction, then commit or
    roll back; the task exists if and only if the order does."""
    engine = await _orders_engine()
    async with engine.connect() as conn:
        transaction = await conn.begin()
        await conn.execute(orders.insert().values(id=n))
        task_id = await task_manager.enqueue(work, n, 0.01, connection=conn)
        await (transaction.commit() if commit else transaction.rollback())
    return {"task_id": task_id}


@app.get("/orders")
async def list_orders() -> list[int]:
    engine = await _orders_engine()
    async with engine.connect() as conn:
        return sorted((await conn.scalars(sa.select(orders.c.id))).all())


@app.get("/health")
def health() -> dict[str, str]:
    return {"instance": task_manager.instance_id}
