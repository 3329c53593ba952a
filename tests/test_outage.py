"""A backend that goes away for ten seconds in the middle of 5,000 tasks: requests keep
being served, tasks keep running, nothing is lost, and the app recovers by itself. The app
is a real uvicorn process (tests/apps/multi_app.py); the servers are private ones this
module stops and starts again with their data kept."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _servers
import httpx
import pytest
from _instances import Instance, run_counts

from fastapi_taskflow import TaskFilter, TaskManager, TaskStatus
from fastapi_taskflow._manager import backend_from_url

pytestmark = pytest.mark.slow
OUTAGE_S = 10.0


class Outage:
    """A private server that can be stopped and started again with its data kept."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        servers = {
            "postgres": _servers.PostgresServer,
            "mysql": _servers.MariaDBServer,
            "redis": _servers.RedisServer,
        }
        self.server: Any = servers[kind]()
        self.server.start()
        if kind == "mysql":
            self.server.create_database("outage")
        self._argv: list[str] = []

    @property
    def url(self) -> str:
        return str(self.server.url("outage") if self.kind == "mysql" else self.server.url())

    def down(self) -> None:
        server = self.server
        if self.kind == "postgres":
            server._run(
                [
                    str(server.bindir / "pg_ctl"),
                    "-D",
                    str(server.datadir),
                    "-m",
                    "fast",
                    "-w",
                    "stop",
                ]
            )
        elif self.kind == "mysql":
            self._argv = list(server.proc.args)
            server._terminate()  # SIGTERM: a clean shutdown, the data kept
        else:
            server.command("SAVE")  # keep the data across the restart, like a real deployment
            server.proc.send_signal(signal.SIGTERM)
            server.proc.wait()
            server._log.close()

    def up(self) -> None:
        server = self.server
        if self.kind == "postgres":
            opts = (
                f"-c listen_addresses=127.0.0.1 -p {server.port} -k {server.sockdir}"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                " -c max_connections=200"
            )
            result = server._run(
                [str(server.bindir / "pg_ctl"), "-D", str(server.datadir), "-l",
                 str(server.datadir.parent / "postgres.log"), "-o", opts, "-w", "start"]
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
        elif self.kind == "mysql":
            server._spawn(self._argv, server.tmpdir / "stdout.log")
            assert server._wait_ready(30.0)
        else:
            binary = shutil.which("redis-server") or "/usr/bin/redis-server"
            server._spawn(
                [binary, "--port", str(server.port), "--bind", "127.0.0.1", "--dir",
                 str(server.tmpdir), "--save", "", "--appendonly", "no"],
                server.tmpdir / "redis.log",
            )  # fmt: skip
            assert server._wait_ready(10.0)

    def stop(self) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            self.server.stop()


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("mysql", marks=pytest.mark.mysql),
                        pytest.param("redis", marks=pytest.mark.redis)])  # fmt: skip
def outage(request: pytest.FixtureRequest) -> Iterator[Outage]:
    if _servers.os.environ.get("TASKFLOW_TEST_NO_SERVERS"):
        pytest.skip("TASKFLOW_TEST_NO_SERVERS is set")
    made = Outage(request.param)
    try:
        yield made
    finally:
        made.stop()


async def test_backend_down_for_ten_seconds_during_5000_tasks(
    outage: Outage, tmp_path: Path
) -> None:
    """A real application process (uvicorn) adds 5,000 persisted tasks through HTTP, 20 per
    request, while its database (or Redis) is stopped for ten seconds in the middle."""
    runs = tmp_path / "runs.log"
    app = Instance(
        outage.url, "outage-a", runs,
        TASKFLOW_LEASE="3", TASKFLOW_CONCURRENCY="50", TASKFLOW_DURABILITY="1",
    ).start()  # fmt: skip
    ids: list[str] = []
    statuses: list[int] = []
    try:
        async with httpx.AsyncClient(base_url=app.base, timeout=30) as client:

            async def produce(first: int, last: int) -> None:
                for start in range(first, last, 20):
                    response = await client.post("/batch", params={"start": start})
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        ids.extend(response.json())
                    await asyncio.sleep(0.01)

            await produce(0, 1000)
            outage.down()
            went_down = time.monotonic()
            await produce(1000, 4000)  # while the backend is away
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - went_down)))
            outage.up()
            await produce(4000, 5000)
        assert statuses == [200] * 250  # no request failed because of the outage
        assert len(set(ids)) == 5000
        async with asyncio.timeout(90):
            while sum(run_counts(runs).values()) < 5000:
                await asyncio.sleep(0.2)
        observer = backend_from_url(outage.url, auto_migrate=False)
        await observer.open()
        try:
            history, coordinator = observer.history(), observer.coordinator()
            assert history is not None and coordinator is not None
            async with asyncio.timeout(90):  # the buffered writes land once it is back
                while await history.count(TaskFilter(statuses=(TaskStatus.SUCCESS,))) < 5000:
                    await asyncio.sleep(0.25)
            assert await history.count(TaskFilter()) == 5000
            assert (await coordinator.live(TaskFilter())).items == []
        finally:
            await observer.close()
        assert run_counts(runs) == dict.fromkeys(ids, 1)  # every task ran exactly once
        # the outage was real: writes failed, were buffered, and went through afterwards
        log = app.log.read_text()
        assert "writing to the backend failed" in log
        assert "the backend is back" in log
    finally:
        app.kill()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_task_that_finished_during_an_outage_keeps_its_outcome(
    kind: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its history write fails, its lease lapses, and the heartbeat claims it back from the
    pending store once the backend answers again: it must neither run again nor be
    recorded as interrupted."""
    from fastapi_taskflow.backends import MemoryBackend

    if kind == "memory":
        tm = TaskManager(snapshot_backend=MemoryBackend(), lease_s=0.3, snapshot_interval=3600)
    else:
        tm = TaskManager(snapshot_db=tmp_path / "t.db", lease_s=0.3, snapshot_interval=3600)
    runs = 0

    @tm.task(name="outage.once", persist=True)
    async def once() -> None:
        nonlocal runs
        runs += 1

    async with tm:
        backend = tm.backend
        assert backend is not None
        save = backend.save

        async def unreachable(records: Any) -> int:
            raise OSError("connection refused (simulated outage)")

        monkeypatch.setattr(backend, "save", unreachable)
        task_id = await tm.enqueue(once)
        assert (await tm.wait(task_id)).status is TaskStatus.SUCCESS
        await asyncio.sleep(1.0)  # the lease lapses; heartbeats claim the task back
        monkeypatch.setattr(backend, "save", save)
        await tm.flush()
        record = await tm.history.get(task_id)
        assert record is not None and record.status is TaskStatus.SUCCESS, record
        assert runs == 1
        stored = await backend.load()
    assert [(r.task_id, r.status) for r in stored] == [(task_id, TaskStatus.SUCCESS)]
