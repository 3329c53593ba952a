"""Core throughput and memory benchmark.

    python tests/benchmarks/bench_core.py                      # memory + every usable backend
    python tests/benchmarks/bench_core.py --backend memory     # in-memory only (fast)
    python tests/benchmarks/bench_core.py --tasks 20000 --per-request 20 --backend sqlite

Throughput: N no-op async tasks are added through a real HTTP route, P per request, with
``background_tasks.add_task(noop, item=i)``. The app runs under uvicorn in a subprocess on a
loopback port; this process is the client (httpx.AsyncClient, a bounded number of
concurrent requests). Throughput is N divided by the time from the first request sent until
the last task has finished (the task itself counts completions and stamps the moment the
N-th one ends; CLOCK_MONOTONIC is shared by every process on Linux). Variants:

* ``starlette``: plain FastAPI/Starlette ``BackgroundTasks`` (the tasks run one after another
  inside the request cycle, after the response);
* ``taskflow``: the same route and annotation with ``TaskAdmin(app, tm, auto_install=True)``
  (the drop-in path), tasks handed to the manager's executor; ``registered`` uses
  ``@tm.task()``, ``unregistered`` passes the bare function;
* ``taskflow`` with ``TaskManager(database_url=...)`` for each backend, with the task
  registered ``persist=False`` and ``persist=True``, compared with in-memory.

Each server process is warmed up before its measured run; every variant runs ``--repeat``
times (interleaved) in fresh server processes and the median is reported. For taskflow, the
server confirms through ``task_manager.history.count(status="success")`` that all N tasks
succeeded; with a backend it also reports the time until ``task_manager.flush()`` has
written every record ("durable").

Memory: a separate process runs 100,000 no-op tasks through ``await tm.enqueue(...)`` with
``TaskManager(max_records=100_000)`` and reports retained bytes per completed record and the
peak, with ``tracemalloc`` and (in another fresh process) the RSS delta.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
for _path in (str(ROOT), str(ROOT / "tests")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

BACKENDS = ("memory", "sqlite", "postgres", "mysql", "redis")
STARLETTE_TARGET = 0.5  # taskflow in memory vs plain BackgroundTasks (issue 2)
BACKEND_TARGET = 0.7  # each backend vs taskflow in memory (issue 3)


# =========================================================================== server side


class _Counter:
    """Counts finished no-op tasks; stamps the moment the target is reached."""

    def __init__(self) -> None:
        self.count = 0
        self.target = -1
        self.done_at: float | None = None
        self.done_cpu: float | None = None
        self.event = asyncio.Event()

    def arm(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.done_at = None
        self.done_cpu = None
        self.event = asyncio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count == self.target:
            self.done_at = time.monotonic()
            self.done_cpu = time.process_time()
            self.event.set()


def build_app(opts: argparse.Namespace) -> Any:
    """The benchmark app: one enqueue route and a few control routes under /_bench."""
    from fastapi import BackgroundTasks, FastAPI

    counter = _Counter()

    async def noop(item: int) -> None:
        counter.hit()

    manager: Any = None
    if opts.serve == "taskflow":
        from fastapi_taskflow import TaskManager

        settings: dict[str, Any] = {"max_records": opts.max_records}
        if opts.database_url:
            settings["database_url"] = opts.database_url
        manager = TaskManager(**settings)
        if opts.registered:
            manager.task(persist=opts.persist)(noop)

    app = FastAPI()

    @app.post("/enqueue")
    async def enqueue(n: int, background_tasks: BackgroundTasks) -> dict[str, int]:
        for i in range(n):
            background_tasks.add_task(noop, item=i)
        return {"added": n}

    profiler: Any = None

    @app.get("/_bench/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/_bench/arm")
    async def arm(target: int, profile: str = "") -> dict[str, Any]:
        nonlocal profiler
        before = await manager.history.count(status="success") if manager else None
        gc.collect()
        counter.arm(target)
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        return {"success_before": before, "cpu": time.process_time()}

    @app.get("/_bench/wait")
    async def wait(timeout: float = 300.0, profile: str = "") -> dict[str, Any]:
        nonlocal profiler
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await counter.event.wait()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
            profiler = None
        result: dict[str, Any] = {
            "count": counter.count,
            "done_at": counter.done_at,
            "done_cpu": counter.done_cpu,
        }
        if manager is not None:
            await asyncio.sleep(0)  # let the last completion callbacks run
            if manager.backend is not None:
                await manager.flush()
                result["flushed_at"] = time.monotonic()
            result["success_after"] = await manager.history.count(status="success")
            result["not_success"] = await manager.history.count(
                status=["failed", "cancelled", "interrupted", "rejected"]
            )
        return result

    if manager is not None:
        from fastapi_taskflow import TaskAdmin

        TaskAdmin(app, manager, auto_install=True)
    return app


async def serve(opts: argparse.Namespace) -> None:
    import socket

    import uvicorn

    app = build_app(opts)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=30
    )
    server = uvicorn.Server(config)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    await server.serve(sockets=[sock])


# =========================================================================== client side


@dataclass
class Variant:
    kind: str  # "starlette" | "taskflow"
    backend: str = "memory"
    persist: bool = False
    registered: bool = True

    @property
    def label(self) -> str:
        if self.kind == "starlette":
            return "starlette BackgroundTasks"
        if self.backend == "memory":
            return f"taskflow memory ({'registered' if self.registered else 'unregistered'})"
        return f"taskflow {self.backend} persist={self.persist}"


@dataclass
class Run:
    tasks_per_s: float
    seconds: float
    server_cpu_us_per_task: float | None
    server_cpu_share: float | None
    client_cpu_share: float
    durable_tasks_per_s: float | None = None


@dataclass
class Result:
    variant: Variant
    runs: list[Run] = field(default_factory=list)
    error: str | None = None

    def median(self, attr: str = "tasks_per_s") -> float | None:
        values = [getattr(r, attr) for r in self.runs if getattr(r, attr) is not None]
        return statistics.median(values) if values else None


class BenchError(RuntimeError):
    pass


class _Databases:
    """Hands out a fresh database URL per run for each backend (starting servers if needed)."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.tmp = Path(tempfile.mkdtemp(prefix="taskflow-bench-"))
        self.servers: dict[str, Any] = {}

    def check(self, backend: str) -> None:
        """Raise BenchError when the backend cannot be used here."""
        if backend == "memory":
            return
        try:
            if backend == "redis":
                from fastapi_taskflow.backends.redis import RedisBackend  # noqa: F401
            else:
                from fastapi_taskflow.backends.sql import SqlBackend  # noqa: F401
        except ImportError as exc:
            raise BenchError(f"backend not importable yet ({exc})") from exc
        if backend in ("postgres", "mysql", "redis"):
            self._server(backend)

    def _server(self, backend: str) -> Any:
        if getattr(self.opts, f"{backend}_url"):
            return None
        if backend not in self.servers:
            import _servers

            cls = {
                "postgres": _servers.PostgresServer,
                "mysql": _servers.MariaDBServer,
                "redis": _servers.RedisServer,
            }[backend]
            server = cls()
            try:
                server.start()
            except Exception as exc:  # ServerError, missing binaries, ...
                raise BenchError(f"cannot start a {backend} server: {exc}") from exc
            self.servers[backend] = server
        return self.servers[backend]

    def url(self, backend: str) -> str | None:
        if backend == "memory":
            return None
        if backend == "sqlite":
            return f"sqlite:///{self.tmp / f'bench_{uuid.uuid4().hex[:12]}.db'}"
        given = getattr(self.opts, f"{backend}_url")
        if given:
            return str(given)
        server = self._server(backend)
        if backend == "redis":
            server.flushall()
            return str(server.url())
        name = f"bench_{uuid.uuid4().hex[:12]}"
        server.create_database(name)
        return str(server.url(name))

    def close(self) -> None:
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                server.stop()
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.asynccontextmanager
async def server_process(
    variant: Variant, database_url: str | None, max_records: int, log: Path
) -> AsyncIterator[str]:
    """Start the app under uvicorn in a subprocess; yield its base URL."""
    argv = [sys.executable, __file__, "--serve", variant.kind, "--max-records", str(max_records)]
    if database_url:
        argv += ["--database-url", database_url]
    if variant.persist:
        argv.append("--persist")
    if not variant.registered:
        argv.append("--unregistered")
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=err, stdin=asyncio.subprocess.DEVNULL
        )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(120):
            line = (await proc.stdout.readline()).decode()
        if not line.startswith("PORT "):
            await proc.wait()
            raise BenchError(f"server did not start:\n{_tail(log)}")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown (runs the lifespan)
            try:
                async with asyncio.timeout(60):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _batches(total: int, per_request: int) -> list[int]:
    sizes = [per_request] * (total // per_request)
    if total % per_request:
        sizes.append(total % per_request)
    return sizes


async def _drive(client: Any, sizes: list[int], concurrency: int) -> None:
    """POST every batch, at most ``concurrency`` requests in flight."""
    pending: Iterator[int] = iter(sizes)

    async def worker() -> None:
        for n in pending:
            response = await client.post("/enqueue", params={"n": n})
            if response.status_code != 200:
                raise BenchError(f"/enqueue answered {response.status_code}: {response.text}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _wait_ready(client: Any, log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if (await client.get("/_bench/ping")).status_code == 200:
                return
        except Exception:
            if time.monotonic() > deadline:
                raise BenchError(f"server never answered:\n{_tail(log)}") from None
        await asyncio.sleep(0.05)


async def _phase(
    client: Any, total: int, opts: argparse.Namespace, profile: str = ""
) -> tuple[float, float, dict[str, Any], dict[str, Any]]:
    """Arm the counter, send ``total`` tasks, wait for them; returns timings and replies."""
    armed = (await client.post("/_bench/arm", params={"target": total, "profile": profile})).json()
    cpu0 = time.process_time()
    t0 = time.monotonic()
    await _drive(client, _batches(total, opts.per_request), opts.concurrency)
    reply = await client.get(
        "/_bench/wait", params={"timeout": opts.timeout, "profile": profile}, timeout=None
    )
    client_end = time.monotonic()
    client_cpu = time.process_time() - cpu0
    waited = reply.json()
    if waited["count"] != total:
        raise BenchError(f"only {waited['count']} of {total} tasks finished in {opts.timeout}s")
    done_at = waited["done_at"]
    # The server's stamp is on the same clock; fall back to ours if it looks foreign.
    end = done_at if done_at is not None and t0 <= done_at <= client_end else client_end
    if waited.get("success_after") is not None:
        succeeded = waited["success_after"] - armed["success_before"]
        if succeeded != total or waited["not_success"]:
            raise BenchError(
                f"history shows {succeeded} new successes of {total} "
                f"({waited['not_success']} not successful)"
            )
    timing = {"t0": t0, "end": end, "client_cpu": client_cpu}
    return t0, end, armed, {**waited, **timing}


async def run_once(
    variant: Variant,
    opts: argparse.Namespace,
    databases: _Databases,
    profile: str = "",
) -> Run:
    import httpx

    url = databases.url(variant.backend)
    # Room for warm-up plus the run, so the success count is exact (no eviction).
    max_records = opts.warmup + opts.tasks + 1000
    log = databases.tmp / f"server-{uuid.uuid4().hex[:8]}.log"
    async with server_process(variant, url, max_records, log) as base:
        limits = httpx.Limits(
            max_connections=opts.concurrency, max_keepalive_connections=opts.concurrency
        )
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
            await _wait_ready(client, log)
            try:
                if opts.warmup:
                    await _phase(client, opts.warmup, opts)
                t0, end, armed, waited = await _phase(client, opts.tasks, opts, profile)
            except (BenchError, httpx.HTTPError) as exc:
                raise BenchError(f"{exc}\n--- server log ---\n{_tail(log)}") from exc
    seconds = end - t0
    server_cpu = (
        waited["done_cpu"] - armed["cpu"]
        if waited.get("done_cpu") is not None and not profile
        else None
    )
    durable = None
    if waited.get("flushed_at") is not None:
        durable = opts.tasks / (max(waited["flushed_at"], end) - t0)
    return Run(
        tasks_per_s=opts.tasks / seconds,
        seconds=seconds,
        server_cpu_us_per_task=server_cpu / opts.tasks * 1e6 if server_cpu is not None else None,
        server_cpu_share=server_cpu / seconds if server_cpu is not None else None,
        client_cpu_share=waited["client_cpu"] / seconds,
        durable_tasks_per_s=durable,
    )


def _variants(opts: argparse.Namespace) -> list[Variant]:
    variants = [Variant("starlette"), Variant("taskflow")]
    if opts.unregistered:
        variants.append(Variant("taskflow", registered=False))
    for backend in opts.backends:
        if backend == "memory":
            continue
        variants.append(Variant("taskflow", backend=backend, persist=False))
        if opts.persist_rows:
            variants.append(Variant("taskflow", backend=backend, persist=True))
    return variants


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_throughput(results: list[Result], opts: argparse.Namespace) -> None:
    print(
        f"\nCore throughput: {opts.tasks:,} no-op async tasks through HTTP, {opts.per_request} "
        f"per request, {opts.concurrency} concurrent requests, median of {opts.repeat} runs "
        f"(warm-up {opts.warmup:,} tasks per server)"
    )
    header = (
        f"{'variant':<34} {'tasks/s':>9} {'min':>8} {'max':>8} {'ratio':>7}  "
        f"{'srv µs/task':>11} {'srv CPU':>7} {'cli CPU':>7} {'durable/s':>9}"
    )
    print(header)
    print("-" * len(header))
    by_label = {r.variant.label: r for r in results}
    plain = by_label.get("starlette BackgroundTasks")
    memory = by_label.get("taskflow memory (registered)")
    for result in results:
        if result.error:
            print(f"{result.variant.label:<34} skipped: {result.error.splitlines()[0]}")
            continue
        rates = [r.tasks_per_s for r in result.runs]
        base = None
        if result.variant.kind == "taskflow":
            base = plain if result.variant.backend == "memory" else memory
        ratio = None
        if base is not None and base.median() and not base.error:
            ratio = (result.median() or 0.0) / (base.median() or 1.0)
        print(
            f"{result.variant.label:<34} {_fmt(result.median(), ',.0f'):>9} "
            f"{min(rates):>8,.0f} {max(rates):>8,.0f} {_fmt(ratio, '.2f'):>7}  "
            f"{_fmt(result.median('server_cpu_us_per_task'), '.1f'):>11} "
            f"{_fmt(result.median('server_cpu_share'), '.0%'):>7} "
            f"{_fmt(result.median('client_cpu_share'), '.0%'):>7} "
            f"{_fmt(result.median('durable_tasks_per_s'), ',.0f'):>9}"
        )
    print(
        "ratio: taskflow in memory vs starlette (target >= "
        f"{STARLETTE_TARGET}); each backend vs taskflow memory (registered) (target >= "
        f"{BACKEND_TARGET}). srv µs/task: server CPU per task; srv/cli CPU: share of one core "
        "used by the server / this client during the run; durable/s: until flush() returned."
    )


# =========================================================================== memory probe


def _proc_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _rss_bytes() -> int:
    kb = _proc_status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil

    return int(psutil.Process().memory_info().rss)


async def memory_probe(records: int, mode: str, burst: bool) -> dict[str, Any]:
    """Run ``records`` no-op tasks in a fresh TaskManager and measure what stays."""
    import tracemalloc

    from fastapi_taskflow import TaskManager

    manager = TaskManager(max_records=records)
    finished = 0
    all_done = asyncio.Event()

    @manager.task()
    async def noop() -> None:
        nonlocal finished
        finished += 1
        if finished == records:
            all_done.set()

    await manager.startup()
    gc.collect()
    rss0 = _rss_bytes()
    if mode == "trace":
        tracemalloc.start(1)
    traced0 = tracemalloc.get_traced_memory()[0] if mode == "trace" else 0
    t0 = time.perf_counter()
    for i in range(records):
        await manager.enqueue(noop)
        if not burst and i % 1000 == 999:
            await asyncio.sleep(0)  # let the executor keep up (steady state)
    await all_done.wait()
    for _ in range(3):
        await asyncio.sleep(0)  # done callbacks
    seconds = time.perf_counter() - t0
    gc.collect()
    result: dict[str, Any] = {"records": records, "mode": mode, "burst": burst, "seconds": seconds}
    result["held"] = len(manager.store)
    if mode == "trace":
        current, peak = tracemalloc.get_traced_memory()
        snapshot = tracemalloc.take_snapshot()
        tracemalloc.stop()
        result["retained"] = current - traced0
        result["peak"] = peak - traced0
        top = []
        for stat in snapshot.statistics("lineno")[:12]:
            frame = stat.traceback[0]
            name = frame.filename
            for marker in ("fastapi_taskflow/", "site-packages/", "lib/python3"):
                if marker in name:
                    name = name[name.index(marker) :]
                    break
            top.append((f"{name}:{frame.lineno}", stat.size, stat.count))
        result["top"] = top
    else:
        rss1 = _rss_bytes()
        hwm = _proc_status_kb("VmHWM")
        result["retained"] = rss1 - rss0
        result["peak"] = hwm * 1024 - rss0 if hwm is not None else None
    await manager.shutdown()
    return result


async def _memory_subprocess(records: int, mode: str, burst: bool) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--memory-probe", mode, "--memory-records", str(records)]
    if burst:
        argv.append("--burst")
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise BenchError(f"memory probe ({mode}) failed:\n{err.decode()[-3000:]}")
    data: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return data


async def run_memory(opts: argparse.Namespace) -> dict[str, Any]:
    n = opts.memory_records
    found: dict[str, Any] = {}
    for burst in (False, True):
        key = "burst" if burst else "steady"
        found[key] = {
            "trace": await _memory_subprocess(n, "trace", burst),
            "rss": await _memory_subprocess(n, "rss", burst),
        }
    mib = 1024 * 1024
    print(
        f"\nMemory: {n:,} completed no-op tasks held in the in-memory store "
        f"(TaskManager(max_records={n:,}), await tm.enqueue(...))"
    )
    header = (
        f"{'enqueue pattern':<34} {'B/record':>9} {'retained':>10} {'peak':>10} "
        f"{'RSS B/rec':>9} {'RSS ret.':>10} {'RSS peak':>10}"
    )
    print(header)
    print("-" * len(header))
    for key, label in (
        ("steady", "steady (yield every 1,000)"),
        ("burst", f"burst (all {n:,} queued at once)"),
    ):
        trace, rss = found[key]["trace"], found[key]["rss"]
        rss_peak = "-" if rss["peak"] is None else f"{rss['peak'] / mib:,.1f} MiB"
        print(
            f"{label:<34} {trace['retained'] / n:>9,.0f} {trace['retained'] / mib:>6,.1f} MiB "
            f"{trace['peak'] / mib:>6,.1f} MiB {rss['retained'] / n:>9,.0f} "
            f"{rss['retained'] / mib:>6,.1f} MiB {rss_peak:>10}"
        )
    print(
        "B/record, retained, peak: tracemalloc (Python allocations); RSS: resident set delta "
        "in a separate process without tracemalloc (peak from VmHWM)."
    )
    if opts.verbose:
        print("\nLargest retained allocation sites (steady, tracemalloc):")
        for where, size, count in found["steady"]["trace"]["top"]:
            print(f"  {size / n:>7,.1f} B/record  {count:>8,} blocks  {where}")
    return found


# =========================================================================== main


def _print_profile(path: str, limit: int = 30) -> None:
    import pstats

    print(f"\nServer profile of the measured run ({path}), top {limit} by own time:")
    stats = pstats.Stats(path, stream=sys.stdout)
    stats.strip_dirs().sort_stats("tottime").print_stats(limit)


async def run_throughput(opts: argparse.Namespace) -> list[Result]:
    databases = _Databases(opts)
    results = [Result(v) for v in _variants(opts)]
    try:
        for result in results:
            try:
                databases.check(result.variant.backend)
            except BenchError as exc:
                if result.variant.backend in opts.explicit_backends:
                    raise
                result.error = str(exc)
        for round_ in range(opts.repeat):
            for result in results:
                if result.error:
                    continue
                profile = ""
                if opts.profile and round_ == 0 and result.variant.kind == "taskflow":
                    profile = str(
                        Path(opts.profile).resolve()
                        / f"{result.variant.label.replace(' ', '_').replace('=', '-')}.prof"
                    )
                    Path(opts.profile).mkdir(parents=True, exist_ok=True)
                try:
                    run = await run_once(result.variant, opts, databases, profile)
                except BenchError as exc:
                    if result.variant.backend in opts.explicit_backends | {"memory"}:
                        raise
                    result.error = str(exc)
                    continue
                result.runs.append(run)
                print(
                    f"  run {round_ + 1}/{opts.repeat} {result.variant.label:<34} "
                    f"{run.tasks_per_s:>9,.0f} tasks/s ({run.seconds:.2f}s)",
                    flush=True,
                )
                if profile:
                    _print_profile(profile)
    finally:
        databases.close()
    print_throughput(results, opts)
    return results


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per measured run")
    parser.add_argument("--per-request", type=int, default=20, help="tasks added per request")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (median)")
    parser.add_argument("--warmup", type=int, default=2_000, help="warm-up tasks per server")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait per run")
    parser.add_argument(
        "--backend",
        dest="backend_args",
        action="append",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"any of {', '.join(BACKENDS)} or 'all' (default: memory plus every backend that "
        "can be used here; an unusable backend named explicitly is an error)",
    )
    parser.add_argument("--postgres-url", help="use this PostgreSQL database (else start one)")
    parser.add_argument("--mysql-url", help="use this MySQL/MariaDB database (else start one)")
    parser.add_argument("--redis-url", help="use this Redis database (else start one)")
    parser.add_argument(
        "--no-persist-rows", dest="persist_rows", action="store_false", help="skip persist=True"
    )
    parser.add_argument(
        "--no-unregistered",
        dest="unregistered",
        action="store_false",
        help="skip the unregistered-function row",
    )
    parser.add_argument("--memory-records", type=int, default=100_000)
    parser.add_argument("--skip-memory", action="store_true", help="throughput only")
    parser.add_argument("--skip-throughput", action="store_true", help="memory only")
    parser.add_argument("--quick", action="store_true", help="2,000 tasks, 1 run, 10k records")
    parser.add_argument("--profile", metavar="DIR", help="cProfile the server of the first run")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="memory allocation sites")
    # internal: the server and memory-probe subprocesses
    parser.add_argument("--serve", choices=("starlette", "taskflow"), help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--persist", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--unregistered", dest="registered", action="store_false", help=argparse.SUPPRESS
    )
    parser.add_argument("--max-records", type=int, default=100_000, help=argparse.SUPPRESS)
    parser.add_argument("--memory-probe", choices=("trace", "rss"), help=argparse.SUPPRESS)
    parser.add_argument("--burst", action="store_true", help=argparse.SUPPRESS)
    opts, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"bench_core: ignoring unknown arguments {unknown}", file=sys.stderr)
    names = [name for group in opts.backend_args or [] for name in group]
    for name in names:
        if name not in (*BACKENDS, "all"):
            parser.error(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)} or all")
    opts.explicit_backends = set(BACKENDS) if "all" in names else set(names)
    opts.backends = list(BACKENDS) if not names or "all" in names else names
    if opts.quick:
        opts.tasks, opts.repeat, opts.warmup = 2_000, 1, 200
        opts.memory_records = min(opts.memory_records, 10_000)
    if opts.tasks < 1 or opts.per_request < 1 or opts.concurrency < 1 or opts.repeat < 1:
        parser.error("--tasks, --per-request, --concurrency and --repeat must be >= 1")
    return opts


async def amain(opts: argparse.Namespace) -> int:
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {
            k: getattr(opts, k) for k in ("tasks", "per_request", "concurrency", "repeat", "warmup")
        },
    }
    failed = False
    if not opts.skip_throughput:
        results = await run_throughput(opts)
        report["throughput"] = [
            {
                "variant": r.variant.label,
                **asdict(r.variant),
                "median_tasks_per_s": r.median(),
                "runs": [asdict(run) for run in r.runs],
                "error": r.error,
            }
            for r in results
        ]
        failed = any(r.error and r.variant.backend in opts.explicit_backends for r in results)
    if not opts.skip_memory:
        report["memory"] = await run_memory(opts)
    if opts.json:
        Path(opts.json).write_text(json.dumps(report, indent=2, default=str))
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    if opts.serve:
        asyncio.run(serve(opts))
        return 0
    if opts.memory_probe:
        found = asyncio.run(memory_probe(opts.memory_records, opts.memory_probe, opts.burst))
        print(json.dumps(found))
        return 0
    try:
        return asyncio.run(amain(opts))
    except BenchError as exc:
        print(f"bench_core: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
