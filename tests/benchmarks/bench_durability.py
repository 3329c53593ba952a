"""Cost of write-ahead persistence (issue 4, acceptance 3).

    python tests/benchmarks/bench_durability.py                      # SQLite and PostgreSQL
    python tests/benchmarks/bench_durability.py --tasks 5000 --backends sqlite,postgres
    python tests/benchmarks/bench_durability.py --backends all       # + memory, MariaDB, Redis
    python tests/benchmarks/bench_durability.py --quick              # a smoke run
    python tests/benchmarks/bench_durability.py --profile /tmp/prof  # cProfile of run 1

For each backend, in the same run, a no-op async task registered ``persist=False`` and
``persist=True`` (write-ahead: the task is inserted into the shared pending store before
``enqueue`` returns, as running when a slot is free for it then, else as pending and marked
running before it starts, and removed from it when its history record is saved) is
compared:

* ``enqueue``: a fresh process with ``TaskManager(database_url=...)`` on a fresh database
  (a new SQLite file, a new PostgreSQL database, ...) runs N tasks added by P concurrent
  producer coroutines, each looping ``await task_manager.enqueue(noop)`` (and yielding once
  to the loop between two calls). Reported: the latency of each ``await enqueue(...)`` (p50,
  p99), the throughput from the first enqueue until the N-th task has finished (the no-op
  counts completions and stamps the moment the last one ends), the throughput until
  ``task_manager.flush()`` has also written every history record ("durable/s"), and the app
  process's CPU time per task. Each process is warmed up first (open connections, compiled
  statements) and checks afterwards that history holds every task as a success and, with
  write-ahead, that the pending store is empty again.
* ``http`` (unless ``--no-http``): the same comparison through HTTP with bench_core's server
  and raw client: ``background_tasks.add_task(noop, item=i)``, 20 per request, 16 concurrent
  keep-alive connections, throughput from the first request until the last task finished,
  and until every history record was saved. A request's tasks are written ahead once its
  response is sent, so this row measures throughput only.

``--backends memory`` adds ``TaskManager(snapshot_backend=MemoryBackend())`` (enqueue path
only): write-ahead through the reference in-memory coordinator, without a database. It is no
floor of the library's own cost: MemoryBackend deep-copies every record it is given.

Each producer's ``await enqueue`` waits for one write-ahead cycle (on the SQL backends one
transaction carrying every task accepted meanwhile, the running marks of queued tasks about
to start and, on SQLite at most every 50 ms, the finished records; PostgreSQL, MySQL/MariaDB
and Redis write history beside the cycles), so P bounds the batch size.
``--producers 200`` gives larger batches; the "write-ahead txns" column shows them.

Variants run interleaved, ``--repeat`` times each (3), every run in a fresh process on a
fresh database; the table shows medians. Target: throughput with write-ahead at least
0.5 of without, per backend, on "durable/s": the throughput with every task's history
record saved, which is what a sustained load can keep up. The burst figure ("tasks/s",
until the last task finished) is shown beside it, but without write-ahead it leaves the
history of the whole burst in memory, still to be written, so it is no sustained rate:
under a longer load the write buffer grows until ``max_buffer`` drops records.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
for _path in (str(ROOT), str(ROOT / "tests"), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

BACKENDS = ("memory", "sqlite", "postgres", "mysql", "redis")
DEFAULT_BACKENDS = ("sqlite", "postgres")
TARGET = 0.5  # throughput with write-ahead / without (issue 4)
MEMORY_URL = "memory:"  # the probe's stand-in for TaskManager(snapshot_backend=MemoryBackend())


# =========================================================================== probe process


class _Meter:
    """Counts calls, rows and wall time of one async backend method (wrapped in place)."""

    def __init__(self, owner: Any, name: str) -> None:
        self.calls = 0
        self.rows = 0
        self.seconds = 0.0
        inner: Callable[..., Awaitable[Any]] = getattr(owner, name)

        async def metered(records: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await inner(records, *args, **kwargs)
            finally:
                self.calls += 1
                self.rows += len(records)
                self.seconds += time.perf_counter() - t0

        setattr(owner, name, metered)

    def reset(self) -> None:
        self.calls, self.rows, self.seconds = 0, 0, 0.0

    def summary(self) -> dict[str, float]:
        return {"calls": self.calls, "rows": self.rows, "seconds": self.seconds}


class _GcTimer:
    """Adds up the time the garbage collector runs (between :meth:`reset` and now)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start


class _Warnings(logging.Handler):
    """Counts the library's warnings (e.g. a task starting before its record is durable)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if self.first is None:
            self.first = record.getMessage()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def probe(opts: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this (fresh) process: warm up, then N tasks from P producers."""
    from fastapi_taskflow import TaskFilter, TaskManager

    warnings = _Warnings()
    logging.getLogger("fastapi_taskflow").addHandler(warnings)
    if opts.database_url == MEMORY_URL:
        from fastapi_taskflow.backends.memory import MemoryBackend

        manager = TaskManager(snapshot_backend=MemoryBackend())
    else:
        manager = TaskManager(database_url=opts.database_url)
    finished = 0
    target = -1
    done_at = 0.0
    all_done = asyncio.Event()

    async def noop() -> None:
        nonlocal finished, done_at
        finished += 1
        if finished == target:
            done_at = time.perf_counter()
            all_done.set()

    manager.task(persist=opts.persist)(noop)

    async def phase(total: int, latencies: list[float]) -> tuple[float, float]:
        """Enqueue ``total`` tasks from the producers; (seconds until all done, t0)."""
        nonlocal finished, target
        finished, target = 0, total
        all_done.clear()
        issued = 0

        async def producer() -> None:
            nonlocal issued
            while issued < total:
                issued += 1
                t = time.perf_counter()
                await manager.enqueue(noop)
                latencies.append(time.perf_counter() - t)
                await asyncio.sleep(0)

        t0 = time.perf_counter()
        await asyncio.gather(*(producer() for _ in range(opts.producers)))
        async with asyncio.timeout(opts.timeout):
            await all_done.wait()
        return done_at - t0, t0

    await manager.startup()
    try:
        coordinator = manager._coordinator
        # (backend.save is not wrapped: a wrapped save() counts as overridden, and the SQL
        # backend then writes finished records in a transaction of their own, not the cycle's)
        meters: dict[str, _Meter] = {}
        if coordinator is not None:
            meters["accept"] = _Meter(coordinator, "accept")  # separate steps (Redis, memory)
            meters["update"] = _Meter(coordinator, "update")
            if hasattr(coordinator, "write_cycle"):  # accept, update and save in one
                meters["cycle"] = _Meter(coordinator, "write_cycle")
        if opts.warmup:
            await phase(opts.warmup, [])
            await manager.flush()
        gc.collect()
        gc_timer = _GcTimer()
        for meter in meters.values():
            meter.reset()
        warnings.count, warnings.first = 0, None
        profiler: Any = None
        if opts.profile_to:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        cpu0, loop_cpu0 = time.process_time(), time.thread_time()
        latencies: list[float] = []
        seconds, t0 = await phase(opts.tasks, latencies)
        cpu, loop_cpu = time.process_time() - cpu0, time.thread_time() - loop_cpu0
        gc_seconds = gc_timer.seconds
        await manager.flush()
        durable_seconds = time.perf_counter() - t0
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(opts.profile_to)
        succeeded = await manager.history.count(status="success")
        others = await manager.history.count(
            status=["failed", "cancelled", "interrupted", "rejected"]
        )
        left = None
        if coordinator is not None:
            left = len((await coordinator.live(TaskFilter(), limit=10_000)).items)
    finally:
        await manager.shutdown()
    expected = opts.warmup + opts.tasks
    problems = []
    if succeeded != expected or others:
        problems.append(f"history holds {succeeded} successes ({others} others), want {expected}")
    if left:
        problems.append(f"{left} tasks left in the pending store")
    return {
        "tasks_per_s": opts.tasks / seconds,
        "durable_per_s": opts.tasks / durable_seconds,
        "seconds": seconds,
        "cpu_us_per_task": cpu / opts.tasks * 1e6,
        "loop_cpu_us_per_task": loop_cpu / opts.tasks * 1e6,
        "gc_share": gc_seconds / seconds,
        "p50_ms": _percentile(latencies, 0.50) * 1e3,
        "p99_ms": _percentile(latencies, 0.99) * 1e3,
        "max_ms": max(latencies) * 1e3,
        "meters": {name: meter.summary() for name, meter in meters.items()},
        "warnings": warnings.count,
        "first_warning": warnings.first,
        "problems": problems,
        "coordinated": coordinator is not None,
    }


# =========================================================================== parent process


class BenchError(RuntimeError):
    pass


@dataclass
class Row:
    backend: str
    mode: str  # "enqueue" | "http"
    persist: bool
    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.backend} {self.mode} persist={self.persist}"

    def median(self, key: str) -> float | None:
        values = [run[key] for run in self.runs if run.get(key) is not None]
        return statistics.median(values) if values else None


async def run_probe(
    backend: str, persist: bool, url: str, opts: argparse.Namespace, profile_to: str
) -> dict[str, Any]:
    argv = [
        sys.executable, __file__, "--probe", "--database-url", url,
        "--tasks", str(opts.tasks), "--warmup", str(opts.warmup),
        "--producers", str(opts.producers), "--timeout", str(opts.timeout),
    ]  # fmt: skip
    if persist:
        argv.append("--persist")
    if profile_to:
        argv += ["--profile-to", profile_to]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(opts.timeout + 120):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchError(f"{backend} persist={persist}: the probe timed out") from None
    if proc.returncode != 0:
        raise BenchError(f"{backend} persist={persist}: the probe failed:\n{err.decode()[-3000:]}")
    found: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    if found["problems"]:
        raise BenchError(f"{backend} persist={persist}: {'; '.join(found['problems'])}")
    if persist and not found["coordinated"]:
        raise BenchError(f"{backend}: no coordinator, so no write-ahead to measure")
    return found


async def run_http(
    backend: str, persist: bool, opts: argparse.Namespace, databases: Any
) -> dict[str, Any]:
    import bench_core

    variant = bench_core.Variant(
        "taskflow", backend=backend, persist=persist, registered=True, client="raw"
    )
    run = await bench_core.run_once(variant, opts.http_opts, databases)
    return {
        "tasks_per_s": run.tasks_per_s,
        "durable_per_s": run.durable_tasks_per_s,
        "seconds": run.seconds,
        "cpu_us_per_task": run.server_cpu_us_per_task,
    }


def _profile_path(folder: str, backend: str, persist: bool) -> str:
    Path(folder).mkdir(parents=True, exist_ok=True)
    return str(Path(folder).resolve() / f"enqueue-{backend}-persist-{persist}.prof")


def _print_profile(path: str, limit: int = 25) -> None:
    import pstats

    for order in ("tottime", "cumulative"):
        print(f"\nProfile {path}, top {limit} by {order}:")
        stats = pstats.Stats(path, stream=sys.stdout)
        stats.strip_dirs().sort_stats(order).print_stats(limit)


async def measure(opts: argparse.Namespace) -> list[Row]:
    import bench_core

    databases = bench_core._Databases(opts.http_opts)
    rows: list[Row] = []
    try:
        for backend in opts.backend_list:
            modes = ("enqueue", "http") if opts.http and backend != "memory" else ("enqueue",)
            backend_rows = [
                Row(backend, mode, persist) for mode in modes for persist in (False, True)
            ]
            rows += backend_rows
            try:
                databases.check(backend)
            except bench_core.BenchError as exc:
                for row in backend_rows:
                    row.error = str(exc).splitlines()[0]
                print(f"  {backend}: skipped ({backend_rows[0].error})", flush=True)
                continue
            for round_ in range(opts.repeat):
                for row in backend_rows:
                    if row.error:
                        continue
                    try:
                        if row.mode == "enqueue":
                            profile = ""
                            if opts.profile and round_ == 0:
                                profile = _profile_path(opts.profile, backend, row.persist)
                            url = databases.url(backend) or MEMORY_URL
                            run = await run_probe(backend, row.persist, url, opts, profile)
                            if profile:
                                _print_profile(profile)
                        else:
                            run = await run_http(backend, row.persist, opts, databases)
                    except (BenchError, bench_core.BenchError) as exc:
                        row.error = str(exc)
                        print(f"  {row.label}: FAILED\n{exc}", flush=True)
                        continue
                    row.runs.append(run)
                    latency = (
                        f", enqueue p50 {run['p50_ms']:.2f} ms p99 {run['p99_ms']:.2f} ms"
                        if "p50_ms" in run
                        else ""
                    )
                    print(
                        f"  run {round_ + 1}/{opts.repeat} {row.label:<34} "
                        f"{run['tasks_per_s']:>8,.0f} tasks/s{latency}",
                        flush=True,
                    )
            if backend in databases.servers:  # free the machine for the next backend
                with contextlib.suppress(Exception):
                    databases.servers.pop(backend).stop()
    finally:
        databases.close()
    return rows


def _percent(share: float | None) -> float | None:
    return None if share is None else share * 100


def _fmt(value: float | None, spec: str) -> str:
    if value is None:
        width = spec.split(".")[0].strip(",")
        return "-".rjust(int(width) if width.isdigit() else 1)
    return format(value, spec)


def _base(rows: list[Row], row: Row) -> Row | None:
    """The persist=False row a persist=True row is compared with (same backend and path)."""
    if not row.persist or row.error:
        return None
    base = next(
        (r for r in rows if r.backend == row.backend and r.mode == row.mode and not r.persist),
        None,
    )
    return None if base is None or base.error else base


def _ratio(rows: list[Row], row: Row, key: str = "tasks_per_s") -> float | None:
    """Throughput with write-ahead over throughput without (``key``: which throughput)."""
    base = _base(rows, row)
    mine, theirs = row.median(key), base.median(key) if base else None
    return mine / theirs if mine and theirs else None


def _cpu_ratio(rows: list[Row], row: Row) -> float | None:
    """CPU per task without write-ahead over with it (throughput on one dedicated core)."""
    base = _base(rows, row)
    mine, theirs = row.median("cpu_us_per_task"), base.median("cpu_us_per_task") if base else None
    return theirs / mine if mine and theirs else None


def _wal(row: Row) -> str:
    """Write-ahead transactions per run and rows per transaction (medians), enqueue only."""
    if row.mode != "enqueue" or not row.persist or not row.runs:
        return ""
    meters = [run["meters"] for run in row.runs]
    # SQL backends write a whole cycle (accepted, started, finished) in one transaction.
    name = "cycle" if all(m.get("cycle", {}).get("calls") for m in meters) else "accept"
    if not all(m.get(name, {}).get("calls") for m in meters):
        return "-"
    calls = statistics.median(m[name]["calls"] for m in meters)
    rows = statistics.median(m[name]["rows"] / max(m[name]["calls"], 1) for m in meters)
    ms = statistics.median(m[name]["seconds"] / max(m[name]["calls"], 1) * 1e3 for m in meters)
    return f"{calls:.0f} x {rows:.0f} rows, {ms:.1f} ms"


def print_table(rows: list[Row], opts: argparse.Namespace) -> None:
    from fastapi_taskflow._flusher import HISTORY_DELAY_S

    print(
        f"\nWrite-ahead cost: {opts.tasks:,} no-op async tasks per run, median of {opts.repeat} "
        f"runs, fresh process and database per run; enqueue: {opts.producers} concurrent "
        f"producers awaiting task_manager.enqueue(noop) (warm-up {opts.warmup:,}); http: "
        f"bench_core's raw client, {opts.http_opts.per_request} tasks per request, "
        f"{opts.http_opts.concurrency} connections. {os.cpu_count()} CPUs, load average "
        f"{opts.load_before:.2f} before, {os.getloadavg()[0]:.2f} after."
    )
    header = (
        f"{'backend':<9} {'path':<8} {'persist':<7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'tasks/s':>8} {'min':>7} {'max':>7} {'burst':>6} {'durable/s':>9} {'ratio':>6} "
        f"{'µs/task':>8} "
        f"{'cpu ratio':>9} {'GC':>4}  write-ahead txns"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        head = f"{row.backend:<9} {row.mode:<8} {row.persist!s:<7}"
        if row.error:
            print(f"{head} error: {row.error.splitlines()[0]}")
            continue
        if not row.runs:
            continue
        rates = [run["tasks_per_s"] for run in row.runs]
        ratio = _ratio(rows, row, "durable_per_s")
        mark = "" if ratio is None else (" ok" if ratio >= TARGET else " !!")
        print(
            f"{head} {_fmt(row.median('p50_ms'), '7.3f')} {_fmt(row.median('p99_ms'), '7.2f')} "
            f"{row.median('tasks_per_s'):>8,.0f} {min(rates):>7,.0f} {max(rates):>7,.0f} "
            f"{_fmt(_ratio(rows, row), '6.2f')} {_fmt(row.median('durable_per_s'), '9,.0f')} "
            f"{_fmt(ratio, '6.2f')} "
            f"{_fmt(row.median('cpu_us_per_task'), '8.0f')} {_fmt(_cpu_ratio(rows, row), '9.2f')} "
            f"{_fmt(_percent(row.median('gc_share')), '4.0f')}  {_wal(row)}{mark}"
        )
    print(
        f"p50/p99: latency of one `await task_manager.enqueue(noop)` (enqueue path only); "
        f"tasks/s: from the first enqueue (request) until the last task finished, and "
        f"burst: its ratio, persist=True over persist=False on the same backend and path "
        f"(persist=False runs ahead of its history writes in a burst, buffering records in "
        f"memory); durable/s: until task_manager.flush() also wrote every history record, "
        f"the throughput a sustained load can keep, and ratio: its ratio, the target "
        f"(>= {TARGET}; ok/!! mark it); µs/task: CPU time of the app process per task (SQLite's driver "
        f"thread included, a database server not); cpu ratio: persist=False's µs/task over "
        f"persist=True's, what one dedicated core would give, steadier than wall-clock "
        f"figures on a loaded machine; GC: % of the run spent in the garbage collector "
        f"(enqueue path); write-ahead txns: write-ahead transactions per run x tasks added "
        f"by each, mean wall time per transaction (on SQL backends one transaction per "
        f"flush cycle also carries the running marks and, at most every "
        f"{HISTORY_DELAY_S * 1e3:.0f} ms, the finished records)."
    )
    warned = [r for r in rows if any(run.get("warnings") for run in r.runs)]
    for row in warned:
        first = next(run["first_warning"] for run in row.runs if run.get("warnings"))
        counts = [run.get("warnings", 0) for run in row.runs]
        print(f"warning: {row.label} logged {counts} library warnings, e.g. {first!r}")


def write_json(path: str, opts: argparse.Namespace, rows: list[Row]) -> None:
    report = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {
            k: getattr(opts, k) for k in ("tasks", "repeat", "producers", "warmup", "http")
        },
        "rows": [
            {
                **{k: v for k, v in asdict(row).items() if k != "runs"},
                "median_tasks_per_s": row.median("tasks_per_s"),
                "median_p50_ms": row.median("p50_ms"),
                "median_p99_ms": row.median("p99_ms"),
                "ratio": _ratio(rows, row),
                "durable_ratio": _ratio(rows, row, "durable_per_s"),
                "runs": row.runs,
            }
            for row in rows
        ],
    }
    Path(path).write_text(json.dumps(report, indent=2, default=str))


def parse_backends(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> list[str]:
    names: list[str] = []
    for value in opts.backends or []:
        names += [n.strip() for n in value.split(",") if n.strip()]
    for group in opts.backend_args or []:
        names += group
    if "all" in names:
        return list(BACKENDS)
    if not names:
        return list(DEFAULT_BACKENDS)
    for name in names:
        if name not in BACKENDS:
            parser.error(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return list(dict.fromkeys(names))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--tasks", type=int, default=5_000, help="tasks per measured run")
    parser.add_argument("--producers", type=int, default=50, help="concurrent enqueue loops")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (median)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up tasks per run (default tasks/10)"
    )
    parser.add_argument(
        "--backends",
        action="append",
        help=f"comma-separated, any of {', '.join(BACKENDS)} or all "
        f"(default {','.join(DEFAULT_BACKENDS)})",
    )
    parser.add_argument(
        "--backend", dest="backend_args", action="append", nargs="+", help=argparse.SUPPRESS
    )
    parser.add_argument("--no-http", dest="http", action="store_false", help="skip the HTTP rows")
    parser.add_argument("--postgres-url", help="use this PostgreSQL server (else start one)")
    parser.add_argument("--mysql-url", help="use this MySQL/MariaDB database (else start one)")
    parser.add_argument("--redis-url", help="use this Redis database (else start one)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait per run")
    parser.add_argument("--quick", action="store_true", help="1,000 tasks, one run")
    parser.add_argument("--profile", metavar="DIR", help="cProfile the first enqueue runs")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    # internal: the probe subprocess
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--persist", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", default="", help=argparse.SUPPRESS)
    opts, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"bench_durability: ignoring unknown arguments {unknown}", file=sys.stderr)
    if opts.quick:
        opts.tasks, opts.repeat = min(opts.tasks, 1_000), 1
    if opts.warmup is None:
        opts.warmup = max(opts.tasks // 10, 100)
    if opts.tasks < 1 or opts.repeat < 1 or opts.producers < 1 or opts.warmup < 0:
        parser.error("--tasks, --repeat and --producers must be >= 1, --warmup >= 0")
    opts.backend_list = parse_backends(parser, opts)
    # bench_core's HTTP runner and database helper take their own settings.
    opts.http_opts = argparse.Namespace(
        tasks=opts.tasks,
        per_request=20,
        concurrency=16,
        warmup=min(opts.tasks, 1_000),
        max_records=10_000,
        timeout=opts.timeout,
        postgres_url=opts.postgres_url,
        mysql_url=opts.mysql_url,
        redis_url=opts.redis_url,
    )
    return opts


async def amain(opts: argparse.Namespace) -> int:
    opts.load_before = os.getloadavg()[0]
    started = time.monotonic()
    print(
        f"bench_durability: {', '.join(opts.backend_list)}; {opts.tasks:,} tasks x "
        f"{opts.repeat} runs per variant",
        flush=True,
    )
    rows = await measure(opts)
    print_table(rows, opts)
    print(f"({time.monotonic() - started:.0f}s)")
    if opts.json:
        write_json(opts.json, opts, rows)
    return 1 if any(row.error for row in rows) else 0


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    if opts.probe:
        print(json.dumps(asyncio.run(probe(opts))))
        return 0
    try:
        return asyncio.run(amain(opts))
    except BenchError as exc:
        print(f"bench_durability: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
