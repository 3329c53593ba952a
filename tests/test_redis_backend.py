"""RedisBackend against a real Redis server (the ``redis_url`` fixture)."""

from __future__ import annotations

import asyncio
import importlib
import random
import socket
import statistics
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from fastapi_taskflow import _cursor
from fastapi_taskflow._errors import (
    BackendError,
    ConfigurationError,
    MissingDriverError,
    NotStartedError,
)
from fastapi_taskflow._models import (
    Attempt,
    FunctionStats,
    LogEntry,
    TaskFilter,
    TaskPage,
    TaskRecord,
    TaskStatus,
)
from fastapi_taskflow.backends import HistoryRepository, SnapshotBackend
from fastapi_taskflow.backends.redis import RedisBackend, RedisHistoryRepository

pytestmark = pytest.mark.redis

BASE = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
async def backend(redis_url: str) -> AsyncIterator[RedisBackend]:
    b = RedisBackend(redis_url, prefix="tf")
    await b.open()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


def full_record(task_id: str = "task-1", **changes: object) -> TaskRecord:
    """A record with every field set to something non-default."""
    fields: dict[str, object] = dict(
        task_id=task_id,
        func_name="app.tasks.send_email",
        status=TaskStatus.FAILED,
        args=[1, "two", 3.5, None, [4, {"five": [6]}]],
        kwargs={"address": "a@example.com", "opts": {"retry": True, "tags": ["x", "ü"]}},
        created_at=BASE,
        start_time=BASE + timedelta(microseconds=17),
        end_time=BASE + timedelta(seconds=2, microseconds=999_999),
        duration=2.999982,
        retries_used=2,
        error="ValueError: boom",
        stacktrace='Traceback (most recent call last):\n  File "x.py", line 1\nValueError: boom',
        logs=[
            LogEntry(timestamp=BASE + timedelta(microseconds=5), message="start"),
            LogEntry(
                timestamp=BASE + timedelta(seconds=1, microseconds=1),
                level="error",
                message="oops ✓",
                attempt=2,
                extra={"n": 1, "nested": {"k": [1, 2]}},
            ),
        ],
        attempts=[
            Attempt(number=1, start_time=BASE, end_time=BASE + timedelta(seconds=1), error="e1"),
            Attempt(number=2, start_time=BASE + timedelta(seconds=1, microseconds=3)),
        ],
        tags={"tenant": "acme", "region": "eu=west/1"},
        idempotency_key="signup:a@example.com",
        source="scheduler",
        priority=7,
        queue="emails",
        retry_of="task-0",
        instance_id="web-1",
        updated_at=BASE + timedelta(seconds=3, microseconds=42),
    )
    fields.update(changes)
    return TaskRecord.model_validate(fields)


def assert_same(loaded: TaskRecord, original: TaskRecord) -> None:
    assert loaded == original
    assert loaded.model_dump(mode="json") == original.model_dump(mode="json")
    for name in ("created_at", "start_time", "end_time", "updated_at"):
        stamp = getattr(loaded, name)
        assert stamp.utcoffset() == timedelta(0), name
        assert stamp == getattr(original, name)
        assert stamp.microsecond == getattr(original, name).microsecond


# --------------------------------------------------------------------------- construction


def test_is_a_snapshot_backend_and_connects_lazily() -> None:
    backend = RedisBackend("redis://127.0.0.1:1/0")  # nothing listens there: no error yet
    assert isinstance(backend, SnapshotBackend)
    assert isinstance(backend.history(), RedisHistoryRepository)
    assert isinstance(backend.history(), HistoryRepository)


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:6379/0",
        "postgresql://localhost/db",
        "localhost:6379",
        "",
        "redis://localhost:port/0",
        "redis://localhost:6379/zero",
        "unix://",
    ],
)
def test_bad_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="RedisBackend"):
        RedisBackend(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://localhost",
        "rediss://user:pw@cache.example.com:6380/3",
        "unix:///run/redis/redis.sock?db=1",
    ],
)
def test_good_urls_construct(url: str) -> None:
    RedisBackend(url)


def test_bad_options_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="prefix"):
        RedisBackend("redis://localhost", prefix="")
    with pytest.raises(ConfigurationError, match="history_ttl_s"):
        RedisBackend("redis://localhost", history_ttl_s=0)


def test_error_message_hides_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        RedisBackend("http://user:s3cret@localhost/0")
    assert "s3cret" not in str(info.value)
    assert "user:***@localhost" in str(info.value)
    assert "s3cret" not in repr(RedisBackend("redis://:s3cret@localhost/0?password=s3cret"))


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import fastapi_taskflow.backends as package

    monkeypatch.setattr(package, "redis", package.redis)  # restored after the re-import
    monkeypatch.setitem(sys.modules, "redis", None)
    for name in [m for m in sys.modules if m.startswith("fastapi_taskflow.backends.redis")]:
        monkeypatch.delitem(sys.modules, name)  # the package and its modules
    module = importlib.import_module("fastapi_taskflow.backends.redis")
    with pytest.raises(MissingDriverError, match=r'pip install "fastapi-taskflow\[redis\]"'):
        module.RedisBackend("redis://localhost:6379/0")


async def test_unreachable_server_fails_at_open_with_the_url() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = RedisBackend(f"redis://user:s3cret@127.0.0.1:{port}/0")
    with pytest.raises(BackendError) as info:
        await backend.open()
    message = str(info.value)
    assert f"redis://user:***@127.0.0.1:{port}/0" in message
    assert "s3cret" not in message
    assert isinstance(info.value.__cause__, RedisError | OSError)
    with pytest.raises(NotStartedError):
        await backend.load()
    await backend.close()


async def test_wrong_password_fails_at_open(redis_url: str) -> None:
    backend = RedisBackend(redis_url.replace("redis://", "redis://ghost:nope@"))
    with pytest.raises(BackendError, match="cannot reach Redis") as info:
        await backend.open()
    assert "nope" not in str(info.value)
    assert "ghost:***@" in str(info.value)


async def test_use_before_open_is_a_clear_error(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    with pytest.raises(NotStartedError, match="open"):
        await backend.save([full_record()])
    with pytest.raises(NotStartedError):
        await backend.history().count(TaskFilter())


# --------------------------------------------------------------------------- the six methods


async def test_save_load_round_trips_every_field(backend: RedisBackend) -> None:
    record = full_record()
    other = full_record("task-2", status=TaskStatus.SUCCESS, error=None, tags={})
    assert await backend.save([record, other]) == 2
    loaded = {r.task_id: r for r in await backend.load()}
    assert set(loaded) == {"task-1", "task-2"}
    assert_same(loaded["task-1"], record)
    assert_same(loaded["task-2"], other)
    fetched = await backend.history().get("task-1")
    assert fetched is not None
    assert_same(fetched, record)
    assert await backend.history().get("missing") is None


async def test_pending_round_trips_and_is_replaced_wholesale(backend: RedisBackend) -> None:
    first = [full_record("p1", status=TaskStatus.PENDING), full_record("p2")]
    assert await backend.save_pending(first) == 2
    loaded = await backend.load_pending()
    assert [r.task_id for r in loaded] == ["p1", "p2"]
    for got, want in zip(loaded, first, strict=True):
        assert_same(got, want)
    assert await backend.load() == []  # pending work never shows up in history
    second = [full_record("p3", status=TaskStatus.RUNNING)]
    assert await backend.save_pending(second) == 1
    assert [r.task_id for r in await backend.load_pending()] == ["p3"]
    await backend.clear_pending()
    assert await backend.load_pending() == []
    await backend.save_pending(first)
    assert await backend.save_pending([]) == 0
    assert await backend.load_pending() == []


async def test_empty_calls(backend: RedisBackend) -> None:
    assert await backend.save([]) == 0
    assert await backend.load() == []
    assert await backend.load_pending() == []
    await backend.clear_pending()
    assert await backend.delete([]) == 0


async def test_close_is_idempotent_and_reopen_works(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    await backend.open()
    await backend.open()
    await backend.save([full_record()])
    await backend.close()
    await backend.close()
    with pytest.raises(NotStartedError):
        await backend.load()
    await backend.open()
    assert len(await backend.load()) == 1
    await backend.close()


async def test_a_given_client_is_used_and_left_open(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        backend = RedisBackend(redis_url, client=client)
        await backend.open()
        await backend.save([full_record("a"), full_record("b", created_at=BASE)])
        page = await backend.history().query(TaskFilter(statuses=(TaskStatus.FAILED,)), limit=1)
        assert [r.task_id for r in page] == ["b"]
        page = await backend.history().query(TaskFilter(), limit=1, cursor=page.next_cursor)
        assert [r.task_id for r in page] == ["a"]
        await backend.close()
        assert await client.ping()  # still ours
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- upsert and keys


async def test_upsert_is_idempotent(backend: RedisBackend, raw: aioredis.Redis) -> None:
    record = full_record()
    await backend.save([record])
    keys_before = sorted(await raw.keys("*"))
    await backend.save([record])
    await backend.save([record, record])
    assert [r.task_id for r in await backend.load()] == ["task-1"]
    assert sorted(await raw.keys("*")) == keys_before
    assert await backend.history().count(TaskFilter()) == 1


async def test_status_change_moves_the_record_between_indexes(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    repo = backend.history()
    func = "app.tasks.send_email"
    await backend.save([full_record(status=TaskStatus.FAILED)])
    assert await repo.count(TaskFilter(statuses=(TaskStatus.FAILED,), func_name=func)) == 1
    done = full_record(status=TaskStatus.SUCCESS, error=None, retries_used=3)
    await backend.save([done])
    failed = TaskFilter(statuses=(TaskStatus.FAILED,))
    assert await repo.count(failed) == 0
    assert await repo.count(TaskFilter(statuses=(TaskStatus.FAILED,), func_name=func)) == 0
    assert (await repo.query(failed)).items == []
    success = TaskFilter(statuses=(TaskStatus.SUCCESS,), func_name=func)
    assert await repo.count(success) == 1
    assert_same((await repo.query(success)).items[0], done)
    assert await raw.zscore("tf:h:ix:st:failed", "task-1") is None
    assert await raw.zscore(f"tf:h:ix:sf:failed:{func}", "task-1") is None
    assert await raw.zscore(f"tf:h:ix:sf:success:{func}", "task-1") is not None
    assert await raw.zcard("tf:h:ix:all") == 1


async def test_every_key_lives_under_the_prefix(backend: RedisBackend, raw: aioredis.Redis) -> None:
    await backend.save([full_record("h1"), full_record("h2", status=TaskStatus.SUCCESS)])
    await backend.save_pending([full_record("p1", status=TaskStatus.PENDING)])
    keys = [str(k) for k in await raw.keys("*")]
    assert keys and all(k.startswith("tf:") for k in keys)
    history = [k for k in keys if k.startswith("tf:h:")]
    pending = [k for k in keys if k.startswith("tf:p:")]
    assert sorted(history + pending) == sorted(keys)
    # the pending store, ordered by created_at, with nobody holding the tasks
    assert sorted(pending) == ["tf:p:free", "tf:p:order", "tf:p:tasks"]
    assert "tf:h:rec:h1" in history and "tf:h:ix:tag:tenant=acme" in history


async def test_two_prefixes_on_one_database_do_not_see_each_other(redis_url: str) -> None:
    a, b = RedisBackend(redis_url, prefix="app-a"), RedisBackend(redis_url, prefix="app-b")
    await a.open()
    await b.open()
    try:
        await a.save([full_record("only-a")])
        await a.save_pending([full_record("pending-a", status=TaskStatus.PENDING)])
        assert await b.load() == []
        assert await b.load_pending() == []
        assert await b.history().count(TaskFilter()) == 0
        assert await b.history().get("only-a") is None
        await b.clear_pending()
        assert await b.delete(["only-a"]) == 0
        assert [r.task_id for r in await a.load_pending()] == ["pending-a"]
        assert [r.task_id for r in await a.load()] == ["only-a"]
    finally:
        await a.close()
        await b.close()


async def test_delete_removes_records_and_index_entries(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    await backend.save([full_record("a"), full_record("b"), full_record("c")])
    assert await backend.delete(["a", "b", "missing", "a"]) == 2
    assert [r.task_id for r in await backend.load()] == ["c"]
    assert await backend.history().count(TaskFilter(tags={"tenant": "acme"})) == 1
    for key in await raw.keys("tf:h:ix:*"):
        assert await raw.zrange(key, 0, -1) == ["c"], key
    assert await backend.delete(["c"]) == 1
    assert await raw.keys("*") == []


async def test_history_ttl_hides_and_prunes_old_records(
    redis_url: str, raw: aioredis.Redis
) -> None:
    backend = RedisBackend(redis_url, history_ttl_s=3600)
    await backend.open()
    try:
        now = datetime.now(UTC)
        old = full_record("old", created_at=now - timedelta(hours=2))
        fresh = full_record("fresh", created_at=now - timedelta(minutes=5))
        await backend.save([fresh])
        await raw.set("taskflow:h:rec:old", old.model_dump_json())  # as if saved long ago
        await raw.zadd("taskflow:h:ix:all", {"old": 0})
        await raw.zadd("taskflow:h:ix:st:failed", {"old": 0})
        repo = backend.history()
        assert await repo.get("old") is None
        assert [r.task_id for r in await backend.load()] == ["fresh"]
        assert await repo.count(TaskFilter(statuses=(TaskStatus.FAILED,))) == 1
        await backend.save([old])  # expired on arrival: pruned by the same save
        assert not await raw.exists("taskflow:h:rec:old")
        assert await raw.zrange("taskflow:h:ix:all", 0, -1) == ["fresh"]
        assert [r.task_id for r in (await repo.query(TaskFilter())).items] == ["fresh"]
    finally:
        await backend.close()


async def test_redis_errors_become_backend_errors(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    await raw.set("tf:h:ix:all", "not a sorted set")
    with pytest.raises(BackendError, match="save failed") as info:
        await backend.save([full_record()])
    assert isinstance(info.value.__cause__, RedisError)
    with pytest.raises(BackendError):
        await backend.load()
    await raw.set("tf:h:rec:bad", "{not json")
    with pytest.raises(BackendError, match="tf:h:rec:bad"):
        await backend.history().get("bad")


# --------------------------------------------------------------------------- history queries

FUNCS = ("app.a", "app.b", "app:c weird")
QUEUES = ("default", "emails")
STATUSES = tuple(TaskStatus)


def dataset(n: int = 240, seed: int = 7) -> list[TaskRecord]:
    """Records with many identical created_at values (runs of ties across statuses)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        created = BASE + timedelta(microseconds=rng.randrange(40))  # heavy ties
        if i % 5 == 0:
            created = BASE + timedelta(seconds=rng.randrange(1000), microseconds=i)
        status = rng.choice(STATUSES)
        tags = {"tenant": rng.choice(("acme", "globex"))}
        if rng.random() < 0.5:
            tags["tier"] = rng.choice(("gold", "free"))
        records.append(
            TaskRecord(
                task_id=f"t{rng.randrange(10**6):06d}-{i:03d}",
                func_name=rng.choice(FUNCS),
                status=status,
                created_at=created,
                queue=rng.choice(QUEUES),
                tags=tags,
                duration=round(rng.uniform(0.01, 5.0), 3) if rng.random() < 0.9 else None,
                error=f"Error number {i} Timeout" if status == TaskStatus.FAILED else None,
            )
        )
    return records


FILTERS = {
    "none": TaskFilter(),
    "status": TaskFilter(statuses=(TaskStatus.FAILED,)),
    "statuses": TaskFilter(statuses=(TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.REJECTED)),
    "func": TaskFilter(func_name="app.b"),
    "odd func": TaskFilter(func_name="app:c weird"),
    "unknown func": TaskFilter(func_name="nope"),
    "status+func": TaskFilter(statuses=(TaskStatus.SUCCESS,), func_name="app.a"),
    "statuses+func": TaskFilter(
        statuses=(TaskStatus.SUCCESS, TaskStatus.CANCELLED), func_name="app.a"
    ),
    "queue": TaskFilter(queue="emails"),
    "queue+status": TaskFilter(queue="default", statuses=(TaskStatus.INTERRUPTED,)),
    "tag": TaskFilter(tags={"tenant": "acme"}),
    "two tags": TaskFilter(tags={"tenant": "globex", "tier": "gold"}),
    "since": TaskFilter(since=BASE + timedelta(microseconds=20)),
    "until": TaskFilter(until=BASE + timedelta(seconds=300)),
    "window+func": TaskFilter(
        func_name="app.a",
        since=BASE + timedelta(microseconds=10),
        until=BASE + timedelta(seconds=400),
    ),
    "text in error": TaskFilter(text="TIMEOUT"),
    "text in id": TaskFilter(text="-01"),
    "text+status": TaskFilter(text="app.b", statuses=(TaskStatus.PENDING, TaskStatus.RUNNING)),
    "everything": TaskFilter(
        statuses=(TaskStatus.FAILED, TaskStatus.SUCCESS),
        func_name="app.a",
        queue="emails",
        tags={"tenant": "acme"},
        since=BASE,
        until=BASE + timedelta(days=1),
        text="t",
    ),
}


def expected(records: list[TaskRecord], filter: TaskFilter) -> list[str]:
    matching = [r for r in records if filter.matches(r)]
    matching.sort(key=_cursor.sort_key, reverse=True)
    return [r.task_id for r in matching]


@pytest.fixture
async def filled(backend: RedisBackend) -> list[TaskRecord]:
    records = dataset()
    await backend.save(records[:100])
    await backend.save(records[100:])
    return records


@pytest.mark.parametrize("name", list(FILTERS))
async def test_query_pages_and_counts_match_the_filter(
    backend: RedisBackend, filled: list[TaskRecord], name: str
) -> None:
    filter = FILTERS[name]
    want = expected(filled, filter)
    repo = backend.history()
    assert await repo.count(filter) == len(want)
    for limit in (1, 7, 50, 500):
        got: list[str] = []
        cursor = None
        while True:
            page = await repo.query(filter, limit=limit, cursor=cursor)
            assert len(page) <= limit
            got += [r.task_id for r in page]
            cursor = page.next_cursor
            if cursor is None:
                break
            assert len(page) == limit
        assert got == want, (name, limit)


async def test_first_page_is_the_newest(backend: RedisBackend, filled: list[TaskRecord]) -> None:
    page = await backend.history().query(TaskFilter(), limit=10)
    assert [r.task_id for r in page] == expected(filled, TaskFilter())[:10]
    assert page.next_cursor is not None
    stamps = [_cursor.sort_key(r) for r in page]
    assert stamps == sorted(stamps, reverse=True)


async def test_identical_created_at_pages_without_gaps(backend: RedisBackend) -> None:
    same = [
        full_record(f"id-{i:02d}", status=(TaskStatus.SUCCESS, TaskStatus.FAILED)[i % 2])
        for i in range(30)
    ]
    await backend.save(same)
    repo = backend.history()
    both = TaskFilter(statuses=(TaskStatus.SUCCESS, TaskStatus.FAILED))
    for filter in (TaskFilter(), both, TaskFilter(statuses=(TaskStatus.FAILED,))):
        for limit in (1, 2, 3, 4, 29):
            seen: list[str] = []
            cursor = None
            while True:
                page = await repo.query(filter, limit=limit, cursor=cursor)
                seen += [r.task_id for r in page]
                if (cursor := page.next_cursor) is None:
                    break
            assert seen == expected(same, filter)
            assert len(seen) == len(set(seen))


async def test_cursor_from_a_deleted_record_still_continues(
    backend: RedisBackend, filled: list[TaskRecord]
) -> None:
    repo = backend.history()
    page = await repo.query(TaskFilter(), limit=5)
    await backend.delete([page.items[-1].task_id])
    rest = await repo.query(TaskFilter(), limit=1000, cursor=page.next_cursor)
    assert [r.task_id for r in rest] == expected(filled, TaskFilter())[5:]


async def test_bad_cursor_and_limit_are_configuration_errors(backend: RedisBackend) -> None:
    repo = backend.history()
    with pytest.raises(ConfigurationError, match="cursor"):
        await repo.query(TaskFilter(), cursor="not-a-cursor")
    with pytest.raises(ConfigurationError, match="limit"):
        await repo.query(TaskFilter(), limit=0)


def reference_stats(records: list[TaskRecord], filter: TaskFilter) -> list[FunctionStats]:
    out = []
    for func in sorted({r.func_name for r in records if filter.matches(r)}):
        rows = [r for r in records if filter.matches(r) and r.func_name == func]
        success = sum(r.status == TaskStatus.SUCCESS for r in rows)
        failed = sum(r.status == TaskStatus.FAILED for r in rows)
        durations = [r.duration for r in rows if r.duration is not None]
        cuts = statistics.quantiles(durations, n=100, method="inclusive")
        out.append(
            FunctionStats(
                func_name=func,
                total=len(rows),
                success=success,
                failed=failed,
                success_rate=success / (success + failed) if success + failed else None,
                duration_p50=cuts[49],
                duration_p95=cuts[94],
                duration_p99=cuts[98],
                duration_avg=statistics.fmean(durations),
            )
        )
    return out


@pytest.mark.parametrize("name", ["none", "status", "queue", "two tags", "text in error"])
async def test_stats_over_matching_records(
    backend: RedisBackend, filled: list[TaskRecord], name: str
) -> None:
    filter = FILTERS[name]
    got = await backend.history().stats(filter)
    want = reference_stats(filled, filter)
    assert [s.func_name for s in got] == [s.func_name for s in want]
    for g, w in zip(got, want, strict=True):
        assert (g.total, g.success, g.failed) == (w.total, w.success, w.failed)
        assert g.success_rate == pytest.approx(w.success_rate)
        for field in ("duration_p50", "duration_p95", "duration_p99", "duration_avg"):
            assert getattr(g, field) == pytest.approx(getattr(w, field)), field


async def test_stats_small_exact_values(backend: RedisBackend) -> None:
    rows = [
        full_record(f"s{i}", status=status, duration=duration, created_at=BASE + timedelta(i))
        for i, (status, duration) in enumerate(
            [
                (TaskStatus.SUCCESS, 1.0),
                (TaskStatus.SUCCESS, 2.0),
                (TaskStatus.FAILED, 3.0),
                (TaskStatus.CANCELLED, 4.0),
                (TaskStatus.SUCCESS, None),
            ]
        )
    ]
    rows.append(full_record("other", func_name="app.other", status=TaskStatus.CANCELLED))
    rows[-1] = rows[-1].model_copy(update={"duration": None})
    await backend.save(rows)
    stats = await backend.history().stats(TaskFilter())
    assert [s.model_dump() for s in stats] == [
        {
            "func_name": "app.other",
            "total": 1,
            "success": 0,
            "failed": 0,
            "success_rate": None,
            "duration_p50": None,
            "duration_p95": None,
            "duration_p99": None,
            "duration_avg": None,
        },
        {
            "func_name": "app.tasks.send_email",
            "total": 5,
            "success": 3,
            "failed": 1,
            "success_rate": 0.75,
            "duration_p50": 2.5,
            "duration_p95": pytest.approx(3.85),
            "duration_p99": pytest.approx(3.97),
            "duration_avg": 2.5,
        },
    ]
    assert await backend.history().stats(TaskFilter(func_name="nope")) == []


# --------------------------------------------------------------------------- coordinator


def pend(n: int, **changes: object) -> TaskRecord:
    """A pending task created ``n`` seconds after BASE."""
    fields: dict[str, object] = dict(
        task_id=f"p{n:04d}",
        func_name="app.jobs.work",
        created_at=BASE + timedelta(seconds=n),
        args=[n],
        tags={"parity": "odd" if n % 2 else "even"},
    )
    fields.update(changes)
    return TaskRecord.model_validate(fields)


async def test_coordinator_keys_live_under_the_prefix_and_completion_empties_them(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    c = backend.coordinator()
    await c.accept([pend(1), pend(2)], owner="a", lease_s=30, key_ttl_s=60)
    await c.accept([pend(3)], owner=None, lease_s=30, key_ttl_s=60)
    assert await c.request_cancel("p0001")
    assert sorted(await raw.keys("*")) == [
        "tf:p:cancel",
        "tf:p:free",
        "tf:p:lease",
        "tf:p:order",
        "tf:p:owner",
        "tf:p:tasks",
    ]
    done = [pend(n, status=TaskStatus.SUCCESS, idempotency_key=f"k{n}") for n in (1, 2, 3)]
    await backend.save(done)
    assert await raw.keys("tf:p:*") == []
    assert await raw.zrange("tf:h:ok", 0, -1) == ["p0001", "p0002", "p0003"]
    await backend.delete(["p0001", "p0002", "p0003"])
    assert await raw.keys("*") == []


async def test_fractional_leases_run_on_the_server_clock(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    c = backend.coordinator()
    await c.accept([pend(1)], owner="a", lease_s=0.25, key_ttl_s=60)
    seconds, micro = await raw.time()
    now_ms = seconds * 1000 + micro // 1000
    expiry = await raw.zscore("tf:p:lease", "p0001")
    assert expiry is not None and now_ms - 50 <= expiry <= now_ms + 250
    assert await raw.hget("tf:p:owner", "p0001") == "a"
    assert await c.claim("b", lease_s=0.001, limit=5) == []
    await asyncio.sleep(0.3)
    [taken] = await c.claim("b", lease_s=0.001, limit=5)  # rounded up to 1 ms
    assert taken.task_id == "p0001"
    await asyncio.sleep(0.01)
    assert [r.task_id for r in await c.claim("c", lease_s=30, limit=5)] == ["p0001"]
    assert await c.renew("b", ["p0001"], lease_s=30) == ["p0001"]


async def test_transactional_enqueue_is_refused(backend: RedisBackend) -> None:
    with pytest.raises(ConfigurationError, match="SQL backend"):
        await backend.coordinator().accept(
            [pend(1)], owner="a", lease_s=30, key_ttl_s=60, connection=object()
        )
    assert await backend.coordinator().get_live("p0001") is None


async def test_coordinator_before_open_is_a_clear_error(redis_url: str) -> None:
    c = RedisBackend(redis_url).coordinator()
    with pytest.raises(NotStartedError):
        await c.accept([pend(1)], owner="a", lease_s=30, key_ttl_s=60)
    with pytest.raises(NotStartedError):
        await c.live(TaskFilter())


async def test_saved_pending_tasks_are_free_to_claim_and_cleared_with_their_state(
    backend: RedisBackend,
) -> None:
    c = backend.coordinator()
    await c.accept([pend(9)], owner="old", lease_s=30, key_ttl_s=60)
    await c.request_cancel("p0009")
    await backend.save_pending([pend(3), pend(1), pend(2)])  # replaces everything
    assert await c.get_live("p0009") is None
    assert [r.task_id for r in await c.live(TaskFilter())] == ["p0003", "p0002", "p0001"]
    assert [r.task_id for r in await c.claim("a", lease_s=30, limit=2)] == ["p0001", "p0002"]
    await c.request_cancel("p0001")
    assert await c.cancel_requests("old") == []
    await backend.clear_pending()
    assert await c.live(TaskFilter()) == TaskPage(items=[], next_cursor=None)
    assert await c.cancel_requests("a") == []
    assert await c.claim("a", lease_s=30, limit=10, reclaim_own=True) == []


async def test_deleting_a_pending_task_removes_it_for_every_instance(
    backend: RedisBackend,
) -> None:
    c = backend.coordinator()
    await c.accept([pend(1), pend(2)], owner="a", lease_s=30, key_ttl_s=60)
    assert await backend.delete(["p0001"]) == 0  # not in history, but no longer pending
    assert await c.get_live("p0001") is None
    await c.update([pend(1, status=TaskStatus.RUNNING)])  # the owner cannot bring it back
    assert await c.get_live("p0001") is None
    assert await c.renew("a", ["p0001", "p0002"], lease_s=30) == ["p0001"]


async def test_a_keyed_success_saved_again_as_failed_frees_the_key(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    c = backend.coordinator()
    keyed = pend(1, idempotency_key="order-1")
    await c.accept([keyed], owner="a", lease_s=30, key_ttl_s=3600)
    end = datetime.now(UTC)
    await backend.save([keyed.model_copy(update={"status": TaskStatus.SUCCESS, "end_time": end})])
    assert await raw.zscore("tf:h:ok", "p0001") == _cursor_micros(end)
    assert await c.accept([keyed], owner="b", lease_s=30, key_ttl_s=3600) == []
    await backend.save([keyed.model_copy(update={"status": TaskStatus.FAILED})])
    assert await c.accept([keyed], owner="b", lease_s=30, key_ttl_s=3600) == ["p0001"]


def _cursor_micros(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


async def test_claims_from_many_clients_are_exclusive(redis_url: str) -> None:
    instances = [RedisBackend(redis_url, prefix="tf") for _ in range(5)]
    for b in instances:
        await b.open()
    try:
        c0 = instances[0].coordinator()
        await c0.accept([pend(n) for n in range(300)], owner=None, lease_s=30, key_ttl_s=60)

        async def drain(b: RedisBackend, name: str) -> list[str]:
            got: list[str] = []
            while batch := await b.coordinator().claim(name, lease_s=30, limit=7):
                got += [r.task_id for r in batch]
                await asyncio.sleep(0)
            return got

        results = await asyncio.gather(*(drain(b, f"i{n}") for n, b in enumerate(instances)))
        claimed = [task_id for got in results for task_id in got]
        assert sorted(claimed) == [f"p{n:04d}" for n in range(300)]
        assert all(got == sorted(got) for got in results)  # each took the oldest first
    finally:
        for b in instances:
            await b.close()


async def test_the_script_cache_being_flushed_is_harmless(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    c = backend.coordinator()
    await c.accept([pend(1)], owner=None, lease_s=30, key_ttl_s=60)
    await raw.script_flush()
    assert [r.task_id for r in await c.claim("a", lease_s=30, limit=1)] == ["p0001"]


async def test_coordinator_redis_errors_become_backend_errors(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    await raw.set("tf:p:tasks", "not a hash")
    c = backend.coordinator()
    with pytest.raises(BackendError, match="accept tasks failed") as info:
        await c.accept([pend(1)], owner="a", lease_s=30, key_ttl_s=60)
    assert isinstance(info.value.__cause__, RedisError)
    with pytest.raises(BackendError):
        await c.get_live("p0001")
    await raw.delete("tf:p:tasks")
    await raw.hset("tf:p:tasks", "bad", "{not json")
    await raw.zadd("tf:p:order", {"bad": 1})
    with pytest.raises(BackendError, match="tf:p:tasks"):
        await c.live(TaskFilter())


async def test_a_given_client_decoding_responses_works_for_coordination(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        backend = RedisBackend(redis_url, prefix="tf", client=client)
        await backend.open()
        c = backend.coordinator()
        assert await c.accept([pend(1), pend(2)], owner="a", lease_s=30, key_ttl_s=60) == [
            "p0001",
            "p0002",
        ]
        assert await c.request_cancel("p0002")
        assert await c.cancel_requests("a") == ["p0002"]
        assert await c.renew("a", ["p0001", "x"], lease_s=30) == ["x"]
        await c.release("a", [pend(1, status=TaskStatus.RUNNING)])
        [again] = await c.claim("b", lease_s=30, limit=5)
        assert again.task_id == "p0001" and again.status is TaskStatus.PENDING
        await backend.close()
    finally:
        await client.aclose()


def _live_reference(records: list[TaskRecord], filter: TaskFilter) -> list[str]:
    matching = [r for r in records if filter.matches(r)]
    matching.sort(key=_cursor.sort_key, reverse=True)
    return [r.task_id for r in matching]


@pytest.mark.parametrize("name", ["none", "status", "func", "queue+status", "tag", "since",
                                  "until", "text in id", "everything"])  # fmt: skip
async def test_live_view_pages_through_ties_like_the_reference(
    backend: RedisBackend, name: str
) -> None:
    records = dataset(200, seed=11)
    c = backend.coordinator()
    await backend.save_pending(records)
    filter = FILTERS[name]
    for limit in (1, 7, 500):
        seen: list[str] = []
        cursor = None
        while True:
            page = await c.live(filter, limit=limit, cursor=cursor)
            assert len(page.items) <= limit
            seen += [r.task_id for r in page]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == _live_reference(records, filter), limit


async def test_coordination_matches_the_memory_reference(backend: RedisBackend) -> None:
    """Random operations applied to both coordinators give the same answers."""
    from fastapi_taskflow.backends import MemoryBackend

    memory = MemoryBackend()
    pairs = [(memory, memory.coordinator()), (backend, backend.coordinator())]
    rng = random.Random(5)
    owners = ["a", "b", "c"]
    created = 0
    for step in range(200):
        op = rng.choice(["accept", "accept", "update", "claim", "release", "save", "cancel"])
        owner = rng.choice(owners)
        some = sorted({rng.randrange(created + 1) for _ in range(3)})
        if op == "accept":
            batch = [pend(created + i) for i in range(3)] + [pend(rng.randrange(created + 3))]
            accept_owner = rng.choice([*owners, None])
            created += 3
        elif op == "update":
            live = (await memory.coordinator().live(TaskFilter(), limit=1000)).items
            chosen = rng.sample([x.task_id for x in live], min(3, len(live)))
            running = [pend(int(i[1:]), status=TaskStatus.RUNNING) for i in chosen]
        elif op == "claim":
            ids = [f"p{i:04d}" for i in some] if rng.random() < 0.3 else None
            limit, reclaim = rng.randrange(1, 5), rng.random() < 0.3
        elif op == "release":
            given = [pend(i, status=TaskStatus.RUNNING) for i in some]
        elif op == "save":
            done = [pend(i, status=TaskStatus.SUCCESS) for i in some]
        answers: list[object] = []
        for store, c in pairs:
            if op == "accept":
                answers.append(await c.accept(batch, owner=accept_owner, lease_s=60, key_ttl_s=60))
            elif op == "update":
                await c.update(running)
            elif op == "claim":
                got = await c.claim(
                    owner, lease_s=60, limit=limit, task_ids=ids, reclaim_own=reclaim
                )
                answers.append([x.task_id for x in got])
            elif op == "release":
                await c.release(owner, given)
            elif op == "save":
                await store.save(done)
            else:
                asked = await c.request_cancel(f"p{some[0]:04d}")
                answers.append([asked, sorted(await c.cancel_requests(owner))])
        assert answers[:1] == answers[1:], (step, op)
        views = [await c.live(TaskFilter(), limit=1000) for _, c in pairs]
        assert views[0] == views[1], step
        statuses = [await c.live(TaskFilter(statuses=(TaskStatus.RUNNING,))) for _, c in pairs]
        assert statuses[0] == statuses[1], step
    assert created > 60 and len(views[0].items) > 20


async def test_save_recovers_when_the_server_closed_its_connection(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    """History writes use a connection of their own; one the server has closed (idle
    timeout, restart, CLIENT KILL) is replaced without failing the save."""
    await backend.save([full_record("before")])
    killed = await raw.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    assert killed >= 1
    await backend.save([full_record("after")])
    assert await raw.exists("tf:h:rec:before", "tf:h:rec:after") == 2
