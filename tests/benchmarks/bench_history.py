"""History query and start-up benchmark (issue 3, acceptance 4, third bullet).

    python tests/benchmarks/bench_history.py                         # 1,000,000 rows, SQLite + PG
    python tests/benchmarks/bench_history.py --rows 200000           # a shorter run
    python tests/benchmarks/bench_history.py --backends sqlite,postgres,redis --redis-rows 100000
    python tests/benchmarks/bench_history.py --quick                 # 20,000 rows, 100 queries

Fills each backend's history with ``--rows`` completed tasks: ten functions, about 5 %
failed, ``created_at`` spread evenly over 30 days, one tag per task. SQL is filled straight
into the library's tables (the library's own column types encode the values; plain INSERT
executemany, 50,000 rows per transaction); Redis through ``backend.save()``, with
``--redis-rows`` (default 100,000) since every record is generated as a TaskRecord. After
the fill, PostgreSQL gets ``VACUUM ANALYZE`` (what autovacuum does to a table that grew by
that much; ``--no-analyze`` skips it); SQLite gets nothing (the library runs no ANALYZE).

Then, on that history:

* ``query``: one status and one function, newest 50 (the target: p99 < 10 ms), and the next
  page through its cursor, ``--queries`` times each with the function and status varied
  (success and failed), through ``backend.history().query(TaskFilter(...))`` and through
  ``TaskManager(snapshot_backend=...).history.query(status=..., func_name=..., limit=50)``
  after start-up; p50, p99 and max;
* other query shapes for reference (no filter, one status, one function, a tag, two
  statuses with a function, a 24-hour window), fewer queries each;
* ``count(status=...)`` for success and failed, through the repository;
* ``startup()`` of a new ``TaskManager`` on that database (target < 1 s): in fresh Python
  processes (imports and the constructor not timed, ``shutdown()`` not timed), and once in
  this process.

The ``max`` column is usually one full (generation 2) garbage collection of this process,
30-60 ms here, which a few hundred queries trigger about once; p99 over the default 500
queries is not moved by it, while over 200 it can be. On a quiet 2-core machine the default
run (1,000,000 rows on SQLite and PostgreSQL) takes about 1.5 minutes, most of it filling.

Servers are started from ``tests/_servers.py`` unless a URL is given; a given SQL database
must be a scratch one (the library's tables in it are dropped and refilled).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
for _path in (str(ROOT), str(ROOT / "tests"), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import sqlalchemy as sa  # noqa: E402
from bench_flush import FUNCTIONS, Databases, make_backend, make_records  # noqa: E402

from fastapi_taskflow import TaskFilter, TaskManager, TaskPage, TaskStatus  # noqa: E402
from fastapi_taskflow.backends.base import SnapshotBackend  # noqa: E402

BACKENDS = ("sqlite", "postgres", "mysql", "redis")
DEFAULT_BACKENDS = ("sqlite", "postgres")
QUERY_TARGET_MS = 10.0  # p99 of the one-status-one-function query
STARTUP_TARGET_S = 1.0
DAYS = 30
FAILED_SHARE = 0.05
TENANTS = 20
FILL_CHUNK = 50_000
STATUSES = (TaskStatus.SUCCESS, TaskStatus.FAILED)


# =========================================================================== filling SQL


def _iso(moment: datetime) -> str:
    """A datetime as pydantic writes it in JSON (``2024-05-01T12:00:00.123456Z``)."""
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


class SqlFiller:
    """Writes generated rows straight into ``taskflow_history`` and its tag table.

    Values are encoded by the columns' own bind processors (the library's ``UTCDateTime``
    among them) and JSON is written as pydantic would, so what is stored is what
    ``backend.save()`` stores; ``check()`` reads a sample back as records to confirm it.
    """

    def __init__(self, engine: Any, rows: int, *, seed: int = 7) -> None:
        from fastapi_taskflow.backends.sql.tables import history, history_tags

        dialect = engine.dialect
        self.engine = engine
        self.rows = rows
        self.rnd = random.Random(seed)
        self.end = datetime.now(UTC).replace(microsecond=0)
        self.start = self.end - timedelta(days=DAYS)
        self.step_s = DAYS * 86_400 / max(rows, 1)
        self.failed = 0
        compiled = sa.insert(history).compile(dialect=dialect)
        self.history_sql = compiled.string
        self.history_order = list(compiled.positiontup or ())
        tags = sa.insert(history_tags).compile(dialect=dialect)
        self.tags_sql = tags.string
        self.tags_order = list(tags.positiontup or ())
        stamp = history.c.created_at.type.bind_processor(dialect)
        self.stamp: Callable[[datetime], Any] = stamp or (lambda value: value)
        self.sqlite = dialect.name == "sqlite"

    def chunk(self, first: int, count: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        rnd, stamp = self.rnd, self.stamp
        history_rows: list[tuple[Any, ...]] = []
        tag_rows: list[tuple[Any, ...]] = []
        for i in range(first, first + count):
            created = self.start + timedelta(seconds=self.step_s * (i + rnd.random()))
            started = created + timedelta(milliseconds=1 + 400 * rnd.random())
            duration = 0.005 + 2 * rnd.random() ** 3
            ended = started + timedelta(seconds=duration)
            failed = rnd.random() < FAILED_SHARE
            self.failed += failed
            func = FUNCTIONS[int(rnd.random() * len(FUNCTIONS))]
            task_id = f"{rnd.getrandbits(128):032x}"
            tenant = f"tenant-{int(rnd.random() * TENANTS)}"
            error = '"app.errors.UpstreamError: upstream returned 502"' if failed else "null"
            created_at = stamp(created)
            row = {
                "task_id": task_id,
                "func_name": func,
                "status": "failed" if failed else "success",
                "args": f'[{i},"user{i % 5000}@example.com"]',
                "kwargs": '{"locale":"en","notify":true}',
                "created_at": created_at,
                "start_time": stamp(started),
                "end_time": stamp(ended),
                "duration": duration,
                "retries_used": 0,
                "error": "app.errors.UpstreamError: upstream returned 502" if failed else None,
                "stacktrace": "Traceback (most recent call last):\n  ...\nUpstreamError"
                if failed
                else None,
                "logs": f'[{{"timestamp":"{_iso(started)}","level":"info",'
                f'"message":"processing item {i}","attempt":1,"extra":{{}}}}]',
                "attempts": f'[{{"number":1,"start_time":"{_iso(started)}",'
                f'"end_time":"{_iso(ended)}","error":{error}}}]',
                "tags": f'{{"tenant":"{tenant}"}}',
                "idempotency_key": None,
                "source": "request",
                "priority": None,
                "queue": "default",
                "retry_of": None,
                "instance_id": "bench-host-1",
                "updated_at": stamp(ended),
            }
            history_rows.append(tuple(row[name] for name in self.history_order))
            tag = {"task_id": task_id, "key": "tenant", "value": tenant, "created_at": created_at}
            tag_rows.append(tuple(tag[name] for name in self.tags_order))
        return history_rows, tag_rows

    async def fill(self, progress: Callable[[int], None]) -> None:
        for first in range(0, self.rows, FILL_CHUNK):
            history_rows, tag_rows = self.chunk(first, min(FILL_CHUNK, self.rows - first))
            async with self.engine.begin() as conn:
                if self.sqlite:  # set-up only: a bigger page cache for the bulk load
                    await conn.exec_driver_sql("PRAGMA cache_size = -262144")
                await conn.exec_driver_sql(self.history_sql, history_rows)
                await conn.exec_driver_sql(self.tags_sql, tag_rows)
            progress(first + len(history_rows))

    async def settle(self, analyze: bool) -> None:
        """After the load: PostgreSQL VACUUM ANALYZE (autovacuum's job), SQLite checkpoint."""
        name = self.engine.dialect.name
        if name == "sqlite":
            async with self.engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        elif name == "postgresql" and analyze:
            async with self.engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.exec_driver_sql("VACUUM ANALYZE taskflow_history")
                await conn.exec_driver_sql("VACUUM ANALYZE taskflow_history_tags")
        elif name == "mysql" and analyze:
            async with self.engine.connect() as conn:
                await conn.exec_driver_sql("ANALYZE TABLE taskflow_history, taskflow_history_tags")


async def fill_redis(store: SnapshotBackend, rows: int, progress: Callable[[int], None]) -> int:
    """Fill Redis through ``save()``; returns how many failed records were written."""
    end = datetime.now(UTC).replace(microsecond=0)
    chunk = 20_000
    failed = 0
    step = timedelta(days=DAYS) / max(rows, 1)
    for first in range(0, rows, chunk):
        count = min(chunk, rows - first)
        records = make_records(
            count,
            seed=first + 1,
            failed_share=FAILED_SHARE,
            end=end - step * (rows - first - count),
            span=step * count,
            start_index=first,
        )
        for record in records:
            record.tags = {"tenant": record.tags["tenant"]}
        failed += sum(r.status is TaskStatus.FAILED for r in records)
        await store.save(records)
        progress(first + count)
    return failed


# =========================================================================== measuring


@dataclass
class Series:
    """Latencies (seconds) of one kind of call."""

    backend: str
    label: str
    samples: list[float] = field(default_factory=list)
    target_ms: float | None = None
    note: str = ""

    def quantile(self, fraction: float) -> float:
        ordered = sorted(self.samples)
        position = fraction * (len(ordered) - 1)
        low, high = math.floor(position), math.ceil(position)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    def summary(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "label": self.label,
            "n": len(self.samples),
            "p50_ms": self.quantile(0.5) * 1000 if self.samples else None,
            "p99_ms": self.quantile(0.99) * 1000 if self.samples else None,
            "max_ms": max(self.samples) * 1000 if self.samples else None,
            "target_ms": self.target_ms,
            "note": self.note,
        }


async def clock(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await call()
    return time.perf_counter() - started, result


def check_page(page: TaskPage, status: TaskStatus, func: str, after: Any = None) -> None:
    keys = [(r.created_at, r.task_id) for r in page.items]
    if keys != sorted(keys, reverse=True):
        raise AssertionError("a page is not newest first")
    if after is not None and keys and keys[0] >= after:
        raise AssertionError("the second page does not continue after the first")
    for record in page.items:
        if record.status is not status or record.func_name != func:
            raise AssertionError(f"{record.task_id} does not match {status}/{func}")


def combos(count: int, seed: int = 3) -> list[tuple[TaskStatus, str]]:
    """``count`` (status, function) pairs: every function, success and failed alternating."""
    rnd = random.Random(seed)
    pairs = [(STATUSES[i % 2], FUNCTIONS[(i // 2) % len(FUNCTIONS)]) for i in range(count)]
    rnd.shuffle(pairs)
    return pairs


QueryFn = Callable[[TaskStatus, str, str | None], Awaitable[TaskPage]]


async def measure_pages(
    backend: str, label: str, query: QueryFn, count: int, warmup: int
) -> list[Series]:
    """First and second page of the status+function query, ``count`` times each."""
    first = Series(backend, f"{label}: page 1", target_ms=QUERY_TARGET_MS)
    second = Series(backend, f"{label}: page 2 (cursor)", target_ms=QUERY_TARGET_MS)
    for number, (status, func) in enumerate(combos(warmup + count)):
        seconds, page = await clock(lambda s=status, f=func: query(s, f, None))
        check_page(page, status, func)
        if len(page.items) != 50 or page.next_cursor is None:
            raise AssertionError(f"{status}/{func}: expected a full first page with a cursor")
        last = (page.items[-1].created_at, page.items[-1].task_id)
        cursor = page.next_cursor
        seconds2, page2 = await clock(lambda s=status, f=func, c=cursor: query(s, f, c))
        check_page(page2, status, func, after=last)
        if number >= warmup:
            first.samples.append(seconds)
            second.samples.append(seconds2)
    return [first, second]


async def measure_shapes(backend: str, store: SnapshotBackend, count: int) -> list[Series]:
    """Other filters, newest 50, for reference."""
    repository = store.history()
    assert repository is not None
    now = datetime.now(UTC)
    shapes: list[tuple[str, Callable[[int], TaskFilter]]] = [
        ("no filter", lambda i: TaskFilter()),
        ("status=failed", lambda i: TaskFilter(statuses=(TaskStatus.FAILED,))),
        ("function only", lambda i: TaskFilter(func_name=FUNCTIONS[i % len(FUNCTIONS)])),
        ("tag tenant", lambda i: TaskFilter(tags={"tenant": f"tenant-{i % TENANTS}"})),
        (
            "failed+cancelled, function",
            lambda i: TaskFilter(
                statuses=(TaskStatus.FAILED, TaskStatus.CANCELLED),
                func_name=FUNCTIONS[i % len(FUNCTIONS)],
            ),
        ),
        (
            "last 24 h, function",
            lambda i: TaskFilter(
                func_name=FUNCTIONS[i % len(FUNCTIONS)], since=now - timedelta(days=1)
            ),
        ),
    ]
    out = []
    for label, make in shapes:
        series = Series(backend, f"repo, {label}")
        for i in range(count + 3):
            filter = make(i)
            seconds, page = await clock(lambda f=filter: repository.query(f, limit=50))
            if not page.items:
                raise AssertionError(f"{label}: no records")
            if i >= 3:
                series.samples.append(seconds)
        out.append(series)
    return out


async def measure_counts(
    backend: str, store: SnapshotBackend, repeat: int, expected_failed: int
) -> list[Series]:
    repository = store.history()
    assert repository is not None
    out = []
    for status in STATUSES:
        series = Series(backend, f"count(status={status.value})")
        for _ in range(repeat):
            seconds, found = await clock(
                lambda s=status: repository.count(TaskFilter(statuses=(s,)))
            )
            series.samples.append(seconds)
        if status is TaskStatus.FAILED and found != expected_failed:
            raise AssertionError(f"count(failed) = {found}, {expected_failed} written")
        series.note = f"= {found:,}"
        out.append(series)
    return out


_STARTUP_PROBE = """
import asyncio, json, sys, time
sys.path.insert(0, {root!r})
from fastapi_taskflow import TaskManager
{backend_import}

async def main():
    tm = TaskManager(snapshot_backend={backend_expr})
    started = time.perf_counter()
    await tm.startup()
    seconds = time.perf_counter() - started
    await tm.shutdown()
    print(json.dumps({{"startup_s": seconds}}))

asyncio.run(main())
"""


def startup_probe(backend: str, url: str, prefix: str) -> float:
    """``startup()`` seconds of a TaskManager in a fresh Python process."""
    if backend == "redis":
        backend_import = "from fastapi_taskflow.backends.redis import RedisBackend"
        backend_expr = f"RedisBackend({url!r}, prefix={prefix!r})"
    else:
        backend_import = "from fastapi_taskflow.backends.sql import SqlBackend"
        backend_expr = f"SqlBackend({url!r})"
    code = _STARTUP_PROBE.format(
        root=str(ROOT), backend_import=backend_import, backend_expr=backend_expr
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"start-up probe failed:\n{done.stderr[-2000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["startup_s"])


@dataclass
class Result:
    backend: str
    rows: int
    fill_s: float = 0.0
    series: list[Series] = field(default_factory=list)
    startup_cold: list[float] = field(default_factory=list)
    startup_warm: float | None = None
    error: str | None = None


async def run_backend(databases: Databases, backend: str, opts: argparse.Namespace) -> Result:
    rows = opts.redis_rows if backend == "redis" else opts.rows
    result = Result(backend, rows)
    url, prefix = await databases.fresh(backend)
    store = make_backend(backend, url, prefix)
    tm: TaskManager | None = None

    tty = sys.stdout.isatty()

    def progress(done: int) -> None:
        if tty or done % (rows // 4 or 1) < FILL_CHUNK or done == rows:
            elapsed = time.perf_counter() - started
            line = f"  {backend}: filled {done:>9,} / {rows:,} rows ({elapsed:5.1f} s)"
            print(f"\r{line}" if tty else line, end="" if tty else "\n", flush=True)

    try:
        await store.open()
        started = time.perf_counter()
        if backend == "redis":
            failed = await fill_redis(store, rows, progress)
        else:
            filler = SqlFiller(store.engine, rows)  # type: ignore[attr-defined]
            await filler.fill(progress)
            await filler.settle(opts.analyze)
            failed = filler.failed
        result.fill_s = time.perf_counter() - started
        if tty:
            print(f"\r  {backend}: filled {rows:,} rows in {result.fill_s:.1f} s{' ' * 20}")
        gc.collect()

        repository = store.history()
        assert repository is not None

        async def via_repository(status: TaskStatus, func: str, cursor: str | None) -> TaskPage:
            filter = TaskFilter(statuses=(status,), func_name=func)
            return await repository.query(filter, limit=50, cursor=cursor)

        result.series += await measure_pages(
            backend, "repo.query", via_repository, opts.queries, opts.warmup
        )
        result.series += await measure_counts(backend, store, opts.count_repeat, failed)
        result.series += await measure_shapes(backend, store, opts.shape_queries)

        # Start-up: fresh processes first (the store stays open: an instance already runs).
        for _ in range(opts.startups):
            result.startup_cold.append(await asyncio.to_thread(startup_probe, backend, url, prefix))
        tm = TaskManager(snapshot_backend=make_backend(backend, url, prefix))
        started_tm = time.perf_counter()
        await tm.startup()
        result.startup_warm = time.perf_counter() - started_tm
        manager = tm

        async def via_manager(status: TaskStatus, func: str, cursor: str | None) -> TaskPage:
            return await manager.history.query(
                status=status, func_name=func, limit=50, cursor=cursor
            )

        result.series += await measure_pages(
            backend, "tm.history.query", via_manager, opts.queries, opts.warmup
        )
    finally:
        if tm is not None:
            with contextlib.suppress(Exception):
                await tm.shutdown()
        await store.close()
        with contextlib.suppress(Exception):
            await databases.release(backend, url, prefix)
    return result


# =========================================================================== report


def print_report(results: list[Result], opts: argparse.Namespace) -> None:
    print(
        f"\nHistory: newest-first pages of 50; p50/p99/max in ms over the queries run; "
        f"{opts.queries} status+function queries per row (functions and success/failed varied)"
    )
    header = f"{'backend':<9} {'what':<40} {'n':>4} {'p50':>8} {'p99':>8} {'max':>8}  note"
    print(header)
    print("-" * len(header))
    for result in results:
        if result.error:
            print(f"{result.backend:<9} {'-':<40} {'':>4} {'':>8} {'':>8} {'':>8}  {result.error}")
            continue
        name = f"{result.backend}"
        print(
            f"{name:<9} {'fill (set-up), ' + format(result.rows, ',') + ' rows':<40} "
            f"{'':>4} {'':>8} {'':>8} {'':>8}  {result.fill_s:.1f} s"
        )
        for series in result.series:
            summary = series.summary()
            note = series.note
            if series.target_ms is not None:
                ok = summary["p99_ms"] < series.target_ms
                note = f"target p99 < {series.target_ms:g} ms: {'ok' if ok else 'MISSED'}"
            print(
                f"{name:<9} {series.label:<40} {summary['n']:>4} {summary['p50_ms']:8.2f} "
                f"{summary['p99_ms']:8.2f} {summary['max_ms']:8.2f}  {note}"
            )
        if result.startup_cold:
            cold = statistics.median(result.startup_cold)
            ok = max(result.startup_cold) < STARTUP_TARGET_S
            print(
                f"{name:<9} {'startup(), fresh process (median)':<40} "
                f"{len(result.startup_cold):>4} {cold * 1000:8.1f} {'':>8} "
                f"{max(result.startup_cold) * 1000:8.1f}  target < {STARTUP_TARGET_S:g} s: "
                f"{'ok' if ok else 'MISSED'}"
            )
        if result.startup_warm is not None:
            print(
                f"{name:<9} {'startup(), in this process':<40} {1:>4} "
                f"{result.startup_warm * 1000:8.1f}"
            )


# =========================================================================== command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="SQL history rows (the issue's figure)"
    )
    parser.add_argument("--redis-rows", type=int, default=100_000, help="Redis history rows")
    parser.add_argument("--queries", type=int, default=500, help="measured queries per row")
    parser.add_argument("--warmup", type=int, default=10, help="queries run first, not counted")
    parser.add_argument("--shape-queries", type=int, default=30, help="per reference shape")
    parser.add_argument("--count-repeat", type=int, default=5, help="count() calls per status")
    parser.add_argument("--startups", type=int, default=3, help="fresh-process start-ups")
    parser.add_argument("--backends", action="append", help="comma-separated (sqlite,postgres)")
    parser.add_argument(
        "--backend", dest="backend_args", action="append", nargs="+", help=argparse.SUPPRESS
    )
    parser.add_argument("--postgres-url", help="a scratch PostgreSQL database (else start one)")
    parser.add_argument("--mysql-url", help="a scratch MySQL/MariaDB database (else start one)")
    parser.add_argument("--redis-url", help="a Redis database (else start one)")
    parser.add_argument(
        "--no-analyze", dest="analyze", action="store_false", help="skip VACUUM ANALYZE"
    )
    parser.add_argument("--quick", action="store_true", help="20,000 rows, 100 queries")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    opts, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"bench_history: ignoring unknown arguments {unknown}", file=sys.stderr)
    names: list[str] = []
    for value in opts.backends or []:
        names += [n.strip() for n in value.split(",") if n.strip()]
    for group in opts.backend_args or []:
        names += group
    names = [n for n in names if n != "memory"]  # run_all's shared list may include it
    if "all" in names:
        names = list(BACKENDS)
    for name in names:
        if name not in BACKENDS:
            parser.error(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    opts.backend_list = list(dict.fromkeys(names)) or list(DEFAULT_BACKENDS)
    if opts.quick:
        opts.rows = min(opts.rows, 20_000)
        opts.redis_rows = min(opts.redis_rows, 20_000)
        opts.queries, opts.shape_queries, opts.startups = 100, 10, 1
    if min(opts.rows, opts.redis_rows) < 1000 or opts.queries < 1:
        parser.error("--rows and --redis-rows must be >= 1000, --queries >= 1")
    return opts


def write_json(path: str, opts: argparse.Namespace, results: list[Result]) -> None:
    figures = [
        {
            "backend": r.backend,
            "rows": r.rows,
            "fill_s": r.fill_s,
            "series": [s.summary() for s in r.series],
            "startup_fresh_process_s": r.startup_cold,
            "startup_in_process_s": r.startup_warm,
            "error": r.error,
        }
        for r in results
    ]
    Path(path).write_text(json.dumps({"queries": opts.queries, "results": figures}, indent=2))


async def amain(opts: argparse.Namespace) -> int:
    databases = Databases(opts)
    results: list[Result] = []
    try:
        for backend in opts.backend_list:
            try:
                if backend != "sqlite" and not databases.given(backend):
                    databases.server(backend)
                results.append(await run_backend(databases, backend, opts))
            except Exception as exc:  # reported; the others still run
                message = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                print(f"\n  {backend}: {message}", flush=True)
                results.append(Result(backend, 0, error=message))
            if backend in databases.servers:  # free the machine for the next backend
                databases.servers.pop(backend).stop()
    finally:
        databases.close()
    print_report(results, opts)
    if opts.json:
        write_json(opts.json, opts, results)
    return 1 if any(r.error for r in results) else 0


def main(argv: list[str]) -> int:
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
