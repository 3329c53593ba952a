"""The three ways to get managed background tasks into a route, and the request cycle."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _helpers import finished, serve, wait_for
from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastapi_taskflow import (
    ManagedBackgroundTasks,
    NotStartedError,
    TaskAdmin,
    TaskManager,
    TaskStatus,
)
from fastapi_taskflow._background import RequestTasksGuard


def make_app(manager: TaskManager, **admin: Any) -> FastAPI:
    app = FastAPI()
    TaskAdmin(app, manager, **admin)
    return app


async def test_plain_background_tasks_with_auto_install() -> None:
    tm = TaskManager()
    app = make_app(tm, auto_install=True)
    ran: list[str] = []

    @tm.task()
    async def send_email(address: str) -> None:
        ran.append(address)

    @app.post("/signup")
    def signup(email: str, background_tasks: BackgroundTasks) -> dict[str, str]:
        return {"task_id": background_tasks.add_task(send_email, address=email)}

    async with serve(app) as client:
        response = await client.post("/signup", params={"email": "a@example.com"})
        task_id = response.json()["task_id"]
        record = await finished(tm, task_id)
    assert record.status is TaskStatus.SUCCESS
    assert record.kwargs == {"address": "a@example.com"}
    assert ran == ["a@example.com"]


async def test_plain_background_tasks_untouched_without_auto_install() -> None:
    tm = TaskManager()
    app = make_app(tm)
    ran: list[int] = []

    @app.post("/plain")
    async def plain(background_tasks: BackgroundTasks) -> dict[str, object]:
        result = background_tasks.add_task(ran.append, 1)
        return {"result": result}

    async with serve(app) as client:
        response = await client.post("/plain")
    assert response.json() == {"result": None}  # Starlette's own behaviour
    assert ran == [1]
    assert len(tm.store) == 0


async def test_managed_annotation() -> None:
    tm = TaskManager()
    app = make_app(tm)
    ran: list[int] = []

    async def work(n: int) -> None:  # unregistered: default settings
        ran.append(n)

    @app.post("/go")
    async def go(tasks: ManagedBackgroundTasks) -> dict[str, str]:
        return {"task_id": tasks.add_task(work, 7)}

    async with serve(app) as client:
        task_id = (await client.post("/go")).json()["task_id"]
        record = await finished(tm, task_id)
    assert record.status is TaskStatus.SUCCESS
    assert record.func_name.endswith("work")
    assert ran == [7]


async def test_depends_get_tasks_without_task_admin() -> None:
    tm = TaskManager()
    app = FastAPI(lifespan=tm.lifespan)
    ran: list[int] = []

    @app.post("/go")
    async def go(tasks: ManagedBackgroundTasks = Depends(tm.get_tasks)) -> dict[str, str]:
        return {"task_id": tasks.add_task(ran.append, 3)}

    async with serve(app) as client:
        task_id = (await client.post("/go")).json()["task_id"]
        record = await finished(tm, task_id)
    assert record.status is TaskStatus.SUCCESS
    assert ran == [3]


async def test_enqueue_outside_a_request() -> None:
    async with TaskManager() as tm:
        got: list[int] = []

        async def job(x: int, *, y: int) -> None:
            got.append(x + y)

        task_id = await tm.enqueue(job, 1, y=2)
        record = await finished(tm, task_id)
    assert record.status is TaskStatus.SUCCESS
    assert record.source == "enqueue"
    assert got == [3]


async def test_use_before_start_fails_clearly() -> None:
    tm = TaskManager()
    with pytest.raises(NotStartedError, match="startup"):
        await tm.enqueue(print)


def _send_watcher(app: ASGIApp, sent: asyncio.Event) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        async def watch(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                sent.set()

        await app(scope, receive, watch)

    return wrapped


async def test_tasks_start_after_response_run_concurrently_and_release_the_request() -> None:
    tm = TaskManager()
    app = make_app(tm, auto_install=True)
    sent = asyncio.Event()
    seen_sent: list[bool] = []
    release = asyncio.Event()
    barrier_count = 0
    both_running = asyncio.Event()

    async def slow() -> None:
        nonlocal barrier_count
        seen_sent.append(sent.is_set())
        barrier_count += 1
        if barrier_count == 2:
            both_running.set()
        await both_running.wait()  # only completes if both run at the same time
        await release.wait()

    @app.post("/two")
    def two(background_tasks: BackgroundTasks) -> list[str]:
        return [background_tasks.add_task(slow), background_tasks.add_task(slow)]

    async with app.router.lifespan_context(app):
        import httpx

        transport = httpx.ASGITransport(app=_send_watcher(app, sent))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            # The request returns although its tasks block until `release` is set: the
            # ASGI cycle is not held open by them.
            async with asyncio.timeout(2):
                ids = (await client.post("/two")).json()
            await asyncio.wait_for(both_running.wait(), 2)
            assert [tm.store.get(i).record.status for i in ids] == [TaskStatus.RUNNING] * 2  # type: ignore[union-attr]
            release.set()
            for task_id in ids:
                assert (await finished(tm, task_id)).status is TaskStatus.SUCCESS
    assert seen_sent == [True, True]


async def test_eager_task_starts_before_the_response() -> None:
    tm = TaskManager()
    app = make_app(tm)
    started = asyncio.Event()

    @tm.task(eager=True)
    async def eager_job() -> None:
        started.set()

    async def lazy_job() -> None:
        started.set()

    @app.post("/eager")
    async def eager_route(tasks: ManagedBackgroundTasks) -> dict[str, bool]:
        tasks.add_task(eager_job)
        await asyncio.sleep(0.05)
        return {"started": started.is_set()}

    @app.post("/per-call")
    async def per_call(tasks: ManagedBackgroundTasks) -> dict[str, bool]:
        started.clear()
        tasks.add_task(lazy_job, eager=True)
        await asyncio.sleep(0.05)
        return {"started": started.is_set()}

    @app.post("/lazy")
    async def lazy_route(tasks: ManagedBackgroundTasks) -> dict[str, bool]:
        started.clear()
        tasks.add_task(lazy_job)
        await asyncio.sleep(0.05)
        return {"started": started.is_set()}

    async with serve(app) as client:
        assert (await client.post("/eager")).json() == {"started": True}
        assert (await client.post("/per-call")).json() == {"started": True}
        assert (await client.post("/lazy")).json() == {"started": False}


@pytest.mark.parametrize("guarded", [True, False], ids=["middleware", "dependency"])
@pytest.mark.parametrize("failure", ["exception", "http_exception"])
@pytest.mark.parametrize("style", ["auto_install", "annotation", "depends"])
async def test_route_that_raises_after_add_task_cancels_its_tasks(
    style: str, failure: str, guarded: bool
) -> None:
    tm = TaskManager()
    if guarded:  # TaskAdmin adds RequestTasksGuard to the app
        app = make_app(tm, auto_install=True)
        assert any(m.cls is RequestTasksGuard for m in app.user_middleware)
    else:  # bound once the app has started: too late for middleware, a dependency does it

        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            async with tm:
                tm.install(app, plain_background_tasks=True)
                yield

        app = FastAPI(lifespan=lifespan)
        app.middleware_stack = app.build_middleware_stack()  # as once served (started)
    ran: list[str] = []
    ids: list[str] = []

    def fail() -> None:
        if failure == "exception":
            raise RuntimeError("database exploded")
        raise HTTPException(400, "bad input")

    if style == "auto_install":

        @app.post("/x")
        def route_a(background_tasks: BackgroundTasks) -> None:
            ids.append(background_tasks.add_task(ran.append, "a"))
            fail()

    elif style == "annotation":

        @app.post("/x")
        async def route_b(tasks: ManagedBackgroundTasks) -> None:
            ids.append(tasks.add_task(ran.append, "b"))
            fail()

    else:

        @app.post("/x")
        async def route_c(tasks: ManagedBackgroundTasks = Depends(tm.get_tasks)) -> None:
            ids.append(tasks.add_task(ran.append, "c"))
            fail()

    async with app.router.lifespan_context(app):
        import httpx

        if not guarded:
            assert not any(m.cls is RequestTasksGuard for m in app.user_middleware)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post("/x")
        assert response.status_code == (500 if failure == "exception" else 400)
        record = await finished(tm, ids[0])
        await asyncio.sleep(0.05)
    assert record.status is TaskStatus.CANCELLED
    assert "request failed before its response was sent" in (record.error or "")
    assert ("RuntimeError" if failure == "exception" else "HTTPException") in (
        record.error or ""
    ) or (guarded and failure == "http_exception" and "it answered 400" in (record.error or ""))
    assert ran == []


async def test_response_with_its_own_background_task_cancels_the_added_ones() -> None:
    """FastAPI drops the request's background tasks when the route returns a response that
    carries its own: the tasks added are recorded as cancelled, saying why, at once."""
    tm = TaskManager()
    app = make_app(tm, auto_install=True)
    ran: list[str] = []
    ids: list[str] = []

    @app.post("/own")
    async def own(background_tasks: BackgroundTasks) -> JSONResponse:
        ids.append(background_tasks.add_task(ran.append, "added"))
        return JSONResponse({"ok": True}, background=BackgroundTask(ran.append, "its own"))

    async with serve(app) as client:
        assert (await client.post("/own")).status_code == 200
        record = await finished(tm, ids[0])
    assert record.status is TaskStatus.CANCELLED
    assert "a background task of its own" in (record.error or "")
    assert ran == ["its own"]


async def test_request_context_variables_reach_the_task() -> None:
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
    tm = TaskManager()
    app = make_app(tm, auto_install=True)
    seen: list[str] = []

    @app.middleware("http")
    async def set_request_id(request: Any, call_next: Any) -> Any:
        request_id.set(request.headers.get("x-request-id", "none"))
        return await call_next(request)

    async def async_task() -> None:
        seen.append("async:" + request_id.get())

    def sync_task() -> None:
        seen.append("sync:" + request_id.get())

    @app.post("/ctx")
    def ctx(background_tasks: BackgroundTasks) -> list[str]:
        return [background_tasks.add_task(async_task), background_tasks.add_task(sync_task)]

    async with serve(app) as client:
        ids = (await client.post("/ctx", headers={"x-request-id": "req-42"})).json()
        for task_id in ids:
            await finished(tm, task_id)
    assert sorted(seen) == ["async:req-42", "sync:req-42"]


async def test_sync_functions_run_in_threads_bounded_by_max_sync_threads() -> None:
    tm = TaskManager(max_sync_threads=2)
    lock = threading.Lock()
    active = 0
    peak = 0
    threads: set[int] = set()

    def blocking() -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
            threads.add(threading.get_ident())
        import time

        time.sleep(0.05)
        with lock:
            active -= 1

    async with tm:
        ids = [await tm.enqueue(blocking) for _ in range(6)]
        for task_id in ids:
            assert (await finished(tm, task_id)).status is TaskStatus.SUCCESS
    assert peak == 2
    assert threading.get_ident() not in threads


async def test_max_concurrent_tasks_caps_async_tasks() -> None:
    tm = TaskManager(max_concurrent_tasks=3)
    active = 0
    peak = 0

    async def work() -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.02)
        active -= 1

    async with tm:
        ids = [await tm.enqueue(work) for _ in range(12)]
        await wait_for(lambda: all(tm.store.get(i).record.status.is_terminal for i in ids))  # type: ignore[union-attr]
    assert peak == 3


async def test_routes_of_included_routers_are_bound() -> None:
    from fastapi import APIRouter

    tm = TaskManager()
    app = make_app(tm, auto_install=True)
    router = APIRouter(prefix="/v1")
    ran: list[str] = []

    @router.post("/plain")
    def plain(background_tasks: BackgroundTasks) -> dict[str, str]:
        return {"task_id": background_tasks.add_task(ran.append, "plain")}

    @router.post("/annotated")
    async def annotated(tasks: ManagedBackgroundTasks) -> dict[str, str]:
        return {"task_id": tasks.add_task(ran.append, "annotated")}

    app.include_router(router)
    async with serve(app) as client:
        for path in ("/v1/plain", "/v1/annotated"):
            task_id = (await client.post(path)).json()["task_id"]
            assert (await finished(tm, task_id)).status is TaskStatus.SUCCESS
    assert sorted(ran) == ["annotated", "plain"]


async def test_request_that_sends_no_response_cancels_its_tasks() -> None:
    """A route whose response sends nothing (a broken custom response): the tasks it added
    end cancelled, saying no response was sent, instead of staying pending."""
    from starlette.responses import Response

    class Silent(Response):
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            return None

    tm = TaskManager()
    app = make_app(tm, auto_install=True)
    ids: list[str] = []

    @app.post("/silent")
    async def silent(background_tasks: BackgroundTasks) -> Silent:
        ids.append(background_tasks.add_task(print, "never"))
        return Silent()

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/silent", "raw_path": b"/silent", "root_path": "",
        "query_string": b"", "headers": [(b"host", b"t")], "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }  # fmt: skip
    async with app.router.lifespan_context(app):
        await app(scope, receive, send)
        record = await finished(tm, ids[0])
    assert record.status is TaskStatus.CANCELLED
    assert record.error == "cancelled: the request ended without sending its response"
