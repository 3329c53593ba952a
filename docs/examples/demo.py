"""The fastapi-taskflow demo: signup-style routes whose background work retries and fails.

Run it with ``python3 -m pip install nox && python3 -m nox -s demo`` from the repository root
(or ``uvicorn demo:app --app-dir docs/examples``), then open http://127.0.0.1:8000/docs to
call the routes and http://127.0.0.1:8000/tasks to see the tasks (JSON API; the dashboard
lives at /tasks/dashboard). History is kept in ``demo_tasks.db`` (SQLite), so it survives a
restart; set TASKFLOW_DEMO_DB to put it elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import random

from fastapi import BackgroundTasks, FastAPI

from fastapi_taskflow import TaskAdmin, TaskManager, task_log

task_manager = TaskManager(
    snapshot_db=os.environ.get("TASKFLOW_DEMO_DB", "demo_tasks.db"),
    snapshot_interval=5.0,
)
app = FastAPI(title="fastapi-taskflow demo")
TaskAdmin(app, task_manager, display_func_args=True, auto_install=True)


@task_manager.task(retries=3, delay=0.5, backoff=2.0, persist=True)
async def send_welcome_email(address: str) -> None:
    """Fails about half the time, as a flaky mail server would; retried with backoff."""
    task_log(f"connecting to the mail server for {address}")
    await asyncio.sleep(0.2)
    if random.random() < 0.5:
        raise ConnectionError("mail server did not answer")
    task_log("welcome email sent", address=address)


@task_manager.task(timeout=1.0)
async def build_avatar(user: str) -> None:
    """Sometimes slower than its one-second timeout."""
    await asyncio.sleep(random.choice([0.1, 0.3, 2.0]))
    task_log(f"avatar ready for {user}")


@task_manager.task(name="audit.record")
def record_signup(user: str) -> None:
    """A sync function: runs in Starlette's threadpool, like a sync endpoint."""
    if user.startswith("bad"):
        raise ValueError(f"user name {user!r} is not allowed")


@app.post("/signup")
def signup(email: str, background_tasks: BackgroundTasks) -> dict[str, object]:
    """Sign a user up; three background tasks start after the response is sent."""
    user = email.split("@")[0]
    return {
        "email_task": background_tasks.add_task(send_welcome_email, address=email),
        "avatar_task": background_tasks.add_task(build_avatar, user=user),
        "audit_task": background_tasks.add_task(record_signup, user),
    }


@app.post("/signup/batch")
async def signup_batch(count: int = 10) -> dict[str, list[str]]:
    """Enqueue many signups at once, from outside a request's background tasks."""
    ids = []
    for n in range(min(max(count, 1), 500)):
        ids.append(await task_manager.enqueue(send_welcome_email, address=f"user{n}@example.com"))
    return {"task_ids": ids}
