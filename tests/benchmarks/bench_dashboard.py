"""Dashboard benchmark: the cost of one task change per connected dashboard, and first paint.

    python tests/benchmarks/bench_dashboard.py           # quick: 1,000 live tasks, 20,000 rows
    python tests/benchmarks/bench_dashboard.py --full    # 20,000 live tasks, 1,000,000 rows
    python tests/benchmarks/bench_dashboard.py --screenshots docs/images

The app runs under uvicorn in a subprocess (``--serve``) with ``TaskManager(snapshot_backend=
SqliteBackend(db))``; the history table is filled beforehand through the backend's own
``save()`` in batches of 10,000, and the live tasks are real tasks that wait on an event (all
pending or running). This process is the client: it holds N open event streams
(``GET /tasks/events``, raw sockets that count every byte on the wire, chunk framing
included) and asks the server to change C live tasks (``store.changed(record)``: what the
executor calls on every status change). Each scale is measured with 0 clients and with N
clients; the server's own CPU time (``time.process_time()`` inside the server process)
over the run, minus the 0-client run, divided by C x N, is the server time per change per
client. Every measurement repeats ``--repeat`` times and the median is shown.

Time to first paint: Chromium (Playwright, headless) opens ``/tasks/dashboard``; reported are
``first-contentful-paint`` from ``performance.getEntriesByType('paint')`` and the moment
the table holds its first page of rows (the page's ``taskflow:rows`` mark), median of 5.
No assertions: this prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
for _path in (str(ROOT), str(ROOT / "tests")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

FUNCS = ["emails.send_welcome", "billing.charge_card", "images.build_avatar", "crm.sync", "audit"]


# --------------------------------------------------------------------------- the server


def build_app(db: str, *, demo: bool) -> Any:
    from fastapi import FastAPI

    from fastapi_taskflow import TaskAdmin, TaskManager, task_log
    from fastapi_taskflow.backends import SqliteBackend

    manager = TaskManager(
        snapshot_backend=SqliteBackend(db),
        shutdown_grace=0,
        max_concurrent_tasks=100,
        snapshot_interval=5.0,
    )
    app = FastAPI()
    admin = TaskAdmin(app, manager, display_func_args=True)
    release = asyncio.Event()

    @manager.task(name="bench.hold")
    async def hold(n: int) -> None:
        await release.wait()

    live_records: list[Any] = []

    @app.post("/bench/live")
    async def live(n: int) -> dict[str, int]:
        for i in range(n):
            await manager.enqueue(hold, i)
        live_records[:] = [job.record for job in manager.store if not job.record.status.is_terminal]
        return {"live": len(live_records)}

    offset = [0]

    @app.post("/bench/change")
    async def change(n: int) -> dict[str, int]:
        """Change ``n`` different live tasks at once (what a status change does)."""
        n = min(n, len(live_records))
        for i in range(n):
            record = live_records[(offset[0] + i) % len(live_records)]
            record.updated_at = datetime.now(UTC)
            manager.store.changed(record)
        offset[0] += n
        return {"changed": n}

    @app.get("/bench/cpu")
    async def cpu() -> dict[str, float]:
        return {
            "cpu_s": time.process_time(),
            "clients": admin.events.clients,
            "encode_s": admin.events.encode_seconds,
            "fanout_s": admin.events.fanout_seconds,
        }

    if demo:
        add_demo_tasks(app, manager, task_log)
    return app


def add_demo_tasks(app: Any, manager: Any, task_log: Any) -> None:
    """Realistic tasks for the screenshots: retries, timeouts, failures, logs, tags."""

    @manager.task(name="emails.send_welcome_email", retries=2, delay=0.2)
    async def send_welcome_email(address: str) -> None:
        task_log(f"connecting to the mail server for {address}")
        await asyncio.sleep(random.random() * 0.4)
        if random.random() < 0.35:
            raise ConnectionError("mail server did not answer")
        task_log("welcome email sent", address=address)

    @manager.task(name="images.build_avatar", timeout=1.0)
    async def build_avatar(user: str) -> None:
        await asyncio.sleep(random.choice([0.1, 0.3, 0.5, 2.0]))
        task_log(f"avatar ready for {user}", level="debug")

    @manager.task(name="billing.charge_card", retries=1, delay=0.5, queue=None)
    async def charge_card(customer: str, cents: int) -> None:
        task_log("charging the card", cents=cents)
        await asyncio.sleep(0.2 + random.random() * 1.5)
        if cents > 7000:
            task_log("amount over the card limit", level="warning")
            raise ValueError(f"amount {cents} exceeds the card limit of 7000")
        task_log("charged")

    @manager.task(name="reports.nightly_export")
    async def nightly_export(day: str) -> None:
        task_log(f"exporting {day}")
        await asyncio.sleep(600)

    @app.post("/bench/demo")
    async def demo(n: int = 14) -> dict[str, bool]:
        random.seed(7)
        for i in range(n):
            await manager.enqueue(send_welcome_email, f"user{i}@example.com", tags={"plan": "pro"})
            await manager.enqueue(build_avatar, f"user{i}")
            await manager.enqueue(charge_card, f"cus_{1040 + i}", random.randint(500, 9000))
            await asyncio.sleep(0.15)
        await manager.enqueue(nightly_export, "2024-05-01", tags={"team": "data"})
        return {"ok": True}


def serve(port: int, db: str, demo: bool) -> None:
    import logging

    import uvicorn

    logging.getLogger("fastapi_taskflow").setLevel(logging.ERROR)  # the open-admin warning

    config = uvicorn.Config(
        build_app(db, demo=demo),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        ws="none",
        timeout_graceful_shutdown=3,
    )
    uvicorn.Server(config).run()


# --------------------------------------------------------------------------- history


def fake_record(now: datetime, index: int) -> Any:
    from fastapi_taskflow import TaskRecord, TaskStatus

    created = now - timedelta(seconds=index * 2.5 + random.random())
    duration = random.expovariate(4.0)
    failed = random.random() < 0.08
    return TaskRecord(
        task_id=uuid.uuid4().hex,
        func_name=random.choice(FUNCS),
        status=TaskStatus.FAILED if failed else TaskStatus.SUCCESS,
        kwargs={"item": index},
        created_at=created,
        start_time=created,
        end_time=created + timedelta(seconds=duration),
        duration=duration,
        error="ConnectionError: upstream did not answer" if failed else None,
        tags={"tenant": f"t{index % 50}"},
        source="enqueue",
    )


async def fill_history(db: str, rows: int) -> float:
    from fastapi_taskflow.backends import SqliteBackend

    backend = SqliteBackend(db)
    await backend.open()
    started = time.perf_counter()
    now = datetime.now(UTC) - timedelta(minutes=5)
    try:
        for start in range(0, rows, 10_000):
            batch = [fake_record(now, i) for i in range(start, min(rows, start + 10_000))]
            await backend.save(batch)
            if rows >= 100_000 and (start // 10_000) % 10 == 9:
                print(f"  history: {start + 10_000:,} rows", flush=True)
    finally:
        await backend.close()
    return time.perf_counter() - started


# --------------------------------------------------------------------------- the client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    port: int
    proc: asyncio.subprocess.Process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def server(db: str, *, demo: bool = False) -> AsyncIterator[Server]:
    import httpx

    port = free_port()
    argv = [sys.executable, __file__, "--serve", str(port), "--db", db]
    proc = await asyncio.create_subprocess_exec(*argv, *(["--demo"] if demo else []), cwd=ROOT)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(600):
                with contextlib.suppress(httpx.TransportError):
                    await client.get("/bench/cpu")
                    break
                await asyncio.sleep(0.05)
        yield Server(port, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(20):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


class StreamClient:
    """One dashboard's event stream over a raw socket: counts bytes and task events."""

    def __init__(self) -> None:
        self.bytes = 0
        self.events = 0
        self._tail = b""
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self, port: int) -> None:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", port)
        self._writer.write(
            b"GET /tasks/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
        )
        await self._reader.readuntil(b"\r\n\r\n")
        while b"event: hello" not in self._tail:
            self._tail += await self._reader.read(65536)
        self._tail = b""
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._reader is not None
        while True:
            data = await self._reader.read(1 << 20)
            if not data:
                return
            self.bytes += len(data)
            joined = self._tail + data
            self.events += joined.count(b"event: task") - self._tail.count(b"event: task")
            self._tail = joined[-16:]

    def reset(self) -> None:
        self.bytes = self.events = 0

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()


@dataclass
class ChangeCost:
    clients: int
    bytes_per_change: float
    server_us: float  # per change per client
    encode_us: float  # per change, shared by all clients


async def measure_changes(
    base: str, port: int, clients: int, changes: int, burst: int
) -> dict[str, float]:
    import httpx

    streams = [StreamClient() for _ in range(clients)]
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        for stream in streams:
            await stream.connect(port)
        while (await http.get("/bench/cpu")).json()["clients"] != clients:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        before = (await http.get("/bench/cpu")).json()
        for start in range(0, changes, burst):
            await http.post("/bench/change", params={"n": min(burst, changes - start)})
            deadline = time.monotonic() + 60
            while any(s.events < min(changes, start + burst) for s in streams):
                if time.monotonic() > deadline:
                    raise RuntimeError("events did not arrive")
                await asyncio.sleep(0.002)
        if not streams:
            await asyncio.sleep(0.05)
        after = (await http.get("/bench/cpu")).json()
    for stream in streams:
        await stream.close()
    total_bytes = sum(s.bytes for s in streams)
    return {
        "cpu_s": after["cpu_s"] - before["cpu_s"],
        "encode_s": after["encode_s"] - before["encode_s"],
        "bytes": total_bytes / clients if clients else 0.0,
    }


async def change_cost(
    srv: Server, clients: int, changes: int, repeat: int, burst: int
) -> ChangeCost:
    """Bursts of ``burst`` changes to different tasks (changes to one task within a burst
    are merged into one event, which would flatter the figures)."""
    runs = []
    for _ in range(repeat):
        base = await measure_changes(srv.url, srv.port, 0, changes, burst)
        loaded = await measure_changes(srv.url, srv.port, clients, changes, burst)
        runs.append((base, loaded))
    per_client = [
        (loaded["cpu_s"] - base["cpu_s"]) / (changes * clients) * 1e6 for base, loaded in runs
    ]
    return ChangeCost(
        clients=clients,
        bytes_per_change=statistics.median(r[1]["bytes"] for r in runs) / changes,
        server_us=max(0.0, statistics.median(per_client)),
        encode_us=statistics.median(r[1]["encode_s"] for r in runs) / changes * 1e6,
    )


async def first_paint(url: str, runs: int = 5) -> tuple[float, float, float]:
    from _servers import CHROMIUM_ARGS, chromium_executable
    from playwright.async_api import async_playwright

    fcp, rows, api = [], [], []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium_executable(), args=CHROMIUM_ARGS
        )
        for _ in range(runs + 1):  # the first run warms up the server and the browser
            page = await browser.new_page()
            await page.goto(f"{url}/tasks/dashboard")
            await page.wait_for_selector("body[data-ready]", timeout=120_000)
            timing = await page.evaluate(
                """() => ({
                    fcp: performance.getEntriesByType('paint')
                        .find(e => e.name === 'first-contentful-paint').startTime,
                    rows: performance.getEntriesByName('taskflow:rows')[0].startTime,
                    api: performance.getEntriesByType('resource')
                        .filter(e => e.name.includes('/tasks/rows'))
                        .map(e => e.duration)[0] || 0,
                })"""
            )
            await page.close()
            fcp.append(timing["fcp"])
            rows.append(timing["rows"])
            api.append(timing["api"])
        await browser.close()
    return statistics.median(fcp[1:]), statistics.median(rows[1:]), statistics.median(api[1:])


async def screenshots(folder: Path) -> None:
    import httpx
    from _servers import CHROMIUM_ARGS, chromium_executable
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "demo.db")
        await fill_history(db, 0)
        async with server(db, demo=True) as srv:
            async with httpx.AsyncClient(base_url=srv.url) as http:
                await http.post("/bench/demo", timeout=30)
            await asyncio.sleep(2.5)
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=chromium_executable(), args=CHROMIUM_ARGS
                )
                for theme in ("light", "dark"):
                    page = await browser.new_page(
                        viewport={"width": 1440, "height": 900},
                        color_scheme=theme,
                        device_scale_factor=1,
                    )
                    await page.goto(f"{srv.url}/tasks/dashboard")
                    await page.wait_for_selector("body[data-ready]")
                    await asyncio.sleep(0.5)
                    suffix = "" if theme == "light" else "-dark"
                    await page.screenshot(path=folder / f"dashboard{suffix}.png")
                    if theme == "light":
                        await page.set_viewport_size({"width": 1440, "height": 1250})
                        failed = page.locator('#tasks tbody tr[data-status="failed"]').first
                        await failed.click()
                        await page.wait_for_selector("#detail-stacktrace")
                        await asyncio.sleep(0.3)
                        await page.screenshot(path=folder / "dashboard-detail.png")
                    await page.close()
                await browser.close()
    print(f"screenshots written to {folder}")


# --------------------------------------------------------------------------- main


async def bench(
    scales: list[tuple[int, int]], clients: list[int], changes: int, repeat: int
) -> None:
    import httpx

    print(
        f"{'live tasks':>10} {'history':>10} {'changes':>8} {'clients':>7} "
        f"{'bytes/change/client':>20} {'server us/change/client':>24} {'encode us/change':>17}"
    )
    paints = []
    for live, history in scales:
        with tempfile.TemporaryDirectory() as tmp:
            db = os.path.join(tmp, "bench.db")
            took = await fill_history(db, history)
            if history:
                print(f"  ({history:,} history rows written in {took:.1f} s)", flush=True)
            async with server(db) as srv:
                async with httpx.AsyncClient(base_url=srv.url, timeout=600) as http:
                    await http.post("/bench/live", params={"n": live})
                # One change at a time (each wakes every stream), then bursts of changes to
                # different tasks (one write per stream carries the whole burst).
                for burst, count in ((1, max(100, changes // 10)), (min(live, 500), changes)):
                    label = "single" if burst == 1 else f"x{burst}"
                    for n in clients:
                        cost = await change_cost(srv, n, count, repeat, burst)
                        print(
                            f"{live:>10,} {history:>10,} {label:>8} {n:>7} "
                            f"{cost.bytes_per_change:>20.0f} {cost.server_us:>24.1f} "
                            f"{cost.encode_us:>17.1f}",
                            flush=True,
                        )
                paints.append((live, history, *await first_paint(srv.url)))
    print()
    print(
        f"{'live tasks':>10} {'history':>10} {'first paint ms':>15} {'table ready ms':>15} "
        f"{'rows API ms':>12}"
    )
    for live, history, fcp, rows, api in paints:
        print(f"{live:>10,} {history:>10,} {fcp:>15.0f} {rows:>15.0f} {api:>12.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="20,000 live tasks, 1,000,000 rows")
    parser.add_argument("--changes", type=int, default=2000, help="task changes per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--screenshots", type=Path, help="write dashboard screenshots here")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--demo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.db, args.demo)
        return
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
        asyncio.run(screenshots(args.screenshots))
        return
    random.seed(1)
    if args.full:
        scales, clients = [(100, 0), (20_000, 1_000_000)], [1, 10, 50]
    else:
        scales, clients = [(100, 0), (1_000, 20_000)], [1, 10]
    asyncio.run(bench(scales, clients, args.changes, args.repeat))


if __name__ == "__main__":
    main()
