"""Shared helpers for tests: run an app's lifespan and talk to it over ASGI."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import httpx
from fastapi import FastAPI

from fastapi_taskflow import TaskManager, TaskRecord


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan (start-up and shut-down) around an ASGI client."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def wait_for(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll until ``predicate()`` is true; fail the test after ``seconds``."""
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.005)


async def finished(manager: TaskManager, task_id: str, seconds: float = 5.0) -> TaskRecord:
    """Wait for a task to reach a terminal state and return its record."""
    async with asyncio.timeout(seconds):
        return await manager.wait(task_id)
