"""Several real application processes sharing one backend: crash recovery, idempotency and
one live view. Each test starts uvicorn processes on loopback ports."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from _instances import Instance, run_counts

from fastapi_taskflow import TaskFilter, TaskRecord, TaskStatus
from fastapi_taskflow.backends import SnapshotBackend

pytestmark = pytest.mark.slow
LEASE = "1.5"


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    kind = request.param
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    if kind == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    url = request.getfixturevalue(f"{kind}_url")
    return url


@pytest.fixture
def spawn(shared_url: str, tmp_path: Path) -> Iterator[Callable[..., Instance]]:
    started: list[Instance] = []
    runs = tmp_path / "runs.log"

    def make(instance_id: str, **env: str) -> Instance:
        env.setdefault("TASKFLOW_LEASE", LEASE)
        instance = Instance(shared_url, instance_id, runs, **env).start()
        started.append(instance)
        return instance

    yield make
    for instance in started:
        instance.kill()


@pytest.fixture
async def observer(shared_url: str) -> AsyncIterator[SnapshotBackend]:
    """A backend object the test uses to look at the shared state directly."""
    from fastapi_taskflow._manager import backend_from_url

    backend = backend_from_url(shared_url, auto_migrate=True)
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


async def all_history(backend: SnapshotBackend) -> dict[str, TaskRecord]:
    repo = backend.history()
    assert repo is not None
    found: dict[str, TaskRecord] = {}
    cursor = None
    while True:
        page = await repo.query(TaskFilter(), limit=1000, cursor=cursor)
        found.update((r.task_id, r) for r in page.items)
        cursor = page.next_cursor
        if cursor is None:
            return found


async def settle(
    backend: SnapshotBackend, ids: set[str], seconds: float = 90.0
) -> dict[str, TaskRecord]:
    """Wait until every id has a terminal record in history and nothing is pending."""
    coordinator = backend.coordinator()
    assert coordinator is not None
    deadline = time.monotonic() + seconds
    while True:
        history = await all_history(backend)
        live = await coordinator.live(TaskFilter(), limit=10)
        if ids <= history.keys() and not live.items:
            return history
        if time.monotonic() > deadline:
            missing = len(ids - history.keys())
            raise AssertionError(f"{missing} tasks have no terminal record; live: {live.items[:3]}")
        await asyncio.sleep(0.25)


async def enqueue(
    client: httpx.AsyncClient, base: str, func: str, count: int, sleep_s: float
) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, 250):
        response = await client.post(
            f"{base}/enqueue",
            params={
                "func": func,
                "count": min(250, count - start),
                "sleep_s": sleep_s,
                "start": start,
            },
        )
        response.raise_for_status()
        ids += response.json()
    return ids


@pytest.mark.parametrize("takeover", ["peer", "restart"])
async def test_kill_9_in_the_middle_of_1000_persisted_tasks(
    spawn: Callable[..., Instance], observer: SnapshotBackend, tmp_path: Path, takeover: str
) -> None:
    a = spawn("instance-a")
    if takeover == "peer":
        spawn("instance-b")
    async with httpx.AsyncClient(timeout=30) as client:
        ids = await enqueue(client, a.base, "work", 800, 0.03)
        ids += await enqueue(client, a.base, "resumable", 200, 0.03)
    assert len(set(ids)) == 1000
    await asyncio.sleep(1.0)  # let A run some of them
    a.kill()
    coordinator = observer.coordinator()
    assert coordinator is not None
    left = await coordinator.live(TaskFilter(), limit=1000)
    assert 0 < len(left.items) < 1000  # killed in the middle of the run
    if takeover == "restart":
        a = spawn("instance-a")  # same instance id: takes its own tasks back at once
    history = await settle(observer, set(ids))
    runs = run_counts(tmp_path / "runs.log")
    statuses = [history[i].status for i in ids]
    assert all(s.is_terminal for s in statuses)
    work_ids, resumable_ids = ids[:800], ids[800:]
    assert all(runs.get(i, 0) <= 1 for i in work_ids), (
        "a task without requeue_on_interrupt ran twice"
    )
    interrupted = [history[i] for i in work_ids if history[i].status is TaskStatus.INTERRUPTED]
    for record in interrupted:
        assert "instance-a stopped while the task was running" in (record.error or "")
        assert runs.get(record.task_id, 0) <= 1  # killed after it was marked running
    assert all(history[i].status is TaskStatus.SUCCESS for i in resumable_ids)
    successes = sum(1 for s in statuses if s is TaskStatus.SUCCESS)
    assert successes + len(interrupted) == 1000
    # at most the tasks marked running and not yet flushed when the process died
    assert len(interrupted) < 100


async def test_two_instances_racing_on_one_idempotency_key(
    spawn: Callable[..., Instance], observer: SnapshotBackend, tmp_path: Path
) -> None:
    a, b = spawn("instance-a"), spawn("instance-b")
    key = f"order-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(timeout=30) as client:
        responses = await asyncio.gather(
            *(client.post(f"{target.base}/keyed", params={"key": key}) for target in [a, b] * 10)
        )
    ids = {r.json()["task_id"] for r in responses}
    assert len(ids) == 1
    (task_id,) = ids
    history = await settle(observer, ids)
    assert history[task_id].status is TaskStatus.SUCCESS
    assert run_counts(tmp_path / "runs.log") == {task_id: 1}


async def test_one_live_view_across_instances(
    spawn: Callable[..., Instance], observer: SnapshotBackend
) -> None:
    a, b = spawn("instance-a"), spawn("instance-b")
    async with httpx.AsyncClient(timeout=30) as client:
        (held,) = (
            await client.post(f"{a.base}/enqueue", params={"func": "hold", "sleep_s": 30})
        ).json()

        async def seen_on_b(status: str, task_id: str) -> dict[str, object]:
            for _ in range(100):
                response = await client.get(f"{b.base}/tasks/{task_id}")
                if response.status_code == 200 and response.json()["status"] == status:
                    return dict(response.json())
                await asyncio.sleep(0.1)
            raise AssertionError(f"B never showed {task_id} as {status}")

        shown = await seen_on_b("running", held)
        assert shown["instance_id"] == "instance-a"
        listed = (await client.get(f"{b.base}/tasks", params={"status": "running"})).json()["items"]
        assert held in [t["task_id"] for t in listed]
        cancel = await client.post(f"{b.base}/tasks/{held}/cancel")
        assert cancel.status_code == 200
        await seen_on_b("cancelled", held)

        (failing,) = (await client.post(f"{a.base}/enqueue", params={"func": "fail_once"})).json()
        await seen_on_b("failed", failing)
        retried = await client.post(f"{b.base}/tasks/{failing}/retry")
        assert retried.status_code == 200, retried.text
        assert retried.json()["task_id"] == failing
        final = await seen_on_b("success", failing)
        assert final["instance_id"] == "instance-b"


@pytest.mark.parametrize(  # SQL backends: Redis refuses connection= (no shared transaction)
    "shared_url",
    [
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
    indirect=True,
)
async def test_transactional_enqueue_across_instances(
    spawn: Callable[..., Instance], observer: SnapshotBackend, tmp_path: Path
) -> None:
    """Orders and their tasks written in the application's transactions on two instances:
    a rolled-back one leaves neither order nor task; a committed one runs exactly once, on
    whichever instance claims it after the commit."""
    a, b = spawn("instance-a"), spawn("instance-b")
    committed: list[str] = []
    rolled_back: list[str] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for n in range(1, 41):
            target = a if n % 2 else b
            commit = n % 4 != 0  # every fourth order is rolled back
            response = await client.post(f"{target.base}/order", params={"n": n, "commit": commit})
            assert response.status_code == 200, response.text
            (committed if commit else rolled_back).append(response.json()["task_id"])
        history = await settle(observer, set(committed))
        orders = (await client.get(f"{a.base}/orders")).json()
    assert orders == [n for n in range(1, 41) if n % 4 != 0]
    assert all(history[i].status is TaskStatus.SUCCESS for i in committed)
    assert all(history[i].source == "transaction" for i in committed)
    assert not set(rolled_back) & history.keys()
    coordinator = observer.coordinator()
    assert coordinator is not None
    assert [i for i in rolled_back if await coordinator.get_live(i) is not None] == []
    runs = run_counts(tmp_path / "runs.log")
    assert {i: runs.get(i, 0) for i in committed} == {i: 1 for i in committed}
    assert not set(rolled_back) & runs.keys()
    ran_on = {history[i].instance_id for i in committed}
    assert ran_on <= {"instance-a", "instance-b"}
