"""Deleting finished tasks: ``task_manager.delete`` and ``DELETE /tasks/{task_id}``.

A deletion removes the task from memory, from the unsaved buffer and from the backend, and
it holds across instances: another instance sharing the backend stops showing the task and
never writes it back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from _helpers import finished, serve, wait_for
from fastapi import BackgroundTasks, FastAPI
from test_persistence import (  # noqa: F401 - make_backend is a fixture
    BackendFactory,
    SixMethodBackend,
    make_backend,
)

from fastapi_taskflow import (
    InvalidTaskStateError,
    TaskAdmin,
    TaskManager,
    TaskNotFoundError,
    TaskRecord,
    TaskStatus,
    UnsupportedOperationError,
)
from fastapi_taskflow.backends import SqliteBackend

ADMIN_KEY = "admin-key-" + "a" * 32
READ_KEY = "read-key-" + "b" * 32
ADMIN = ("admin", "correct horse battery staple")
VIEWER = ("viewer", "read only but long enough")


async def fail(n: int) -> None:
    raise ValueError(f"failing {n}")


def manager(factory: BackendFactory, **kwargs: Any) -> TaskManager:
    kwargs.setdefault("snapshot_interval", 3600.0)
    return TaskManager(snapshot_backend=factory(), **kwargs)


async def ids_in(tm: TaskManager) -> set[str]:
    return {r.task_id for r in await tm.history.query(limit=1000)}


@contextlib.asynccontextmanager
async def blocked(tm: TaskManager) -> AsyncIterator[asyncio.Event]:
    """Occupy the only slot of ``tm`` with a task until the yielded event is set."""
    gate = asyncio.Event()
    task_id = await tm.enqueue(gate.wait)
    try:
        yield gate
    finally:
        gate.set()
        await finished(tm, task_id)


# --------------------------------------------------------------------------- in memory


async def test_delete_in_memory_only() -> None:
    tm = TaskManager()
    async with tm:
        ok = await tm.enqueue(asyncio.sleep, 0)
        bad = await tm.enqueue(fail, 1)
        await finished(tm, ok)
        await finished(tm, bad)
        assert await tm.history.count() == 2

        await tm.delete(ok)
        assert await tm.history.get(ok) is None
        assert await ids_in(tm) == {bad}
        assert await tm.history.count() == 1
        assert await tm.history.count(status="success") == 0
        with pytest.raises(TaskNotFoundError):
            await tm.delete(ok)
        with pytest.raises(TaskNotFoundError):
            await tm.retry(ok)
        await tm.delete(bad)
        assert await tm.history.count() == 0 and len(tm.store) == 0


async def test_deleting_releases_the_idempotency_key_and_only_that_one() -> None:
    tm = TaskManager(max_concurrent_tasks=1)
    runs: list[int] = []

    async def charge(n: int) -> None:
        runs.append(n)
        if n == 0:
            raise ValueError("declined")

    async with tm:
        first = await tm.enqueue(charge, 1, idempotency_key="order-1")
        await finished(tm, first)
        assert await tm.enqueue(charge, 2, idempotency_key="order-1") == first
        await tm.delete(first)
        again = await tm.enqueue(charge, 3, idempotency_key="order-1")
        await finished(tm, again)
        assert again != first and runs == [1, 3]

        # A failed task does not hold its key; deleting it must not free the key of the
        # newer task that now holds it.
        failed = await tm.enqueue(charge, 0, idempotency_key="order-2")
        await finished(tm, failed)
        async with blocked(tm):
            holder = await tm.enqueue(charge, 4, idempotency_key="order-2")
            await tm.delete(failed)
            assert await tm.enqueue(charge, 5, idempotency_key="order-2") == holder
        await finished(tm, holder)
        assert runs == [1, 3, 0, 4]


async def test_live_tasks_cannot_be_deleted_and_unknown_ids_are_not_found() -> None:
    tm = TaskManager(max_concurrent_tasks=1)
    async with tm:
        with pytest.raises(TaskNotFoundError, match="nope"):
            await tm.delete("nope")
        gate = asyncio.Event()
        running = await tm.enqueue(gate.wait)
        waiting = await tm.enqueue(asyncio.sleep, 0)
        await wait_for(lambda: tm.store.get(running).record.status is TaskStatus.RUNNING)  # type: ignore[union-attr]
        for task_id, status in ((running, "running"), (waiting, "pending")):
            with pytest.raises(InvalidTaskStateError, match=f"{status}.*[Cc]ancel it first"):
                await tm.delete(task_id)
            assert await tm.history.get(task_id) is not None
        await tm.cancel(waiting)
        await tm.delete(waiting)
        assert await tm.history.get(waiting) is None
        gate.set()
        await finished(tm, running)
        await tm.delete(running)
        assert len(tm.store) == 0


# --------------------------------------------------------------------------- every backend


async def test_delete_on_every_backend(make_backend: BackendFactory) -> None:  # noqa: F811
    runs: list[int] = []
    first = manager(make_backend, max_concurrent_tasks=1)

    @first.task(name="keyed", persist=True)
    async def keyed(n: int) -> None:
        runs.append(n)

    async with first:
        ok = await first.enqueue(asyncio.sleep, 0, tags={"kind": "ok"})
        bad = await first.enqueue(fail, 1)
        kept = await first.enqueue(asyncio.sleep, 0)
        once = await first.enqueue(keyed, 1, idempotency_key="k-1")
        for task_id in (ok, bad, kept, once):
            await finished(first, task_id)
        async with blocked(first):
            cancelled = await first.enqueue(asyncio.sleep, 0)
            await first.cancel(cancelled)
        await first.flush()
        history = first.history
        assert {ok, bad, kept, once, cancelled} <= await ids_in(first)
        total = await history.count()

        await first.delete(ok)  # saved
        await first.delete(bad)
        assert await history.get(ok) is None and await history.get(bad) is None
        assert not {ok, bad} & await ids_in(first)
        assert len(await history.query(tags={"kind": "ok"})) == 0
        assert await history.count() == total - 2
        assert await history.count(status="failed") == 0
        assert {s.func_name for s in await history.stats()} >= {"keyed"}

        # The key of a deleted task is free again: the task runs a second time.
        await first.delete(once)
        again = await first.enqueue(keyed, 2, idempotency_key="k-1")
        await finished(first, again)
        assert runs == [1, 2]

        await first.flush()
        assert not {ok, bad} & await ids_in(first)
        assert await history.get(ok) is None
        with pytest.raises(TaskNotFoundError):
            await first.delete(ok)

    second = manager(make_backend)
    async with second:
        assert await second.history.get(ok) is None
        assert await second.history.get(bad) is None
        assert await second.history.get(kept) is not None
        assert await second.history.get(again) is not None
        assert not {ok, bad} & await ids_in(second)
        await second.delete(kept)  # a record only the backend holds
        assert await second.history.get(kept) is None
    assert second.backend is not None
    third = manager(make_backend)
    async with third:
        assert await third.history.get(kept) is None
        loaded = {r.task_id for r in await third.backend.load()}  # type: ignore[union-attr]
        assert not {ok, bad, kept} & loaded


async def test_an_unsaved_record_deleted_is_never_written(
    make_backend: BackendFactory,  # noqa: F811
) -> None:
    first = manager(make_backend, max_concurrent_tasks=1)
    first.task(name="sleep", persist=True)(asyncio.sleep)
    async with first:
        async with blocked(first):
            # persisted: in a shared deployment it is in the pending store too
            cancelled = await first.enqueue(asyncio.sleep, 0)
            await first.cancel(cancelled)  # cancelled waits for the periodic flush
            assert await first.history.get(cancelled) is not None
            await first.delete(cancelled)
            assert await first.history.get(cancelled) is None
        await first.flush()
        assert await first.history.get(cancelled) is None
    second = manager(make_backend)
    async with second:
        assert await second.history.get(cancelled) is None
        assert await second.history.count(status="cancelled") == 0
        assert await second.history.count(status="pending") == 0


# --------------------------------------------------------------------------- two instances


def two_instances(factory: BackendFactory, **admin: Any) -> tuple[list[TaskManager], list[FastAPI]]:
    """Managers "a" and "b" on one backend, each with an app and its TaskAdmin."""
    managers = [manager(factory, instance_id=name) for name in ("a", "b")]
    apps = [FastAPI(), FastAPI()]
    for tm, app in zip(managers, apps, strict=True):
        TaskAdmin(app, tm, **admin)
    return managers, apps


async def test_a_deletion_by_one_instance_holds_on_the_other(
    make_backend: BackendFactory,  # noqa: F811
) -> None:
    (a, b), apps = two_instances(make_backend, display_func_args=True)
    for tm in (a, b):
        tm.task(name="fail")(fail)
    async with serve(apps[0]) as api_a, serve(apps[1]) as api_b:
        ok = await b.enqueue(asyncio.sleep, 0)
        bad = await b.enqueue(fail, 1)
        await finished(b, ok)
        await finished(b, bad)
        await b.flush()
        assert b.store.get(ok) is not None and b.store.get(bad) is not None  # held by B
        assert await a.history.get(ok) is not None and await a.history.get(bad) is not None

        assert (await api_a.delete(f"/tasks/{ok}")).status_code == 204
        await a.delete(bad)

        assert await b.history.get(ok) is None and await b.history.get(bad) is None
        assert not {ok, bad} & await ids_in(b)
        assert await b.history.count() == 0
        assert await b.history.count(status="success") == 0
        assert (await api_b.get(f"/tasks/{ok}")).status_code == 404
        listed = (await api_b.get("/tasks", params={"limit": 100})).json()["items"]
        assert not {ok, bad} & {t["task_id"] for t in listed}
        assert (await api_b.get("/tasks/metrics")).json()["total"] == 0
        # B may not bring the task back: retrying or deleting it there finds nothing.
        assert (await api_b.post(f"/tasks/{bad}/retry")).status_code == 404
        with pytest.raises(TaskNotFoundError):
            await b.retry(bad)
        assert (await api_b.delete(f"/tasks/{ok}")).status_code == 404

        later = await b.enqueue(asyncio.sleep, 0)
        await finished(b, later)
        await b.flush()
        assert await a.history.get(later) is not None
        assert await a.history.get(ok) is None and await a.history.get(bad) is None
        assert await ids_in(a) == await ids_in(b) == {later}
    third = manager(make_backend)
    async with third:
        assert third.backend is not None
        assert {r.task_id for r in await third.backend.load()} == {later}


async def test_the_key_of_a_task_deleted_on_one_instance_is_free_on_the_other(
    make_backend: BackendFactory,  # noqa: F811
) -> None:
    runs: list[int] = []

    async def charge(n: int) -> None:
        runs.append(n)

    (a, b), apps = two_instances(make_backend, auto_install=True)
    for tm, app in zip((a, b), apps, strict=True):
        tm.task(name="charge", persist=True)(charge)

        @app.post("/charge")
        async def charge_route(
            n: int, key: str, background_tasks: BackgroundTasks
        ) -> dict[str, str]:
            return {"task_id": background_tasks.add_task(charge, n, idempotency_key=key)}

    async def add_on_b(n: int, key: str) -> str:
        response = await api_b.post("/charge", params={"n": n, "key": key})
        assert response.status_code == 200, response.text
        task_id: str = response.json()["task_id"]
        return task_id

    async with serve(apps[0]), serve(apps[1]) as api_b:
        # add_task (ManagedBackgroundTasks) on B, with the succeeded task in B's memory.
        first = await add_on_b(1, "order-1")
        await wait_for(lambda: runs == [1])
        await finished(b, first)
        await b.flush()
        assert b.store.get(first) is not None  # saved, still held by B
        await a.delete(first)
        again = await add_on_b(2, "order-1")
        await wait_for(lambda: runs == [1, 2])  # B ran it: the key was free
        record = await finished(b, again)
        assert record.status is TaskStatus.SUCCESS and record.args == [2]
        await b.flush()
        assert (await a.history.get(again)) is not None

        # enqueue on B (TaskManager.create), same situation.
        second = await b.enqueue(charge, 3, idempotency_key="order-2")
        await finished(b, second)
        await b.flush()
        assert b.store.get(second) is not None
        await a.delete(second)
        assert await b.enqueue(charge, 4, idempotency_key="order-2") == second
        record = await finished(b, second)
        assert runs == [1, 2, 3, 4] and record.args == [4]
        await b.flush()

        # A key whose task still exists stays taken, on both instances and both paths.
        assert b.store.get(again) is not None
        assert await add_on_b(5, "order-1") == again
        assert await b.enqueue(charge, 6, idempotency_key="order-1") == again
        assert await a.enqueue(charge, 7, idempotency_key="order-2") == second
        assert await b.enqueue(charge, 8, idempotency_key="order-2") == second
        await asyncio.sleep(0.1)  # a wrongly accepted duplicate would have started by now
        assert runs == [1, 2, 3, 4]
        for task_id, n in ((again, 2), (second, 4)):
            for tm in (a, b):
                record = await finished(tm, task_id)
                assert record.status is TaskStatus.SUCCESS and record.args == [n]


async def test_cancel_and_wait_do_not_see_a_task_deleted_on_another_instance(
    make_backend: BackendFactory,  # noqa: F811
) -> None:
    (a, b), apps = two_instances(make_backend)
    async with serve(apps[0]), serve(apps[1]) as api_b:
        ids = [await b.enqueue(asyncio.sleep, 0) for _ in range(3)]
        for task_id in ids:
            await finished(b, task_id)
        await b.flush()
        for task_id in ids:
            assert b.store.get(task_id) is not None  # saved, still held by B
            await a.delete(task_id)
        by_cancel, by_wait, by_http = ids

        with pytest.raises(TaskNotFoundError):
            await b.cancel(by_cancel)
        with pytest.raises(TaskNotFoundError):
            await b.wait(by_wait)
        response = await api_b.post(f"/tasks/{by_http}/cancel")
        assert response.status_code == 404, response.text
        for task_id in ids:
            assert b.store.get(task_id) is None  # the stale copies are dropped
            with pytest.raises(TaskNotFoundError):
                await b.wait(task_id)

        # A finished task that exists is still found by both.
        kept = await b.enqueue(asyncio.sleep, 0)
        await finished(b, kept)
        await b.flush()
        assert (await b.wait(kept)).status is TaskStatus.SUCCESS
        with pytest.raises(InvalidTaskStateError, match="already"):
            await b.cancel(kept)
        assert (await api_b.post(f"/tasks/{kept}/cancel")).status_code == 409


# --------------------------------------------------------------------------- writes in flight


class SlowSaves(SqliteBackend):
    """SQLite whose history writes wait for ``gate``."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.gate = asyncio.Event()
        self.saving = asyncio.Event()

    async def save(self, records: list[TaskRecord]) -> int:
        self.saving.set()
        await self.gate.wait()
        return await super().save(records)


async def test_a_record_being_written_stays_visible_and_can_be_deleted(tmp_path: Path) -> None:
    backend = SlowSaves(tmp_path / "tasks.db")
    tm = TaskManager(snapshot_backend=backend, snapshot_interval=3600.0)
    async with tm:
        try:
            ok = await tm.enqueue(asyncio.sleep, 0)
            await finished(tm, ok)
            async with asyncio.timeout(5):
                await backend.saving.wait()  # the write is in flight, not committed
            assert await tm.history.get(ok) is not None
            assert await ids_in(tm) == {ok}
            assert await tm.history.count() == 1
            deleting = asyncio.create_task(tm.delete(ok))
            await asyncio.sleep(0.05)
            assert not deleting.done()  # waits for the write, then deletes what it wrote
            backend.gate.set()
            await deleting
            assert await tm.history.get(ok) is None
            await tm.flush()
            assert await tm.history.count() == 0
        finally:
            backend.gate.set()  # a failed check must not leave shutdown waiting
    reopened = SqliteBackend(str(tmp_path / "tasks.db"))
    await reopened.open()
    try:
        assert await reopened.load() == []
    finally:
        await reopened.close()


# --------------------------------------------------------------------------- custom backends


class ZeroDeletes(SixMethodBackend):
    """Claims to delete but never does."""

    async def delete(self, task_ids: Sequence[str]) -> int:
        return 0


@pytest.mark.parametrize("backend_class", [SixMethodBackend, ZeroDeletes])
async def test_a_backend_that_cannot_delete_gets_a_clear_error_and_loses_nothing(
    backend_class: type[SixMethodBackend],
) -> None:
    backend = backend_class()
    tm = TaskManager(snapshot_backend=backend, snapshot_interval=3600.0, max_concurrent_tasks=1)
    app = FastAPI()
    TaskAdmin(app, tm)
    async with serve(app) as client:
        ok = await tm.enqueue(asyncio.sleep, 0)
        await finished(tm, ok)
        await tm.flush()
        with pytest.raises(UnsupportedOperationError, match=r"implement `async def delete"):
            await tm.delete(ok)
        response = await client.delete(f"/tasks/{ok}")
        assert response.status_code == 501 and "delete" in response.json()["detail"]
        assert await tm.history.get(ok) is not None
        assert ok in {r.task_id for r in await backend.load()}
        if backend_class is SixMethodBackend:  # refused up front, even for an unsaved one
            async with blocked(tm):
                cancelled = await tm.enqueue(asyncio.sleep, 0)
                await tm.cancel(cancelled)
            with pytest.raises(UnsupportedOperationError):
                await tm.delete(cancelled)
            await tm.flush()
            assert cancelled in {r.task_id for r in await backend.load()}


# --------------------------------------------------------------------------- HTTP


async def test_delete_endpoint() -> None:
    tm = TaskManager(max_concurrent_tasks=1)
    app = FastAPI()
    TaskAdmin(app, tm)
    async with serve(app) as client:
        ok = await tm.enqueue(asyncio.sleep, 0)
        await finished(tm, ok)
        response = await client.delete(f"/tasks/{ok}")
        assert response.status_code == 204 and response.content == b""
        assert (await client.get(f"/tasks/{ok}")).status_code == 404
        assert (await client.delete(f"/tasks/{ok}")).status_code == 404
        assert (await client.delete("/tasks/unknown-id")).status_code == 404
        async with blocked(tm) as gate:
            live = next(j.task_id for j in tm.store if not j.record.status.is_terminal)
            response = await client.delete(f"/tasks/{live}")
            assert response.status_code == 409 and "cancel" in response.json()["detail"]
            gate.set()
        for bad in ("bad id!", "x" * 65, "%00", "a/b"):
            response = await client.delete(f"/tasks/{bad}")
            assert response.status_code in (404, 405, 422), (bad, response.status_code)
        assert (await client.delete("/tasks/" + "x" * 65)).status_code == 422
        assert (await client.delete("/tasks/bad%20id")).status_code == 422


async def test_delete_endpoint_is_an_admin_action() -> None:
    tm = TaskManager()
    app = FastAPI()
    TaskAdmin(
        app,
        tm,
        auth=[ADMIN, (*VIEWER, "read")],
        api_keys={ADMIN_KEY: "admin", READ_KEY: "read"},
        secret_key="test-secret-" + "c" * 32,
    )
    async with serve(app) as client:
        ok = await tm.enqueue(asyncio.sleep, 0)
        await finished(tm, ok)
        url = f"/tasks/{ok}"
        assert (await client.delete(url)).status_code == 401
        read_key = {"Authorization": f"Bearer {READ_KEY}"}
        refused = await client.delete(url, headers=read_key)
        assert refused.status_code == 403 and "read-only" in refused.json()["detail"]
        token = await sign_in(client, VIEWER)
        assert (await client.delete(url, headers={"X-CSRF-Token": token})).status_code == 403
        await sign_in(client, ADMIN)
        no_token = await client.delete(url)
        assert no_token.status_code == 403 and "CSRF" in no_token.json()["detail"]
        cross_site = {"X-API-Key": ADMIN_KEY, "Sec-Fetch-Site": "cross-site"}
        assert (await client.delete(url, headers=cross_site)).status_code == 403
        assert await tm.history.get(ok) is not None  # nothing refused deleted anything
        token = await sign_in(client, ADMIN)
        assert (await client.delete(url, headers={"X-CSRF-Token": token})).status_code == 204
        assert await tm.history.get(ok) is None


async def sign_in(client: httpx.AsyncClient, user: tuple[str, str]) -> str:
    client.cookies.clear()
    response = await client.post("/tasks/login", json={"username": user[0], "password": user[1]})
    assert response.status_code == 200, response.text
    token: str = response.json()["csrf_token"]
    return token
