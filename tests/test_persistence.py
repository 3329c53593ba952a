"""One behavioural suite for persistence, run against every backend.

memory (MemoryBackend), SQLite (a file), PostgreSQL, MariaDB and Redis: the last three are
real servers started by the test session (see conftest.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from _helpers import finished, serve, wait_for
from fastapi import BackgroundTasks, FastAPI, HTTPException

from fastapi_taskflow import (
    QueueConfig,
    TaskAdmin,
    TaskFilter,
    TaskManager,
    TaskRecord,
    TaskStatus,
    UnstorableArgumentError,
    task_log,
)
from fastapi_taskflow._background import bind
from fastapi_taskflow.backends import MemoryBackend, SnapshotBackend

BackendFactory = Callable[[], SnapshotBackend]


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> BackendFactory:
    """A factory of backend objects that all point at the same (fresh) storage."""
    kind = request.param
    if kind == "memory":
        shared = MemoryBackend()
        return lambda: shared
    if kind == "sqlite":
        from fastapi_taskflow.backends import SqliteBackend

        path = tmp_path / "tasks.db"
        return lambda: SqliteBackend(str(path))
    if kind == "redis":
        from fastapi_taskflow.backends import RedisBackend

        url = request.getfixturevalue("redis_url")
        prefix = f"t{uuid.uuid4().hex[:8]}"
        return lambda: RedisBackend(url, prefix=prefix)
    from fastapi_taskflow.backends import SqlBackend

    url = request.getfixturevalue("postgres_url" if kind == "postgres" else "mysql_url")
    return lambda: SqlBackend(url)


async def claim_from_outside(make_backend: BackendFactory) -> dict[str, TaskStatus]:
    """What another instance claims from the shared pending store now (id: status)."""
    backend = make_backend()
    await backend.open()
    try:
        coordinator = backend.coordinator()
        assert coordinator is not None
        return {r.task_id: r.status for r in await coordinator.claim("x", lease_s=30, limit=10)}
    finally:
        await backend.close()


def manager(make_backend: BackendFactory, **kwargs: Any) -> TaskManager:
    kwargs.setdefault("snapshot_interval", 3600.0)
    return TaskManager(snapshot_backend=make_backend(), **kwargs)


async def test_history_survives_a_restart_with_every_field(make_backend: BackendFactory) -> None:
    first = manager(make_backend)

    @first.task(name="billing.charge", retries=1)
    async def charge(order_id: int, *, amount: dict[str, Any]) -> None:
        task_log("charging", order=order_id)
        if order_id == 2:
            raise ValueError("card declined")

    async with first:
        ok = await first.enqueue(
            charge, 1, amount={"value": 9.5, "currency": "EUR", "items": [1, None, True]},
            tags={"tenant": "acme"}, idempotency_key="order-1", priority=3,
        )  # fmt: skip
        bad = await first.enqueue(charge, 2, amount={"value": 1})
        ok_record = (await finished(first, ok)).model_copy(deep=True)
        bad_record = (await finished(first, bad)).model_copy(deep=True)

    second = manager(make_backend)
    async with second:
        loaded_ok = await second.history.get(ok)
        loaded_bad = await second.history.get(bad)
        assert loaded_ok is not None and loaded_bad is not None
        assert loaded_ok.model_dump() == ok_record.model_dump()
        assert loaded_bad.model_dump() == bad_record.model_dump()
        assert (
            loaded_bad.status is TaskStatus.FAILED
            and loaded_bad.error == "ValueError: card declined"
        )
        assert "card declined" in (loaded_bad.stacktrace or "")
        assert loaded_ok.kwargs["amount"] == {
            "value": 9.5,
            "currency": "EUR",
            "items": [1, None, True],
        }
        assert loaded_ok.tags == {"tenant": "acme"} and loaded_ok.priority == 3
        assert loaded_ok.created_at.tzinfo is not None
        assert [log.message for log in loaded_ok.logs] == ["charging"]
        assert len(loaded_bad.attempts) == 2
        page = await second.history.query(status="failed", func_name="billing.charge")
        assert [r.task_id for r in page] == [bad]


async def test_plain_tasks_saved_compactly_read_back_with_every_field(
    make_backend: BackendFactory,
) -> None:
    """A task added with no options that succeeds at once is never built as a full record
    in memory: it is kept compactly and written to history from that form. What history
    gives back after a restart is what memory showed, field for field."""
    first = manager(make_backend)

    @first.task(name="mail.send")
    async def send(to: str, n: int, urgent: bool = False, note: None = None) -> None:
        return None

    async with first:
        ids = [
            await first.enqueue(send, "a@example.com", 1, True),
            await first.enqueue(send, to='ü"\n\u2028', n=-2, note=None),
        ]
        # (what this test is about: they end held compactly, never built as full records;
        # reading one while it runs would build it)
        await wait_for(lambda: all(isinstance(first.store._jobs.get(i), tuple) for i in ids))
        in_memory = [first.store.record(i) for i in ids]

    second = manager(make_backend)
    async with second:
        for task_id, before in zip(ids, in_memory, strict=True):
            after = await second.history.get(task_id)
            assert before is not None and after is not None
            assert after.model_dump() == before.model_dump()
            assert after.status is TaskStatus.SUCCESS and after.source == "enqueue"
            assert after.created_at <= after.start_time <= after.end_time  # type: ignore[operator]
            [attempt] = after.attempts
            assert (attempt.number, attempt.start_time, attempt.end_time) == (
                1,
                after.start_time,
                after.end_time,
            )
        loaded = [await second.history.get(i) for i in ids]
        assert [r.args for r in loaded if r] == [["a@example.com", 1, True], []]
        assert [r.kwargs for r in loaded if r] == [{}, {"to": 'ü"\n\u2028', "n": -2, "note": None}]
        page = await second.history.query(func_name="mail.send", status="success")
        assert {r.task_id for r in page} == set(ids)
        [stats] = await second.history.stats(func_name="mail.send")
        assert stats.total == stats.success == 2


async def test_success_and_failure_are_flushed_at_once_in_shared_batches(
    make_backend: BackendFactory,
) -> None:
    tm = manager(make_backend)  # a one-hour interval: only the immediate flush can do it
    saves: list[int] = []
    backend = tm.backend
    assert backend is not None
    original = backend.save

    async def counting_save(records: list[TaskRecord]) -> int:
        written = await original(records)
        saves.append(len(records))
        return written

    backend.save = counting_save  # type: ignore[method-assign]

    async def noop(i: int) -> None: ...

    async with tm:
        ids = [await tm.enqueue(noop, i) for i in range(200)]
        for task_id in ids:
            await finished(tm, task_id)
        await wait_for(lambda: sum(saves) >= 200)
        stored = backend.history()
        if stored is not None:
            assert (await stored.get(ids[-1])) is not None
        assert await tm.flush() == 0  # nothing changed since: nothing is written
    assert sum(saves) == 200
    assert len(saves) < 50  # many completions share one write


async def test_an_enqueue_cancelled_while_waiting_for_its_write_ahead(tmp_path: Path) -> None:
    """Three callers wait for one write-ahead batch and one of them is cancelled meanwhile:
    the other two return once the batch is durable, and all three tasks run (a task is
    accepted before its caller waits; cancelling the wait does not cancel the task)."""
    tm = TaskManager(database_url=f"sqlite+aiosqlite:///{tmp_path / 'wal.db'}")
    ran: list[int] = []

    @tm.task(persist=True)
    async def job(n: int) -> None:
        ran.append(n)

    async with tm:
        coordinator: Any = tm._coordinator
        release = asyncio.Event()
        write_cycle = coordinator.write_cycle

        async def slow_cycle(*args: Any, **kwargs: Any) -> Any:
            await release.wait()
            return await write_cycle(*args, **kwargs)

        coordinator.write_cycle = slow_cycle
        callers = [asyncio.create_task(tm.enqueue(job, n)) for n in range(3)]
        await asyncio.sleep(0.05)
        assert not any(caller.done() for caller in callers)  # all wait for the write
        callers[1].cancel()
        await asyncio.sleep(0)
        release.set()
        async with asyncio.timeout(10):
            ids = [await callers[0], await callers[2]]
        with pytest.raises(asyncio.CancelledError):
            await callers[1]
        await wait_for(lambda: sorted(ran) == [0, 1, 2])
        for task_id in ids:
            await finished(tm, task_id)


async def test_periodic_flush_writes_other_terminal_states(make_backend: BackendFactory) -> None:
    tm = manager(make_backend, snapshot_interval=0.1)
    gate = asyncio.Event()

    async def wait() -> None:
        await gate.wait()

    async with tm:
        task_id = await tm.enqueue(wait)
        await tm.cancel(task_id)
        backend = tm.backend
        assert backend is not None

        async def saved() -> bool:
            return any(r.task_id == task_id for r in await backend.load())

        for _ in range(100):
            if await saved():
                break
            await asyncio.sleep(0.05)
        assert await saved()


async def test_unfinished_persisted_tasks_are_requeued_once_with_everything_intact(
    make_backend: BackendFactory,
) -> None:
    runs: list[tuple[str, int]] = []
    gate = asyncio.Event()
    queues = [QueueConfig(name="mail", max_concurrency=1)]

    def register(tm: TaskManager) -> tuple[Any, Any]:
        @tm.task(name="mail.send", persist=True, queue="mail")
        async def send(address: str, attempt_no: int) -> None:
            runs.append((address, attempt_no))
            await gate.wait()

        @tm.task(name="mail.plain")
        async def plain() -> None:
            runs.append(("plain", 0))

        return send, plain

    first = manager(make_backend, queues=queues, shutdown_grace=0.05, max_concurrent_tasks=1)
    send, plain = register(first)
    async with first:
        blocker = await first.enqueue(send, "block@example.com", 0)
        await wait_for(lambda: bool(runs))
        waiting = await first.enqueue(
            send, "a@example.com", 1, tags={"k": "v"}, priority=7, idempotency_key="mail-a"
        )
        dropped = await first.enqueue(plain)
    # `waiting` never started and is persisted; `plain` is not persisted; `blocker` was
    # running and is not requeue_on_interrupt: it ends interrupted.
    assert first.store.get(dropped).record.status is TaskStatus.INTERRUPTED  # type: ignore[union-attr]
    assert first.store.get(blocker).record.status is TaskStatus.INTERRUPTED  # type: ignore[union-attr]

    gate.set()
    runs.clear()
    second = manager(make_backend, queues=queues)
    register(second)
    async with second:
        record = await finished(second, waiting)
        assert record.status is TaskStatus.SUCCESS
        assert record.source == "requeue"
        assert record.args == ["a@example.com", 1]
        assert record.tags == {"k": "v"} and record.priority == 7 and record.queue == "mail"
        assert record.idempotency_key == "mail-a"
        assert await second.enqueue(send, "x", 9, idempotency_key="mail-a") == waiting
        await asyncio.sleep(0.05)
    assert runs == [("a@example.com", 1)]

    third = manager(make_backend, queues=queues)
    register(third)
    async with third:
        await asyncio.sleep(0.05)
    assert runs == [("a@example.com", 1)]  # exactly once: nothing left to requeue


async def test_requeue_pending_covers_every_task_and_interrupted_ones_rerun(
    make_backend: BackendFactory,
) -> None:
    ran: list[str] = []
    stop = asyncio.Event()

    def register(tm: TaskManager) -> tuple[Any, Any]:
        @tm.task(name="jobs.wait")
        async def wait(label: str) -> None:
            ran.append(label)
            await stop.wait()

        @tm.task(name="jobs.resumable", requeue_on_interrupt=True)
        async def resumable(label: str) -> None:
            ran.append(label)
            await stop.wait()

        return wait, resumable

    first = manager(make_backend, requeue_pending=True, max_concurrent_tasks=2, shutdown_grace=0.05)
    wait, resumable = register(first)
    async with first:
        await first.enqueue(wait, "running-plain")
        resumed = await first.enqueue(resumable, "running-resumable")
        queued = await first.enqueue(wait, "queued")
        await wait_for(lambda: len(ran) == 2)
    stop.set()
    ran.clear()
    second = manager(make_backend, requeue_pending=True)
    register(second)
    async with second:
        assert (await finished(second, queued)).status is TaskStatus.SUCCESS
        assert (await finished(second, resumed)).status is TaskStatus.SUCCESS
    assert sorted(ran) == ["queued", "running-resumable"]


async def test_unregistered_pending_task_stays_pending_and_is_reported(
    make_backend: BackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gate = asyncio.Event()
    first = manager(make_backend, max_concurrent_tasks=1, shutdown_grace=0.01)

    @first.task(name="legacy.job", persist=True)
    async def legacy(n: int) -> None:
        await gate.wait()

    async with first:
        await first.enqueue(legacy, 0)
        orphan = await first.enqueue(legacy, 1)

    second = manager(make_backend)  # legacy.job is not registered here
    async with second:
        record = await second.history.get(orphan)
        assert record is not None and record.status is TaskStatus.PENDING
        page = await second.history.query(status="pending")
        assert orphan in [r.task_id for r in page]
    assert "legacy.job" in caplog.text and "not registered" in caplog.text

    gate.set()
    ran: list[int] = []
    third = manager(make_backend)

    @third.task(name="legacy.job", persist=True)
    async def legacy_again(n: int) -> None:
        ran.append(n)

    async with third:
        assert (await finished(third, orphan)).status is TaskStatus.SUCCESS
    assert ran == [1]


async def test_arguments_that_cannot_be_stored_are_refused(make_backend: BackendFactory) -> None:
    tm = manager(make_backend)

    @tm.task(persist=True)
    async def needs_json(user: object, *, when: object = None) -> None: ...

    async with tm:
        with pytest.raises(UnstorableArgumentError, match="argument 'when' is a datetime"):
            await tm.enqueue(needs_json, 1, when=datetime.now(UTC))
        with pytest.raises(UnstorableArgumentError, match="positional argument 0 is a object"):
            await tm.enqueue(needs_json, object())
        assert len(tm.store) == 0  # nothing half-accepted


async def test_history_queries_filters_pagination_counts_and_stats(
    make_backend: BackendFactory,
) -> None:
    tm = manager(make_backend)

    @tm.task(name="a")
    async def a(n: int) -> None:
        if n % 3 == 0:
            raise RuntimeError(f"multiple of three: {n}")

    @tm.task(name="b")
    async def b(n: int) -> None: ...

    async with tm:
        ids = []
        for n in range(12):
            func = a if n % 2 == 0 else b
            ids.append(await tm.enqueue(func, n, tags={"half": "low" if n < 6 else "high"}))
            await finished(tm, ids[-1])
        await tm.flush()
        # drop the in-memory copies: answers must come from the backend now
        for task_id in ids:
            tm.store.remove(task_id)
        history = tm.history
        assert await history.count() == 12
        assert await history.count(status="failed") == 2  # n = 0 and 6
        failed = await history.query(status="failed", func_name="a")
        assert [r.args for r in failed] == [[6], [0]]
        assert [r.task_id for r in await history.query(tags={"half": "high"}, limit=100)] == list(
            reversed(ids[6:])
        )
        assert len(await history.query(text="multiple of three: 6")) == 1
        later = (await history.get(ids[6])).created_at  # type: ignore[union-attr]
        assert len(await history.query(since=later, limit=100)) == 6
        assert len(await history.query(until=later, limit=100)) == 6
        assert len(await history.query(since=later + timedelta(days=1))) == 0
        seen: list[str] = []
        cursor = None
        while True:
            page = await history.query(limit=5, cursor=cursor)
            seen += [r.task_id for r in page]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == list(reversed(ids))
        stats = {s.func_name: s for s in await history.stats()}
        assert stats["a"].total == 6 and stats["a"].failed == 2 and stats["a"].success == 4
        assert stats["b"].success_rate == 1.0 and stats["b"].duration_p50 is not None


async def test_start_up_does_not_load_history(make_backend: BackendFactory) -> None:
    first = manager(make_backend)
    async with first:
        await finished(first, await first.enqueue(asyncio.sleep, 0))
    second = manager(make_backend)
    backend = second.backend
    assert backend is not None
    loads = 0
    original = backend.load

    async def counting_load() -> list[TaskRecord]:
        nonlocal loads
        loads += 1
        return await original()

    backend.load = counting_load  # type: ignore[method-assign]
    async with second:
        assert len(second.store) == 0
    assert loads == 0


class SixMethodBackend(SnapshotBackend):
    """A custom backend with only the six required methods, storing JSON strings."""

    def __init__(self) -> None:
        self.history_rows: dict[str, str] = {}
        self.pending_rows: list[str] = []
        self.closed = 0

    async def save(self, records: list[TaskRecord]) -> int:
        for record in records:
            self.history_rows[record.task_id] = record.model_dump_json()
        return len(records)

    async def load(self) -> list[TaskRecord]:
        return [TaskRecord.model_validate_json(row) for row in self.history_rows.values()]

    async def save_pending(self, records: list[TaskRecord]) -> int:
        self.pending_rows = [r.model_dump_json() for r in records]
        return len(records)

    async def load_pending(self) -> list[TaskRecord]:
        return [TaskRecord.model_validate_json(row) for row in self.pending_rows]

    async def clear_pending(self) -> None:
        self.pending_rows = []

    async def close(self) -> None:
        self.closed += 1


async def test_custom_backend_with_only_the_six_methods() -> None:
    backend = SixMethodBackend()
    gate = asyncio.Event()
    ran: list[int] = []

    def register(tm: TaskManager) -> Any:
        @tm.task(name="custom.job", persist=True)
        async def job(n: int) -> None:
            if n == 0:
                await gate.wait()
            ran.append(n)
            if n == 2:
                raise RuntimeError("two fails")

        return job

    first = TaskManager(snapshot_backend=backend, max_concurrent_tasks=1, shutdown_grace=0.01)
    job = register(first)
    async with first:
        await first.enqueue(job, 0)
        pending = await first.enqueue(job, 1)
    assert len(backend.pending_rows) == 1 and backend.closed == 1
    gate.set()
    second = TaskManager(snapshot_backend=backend)
    job = register(second)
    async with second:
        assert (await finished(second, pending)).status is TaskStatus.SUCCESS
        failed = await second.enqueue(job, 2)
        await finished(second, failed)
        await second.flush()
        second.store.remove(failed)
        page = await second.history.query(status="failed")
        assert [r.task_id for r in page] == [failed]
        assert await second.history.count(status="success") >= 1
    assert ran == [1, 2]


@pytest.mark.parametrize("slow_route", [False, True])
async def test_a_failed_request_never_overwrites_the_task_that_holds_its_key(
    make_backend: BackendFactory, slow_route: bool
) -> None:
    """A persisted task's id comes from its idempotency key. A route that adds a task with
    a key already used by a succeeded task, then fails, must not record its cancelled task
    under that id: the succeeded one would be overwritten (and its key freed). Checked on a
    manager that does not hold the succeeded task in memory, as another instance would."""
    tm = manager(make_backend, snapshot_interval=3600.0)
    runs: list[int] = []

    @tm.task(name="billing.charge", persist=True)
    async def charge(n: int) -> None:
        runs.append(n)

    app = FastAPI()
    TaskAdmin(app, tm, auto_install=True)

    @app.post("/charge-then-fail")
    async def charge_then_fail(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(charge, 2, idempotency_key="order-1")
        if slow_route:  # its write-ahead is settled (refused) before the request fails
            await asyncio.sleep(0.3)
        raise HTTPException(400, "card declined")

    async with serve(app) as client:
        first = await tm.enqueue(charge, 1, idempotency_key="order-1")
        assert (await finished(tm, first)).status is TaskStatus.SUCCESS
        await tm.flush()
        tm.store.remove(first)  # as on an instance that never held it
        assert (await client.post("/charge-then-fail")).status_code == 400
        await asyncio.sleep(0.2)
        await tm.flush()
        record = await tm.history.get(first)
        assert record is not None and record.status is TaskStatus.SUCCESS, record
        assert runs == [1]
        assert await tm.enqueue(charge, 3, idempotency_key="order-1") == first
        await asyncio.sleep(0.1)
        assert runs == [1]


async def test_a_task_retried_in_place_while_tasks_stream_in_runs_again(
    make_backend: BackendFactory,
) -> None:
    """A retry keeps the task's id (``retry_replaces_original``). While tasks stream in, the
    failed record may still wait in the buffer when the retry is written ahead, and saving
    that record removes the id from the pending store: the retry must still be added there,
    run, and end as the task's one record."""
    tm = manager(make_backend)
    runs: dict[int, int] = {}

    @tm.task(persist=True)
    async def flaky(n: int) -> None:
        runs[n] = runs.get(n, 0) + 1
        if runs[n] == 1:
            raise RuntimeError("the first attempt fails")

    @tm.task(persist=True)
    async def noop() -> None:
        pass

    ids: list[str] = []
    async with tm:
        streaming = True

        async def stream() -> None:
            while streaming:
                await tm.enqueue(noop)
                await asyncio.sleep(0)  # (enqueue may not wait: the backend is slow)

        producers = [asyncio.create_task(stream()) for _ in range(5)]
        try:
            for n in range(20):
                task_id = await tm.enqueue(flaky, n)
                assert (await finished(tm, task_id)).status is TaskStatus.FAILED
                assert await tm.retry(task_id) == task_id
                assert (await finished(tm, task_id)).status is TaskStatus.SUCCESS
                ids.append(task_id)
        finally:
            streaming = False
            await asyncio.gather(*producers)
        await wait_for(lambda: all(job.record.status.is_terminal for job in tm.store))
        await tm.flush()
        for task_id in ids:
            record = await tm.history.get(task_id)
            assert record is not None and record.status is TaskStatus.SUCCESS, record
        coordinator = tm._coordinator
        if coordinator is not None:
            live = await coordinator.live(TaskFilter(), limit=100)
            assert live.items == []
    assert runs == dict.fromkeys(range(20), 2)


async def test_a_task_with_a_free_slot_is_written_ahead_as_running_at_once(
    make_backend: BackendFactory,
) -> None:
    """Written ahead while a slot is free, a task is recorded as running in that same
    write (no separate running mark); one that has to wait for a slot is written ahead as
    pending and marked running before it starts. Either way the shared view is right."""
    tm = manager(make_backend, queues=[QueueConfig(name="default", max_concurrency=1)])
    gates = {1: asyncio.Event(), 2: asyncio.Event()}
    started: list[int] = []

    @tm.task(persist=True)
    async def hold(n: int) -> None:
        started.append(n)
        await gates[n].wait()

    async with tm:
        coordinator = tm._coordinator
        assert coordinator is not None
        marks: list[list[str]] = []  # ids of the running marks written
        update = coordinator.update

        async def counted_update(records: Any) -> None:
            marks.append([r.task_id for r in records])
            await update(records)

        coordinator.update = counted_update  # type: ignore[method-assign]
        write_cycle = getattr(coordinator, "write_cycle", None)
        if write_cycle is not None:  # SQL: accepts, marks and history in one transaction

            async def counted_cycle(*args: Any, **kwargs: Any) -> list[str]:
                marks.append(list(kwargs["running"]))
                result: list[str] = await write_cycle(*args, **kwargs)
                return result

            coordinator.write_cycle = counted_cycle  # type: ignore[attr-defined]

        async def status(task_id: str) -> TaskStatus | None:
            record = await coordinator.get_live(task_id)
            return None if record is None else record.status

        first = await tm.enqueue(hold, 1)
        assert await status(first) is TaskStatus.RUNNING
        await wait_for(lambda: started == [1])
        second = await tm.enqueue(hold, 2)  # the one slot is taken: it waits, pending
        assert await status(second) is TaskStatus.PENDING
        assert not any(first in ids for ids in marks)
        gates[1].set()
        await wait_for(lambda: started == [1, 2])
        assert await status(second) is TaskStatus.RUNNING
        assert any(second in ids for ids in marks)
        gates[2].set()
        assert (await finished(tm, second)).status is TaskStatus.SUCCESS
        await tm.flush()
        assert await coordinator.get_live(first) is None


async def test_a_plain_task_written_ahead_reads_back_whole_from_the_shared_store(
    make_backend: BackendFactory,
) -> None:
    """A persisted task added with no options is written ahead from its few fields, not
    from a full record. What another instance reads of it in the shared store is the same
    record this instance shows: arguments of every JSON kind, times, queue, source and
    instance; then it runs with the very arguments it was given."""
    tm = manager(make_backend, max_concurrent_tasks=1, instance_id="writer-1")
    gate = asyncio.Event()
    seen: list[tuple[Any, ...]] = []

    @tm.task(name="mail.send", persist=True)
    async def send(*args: Any, **kwargs: Any) -> None:
        seen.append((args, kwargs))
        await gate.wait()

    args = ("ada@example.com", 3, 2.5, True, None, ["x", 1.5, {"deep": [1, 2]}], 'é"\n')
    kwargs = {"subject": "Hi", "retry": 0, "extra": {"a": [None, False]}, "empty": []}
    async with tm:
        coordinator = tm._coordinator
        assert coordinator is not None
        first = await tm.enqueue(send, "holder")  # takes the one slot
        await wait_for(lambda: len(seen) == 1)
        plain = await tm.enqueue(send, *args, **kwargs)  # waits: pending in the shared store
        bare = await tm.enqueue(send)
        if getattr(coordinator, "_accepts_documents", False):  # (the built-in SQL and Redis)
            assert tm.store._jobs[plain].light  # the path under test: no record built yet
        other = make_backend()
        await other.open()
        try:
            outside = other.coordinator()
            assert outside is not None
            for task_id in (plain, bare):
                shared = await outside.get_live(task_id)
                assert shared is not None and shared.status is TaskStatus.PENDING
                mine = tm.store.record(task_id)
                assert mine is not None
                assert shared.model_dump() == mine.model_dump()
            shared = await outside.get_live(plain)
            assert shared is not None
            assert shared.args == [list(a) if isinstance(a, tuple) else a for a in args]
            assert shared.kwargs == kwargs
            assert shared.func_name == "mail.send" and shared.source == "enqueue"
            assert shared.instance_id == "writer-1" and shared.queue == "default"
            assert shared.created_at.tzinfo is not None
        finally:
            await other.close()
        gate.set()
        for task_id in (first, plain, bare):
            assert (await finished(tm, task_id)).status is TaskStatus.SUCCESS
        assert seen[1] == (args, kwargs)
        await tm.flush()
        for task_id in (first, plain, bare):
            assert await coordinator.get_live(task_id) is None  # history completed it
            saved = await tm.history.get(task_id)
            assert saved is not None and saved.status is TaskStatus.SUCCESS


async def test_a_requests_tasks_are_written_ahead_once_its_response_is_sent(
    make_backend: BackendFactory,
) -> None:
    """FastAPI runs a request's background tasks only after its response is sent, so a
    persisted task added in a request is written ahead then: in one write, as running when
    it has a slot (no running mark after it). A request that fails never runs its tasks:
    they are recorded as cancelled and never reach the shared pending store."""
    tm = manager(make_backend)
    ran: list[int] = []

    @tm.task(name="orders.ship", persist=True)
    async def ship(n: int) -> None:
        ran.append(n)

    app = FastAPI()
    TaskAdmin(app, tm, auto_install=True)
    added: dict[str, str] = {}

    @app.post("/ship")
    async def ship_route(background_tasks: BackgroundTasks) -> dict[str, str]:
        added["ok"] = background_tasks.add_task(ship, 1)
        return {"task_id": added["ok"]}

    @app.post("/ship-then-fail")
    async def ship_then_fail(background_tasks: BackgroundTasks) -> None:
        added["failed"] = background_tasks.add_task(ship, 2)
        await asyncio.sleep(0.2)  # several write cycles pass while the request runs
        raise HTTPException(400, "out of stock")

    async with serve(app) as client:
        coordinator = tm._coordinator
        assert coordinator is not None
        writes: list[tuple[str, str]] = []  # (task id, status) of each one written ahead
        marks: list[str] = []  # ids of running marks
        accept, update = coordinator.accept, coordinator.update

        async def spied_accept(records: Any, **kwargs: Any) -> list[str]:
            writes.extend((r.task_id, r.status) for r in records)
            result: list[str] = await accept(records, **kwargs)
            return result

        async def spied_update(records: Any) -> None:
            marks.extend(r.task_id for r in records)
            await update(records)

        coordinator.accept = spied_accept  # type: ignore[method-assign]
        coordinator.update = spied_update  # type: ignore[method-assign]
        write_cycle = getattr(coordinator, "write_cycle", None)
        if write_cycle is not None:

            async def spied_cycle(accepted: Any, **kwargs: Any) -> list[str]:
                writes.extend((r.task_id, r.status) for r in accepted)
                marks.extend(kwargs["running"])
                result: list[str] = await write_cycle(accepted, **kwargs)
                return result

            coordinator.write_cycle = spied_cycle  # type: ignore[attr-defined]

        response = await client.post("/ship")
        assert response.status_code == 200
        task_id = response.json()["task_id"]
        assert (await finished(tm, task_id)).status is TaskStatus.SUCCESS
        assert writes == [(task_id, TaskStatus.RUNNING)]
        assert task_id not in marks
        assert (await client.post("/ship-then-fail")).status_code == 400
        failed = added["failed"]
        assert (await finished(tm, failed)).status is TaskStatus.CANCELLED
        await tm.flush()
        assert [w for w in writes if w[0] == failed] == []
        assert ran == [1]
        for tid, status in ((task_id, TaskStatus.SUCCESS), (failed, TaskStatus.CANCELLED)):
            saved = await tm.history.get(tid)
            assert saved is not None and saved.status is status
            assert await coordinator.get_live(tid) is None


async def test_a_slot_taken_for_a_task_that_is_refused_is_given_back(
    make_backend: BackendFactory,
) -> None:
    """A task whose id another instance already holds (the same idempotency key) is not
    added; the slot it took while being written ahead goes back to the queue."""
    owner = manager(make_backend)
    other = manager(make_backend, queues=[QueueConfig(name="default", max_concurrency=1)])
    release = asyncio.Event()
    runs: list[str] = []

    async def work(label: str) -> None:
        runs.append(label)
        if label == "held":
            await release.wait()

    for tm in (owner, other):
        tm.task(name="jobs.work", persist=True)(work)
    async with owner, other:
        held = await owner.enqueue(work, "held", idempotency_key="order-7")
        await wait_for(lambda: runs == ["held"])
        assert await other.enqueue(work, "again", idempotency_key="order-7") == held
        later = await other.enqueue(work, "later")
        assert (await finished(other, later)).status is TaskStatus.SUCCESS
        release.set()
        assert (await finished(owner, held)).status is TaskStatus.SUCCESS
    assert runs == ["held", "later"]


async def test_a_task_claimed_as_the_instance_stops_goes_back_at_once(
    make_backend: BackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The heartbeat claims a dead instance's tasks just as this instance begins to shut
    down: one that never started is given back at once (a live instance claims it right
    away, not when the lease ends), one that was running keeps the lease (given back, it
    would read as never started), and no heartbeat failure is logged."""
    tm = manager(make_backend, lease_s=30.0)

    @tm.task(name="jobs.adopted", persist=True)
    async def adopted() -> None:
        pass

    base = datetime.now(UTC)
    records = [
        TaskRecord(task_id=f"dead-{n}", func_name="jobs.adopted", created_at=base, status=status)
        for n, status in enumerate((TaskStatus.PENDING, TaskStatus.RUNNING))
    ]
    release_claim = asyncio.Event()
    async with tm:
        coordinator = tm._coordinator
        assert coordinator is not None and tm._leases is not None
        await coordinator.accept(records, owner="dead", lease_s=0.01, key_ttl_s=60)
        await asyncio.sleep(0.05)  # the dead instance's lease has ended
        claim = coordinator.claim

        claimed = asyncio.Event()

        async def slow_claim(*args: Any, **kwargs: Any) -> list[TaskRecord]:
            found = await claim(*args, **kwargs)
            if found:
                claimed.set()
                await release_claim.wait()
            return found

        coordinator.claim = slow_claim  # type: ignore[method-assign]
        tm._leases.poke()  # the next heartbeat now
        await asyncio.wait_for(claimed.wait(), 5)
        stopping = asyncio.create_task(tm.shutdown())  # (waits for the heartbeat)
        await asyncio.sleep(0)
        assert not tm.started
        release_claim.set()
        await stopping
    assert "heartbeat" not in caplog.text and "not running" not in caplog.text
    assert await claim_from_outside(make_backend) == {"dead-0": TaskStatus.PENDING}


async def test_a_requests_task_held_when_shutdown_begins_runs_after_the_restart(
    make_backend: BackendFactory,
) -> None:
    """A persisted task added by a request whose response was not sent yet when the app
    shuts down (not written ahead: that waits for the response) is saved as pending by the
    shutdown and runs once after the restart."""
    runs: list[int] = []

    def register(tm: TaskManager) -> Any:
        @tm.task(name="jobs.receipt", persist=True)
        async def receipt(n: int) -> None:
            runs.append(n)

        return receipt

    first = manager(make_backend)
    receipt = register(first)
    await first.startup()
    try:
        in_flight = bind(BackgroundTasks(), first)  # the tasks of a request still running
        task_id = in_flight.add_task(receipt, 7)
        await asyncio.sleep(0.1)  # write cycles come and go: it is not written ahead
        coordinator = first._coordinator
        if coordinator is not None:
            assert await coordinator.get_live(task_id) is None
    finally:
        await first.shutdown()
    assert runs == []

    second = manager(make_backend)
    register(second)
    async with second:
        record = await finished(second, task_id)
        assert record.status is TaskStatus.SUCCESS and record.source == "requeue"
    assert runs == [7]
    del in_flight


async def test_a_task_durable_only_once_shutdown_began_is_requeued_not_interrupted(
    make_backend: BackendFactory,
) -> None:
    """A persisted task added just before shutdown, whose write-ahead becomes durable while
    the shutdown gives running tasks their grace period, stays pending and runs after the
    restart: it is not recorded as interrupted (which would also take it out of the
    pending store)."""
    runs: list[int] = []
    release_blocker = asyncio.Event()

    def register(tm: TaskManager) -> tuple[Any, Any]:
        @tm.task(name="jobs.blocker", persist=True)
        async def blocker() -> None:
            await release_blocker.wait()

        @tm.task(name="jobs.late", persist=True)
        async def late(n: int) -> None:
            runs.append(n)

        return blocker, late

    first = manager(make_backend, shutdown_grace=10.0)
    blocker, late = register(first)
    await first.startup()
    try:
        await first.enqueue(blocker)
        coordinator = first._coordinator
        assert coordinator is not None
        writes_go = asyncio.Event()
        for name in ("accept", "write_cycle"):
            original = getattr(coordinator, name, None)
            if original is None:
                continue

            async def held(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                await writes_go.wait()
                return await _original(*args, **kwargs)

            setattr(coordinator, name, held)
        adding = asyncio.create_task(first.enqueue(late, 1))
        await asyncio.sleep(0.05)  # its write-ahead is in flight, held
        stopping = asyncio.create_task(first.shutdown())
        await asyncio.sleep(0.05)  # the shutdown waits for the running blocker
        assert not first.started and not stopping.done()
        writes_go.set()
        late_id = await adding
        await asyncio.sleep(0.05)
        release_blocker.set()
    finally:
        writes_go.set()
        release_blocker.set()
        await stopping
    assert runs == []

    second = manager(make_backend)
    register(second)
    async with second:
        record = await finished(second, late_id)
        assert record.status is TaskStatus.SUCCESS and record.source == "requeue"
    assert runs == [1]


async def test_a_task_marked_running_shows_its_progress_after_the_heartbeat(
    make_backend: BackendFactory,
) -> None:
    """A task that waited for a slot is marked running in the shared store when it starts
    (on SQL backends the mark is the status alone), one that had a slot is written ahead as
    running; either way the owner's next heartbeat publishes its start time and attempts,
    so another instance's live view shows them."""
    release = {1: asyncio.Event(), 2: asyncio.Event()}
    started: list[int] = []
    tm = manager(make_backend, max_concurrent_tasks=1)

    @tm.task(name="jobs.hold", persist=True)
    async def hold(n: int) -> None:
        started.append(n)
        await release[n].wait()

    async with tm:
        coordinator = tm._coordinator
        assert coordinator is not None and tm._leases is not None
        first = await tm.enqueue(hold, 1)  # written ahead as running: it has the free slot
        await wait_for(lambda: started == [1])
        await tm._leases.beat()
        record = await coordinator.get_live(first)
        assert record is not None and record.status is TaskStatus.RUNNING
        assert record.start_time is not None and len(record.attempts) == 1
        second = await tm.enqueue(hold, 2)  # waits for the one slot
        release[1].set()
        await wait_for(lambda: started == [1, 2])

        async def shared() -> TaskRecord | None:
            return await coordinator.get_live(second)

        record = await shared()
        assert record is not None and record.status is TaskStatus.RUNNING
        await tm._leases.beat()
        record = await shared()
        assert record is not None and record.status is TaskStatus.RUNNING
        assert record.start_time is not None and len(record.attempts) == 1
        release[2].set()


async def test_tasks_accepted_during_a_slow_write_ahead_are_written_beside_it(
    make_backend: BackendFactory,
) -> None:
    """Where the backend takes writes on several connections (PostgreSQL, MySQL/MariaDB,
    Redis), a second write-ahead cycle starts while the first is still in the database, so
    a slow write does not hold up the tasks accepted meanwhile. SQLite (one writer) and the
    in-memory reference backend write one cycle at a time."""
    tm = manager(make_backend)
    done: list[int] = []

    @tm.task(name="jobs.quick", persist=True)
    async def quick(n: int) -> None:
        done.append(n)

    async with tm:
        coordinator = tm._coordinator
        assert coordinator is not None and tm.backend is not None
        beside = tm.backend._history_beside_write_ahead()
        release = asyncio.Event()
        calls: list[str] = []
        for name in ("accept", "write_cycle"):
            original = getattr(coordinator, name, None)
            if original is None:
                continue

            async def slow_first(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                calls.append("write")
                if len(calls) == 1:
                    await release.wait()
                return await _original(*args, **kwargs)

            setattr(coordinator, name, slow_first)
        first = asyncio.create_task(tm.enqueue(quick, 1))
        try:
            await wait_for(lambda: len(calls) == 1)
            second = asyncio.create_task(tm.enqueue(quick, 2))
            finished_early, _ = await asyncio.wait({second}, timeout=1.0)
            assert bool(finished_early) is beside
            if beside:
                await wait_for(lambda: done == [2])
        finally:
            release.set()
        ids = [await first, await second]
        for task_id in ids:
            assert (await finished(tm, task_id)).status is TaskStatus.SUCCESS
    assert sorted(done) == [1, 2]


async def test_a_running_task_of_an_unknown_function_is_not_given_back_as_pending(
    make_backend: BackendFactory,
) -> None:
    """An instance that claims a dead instance's tasks without having their function gives
    the one that never started back at once, but not the one that was running: given back,
    it would read as never started, and an instance that has the function would run it
    again. That one stays claimed until the lease ends, and is then claimed as running."""
    base = datetime.now(UTC)
    records = [
        TaskRecord(
            task_id="was-running", func_name="jobs.elsewhere", created_at=base,
            status=TaskStatus.RUNNING,
        ),
        TaskRecord(
            task_id="never-started", func_name="jobs.elsewhere",
            created_at=base + timedelta(microseconds=1),
        ),
    ]  # fmt: skip
    lacking = manager(make_backend, lease_s=0.3)
    async with lacking:
        coordinator = lacking._coordinator
        assert coordinator is not None and lacking._leases is not None
        await coordinator.accept(records, owner="dead", lease_s=0.01, key_ttl_s=60)
        await asyncio.sleep(0.05)  # the dead instance's lease has ended
        await lacking._leases.beat()  # claims both, has neither function
        taken = await coordinator.claim("probe", lease_s=30, limit=10)
        assert {r.task_id: r.status for r in taken} == {"never-started": TaskStatus.PENDING}
    await asyncio.sleep(0.4)  # the stopped instance's lease on the other one ends
    assert await claim_from_outside(make_backend) == {"was-running": TaskStatus.RUNNING}
