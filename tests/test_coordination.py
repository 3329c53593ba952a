"""Conformance suite for the Coordinator interface (write-ahead pending store, leases,
claims, idempotency, live view, cancel requests), run against every backend that has one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fastapi_taskflow import TaskFilter, TaskRecord, TaskStatus
from fastapi_taskflow._errors import BackendError
from fastapi_taskflow.backends import MemoryBackend, SnapshotBackend
from fastapi_taskflow.backends.base import Coordinator


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SnapshotBackend]:
    kind = request.param
    made: SnapshotBackend
    if kind == "memory":
        made = MemoryBackend()
    elif kind == "sqlite":
        from fastapi_taskflow.backends import SqliteBackend

        made = SqliteBackend(str(tmp_path / "c.db"))
    elif kind == "redis":
        from fastapi_taskflow.backends import RedisBackend

        made = RedisBackend(request.getfixturevalue("redis_url"), prefix=f"c{uuid.uuid4().hex[:6]}")
    else:
        from fastapi_taskflow.backends import SqlBackend

        made = SqlBackend(request.getfixturevalue(f"{kind}_url"))
    await made.open()
    try:
        yield made
    finally:
        await made.close()


def coord(backend: SnapshotBackend) -> Coordinator:
    found = backend.coordinator()
    assert found is not None, f"{type(backend).__name__} has no coordinator"
    return found


_base = datetime(2026, 1, 1, tzinfo=UTC)


def rec(n: int, **changes: object) -> TaskRecord:
    data: dict[str, object] = {
        "task_id": f"task-{n:04d}",
        "func_name": "jobs.work",
        "created_at": _base + timedelta(seconds=n),
        "args": [n],
        "kwargs": {"n": n},
        "tags": {"n": str(n)},
        "queue": "default",
    }
    data.update(changes)
    return TaskRecord.model_validate(data)


async def test_accept_is_durable_and_skips_duplicates(backend: SnapshotBackend) -> None:
    c = coord(backend)
    added = await c.accept([rec(1), rec(2)], owner="a", lease_s=30, key_ttl_s=60)
    assert sorted(added) == ["task-0001", "task-0002"]
    again = await c.accept([rec(2), rec(3)], owner="b", lease_s=30, key_ttl_s=60)
    assert again == ["task-0003"]
    live = await c.get_live("task-0001")
    assert live is not None and live.args == [1] and live.tags == {"n": "1"}
    assert live.created_at == rec(1).created_at


async def test_keyed_task_that_succeeded_recently_is_not_accepted_again(
    backend: SnapshotBackend,
) -> None:
    c = coord(backend)
    keyed = rec(5, idempotency_key="order-5")
    assert await c.accept([keyed], owner="a", lease_s=30, key_ttl_s=3600) == ["task-0005"]
    done = keyed.model_copy(update={"status": TaskStatus.SUCCESS, "end_time": datetime.now(UTC)})
    await backend.save([done])  # completing a task removes it from the pending store
    assert await c.get_live("task-0005") is None
    assert await c.accept([keyed], owner="b", lease_s=30, key_ttl_s=3600) == []
    # a key whose task succeeded longer ago than the retention is free again
    assert await c.accept([keyed], owner="b", lease_s=30, key_ttl_s=0.0) == ["task-0005"]
    failed = rec(6, idempotency_key="order-6")
    await c.accept([failed], owner="a", lease_s=30, key_ttl_s=3600)
    await backend.save([failed.model_copy(update={"status": TaskStatus.FAILED})])
    assert await c.accept([failed], owner="b", lease_s=30, key_ttl_s=3600) == ["task-0006"]


async def test_concurrent_accepts_of_one_id_admit_exactly_one(backend: SnapshotBackend) -> None:
    c = coord(backend)
    results = await asyncio.gather(
        *(
            c.accept([rec(9, idempotency_key="k")], owner=f"i{n}", lease_s=30, key_ttl_s=60)
            for n in range(5)
        )
    )
    assert sorted(len(r) for r in results) == [0, 0, 0, 0, 1]


async def test_accept_stores_each_record_status(backend: SnapshotBackend) -> None:
    """A task that starts as soon as it is written ahead is accepted as running: the live
    view shows it so, and an instance that claims it after its owner died gets it as
    running (possibly run), the others as pending."""
    c = coord(backend)
    assert getattr(c, "accepts_running", False) is True
    started = [rec(n, status=TaskStatus.RUNNING) for n in (2, 4)]
    records = [rec(1), started[0], rec(3), started[1]]
    added = await c.accept(records, owner="dead", lease_s=0.2, key_ttl_s=60)
    assert sorted(added) == [f"task-000{n}" for n in range(1, 5)]
    running = await c.live(TaskFilter(statuses=(TaskStatus.RUNNING,)))
    assert sorted(r.task_id for r in running) == ["task-0002", "task-0004"]
    pending = await c.live(TaskFilter(statuses=(TaskStatus.PENDING,)))
    assert sorted(r.task_id for r in pending) == ["task-0001", "task-0003"]
    await asyncio.sleep(0.3)
    claimed = {r.task_id: r.status for r in await c.claim("b", lease_s=30, limit=10)}
    assert claimed == {
        "task-0001": TaskStatus.PENDING,
        "task-0002": TaskStatus.RUNNING,
        "task-0003": TaskStatus.PENDING,
        "task-0004": TaskStatus.RUNNING,
    }


async def test_running_marks_reach_the_live_view_and_claims(backend: SnapshotBackend) -> None:
    """The flusher's running mark (in a write cycle where the coordinator has one, else an
    update) is what the live view and an instance adopting the task after its owner died
    see: that task as running (possibly run), the unmarked one as pending."""
    c = coord(backend)
    await c.accept([rec(1), rec(2)], owner="dead", lease_s=0.2, key_ttl_s=60)
    marked = rec(1, status=TaskStatus.RUNNING)
    write_cycle = getattr(c, "write_cycle", None)
    if write_cycle is not None:
        cycle = {"owner": "dead", "lease_s": 0.2, "key_ttl_s": 60, "finished": []}
        assert await write_cycle([], running=[marked.task_id], **cycle) == []
    else:
        await c.update([marked])
    shown = await c.get_live("task-0001")
    assert shown is not None and shown.status is TaskStatus.RUNNING
    running = await c.live(TaskFilter(statuses=(TaskStatus.RUNNING,)))
    assert [r.task_id for r in running] == ["task-0001"]
    await asyncio.sleep(0.3)
    claimed = {r.task_id: r.status for r in await c.claim("b", lease_s=30, limit=10)}
    assert claimed == {"task-0001": TaskStatus.RUNNING, "task-0002": TaskStatus.PENDING}


@pytest.mark.postgres
async def test_postgres_write_cycles_outlive_the_connection_they_keep(
    postgres_url: str, postgres_server: Any
) -> None:
    """On PostgreSQL the flusher's write-ahead cycles keep one connection between writes.
    When the server drops it, the next cycle still writes everything, once, on another."""
    from fastapi_taskflow.backends import SqlBackend

    backend = SqlBackend(postgres_url)
    await backend.open()
    try:
        c = backend.coordinator()
        cycle = {"owner": "a", "lease_s": 30, "key_ttl_s": 60, "finished": []}
        assert await c.write_cycle([rec(1)], running=[], **cycle) == ["task-0001"]
        database = postgres_url.rsplit("/", 1)[1]
        killed = postgres_server.psql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE datname = '{database}'"
        )
        assert int(killed) >= 1
        running = TaskStatus.RUNNING
        added = await c.write_cycle(
            [rec(2), rec(3, status=running)], running=["task-0001"], **cycle
        )
        assert sorted(added) == ["task-0002", "task-0003"]
        live = {r.task_id: r.status for r in await c.live(TaskFilter())}
        assert live == {"task-0001": running, "task-0002": TaskStatus.PENDING, "task-0003": running}
        # and the cycles after that one go on as before
        assert await c.write_cycle([rec(4)], running=[], **cycle) == ["task-0004"]
    finally:
        await backend.close()


@pytest.mark.parametrize("one_trip", [True, False], ids=["one-trip", "trip-per-step"])
@pytest.mark.parametrize("pool_reset", [True, False], ids=["pool-reset", "no-pool-reset"])
async def test_sqlite_write_cycle_failing_half_way_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool_reset: bool, one_trip: bool
) -> None:
    """On SQLite a write-ahead cycle opens its transaction with its insert and commits it
    itself. When a later step of the cycle fails, the insert is rolled back, not left open
    on the connection for the next cycle to commit: the failed cycle's task is not in the
    pending store, the next cycle's is, and both writes go through. Also with an engine
    whose pool does not reset connections it gets back, and where the cycle cannot be one
    call in aiosqlite's thread (one trip per statement)."""
    from fastapi_taskflow.backends import SqliteBackend
    from fastapi_taskflow.backends.sql import pending_writes

    if not one_trip:
        monkeypatch.setattr(pending_writes, "_in_driver_thread", lambda driver: None)
    options: dict[str, Any] = {} if pool_reset else {"pool_reset_on_return": None}
    backend = SqliteBackend(str(tmp_path / "half.db"), **options)
    await backend.open()
    try:
        c = backend.coordinator()
        cycle = {"owner": "a", "lease_s": 30, "key_ttl_s": 60, "finished": []}
        assert await c.write_cycle([rec(1)], running=[], **cycle) == ["task-0001"]
        marks = {
            name: getattr(pending_writes, name) for name in ("_SQLITE_MARK", "_SQLITE_MARK_MANY")
        }
        # The mark, which follows the insert in the cycle, fails (no such table: injected).
        for name, real in marks.items():
            monkeypatch.setattr(
                pending_writes, name, real.replace(pending_writes.PENDING, "injected")
            )
        running = "task-0001"
        with pytest.raises(BackendError, match="injected"):
            await c.write_cycle([rec(2)], running=[running], **cycle)
        for name, real in marks.items():
            monkeypatch.setattr(pending_writes, name, real)
        assert await c.write_cycle([rec(3)], running=[running], **cycle) == ["task-0003"]
        live = {r.task_id: r.status for r in await c.live(TaskFilter())}
        assert live == {"task-0001": TaskStatus.RUNNING, "task-0003": TaskStatus.PENDING}
        assert await c.write_cycle([rec(2)], running=[], **cycle) == ["task-0002"]
    finally:
        await backend.close()


@pytest.mark.parametrize("one_trip", [True, False], ids=["one-trip", "trip-per-step"])
async def test_sqlite_write_cycle_with_history_is_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_trip: bool
) -> None:
    """On SQLite a write-ahead cycle that also carries finished records writes them in the
    same transaction: they reach history and leave the pending store together with the
    cycle's new tasks, and when the last step fails nothing of the cycle is left (the new
    task is not pending, the finished one is still pending and not in history); written
    again, all of it goes through once."""
    from fastapi_taskflow.backends import SqliteBackend
    from fastapi_taskflow.backends.sql import pending_writes

    if not one_trip:
        monkeypatch.setattr(pending_writes, "_in_driver_thread", lambda driver: None)
    backend = SqliteBackend(str(tmp_path / "cycle.db"))
    await backend.open()
    try:
        c = backend.coordinator()
        cycle = {"owner": "a", "lease_s": 30, "key_ttl_s": 60}
        first = rec(1, tags={})
        assert await c.write_cycle([first], running=[], finished=[], **cycle) == ["task-0001"]
        done = first.model_copy(update={"status": TaskStatus.SUCCESS, "end_time": _base})
        real_unpend = pending_writes._SQLITE_UNPEND
        failing = real_unpend.replace(pending_writes.PENDING, "injected")
        monkeypatch.setattr(pending_writes, "_SQLITE_UNPEND", failing)
        with pytest.raises(BackendError, match="injected"):
            await c.write_cycle([rec(2, tags={})], running=[], finished=[done], **cycle)
        live = {r.task_id: r.status for r in await c.live(TaskFilter())}
        assert live == {"task-0001": TaskStatus.PENDING}
        assert await backend.history().get("task-0001") is None
        monkeypatch.setattr(pending_writes, "_SQLITE_UNPEND", real_unpend)
        added = await c.write_cycle([rec(2, tags={})], running=[], finished=[done], **cycle)
        assert added == ["task-0002"]
        live = {r.task_id: r.status for r in await c.live(TaskFilter())}
        assert live == {"task-0002": TaskStatus.PENDING}
        saved = await backend.history().get("task-0001")
        assert saved is not None and saved.status is TaskStatus.SUCCESS
    finally:
        await backend.close()


async def test_sqlite_write_cycle_of_many_tasks_some_already_present(tmp_path: Path) -> None:
    """On SQLite a large write-ahead cycle goes to the database as a few multi-row
    statements: every new task is added, the ones another instance already holds are left
    to it and not reported as added, and the finished records it carries all reach
    history."""
    from fastapi_taskflow.backends import SqliteBackend

    backend = SqliteBackend(str(tmp_path / "many.db"))
    await backend.open()
    try:
        c = backend.coordinator()
        taken = [rec(n, tags={}) for n in range(1, 1201, 7)]  # held by another instance
        await c.accept(taken, owner="other", lease_s=30, key_ttl_s=60)
        batch = [rec(n, tags={}) for n in range(1, 1201)]
        done = [
            rec(n, tags={}, status=TaskStatus.SUCCESS, end_time=_base) for n in range(2001, 3201)
        ]
        cycle = {"owner": "a", "lease_s": 30, "key_ttl_s": 60}
        added = await c.write_cycle(batch, running=[], finished=done, **cycle)
        held = {r.task_id for r in taken}
        assert sorted(added) == sorted(r.task_id for r in batch if r.task_id not in held)
        live = await c.live(TaskFilter(), limit=5000)
        assert len(live.items) == 1200
        history = backend.history()
        assert await history.count(TaskFilter()) == 1200
        assert (await history.get("task-3200")) is not None
    finally:
        await backend.close()


@pytest.mark.parametrize("one_trip", [True, False], ids=["one-trip", "trip-per-step"])
async def test_sqlite_history_write_is_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_trip: bool
) -> None:
    """On SQLite the flusher's history writes go straight to the driver: the records reach
    history and leave the pending store together, and a write that fails at its last step
    leaves both as they were."""
    from fastapi_taskflow.backends import SqliteBackend
    from fastapi_taskflow.backends.sql import pending_writes

    if not one_trip:
        monkeypatch.setattr(pending_writes, "_in_driver_thread", lambda driver: None)
    backend = SqliteBackend(str(tmp_path / "history.db"))
    await backend.open()
    try:
        c = backend.coordinator()
        await c.accept([rec(1, tags={})], owner="a", lease_s=30, key_ttl_s=60)
        done = rec(1, tags={}, status=TaskStatus.SUCCESS, end_time=_base)
        other = rec(2, tags={}, status=TaskStatus.FAILED, end_time=_base, error="boom")
        real_unpend = pending_writes._SQLITE_UNPEND
        failing = real_unpend.replace(pending_writes.PENDING, "injected")
        monkeypatch.setattr(pending_writes, "_SQLITE_UNPEND", failing)
        with pytest.raises(BackendError, match="injected"):
            await backend._save_history([done, other], {"task-0001"})
        assert [r.task_id for r in await c.live(TaskFilter())] == ["task-0001"]
        assert await backend.history().count(TaskFilter()) == 0
        monkeypatch.setattr(pending_writes, "_SQLITE_UNPEND", real_unpend)
        assert await backend._save_history([done, other], {"task-0001"}) == 2
        assert [r.task_id for r in await c.live(TaskFilter())] == []
        saved = await backend.history().get("task-0002")
        assert saved is not None and saved.status is TaskStatus.FAILED and saved.error == "boom"
    finally:
        await backend.close()


async def test_claims_respect_leases_and_are_exclusive(backend: SnapshotBackend) -> None:
    c = coord(backend)
    await c.accept([rec(n) for n in range(1, 4)], owner="dead", lease_s=0.2, key_ttl_s=60)
    await c.accept([rec(4)], owner=None, lease_s=30, key_ttl_s=60)
    unowned = await c.claim("a", lease_s=30, limit=10)
    assert [r.task_id for r in unowned] == ["task-0004"]  # the others are still leased
    await asyncio.sleep(0.3)
    results = await asyncio.gather(*(c.claim(o, lease_s=30, limit=10) for o in ("a", "b", "c")))
    claimed = [r.task_id for group in results for r in group]
    assert sorted(claimed) == ["task-0001", "task-0002", "task-0003"]  # each exactly once
    assert await c.claim("d", lease_s=30, limit=10) == []


async def test_claim_limit_order_specific_ids_and_reclaim_own(backend: SnapshotBackend) -> None:
    c = coord(backend)
    await c.accept([rec(n) for n in range(1, 6)], owner=None, lease_s=30, key_ttl_s=60)
    first = await c.claim("a", lease_s=30, limit=2)
    assert [r.task_id for r in first] == ["task-0001", "task-0002"]  # oldest first
    chosen = await c.claim("b", lease_s=30, limit=10, task_ids=["task-0004"])
    assert [r.task_id for r in chosen] == ["task-0004"]
    assert await c.claim("a", lease_s=30, limit=10, task_ids=["task-0001"]) == []
    mine = await c.claim("a", lease_s=30, limit=10, task_ids=["task-0001"], reclaim_own=True)
    assert [r.task_id for r in mine] == ["task-0001"]


async def test_update_of_many_and_of_large_records(backend: SnapshotBackend) -> None:
    """Running marks of a whole batch, one of them with a large document (on MySQL/MariaDB
    a batch goes in one statement, a record over a megabyte as literals on its own)."""
    c = coord(backend)
    huge = rec(301, error="y'\\" * 200_000)  # accepted whole too
    added = await c.accept(
        [rec(n) for n in range(1, 301)] + [huge], owner="a", lease_s=30, key_ttl_s=60
    )
    assert len(added) == 301
    got_huge = await c.get_live("task-0301")
    assert got_huge is not None and got_huge.error == huge.error
    big = rec(7, status=TaskStatus.RUNNING, error="x'\\" * 200_000)
    marks = [rec(n, status=TaskStatus.RUNNING, retries_used=n) for n in range(1, 301) if n != 7]
    await c.update([*marks, big])
    got = await c.get_live("task-0007")
    assert got is not None and got.status is TaskStatus.RUNNING and got.error == big.error
    for n in (1, 150, 300):
        mark = await c.get_live(f"task-{n:04d}")
        assert mark is not None and mark.status is TaskStatus.RUNNING and mark.retries_used == n
    running = await c.live(TaskFilter(statuses=(TaskStatus.RUNNING,)), limit=1000)
    assert len(running.items) == 300
    pending = await c.live(TaskFilter(statuses=(TaskStatus.PENDING,)), limit=1000)
    assert [r.task_id for r in pending.items] == ["task-0301"]


async def test_renew_reports_lost_leases(backend: SnapshotBackend) -> None:
    c = coord(backend)
    await c.accept([rec(1), rec(2)], owner="a", lease_s=0.2, key_ttl_s=60)
    assert await c.renew("a", ["task-0001"], lease_s=30) == []
    await asyncio.sleep(0.3)
    stolen = await c.claim("b", lease_s=30, limit=10)
    assert [r.task_id for r in stolen] == ["task-0002"]  # task-0001 was renewed in time
    assert await c.renew("a", ["task-0001", "task-0002", "task-9999"], lease_s=30) == [
        "task-0002",
        "task-9999",
    ]


async def test_update_release_and_live_view(backend: SnapshotBackend) -> None:
    c = coord(backend)
    await c.accept([rec(n) for n in range(1, 5)], owner="a", lease_s=30, key_ttl_s=60)
    started = datetime.now(UTC)
    running = rec(2, status=TaskStatus.RUNNING, start_time=started, retries_used=1)
    await c.update([running, rec(99, status=TaskStatus.RUNNING)])  # unknown ids are ignored
    got = await c.get_live("task-0002")
    assert got is not None and got.status is TaskStatus.RUNNING and got.retries_used == 1
    assert await c.get_live("task-0099") is None
    page = await c.live(TaskFilter(), limit=3)
    assert [r.task_id for r in page] == ["task-0004", "task-0003", "task-0002"]
    rest = await c.live(TaskFilter(), limit=3, cursor=page.next_cursor)
    assert [r.task_id for r in rest] == ["task-0001"] and rest.next_cursor is None
    only_running = await c.live(TaskFilter(statuses=(TaskStatus.RUNNING,)))
    assert [r.task_id for r in only_running] == ["task-0002"]
    await c.release("a", [running])
    back = await c.get_live("task-0002")
    assert back is not None and back.status is TaskStatus.PENDING
    assert [r.task_id for r in await c.claim("b", lease_s=30, limit=10)] == ["task-0002"]
    await c.release("nobody", [rec(3)])  # not the owner: nothing happens
    assert await c.claim("b", lease_s=30, limit=10) == []


async def test_cancel_requests_reach_the_owner_once(backend: SnapshotBackend) -> None:
    c = coord(backend)
    await c.accept([rec(1), rec(2)], owner="a", lease_s=30, key_ttl_s=60)
    assert await c.request_cancel("task-0002") is True
    assert await c.request_cancel("task-0404") is False
    assert await c.cancel_requests("b") == []
    assert await c.cancel_requests("a") == ["task-0002"]
    assert await c.cancel_requests("a") == []


async def test_saving_history_completes_pending_tasks(backend: SnapshotBackend) -> None:
    c = coord(backend)
    await c.accept([rec(1), rec(2)], owner="a", lease_s=30, key_ttl_s=60)
    await backend.save([rec(1, status=TaskStatus.SUCCESS)])
    assert await c.get_live("task-0001") is None
    assert [r.task_id for r in await c.live(TaskFilter())] == ["task-0002"]
