"""SqlBackend on SQLite, PostgreSQL and MariaDB: the six methods, history queries, URLs.

Every behavioural test runs against each database (real servers for PostgreSQL and MariaDB,
from the ``postgres_url`` / ``mysql_url`` fixtures of conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sqlite3
import statistics
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from fastapi_taskflow._cursor import sort_key
from fastapi_taskflow._errors import (
    BackendError,
    ConfigurationError,
    MissingDriverError,
    NotStartedError,
    SchemaOutdatedError,
)
from fastapi_taskflow._models import (
    Attempt,
    LogEntry,
    TaskFilter,
    TaskRecord,
    TaskStatus,
)
from fastapi_taskflow.backends.base import HistoryRepository, SnapshotBackend
from fastapi_taskflow.backends.sql import (
    MySQLBackend,
    PostgresBackend,
    SqlBackend,
    SqliteBackend,
    current_revision,
    head_revision,
    make_async_url,
    migrate,
)
from fastapi_taskflow.backends.sql.dialect import is_transient

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)

DATABASES = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mysql", marks=pytest.mark.mysql),
]


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A plain URL of a fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'tasks.db'}"
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
async def backend(database_url: str) -> AsyncIterator[SqlBackend]:
    sql_backend = SqlBackend(database_url)
    await sql_backend.open()
    try:
        yield sql_backend
    finally:
        await sql_backend.close()


def full_record(task_id: str = "task-full", **changes: Any) -> TaskRecord:
    """A record with every field set, including awkward values."""
    values: dict[str, Any] = {
        "task_id": task_id,
        "func_name": "app.tasks.send_email",
        "status": TaskStatus.FAILED,
        "args": ["ümlaut ✓", 3, 2.5, None, True, [1, [2, {"deep": ["x"]}]]],
        "kwargs": {"to": "a@example.com", "nested": {"list": [1, 2], "n": None}, "big": 2**53},
        "created_at": T0,
        "start_time": T0 + timedelta(microseconds=7),
        # Not UTC on purpose: stored as the same instant, read back in UTC.
        "end_time": datetime(2024, 5, 1, 14, 0, 1, 999999, tzinfo=timezone(timedelta(hours=2))),
        "duration": 1.876543,
        "retries_used": 2,
        "error": "ValueError: boom",
        "stacktrace": "Traceback (most recent call last):\n" + "  line\n" * 12_000,  # > 64 KiB
        "logs": [
            LogEntry(timestamp=T0, level="info", message="start", attempt=1, extra={"k": [1]}),
            LogEntry(timestamp=T0 + timedelta(seconds=1), level="error", message="é", attempt=3),
        ],
        "attempts": [
            Attempt(number=1, start_time=T0, end_time=T0 + timedelta(seconds=1), error="x"),
            Attempt(number=2, start_time=T0 + timedelta(seconds=2)),
        ],
        "tags": {"tenant": "acme", "Env": "prod", "env": "dev"},
        "idempotency_key": "signup:42",
        "source": "schedule",
        "priority": 7,
        "queue": "emails",
        "retry_of": "task-original",
        "instance_id": "host-1:1234",
        "updated_at": T0 + timedelta(seconds=5, microseconds=1),
    }
    values.update(changes)
    return TaskRecord(**values)


def assert_utc(record: TaskRecord) -> None:
    for stamp in (record.created_at, record.start_time, record.end_time, record.updated_at):
        if stamp is not None:
            assert stamp.tzinfo is not None and stamp.utcoffset() == timedelta(0)


# --------------------------------------------------------------------------- the six methods


async def test_save_and_load_round_trip_every_field(backend: SqlBackend) -> None:
    record = full_record()
    minimal = TaskRecord(task_id="task-min", func_name="f", created_at=T0 - timedelta(days=1))
    assert await backend.save([record, minimal]) == 2

    loaded = await backend.load()
    assert [r.task_id for r in loaded] == ["task-min", "task-full"]  # oldest first
    assert loaded[1] == record
    assert loaded[0] == minimal
    assert loaded[1].model_dump() == record.model_dump()
    assert loaded[1].end_time == datetime(2024, 5, 1, 12, 0, 1, 999999, tzinfo=UTC)
    for item in loaded:
        assert_utc(item)
    got = await backend.history().get("task-full")
    assert got == record


AWKWARD = "O'Brien \"q\" back\\slash \\' %s %% %(x)s \n\r\t \x1a 🚀 ümlaut ✓ ' OR 1=1; --"


@pytest.mark.mysql
async def test_mysql_history_goes_through_json_table_when_the_server_has_it(
    mysql_url: str,
) -> None:
    sql_backend = SqlBackend(mysql_url)
    await sql_backend.open()
    try:
        assert sql_backend._bulk is not None  # MariaDB 10.11 here
        assert type(sql_backend._bulk._history).__name__ == "JsonTableInsert"
    finally:
        await sql_backend.close()


@pytest.mark.mysql
async def test_mysql_without_json_table_writes_literals(
    mysql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Servers before MariaDB 10.6 / MySQL 8.0.4 have no JSON_TABLE: history rows then go
    as multi-row literal INSERTs (here forced on the test server)."""
    from fastapi_taskflow.backends.sql import backend as backend_module

    monkeypatch.setattr(backend_module, "has_json_table", lambda dialect: False)
    sql_backend = SqlBackend(mysql_url)
    await sql_backend.open()
    try:
        assert sql_backend._bulk is not None
        assert type(sql_backend._bulk._history).__name__ == "BulkStatement"
        await test_awkward_strings_and_large_batches_round_trip(sql_backend)
    finally:
        await sql_backend.close()


async def test_awkward_strings_and_large_batches_round_trip(backend: SqlBackend) -> None:
    """Quotes, backslashes, format markers, control and 4-byte characters in every kind of
    column come back unchanged, and a batch larger than one statement is written whole (on
    MySQL/MariaDB history rows go as JSON_TABLE documents or literals, in statements of
    about a megabyte; the first record, ~1.4 MB as hex, goes on its own with parameters)."""
    records = [
        full_record(
            f"task-{i:03d}",
            func_name=f"app.{AWKWARD[:40]}",
            args=[AWKWARD, ""],
            kwargs={AWKWARD: AWKWARD},
            error=AWKWARD,
            stacktrace=AWKWARD * (12_000 if i == 0 else 2_000) if i % 10 == 0 else "",
            tags={"note": AWKWARD[:100], "empty": ""},
            idempotency_key=f"{AWKWARD[:30]}:{i}",
            queue=AWKWARD[:50],
            created_at=T0 + timedelta(seconds=i),
        )
        for i in range(300)
    ]  # ~300 KB of stack traces and ~1 MB of rows in all: more than one statement
    assert await backend.save(records) == 300
    loaded = {record.task_id: record for record in await backend.load()}
    assert len(loaded) == 300
    for record in records:
        assert loaded[record.task_id] == record
    page = await backend.history().query(TaskFilter(tags={"note": AWKWARD[:100]}), limit=500)
    assert len(page.items) == 300
    assert await backend.history().get("nope") is None


async def test_pending_round_trip_and_replace(backend: SqlBackend) -> None:
    first = [full_record("p1", status=TaskStatus.PENDING), full_record("p2")]
    assert await backend.save_pending(first) == 2
    loaded = await backend.load_pending()
    assert loaded == first
    for item in loaded:
        assert_utc(item)

    # Replaced wholesale, and kept apart from history.
    second = [full_record("p3", status=TaskStatus.RUNNING, created_at=T0 + timedelta(1))]
    assert await backend.save_pending(second) == 1
    assert [r.task_id for r in await backend.load_pending()] == ["p3"]
    assert await backend.load() == []

    await backend.clear_pending()
    assert await backend.load_pending() == []
    assert await backend.save_pending([]) == 0


async def test_save_is_an_idempotent_upsert(backend: SqlBackend) -> None:
    record = full_record()
    await backend.save([record])
    await backend.save([record])
    assert await backend.load() == [record]

    changed = record.model_copy(
        update={"status": TaskStatus.SUCCESS, "error": None, "tags": {"tenant": "other"}}
    )
    assert await backend.save([changed]) == 1
    assert await backend.load() == [changed]
    repo = backend.history()
    assert await repo.count(TaskFilter(tags={"tenant": "acme"})) == 0
    assert await repo.count(TaskFilter(tags={"Env": "prod"})) == 0
    assert await repo.count(TaskFilter(tags={"tenant": "other"})) == 1


async def test_save_keeps_the_last_copy_of_a_repeated_id(backend: SqlBackend) -> None:
    old = full_record("dup", status=TaskStatus.RUNNING)
    new = full_record("dup", status=TaskStatus.SUCCESS, error=None)
    assert await backend.save([old, new]) == 1
    assert await backend.load() == [new]
    assert await backend.save([]) == 0


async def test_delete_removes_records_and_their_tags(backend: SqlBackend) -> None:
    await backend.save([full_record("a"), full_record("b"), full_record("c")])
    assert await backend.delete(["a", "c", "missing", "a"]) == 2
    assert [r.task_id for r in await backend.load()] == ["b"]
    assert await backend.history().count(TaskFilter(tags={"tenant": "acme"})) == 1
    assert await backend.delete([]) == 0


async def test_large_batch_in_one_save(backend: SqlBackend) -> None:
    records = [
        TaskRecord(
            task_id=f"bulk-{i:05d}",
            func_name=f"f{i % 3}",
            status=TaskStatus.SUCCESS,
            created_at=T0 + timedelta(microseconds=i),
            kwargs={"i": i},
            tags={"n": str(i % 7)},
        )
        for i in range(25_000)
    ]
    assert await backend.save(records) == len(records)
    repo = backend.history()
    assert await repo.count(TaskFilter()) == len(records)
    assert await repo.count(TaskFilter(tags={"n": "3"})) == sum(
        1 for i in range(25_000) if i % 7 == 3
    )
    assert await backend.delete([r.task_id for r in records[:12_345]]) == 12_345
    assert await repo.count(TaskFilter()) == len(records) - 12_345


async def test_a_cancelled_save_still_commits_whole(database_url: str) -> None:
    backend = SqlBackend(database_url)
    await backend.open()
    records = [
        TaskRecord(task_id=f"c{i}", func_name="f", created_at=T0 + timedelta(microseconds=i))
        for i in range(5_000)
    ]
    saving = asyncio.ensure_future(backend.save(records))
    await asyncio.sleep(0)  # save() is now waiting on its (shielded) transaction
    assert not saving.done()
    saving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await saving
    await backend.close()  # waits for the shielded write

    reopened = SqlBackend(database_url)
    await reopened.open()
    try:
        assert await reopened.history().count(TaskFilter()) == len(records)
    finally:
        await reopened.close()


async def test_driver_errors_become_backend_errors(backend: SqlBackend) -> None:
    async with backend.engine.begin() as conn:
        await conn.execute(sa.text("DROP TABLE taskflow_history_tags"))
    with pytest.raises(BackendError, match="saving 1 task records failed") as caught:
        await backend.save([full_record()])
    assert isinstance(caught.value.__cause__, sa.exc.DBAPIError)
    with pytest.raises(BackendError):
        await backend.history().count(TaskFilter(tags={"a": "b"}))


# --------------------------------------------------------------------------- history queries


def dataset() -> list[TaskRecord]:
    """60 records over 3 functions, 2 queues, 4 statuses, with timestamp ties."""
    statuses = [TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.SUCCESS, TaskStatus.CANCELLED]
    records = []
    for i in range(60):
        records.append(
            TaskRecord(
                task_id=f"id-{(i * 37) % 60:02d}",
                func_name=("app.send_email", "app.resize", "app.report_100%")[i % 3],
                status=statuses[i % 4],
                queue="emails" if i % 5 == 0 else "default",
                # Groups of three share a timestamp: ordering must break ties by task_id.
                created_at=T0 + timedelta(seconds=i // 3),
                duration=None if i % 6 == 5 else round(0.1 * ((i * 7) % 23), 3),
                error=f"KeyError: Missing_{i}" if statuses[i % 4] is TaskStatus.FAILED else None,
                tags={"tenant": f"t{i % 2}", **({"vip": "yes"} if i % 4 == 0 else {})},
            )
        )
    return records


FILTERS = {
    "everything": TaskFilter(),
    "one status": TaskFilter(statuses=(TaskStatus.FAILED,)),
    "two statuses": TaskFilter(statuses=(TaskStatus.FAILED, TaskStatus.CANCELLED)),
    "function": TaskFilter(func_name="app.resize"),
    # several statuses are paged as one ordered branch per status (see Selection.page)
    "two statuses and function": TaskFilter(
        statuses=(TaskStatus.SUCCESS, TaskStatus.FAILED), func_name="app.send_email"
    ),
    "three statuses in a window": TaskFilter(
        statuses=(TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.CANCELLED),
        since=T0 + timedelta(seconds=2),
        until=T0 + timedelta(seconds=12),
    ),
    "status and function": TaskFilter(statuses=(TaskStatus.SUCCESS,), func_name="app.send_email"),
    "queue": TaskFilter(queue="emails"),
    "one tag": TaskFilter(tags={"tenant": "t1"}),
    "two tags": TaskFilter(tags={"tenant": "t0", "vip": "yes"}),
    "tag and status": TaskFilter(tags={"tenant": "t0"}, statuses=(TaskStatus.SUCCESS,)),
    "unknown tag": TaskFilter(tags={"tenant": "nobody"}),
    "since": TaskFilter(since=T0 + timedelta(seconds=5)),
    "until": TaskFilter(until=T0 + timedelta(seconds=5)),
    "window": TaskFilter(since=T0 + timedelta(seconds=3), until=T0 + timedelta(seconds=9)),
    "tag and window": TaskFilter(tags={"tenant": "t1"}, since=T0 + timedelta(seconds=4)),
    "text in id": TaskFilter(text="ID-1"),
    "text in function": TaskFilter(text="RESIZE"),
    "text in error": TaskFilter(text="missing_1"),
    "text with wildcard": TaskFilter(text="100%"),
    "text matching nothing": TaskFilter(text="_%"),
    "everything combined": TaskFilter(
        statuses=(TaskStatus.SUCCESS,),
        func_name="app.send_email",
        queue="default",
        tags={"tenant": "t0"},
        since=T0,
        until=T0 + timedelta(seconds=30),
    ),
}


def expected(records: list[TaskRecord], filter: TaskFilter) -> list[str]:
    matching = sorted((r for r in records if filter.matches(r)), key=sort_key, reverse=True)
    return [r.task_id for r in matching]


@pytest.fixture
async def repo(backend: SqlBackend) -> HistoryRepository:
    await backend.save(dataset())
    return backend.history()


@pytest.mark.parametrize("name", list(FILTERS))
async def test_query_and_count_match_the_filter(repo: HistoryRepository, name: str) -> None:
    filter = FILTERS[name]
    want = expected(dataset(), filter)
    page = await repo.query(filter, limit=100)
    assert [r.task_id for r in page] == want
    assert page.next_cursor is None
    assert await repo.count(filter) == len(want)


@pytest.mark.parametrize(
    "name", ["everything", "one tag", "two statuses", "two statuses and function", "window"]
)
async def test_keyset_pages_cover_everything_once(repo: HistoryRepository, name: str) -> None:
    filter = FILTERS[name]
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        page = await repo.query(filter, limit=7, cursor=cursor)
        assert len(page) <= 7
        seen.extend(r.task_id for r in page)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == expected(dataset(), filter)


async def test_newest_first_with_ties_broken_by_task_id(repo: HistoryRepository) -> None:
    page = await repo.query(TaskFilter(), limit=60)
    keys = [(r.created_at, r.task_id) for r in page]
    assert keys == sorted(keys, reverse=True)
    assert len({r.created_at for r in page}) == 20


async def test_page_of_exactly_limit_has_no_next_cursor(repo: HistoryRepository) -> None:
    total = await repo.count(TaskFilter(func_name="app.resize"))
    page = await repo.query(TaskFilter(func_name="app.resize"), limit=total)
    assert len(page) == total and page.next_cursor is None


async def test_bad_cursor_and_limit_are_refused(repo: HistoryRepository) -> None:
    with pytest.raises(ConfigurationError, match="cursor"):
        await repo.query(TaskFilter(), cursor="not-a-cursor")
    with pytest.raises(ConfigurationError, match="limit"):
        await repo.query(TaskFilter(), limit=0)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(fraction * 100) - 1]


@pytest.mark.parametrize("name", ["everything", "queue", "one tag", "window", "unknown tag"])
async def test_stats_per_function(repo: HistoryRepository, name: str) -> None:
    filter = FILTERS[name]
    records = [r for r in dataset() if filter.matches(r)]
    stats = await repo.stats(filter)
    assert [s.func_name for s in stats] == sorted({r.func_name for r in records})
    for item in stats:
        group = [r for r in records if r.func_name == item.func_name]
        durations = [r.duration for r in group if r.duration is not None]
        success = sum(r.status is TaskStatus.SUCCESS for r in group)
        failed = sum(r.status is TaskStatus.FAILED for r in group)
        assert (item.total, item.success, item.failed) == (len(group), success, failed)
        assert item.success_rate == (success / (success + failed) if success + failed else None)
        got = (item.duration_avg, item.duration_p50, item.duration_p95, item.duration_p99)
        if not durations:
            assert got == (None, None, None, None)
            continue
        assert got == pytest.approx(
            (
                statistics.fmean(durations),
                percentile(durations, 0.5),
                percentile(durations, 0.95),
                percentile(durations, 0.99),
            )
        )


async def test_stats_without_durations_or_finished_tasks(backend: SqlBackend) -> None:
    await backend.save(
        [
            TaskRecord(task_id="x1", func_name="g", status=TaskStatus.CANCELLED),
            TaskRecord(task_id="x2", func_name="h", status=TaskStatus.SUCCESS, duration=2.0),
        ]
    )
    g, h = await backend.history().stats(TaskFilter())
    assert (g.func_name, g.total, g.success_rate, g.duration_p50, g.duration_avg) == (
        "g",
        1,
        None,
        None,
        None,
    )
    assert (h.duration_p50, h.duration_p95, h.duration_p99, h.success_rate) == (2.0, 2.0, 2.0, 1)


# --------------------------------------------------------------------------- opening, schema


async def test_two_backends_open_one_empty_database_at_once(database_url: str) -> None:
    first, second = SqlBackend(database_url), SqlBackend(database_url)
    try:
        await asyncio.gather(first.open(), second.open())
        assert await current_revision(first.engine) == head_revision()
        await first.save([full_record()])
        assert [r.task_id for r in await second.load()] == ["task-full"]
    finally:
        await first.close()
        await second.close()


async def test_instances_starting_at_once_on_a_new_sqlite_file_all_open(tmp_path: Path) -> None:
    """Six backends opening one new SQLite file at the same moment (the app's workers
    starting together), twenty times over: every one opens, on one schema, in WAL mode. (Only
    one connection can switch a new file to WAL, and SQLite does not wait for that lock:
    the others must find the switch done instead of failing.)"""
    for attempt in range(20):
        url = f"sqlite:///{tmp_path / f'new-{attempt}.db'}"
        backends = [SqlBackend(url) for _ in range(6)]
        try:
            await asyncio.gather(*(backend.open() for backend in backends))
            assert {await current_revision(b.engine) for b in backends} == {head_revision()}
            async with backends[-1].engine.connect() as conn:
                mode = await conn.scalar(sa.text("PRAGMA journal_mode"))
            assert mode == "wal"
        finally:
            for backend in backends:
                await backend.close()


async def test_auto_migrate_off_refuses_an_empty_database(database_url: str) -> None:
    backend = SqlBackend(database_url, auto_migrate=False)
    with pytest.raises(SchemaOutdatedError) as caught:
        await backend.open()
    message = str(caught.value)
    assert "python -m fastapi_taskflow migrate --url" in message
    assert "alembic upgrade head" in message
    assert "none" in message and head_revision() in message
    with pytest.raises(NotStartedError):
        backend.engine  # noqa: B018

    await migrate(database_url)
    await backend.open()
    try:
        assert await backend.save([full_record()]) == 1
    finally:
        await backend.close()


async def test_open_is_idempotent_and_close_is_safe(database_url: str) -> None:
    backend = SqlBackend(database_url)
    await backend.close()  # never opened
    await backend.open()
    engine = backend.engine
    await backend.open()
    assert backend.engine is engine
    await backend.close()
    await backend.close()
    with pytest.raises(NotStartedError, match="open"):
        await backend.load()


async def test_a_given_engine_is_used_and_not_disposed(database_url: str) -> None:
    url = make_async_url(database_url)
    if url.database and url.get_backend_name() == "sqlite":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url)
    try:
        backend = SqlBackend(engine=engine)
        await backend.open()
        assert backend.engine is engine
        await backend.save([full_record()])
        await backend.close()
        async with engine.connect() as conn:
            count = await conn.scalar(sa.text("SELECT count(*) FROM taskflow_history"))
        assert count == 1
    finally:
        await engine.dispose()


async def test_sqlite_uses_wal_and_creates_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "tasks.db"
    backend = SqliteBackend(path)
    await backend.open()
    try:
        async with backend.engine.connect() as conn:
            mode = await conn.scalar(sa.text("PRAGMA journal_mode"))
            busy = await conn.scalar(sa.text("PRAGMA busy_timeout"))
        assert mode == "wal"
        assert busy is not None and busy >= 1000
        await backend.save([full_record()])
    finally:
        await backend.close()
    assert path.exists()
    with contextlib.closing(sqlite3.connect(path)) as plain:
        assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_sqlite_connection_left_in_a_transaction_is_rolled_back(tmp_path: Path) -> None:
    """The pool skips SQLite's rollback on return when no transaction is open; one left
    open (begun on the driver, never committed) is still rolled back, lock released."""
    backend = SqliteBackend(tmp_path / "tasks.db")
    await backend.open()
    try:
        async with backend.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            await driver.execute("BEGIN IMMEDIATE")
            await driver.execute("DELETE FROM taskflow_history")
        assert not driver.in_transaction
        await backend.save([full_record()])  # takes the write lock at once: it was freed
        async with backend.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            await driver.execute("BEGIN IMMEDIATE")
            await driver.execute("DELETE FROM taskflow_history")
        assert [r.task_id for r in await backend.load()] == ["task-full"]
    finally:
        await backend.close()


async def test_sqlite_write_errors_from_the_driver_are_retried_or_translated(
    tmp_path: Path,
) -> None:
    from fastapi_taskflow.backends.sql.transaction import WriteGuard

    backend = SqliteBackend(tmp_path / "tasks.db")
    await backend.open()
    calls = 0

    async def locked_once(conn: Any) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise sqlite3.OperationalError("database is locked")
        return "written"

    async def broken(conn: Any) -> None:
        raise sqlite3.OperationalError("no such table: nowhere")

    try:
        guard = WriteGuard()
        assert await guard.run(backend.engine, locked_once, "a write") == "written"
        assert calls == 2
        with pytest.raises(BackendError, match=r"a write failed on sqlite.*no such table"):
            await guard.run(backend.engine, broken, "a write")
    finally:
        await backend.close()


async def test_sqlite_log_is_checkpointed_in_the_background(tmp_path: Path) -> None:
    """A commit copies the write-ahead log into the database only past 10,000 pages; after
    history writes a background checkpoint keeps the log far below that."""
    path = tmp_path / "tasks.db"
    backend = SqliteBackend(path)
    await backend.open()
    try:
        async with backend.engine.connect() as conn:
            assert await conn.scalar(sa.text("PRAGMA wal_autocheckpoint")) == 10_000
        big = "x" * 4_000
        for batch in range(40):  # ~1 MB of rows and index entries per batch
            records = [
                TaskRecord(task_id=f"t{batch}-{i}", func_name="f", error=big) for i in range(250)
            ]
            await backend.save(records)
            checkpoints = backend._checkpoints
            assert checkpoints is not None
            if checkpoints._task is not None:
                await checkpoints._task
        wal = path.with_name(path.name + "-wal")
        assert wal.stat().st_size < 8 * 2**20, wal.stat().st_size
        assert await backend.history().count(TaskFilter()) == 40 * 250
    finally:
        await backend.close()


async def test_sqlite_in_memory_keeps_one_private_database() -> None:
    backend = SqliteBackend(":memory:")
    await backend.open()
    try:
        await backend.save([full_record()])
        await backend.save_pending([full_record("p")])
        assert await backend.load() == [full_record()]
        assert [r.task_id for r in await backend.load_pending()] == ["p"]
    finally:
        await backend.close()


async def test_unreachable_database_fails_loudly_at_open() -> None:
    backend = PostgresBackend("postgresql://nobody:secret@127.0.0.1:1/nowhere")
    assert "secret" not in repr(backend)
    with pytest.raises(BackendError, match=r"127\.0\.0\.1:1/") as caught:
        await backend.open()
    assert "secret" not in str(caught.value)
    with pytest.raises(NotStartedError):
        backend.engine  # noqa: B018


async def test_history_before_open_says_so() -> None:
    backend = SqliteBackend(":memory:")
    assert isinstance(backend, SnapshotBackend)
    assert isinstance(backend.history(), HistoryRepository)
    with pytest.raises(NotStartedError, match="open"):
        await backend.history().query(TaskFilter())


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "mapped"),
    [
        ("sqlite:///tasks.db", "sqlite+aiosqlite:///tasks.db"),
        ("sqlite:////abs/tasks.db", "sqlite+aiosqlite:////abs/tasks.db"),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://u:p@h/db", "postgresql+asyncpg://u:***@h/db"),
        ("postgres://u@h:5433/db", "postgresql+asyncpg://u@h:5433/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("mysql://u@h/db", "mysql+aiomysql://u@h/db?charset=utf8mb4"),
        ("mariadb://u@h/db", "mysql+aiomysql://u@h/db?charset=utf8mb4"),
        ("mariadb+aiomysql://u@h/db", "mysql+aiomysql://u@h/db?charset=utf8mb4"),
        ("mysql+aiomysql://u@h/db?charset=utf8", "mysql+aiomysql://u@h/db?charset=utf8"),
    ],
)
def test_plain_urls_map_to_async_drivers(url: str, mapped: str) -> None:
    assert make_async_url(url).render_as_string(hide_password=True) == mapped


@pytest.mark.parametrize("url", ["postgresql+psycopg2://u@h/db", "mysql+pymysql://u@h/db"])
def test_sync_drivers_are_refused_with_the_async_form(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"not supported.*\+(asyncpg|aiomysql)"):
        SqlBackend(url)


@pytest.mark.parametrize("url", ["oracle://u@h/db", "redis://localhost/0", "http://x"])
def test_unknown_schemes_name_the_accepted_forms(url: str) -> None:
    with pytest.raises(ConfigurationError, match="postgresql://user:pass@host/db"):
        SqlBackend(url)


@pytest.mark.parametrize("url", ["not a url", "", "postgresql://u@h:notaport/db"])
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="URL"):
        SqlBackend(url)


def test_no_url_and_no_engine_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="needs a database URL"):
        SqlBackend()


@pytest.mark.parametrize(
    ("module", "url", "extra"),
    [
        ("asyncpg", "postgresql://u@h/db", "postgres"),
        ("aiomysql", "mariadb://u@h/db", "mysql"),
    ],
)
def test_a_missing_driver_names_the_pip_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, url: str, extra: str
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == module else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingDriverError, match=rf'pip install "fastapi-taskflow\[{extra}\]"'):
        SqlBackend(url)


def test_nothing_connects_at_construction() -> None:
    backend = SqlBackend("postgresql://u@127.0.0.1:1/db")
    with pytest.raises(NotStartedError):
        backend.engine  # noqa: B018


def test_named_backends_check_the_scheme(tmp_path: Path) -> None:
    assert SqliteBackend(tmp_path / "x.db").url.drivername == "sqlite+aiosqlite"
    assert SqliteBackend("sqlite:///x.db").url.database == "x.db"
    assert PostgresBackend("postgres://u@h/db").url.drivername == "postgresql+asyncpg"
    assert MySQLBackend("mariadb://u@h/db").url.drivername == "mysql+aiomysql"
    with pytest.raises(ConfigurationError, match="PostgresBackend takes a postgresql URL"):
        PostgresBackend("mysql://u@h/db")
    with pytest.raises(ConfigurationError, match="MySQLBackend"):
        MySQLBackend("sqlite:///x.db")
    with pytest.raises(ConfigurationError, match="SqliteBackend"):
        SqliteBackend("postgresql://u@h/db")


def test_transient_errors_are_recognised() -> None:
    locked = OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
    broken = OperationalError("INSERT", {}, sqlite3.OperationalError("no such table: x"))
    assert is_transient(locked)
    assert not is_transient(broken)
    assert is_transient(ConnectionRefusedError())
    assert not is_transient(ValueError("x"))


def test_mysql_literals_cover_every_value_kind_and_refuse_others() -> None:
    from fastapi_taskflow.backends.sql.bulk import literal, literal_statements

    assert literal("a'b") == "_utf8mb4 0x" + b"a'b".hex()
    assert literal("") == "''"
    assert literal(None) == "NULL"
    assert literal(7) == "7" and literal(True) == "1"
    assert literal(1.5e-05) == "1.5e-05"
    assert literal(datetime(2024, 5, 1, 12, 0, 0, 5)) == "'2024-05-01 12:00:00.000005'"
    with pytest.raises(BackendError, match="non-finite"):
        literal(float("nan"))
    with pytest.raises(BackendError, match="no SQL literal for a bytes"):
        literal(b"x")
    rows = [("x" * 300_000,)] * 5 + [("y" * 600_000,)]
    statements, oversized = literal_statements("INSERT INTO t (a) VALUES ", "", rows)
    assert len(statements) == 5  # ~600 KB of hex each: one row per statement
    assert statements[0].startswith("INSERT INTO t (a) VALUES (_utf8mb4 0x7878")
    assert oversized == [("y" * 600_000,)]  # 1.2 MB as hex: sent with parameters


def test_mysql_joined_updates_chunk_and_set_aside_large_rows() -> None:
    from fastapi_taskflow.backends.sql.bulk import joined_updates

    rows = [(f"id{i}", "running", "d" * 200_000) for i in range(5)] + [("big", "x", "e" * 600_000)]
    statements, oversized = joined_updates("t", "k", ("s", "r"), rows)
    assert oversized == [rows[-1]]
    assert len(statements) == 2  # ~400 KB of hex per row, a new statement past a megabyte
    assert statements[0].startswith("UPDATE t AS t JOIN (SELECT _utf8mb4 0x696430 AS k, ")
    assert statements[0].count(" UNION ALL SELECT ") == 2
    assert statements[0].endswith(") AS u ON t.k = u.k SET t.s = u.s, t.r = u.r")


def test_postgres_history_documents_split_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from fastapi_taskflow.backends.sql import records as records_module

    batch = [full_record(f"task-{i}", stacktrace="z" * 500) for i in range(9)]
    assert len(records_module.history_documents(batch)) == 1
    monkeypatch.setattr(records_module, "MAX_JSON_BYTES", 3 * len(batch[0].model_dump_json()))
    documents = records_module.history_documents(batch)
    assert len(documents) > 1
    ids = [row["task_id"] for document in documents for row in json.loads(document)]
    assert ids == [f"task-{i}" for i in range(9)]
