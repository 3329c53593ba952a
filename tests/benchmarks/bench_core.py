"""Core throughput and memory benchmark (issue 2, acceptance 4; issue 3, acceptance 4).

    python tests/benchmarks/bench_core.py                      # memory + every usable backend
    python tests/benchmarks/bench_core.py --backend memory     # in-memory only
    python tests/benchmarks/bench_core.py --tasks 20000 --per-request 20 --backend sqlite
    python tests/benchmarks/bench_core.py --quick              # a smoke run in ~1 minute

Throughput: N no-op async tasks are added through a real HTTP route, P per request, with
``background_tasks.add_task(noop, item=i)``. The app runs under uvicorn in a subprocess on a
loopback port; this process is the client, with a bounded number of concurrent connections.
Throughput is N divided by the time from the first request sent until the last task has
finished (the task counts completions and stamps the moment the N-th one ends;
CLOCK_MONOTONIC is shared by all processes on Linux). Variants:

* ``starlette``: plain FastAPI/Starlette ``BackgroundTasks`` (the tasks run one after another
  inside the request cycle, after the response);
* ``taskflow``: the same route and annotation with ``TaskAdmin(app, tm, auto_install=True)``
  (the drop-in path), tasks handed to the manager's executor; ``registered`` uses
  ``@tm.task()``, ``unregistered`` passes the bare function;
* ``taskflow`` with ``TaskManager(database_url=...)`` for each backend, the task registered
  ``persist=False`` and ``persist=True``, compared with taskflow in memory.

Two clients: ``httpx`` (httpx.AsyncClient) and ``raw`` (hand-written HTTP/1.1 over asyncio
streams). httpx costs more CPU per request than the plain Starlette server does, so with it
the client is the bottleneck of the Starlette row; the raw client leaves the server as the
bottleneck and so compares the server-side cost. Both run by default (``--client``).

Each server is warmed up first (by default with ``max_records`` tasks, so the in-memory store
is full and evicting during the measured run, as in a server that has been up a while);
each variant runs ``--repeat`` times, interleaved, in fresh server processes, and the median
is reported. For taskflow the server confirms through ``task_manager.history.count(...)``
that the tasks succeeded (all of them with a backend; in memory, every record the store
still holds) and, with a backend, the time until ``task_manager.flush()`` has written every
record ("durable").

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

from fastapi import BackgroundTasks, FastAPI

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
    """Counts finished no-op tasks; stamps the moment the target is reached.

    Also adds up the time the garbage collector spends between ``arm`` and the target.
    """

    def __init__(self) -> None:
        self.count = 0
        self.target = -1
        self.done_at: float | None = None
        self.done_cpu: float | None = None
        self.done_gc: float | None = None
        self.event = asyncio.Event()
        self.gc_seconds = 0.0
        self._gc_start = 0.0
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_seconds += time.perf_counter() - self._gc_start

    def arm(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.done_at = None
        self.done_cpu = None
        self.done_gc = None
        self.gc_seconds = 0.0
        self.event = asyncio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count == self.target:
            self.done_at = time.monotonic()
            self.done_cpu = time.process_time()
            self.done_gc = self.gc_seconds
            self.event.set()


def build_app(opts: argparse.Namespace) -> Any:
    """The benchmark app: one enqueue route and a few control routes under /_bench."""
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
    async def wait(seconds: float = 300.0, profile: str = "") -> dict[str, Any]:
        nonlocal profiler
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await counter.event.wait()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
            profiler = None
        result: dict[str, Any] = {
            "count": counter.count,
            "done_at": counter.done_at,
            "done_cpu": counter.done_cpu,
            "done_gc": counter.done_gc,
        }
        if manager is not None:
            await asyncio.sleep(0)  # let the last completion callbacks run
            if manager.backend is not None:
                await manager.flush()
                result["flushed_at"] = time.monotonic()
            result["success_after"] = await manager.history.count(status="success")
            result["capped"] = manager.backend is None
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
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto
    # is TCP, and without it every response stalls ~40 ms (Nagle + delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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
    client: str = "httpx"  # "httpx" | "raw"

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
    server_gc_share: float | None = None
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
    """POST every batch with httpx, at most ``concurrency`` requests in flight."""
    pending: Iterator[int] = iter(sizes)

    async def worker() -> None:
        for n in pending:
            response = await client.post("/enqueue", params={"n": n})
            if response.status_code != 200:
                raise BenchError(f"/enqueue answered {response.status_code}: {response.text}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _drive_raw(host: str, port: int, sizes: list[int], concurrency: int) -> None:
    """POST every batch over ``concurrency`` keep-alive connections with hand-written
    HTTP/1.1: a client that costs far less CPU than httpx, so the server is the bottleneck."""
    pending: Iterator[int] = iter(sizes)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for n in pending:
                writer.write(
                    f"POST /enqueue?n={n} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    f"Content-Length: 0\r\n\r\n".encode()
                )
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200"):
                    raise BenchError(f"/enqueue answered {head.splitlines()[0]!r}: {body!r}")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

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
    client: Any, client_kind: str, total: int, opts: argparse.Namespace, profile: str = ""
) -> tuple[float, float, dict[str, Any], dict[str, Any]]:
    """Arm the counter, send ``total`` tasks, wait for them; returns timings and replies."""
    armed = (await client.post("/_bench/arm", params={"target": total, "profile": profile})).json()
    cpu0 = time.process_time()
    t0 = time.monotonic()
    sizes = _batches(total, opts.per_request)
    if client_kind == "raw":
        await _drive_raw(client.base_url.host, client.base_url.port, sizes, opts.concurrency)
    else:
        await _drive(client, sizes, opts.concurrency)
    reply = await client.get(
        "/_bench/wait", params={"seconds": opts.timeout, "profile": profile}, timeout=None
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
        # In memory the store keeps the newest max_records: then every record it still holds
        # must be a success. A backend keeps them all: exactly ``total`` more successes.
        expected = armed["success_before"] + total
        if waited["capped"]:
            expected = min(expected, opts.max_records)
        if waited["success_after"] != expected or waited["not_success"]:
            raise BenchError(
                f"history shows {waited['success_after']} successes, expected {expected} "
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
    max_records = opts.max_records
    log = databases.tmp / f"server-{uuid.uuid4().hex[:8]}.log"
    async with server_process(variant, url, max_records, log) as base:
        limits = httpx.Limits(
            max_connections=opts.concurrency, max_keepalive_connections=opts.concurrency
        )
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
            await _wait_ready(client, log)
            try:
                if opts.warmup:
                    await _phase(client, variant.client, opts.warmup, opts)
                t0, end, armed, waited = await _phase(
                    client, variant.client, opts.tasks, opts, profile
                )
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
        server_gc_share=waited["done_gc"] / seconds if waited.get("done_gc") is not None else None,
        durable_tasks_per_s=durable,
    )


def _variants(opts: argparse.Namespace) -> list[Variant]:
    variants = []
    for client in ("httpx", "raw") if opts.client == "both" else (opts.client,):
        variants += [Variant("starlette", client=client), Variant("taskflow", client=client)]
        if opts.unregistered:
            variants.append(Variant("taskflow", registered=False, client=client))
        for backend in opts.backends:
            if backend == "memory":
                continue
            variants.append(Variant("taskflow", backend=backend, persist=False, client=client))
            if opts.persist_rows:
                variants.append(Variant("taskflow", backend=backend, persist=True, client=client))
    return variants


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _base(result: Result, results: list[Result]) -> Result | None:
    """What a taskflow row is compared with: starlette (in memory) or taskflow in memory."""
    if result.variant.kind != "taskflow":
        return None
    want = (
        Variant("starlette", client=result.variant.client)
        if result.variant.backend == "memory"
        else Variant("taskflow", client=result.variant.client)
    )
    base = next((r for r in results if r.variant == want), None)
    return None if base is None or base.error or not base.runs else base


def ratios(result: Result, results: list[Result]) -> tuple[float | None, float | None]:
    """(throughput ratio, server-CPU ratio) of a taskflow row against its base row."""
    base = _base(result, results)
    if base is None or result.error or not result.runs:
        return None, None
    rate = (result.median() or 0.0) / (base.median() or 1.0)
    cost, base_cost = result.median("server_cpu_us_per_task"), base.median("server_cpu_us_per_task")
    return rate, (base_cost / cost if cost and base_cost else None)


def print_throughput(results: list[Result], opts: argparse.Namespace) -> None:
    print(
        f"\nCore throughput: {opts.tasks:,} no-op async tasks through HTTP, {opts.per_request} "
        f"per request, {opts.concurrency} concurrent connections, median of {opts.repeat} runs "
        f"(warm-up {opts.warmup:,} tasks per server, max_records={opts.max_records:,}); "
        f"{os.cpu_count()} CPUs, load average {opts.load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after"
    )
    header = (
        f"{'variant':<34} {'client':<6} {'tasks/s':>9} {'min':>8} {'max':>8} {'ratio':>6}  "
        f"{'srv µs/task':>11} {'cpu ratio':>9} {'srv CPU':>7} {'srv GC':>6} {'cli CPU':>7} "
        f"{'durable/s':>9}"
    )
    print(header)
    print("-" * len(header))
    for result in results:
        variant = result.variant
        if result.error:
            print(
                f"{variant.label:<34} {variant.client:<6} skipped: {result.error.splitlines()[0]}"
            )
            continue
        rates = [r.tasks_per_s for r in result.runs]
        rate_ratio, cpu_ratio = ratios(result, results)
        print(
            f"{variant.label:<34} {variant.client:<6} {_fmt(result.median(), ',.0f'):>9} "
            f"{min(rates):>8,.0f} {max(rates):>8,.0f} {_fmt(rate_ratio, '.2f'):>6}  "
            f"{_fmt(result.median('server_cpu_us_per_task'), '.1f'):>11} "
            f"{_fmt(cpu_ratio, '.2f'):>9} "
            f"{_fmt(result.median('server_cpu_share'), '.0%'):>7} "
            f"{_fmt(result.median('server_gc_share'), '.0%'):>6} "
            f"{_fmt(result.median('client_cpu_share'), '.0%'):>7} "
            f"{_fmt(result.median('durable_tasks_per_s'), ',.0f'):>9}"
        )
    print(
        f"ratio: taskflow in memory vs starlette with the same client (target >= "
        f"{STARLETTE_TARGET}); each backend vs taskflow memory (registered) (target >= "
        f"{BACKEND_TARGET}).\nsrv µs/task: server CPU time per task (the app's process only, "
        f"not a database server's); cpu ratio: the base row's srv µs/task divided by this "
        f"row's, i.e. the ratio of what one dedicated core could sustain, which other load on "
        f"the machine disturbs far less than wall-clock throughput; srv/cli CPU: share of one "
        f"core used by the server / this client process during the run (near 100% = that side "
        f"is the bottleneck); srv GC: share of the run the server spent in the garbage "
        f"collector; durable/s: tasks/s counted until task_manager.flush() returned."
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
    objects0 = len(gc.get_objects()) if mode == "trace" else 0
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
        # (counted first: the snapshot below is made of objects too)
        result["tracked_objects"] = len(gc.get_objects()) - objects0
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
    for burst in (False, True) if opts.memory_burst else (False,):
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
        f"{'enqueue pattern':<26} {'B/record':>9} {'retained':>10} {'peak':>10} "
        f"{'RSS B/rec':>9} {'RSS ret.':>10} {'RSS peak':>10} {'GC objs/rec':>11}"
    )
    print(header)
    print("-" * len(header))
    for key, label in (
        ("steady", "steady (yield every 1,000)"),
        ("burst", "burst (all queued at once)"),
    ):
        if key not in found:
            continue
        trace, rss = found[key]["trace"], found[key]["rss"]
        rss_peak = "-" if rss["peak"] is None else f"{rss['peak'] / mib:,.1f} MiB"
        print(
            f"{label:<26} {trace['retained'] / n:>9,.0f} {trace['retained'] / mib:>6,.1f} MiB "
            f"{trace['peak'] / mib:>6,.1f} MiB {rss['retained'] / n:>9,.0f} "
            f"{rss['retained'] / mib:>6,.1f} MiB {rss_peak:>10} "
            f"{trace['tracked_objects'] / n:>11.1f}"
        )
    print(
        "B/record, retained, peak: tracemalloc (Python allocations) after gc.collect(); RSS: "
        "resident set delta measured in a separate process without tracemalloc (peak from "
        "VmHWM); GC objs/rec: objects the garbage collector tracks, per record."
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


def _profile_path(folder: str, variant: Variant) -> str:
    Path(folder).mkdir(parents=True, exist_ok=True)
    name = f"{variant.label}-{variant.client}".replace(" ", "_").replace("=", "-")
    return str(Path(folder).resolve() / f"{name.replace('(', '').replace(')', '')}.prof")


def _write_json(path: str, report: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(report, indent=2, default=str))


async def run_throughput(opts: argparse.Namespace) -> list[Result]:
    opts.load_before = os.getloadavg()[0]
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
                    profile = _profile_path(opts.profile, result.variant)
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per measured run")
    parser.add_argument("--per-request", type=int, default=20, help="tasks added per request")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="concurrent connections (requests in flight)"
    )
    parser.add_argument(
        "--client",
        choices=("httpx", "raw", "both"),
        default="both",
        help="httpx.AsyncClient, a minimal raw HTTP/1.1 client that leaves the server as the "
        "bottleneck, or both (default: every row with each)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (median)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warm-up tasks per server (default: --max-records, at least 2,000, so the store is "
        "full and evicting during the measured run, as in a server that has been up a while)",
    )
    parser.add_argument(
        "--max-records",
        type=int,
        default=10_000,
        help="TaskManager(max_records=...) of the server (default: the library default)",
    )
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
    parser.add_argument(
        "--backends",
        metavar="A,B",
        help="the same as --backend, comma-separated (the spelling the other benchmarks use)",
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
    parser.add_argument(
        "--memory-burst",
        action="store_true",
        help="also measure memory with all records queued before any runs",
    )
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
    parser.add_argument("--memory-probe", choices=("trace", "rss"), help=argparse.SUPPRESS)
    parser.add_argument("--burst", action="store_true", help=argparse.SUPPRESS)
    opts, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"bench_core: ignoring unknown arguments {unknown}", file=sys.stderr)
    names = [name for group in opts.backend_args or [] for name in group]
    names += [name.strip() for name in (opts.backends or "").split(",") if name.strip()]
    for name in names:
        if name not in (*BACKENDS, "all"):
            parser.error(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)} or all")
    opts.explicit_backends = set(BACKENDS) if "all" in names else set(names)
    opts.backends = list(BACKENDS) if not names or "all" in names else names
    if opts.warmup is None:
        opts.warmup = max(opts.max_records, 2_000)
    if opts.quick:
        opts.tasks, opts.repeat, opts.warmup = 2_000, 1, 500
        opts.memory_records = min(opts.memory_records, 10_000)
    if opts.tasks < 1 or opts.per_request < 1 or opts.concurrency < 1 or opts.repeat < 1:
        parser.error("--tasks, --per-request, --concurrency and --repeat must be >= 1")
    return opts


async def amain(opts: argparse.Namespace) -> int:
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {
            k: getattr(opts, k)
            for k in (
                "tasks",
                "per_request",
                "concurrency",
                "repeat",
                "warmup",
                "max_records",
                "client",
            )
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
                "ratio": ratios(r, results)[0],
                "cpu_ratio": ratios(r, results)[1],
                "runs": [asdict(run) for run in r.runs],
                "error": r.error,
            }
            for r in results
        ]
        failed = any(r.error and r.variant.backend in opts.explicit_backends for r in results)
    if not opts.skip_memory:
        report["memory"] = await run_memory(opts)
    if opts.json:
        _write_json(opts.json, report)
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    if opts.serve:
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the SIGINT we send
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
