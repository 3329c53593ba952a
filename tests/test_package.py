"""Package-level guarantees: the public surface and the no-thread rule."""

from __future__ import annotations

import re
from pathlib import Path

import fastapi_taskflow
import fastapi_taskflow.backends

PACKAGE = Path(fastapi_taskflow.__file__).parent


def test_all_matches_public_names() -> None:
    public = {
        name
        for name, value in vars(fastapi_taskflow).items()
        if not name.startswith("_") and not isinstance(value, type(fastapi_taskflow))
    }
    public.discard("annotations")
    exported = set(fastapi_taskflow.__all__) - {"__version__"}
    assert exported == public
    for name in fastapi_taskflow.__all__:
        assert getattr(fastapi_taskflow, name) is not None


def test_spec_names_are_exported() -> None:
    for name in (
        "TaskAdmin", "TaskManager", "ManagedBackgroundTasks", "TaskStatus", "TaskRecord",
        "QueueConfig", "QueueFullError", "task_log", "get_task_context",
    ):  # fmt: skip
        assert name in fastapi_taskflow.__all__
    for name in ("SnapshotBackend", "SqlBackend", "SqliteBackend", "PostgresBackend",
                 "MySQLBackend", "RedisBackend"):  # fmt: skip
        assert name in fastapi_taskflow.backends.__all__


def test_typed_marker_is_shipped() -> None:
    assert (PACKAGE / "py.typed").exists()


def test_no_thread_offloading_in_the_library() -> None:
    forbidden = re.compile(
        r"to_thread|run_in_executor|ThreadPoolExecutor|\bthreading\b|thread pool"
    )
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in PACKAGE.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if forbidden.search(line)
    ]
    assert offenders == []
