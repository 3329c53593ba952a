"""Running tasks: retries, backoff, timeouts, statuses, logs, cancellation, shutdown."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from typing import Any

import pytest
from _helpers import finished, wait_for

from fastapi_taskflow import (
    ConfigurationError,
    DuplicateTaskError,
    InvalidTaskStateError,
    ManagedBackgroundTasks,
    QueueConfig,
    QueueFullError,
    RetryPolicy,
    TaskflowError,
    TaskManager,
    TaskStatus,
    get_task_context,
    task_log,
)


async def test_retries_until_success_and_every_attempt_is_visible() -> None:
    tm = TaskManager()
    calls = 0

    @tm.task(retries=3, delay=0.0)
    async def flaky() -> None:
        nonlocal calls
        calls += 1
        task_log(f"attempt {calls}")
        if calls < 3:
            raise ConnectionError(f"try {calls} failed")

    async with tm:
        record = await finished(tm, await tm.enqueue(flaky))
    assert record.status is TaskStatus.SUCCESS
    assert calls == 3
    assert record.retries_used == 2
    assert [a.number for a in record.attempts] == [1, 2, 3]
    assert [a.error for a in record.attempts] == [
        "ConnectionError: try 1 failed",
        "ConnectionError: try 2 failed",
        None,
    ]
    warnings = [log.message for log in record.logs if log.level == "warning"]
    assert len(warnings) == 2 and "retrying" in warnings[0]
    assert [log.attempt for log in record.logs if log.level == "info"] == [1, 2, 3]


async def test_failure_after_retries_keeps_message_and_stack_trace() -> None:
    tm = TaskManager()

    @tm.task(retries=2)
    def always_fails(order_id: int) -> None:
        raise ValueError(f"order {order_id} is invalid")

    async with tm:
        record = await finished(tm, await tm.enqueue(always_fails, 17))
    assert record.status is TaskStatus.FAILED
    assert record.retries_used == 2
    assert len(record.attempts) == 3
    assert record.error == "ValueError: order 17 is invalid"
    assert record.stacktrace is not None
    assert "always_fails" in record.stacktrace and "ValueError" in record.stacktrace
    assert record.logs[-1].level == "error"


async def test_retry_only_on_chosen_exceptions() -> None:
    tm = TaskManager()
    calls: list[str] = []

    @tm.task(retries=5, retry_on=[ConnectionError])
    async def picky(kind: str) -> None:
        calls.append(kind)
        raise (ConnectionError if kind == "net" else KeyError)(kind)

    async with tm:
        bad = await finished(tm, await tm.enqueue(picky, "key"))
        assert bad.status is TaskStatus.FAILED and bad.retries_used == 0
        net = await finished(tm, await tm.enqueue(picky, "net"))
        assert net.status is TaskStatus.FAILED and net.retries_used == 5
    assert calls.count("key") == 1 and calls.count("net") == 6


async def test_backoff_timing_within_tolerance() -> None:
    tm = TaskManager()

    @tm.task(retries=3, delay=0.05, backoff=2.0)
    async def fails() -> None:
        raise RuntimeError("nope")

    async with tm:
        record = await finished(tm, await tm.enqueue(fails))
    starts = [a.start_time for a in record.attempts]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    for gap, expected in zip(gaps, [0.05, 0.1, 0.2], strict=True):
        assert expected <= gap < expected + 0.1, gaps


def test_retry_policy_values() -> None:
    policy = RetryPolicy(retries=5, delay=1.0, backoff=3.0, max_delay=5.0)
    error = RuntimeError()
    assert [policy.next_delay(error, n) for n in range(1, 7)] == [1.0, 3.0, 5.0, 5.0, 5.0, None]
    jittery = RetryPolicy(retries=1, delay=10.0, jitter=0.2)
    for _ in range(50):
        wait = jittery.next_delay(error, 1)
        assert wait is not None and 8.0 <= wait <= 12.0
    with pytest.raises(ConfigurationError, match="backoff"):
        RetryPolicy(backoff=0.5)
    with pytest.raises(ConfigurationError, match="retry_on"):
        RetryPolicy(retry_on=("ValueError",))  # type: ignore[arg-type]


async def test_timeout_cancels_a_slow_async_attempt_and_counts_as_failure() -> None:
    tm = TaskManager()
    cancelled = 0

    @tm.task(timeout=0.05, retries=1)
    async def slow() -> None:
        nonlocal cancelled
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled += 1
            raise

    async with tm:
        record = await finished(tm, await tm.enqueue(slow))
    assert record.status is TaskStatus.FAILED
    assert cancelled == 2
    assert record.retries_used == 1
    assert record.error is not None and "TaskTimeoutError" in record.error
    assert "0.05s timeout" in record.error
    assert record.duration is not None and record.duration < 1.0


async def test_status_lifecycle_and_timestamps() -> None:
    tm = TaskManager()
    release = asyncio.Event()

    async def job() -> None:
        await release.wait()

    seen: list[TaskStatus] = []
    feed = tm.store.subscribe()  # the change feed the dashboard's live updates read

    async def watch() -> None:
        while True:
            seen.append((await feed.queue.get()).status)

    async with tm:
        watcher = asyncio.create_task(watch())
        task_id = await tm.enqueue(job)
        await wait_for(lambda: tm.store.get(task_id).record.status is TaskStatus.RUNNING)  # type: ignore[union-attr]
        await asyncio.sleep(0)
        release.set()
        record = await finished(tm, task_id)
        await asyncio.sleep(0)
        watcher.cancel()
    assert record.status is TaskStatus.SUCCESS
    assert seen == [TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.SUCCESS]
    assert record.start_time is not None and record.end_time is not None
    assert record.created_at <= record.start_time <= record.end_time
    assert (
        record.created_at.tzinfo is not None and record.created_at.utcoffset().total_seconds() == 0
    )  # type: ignore[union-attr]
    assert record.duration == pytest.approx((record.end_time - record.start_time).total_seconds())


async def test_task_log_and_context_inside_tasks() -> None:
    tm = TaskManager()
    seen = {}

    @tm.task(name="reports.build", queue=None)
    def build(report: str) -> None:
        context = get_task_context()
        assert context is not None
        seen.update(task_id=context.task_id, name=context.func_name, attempt=context.attempt)
        task_log("building", level="debug", report=report)

    assert get_task_context() is None
    with pytest.raises(TaskflowError, match="outside a task"):
        task_log("nope")
    async with tm:
        task_id = await tm.enqueue(build, "sales", tags={"team": "finance"})
        record = await finished(tm, task_id)
    assert seen == {"task_id": task_id, "name": "reports.build", "attempt": 1}
    assert record.logs[0].message == "building"
    assert record.logs[0].level == "debug"
    assert record.logs[0].extra == {"report": "sales"}
    assert record.tags == {"team": "finance"}


async def test_cancel_pending_task_never_runs() -> None:
    tm = TaskManager(max_concurrent_tasks=1)
    ran: list[str] = []
    release = asyncio.Event()

    async def blocker() -> None:
        await release.wait()

    async def victim() -> None:
        ran.append("victim")

    async with tm:
        first = await tm.enqueue(blocker)
        second = await tm.enqueue(victim)
        assert tm.store.get(second).record.status is TaskStatus.PENDING  # type: ignore[union-attr]
        record = await tm.cancel(second)
        assert record.status is TaskStatus.CANCELLED
        release.set()
        await finished(tm, first)
        await asyncio.sleep(0.02)
        with pytest.raises(InvalidTaskStateError, match="already cancelled"):
            await tm.cancel(second)
    assert ran == []


async def test_cancel_running_async_task() -> None:
    tm = TaskManager()
    saw_cancel = asyncio.Event()
    started = asyncio.Event()

    async def long_job() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            saw_cancel.set()
            raise

    async with tm:
        task_id = await tm.enqueue(long_job)
        await asyncio.wait_for(started.wait(), 2)
        record = await tm.cancel(task_id, reason="operator asked")
        assert record.status is TaskStatus.CANCELLED
        assert record.error == "operator asked"
        assert saw_cancel.is_set()
        assert tm.started  # the manager itself is unaffected
        assert (await finished(tm, await tm.enqueue(asyncio.sleep, 0))).status is TaskStatus.SUCCESS


async def test_cancel_running_sync_task_is_refused_clearly() -> None:
    tm = TaskManager()
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def blocking() -> None:
        loop.call_soon_threadsafe(started.set)
        time.sleep(0.2)

    async with tm:
        task_id = await tm.enqueue(blocking)
        await asyncio.wait_for(started.wait(), 2)
        with pytest.raises(InvalidTaskStateError, match="make it async"):
            await tm.cancel(task_id)
        assert (await finished(tm, task_id)).status is TaskStatus.SUCCESS


async def test_bounded_store_drops_oldest_completed_first() -> None:
    tm = TaskManager(max_records=5)

    async def noop(i: int) -> None:
        return None

    async with tm:
        ids = []
        for i in range(20):
            ids.append(await tm.enqueue(noop, i))
            await finished(tm, ids[-1])
        assert len(tm.store) == 5
        assert [tm.store.get(i) is not None for i in ids[-5:]] == [True] * 5
        assert all(tm.store.get(i) is None for i in ids[:15])
        page = await tm.history.query(limit=100)
        assert [r.task_id for r in page] == list(reversed(ids[-5:]))


async def test_live_tasks_are_never_evicted() -> None:
    tm = TaskManager(max_records=2)
    release = asyncio.Event()

    async def wait() -> None:
        await release.wait()

    async with tm:
        live = [await tm.enqueue(wait) for _ in range(5)]
        for _ in range(5):
            await finished(tm, await tm.enqueue(asyncio.sleep, 0))
        assert all(tm.store.get(i) is not None for i in live)
        release.set()


async def test_graceful_shutdown_finishes_quick_tasks_and_interrupts_the_rest() -> None:
    tm = TaskManager(shutdown_grace=0.2, max_concurrent_tasks=2)

    async def quick() -> None:
        await asyncio.sleep(0.05)

    async def stuck() -> None:
        await asyncio.sleep(30)

    await tm.startup()
    quick_id = await tm.enqueue(quick)
    stuck_id = await tm.enqueue(stuck)
    waiting_id = await tm.enqueue(quick)  # no free slot: never starts
    await asyncio.sleep(0.01)
    await tm.shutdown()
    statuses = {i: tm.store.get(i).record for i in (quick_id, stuck_id, waiting_id)}  # type: ignore[union-attr]
    assert statuses[quick_id].status is TaskStatus.SUCCESS
    assert statuses[stuck_id].status is TaskStatus.INTERRUPTED
    assert statuses[waiting_id].status is TaskStatus.INTERRUPTED
    assert "before it started" in (statuses[waiting_id].error or "")
    assert not tm.started


async def test_idempotency_key_returns_the_first_task() -> None:
    tm = TaskManager()
    release = asyncio.Event()
    runs = 0

    async def charge() -> None:
        nonlocal runs
        runs += 1
        await release.wait()

    async with tm:
        first = await tm.enqueue(charge, idempotency_key="order-1")
        assert await tm.enqueue(charge, idempotency_key="order-1") == first
        release.set()
        await finished(tm, first)
        assert await tm.enqueue(charge, idempotency_key="order-1") == first  # succeeded
        other = await tm.enqueue(charge, idempotency_key="order-2")
        await finished(tm, other)
    assert other != first and runs == 2


async def test_failed_idempotency_key_can_be_reused() -> None:
    tm = TaskManager()

    async def boom() -> None:
        raise RuntimeError("x")

    async with tm:
        first = await tm.enqueue(boom, idempotency_key="k")
        await finished(tm, first)
        second = await tm.enqueue(boom, idempotency_key="k")
    assert second != first


class _InOrder:
    """A task function that notes the order labels run in; the task labelled "blocker"
    holds its slot until ``gate`` is set."""

    def __init__(self, tm: TaskManager, **options: Any) -> None:
        self.tm = tm
        self.order: list[str] = []
        self.gate = asyncio.Event()

        @tm.task(**options)
        async def work(label: str) -> None:
            if label == "blocker":
                await self.gate.wait()
            self.order.append(label)

        self.work = work

    async def block(self) -> None:
        blocker = await self.tm.enqueue(self.work, "blocker")
        await wait_for(lambda: self.tm.store.get(blocker).record.status is TaskStatus.RUNNING)  # type: ignore[union-attr]


async def test_named_queues_priority_and_backpressure() -> None:
    tm = TaskManager(queues=[QueueConfig(name="mail", max_concurrency=1, max_size=3)])
    tasks = _InOrder(tm, queue="mail")
    order, gate, send = tasks.order, tasks.gate, tasks.work

    async with tm:
        await tasks.block()
        await tm.enqueue(send, "low", priority=1)
        await tm.enqueue(send, "high", priority=10)
        last = await tm.enqueue(send, "normal")
        with pytest.raises(QueueFullError, match="'mail' is full") as info:
            await tm.enqueue(send, "overflow")
        rejected = tm.store.get(info.value.task_id)
        assert rejected is not None and rejected.record.status is TaskStatus.REJECTED
        assert tm.queue_depths()["mail"] == {"running": 1, "waiting": 3}
        gate.set()
        await finished(tm, last)
        await wait_for(lambda: len(order) == 4)
    assert order == ["blocker", "high", "low", "normal"]


async def test_registration_errors_are_clear() -> None:
    tm = TaskManager()

    @tm.task(name="jobs.send")
    def one() -> None: ...

    def two() -> None: ...

    with pytest.raises(DuplicateTaskError, match=r"'jobs\.send' is already registered"):
        tm.task(name="jobs.send")(two)
    tm.task(name="jobs.send")(one)  # the same function again is fine
    with pytest.raises(ConfigurationError, match="queue 'nope' is not configured"):
        tm.task(queue="nope")
    with pytest.raises(ConfigurationError, match="timeout"):
        tm.task(timeout=0)(two)
    with pytest.raises(ConfigurationError, match="only one of"):
        TaskManager(snapshot_db="x.db", database_url="sqlite:///y.db")
    async with tm:
        with pytest.raises(ConfigurationError, match="tags must map str to str"):
            await tm.enqueue(one, tags={"n": 1})  # type: ignore[dict-item]


def test_decorator_returns_the_function_unchanged() -> None:
    tm = TaskManager()

    async def original(x: int) -> int:
        return x

    assert tm.task(retries=2)(original) is original
    assert tm.task(original) is original


def test_task_ids_are_random_hex_and_a_forked_child_draws_its_own() -> None:
    """Ids are drawn from os.urandom in blocks; after a fork (a pre-forking server that
    imported the app first) the child must not hand out the ids its parent will."""
    from fastapi_taskflow._models import new_task_id

    ids = [new_task_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write_end, new_task_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read_end, 64).decode()
    assert child != new_task_id()


def test_tasks_whose_asyncio_task_is_cancelled_before_starting_end_interrupted() -> None:
    """Every asyncio task cancelled (a hard stop of the event loop) just after a request's
    tasks were handed over: they never run, and end interrupted instead of staying
    pending."""
    tm = TaskManager()
    ran: list[int] = []
    ids: list[str] = []

    async def job(n: int) -> None:
        ran.append(n)

    async def main() -> None:
        await tm.startup()
        tasks = ManagedBackgroundTasks(tm)
        ids.extend(tasks.add_task(job, n) for n in range(5))
        await tasks()  # handed over (as after a response), not started yet
        for other in asyncio.all_tasks():
            if other is not asyncio.current_task():
                other.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(main())
    records = [tm.store.get(task_id).record for task_id in ids]  # type: ignore[union-attr]
    assert ran == []
    assert [r.status for r in records] == [TaskStatus.INTERRUPTED] * 5
    assert all("shut down" in (r.error or "") for r in records)


def test_records_built_on_the_hot_path_are_complete_and_valid() -> None:
    """Records and attempts are built without validation (from a copied template): every
    field must be there, and a validation round trip must give the same record."""
    from datetime import UTC, datetime

    from fastapi_taskflow import TaskRecord
    from fastapi_taskflow._models import Attempt, new_attempt, new_record

    now = datetime.now(UTC)
    record = new_record(
        "a" * 32, "mod.f", [1], {"x": "y"}, now, {"k": "v"}, "key", "request", 3, "q", "i-1"
    )
    record.attempts.append(new_attempt(1, now))
    assert set(record.__dict__) == set(TaskRecord.model_fields)
    assert set(record.attempts[0].__dict__) == set(Attempt.model_fields)
    assert TaskRecord.model_validate_json(record.model_dump_json()) == record
    assert record.status is TaskStatus.PENDING and record.created_at == record.updated_at == now


async def test_tasks_started_together_keep_their_own_context_task_and_timeouts() -> None:
    """Tasks handed over together are started by a shared starter: each must still run in
    its own copy of the request's context, a task that suspends keeps one asyncio task for
    its whole run (asyncio and anyio timeouts entered before its first await work), one
    that fails does not stop the others, and none waits for another that suspends."""
    import contextvars

    import anyio

    tm = TaskManager()
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="request")
    seen: dict[str, object] = {}
    release = asyncio.Event()

    async def writer() -> None:  # finishes without suspending
        var.set("changed by writer")
        seen["writer"] = var.get()

    async def reader() -> None:
        seen["reader"] = var.get()

    async def broken() -> None:
        raise ValueError("no")

    async def waits_with_timeouts() -> None:
        task = asyncio.current_task()
        try:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(5)
        except TimeoutError:
            seen["asyncio timeout"] = True
        with anyio.move_on_after(0.05) as scope:
            await anyio.sleep(5)
        seen["anyio timeout"] = scope.cancel_called
        seen["one task"] = asyncio.current_task() is task
        await release.wait()

    async def after_the_waiter() -> None:
        seen["after the waiter"] = not release.is_set()

    async with tm:
        tasks = ManagedBackgroundTasks(tm)
        ids = [
            tasks.add_task(f)
            for f in (writer, reader, broken, waits_with_timeouts, after_the_waiter, reader)
        ]
        await tasks()
        await wait_for(lambda: "one task" in seen)
        assert seen["after the waiter"] is True  # started while the waiter was suspended
        release.set()
        records = [await finished(tm, task_id) for task_id in ids]
    assert seen["writer"] == "changed by writer"
    assert seen["reader"] == "request"  # not the writer's change
    assert seen["asyncio timeout"] is True and seen["anyio timeout"] is True
    assert seen["one task"] is True
    assert [r.status for r in records] == [
        TaskStatus.SUCCESS,
        TaskStatus.SUCCESS,
        TaskStatus.FAILED,
        TaskStatus.SUCCESS,
        TaskStatus.SUCCESS,
        TaskStatus.SUCCESS,
    ]


async def test_cancelling_a_task_that_suspended_in_the_starter() -> None:
    """The starter's asyncio task belongs to the task that suspended in it: cancelling that
    task ends it as cancelled and touches no other task."""
    tm = TaskManager()
    started = asyncio.Event()
    done: list[str] = []

    async def quick() -> None:
        done.append("quick")

    async def slow() -> None:
        started.set()
        await asyncio.sleep(5)

    async with tm:
        tasks = ManagedBackgroundTasks(tm)
        first = tasks.add_task(quick)
        slow_id = tasks.add_task(slow)
        last = tasks.add_task(quick)
        await tasks()
        await asyncio.wait_for(started.wait(), 2)
        record = await tm.cancel(slow_id)
        assert record.status is TaskStatus.CANCELLED
        assert (await finished(tm, first)).status is TaskStatus.SUCCESS
        assert (await finished(tm, last)).status is TaskStatus.SUCCESS
    assert done == ["quick", "quick"]


async def test_waiting_order_priority_then_arrival_across_queues() -> None:
    """Waiting tasks start higher priority first (negative after the default), then in
    arrival order, also across queues; a task cancelled while waiting is skipped."""
    tm = TaskManager(max_concurrent_tasks=1, queues=[QueueConfig(name="other")])
    tasks = _InOrder(tm)
    order, gate, work = tasks.order, tasks.gate, tasks.work

    async with tm:
        await tasks.block()
        await tm.enqueue(work, "first")
        await tm.enqueue(work, "low", priority=-5)
        await tm.enqueue(work, "other queue", queue="other")
        gone = await tm.enqueue(work, "cancelled")
        await tm.enqueue(work, "high", priority=3)
        await tm.enqueue(work, "last")
        await tm.cancel(gone)
        gate.set()
        await wait_for(lambda: len(order) == 6)
    assert order == ["blocker", "high", "first", "other queue", "last", "low"]


async def test_cancelling_a_task_handed_over_but_not_yet_started() -> None:
    """A task handed over (its response sent) holds a slot until the starter calls it;
    cancelling it then ends it as cancelled, frees the slot, and it never runs."""
    tm = TaskManager(max_concurrent_tasks=1)
    ran: list[str] = []

    async def job(label: str) -> None:
        ran.append(label)

    async with tm:
        tasks = ManagedBackgroundTasks(tm)
        first = tasks.add_task(job, "first")
        second = tasks.add_task(job, "second")
        await tasks()  # handed over; nothing has started yet
        record = await tm.cancel(first)
        assert record.status is TaskStatus.CANCELLED
        assert (await finished(tm, second)).status is TaskStatus.SUCCESS
    assert ran == ["second"]


async def test_plain_tasks_with_other_arguments_keep_a_display_copy_and_retry_exactly() -> None:
    """Tasks added with no options start without a record; their record, built later,
    shows their arguments as they were passed (non-JSON values by repr), the function gets
    the very objects, and a failed one is retried with them."""
    tm = TaskManager()
    calls: list[tuple[Any, ...]] = []

    @tm.task()
    async def work(items: list[int], marker: object, *, ratio: float) -> None:
        calls.append((items, marker, ratio))
        if len(calls) == 1:
            raise ValueError("first time")

    items, marker = [1, 2], object()
    async with tm:
        task_id = await tm.enqueue(work, items, marker, ratio=0.5)
        failed = await finished(tm, task_id)
        retried = await finished(tm, await tm.retry(task_id))
    assert failed.status is TaskStatus.FAILED and failed.error == "ValueError: first time"
    assert failed.args == [[1, 2], {"__repr__": repr(marker)}] and failed.kwargs == {"ratio": 0.5}
    assert [a.number for a in failed.attempts] == [1] and failed.attempts[0].end_time
    assert retried.status is TaskStatus.SUCCESS and retried.task_id == task_id  # (in place)
    assert calls == [(items, marker, 0.5)] * 2 and calls[1][0] is items


async def test_a_plain_task_that_waits_is_kept_compactly_and_reads_as_running_meanwhile() -> None:
    """A plain async task that awaits runs without its record too: read while it waits,
    it shows as running (from then on it keeps a full record); unread, it ends compact."""
    tm = TaskManager()
    gate = asyncio.Event()
    entered: list[int] = []

    @tm.task()
    async def wait_then_return(n: int) -> None:
        entered.append(n)
        await gate.wait()

    async with tm:
        # (the first starts in the shared starter; once its function is seen to wait, the
        # others get an asyncio task each: both ways are covered)
        ids = [await tm.enqueue(wait_then_return, n) for n in range(3)]
        await wait_for(lambda: len(entered) == 3)
        seen = await tm.history.get(ids[0])
        assert seen is not None and seen.status is TaskStatus.RUNNING
        assert seen.start_time is not None and len(seen.attempts) == 1
        assert seen.attempts[0].end_time is None
        gate.set()
        await wait_for(lambda: tm.queue_depths()["default"]["running"] == 0)
        records = [await finished(tm, task_id) for task_id in ids]
        compact = [isinstance(tm.store._jobs[task_id], tuple) for task_id in ids]
    assert compact == [False, True, True]
    for record in records:
        assert record.status is TaskStatus.SUCCESS and record.retries_used == 0
        [attempt] = record.attempts
        assert record.start_time == attempt.start_time <= attempt.end_time == record.end_time
        assert record.duration == (record.end_time - record.start_time).total_seconds()  # type: ignore[operator]
    assert records[0].start_time == seen.start_time
