"""The JSON API mounted by TaskAdmin, and lifespan integration."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from _helpers import finished, serve
from fastapi import BackgroundTasks, FastAPI

from fastapi_taskflow import TaskAdmin, TaskManager, TaskStatus, get_task_context


def build(**manager_kwargs: object) -> tuple[FastAPI, TaskManager]:
    tm = TaskManager(**manager_kwargs)  # type: ignore[arg-type]
    app = FastAPI()
    TaskAdmin(app, tm, display_func_args=True, auto_install=True)
    return app, tm


async def test_list_filter_and_paginate() -> None:
    app, tm = build()

    @tm.task(name="ok")
    async def ok(n: int) -> None: ...

    @tm.task(name="bad")
    async def bad(n: int) -> None:
        raise ValueError(f"bad number {n}")

    async with serve(app) as client:
        ids = []
        for n in range(7):
            ids.append(await tm.enqueue(ok if n % 2 else bad, n, tags={"parity": str(n % 2)}))
            await finished(tm, ids[-1])
        all_items = (await client.get("/tasks", params={"limit": 100})).json()["items"]
        assert [t["task_id"] for t in all_items] == list(reversed(ids))
        failed = (await client.get("/tasks", params={"status": "failed"})).json()["items"]
        assert {t["func_name"] for t in failed} == {"bad"} and len(failed) == 4
        both = await client.get("/tasks", params=[("status", "failed"), ("status", "success")])
        assert len(both.json()["items"]) == 7
        assert len((await client.get("/tasks", params={"func_name": "ok"})).json()["items"]) == 3
        tagged = (await client.get("/tasks", params={"tag": "parity:1"})).json()["items"]
        assert {t["func_name"] for t in tagged} == {"ok"}
        text = (await client.get("/tasks", params={"q": "bad number 4"})).json()["items"]
        assert [t["args"] for t in text] == [[4]]
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert (await client.get("/tasks", params={"since": future})).json()["items"] == []
        assert len((await client.get("/tasks", params={"until": future})).json()["items"]) == 7
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, str | int] = {"limit": 3}
            if cursor:
                params["cursor"] = cursor
            page = (await client.get("/tasks", params=params)).json()
            seen += [t["task_id"] for t in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == list(reversed(ids))


async def test_get_one_task_and_arguments_visibility() -> None:
    app, tm = build()
    hidden_app = FastAPI()
    TaskAdmin(hidden_app, tm, path="/admin/tasks")

    async def work(secret: str) -> None: ...

    async with serve(app) as client:
        task_id = await tm.enqueue(work, secret="s3cr3t")
        await finished(tm, task_id)
        shown = (await client.get(f"/tasks/{task_id}")).json()
        assert shown["kwargs"] == {"secret": "s3cr3t"} and shown["status"] == "success"
        assert (await client.get("/tasks/doesnotexist")).status_code == 404
        import httpx

        transport = httpx.ASGITransport(app=hidden_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as other:
            hidden = (await other.get(f"/admin/tasks/{task_id}")).json()
        assert hidden["kwargs"] is None and hidden["args"] is None


async def test_metrics_and_functions() -> None:
    app, tm = build()

    @tm.task(retries=2, delay=0.5, timeout=3.0)
    async def fine() -> None: ...

    async def broken() -> None:
        raise RuntimeError

    async with serve(app) as client:
        for func in (fine, fine, fine, broken):
            await finished(tm, await tm.enqueue(func))
        metrics = (await client.get("/tasks/metrics")).json()
        functions = (await client.get("/tasks/functions")).json()
        stats = (await client.get("/tasks/stats")).json()["functions"]
    assert metrics["by_status"]["success"] == 3 and metrics["by_status"]["failed"] == 1
    assert metrics["total"] == 4 and metrics["success_rate"] == 0.75
    assert metrics["queues"]["default"] == {"running": 0, "waiting": 0}
    assert functions[0]["retries"] == 2 and functions[0]["timeout"] == 3.0
    by_name = {s["func_name"].rsplit(".", 1)[-1]: s for s in stats}
    assert by_name["fine"]["total"] == 3 and by_name["fine"]["success_rate"] == 1.0
    assert by_name["broken"]["failed"] == 1


async def test_plain_tasks_kept_compactly_are_listed_filtered_and_shown_like_others() -> None:
    """A task added with no options that succeeds at once is kept in a compact form, its
    record built only when read: the API lists, filters, pages, counts and shows it as it
    does a task whose record was built in full."""
    app, tm = build()

    @tm.task(name="work")
    async def work(n: int, label: str = "") -> None:
        if label == "peek":
            get_task_context()  # reads its own record while it runs: kept in full

    @app.post("/add")
    async def add(n: int, background_tasks: BackgroundTasks) -> dict[str, str]:
        return {
            "plain": background_tasks.add_task(work, n, label='ü"\n'),
            "peek": background_tasks.add_task(work, n, label="peek"),
            "tagged": background_tasks.add_task(work, n, tags={"kind": "tagged"}),
        }

    async with serve(app) as client:
        added = [(await client.post("/add", params={"n": n})).json() for n in range(3)]
        every = {task_id for ids in added for task_id in ids.values()}
        for task_id in every:
            await finished(tm, task_id)
        plain = [ids["plain"] for ids in added]
        # (what this test is about: the plain ones are held compactly, the others are not)
        assert all(isinstance(tm.store._jobs[i], tuple) for i in plain)
        assert not any(isinstance(tm.store._jobs[ids["peek"]], tuple) for ids in added)

        shown = (await client.get(f"/tasks/{plain[2]}")).json()
        peeked = (await client.get(f"/tasks/{added[2]['peek']}")).json()
        for record, label in ((shown, 'ü"\n'), (peeked, "peek")):
            assert record["status"] == "success" and record["func_name"] == "work"
            assert record["args"] == [2] and record["kwargs"] == {"label": label}
            assert record["retries_used"] == 0 and record["logs"] == [] and record["tags"] == {}
            assert record["source"] == "request" and record["queue"] == "default"
            assert record["error"] is None and record["updated_at"] == record["end_time"]
            [attempt] = record["attempts"]
            assert attempt == {
                "number": 1,
                "start_time": record["start_time"],
                "end_time": record["end_time"],
                "error": None,
            }
            created, start, end = (
                datetime.fromisoformat(record[k]) for k in ("created_at", "start_time", "end_time")
            )
            assert created <= start <= end and start.tzinfo is not None
            assert record["duration"] == (end - start).total_seconds()
        assert set(shown) == set(peeked)

        listed = (await client.get("/tasks", params={"limit": 100})).json()["items"]
        assert {t["task_id"] for t in listed} == every and len(listed) == 9
        stamps = [(datetime.fromisoformat(t["created_at"]), t["task_id"]) for t in listed]
        assert stamps == sorted(stamps, reverse=True)  # newest first, compact or not
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, str | int] = {"limit": 2, "status": "success"}
            if cursor:
                params["cursor"] = cursor
            page = (await client.get("/tasks", params=params)).json()
            seen += [t["task_id"] for t in page["items"]]
            if not (cursor := page["next_cursor"]):
                break
        assert seen == [t["task_id"] for t in listed]
        tagged = (await client.get("/tasks", params={"tag": "kind:tagged"})).json()["items"]
        assert {t["task_id"] for t in tagged} == {ids["tagged"] for ids in added}
        found = (await client.get("/tasks", params={"q": plain[1]})).json()["items"]
        assert [t["task_id"] for t in found] == [plain[1]]
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert (await client.get("/tasks", params={"since": future})).json()["items"] == []
        until = (await client.get("/tasks", params={"until": future})).json()["items"]
        assert len(until) == 9
        metrics = (await client.get("/tasks/metrics")).json()
        assert metrics["total"] == 9 and metrics["by_status"]["success"] == 9
        [stats] = (await client.get("/tasks/stats")).json()["functions"]
        assert stats["total"] == stats["success"] == 9 and stats["duration_p50"] is not None
        assert (await client.post(f"/tasks/{plain[0]}/cancel")).status_code == 409
        assert (await client.post(f"/tasks/{plain[0]}/retry")).status_code == 409
        assert (await client.get(f"/tasks/{plain[0]}")).json()["status"] == "success"


@pytest.mark.parametrize("replace", [True, False])
async def test_retry_endpoint(replace: bool) -> None:
    app, tm = build(retry_replaces_original=replace)
    attempts = 0

    @tm.task()
    async def flaky(n: int) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("first run fails")

    async with serve(app) as client:
        task_id = await tm.enqueue(flaky, 5)
        assert (await finished(tm, task_id)).status is TaskStatus.FAILED
        response = await client.post(f"/tasks/{task_id}/retry")
        assert response.status_code == 200, response.text
        new_id = response.json()["task_id"]
        record = await finished(tm, new_id)
        assert record.status is TaskStatus.SUCCESS and record.args == [5]
        if replace:
            assert new_id == task_id
        else:
            assert new_id != task_id and record.retry_of == task_id
            original = (await client.get(f"/tasks/{task_id}")).json()
            assert original["status"] == "failed"
        again = await client.post(f"/tasks/{new_id}/retry")
        assert again.status_code == 409 and "only failed" in again.json()["detail"]
        assert (await client.post("/tasks/unknown/retry")).status_code == 404


async def test_cancel_endpoint() -> None:
    app, tm = build()
    gate = asyncio.Event()

    async def wait() -> None:
        await gate.wait()

    async with serve(app) as client:
        task_id = await tm.enqueue(wait)
        await asyncio.sleep(0.01)
        response = await client.post(f"/tasks/{task_id}/cancel")
        assert response.status_code == 200 and response.json()["status"] == "cancelled"
        again = await client.post(f"/tasks/{task_id}/cancel")
        assert again.status_code == 409
        assert (await client.post("/tasks/nope/cancel")).status_code == 404


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/tasks", {"status": "exploded"}),
        ("/tasks", {"limit": 0}),
        ("/tasks", {"limit": 100000}),
        ("/tasks", {"limit": "many"}),
        ("/tasks", {"since": "yesterday"}),
        ("/tasks", {"cursor": "!!not-a-cursor!!"}),
        ("/tasks", {"tag": "no-colon"}),
        ("/tasks", {"q": "x" * 500}),
        ("/tasks/stats", {"since": "soon"}),
        ("/tasks/" + "a" * 65, {}),
        ("/tasks/bad%20id", {}),
    ],
)
async def test_bad_parameters_get_4xx_not_500(path: str, params: dict[str, object]) -> None:
    app, _ = build()
    async with serve(app) as client:
        response = await client.get(path, params=params)  # type: ignore[arg-type]
    assert 400 <= response.status_code < 500, response.text
    assert "detail" in response.json()


async def test_api_is_typed_in_openapi() -> None:
    app, _ = build()
    schema = app.openapi()
    paths = schema["paths"]
    for path in ("/tasks", "/tasks/{task_id}", "/tasks/metrics"):
        assert "get" in paths[path]
    for path in ("/tasks/{task_id}/retry", "/tasks/{task_id}/cancel"):
        assert "post" in paths[path]
    listed = paths["/tasks"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert listed["$ref"].endswith("TaskListOut")


async def test_app_with_its_own_lifespan() -> None:
    events: list[str] = []
    tm = TaskManager()

    @tm.task()
    async def warm_cache() -> None:
        events.append("task ran")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        events.append("app start")
        task_id = await tm.enqueue(warm_cache)  # the manager is already running here
        await tm.wait(task_id)
        yield {"greeting": "hello"}
        events.append("app stop")

    app = FastAPI(lifespan=lifespan)
    TaskAdmin(app, tm, auto_install=True)

    @app.post("/work")
    def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        return {"task_id": background_tasks.add_task(warm_cache)}

    async with serve(app) as client:
        assert tm.started
        task_id = (await client.post("/work")).json()["task_id"]
        assert (await finished(tm, task_id)).status is TaskStatus.SUCCESS
    assert events == ["app start", "task ran", "task ran", "app stop"]
    assert not tm.started
