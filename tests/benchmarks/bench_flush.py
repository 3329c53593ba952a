"""Flush throughput benchmark (issue 3, acceptance 4, second bullet).

    python tests/benchmarks/bench_flush.py                          # 100,000 records, all backends
    python tests/benchmarks/bench_flush.py --records 20000 --backends sqlite,postgres
    python tests/benchmarks/bench_flush.py --quick                  # 10,000 records, one run
    python tests/benchmarks/bench_flush.py --postgres-url postgresql://u@host/scratch

Writes N realistic completed :class:`TaskRecord` objects (success and failed, a few tags, a
log line, an attempt, small args and kwargs) to each backend's history, and compares the
library with a raw write of the same rows through the same driver, in the same run:

* ``flusher``: the library's ``Flusher`` (what a ``TaskManager`` runs) writing its whole
  backlog, i.e. ``backend.save()`` called with batches of its default size (10,000 records);
* ``save(all)``: one ``backend.save(records)`` call with every record;
* ``raw core`` (the baseline of the target): SQL, one transaction running a plain SQLAlchemy
  Core ``insert(taskflow_history)`` executemany of row dicts prepared beforehand (JSON
  columns as plain lists/dicts, aware datetimes; SQLAlchemy still applies the column types);
  Redis, one non-transactional pipeline of ``SET key json`` with the JSON prepared beforehand;
* ``raw driver`` (SQL only, for reference): the same INSERT through ``exec_driver_sql`` with
  parameter tuples that are already what the driver takes: the floor of that driver.

The library also maintains what the raw writes leave out: the tag index table (SQL; two
rows per record here) or the index sorted sets (Redis), and upserts instead of inserting.

The ``cpu`` column is this process's CPU time (the driver's thread included, so all of
SQLite's work; not a server's): a check on wall-clock figures when the machine is busy.
Holding N records in memory makes the garbage collector's full passes expensive while a
write allocates, which the library pays and the raw writes (prepared beforehand) mostly do
not: that is part of what is measured.

Every measurement gets a fresh database (a new SQLite file, a new PostgreSQL/MariaDB
database, an emptied Redis database or, with ``--redis-url``, a fresh key prefix); variants
are interleaved and each is run ``--repeat`` times; the median is reported. Servers are
started from ``tests/_servers.py`` unless a URL is given (a given SQL database must be a
scratch one: the library's tables in it are dropped before each measurement). The default
run takes about 4 minutes on a quiet 2-core machine; ``--quick`` about 30 seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
for _path in (str(ROOT), str(ROOT / "tests")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import sqlalchemy as sa  # noqa: E402

from fastapi_taskflow import Attempt, LogEntry, TaskRecord, TaskStatus  # noqa: E402
from fastapi_taskflow._flusher import Flusher  # noqa: E402
from fastapi_taskflow.backends.base import SnapshotBackend  # noqa: E402

BACKENDS = ("sqlite", "postgres", "mysql", "redis")
TARGET = 0.5  # library throughput / raw throughput (issue 3)

FUNCTIONS = tuple(
    f"app.tasks.{name}"
    for name in (
        "send_email",
        "resize_image",
        "sync_crm",
        "charge_card",
        "build_report",
        "notify_slack",
        "index_document",
        "refresh_cache",
        "export_csv",
        "cleanup_uploads",
    )
)
_STACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/tasks.py", line 42, in {func}\n'
    "    response.raise_for_status()\n"
    '  File "/srv/app/http.py", line 118, in raise_for_status\n'
    "    raise UpstreamError(self.status)\n"
    "app.errors.UpstreamError: upstream returned 502"
)


# =========================================================================== records


def make_records(
    count: int,
    *,
    seed: int = 1,
    failed_share: float = 0.1,
    end: datetime | None = None,
    span: timedelta = timedelta(hours=1),
    start_index: int = 0,
) -> list[TaskRecord]:
    """``count`` completed records created over ``span`` before ``end``, oldest first (the
    order a flusher sees them in), ``failed_share`` of them failed, spread over ten functions
    and twenty tenants; task ids are random like ``uuid4().hex``."""
    rnd = random.Random(seed)
    end = end or datetime.now(UTC)
    step = span.total_seconds() / max(count, 1)
    first = end - span
    records = []
    for i in range(start_index, start_index + count):
        created = first + timedelta(seconds=step * (i - start_index + rnd.random()))
        started = created + timedelta(milliseconds=1 + 400 * rnd.random())
        duration = 0.005 + 2 * rnd.random() ** 3
        ended = started + timedelta(seconds=duration)
        failed = rnd.random() < failed_share
        func = FUNCTIONS[int(rnd.random() * len(FUNCTIONS))]
        error = "app.errors.UpstreamError: upstream returned 502" if failed else None
        records.append(
            TaskRecord(
                task_id=f"{rnd.getrandbits(128):032x}",
                func_name=func,
                status=TaskStatus.FAILED if failed else TaskStatus.SUCCESS,
                args=[i, f"user{i % 5000}@example.com"],
                kwargs={"locale": "en", "notify": True},
                created_at=created,
                start_time=started,
                end_time=ended,
                duration=duration,
                error=error,
                stacktrace=_STACK.format(func=func.rsplit(".", 1)[1]) if failed else None,
                logs=[LogEntry(timestamp=started, message=f"processing item {i}")],
                attempts=[Attempt(number=1, start_time=started, end_time=ended, error=error)],
                tags={"tenant": f"tenant-{int(rnd.random() * 20)}", "env": "prod"},
                source="request",
                queue="default",
                instance_id="bench-host-1",
                updated_at=ended,
            )
        )
    return records


# =========================================================================== databases


def _sql_url(backend: str) -> str:
    return {"postgres": "postgresql", "mysql": "mysql"}.get(backend, backend)


class Databases:
    """Fresh databases on demand: SQLite files, servers from ``tests/_servers.py`` (started
    on first use, stopped by :meth:`close`) or the URLs given on the command line."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.tmp = Path(tempfile.mkdtemp(prefix="taskflow-bench-"))
        self.servers: dict[str, Any] = {}

    def server(self, backend: str) -> Any:
        if backend not in self.servers:
            import _servers

            cls = {
                "postgres": _servers.PostgresServer,
                "mysql": _servers.MariaDBServer,
                "redis": _servers.RedisServer,
            }[backend]
            server = cls()
            server.start()
            self.servers[backend] = server
        return self.servers[backend]

    def given(self, backend: str) -> str | None:
        return getattr(self.opts, f"{backend}_url", None)

    async def fresh(self, backend: str) -> tuple[str, str]:
        """``(url, redis key prefix)`` of an empty database for ``backend``."""
        name = f"bench_{uuid.uuid4().hex[:12]}"
        if backend == "sqlite":
            return f"sqlite:///{self.tmp / (name + '.db')}", ""
        given = self.given(backend)
        if backend == "redis":
            if given:
                return given, name
            self.server("redis").flushall()
            return self.server("redis").url(), "taskflow"
        if given:
            await drop_library_tables(given)
            return given, ""
        self.server(backend).create_database(name)
        return self.server(backend).url(name), ""

    async def release(self, backend: str, url: str, prefix: str) -> None:
        """Free the space a measurement used."""
        if backend == "sqlite":
            remove_sqlite(url)
        elif backend == "redis":
            if self.given("redis"):
                await delete_redis_prefix(url, prefix)
            else:
                self.server("redis").flushall()
        elif not self.given(backend):
            database = sa.engine.make_url(url).database
            assert database is not None
            self.server(backend).drop_database(database)

    def close(self) -> None:
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                server.stop()
        self.servers.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def remove_sqlite(url: str) -> None:
    path = sa.engine.make_url(url).database or ""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def drop_library_tables(url: str) -> None:
    """Drop the library's tables (and its version table) from a given scratch database."""
    from fastapi_taskflow.backends.sql.dialect import create_engine
    from fastapi_taskflow.backends.sql.tables import VERSION_TABLE, metadata
    from fastapi_taskflow.backends.sql.urls import make_async_url

    engine = create_engine(make_async_url(url))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
            await conn.execute(sa.text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
    finally:
        await engine.dispose()


async def delete_redis_prefix(url: str, prefix: str) -> None:
    from redis import asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}:*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()


def make_backend(backend: str, url: str, prefix: str) -> SnapshotBackend:
    if backend == "redis":
        from fastapi_taskflow.backends.redis import RedisBackend

        return RedisBackend(url, prefix=prefix)
    from fastapi_taskflow.backends.sql import SqlBackend

    return SqlBackend(url)


async def stored_count(backend: str, store: SnapshotBackend) -> int:
    """How many history records ``store`` holds (through its repository)."""
    from fastapi_taskflow import TaskFilter

    repository = store.history()
    assert repository is not None
    return await repository.count(TaskFilter())


# =========================================================================== raw writes


def core_rows(records: list[TaskRecord]) -> list[dict[str, Any]]:
    """Row dicts for ``insert(taskflow_history)``: what a hand-written insert would pass."""
    rows = []
    for record in records:
        row = record.model_dump(mode="json")
        for name in ("created_at", "start_time", "end_time", "updated_at"):
            row[name] = getattr(record, name)
        rows.append(row)
    return rows


async def raw_core(engine: Any, rows: list[dict[str, Any]]) -> None:
    from fastapi_taskflow.backends.sql.tables import history

    async with engine.begin() as conn:
        await conn.execute(sa.insert(history), rows)


def driver_rows(engine: Any, records: list[TaskRecord]) -> tuple[str, list[tuple[Any, ...]]]:
    """The INSERT's SQL for the engine's dialect and driver-ready parameter tuples."""
    from fastapi_taskflow.backends.sql.tables import history

    compiled = sa.insert(history).compile(dialect=engine.dialect)
    order = list(compiled.positiontup or ())
    processors = {
        column.name: column.type.bind_processor(engine.dialect) for column in history.columns
    }
    rows = []
    for row in core_rows(records):
        values = []
        for name in order:
            value = row[name]
            if isinstance(value, list | dict):
                value = json.dumps(value, separators=(",", ":"))
            elif isinstance(value, datetime) or value is None:
                process = processors[name]
                value = process(value) if process is not None and value is not None else value
            values.append(value)
        rows.append(tuple(values))
    return compiled.string, rows


async def raw_driver(engine: Any, prepared: tuple[str, list[tuple[Any, ...]]]) -> None:
    sql, rows = prepared
    async with engine.begin() as conn:
        await conn.exec_driver_sql(sql, rows)


def redis_payloads(records: list[TaskRecord], prefix: str) -> list[tuple[str, str]]:
    return [(f"{prefix}:h:rec:{r.task_id}", r.model_dump_json()) for r in records]


async def raw_redis(url: str, payloads: list[tuple[str, str]]) -> None:
    from redis import asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for key, payload in payloads:
                pipe.set(key, payload)
            replies = await pipe.execute()
        assert all(replies), "a SET failed"
    finally:
        await client.aclose()


# =========================================================================== measuring


@dataclass
class Row:
    backend: str
    variant: str
    runs: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # this process's CPU seconds per run
    error: str | None = None

    def median(self) -> float | None:
        return statistics.median(self.runs) if self.runs else None


LIBRARY_VARIANTS = ("flusher", "save(all)")
RAW_VARIANTS = {"sql": ("raw core", "raw driver"), "redis": ("raw pipeline",)}
BASELINE = {"sql": "raw core", "redis": "raw pipeline"}


async def timed(action: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process, driver threads included) of ``action``."""
    gc.collect()
    cpu = time.process_time()
    started = time.perf_counter()
    await action()
    return time.perf_counter() - started, time.process_time() - cpu


async def measure_once(
    databases: Databases, backend: str, variant: str, records: list[TaskRecord]
) -> tuple[float, float]:
    """Wall and CPU seconds of one variant on a fresh database (set-up, checks not timed)."""
    url, prefix = await databases.fresh(backend)
    store = make_backend(backend, url, prefix)
    try:
        await store.open()
        expected = len(records)
        if variant == "flusher":
            flusher = Flusher(store, interval=3600.0)  # the default batch size (10,000)
            for record in records:
                flusher.add(record)
            spent = await timed(flusher.flush)
        elif variant == "save(all)":
            spent = await timed(lambda: store.save(records))
        elif variant == "raw core":
            engine = store.engine  # type: ignore[attr-defined]
            rows = core_rows(records)
            spent = await timed(lambda: raw_core(engine, rows))
        elif variant == "raw driver":
            engine = store.engine  # type: ignore[attr-defined]
            prepared = driver_rows(engine, records)
            spent = await timed(lambda: raw_driver(engine, prepared))
        elif variant == "raw pipeline":
            payloads = redis_payloads(records, store.prefix)  # type: ignore[attr-defined]
            spent = await timed(lambda: raw_redis(url, payloads))
            expected = 0  # plain keys, no index: the repository does not see them
        else:  # pragma: no cover
            raise ValueError(variant)
        found = await stored_count(backend, store)
        if found != expected:
            raise RuntimeError(f"{variant} on {backend}: {found} records stored, {expected} meant")
        return spent
    finally:
        await store.close()
        await databases.release(backend, url, prefix)


async def run_backend(
    databases: Databases, backend: str, records: list[TaskRecord], repeat: int
) -> list[Row]:
    kind = "redis" if backend == "redis" else "sql"
    variants = [*LIBRARY_VARIANTS, *RAW_VARIANTS[kind]]
    rows = {variant: Row(backend, variant) for variant in variants}
    for attempt in range(repeat):
        # Rotate the order so no variant always runs first (cold caches) or last.
        shift = attempt % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            row = rows[variant]
            if row.error:
                continue
            try:
                seconds, cpu = await measure_once(databases, backend, variant, records)
            except Exception as exc:  # reported in the table
                row.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
                continue
            row.runs.append(seconds)
            row.cpu.append(cpu)
            print(
                f"  {backend:<8} {variant:<12} run {attempt + 1}: {seconds:7.3f} s "
                f"({len(records) / seconds:9,.0f} records/s, {cpu:6.2f} s CPU here)",
                flush=True,
            )
    return list(rows.values())


def print_table(rows: list[Row], count: int) -> None:
    print(
        f"\nFlush: {count:,} completed records per write; median of runs, a fresh database "
        "each.\n'lib/raw' is the library's records/s over the baseline's (target >= "
        f"{TARGET}); 'cpu' is this process's CPU time (SQLite's work included, a server's not)."
    )
    header = (
        f"{'backend':<9} {'variant':<13} {'seconds':>8} {'records/s':>10} {'cpu s':>6} "
        f"{'lib/raw':>7}  note"
    )
    print(header)
    print("-" * len(header))
    for backend in dict.fromkeys(r.backend for r in rows):
        group = [r for r in rows if r.backend == backend]
        kind = "redis" if backend == "redis" else "sql"
        baseline = next(r for r in group if r.variant == BASELINE[kind]).median()
        for row in group:
            seconds = row.median()
            if seconds is None:
                print(
                    f"{backend:<9} {row.variant:<13} {'-':>8} {'-':>10} {'-':>6} {'-':>7}  {row.error}"
                )
                continue
            note, ratio = "", "-"
            if row.variant in LIBRARY_VARIANTS and baseline:
                value = baseline / seconds
                ratio = f"{value:.3f}"
                note = "ok" if value >= TARGET else "MISSED"
            elif row.variant == BASELINE[kind]:
                note = "baseline"
            if len(row.runs) > 1:
                note += f"  (runs {', '.join(f'{s:.2f}' for s in row.runs)})"
            print(
                f"{backend:<9} {row.variant:<13} {seconds:8.3f} {count / seconds:10,.0f} "
                f"{statistics.median(row.cpu):6.2f} {ratio:>7}  {note.strip()}"
            )


# =========================================================================== command line


def parse_backends(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> list[str]:
    names: list[str] = []
    for value in opts.backends or []:
        names += [n.strip() for n in value.split(",") if n.strip()]
    for group in opts.backend_args or []:
        names += group
    names = [n for n in names if n != "memory"]  # run_all's shared list may include it
    if not names or "all" in names:
        return list(BACKENDS)
    for name in names:
        if name not in BACKENDS:
            parser.error(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return list(dict.fromkeys(names))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--records", type=int, default=100_000, help="records per write")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (median)")
    parser.add_argument("--backends", action="append", help="comma-separated, default all")
    parser.add_argument(
        "--backend", dest="backend_args", action="append", nargs="+", help=argparse.SUPPRESS
    )
    parser.add_argument("--postgres-url", help="a scratch PostgreSQL database (else start one)")
    parser.add_argument("--mysql-url", help="a scratch MySQL/MariaDB database (else start one)")
    parser.add_argument("--redis-url", help="a Redis database (else start one)")
    parser.add_argument("--quick", action="store_true", help="10,000 records, one run")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    opts, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"bench_flush: ignoring unknown arguments {unknown}", file=sys.stderr)
    opts.backend_list = parse_backends(parser, opts)
    if opts.quick:
        opts.records, opts.repeat = min(opts.records, 10_000), 1
    if opts.records < 1 or opts.repeat < 1:
        parser.error("--records and --repeat must be >= 1")
    return opts


def write_json(path: str, opts: argparse.Namespace, rows: list[Row]) -> None:
    figures = {
        "records": opts.records,
        "repeat": opts.repeat,
        "rows": [
            {
                "backend": r.backend,
                "variant": r.variant,
                "median_s": r.median(),
                "runs": r.runs,
                "cpu": r.cpu,
                "error": r.error,
            }
            for r in rows
        ],
    }
    Path(path).write_text(json.dumps(figures, indent=2))


async def amain(opts: argparse.Namespace) -> int:
    print(f"bench_flush: generating {opts.records:,} records", flush=True)
    records = make_records(opts.records)
    databases = Databases(opts)
    rows: list[Row] = []
    try:
        for backend in opts.backend_list:
            try:
                if backend != "sqlite" and not databases.given(backend):
                    databases.server(backend)
            except Exception as exc:  # reported; the others still run
                message = f"cannot start a {backend} server: {exc}".splitlines()[0]
                print(f"  {message}", flush=True)
                rows.append(Row(backend, "-", error=message))
                continue
            rows += await run_backend(databases, backend, records, opts.repeat)
            if backend in databases.servers:  # free the machine for the next backend
                databases.servers.pop(backend).stop()
    finally:
        databases.close()
    print_table([r for r in rows if r.variant != "-"], opts.records)
    for row in rows:
        if row.variant == "-":
            print(f"{row.backend:<9} skipped: {row.error}")
    if opts.json:
        write_json(opts.json, opts, rows)
    return 1 if any(r.error and r.variant != "-" for r in rows) else 0


def main(argv: list[str]) -> int:
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
